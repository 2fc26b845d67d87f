#!/usr/bin/env bash
# The demo: set up, bring the local testbed up with the 1,200-node scenario,
# run the exporter against it, print the audit and where to look.
#   scripts/demo.sh        (make demo)   start, or reuse a running demo
#   scripts/demo.sh down   (make down)   stop the exporter and the testbed
set -euo pipefail
cd "$(dirname "$0")/.."

NODES=${NODES:-1200}
STATE=${TESTBED_STATE_DIR:-$PWD/testbed/state}
export TESTBED_STATE_DIR=$STATE
PIDFILE=$STATE/exporter.pid

stop_exporter() {
  if [[ -f $PIDFILE ]]; then
    local pid
    pid=$(cat "$PIDFILE")
    # Only our own process: the pid may have been reused since.
    if [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "coverage-exporter serve"; then
      kill "$pid" && echo "stopped coverage-exporter (pid $pid)"
    fi
    rm -f "$PIDFILE"
  fi
}

if [[ ${1:-} == down ]]; then
  stop_exporter
  if [[ -f $STATE/state.json ]]; then testbed/testbed down; fi
  exit 0
fi

bash scripts/setup.sh
testbed/testbed up --nodes "$NODES" --prometheus both --rule-file alerts/coverage-exporter.rules.yml
eval "$(testbed/testbed env)"

prometheus_flags=(--prometheus-url "prometheus-3=$PROMETHEUS_3_URL" --prometheus-url "prometheus-2=$PROMETHEUS_2_URL")
stop_exporter
.venv/bin/coverage-exporter serve --kubeconfig "$KUBECONFIG" "${prometheus_flags[@]}" \
  --web.listen-address "$EXPORTER_ADDRESS" --interval 15 >"$STATE/logs/coverage-exporter.log" 2>&1 &
echo $! >"$PIDFILE"

echo "waiting for Prometheus to discover the scenario and the exporter to be ready..." >&2
.venv/bin/python - "$PROMETHEUS_3_URL" "$PROMETHEUS_2_URL" "$EXPORTER_ADDRESS" <<'PY'
import sys, time, urllib.request
from testbed.prometheus import active_targets
*urls, exporter = sys.argv[1:]
deadline = time.monotonic() + 180
def ready() -> bool:
    try:
        if any(not active_targets(u, "node-exporter-endpointslice") for u in urls):
            return False
        with urllib.request.urlopen(f"http://{exporter}/-/ready", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False
while not ready():
    if time.monotonic() > deadline:
        sys.exit("timed out; see testbed/state/logs/")
    time.sleep(2)
PY

echo
echo "== coverage-exporter audit (exit code 1 = gaps found) =="
set +e
.venv/bin/coverage-exporter audit --kubeconfig "$KUBECONFIG" "${prometheus_flags[@]}" --log-level error
set -e
cat <<EOT

Look at:
  exporter metrics    http://$EXPORTER_ADDRESS/metrics
  Prometheus 3.16     $PROMETHEUS_3_URL/api/v1/targets?state=active&scrapePool=node-exporter-endpoints
                      $PROMETHEUS_3_URL/api/v1/rules   (ScrapeCoverageEndpointsTruncated goes pending, fires after 15m)
  Prometheus 2.53     $PROMETHEUS_2_URL/api/v1/query?query=scrape_coverage_prometheus_missing_targets
  Alertmanager        $ALERTMANAGER_URL/api/v2/alerts
  kubeconfig          $KUBECONFIG
  logs                $STATE/logs/
  shell               eval "\$(testbed/testbed env)"

Try: testbed/testbed scale 900   (the gaps close within a cycle)
Stop everything: make down
EOT
