"""Wires the sources, the cycle and the output together for `serve` and `audit`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TypeVar

from coverage_exporter import defaults, exit_codes, flagtypes, logs
from coverage_exporter.cycle import NO_SERVER, CycleResult, CycleRunner
from coverage_exporter.exposition.audit import render_json, render_table
from coverage_exporter.exposition.html import PageInfo, render_page
from coverage_exporter.exposition.metrics import ExporterState, render
from coverage_exporter.flagtypes import parse_seconds
from coverage_exporter.health import SourceHealth
from coverage_exporter.model.discovery import FoundServer
from coverage_exporter.model.report import CoverageReport
from coverage_exporter.model.scope import Scope, parse_label_selector, parse_service_key
from coverage_exporter.model.topology import Declared
from coverage_exporter.model.verdict import Verdict, decide
from coverage_exporter.progress import Progress
from coverage_exporter.servers import CheckedSource, Followed
from coverage_exporter.sources.errors import DEFAULT_LIMITS, Limits, SourceError
from coverage_exporter.sources.kubernetes.discovery import DiscoverySource
from coverage_exporter.sources.kubernetes.events import EventSource
from coverage_exporter.sources.kubernetes.kubeconfig import KubeconfigError
from coverage_exporter.sources.kubernetes.node_decoder import NodePageDecoder
from coverage_exporter.sources.kubernetes.operator import OperatorSource
from coverage_exporter.sources.kubernetes.source import (
    KubernetesSource,
)
from coverage_exporter.sources.prometheus import target_decoder
from coverage_exporter.sources.prometheus.fleet_file import Credentials, load_fleet
from coverage_exporter.sources.prometheus.server_kind import declare_kinds
from coverage_exporter.sources.prometheus.source import (
    PrometheusEndpoint,
    PrometheusSource,
    parse_prometheus_url,
)
from coverage_exporter.web.config import WebConfigFile
from coverage_exporter.web.front import Front, ListenError
from coverage_exporter.web.server import ServerLimits, parse_listen_address
from coverage_exporter.web.view import ExporterView

log = logging.getLogger("coverage_exporter")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class DiscoverySettings:
    """Where to look for Prometheus servers in the cluster (cli.py flags)."""

    operator: bool = True
    pod_selector: str = ""
    pod_port: str = defaults.PROMETHEUS_POD_PORT
    namespaces: tuple[str, ...] = ()
    credentials: Mapping[str, Credentials] = field(default_factory=dict)
    """The fleet file's `discovered` entries: how to read what is found."""
    timeout_seconds: float = flagtypes.parse_seconds(defaults.PROMETHEUS_TIMEOUT)

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, credentials: Mapping[str, Credentials] | None = None
    ) -> DiscoverySettings:
        """Raises ValueError with a message fit for the user."""
        selector = (getattr(args, "prometheus_pod_selector", None) or "").strip()
        if selector:
            try:
                parse_label_selector(selector)
            except ValueError as exc:
                raise ValueError(f"--prometheus-pod-selector: {exc}") from None
        port = (getattr(args, "prometheus_pod_port", None) or defaults.PROMETHEUS_POD_PORT).strip()
        if not port:
            raise ValueError("--prometheus-pod-port must name a port")
        operator = getattr(args, "prometheus_discovery", defaults.PROMETHEUS_DISCOVERY)
        if operator not in ("on", "off"):
            # An environment default escapes argparse's choices check.
            raise ValueError("--prometheus-discovery must be on or off")
        return cls(
            operator=operator == "on",
            pod_selector=selector,
            pod_port=port,
            namespaces=tuple(getattr(args, "prometheus_discovery_namespace", None) or ()),
            credentials=credentials or {},
            timeout_seconds=float(
                getattr(args, "prometheus_timeout", None)
                or flagtypes.parse_seconds(defaults.PROMETHEUS_TIMEOUT)
            ),
        )

    def endpoint(self, server: FoundServer) -> PrometheusEndpoint:
        """How to read a server discovery found: at its pod's address, placed
        by its object, with its object's credentials from the fleet file
        (none by default)."""
        creds = self.credentials.get(server.credentials, Credentials())
        ident = server.identity
        declared = (
            Declared(ident.scraper, ident.replica, ident.shard, ident.shards, how=ident.how)
            if ident is not None
            else Declared()
        )
        return PrometheusEndpoint(
            url=server.url,
            name=server.name,
            bearer_token_file=creds.bearer_token_file,
            basic_auth_user=creds.basic_auth_user,
            basic_auth_password_file=creds.basic_auth_password_file,
            ca_file=creds.ca_file,
            cert_file=creds.cert_file,
            key_file=creds.key_file,
            insecure_skip_verify=creds.insecure_skip_verify,
            server_name=creds.server_name,
            timeout_seconds=creds.timeout_seconds or self.timeout_seconds,
            declared=declared,
            found_by=server.found_by,
        )

    @property
    def enabled(self) -> bool:
        return self.operator or bool(self.pod_selector)


