"""The active targets of one Prometheus (or Thanos Query), as `Target`s.

Why the requests look the way they do: the full `/api/v1/targets` answer
reaches hundreds of MB in large clusters (prometheus #6186, #6269), mostly
dropped targets. So this source asks `/api/v1/scrape_pools` (v2.42+) and
then `/api/v1/targets?state=active&scrapePool=<pool>` per pool: a few pools
at a time for the first read, one at a time for re-reads (Prometheus
builds each answer whole in its heap). Thanos Query and older Prometheus
answer 404 to scrape_pools and accept only `state`: there the one
unfiltered (but active-only) list is read.

Why the parsing looks the way it does: a 100k-target answer decoded into
dicts costs >1 GB. msgspec decodes straight into Structs that name only the
labels read below; every other label is skipped without being built.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import sys
import time
import weakref
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from itertools import chain
from typing import NoReturn
from urllib.parse import urlsplit

import aiohttp
import msgspec

from coverage_exporter import defaults, untrusted
from coverage_exporter.flagtypes import parse_seconds
from coverage_exporter.health import SOURCE_PROMETHEUS, SourceHealth
from coverage_exporter.logs import fields
from coverage_exporter.model.answerers import process_token
from coverage_exporter.model.objects import (
    KIND_THANOS_QUERY,
    KIND_UNKNOWN,
    KIND_VMAGENT,
    ROLE_UNKNOWN,
    PrometheusSnapshot,
    ScrapeJob,
    Target,
)
from coverage_exporter.model.topology import Declared, identify
from coverage_exporter.sources import httpclient
from coverage_exporter.sources.errors import DEFAULT_LIMITS, BodyTooLarge, Limits, SourceError
from coverage_exporter.sources.prometheus import server_kind, target_decoder, thanos
from coverage_exporter.sources.prometheus.config import (
    CONFIG_PATH,
    LoadedConfig,
    parse_config_response,
)
from coverage_exporter.sources.prometheus.targets_json import (  # noqa: F401  (the source's API)
    ROLE_INGRESS,
    ROLE_NODE,
    ROLE_OTHER,
    ROLE_POD,
    ROLE_SERVICE,
    STREAM_PIECE_BYTES,
    PoolTargets,
    TargetStream,
    _status_error,
    address_host,
    discovery_role,
    parse_targets,
)

log = logging.getLogger(__name__)

_IN_COLLECTION: ContextVar[bool] = ContextVar("prometheus_in_collection", default=False)
"""Set while collect() runs: a failed collection is one error, recorded by
collect() itself. Its pool reads run concurrently, and when several fail
at once (one broken server answers every pool the same way) each would
otherwise count, as many as happened to finish before the first failure
cancelled the others."""

DEFAULT_CONCURRENCY = 4

HELD_WHOLE_AFTER = 8 * STREAM_PIECE_BYTES
"""Bytes a target list decoded in this process may hold undecoded before
it counts as held whole (an answer that does not split between targets, or
a gzip bomb of blanks): a list that splits holds one piece of ~1 MiB."""

_whole_turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def _whole_turn() -> asyncio.Lock:
    """Held by the one target list of the process that is held whole, from
    HELD_WHOLE_AFTER bytes until it is decoded or cut off. Each such list
    may reach --max-response-bytes, and the pools of every Prometheus are
    read at once: a bomb on each of 4 pools took the process to 1 GiB at
    the 256 MiB default. Another list that stops splitting waits here (its
    download paused) with at most HELD_WHOLE_AFTER in hand, as the worker
    path decodes one list at a time. One per event loop (the tests run many)."""
    loop = asyncio.get_running_loop()
    turn = _whole_turns.get(loop)
    if turn is None:
        turn = _whole_turns[loop] = asyncio.Lock()
    return turn


SCRAPE_POOLS_PATH = "/api/v1/scrape_pools"
RUNTIMEINFO_PATH = "/api/v1/status/runtimeinfo"
TARGETS_PATH = "/api/v1/targets"
METRICS_PATH = "/metrics"


# --- configuration ---------------------------------------------------------


@dataclass
class PrometheusEndpoint:
    """Where one Prometheus is and how to talk to it."""

    url: str
    name: str = ""
    """Value of the `prometheus` label; defaults to the URL's host:port."""
    bearer_token_file: str | None = None
    basic_auth_user: str | None = None
    basic_auth_password_file: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure_skip_verify: bool = False
    server_name: str | None = None
    """The name its TLS certificate is checked against, when it is not the
    URL's host (a pod read at its IP whose certificate names its Service)."""
    timeout_seconds: float = parse_seconds(defaults.PROMETHEUS_TIMEOUT)
    """Per request, body included."""
    declared: Declared = field(default_factory=Declared)
    """Where the server stands in its fleet, as the user declared it (or
    its Operator object, for a server discovery found)."""
    found_by: str = "--prometheus-url"
    """How the exporter knows of it: the flag, "fleet file", or the object
    or pod selector discovery found it by."""

    def __post_init__(self) -> None:
        self.url = _check_url(self.url)
        if not self.name:
            self.name = default_name(self.url)
        if self.bearer_token_file and self.basic_auth_user is not None:
            raise ValueError(f"{self.name}: bearer token and basic auth are mutually exclusive")
        if not 0 < self.timeout_seconds < float("inf"):
            raise ValueError(f"{self.name}: the timeout must be a positive number of seconds")


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    # A trailing slash would double up with the API paths appended later;
    # a path prefix (--web.route-prefix) is kept.
    return url.rstrip("/")


