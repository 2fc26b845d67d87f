"""The default of every flag, once, spelled as the flag takes it: durations
as Prometheus writes them ("2m"), sizes with their unit ("256MiB"), counts
as numbers. cli.py shows them in --help and passes them to the flags'
parsers; the code they configure (its dataclasses and constructors) reads
the same names through the same parsers (flagtypes.parse_seconds,
flagtypes.parse_bytes), so a default cannot say one thing in the help and
do another. Plain values and no imports: `--help` loads this module alone.
Why each value: the flag's help (cli.py) and README.md, "Under faults".
"""

from __future__ import annotations

# --- Prometheus --------------------------------------------------------------
PROMETHEUS_TIMEOUT = "2m"
"""One request to a Prometheus, body included: a big target list takes a
while to send."""
PROMETHEUS_STALE_AFTER = "5m"
"""How long a Prometheus that stopped answering still covers its targets
with its last good answer: long enough for a restart or a reload, short
enough that a shard down for hours stops "covering" anything."""
PROMETHEUS_FULL_REFRESH_INTERVAL = "10m"
PROMETHEUS_DISCOVERY = "on"
"""Find the Prometheus Operator's servers by themselves (docs/discovery.md)."""
PROMETHEUS_POD_PORT = "web"
"""Container port of the pods --prometheus-pod-selector finds: the
Operator's name for the web port."""
PROMETHEUS_DISCOVERY_GRACE = "2m"
"""How long after a server starts its pools are not judged (coverage
unknown, cause still_discovering), since a fresh server shows every pool
empty or partial until its discovery delivers; sooner once every pool it
runs has delivered on its /metrics (counted above zero after relabelling,
or discovered above zero before it), the counts unchanged for 10 s
(sources.prometheus.source.discovery_settled): a server with a pool that
discovers nothing waits it out, since Prometheus counts a pool at zero
before its discovery has listed anything. Prometheus: the Kubernetes informers' first LIST
(tens of seconds at 100k nodes), then the discovery manager's 5 s update
throttle and the scrape manager's 5 s reload; vmagent: its first
Kubernetes SD check (-promscrape.kubernetesSDCheckInterval, 30 s).
2m covers the slowest of those with room, and stays well under the `for:`
of ScrapeCoverageUnknown (15m), so that a rolling restart pages no one."""

# --- Kubernetes -----------------------------------------------------------------
KUBERNETES_SYNC_TIMEOUT = "5m"
KUBERNETES_MAX_POD_WATCHES = 500
"""Each pod watch is one long-lived HTTP connection to the apiserver."""
KUBERNETES_POD_FORMS = ("table", "full")
"""How pods are read: the apiserver's Table (Name, Status, IP, Node cells;
~150 B a pod, owners inferred, model.owners) or full objects (3.4-7 KB)."""
KUBERNETES_POD_FORM = "table"
KUBERNETES_WATCH_IDLE_TIMEOUT = "90s"
"""The apiserver bookmarks every minute; 90 s of silence is a dead connection."""
OPERATOR_REFRESH_INTERVAL = "5m"

# --- every source, every cycle ----------------------------------------------------
SOURCE_DEADLINE = "2m"
"""audit's (it collects once and has no interval): what one request to a
Prometheus gets by default (PROMETHEUS_TIMEOUT)."""
SOURCE_DEADLINE_SHARE_OF_INTERVAL = 0.75
"""serve's default --source-deadline, as a share of --interval: a source
that trickles (a Prometheus at 1 byte/s, within its 2m request timeout)
is cut off in time for the cycle to end within its interval; the last
quarter is left for the comparison (~1 s at 100k nodes, bench/analysis.md)
and for the sources read after the Prometheus ones (the pod lists). Like
Prometheus's scrape_timeout, which may not exceed scrape_interval."""
MIN_SOURCE_DEADLINE = "5s"
"""...but never below this: with the short intervals of tests and benches
(2-5 s) on a loaded machine, a healthy read would be cut off and flap to
down. Below an interval of 6.7 s a slow source may make a cycle overrun by
the difference."""
MAX_RESPONSE_SIZE = "256MiB"
"""One body held whole: a LIST page, one watch event, scrape_pools,
/metrics, an error answer. A page of 500 Endpoints objects of 1000
addresses each is ~80 MB."""
MISSING_TARGET_SERIES_LIMIT = 1000
INTERVAL = "1m"

# --- the HTTP face ----------------------------------------------------------------
LISTEN_ADDRESS = ":9842"
WEB_MAX_CONNECTIONS = 200
WEB_HEADER_TIMEOUT = "10s"

# --- logs -------------------------------------------------------------------------
LOG_LEVEL = "info"
LOG_FORMAT = "logfmt"
