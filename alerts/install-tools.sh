#!/usr/bin/env bash
# Install the rule tools the tests need: promtool (and pint when it can be had).
# Idempotent, no stdin; CI calls it on a fresh machine. Run as root.
#
# promtool comes from Debian's `prometheus` package. Only the binary is
# unpacked from the .deb: installing the package would add a system user and
# a Prometheus service listening on all interfaces, neither of which a test
# machine should have.
set -euo pipefail

PROMTOOL_DEB_VERSION="${PROMTOOL_DEB_VERSION:-2.42.0+ds-5+deb12u1}"
BIN_DIR="${BIN_DIR:-/usr/local/bin}"
# pint (github.com/cloudflare/pint) is not served by the Go module proxy
# here (403 for every version tried, v0.70.0 to v0.74.7); set PINT_VERSION to
# try again where it is.
PINT_VERSION="${PINT_VERSION:-}"

install_promtool() {
  if [ -x "$BIN_DIR/promtool" ] && "$BIN_DIR/promtool" --version 2>&1 | grep -q "version 2.42.0"; then
    echo "promtool already installed: $BIN_DIR/promtool"
    return
  fi
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  if ! apt-cache show "prometheus=$PROMTOOL_DEB_VERSION" >/dev/null 2>&1; then
    apt-get update -qq
  fi
  (cd "$work" && apt-get download -qq "prometheus=$PROMTOOL_DEB_VERSION" 2>/dev/null)
  dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
  install -m 0755 "$work/root/usr/bin/promtool" "$BIN_DIR/promtool"
  "$BIN_DIR/promtool" --version 2>&1 | head -1
}

install_pint() {
  if [ -z "$PINT_VERSION" ]; then
    echo "pint: skipped (not available from the Go module proxy; see alerts/README.md)"
    return
  fi
  if command -v pint >/dev/null && pint version 2>&1 | grep -q "${PINT_VERSION#v}"; then
    echo "pint already installed"
    return
  fi
  # Proxy only: never fall back to fetching the repository directly.
  GOPROXY=https://proxy.golang.org GOBIN="$BIN_DIR" \
    go install "github.com/cloudflare/pint/cmd/pint@$PINT_VERSION"
}

install_promtool
install_pint
# promtool 3 (tests/local/test_rules_lint.py: --lint=all --lint-fatal, and the
# rule tests under Prometheus 3's PromQL) is built from the Prometheus 3
# module by testbed/build.sh promtool, which testbed/install-deps.sh runs.
echo "promtool 3: built by testbed/build.sh promtool (cache: ~/.cache/coverage-exporter/promtool/)"
