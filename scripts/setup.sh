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
log "installing the testbed (Debian packages, Go builds)"
bash testbed/install-deps.sh

log "done in $((SECONDS - start)) s"