@dataclass(frozen=True, slots=True)
class Settings:
    kubeconfig: str | None
    context: str | None
    prometheus: tuple[PrometheusEndpoint, ...]
    scope: Scope
    missing_info_limit: int
    kubernetes_sync_timeout: float
    stale_after_seconds: float = parse_seconds(defaults.PROMETHEUS_STALE_AFTER)
    discovery_grace_seconds: float = parse_seconds(defaults.PROMETHEUS_DISCOVERY_GRACE)
    operator_refresh_seconds: float = parse_seconds(defaults.OPERATOR_REFRESH_INTERVAL)
    decode_in_process: bool = False
    """Target lists decoded in this process, not in the worker process of
    sources.target_decoder."""
    decode_nodes_in_process: bool = False
    """Node LIST pages decoded in this process, not in the worker process
    of sources.node_decoder."""
    discovery: DiscoverySettings = field(default_factory=DiscoverySettings)
    """Which servers are found in the cluster (sources.kubernetes.discovery)."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        """Raises ValueError with a message fit for the user."""
        endpoints = []
        for spec in args.prometheus_url or ():
            name, url = parse_prometheus_url(spec)
            endpoints.append(
                PrometheusEndpoint(
                    url=url,
                    name=name,
                    bearer_token_file=args.prometheus_bearer_token_file,
                    basic_auth_user=args.prometheus_basic_auth_user,
                    basic_auth_password_file=args.prometheus_basic_auth_password_file,
                    ca_file=args.prometheus_ca_file,
                    cert_file=args.prometheus_cert_file,
                    key_file=args.prometheus_key_file,
                    insecure_skip_verify=args.prometheus_insecure_skip_verify,
                    timeout_seconds=args.prometheus_timeout,
                )
            )
        credentials = {}
        if args.prometheus_fleet_file:
            fleet = load_fleet(args.prometheus_fleet_file, args.prometheus_timeout)
            endpoints.extend(fleet.servers)
            credentials = fleet.discovered
        endpoints = declare_kinds(endpoints, getattr(args, "prometheus_kind", None) or ())
        names = [e.name for e in endpoints]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"Prometheus server names must be unique: {', '.join(duplicates)}")
        if args.missing_target_series_limit < 0:
            raise ValueError("--missing-target-series-limit must be 0 or more")
        discovery = DiscoverySettings.from_args(args, credentials)
        scope = Scope(
            services=frozenset(parse_service_key(s) for s in args.service or ()),
            namespaces=frozenset(args.namespace or ()),
            label_selector=parse_label_selector(args.service_selector or ""),
        )
        return cls(
            kubeconfig=args.kubeconfig,
            context=args.context,
            prometheus=tuple(endpoints),
            scope=scope,
            missing_info_limit=args.missing_target_series_limit,
            kubernetes_sync_timeout=args.kubernetes_sync_timeout,
            stale_after_seconds=args.prometheus_stale_after,
            discovery_grace_seconds=args.prometheus_discovery_grace,
            # serve only: audit reads the Operator's objects once anyway.
            operator_refresh_seconds=getattr(
                args, "operator_refresh_interval", parse_seconds(defaults.OPERATOR_REFRESH_INTERVAL)
            ),
            discovery=discovery,
            decode_in_process=bool(getattr(args, "prometheus_decode_in_process", False)),
            decode_nodes_in_process=bool(getattr(args, "kubernetes_decode_in_process", False)),
        )


def cluster_name(settings: Settings) -> str:
    """What the report calls the cluster: the kubeconfig's cluster name (as
    `kubectl config get-contexts` shows it), or "in-cluster"."""
    from kubernetes import config as k8s_config

    if settings.kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        return "in-cluster"
    try:
        contexts, current = k8s_config.list_kube_config_contexts(settings.kubeconfig)
    except (k8s_config.ConfigException, OSError):
        return "unknown cluster"
    if settings.context:
        current = next((c for c in contexts if c["name"] == settings.context), current)
    if not current:
        return "unknown cluster"
    cluster = current.get("context", {}).get("cluster") or current["name"]
    return cluster if cluster == current["name"] else f"{cluster} (context {current['name']})"


def page_info(
    settings: Settings, health: list[SourceHealth], cluster: str, result: CycleResult
) -> PageInfo:
    """The report's frame for a cycle that ended now."""
    return PageInfo(
        cluster=cluster,
        collected_at=time.time(),
        sources=health,
        prometheus_urls=result.urls,
        complete=result.complete,
        readiness=result.readiness,
        evidence=result.evidence,
    )


