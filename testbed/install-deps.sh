#!/usr/bin/env bash
# Installs what the testbed needs on a fresh Debian/Ubuntu machine, then
# builds the Go binaries (testbed/build.sh all). Idempotent; needs no stdin.
#   apt: prometheus-alertmanager (the Debian binary is used as is), openssl
#        (certificates), iproute2 (ss, handy when debugging ports)
#   Go:  /usr/local/go or go on PATH (the build needs Go >= 1.26)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export DEBIAN_FRONTEND=noninteractive

packages=(prometheus-alertmanager openssl iproute2 ca-certificates)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

sudo=()
[[ $(id -u) -eq 0 ]] || sudo=(sudo -n)

if ((${#missing[@]})); then
  # Debian starts the packaged alertmanager service on install, listening on
  # every interface (9093, gossip 9094). Forbid service starts while
  # installing; the testbed runs its own on 127.0.0.1.
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod +x "$policy"
    made_policy=1
  fi
  cleanup() { if [[ $made_policy == 1 ]]; then "${sudo[@]}" rm -f "$policy"; fi; }
  trap cleanup EXIT
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# In case an earlier install did start it.
if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus-alertmanager 2>/dev/null; then
  "${sudo[@]}" systemctl disable --now prometheus-alertmanager || true
fi

if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
  export PATH="/usr/local/go/bin:$PATH"
fi
command -v go >/dev/null || { echo "install-deps: Go is required (https://go.dev/dl/)" >&2; exit 1; }

"$here/build.sh" all
