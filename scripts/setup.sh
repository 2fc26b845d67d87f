#!/usr/bin/env bash
# Sets up everything the demo and the tests need on a fresh Debian
# bookworm machine, idempotently and without standard input:
#   Debian packages, the Python venv (.venv), and the Go builds of the
#   testbed (cached outside the repo, see testbed/build.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '%s setup: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
start=$SECONDS

if [[ ! -x .venv/bin/python ]]; then
  log "creating .venv"
  python3 -m venv .venv
fi
log "installing the package and its test dependencies into .venv"
.venv/bin/pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]'

log "installing rule tools (promtool, pint)"
bash alerts/install-tools.sh
log "installing headless Chromium (the HTML report's browser tests, testbed/chromium.py)"
# Debian's package: a browser download (Playwright and the like) cannot
# run here. fonts-dejavu-core: the report's text in screenshots.
browser_packages=(chromium fonts-dejavu-core)
missing_browser=()
for p in "${browser_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing_browser+=("$p")
done
if ((${#missing_browser[@]})); then
  sudo=()
  [[ $(id -u) -eq 0 ]] || sudo=(sudo -n)
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing_browser[@]}"
fi
log "installing the testbed (Debian packages, Go builds: also helm, kubeconform, promtool 3)"
bash testbed/install-deps.sh

# The Prometheus Operator's CRDs, for kubeconform and the testbed apply of the
# chart (tools/chart.py reads them from the module cache).
. testbed/versions.env
log "downloading the Prometheus Operator module (its CRDs)"
PATH="$PATH:/usr/local/go/bin" GOFLAGS=-mod=mod go mod download \
  "github.com/prometheus-operator/prometheus-operator@${OPERATOR_VERSION:-v0.85.0}"
# tests/local/test_image.py installs the image's steps with Debian's Python
# 3.11 (the base image's), which needs its venv module and procps (pgrep);
# actionlint runs shellcheck on the release workflow's scripts.
for pkg in python3-venv procps shellcheck; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    log "installing $pkg"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg"
  fi
done

log "done in $((SECONDS - start)) s"