@dataclass(frozen=True, slots=True)
class Guards:
    """The bounds that keep one bad source or client from hurting the rest
    (README, "Under faults"). Flags in cli.py; defaults fit a 100k-node
    cluster."""

    source_deadline: float = parse_seconds(defaults.SOURCE_DEADLINE)
    """Seconds one source may take per cycle (`serve`: 3/4 of --interval
    unless given, see _source_deadline)."""
    limits: Limits = DEFAULT_LIMITS
    max_pod_watches: int = defaults.KUBERNETES_MAX_POD_WATCHES
    watch_idle_seconds: float = parse_seconds(defaults.KUBERNETES_WATCH_IDLE_TIMEOUT)
    pod_form: str = defaults.KUBERNETES_POD_FORM
    """--kubernetes-pod-form: not a bound, but a cost knob like the others."""
    server: ServerLimits = field(default_factory=ServerLimits)
    shutdown_seconds: float = 5.0
    """After SIGTERM: how long the sources get to close before the process
    goes on exiting regardless (then THREADS_GRACE_SECONDS for the
    executor's threads; README, "Under faults"; Kubernetes waits 30s)."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Guards:
        """Raises ValueError with a message fit for the user."""
        deadline = _source_deadline(args)
        if not deadline > 0:
            raise ValueError("--source-deadline must be positive")
        if int(args.max_response_bytes) <= 0:
            raise ValueError("--max-response-bytes must be positive")
        if int(args.kubernetes_max_pod_watches) < 0:
            raise ValueError("--kubernetes-max-pod-watches must be 0 or more")
        if not float(args.kubernetes_watch_idle_timeout) > 0:
            raise ValueError("--kubernetes-watch-idle-timeout must be positive")
        pod_form = getattr(args, "kubernetes_pod_form", defaults.KUBERNETES_POD_FORM)
        if pod_form not in defaults.KUBERNETES_POD_FORMS:
            # An environment default escapes argparse's choices check.
            forms = ", ".join(defaults.KUBERNETES_POD_FORMS)
            raise ValueError(f"--kubernetes-pod-form must be one of {forms}")
        server = ServerLimits()
        if getattr(args, "web_max_connections", None) is not None:
            server = ServerLimits(
                header_timeout=args.web_header_timeout,
                max_connections=args.web_max_connections,
            )
        return cls(
            source_deadline=deadline,
            limits=Limits(max_body_bytes=int(args.max_response_bytes)),
            max_pod_watches=int(args.kubernetes_max_pod_watches),
            watch_idle_seconds=float(args.kubernetes_watch_idle_timeout),
            pod_form=pod_form,
            server=server,
        )


def _source_deadline(args: argparse.Namespace) -> float:
    """--source-deadline as given; else, for serve, a share of --interval
    (defaults.py says why), and audit's fixed default."""
    given = getattr(args, "source_deadline", None)
    if given is not None:
        return float(given)
    interval = getattr(args, "interval", None)
    if interval is None:
        return parse_seconds(defaults.SOURCE_DEADLINE)
    share = defaults.SOURCE_DEADLINE_SHARE_OF_INTERVAL * float(interval)
    return max(share, parse_seconds(defaults.MIN_SOURCE_DEADLINE))