def default_name(url: str) -> str:
    """host:port of a URL, with the scheme's default port if none is given."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{host}:{port}"


def parse_prometheus_url(spec: str) -> tuple[str, str]:
    """`NAME=URL` or `URL` (as given to --prometheus-url) -> (name, url)."""
    head, sep, tail = spec.partition("=")
    # A URL may carry '=' in its query; only a prefix without '://' is a name.
    if sep and "://" not in head:
        name, url = head.strip(), tail.strip()
        if not name:
            raise ValueError(f"empty name in {spec!r}")
    else:
        name, url = "", spec.strip()
    url = _check_url(url)
    return (name or default_name(url), url)


# --- wire format -------------------------------------------------------------
# Only what is read below. gc=False: these hold only strings, and skipping GC
# tracking for 100k objects makes decoding noticeably cheaper.


class _ScrapePoolsData(msgspec.Struct):
    pools: list[str] | None = msgspec.field(name="scrapePools")


class _ScrapePoolsResponse(msgspec.Struct):
    status: str
    data: _ScrapePoolsData | None = None
    error_type: str = msgspec.field(name="errorType", default="")
    error: str = ""


class _RuntimeInfo(msgspec.Struct, rename="camel"):
    start_time: str = ""
    hostname: str = ""  # Prometheus 3.x


class _RuntimeInfoResponse(msgspec.Struct):
    data: _RuntimeInfo | None = None


_RUNTIMEINFO_DECODER: untrusted.Decoder[_RuntimeInfoResponse] = untrusted.Decoder(
    _RuntimeInfoResponse
)


class _ErrorResponse(msgspec.Struct):
    error_type: str = msgspec.field(name="errorType", default="")
    error: str = ""


_SCRAPE_POOLS_DECODER = untrusted.Decoder(_ScrapePoolsResponse)
_ERROR_DECODER = untrusted.Decoder(_ErrorResponse)


def parse_scrape_pools(body: bytes) -> list[str]:
    try:
        response = _SCRAPE_POOLS_DECODER.decode(body)
    except msgspec.DecodeError as exc:
        raise SourceError(f"undecodable response: {exc}") from None
    if response.status != "success":
        raise SourceError(_status_error(response.status, response.error_type, response.error))
    if response.data is None:
        raise SourceError("status 'success' without data")
    return response.data.pools or []


_POOL_TARGETS_PREFIXES = (
    "prometheus_target_scrape_pool_targets{",
    # vmagent (lib/promscrape/targetstatus.go): one series per status,
    # "up" and "down", which add up to the job's active targets.
    "vm_promscrape_scrape_pool_targets{",
)
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def parse_pool_target_counts(text: str) -> dict[str, int] | None:
    """`prometheus_target_scrape_pool_targets{scrape_job=...}` per pool from
    Prometheus's own /metrics text (vmagent's `vm_promscrape_scrape_pool_
    targets`, summed over its statuses); None when the metric is not there
    at all (Thanos Query, or not a Prometheus)."""
    return _counts_by_label(text, _POOL_TARGETS_PREFIXES, "scrape_job")


_DISCOVERED_PREFIX = ("prometheus_sd_discovered_targets{",)


def parse_discovered_target_counts(text: str) -> dict[str, int] | None:
    """`prometheus_sd_discovered_targets{config=<job>,name="scrape"}` per
    pool from Prometheus's own /metrics text: what its discovery manager
    last sent the scrape manager, BEFORE relabelling (discovery/manager.go,
    allGroups; the notifier's manager writes name="notify"). None when the
    metric is not there (vmagent has no per-job equivalent)."""
    return _counts_by_label(text, _DISCOVERED_PREFIX, "config", name="scrape")


def _counts_by_label(
    text: str, prefixes: tuple[str, ...], label: str, **only: str
) -> dict[str, int] | None:
    """The samples of the families in `prefixes` summed by `label`, of those
    whose labels include `only`; None when no such sample is there."""
    counts: dict[str, int] | None = None
    for line in text.splitlines():
        if not line.startswith(prefixes):
            continue
        start = line.find("{") + 1
        labels_end = line.rfind("}")
        values = line[labels_end + 1 :].split()
        labels = dict(_LABEL_RE.findall(line, start, labels_end))
        key = labels.get(label)
        if key is None or not values or any(labels.get(k) != v for k, v in only.items()):
            continue
        count = _target_count(values[0])
        if count is None:
            # Not a count (NaN, Inf, negative, fractional): this pool counts
            # as changed and is read in full, never taken as a size.
            log.warning(
                "ignoring a pool target count", extra=fields(line=untrusted.printable(line))
            )
            continue
        if counts is None:
            counts = {}
        key = re.sub(r"\\.", lambda m: _UNESCAPE.get(m[0], m[0]), key)
        counts[key] = counts.get(key, 0) + count
    return counts


_START_TIME = "process_start_time_seconds "
_SETTLE_SECONDS = 10.0
"""How long a server's pool counts (both: after and before relabelling)
must hold still on its /metrics before its discovery is taken as
delivered: two rounds of Prometheus's discovery manager (it sends at most
every 5 s) and scrape manager (it reloads every 5 s,
--scrape.discovery-reload-interval), so that a delivery cut by a send tick
is seen to grow, and a count discovered is seen through the relabelling."""


def discovery_settled(
    counts: Mapping[str, int] | None,
    discovered: Mapping[str, int] | None,
    pools: Collection[str],
    steady_for: float,
) -> bool:
    """Whether a server's discovery has delivered to every pool it runs, so
    that its coverage can be judged before the grace period after its start
    ends (cycle.CycleRunner): every pool delivered, and `counts` and
    `discovered` unchanged for _SETTLE_SECONDS (`steady_for`).

    A pool has delivered when its count after relabelling (`counts`:
    prometheus_target_scrape_pool_targets) is above zero, or its count
    before relabelling (`discovered`: prometheus_sd_discovered_targets,
    name="scrape") is: then its rules keep none of what was discovered (a
    hashmod shard that keeps none of a small pool, a keep that matches
    nothing), the pool's own verdict, not a wait.

    A count of zero proves nothing, before relabelling or after: Prometheus
    (2.53 and 3.x, discovery/manager.go) sets the discovered count to zero
    when it applies its configuration, then to the pool's targets at each
    send; a Kubernetes SD sends nothing until its informers have listed
    (WaitForCacheSync), and nothing at all for a pool with no object. So a
    pool that discovers nothing, or not yet, keeps the server on the grace
    period (checked on the real 3.16 and 2.53 with an API server that
    never answers, tests/local/test_discovery_settled.py), as does a
    server that writes no discovered count: vmagent (none per job; it
    does not list a pool without targets at all, which counts as zero)."""
    if counts is None or not pools or steady_for < _SETTLE_SECONDS:
        return False
    return all(counts.get(pool, 0) > 0 or (discovered or {}).get(pool, 0) > 0 for pool in pools)


def parse_start_time(text: str) -> float | None:
    """`process_start_time_seconds` from a server's own /metrics (the Go
    client's process collector: Prometheus 2.x and 3.x, Prometheus
    --agent; vmagent's VictoriaMetrics/metrics library writes the same
    name); None when absent or not a time."""
    if text.startswith(_START_TIME):
        at = 0
    else:
        at = text.find("\n" + _START_TIME) + 1
        if not at:
            return None
    end = text.find("\n", at)
    value = text[at + len(_START_TIME) : end if end >= 0 else len(text)].split(" ", 1)[0]
    try:
        started = float(value)
    except ValueError:
        return None
    return started if math.isfinite(started) and started > 0 else None


def _target_count(text: str) -> int | None:
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0 or not value.is_integer():
        return None
    return int(value)


def _error_detail(body: bytes) -> str:
    """What an HTTP error answer says, short enough for a log line."""
    try:
        parsed = _ERROR_DECODER.decode(body)
    except msgspec.DecodeError:
        parsed = None
    if parsed is not None and parsed.error:
        return untrusted.printable(f"{parsed.error_type}: {parsed.error}")
    return untrusted.printable(body)


# --- the source ----------------------------------------------------------------


@dataclass(slots=True)
class _Basis:
    """What a snapshot is made of, each pool's targets by identity."""

    pools: list[tuple[str, Sequence[Target], int, int]]
    config: LoadedConfig | None
    fallback: bool
    final_labels_only: bool
    kind: str
    started: float | None

    def same_as(self, other: _Basis) -> bool:
        return (
            len(self.pools) == len(other.pools)
            and all(
                a[0] == b[0] and a[1] is b[1] and a[2:] == b[2:]
                for a, b in zip(self.pools, other.pools, strict=True)
            )
            and (self.config, self.fallback, self.final_labels_only, self.kind, self.started)
            == (other.config, other.fallback, other.final_labels_only, other.kind, other.started)
        )


