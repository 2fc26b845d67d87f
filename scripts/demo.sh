#!/usr/bin/env bash
# The demo: set up, bring the local testbed up with the 1,200-node scenario,
# run the exporter against it, print the audit and where to look.
#   scripts/demo.sh        (make demo)   start, or reuse a running demo
#   scripts/demo.sh down   (make down)   stop the exporter and the testbed
#   scripts/demo.sh --operator  (or OPERATOR=1 make demo)   the same with the real
#       Prometheus Operator: CR monitoring/k8s, 2 shards x 2 replicas; then
#       walk the migration with testbed/testbed migrate dual-write|switch-role|endpoints-off
set -euo pipefail
cd "$(dirname "$0")/.."

NODES=${NODES:-1200}
OPERATOR=${OPERATOR:-0}
if [[ ${1:-} == --operator ]]; then OPERATOR=1; shift; fi
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
if [[ $OPERATOR == 1 ]]; then
  # `up --operator` returns once the Operator has synced, every server has
  # loaded its config and discovery equals what the objects imply.
  testbed/testbed up --nodes "$NODES" --operator --rule-file alerts/coverage-exporter.rules.yml
  eval "$(testbed/testbed env)"
  # No server flag: the exporter finds the CR monitoring/k8s and reads each
  # of its four pods at its pod IP (PROMETHEUS_URLS lists them, for you).
  IFS=, read -ra pods <<<"$PROMETHEUS_URLS"
  stop_exporter
  .venv/bin/coverage-exporter serve --kubeconfig "$KUBECONFIG" \
    --web.listen-address "$EXPORTER_ADDRESS" --interval 15s >"$STATE/logs/coverage-exporter.log" 2>&1 &
  echo $! >"$PIDFILE"
  for _ in $(seq 120); do
    curl -sf "http://$EXPORTER_ADDRESS/-/ready" >/dev/null && break
    sleep 2
  done
  echo
  echo "== coverage-exporter audit (exit code 1 = gaps found; each replica judged on its own) =="
  set +e
  .venv/bin/coverage-exporter audit --kubeconfig "$KUBECONFIG" --log.level error
  set -e
  cat <<EOT

Look at:
  exporter metrics    http://$EXPORTER_ADDRESS/metrics
  Operator's servers  ${pods[0]#*=}/api/v1/targets?state=active&scrapePool=serviceMonitor/monitoring/node-exporter/0
                      (all four: ${PROMETHEUS_URLS//,/ })
  the Operator        $OPERATOR_URL/metrics   (prometheus_operator_kubelet_managed_resource)
  rules Prometheus    $RULES_PROMETHEUS_URL/api/v1/rules
  Alertmanager        $ALERTMANAGER_URL/api/v2/alerts
  logs                $STATE/logs/
  shell               eval "\$(testbed/testbed env)"

Walk the migration (each step returns once settled) and audit again after each:
  testbed/testbed migrate dual-write      # --kubelet-endpointslice=true: Operator-written slices
  testbed/testbed migrate switch-role     # serviceDiscoveryRole: EndpointSlice
  testbed/testbed migrate endpoints-off   # --kubelet-endpoints=false
  .venv/bin/coverage-exporter audit --kubeconfig "\$KUBECONFIG"
Or change the fleet and watch the exporter follow it within a cycle:
  testbed/testbed shards 3                # PATCH the CR: the Operator adds shard 2, two more pods
Stop everything: make down
EOT
  exit 0
fi

testbed/testbed up --nodes "$NODES" --prometheus both --rule-file alerts/coverage-exporter.rules.yml
eval "$(testbed/testbed env)"

# No server flag: the testbed's two servers run as pods labelled like the
# prometheus-community chart's (a Prometheus the Operator does not run), and
# the exporter finds them by that label selector.
discovery_flags=(--prometheus-pod-selector "$PROMETHEUS_POD_SELECTOR" --prometheus-pod-port web)
stop_exporter
.venv/bin/coverage-exporter serve --kubeconfig "$KUBECONFIG" "${discovery_flags[@]}" \
  --web.listen-address "$EXPORTER_ADDRESS" --interval 15s >"$STATE/logs/coverage-exporter.log" 2>&1 &
echo $! >"$PIDFILE"

echo "waiting for both Prometheus servers to discover the whole scenario and the exporter to be ready..." >&2
# The audit is printed only once discovery has settled: judged while one
# server still discovers, it would report a gap that is only a delay.
.venv/bin/python - "$NODES" "$PROMETHEUS_3_URL" "$PROMETHEUS_2_URL" "$EXPORTER_ADDRESS" <<'PY'
import sys, time, urllib.request
from testbed import scenarios as s
from testbed.prometheus import active_targets
n, *urls, exporter = sys.argv[1:]
n = int(n)
# What each pool discovers once the real controllers have done their work.
want = {
    "node-exporter-endpoints": n - len(s.endpoints_dropped_nodes(n)),
    "node-exporter-endpointslice": n,
    "kubelet-endpoints": n,
    "kubelet-endpointslice": n - len(s.mirroring_dropped_nodes(n)),
    "kubelet-skip-mirror-endpoints": n,
    "kubelet-skip-mirror-endpointslice": n,
}
deadline = time.monotonic() + 300
def settled() -> bool:
    try:
        for u in urls:
            if any(len(active_targets(u, pool)) != count for pool, count in want.items()):
                return False
        with urllib.request.urlopen(f"http://{exporter}/-/ready", timeout=5) as r:
            return r.status == 200
    except (OSError, RuntimeError):
        return False
while not settled():
    if time.monotonic() > deadline:
        sys.exit("timed out; see testbed/state/logs/")
    time.sleep(2)
PY

echo
echo "== coverage-exporter audit (exit code 1 = gaps found; each server judged on its own) =="
set +e
.venv/bin/coverage-exporter audit --kubeconfig "$KUBECONFIG" "${discovery_flags[@]}" --log.level error
# The same collection as one self-contained page: every missing node, where
# it was lost, what to do.
REPORT=$STATE/report.html
.venv/bin/coverage-exporter audit --kubeconfig "$KUBECONFIG" "${discovery_flags[@]}" --log.level error \
  --output html >"$REPORT"
report_rc=$?
set -e
if [[ $report_rc -gt 1 ]]; then
  echo "demo: the HTML report could not be collected (exit $report_rc)" >&2
fi
cat <<EOT

The coverage report (open it in a browser):
  file                $REPORT
  live                http://$EXPORTER_ADDRESS/report

Look at:
  exporter metrics    http://$EXPORTER_ADDRESS/metrics
  Prometheus 3.16     $PROMETHEUS_3_URL/api/v1/targets?state=active&scrapePool=node-exporter-endpoints
                      $PROMETHEUS_3_URL/api/v1/rules   (ScrapeCoverageEndpointsTruncated goes pending, fires after 15m)
  Prometheus 2.53     $PROMETHEUS_2_URL/api/v1/query?query=scrape_coverage_gap_targets
  Alertmanager        $ALERTMANAGER_URL/api/v2/alerts
  kubeconfig          $KUBECONFIG
  logs                $STATE/logs/
  shell               eval "\$(testbed/testbed env)"

Try: testbed/testbed scale 900   (the gaps close within a cycle)
Stop everything: make down
EOT