class Exporter:
    """What one run of `serve` or `audit` collects with: the Kubernetes
    source, one source per Prometheus, the target decoder, and the cycle
    runner that reads them; opened and closed together."""

    def __init__(
        self, settings: Settings, full_refresh_seconds: float = 0.0, guards: Guards | None = None
    ) -> None:
        guards = guards or Guards()
        self._settings = settings
        self.kubernetes = KubernetesSource(
            kubeconfig=settings.kubeconfig,
            context=settings.context,
            namespaces=settings.scope.namespaces,
            max_pod_watches=guards.max_pod_watches,
            watch_idle_seconds=guards.watch_idle_seconds,
            limits=guards.limits,
            pod_form=guards.pod_form,
            node_decoder=None if settings.decode_nodes_in_process else NodePageDecoder(),
            list_deadline_seconds=guards.source_deadline,
        )
        decoder = None if settings.decode_in_process else target_decoder.SHARED
        found = settings.discovery
        if decoder is not None and (settings.prometheus or found.enabled):
            # Spawned now, so its start-up overlaps the cluster's first lists.
            decoder.warm()
        self._decoder = decoder
        self._limits = guards.limits
        # Every given URL is checked for several servers behind it (servers.py).
        self.prometheus = [
            CheckedSource(PrometheusSource(e, limits=guards.limits, decoder=decoder))
            for e in settings.prometheus
        ]
        self.discovery = (
            DiscoverySource(
                operator=found.operator,
                pod_selector=found.pod_selector,
                pod_port=found.pod_port,
                namespaces=found.namespaces,
                watch_idle_seconds=guards.watch_idle_seconds,
            )
            if found.enabled
            else None
        )
        self.cycle = CycleRunner(
            self.kubernetes,
            self.prometheus,
            settings.scope,
            settings.missing_info_limit,
            settings.kubernetes_sync_timeout,
            full_refresh_seconds=full_refresh_seconds,
            stale_after_seconds=settings.stale_after_seconds,
            discovery_grace_seconds=settings.discovery_grace_seconds,
            source_deadline=guards.source_deadline,
        )

    async def start(self) -> None:
        """Start the Kubernetes source, then migration readiness and
        discovery on its API client (each off by itself where the Operator's
        CRDs are absent)."""
        await self.kubernetes.start()
        api = self.kubernetes.api
        if api is not None:
            self.cycle.set_operator(
                OperatorSource(api, refresh_seconds=self._settings.operator_refresh_seconds)
            )
            self.cycle.set_events(
                EventSource(
                    api,
                    sorted(self._settings.scope.namespaces),
                    refresh_seconds=self._settings.operator_refresh_seconds,
                )
            )
        if api is not None and self.discovery is not None:
            await self.discovery.start(api)
            self.cycle.set_discovery(
                Followed(
                    self.discovery,
                    self._found_source,
                    [e.url for e in self._settings.prometheus],
                    [e.name for e in self._settings.prometheus],
                ),
                self.discovery.health,
                self._discovery_listed,
            )

    async def _discovery_listed(self) -> None:
        """Discovery's first lists, which the first cycle waits for: it must
        know which servers to read. Bounded; a list that fails ends it."""
        assert self.discovery is not None
        timeout = min(self._settings.kubernetes_sync_timeout, DISCOVERY_SYNC_SECONDS)
        if not await self.discovery.wait_synced(timeout):
            log.warning(
                "discovery has not listed everything yet; servers are found as soon as it does",
                extra=logs.fields(
                    waited_seconds=timeout, err=self.discovery.health.last_error or "no answer"
                ),
            )

    def _found_source(self, server: FoundServer) -> PrometheusSource:
        endpoint = self._settings.discovery.endpoint(server)
        return PrometheusSource(endpoint, limits=self._limits, decoder=self._decoder)

    @property
    def health(self) -> list[SourceHealth]:
        """Every source of the last cycle (found servers come and go)."""
        return self.cycle.health()

    async def close(self) -> None:
        await self.kubernetes.stop()
        if self.discovery is not None:
            await self.discovery.stop()
        await self.cycle.close_sources()
        if self._decoder is not None:
            self._decoder.shutdown()