class PrometheusSource:
    """Collects the active targets of one Prometheus.

    Keeps the last result per scrape pool so that a caller who knows which
    pools changed (see `pool_target_counts`) can refresh only those.
    """

    def __init__(
        self,
        endpoint: PrometheusEndpoint,
        *,
        health: SourceHealth | None = None,
        session: aiohttp.ClientSession | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        limits: Limits = DEFAULT_LIMITS,
        decoder: target_decoder.TargetDecoder | None = None,
    ) -> None:
        """decoder: decode target lists in that worker process; None decodes
        them in this process's threads."""
        self.endpoint = endpoint
        self._decoder = decoder
        self.health = health or SourceHealth(SOURCE_PROMETHEUS, prometheus=endpoint.name)
        self._session = session
        self._owns_session = session is None
        self._concurrency = concurrency
        self._limits = limits
        # Rebuilt when the files rotate: a restart must not be the only way
        # to pick up a renewed certificate.
        self._tls = httpclient.ReloadingTLS(
            ca_file=endpoint.ca_file,
            cert_file=endpoint.cert_file,
            key_file=endpoint.key_file,
            insecure_skip_verify=endpoint.insecure_skip_verify,
        )
        self._timeout = aiohttp.ClientTimeout(total=endpoint.timeout_seconds)
        self._pools: dict[str, PoolTargets] = {}
        self._fallback = False
        self._config: LoadedConfig | None = None
        self._config_read = False
        self._final_labels_only = False
        self._snapshot: tuple[_Basis, PrometheusSnapshot] | None = None
        self._kind = endpoint.declared.kind or KIND_UNKNOWN
        """What answers on the URL (see sources.prometheus.server_kind)."""
        self._stores = thanos.StoreMembers(endpoint.name)
        self._probed = False
        """Whether /metrics and /api/v1/stores were asked (once, while
        /api/v1/status/flags is not served)."""
        self._start_told: float | None = None
        """process_start_time_seconds as the server last said it."""
        self._started: float | None = None
        """PrometheusSnapshot.started: set when the told start changes (a
        restart), then kept, so that snapshots stay equal while it runs."""
        self._steady: tuple[dict[str, int] | None, dict[str, int] | None, float] = (
            None,
            None,
            0.0,
        )
        """The pool counts its /metrics last told (after relabelling, and
        discovered before it), and since when (time.monotonic()) it has told
        the same (discovery_settled)."""

    @property
    def kind(self) -> str:
        return self._kind

    async def __aenter__(self) -> PrometheusSource:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def declared(self) -> Declared:
        """Where the user declared this server in its fleet."""
        return self.endpoint.declared

    @property
    def uses_fallback(self) -> bool:
        """True while the server lacks /api/v1/scrape_pools (Thanos, < v2.42)."""
        return self._fallback

    @property
    def pool_active_counts(self) -> Mapping[str, int]:
        """Active targets per pool as of the last successful collection."""
        return {pool: result.active for pool, result in self._pools.items()}

    async def collect(
        self, pools_to_refresh: Collection[str] | None = None, *, one_pool_at_a_time: bool = False
    ) -> PrometheusSnapshot:
        """All active targets, with every pool fetched anew, or only the pools
        in `pools_to_refresh` (plus pools not seen before) while the others
        are taken from the previous collection. Without scrape_pools support
        every collection is a full one. one_pool_at_a_time: each pool's read
        starts when the previous one has ended, else `concurrency` at once.
        Raises SourceError; on failure the kept per-pool results are left as
        they were."""
        started = time.monotonic()
        collecting = _IN_COLLECTION.set(True)
        try:
            if self._kind == KIND_THANOS_QUERY:
                snapshot = await self._collect_thanos()
            else:
                if pools_to_refresh is None:
                    # A full read (the first after a restart is one) asks
                    # /metrics too, for when the server started; a few
                    # hundred KB next to the target lists. A partial read
                    # follows pool_target_counts, which has just asked it.
                    await self.pool_target_counts()
                at_once = 1 if one_pool_at_a_time else self._concurrency
                pools = await self._collect(pools_to_refresh, at_once)
        except SourceError as exc:
            self.health.record_error(str(exc))
            self.health.mark(False, time.monotonic() - started, str(exc))
            raise
        finally:
            _IN_COLLECTION.reset(collecting)
        self.health.mark(True, time.monotonic() - started)
        if self._kind == KIND_THANOS_QUERY:
            self._pools, self._snapshot = {}, None
            return snapshot
        self._pools = pools
        config = self._config
        basis = _Basis(
            [
                (name, result.targets, result.active, result.unattributed)
                for name, result in pools.items()
            ],
            config,
            self._fallback,
            self._final_labels_only,
            self._kind,
            self._started,
        )
        if self._snapshot is not None and basis.same_as(self._snapshot[0]):
            # Every pool came back as it was (the decoder hands out the very
            # same targets): the very same snapshot, so that the collector
            # regroups and compares nothing.
            return self._snapshot[1]
        # A tuple: untracked by the garbage collector (see PoolTargets).
        targets = tuple(chain.from_iterable(result.targets for result in pools.values()))
        if self._final_labels_only and config is not None:
            targets = _roles_from_config(targets, config.jobs)
        snapshot = PrometheusSnapshot(
            name=self.endpoint.name,
            targets=targets,
            identity=identify(
                self.endpoint.name,
                config.external_labels if config else {},
                config.jobs if config else (),
                self.endpoint.declared,
                self._kind,
            ),
            jobs=config.jobs if config else None,
            pools=tuple(pools),
            pools_listed=not self._fallback,
            discovered_labels=not self._final_labels_only,
            unjudged_pools={
                name: _unattributed_reason(result.unattributed, result.active)
                for name, result in pools.items()
                if result.unattributed
            },
            started=self._started,
        )
        self._snapshot = (basis, snapshot)
        return snapshot

    async def read_config(self) -> LoadedConfig | None:
        """The loaded configuration, read anew; None where the server does
        not serve it (Thanos Query, vmagent, an API proxy that allows only
        the targets). Raises SourceError on any other failure."""
        headers = self._auth_headers()
        await self._recognise(headers)
        status, body = await self._request(CONFIG_PATH, None, headers)
        if status in (401, 403) or status in server_kind.NOT_SERVED:
            if not self._config_read:
                log.info(
                    "no loaded configuration: the pools meant to scrape each Service and the "
                    "server's place among shards and replicas are taken from its targets only",
                    extra=fields(server=self.endpoint.name, path=CONFIG_PATH, status=status),
                )
            self._config_read, self._config = True, None
            return None
        if status != 200:
            self._fail(f"GET {CONFIG_PATH}: HTTP {status}: {_error_detail(body)}")
        try:
            config = await asyncio.to_thread(parse_config_response, body)
        except SourceError as exc:
            self._fail(f"GET {CONFIG_PATH}: {exc}")
        self._config_read, self._config = True, config
        return config

    async def runtime_tokens(self, probes: int) -> list[str]:
        """Who answers: `probes` reads of runtimeinfo, each on a connection
        of its own (`Connection: close`), since a Service balances
        connections, not requests (model.answerers). Empty where the server
        does not say (Thanos Query answers 404); never an error: the
        collection reads the server anyway."""
        headers = {**self._auth_headers(), "Connection": "close"}
        tokens: list[str] = []
        for _ in range(probes):
            try:
                status, body = await self._request(RUNTIMEINFO_PATH, None, headers)
            except SourceError:
                return tokens
            if status != 200:
                return tokens
            try:
                info = _RUNTIMEINFO_DECODER.decode(body).data
            except msgspec.DecodeError:
                return tokens
            if info is not None and info.start_time:
                tokens.append(
                    process_token(
                        untrusted.printable(info.start_time, 60),
                        untrusted.printable(info.hostname, 100),
                    )
                )
        return tokens

    async def _recognise(self, headers: Mapping[str, str]) -> None:
        """What answers on the URL, asked every cycle (a server replaced by
        another kind is noticed at once): /api/v1/status/flags, a few KB;
        where that is not served, once: /metrics (vmagent's build info),
        then /api/v1/stores (only Thanos Query has it: read as one server,
        its union of replicas would hide a replica that misses targets).
        A declared kind is not asked. Never fails the source."""
        if self.endpoint.declared.kind:
            return
        try:
            status, body = await self._request(server_kind.FLAGS_PATH, None, headers)
            kind = server_kind.kind_from_flags(body) if status == 200 else None
            if status == 200:
                self._probed = False
            elif self._kind in (KIND_VMAGENT, KIND_THANOS_QUERY):
                kind = self._kind
            elif not self._probed:
                self._probed = True
                kind = await self._probe(headers)
        except SourceError as exc:
            log.debug(
                "server kind not recognised this cycle",
                extra=fields(server=self.endpoint.name, err=exc),
            )
            return
        if kind is not None and kind != self._kind:
            log.info("server kind recognised", extra=fields(server=self.endpoint.name, kind=kind))
            self._kind = kind

    async def _probe(self, headers: Mapping[str, str]) -> str | None:
        status, body = await self._request(METRICS_PATH, None, headers)
        if status == 200:
            kind = server_kind.kind_from_metrics(body.decode("utf-8", "replace"))
            if kind is not None:
                return kind
        status, body = await self._request(thanos.STORES_PATH, None, headers)
        if status == 200:
            try:
                thanos.parse_stores(body)
            except SourceError:
                return None
            return KIND_THANOS_QUERY
        return None

    async def _collect_thanos(self) -> PrometheusSnapshot:
        """Query's stores, then its targets, each filed under its store (see
        sources.prometheus.thanos); one snapshot holding a snapshot per store."""
        headers = self._auth_headers()
        name = self.endpoint.name
        status, body = await self._request(thanos.STORES_PATH, None, headers)
        stores: list[thanos.Store] | None = None
        if status == 200:
            try:
                stores = await asyncio.to_thread(thanos.parse_stores, body)
            except SourceError as exc:
                self._fail(f"GET {thanos.STORES_PATH}: {exc}")
        elif status not in server_kind.NOT_SERVED and status not in (401, 403):
            self._fail(f"GET {thanos.STORES_PATH}: HTTP {status}: {_error_detail(body)}")
        stream = thanos.StoreTargetStream(
            thanos.label_names(stores or ()), max_buffered=self._limits.max_body_bytes
        )
        await self._stream_into(stream, {"state": "active"}, headers)
        if stream.warnings:
            warned = "; ".join(stream.warnings)
            log.warning(
                "partial answer from Thanos Query", extra=fields(server=name, warnings=warned[:300])
            )
            self.health.record_error(f"prometheus {name}: partial answer: {warned}")
        identity = identify(name, {}, (), self.endpoint.declared, KIND_THANOS_QUERY)
        if stores is None:
            # Nothing names the stores: the answer is the union of every
            # replica behind Query, which is the coverage of none of them.
            targets = tuple(
                t for pools in stream.by_labels.values() for ts in pools.values() for t in ts
            )
            return PrometheusSnapshot(
                name=name,
                targets=targets,
                identity=identity,
                jobs=None,
                pools=tuple(dict.fromkeys(t.scrape_pool for t in targets)),
                pools_listed=False,
                unknown_reason=(
                    f"Thanos Query answers HTTP {status} to {thanos.STORES_PATH}: its targets "
                    "cannot be told apart by replica; point the exporter at each Prometheus"
                ),
            )
        members = self._stores.snapshots(
            stores, stream.by_labels, stream.warnings, time.monotonic()
        )
        return PrometheusSnapshot(
            name=name,
            targets=(),
            identity=identity,
            jobs=None,
            pools=(),
            pools_listed=False,
            members=tuple(members),
        )

    async def pool_target_counts(self) -> dict[str, int] | None:
        """Active targets per pool from Prometheus's own /metrics: a cheap way
        to notice that a pool changed size. Equal counts do not prove equal
        targets (a node replaced by another), so callers should still do a
        full collection now and then. None when unavailable; only failures
        other than a 404 count as errors. Also notes when the server started
        (PrometheusSnapshot.started), from the same answer."""
        dates: list[str] = []
        try:
            status, body = await self._request(
                METRICS_PATH, None, self._auth_headers(), dates=dates
            )
            if status == 404:
                self._note_start(None, "")
                return None
            if status != 200:
                self._fail(f"GET {METRICS_PATH}: HTTP {status}: {_error_detail(body)}")
        except SourceError as exc:
            log.warning("cannot read the pool target counts", extra=fields(err=exc))
            self._steady = (None, None, 0.0)  # not seen holding still
            return None
        text = body.decode("utf-8", "replace")
        self._note_start(parse_start_time(text), dates[0] if dates else "")
        counts = parse_pool_target_counts(text)
        discovered = parse_discovered_target_counts(text)
        if (counts, discovered) != self._steady[:2]:
            self._steady = (counts, discovered, time.monotonic())
        return counts

    @property
    def discovery_settled(self) -> bool:
        """Its discovery has delivered to every pool it runs (see
        `discovery_settled`), as of its last /metrics read: cycle.CycleRunner
        then judges it before the grace period after its start ends. The
        pools it runs: its configuration's jobs, the pools it listed, counts,
        and counts as discovered (before its first reload it lists and counts
        none; 2.53 never lists nor counts after relabelling a pool whose
        discovery never sent, but counts it discovered at zero)."""
        counts, discovered, since = self._steady
        if self._started is None:
            return False
        pools = set(counts or ()) | set(discovered or ()) | self._pools.keys()
        if self._config is not None:
            pools.update(job.name for job in self._config.jobs)
        return discovery_settled(counts, discovered, pools, time.monotonic() - since)

    def _note_start(self, told: float | None, date: str) -> None:
        """The server's start on this exporter's clock: now minus its own
        uptime (its Date header minus its start, both on its clock; without
        a Date, our clock minus its start, never in the future). Computed
        once per start told, so a steady server gives a steady value."""
        if told is None:
            self._start_told = self._started = None
            self._steady = (None, None, 0.0)
            return
        if told == self._start_told:
            return
        self._steady = (None, None, 0.0)  # a restart: its counts start over
        now = time.time()
        try:
            server_now = parsedate_to_datetime(date).timestamp() if date else now
        except (TypeError, ValueError, IndexError, OverflowError):
            server_now = now
        self._start_told = told
        self._started = now - max(0.0, server_now - told)

    async def _collect(
        self, pools_to_refresh: Collection[str] | None, at_once: int
    ) -> dict[str, PoolTargets]:
        headers = self._auth_headers()
        pools = await self._scrape_pools(headers)
        if pools is None:
            return await self._fetch_all(headers)
        wanted = [
            pool
            for pool in pools
            if pools_to_refresh is None or pool in pools_to_refresh or pool not in self._pools
        ]
        fetched = await self._fetch_pools(wanted, headers, at_once)
        # Pools gone from scrape_pools are dropped with the old mapping.
        return {pool: fetched[pool] if pool in fetched else self._pools[pool] for pool in pools}

    async def _scrape_pools(self, headers: Mapping[str, str]) -> list[str] | None:
        """The pool names, or None if the server does not know the endpoint.

        Asked at every collection, even in fallback: the 404 costs one tiny
        request, and an upgraded Prometheus is picked up without a restart.
        """
        status, body = await self._request(SCRAPE_POOLS_PATH, None, headers)
        if status in server_kind.NOT_SERVED:
            if not self._fallback:
                log.info(
                    "no scrape pools API (vmagent, Thanos Query or Prometheus < 2.42): "
                    "reading the unfiltered active target list instead",
                    extra=fields(server=self.endpoint.name, path=SCRAPE_POOLS_PATH, status=status),
                )
            self._fallback = True
            return None
        if status != 200:
            self._fail(f"GET {SCRAPE_POOLS_PATH}: HTTP {status}: {_error_detail(body)}")
        if self._fallback:
            log.info(
                "the scrape pools API is available again",
                extra=fields(server=self.endpoint.name, path=SCRAPE_POOLS_PATH),
            )
            self._fallback = False
        try:
            return list(dict.fromkeys(parse_scrape_pools(body)))
        except SourceError as exc:
            self._fail(f"GET {SCRAPE_POOLS_PATH}: {exc}")

    async def _fetch_all(self, headers: Mapping[str, str]) -> dict[str, PoolTargets]:
        # state=active spares us the dropped targets, which dominate the
        # full answer.
        params = {"state": "active"}
        return await self._stream_targets(params, None, headers)

    async def _fetch_pools(
        self, pools: list[str], headers: Mapping[str, str], at_once: int
    ) -> dict[str, PoolTargets]:
        limit = asyncio.Semaphore(at_once)

        async def fetch(pool: str) -> PoolTargets:
            async with limit:
                params = {"state": "active", "scrapePool": pool}
                return (await self._stream_targets(params, pool, headers))[pool]

        try:
            # TaskGroup: the first failure cancels the other fetches.
            async with asyncio.TaskGroup() as group:
                tasks = {pool: group.create_task(fetch(pool)) for pool in pools}
        except ExceptionGroup as errors:
            raise _first_source_error(errors) from None
        return {pool: task.result() for pool, task in tasks.items()}

    async def _stream_targets(
        self, params: Mapping[str, str], pool: str | None, headers: Mapping[str, str]
    ) -> dict[str, PoolTargets]:
        """GET /api/v1/targets, decoded piece by piece as the body arrives
        (see TargetStream): in the decoder process when there is one, else
        in a worker thread, so that the exporter's /metrics keeps answering
        during a big pool."""
        if self._decoder is not None:
            return await self._decode_out_of_process(params, pool, headers)
        stream = TargetStream(
            pool, piece_bytes=STREAM_PIECE_BYTES, max_buffered=self._limits.max_body_bytes
        )
        result = await self._stream_into(stream, params, headers)
        self._note_final_labels_only(stream.final_labels_only)
        return result

    async def _stream_into(
        self, stream: TargetStream, params: Mapping[str, str], headers: Mapping[str, str]
    ) -> dict[str, PoolTargets]:
        """GET /api/v1/targets into `stream`, fed in worker threads; held
        whole (see HELD_WHOLE_AFTER) by one list of the process at a time."""
        pending = bytearray()
        whole = _whole_turn()
        holding = False

        async def sink(chunk: bytes) -> None:
            nonlocal pending, holding
            pending += chunk
            if len(pending) >= STREAM_PIECE_BYTES:
                if not holding and stream.buffered > HELD_WHOLE_AFTER:
                    await whole.acquire()
                    holding = True
                # Handed over, not copied: the stream adopts the bytearray.
                piece, pending = pending, bytearray()
                await asyncio.to_thread(stream.feed, piece)

        what = _describe(TARGETS_PATH, params)
        try:
            status, body = await self._request(TARGETS_PATH, params, headers, sink)
            if status != 200:
                self._fail(f"{what}: HTTP {status}: {_error_detail(body)}")
            try:
                await asyncio.to_thread(stream.feed, pending)
                return await asyncio.to_thread(stream.finish)
            except SourceError as exc:
                self._fail(f"{what}: {exc}")
        finally:
            # The stream let go of what it held (finish, or the limit
            # passed): the next list may hold its own.
            if holding:
                whole.release()

    async def _decode_out_of_process(
        self, params: Mapping[str, str], pool: str | None, headers: Mapping[str, str]
    ) -> dict[str, PoolTargets]:
        assert self._decoder is not None
        # A read starts when the worker is about to want its body: it takes
        # one answer at a time, and 20 bodies read at once only waited in
        # this process's memory (33 MB at 100k nodes).
        async with self._decoder.turn():
            return await self._read_for_worker(params, pool, headers)

    async def _read_for_worker(
        self, params: Mapping[str, str], pool: str | None, headers: Mapping[str, str]
    ) -> dict[str, PoolTargets]:
        assert self._decoder is not None
        body = bytearray()

        async def sink(chunk: bytes) -> None:
            body.extend(chunk)

        what = _describe(TARGETS_PATH, params)
        encoding: list[str] = []
        status, error = await self._request(TARGETS_PATH, params, headers, sink, encoding)
        if status != 200:
            self._fail(f"{what}: HTTP {status}: {_error_detail(error)}")
        # What the pools held last time: their unchanged targets are reused.
        previous = {
            name: kept.targets for name, kept in self._pools.items() if pool is None or name == pool
        }
        try:
            decoded, shared = await self._decoder.decode(
                body,
                encoding[0],
                pool,
                self._limits.max_stream_bytes,
                STREAM_PIECE_BYTES,
                previous,
                max_held=self._limits.max_body_bytes,
            )
        except SourceError as exc:
            self.health.record_request(0)
            self._fail(f"{what}: {exc}")
        self.health.record_request(decoded.body_bytes)
        body.clear()
        # The pool asked for is always there: TargetStream starts with it.
        result = {
            sys.intern(p.name): PoolTargets(
                shared[p.name].targets, p.active, shared[p.name], p.unattributed
            )
            for p in decoded.pools
        }
        self._note_final_labels_only(decoded.final_labels_only)
        return result

    def _note_final_labels_only(self, count: int) -> None:
        """Targets matched by their final labels alone: said once."""
        if count and not self._final_labels_only:
            log.warning(
                "targets come without discoveredLabels (vmagent with "
                "-promscrape.dropOriginalLabels?): matched by their namespace, service, node and "
                "pod labels and instance, their discovery role taken from the loaded configuration "
                "(unknown without it); a pool whose targets name no Service cannot be judged",
                extra=fields(server=self.endpoint.name),
            )
        self._final_labels_only = self._final_labels_only or bool(count)

    def _auth_headers(self) -> dict[str, str]:
        ep = self.endpoint
        try:
            return httpclient.auth_headers(
                bearer_token_file=ep.bearer_token_file,
                basic_auth_user=ep.basic_auth_user,
                basic_auth_password_file=ep.basic_auth_password_file,
            )
        except SourceError as exc:
            raise SourceError(f"prometheus {ep.name}: {exc}") from None

    def _session_for_requests(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = httpclient.new_session(connection_limit=self._concurrency + 1)
        return self._session

    async def _request(
        self,
        path: str,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str],
        sink: Callable[[bytes], Awaitable[None]] | None = None,
        sent_encoding: list[str] | None = None,
        dates: list[str] | None = None,
    ) -> tuple[int, bytes]:
        """Status and body; transport failures are SourceErrors. With a
        sink, a 200 body goes to it chunk by chunk and b"" is returned.
        sent_encoding: the sink gets a 200 body as sent (gzip asked for),
        its Content-Encoding is appended to this list (one per call, so
        concurrent reads never mix them up), and its bytes are counted by
        the caller once decompressed. dates: the answer's Date header is
        appended to it."""
        compressed = sent_encoding is not None
        received = 0
        if compressed:
            headers = {**headers, "Accept-Encoding": "gzip"}
        elif sink is None and path != METRICS_PATH:
            # The API's small answers (config, flags, runtimeinfo, the pool
            # names) are asked plain: Prometheus gzips with a compressor made
            # anew for each answer (util/httputil/compression.go), ~1 MB of
            # its heap for answers of a few KB. Its /metrics pools its
            # compressors, and target lists are worth compressing.
            headers = {**headers, "Accept-Encoding": "identity"}
        try:
            async with self._session_for_requests().get(
                self.endpoint.url + path,
                params=params,
                headers=headers,
                auto_decompress=not compressed,
                # Plain http needs no context (and building one loads the
                # system CAs).
                ssl=self._tls.context() if self.endpoint.url.startswith("https") else True,
                server_hostname=self.endpoint.server_name,
                timeout=self._timeout,
            ) as resp:
                if dates is not None:
                    dates.append(resp.headers.get("Date", ""))
                if resp.status != 200:
                    # Only the start of an error answer is ever shown.
                    body = await httpclient.read_excerpt(resp)
                    received = len(body)
                elif sink is None:
                    # A copy: these answers are parsed as bytes (target
                    # lists, the big ones, are streamed, not read here).
                    body = bytes(await httpclient.read_body(resp, self._limits.max_body_bytes))
                    received = len(body)
                else:
                    body = b""
                    if sent_encoding is not None:
                        sent_encoding.append(resp.headers.get("Content-Encoding", "").lower())
                    async for chunk in httpclient.iter_body(resp, self._limits.max_stream_bytes):
                        received += len(chunk)
                        await sink(chunk)
                    if compressed:
                        return resp.status, body
        except BodyTooLarge as exc:
            self.health.record_request(exc.limit)
            self._fail(f"{_describe(path, params)}: {exc}")
        except TimeoutError:
            self.health.record_request(received)
            limit = self.endpoint.timeout_seconds
            self._fail(f"{_describe(path, params)}: timed out after {limit:g}s")
        except aiohttp.ClientError as exc:
            self.health.record_request(received)
            self._fail(f"{_describe(path, params)}: {httpclient.describe(exc)}")
        self.health.record_request(received)
        return resp.status, body

    def _fail(self, message: str) -> NoReturn:
        message = f"prometheus {self.endpoint.name}: {message}"
        if not _IN_COLLECTION.get():
            self.health.record_error(message)
        raise SourceError(message)


