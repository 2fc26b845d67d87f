#!/usr/bin/env bash
# Builds every binary the testbed runs from the Go module proxy, once per
# version, into a cache outside the repository:
#   ${COVERAGE_EXPORTER_CACHE:-~/.cache/coverage-exporter}/<what>/<version>/
# A finished build leaves a ".done" stamp; a second call is a no-op.
# Usage: testbed/build.sh [all|kubernetes|etcd|kwok|prometheus3|prometheus2|operator|helm|promtool|kubeconform|vmagent|thanos|jsonnet|actionlint|oracle|operator_crds]
set -euo pipefail

. "$(dirname "$0")/versions.env"

CACHE="${COVERAGE_EXPORTER_CACHE:-$HOME/.cache/coverage-exporter}"
export GOWORK=off GOFLAGS=-buildvcs=false CGO_ENABLED=0
# Two cores: more parallel compiles only add memory pressure.
export GOMAXPROCS="${GOMAXPROCS:-2}"

log() { printf '%s build: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# wrapper_build WHAT VERSION MODULE MODVERSION LDFLAGS EXTRA_GOMOD PKG...
# Why a wrapper module: `go install pkg@version` refuses modules whose go.mod
# has replace directives (Kubernetes, etcd, Prometheus 2.x all have some).
# A throwaway main module that requires the target and restates the needed
# replaces builds the same code.
wrapper_build() {
  local what=$1 version=$2 module=$3 modversion=$4 ldflags=$5 extra=$6
  shift 6
  local out="$CACHE/$what/$version"
  if [[ -f "$out/.done" ]]; then
    log "$what $version cached in $out"
    return
  fi
  local work="$CACHE/$what/$version.src"
  rm -rf "$work" && mkdir -p "$work" "$out"
  log "$what $version: building ${*} (this takes a while on a cold cache)"
  local start=$SECONDS
  {
    echo "module coverage-exporter.local/build/$what"
    echo
    echo "go $(go env GOVERSION | sed 's/^go//; s/\.[0-9]*$//').0"
    echo
    echo "require $module $modversion"
    echo
    printf '%s\n' "$extra"
  } >"$work/go.mod"
  {
    echo "//go:build tools"
    echo
    echo "package tools"
    echo
    echo "import ("
    for pkg in "$@"; do echo "	_ \"$pkg\""; done
    echo ")"
  } >"$work/tools.go"
  (cd "$work" && go mod tidy >/dev/null 2>&1 || go mod tidy)
  for pkg in "$@"; do
    (cd "$work" && go build -trimpath -tags "${BUILD_TAGS:-}" -ldflags "-s -w $ldflags" -o "$out/$(basename "$pkg")" "$pkg")
  done
  touch "$out/.done"
  rm -rf "$work"
  log "$what $version built in $((SECONDS - start)) s"
}

build_kubernetes() {
  local v=$KUBERNETES_VERSION
  # Checked here too: the go.mod lookup below would otherwise run on every call.
  if [[ -f "$CACHE/kubernetes/$v/.done" ]]; then log "kubernetes $v cached in $CACHE/kubernetes/$v"; return; fi
  local staging_v="v0.${v#v1.}"
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@$v" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  # Every staging module is required at v0.0.0 and replaced by a local path
  # upstream; pin each one to the published tag of the same release.
  local replaces
  replaces=$(awk '$2 == "v0.0.0" && $1 ~ /^k8s\.io\// {print $1}' "$gomod" | sort -u |
    awk -v sv="$staging_v" 'BEGIN{print "replace ("} {printf "\t%s => %s %s\n", $1, $1, sv} END{print ")"}')
  local minor=${v#v1.}; minor=${minor%%.*}
  local ld="-X k8s.io/component-base/version.gitVersion=$v -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
  wrapper_build kubernetes "$v" k8s.io/kubernetes "$v" "$ld" "$replaces" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
}

build_etcd() {
  local v=$ETCD_VERSION
  # The server's main package lives at the module root; install it as "etcd".
  wrapper_build etcd "$v" go.etcd.io/etcd/server/v3 "$v" "" "" go.etcd.io/etcd/server/v3
  [[ -e "$CACHE/etcd/$v/etcd" ]] || ln -sf v3 "$CACHE/etcd/$v/etcd"
}

build_kwok() {
  local v=$KWOK_VERSION out="$CACHE/kwok/$KWOK_VERSION"
  if [[ -f "$out/.done" ]]; then log "kwok $v cached in $out"; return; fi
  mkdir -p "$out"
  log "kwok $v: go install"
  local start=$SECONDS
  GOBIN="$out" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$v"
  touch "$out/.done"
  log "kwok $v built in $((SECONDS - start)) s"
}

prometheus_ld() {
  local mod=github.com/prometheus/common/version
  echo "-X $mod.Version=$1 -X $mod.Revision=module-proxy -X $mod.Branch=release -X $mod.BuildUser=coverage-exporter -X $mod.BuildDate=19700101-00:00:00"
}

build_prometheus3() {
  wrapper_build prometheus "$PROMETHEUS3_VERSION" github.com/prometheus/prometheus "$PROMETHEUS3_MODULE" \
    "$(prometheus_ld "$PROMETHEUS3_VERSION")" "" github.com/prometheus/prometheus/cmd/prometheus
}

build_prometheus2() {
  # 2.53's go.mod replaces klog with a go-kit shim and excludes broken
  # versions; a wrapper must restate both or it resolves different code.
  local extra
  extra=$'replace (\n\tk8s.io/klog => github.com/simonpasquier/klog-gokit v0.3.0\n\tk8s.io/klog/v2 => github.com/simonpasquier/klog-gokit/v3 v3.3.0\n)\n\nexclude github.com/linode/linodego v1.0.0\n\nexclude (\n\tgithub.com/grpc-ecosystem/grpc-gateway v1.14.7\n\tgoogle.golang.org/api v0.30.0\n)'
  wrapper_build prometheus "$PROMETHEUS2_VERSION" github.com/prometheus/prometheus "$PROMETHEUS2_MODULE" \
    "$(prometheus_ld "$PROMETHEUS2_VERSION")" "$extra" github.com/prometheus/prometheus/cmd/prometheus
}

build_operator() {
  # The operator's go.mod replaces its own pkg/apis and pkg/client modules
  # with local paths that are not in the module zip, so neither `go install`
  # nor a build of the unpacked zip works; the wrapper resolves both at their
  # published tags. The -X flags match the upstream Makefile's.
  local v=$OPERATOR_VERSION mod=github.com/prometheus/common/version
  wrapper_build prometheus-operator "$v" github.com/prometheus-operator/prometheus-operator "$v" \
    "-X $mod.Version=${v#v} -X $mod.Revision=$OPERATOR_REVISION -X $mod.Branch=release -X $mod.BuildUser=coverage-exporter" \
    "" github.com/prometheus-operator/prometheus-operator/cmd/operator
}

build_operator_crds() {
  # The CRDs of a newer Operator than the binary: controller-gen run as the
  # upstream Makefile's generate-crds does (crd:crdVersions=v1, the v1 and
  # v1alpha1 packages), on the pkg/apis/monitoring module at that tag.
  local v=$OPERATOR_CRDS_VERSION
  local out="$CACHE/prometheus-operator-crds/$v"
  if [[ -f "$out/.done" ]]; then
    log "operator CRDs $v cached in $out"
    return
  fi
  go_install controller-gen "$CONTROLLER_TOOLS_VERSION" \
    sigs.k8s.io/controller-tools/cmd/controller-gen ""
  local dir
  dir=$(cd / && go mod download -json \
    "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring@$v" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  rm -rf "$out" && mkdir -p "$out"
  log "operator CRDs $v: generating from $dir"
  (cd "$dir" && "$CACHE/controller-gen/$CONTROLLER_TOOLS_VERSION/controller-gen" \
    crd:crdVersions=v1 paths=./v1/. paths=./v1alpha1/. "output:crd:dir=$out")
  touch "$out/.done"
}

# go_install WHAT VERSION PKG LDFLAGS: for modules without replace
# directives, where `go install pkg@version` builds exactly the release.
go_install() {
  local what=$1 v=$2 pkg=$3 ldflags=$4 out="$CACHE/$1/$2"
  if [[ -f "$out/.done" ]]; then log "$what $v cached in $out"; return; fi
  mkdir -p "$out"
  log "$what $v: go install $pkg@$v"
  local start=$SECONDS
  GOBIN="$out" go install -trimpath -ldflags "-s -w $ldflags" "$pkg@$v"
  touch "$out/.done"
  log "$what $v built in $((SECONDS - start)) s"
}

build_helm() {
  # helm reads its version from these variables (helm's Makefile sets them).
  local mod=helm.sh/helm/v3/internal/version
  go_install helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm \
    "-X $mod.version=$HELM_VERSION -X $mod.gitTreeState=clean"
}

build_kubeconform() {
  go_install kubeconform "$KUBECONFORM_VERSION" github.com/yannh/kubeconform/cmd/kubeconform ""
}

build_promtool() {
  # Same module and version as the Prometheus 3 server, in a cache dir of its
  # own: the module download and most compiled packages come from Go's caches
  # that build_prometheus3 filled, so this adds about a minute, not ten.
  wrapper_build promtool "$PROMETHEUS3_VERSION" github.com/prometheus/prometheus "$PROMETHEUS3_MODULE" \
    "$(prometheus_ld "$PROMETHEUS3_VERSION")" "" github.com/prometheus/prometheus/cmd/promtool
}

build_vmagent() {
  # VictoriaMetrics' go.mod has no replace directives and v1.151.0 asks for
  # go 1.26.6, so `go install` builds the release as is. The version string
  # has the shape of its Makefile's (APP-DATE-TAG), which /metrics'
  # vm_app_version and -version report.
  go_install vmagent "$VMAGENT_VERSION" github.com/VictoriaMetrics/VictoriaMetrics/app/vmagent \
    "-X github.com/VictoriaMetrics/VictoriaMetrics/lib/buildinfo.Version=vmagent-19700101-000000-tags-$VMAGENT_VERSION-0-gmoduleproxy"
}

build_thanos() {
  # Thanos replaces several dependencies with forks, and replaces apply only
  # in the main module: the wrapper restates its own replace block, read
  # from the release's go.mod. v0.42.5 asks for go 1.26.10, newer than the
  # machine's: the go command fetches GOTOOLCHAIN from the module proxy for
  # this build alone. The tags are its .promu.yml's (netgo, slicelabels):
  # issue #20 reports every sidecar crashing on its first gRPC answer when
  # built without them (not re-tried here; with them the e2e passes).
  local v=$THANOS_VERSION out="$CACHE/thanos/$THANOS_VERSION"
  if [[ -f "$out/.done" ]]; then log "thanos $v cached in $out"; return; fi
  local gomod replaces mod=github.com/prometheus/common/version
  # In a subshell: the toolchain and tags stay this build's.
  (
  export GOTOOLCHAIN=$THANOS_GOTOOLCHAIN
  gomod=$(go mod download -json "github.com/thanos-io/thanos@$v" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  replaces=$(sed -n '/^replace (/,/^)/p' "$gomod")
  BUILD_TAGS=netgo,slicelabels wrapper_build thanos "$v" github.com/thanos-io/thanos "$v" \
    "-X $mod.Version=${v#v} -X $mod.Revision=module-proxy -X $mod.Branch=release -X $mod.BuildUser=coverage-exporter -X $mod.BuildDate=19700101-00:00:00" \
    "$replaces" github.com/thanos-io/thanos/cmd/thanos
  )
}

build_jsonnet() {
  # go-jsonnet, the reference implementation in Go, renders the mixin
  # (tests/local/test_mixin.py); the version kube-prometheus builds with.
  go_install jsonnet "$JSONNET_VERSION" github.com/google/go-jsonnet/cmd/jsonnet ""
}

build_actionlint() {
  # Checks the release workflow (.github/workflows/, tests/local/test_release.py).
  local mod=github.com/rhysd/actionlint
  go_install actionlint "$ACTIONLINT_VERSION" "$mod/cmd/actionlint" "-X $mod.version=$ACTIONLINT_VERSION"
}

build_oracle() {
  # tests/oracle: Prometheus's duration and size parsers (prometheus/common
  # model.ParseDuration, alecthomas/units ParseBase2Bytes, the versions the
  # Prometheus 3 build uses), for tests/local/test_flagtypes.py. A local main
  # package: copied next to its build, with the versions pinned here.
  local v=$PROMETHEUS3_MODULE out="$CACHE/oracle/$PROMETHEUS3_MODULE"
  # Rebuilt when tests/oracle/main.go changes (its copy is kept next to the build).
  if [[ -f "$out/.done" ]] && cmp -s "$out/main.go" "$(dirname "$0")/../tests/oracle/main.go"; then
    log "oracle $v cached in $out"; return
  fi
  mkdir -p "$out"
  local start=$SECONDS work="$out/src"
  rm -rf "$work" && mkdir -p "$work"
  cp "$(dirname "$0")/../tests/oracle/main.go" "$work/"
  local gomod
  gomod=$(go mod download -json "github.com/prometheus/prometheus@$v" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  {
    echo "module coverage-exporter.local/oracle"
    echo
    echo "go $(go env GOVERSION | sed 's/^go//; s/\.[0-9]*$//').0"
    echo
    grep -E "^\s+github.com/(prometheus/common|alecthomas/units) " "$gomod" | sed 's/^\s*/require /'
  } >"$work/go.mod"
  (cd "$work" && go mod tidy >/dev/null 2>&1 || go mod tidy)
  (cd "$work" && go build -trimpath -ldflags "-s -w" -o "$out/oracle" .)
  cp "$work/main.go" "$out/main.go"
  rm -rf "$work"
  touch "$out/.done"
  log "oracle $v built in $((SECONDS - start)) s"
}

main() {
  local target=${1:-all}
  case $target in
    all)
      build_etcd; build_kwok; build_prometheus3; build_promtool; build_prometheus2; build_kubernetes
      build_operator; build_operator_crds; build_helm; build_kubeconform; build_vmagent; build_thanos
      build_jsonnet; build_actionlint; build_oracle ;;
    kubernetes|etcd|kwok|prometheus3|prometheus2|operator|helm|promtool|kubeconform|vmagent|thanos|jsonnet|actionlint|oracle|operator_crds) "build_$target" ;;
    *) echo "usage: $0 [all|kubernetes|etcd|kwok|prometheus3|prometheus2|operator|helm|promtool|kubeconform|vmagent|thanos|jsonnet|actionlint|oracle|operator_crds]" >&2; exit 2 ;;
  esac
}

main "$@"