DISCOVERY_SYNC_SECONDS = 60.0
"""Longest the first cycle waits for discovery's first lists (a few small
objects; a list that fails ends the wait at once)."""

# How long `audit` waits on an apiserver that answers every list with an
# error before giving up: a few retries' worth, not the sync timeout meant
# for large clusters that list slowly.
AUDIT_FAIL_FAST_SECONDS = 5.0


async def _wait_for_cluster(exporter: Exporter, timeout: float) -> None:  # noqa: ASYNC109
    """Until every resource is listed; SourceError early when the apiserver
    refuses (connection refused, 401, 403) for AUDIT_FAIL_FAST_SECONDS
    without a single list having succeeded."""
    kubernetes = exporter.kubernetes
    health = kubernetes.health
    deadline = time.monotonic() + timeout
    first_error: float | None = None
    while time.monotonic() < deadline:
        if kubernetes.is_synced():
            return
        nothing_listed = not any(r.synced for r in kubernetes.reflectors())
        if health.errors_total and nothing_listed:
            first_error = first_error or time.monotonic()
            if time.monotonic() - first_error >= AUDIT_FAIL_FAST_SECONDS:
                raise SourceError(f"kubernetes: cannot list the cluster: {health.last_error}")
        await asyncio.sleep(0.2)
    log.error(
        "not every Kubernetes resource could be listed in time",
        extra=logs.fields(timeout=flagtypes.format_seconds(timeout)),
    )


async def _audit(settings: Settings, output: str, guards: Guards | None = None) -> int:
    exporter = Exporter(settings, guards=guards)
    progress = Progress.on_terminal(exporter)
    try:
        await exporter.start()
        result = await exporter.cycle.run_cycle(
            _wait_for_cluster(exporter, settings.kubernetes_sync_timeout)
        )
        result = await after_discovery(
            result, exporter.cycle.run_cycle, settings.discovery_grace_seconds
        )
        # Copies: closing the sources marks them down.
        health = [replace(h) for h in exporter.health]
    except SourceError as err:
        health = [replace(h) for h in exporter.health]
        if not health[0].last_error:  # failed before any request: say why there too
            health[0].mark(False, 0.0, str(err))
        if progress is not None:
            progress.stop()
        print(f"coverage-exporter: {err}", file=sys.stderr)
        if output == "json":
            # A CI job reads the document whatever happened: the same
            # fields, with the sources and what failed.
            sys.stdout.write(render_json(None, health, False, ()))
            sys.stdout.flush()
        if isinstance(err, KubeconfigError):  # a file named by a flag: usage
            return exit_codes.USAGE
        return exit_code(None, False)
    finally:
        if progress is not None:
            progress.stop()
        await exporter.close()
    if not result.servers and result.report is not None:
        print(f"coverage-exporter: {NO_SERVER}", file=sys.stderr)
    found, unread = result.findings, result.unread
    if output == "json":
        sys.stdout.write(
            render_json(
                result.report,
                health,
                result.complete,
                result.readiness,
                result.evidence,
                found,
                unread,
            )
        )
    elif output == "prometheus":
        sys.stdout.buffer.write(result.exposition)
    elif output == "html":
        info = page_info(settings, health, cluster_name(settings), result)
        sys.stdout.buffer.write(render_page(result.report, info))
    else:
        sys.stdout.write(
            render_table(
                result.report,
                health,
                result.complete,
                result.readiness,
                result.evidence,
                found,
                unread,
            )
        )
    sys.stdout.flush()
    return exit_code(result.report, result.complete)