def _describe(path: str, params: Mapping[str, str] | None) -> str:
    query = "&".join(f"{key}={value}" for key, value in (params or {}).items())
    return f"GET {path}?{query}" if query else f"GET {path}"


def _first_source_error(errors: BaseExceptionGroup) -> BaseException:
    for exc in _leaves(errors):
        if isinstance(exc, SourceError):
            return exc
    return errors


def _leaves(errors: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in errors.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def _roles_from_config(
    targets: tuple[Target, ...], jobs: Sequence[ScrapeJob]
) -> tuple[Target, ...]:
    """Targets that came without discovered labels get their job's role
    from the loaded configuration (vmagent serves it), so that the pool is
    compared as the role it reads, and with the pool its configuration
    says is meant for the Service rather than beside it."""
    roles = {job.name: job.role for job in jobs}
    if not any(t.role == ROLE_UNKNOWN and t.scrape_pool in roles for t in targets):
        return targets
    return tuple(
        msgspec.structs.replace(t, role=roles[t.scrape_pool])
        if t.role == ROLE_UNKNOWN and t.scrape_pool in roles
        else t
        for t in targets
    )


def _unattributed_reason(unattributed: int, active: int) -> str:
    return (
        f"{unattributed} of the pool's {active} targets came without discovered labels "
        "(vmagent -promscrape.dropOriginalLabels) and without namespace and service labels, "
        "so which Service they belong to cannot be told; keep the original labels, or "
        "copy namespace and service into the job's labels"
    )