AUDIT_DISCOVERY_POLL_SECONDS = 5.0
"""How often audit re-reads a server that is still discovering: its pool
counts move at most every 5 s (Prometheus's discovery send and scrape
reload), and each re-read is one /metrics answer."""


async def after_discovery(
    result: CycleResult,
    run_cycle: Callable[[], Awaitable[CycleResult]],
    wait_seconds: float,
    poll_seconds: float = AUDIT_DISCOVERY_POLL_SECONDS,
) -> CycleResult:
    """audit's answer once no server is still discovering. A server that
    started moments ago (a rollout, a restart) is not judged for the grace
    period after its start (cycle.CycleRunner), and one cycle would answer
    "could not judge" (exit 3) for it; a one-shot command, run in CI right
    after a change, should wait for the real verdict instead: re-read every
    `poll_seconds` until its discovery settles (sources.prometheus.source.
    discovery_settled: about 10 s once every pool has delivered, kept or
    not by its rules) or its grace
    period is over, and never longer than `wait_seconds` (the grace) from
    now."""
    deadline = time.monotonic() + wait_seconds
    while (names := _discovering(result)) and time.monotonic() < deadline:
        log.info(
            "waiting for the service discovery of servers that have just started",
            extra=logs.fields(servers=",".join(names)),
        )
        await asyncio.sleep(min(poll_seconds, max(0.0, deadline - time.monotonic())))
        result = await run_cycle()
    return result


def _discovering(result: CycleResult) -> list[str]:
    """Every server still discovering, also in a replica that is unknown
    for another reason too (a shard down): its share is then counted once
    settled, rather than left out."""
    if result.report is None:
        return []
    return sorted(
        s.name for r in result.report.fleet.replicas.values() for s in r.servers if s.discovering
    )


EXIT_CODES = {
    Verdict.GAPS: exit_codes.GAPS,
    Verdict.FULL_COVERAGE: exit_codes.FULL_COVERAGE,
    Verdict.NOT_COLLECTED: exit_codes.CANNOT_JUDGE,
    Verdict.NOTHING_COMPARED: exit_codes.CANNOT_JUDGE,
    Verdict.NO_SERVER: exit_codes.CANNOT_JUDGE,
    Verdict.UNKNOWN: exit_codes.CANNOT_JUDGE,
}
"""The audit's exit code for each verdict, the one map from one to the
other (the codes are named in exit_codes.py): 1 for any gap (a gap seen
in the data that did answer is real); otherwise 3 when something could not
be judged: a source down, a replica's coverage unknown, or no Service
compared at all; 0 only for full coverage of at least one Service. 2, a
usage error, is no verdict: a flag refused (cli.py) or a kubeconfig it
names that cannot be used (KubeconfigError, in _audit)."""


def exit_code(report: CoverageReport | None, complete: bool) -> int:
    return EXIT_CODES[decide(report, complete)]


def audit(settings: Settings, output: str, guards: Guards | None = None) -> int:
    return asyncio.run(_audit(settings, output, guards))


async def _serve(
    settings: Settings,
    listen_address: str,
    interval: float,
    full_refresh: float,
    guards: Guards | None = None,
    web_config_file: str | None = None,
) -> int:
    guards = guards or Guards()
    host, port = parse_listen_address(listen_address)
    # Loaded here too (certificates included), so that a bad file fails at
    # start as it always has; the front process loads and reloads its own.
    web_config = WebConfigFile(web_config_file) if web_config_file else None
    exporter = Exporter(settings, full_refresh_seconds=full_refresh, guards=guards)
    cluster = cluster_name(settings)
    view = ExporterView(
        lambda: render(
            ExporterState(
                report=None, sources=exporter.health, missing_info_limit=settings.missing_info_limit
            )
        )
    )
    # The HTTP server runs in a process of its own (front.py), so that a
    # scrape never waits on a comparison that holds this process's GIL.
    server = Front(view, guards.server, web_config_file, *logs.configured())
    # Started alongside the sources: its start-up (a Python process, ~0.1 s)
    # need not delay the cluster's first lists.
    listening = asyncio.ensure_future(server.start(host, port))
    tls = bool(web_config and web_config.tls_enabled)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    front_gone = asyncio.ensure_future(server.ended.wait())
    front_gone.add_done_callback(lambda _: stop.set())
    # A cycle is bounded by the source deadline plus the comparison; past
    # twice that (and a minute for a 100k-node comparison) it is wedged.
    cycle_budget = 2 * guards.source_deadline + 60.0
    first: asyncio.Future[CycleResult] | None = None
    try:
        # Stopped like a cycle: loading the kubeconfig runs an exec plugin,
        # which may hang for its 30 s (kubeconfig.EXEC_TIMEOUT_SECONDS).
        _, start_error = await _until_stopped(exporter.start(), stop)
        if isinstance(start_error, BaseException):
            raise start_error
        if not stop.is_set():
            # The first cycle waits for the cluster's first lists too. It
            # starts now, not once the front listens: the Prometheus reads
            # are in it, and at 100k nodes the front's start-up (~0.3 s)
            # held them back.
            first = asyncio.ensure_future(
                exporter.cycle.run_cycle(
                    exporter.kubernetes.wait_synced(settings.kubernetes_sync_timeout)
                )
            )
            await listening
            view.on_change = server.publish
            log.info(
                "serving",
                extra=logs.fields(
                    address=listen_address, tls=tls, interval=flagtypes.format_seconds(interval)
                ),
            )
            view.status = "waiting for the first list of the cluster"
            view.changed()
            view.expect_progress(settings.kubernetes_sync_timeout + cycle_budget, "the first list")
        while not stop.is_set():
            started = time.monotonic()
            if first is None:
                view.expect_progress(cycle_budget, "the running collection cycle")
            cycle = first if first is not None else exporter.cycle.run_cycle()
            first = None
            done, result = await _until_stopped(cycle, stop)
            if not done or result is None:
                break
            if isinstance(result, BaseException):
                # Not a source's failure (those are handled per source):
                # a bug. Keep serving the last result and try again.
                log.error(
                    "collection cycle failed",
                    extra=logs.fields(err=f"{type(result).__name__}: {result}"),
                )
            else:
                _publish(view, result)
                # Copies: the sources update their health in place during the next cycle.
                view.publish_report(
                    result.report,
                    page_info(settings, [replace(h) for h in exporter.health], cluster, result),
                )
            remaining = interval - (time.monotonic() - started)
            view.expect_progress(max(0.0, remaining) + cycle_budget, "the next collection cycle")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, remaining)):
                    await stop.wait()
    except SourceError as err:
        log.error("cannot start", extra=logs.fields(err=err))
        return 1
    finally:
        if first is not None:  # the front never listened
            first.cancel()
        listening.cancel()
        front_gone.cancel()
        await server.close()
        try:
            async with asyncio.timeout(guards.shutdown_seconds):
                await exporter.close()
        except TimeoutError:
            log.warning(
                "sources did not close in time; exiting anyway",
                extra=logs.fields(timeout=flagtypes.format_seconds(guards.shutdown_seconds)),
            )
    if server.ended.is_set():
        return 1
    log.info("stopped")
    return 0


def _publish(view: ExporterView, result: CycleResult) -> None:
    view.exposition = result.exposition
    if result.report is not None:
        view.ready = True
        view.status = "last cycle " + (
            "complete" if result.complete else "incomplete: a source is down (see source_up)"
        )
    else:
        view.status = "Kubernetes has not been listed yet (see source_up)"
    view.changed()


async def _until_stopped(
    awaitable: Awaitable[T], stop: asyncio.Event
) -> tuple[bool, T | BaseException | None]:
    """Run `awaitable` until it ends or `stop` is set, whichever is first.
    (False, None) when stopped: the work is cancelled, not waited out, so
    that SIGTERM ends the process in seconds whatever a cycle is doing.
    (True, result or the exception it raised) otherwise."""
    work = asyncio.ensure_future(awaitable)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if not work.done():
        work.cancel()
        # Give the cancellation a moment to run the work's cleanups.
        await asyncio.wait({work}, timeout=2.0)
        return False, None
    if work.cancelled():
        return False, None
    exc = work.exception()
    return True, exc if exc is not None else work.result()


THREADS_GRACE_SECONDS = 2.0
"""After `serve` has stopped: how long the executor's threads get to end
their work before the process exits without them."""


def _run_and_exit(main: Coroutine[object, object, int]) -> int:
    """asyncio.run(main), except that the executor's threads are waited for
    THREADS_GRACE_SECONDS at most. A thread cannot be cancelled, and one may
    be stuck for an hour in what it runs: an exec plugin that hangs, a read
    in the client library. asyncio.run, then the interpreter's exit, would
    wait for it without a bound and Kubernetes would SIGKILL the pod after
    its grace period. The process exits instead, saying which threads it
    left; their work was for the stopped process only."""
    executor = ThreadPoolExecutor(thread_name_prefix="coverage-exporter")
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.set_default_executor(executor)
    try:
        code = loop.run_until_complete(main)
    finally:
        try:
            _cancel_remaining(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            executor.shutdown(wait=False, cancel_futures=True)
            asyncio.set_event_loop(None)
            loop.close()
    busy = _threads_still_busy(THREADS_GRACE_SECONDS)
    if not busy:
        return code
    log.warning(
        "exiting with threads still busy",
        extra=logs.fields(
            threads=",".join(t.name for t in busy),
            grace=flagtypes.format_seconds(THREADS_GRACE_SECONDS),
        ),
    )
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _cancel_remaining(loop: asyncio.AbstractEventLoop) -> None:
    """What asyncio.run does with the tasks left when `main` ends."""
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


def _threads_still_busy(grace: float) -> list[threading.Thread]:
    """The threads the interpreter's exit would wait for, after `grace`
    seconds in all to end."""
    deadline = time.monotonic() + grace
    busy = []
    for thread in threading.enumerate():
        if thread is threading.main_thread() or thread.daemon:
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            busy.append(thread)
    return busy


def serve(
    settings: Settings,
    listen_address: str,
    interval: float,
    full_refresh: float,
    guards: Guards | None = None,
    web_config_file: str | None = None,
) -> int:

    async def main() -> int:
        # The errors become exit codes inside the loop, so that a thread left
        # busy (see _run_and_exit) cannot hold these exits either.
        try:
            return await _serve(
                settings, listen_address, interval, full_refresh, guards, web_config_file
            )
        except ValueError as err:
            print(f"coverage-exporter: {err}", file=sys.stderr)
            return 2
        except ListenError as err:
            print(f"coverage-exporter: {err}", file=sys.stderr)
            return 1

    return _run_and_exit(main())
