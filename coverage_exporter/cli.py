"""Command line: `coverage-exporter serve` and `coverage-exporter audit`.

Every flag can also be set from the environment, `--web.listen-address`
as COVERAGE_EXPORTER_WEB_LISTEN_ADDRESS and so on; repeatable flags take a
comma-separated list there. A flag on the command line wins.
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from coverage_exporter import __version__, defaults

ENV_PREFIX = "COVERAGE_EXPORTER_"


def env_name(flag: str) -> str:
    return ENV_PREFIX + re.sub(r"[^A-Za-z0-9]+", "_", flag.lstrip("-")).upper()


class _EnvParser:
    """Adds flags whose defaults come from the environment."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser

    def add(self, flag: str, help: str, default: object = None, **kw: Any) -> None:
        env = env_name(flag)
        raw = os.environ.get(env)
        action = kw.get("action")
        if raw is not None:
            if action == "append":
                default = [v.strip() for v in raw.split(",") if v.strip()]
            elif action == "store_true":
                default = raw.strip().lower() in ("1", "true", "yes", "on")
            else:
                default = raw
        shown = f" (default: {default})" if default not in (None, [], False) else ""
        self.parser.add_argument(
            flag,
            default=default,
            help=f"{help}{shown} [env {env}]",
            **kw,
        )


def _shown(value: float) -> str:
    """A default as a flag takes it: 120, not 120.0."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def positive_seconds(text: str) -> float:
    """A duration flag: a finite number of seconds above zero. 0 would
    busy-loop the collection against Prometheus; inf or nan never times out."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds above 0, got {text}")
    return value


def non_negative_seconds(text: str) -> float:
    """A finite number of seconds, 0 allowed (0 = every cycle)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(
            f"must be a finite number of seconds, 0 or more, got {text}"
        )
    return value


def _common(p: _EnvParser) -> None:
    p.add(
        "--kubeconfig",
        "kubeconfig file; default: in-cluster service account, "
        "then $KUBECONFIG, then ~/.kube/config",
    )
    p.add("--context", "kubeconfig context to use")
    p.add(
        "--prometheus-url",
        "Prometheus or Thanos Query to compare, as URL or NAME=URL; repeat for shards and replicas",
        action="append",
        metavar="[NAME=]URL",
    )
    p.add(
        "--prometheus-kind",
        "what answers on a server's URL, where its answers cannot tell (an API proxy that "
        "lets only the targets through): prometheus, prometheus_agent, vmagent or "
        "thanos_query; repeatable",
        action="append",
        metavar="NAME=KIND",
    )
    p.add(
        "--prometheus-bearer-token-file",
        "file holding a bearer token for Prometheus (re-read every cycle)",
    )
    p.add("--prometheus-basic-auth-user", "basic auth user for Prometheus")
    p.add("--prometheus-basic-auth-password-file", "file holding the basic auth password")
    p.add("--prometheus-ca-file", "CA bundle to verify Prometheus's TLS certificate")
    p.add("--prometheus-cert-file", "client certificate for Prometheus (mTLS)")
    p.add("--prometheus-key-file", "client key for Prometheus (mTLS)")
    p.add(
        "--prometheus-insecure-skip-verify",
        "do not verify Prometheus's TLS certificate",
        action="store_true",
        default=False,
    )
    p.add(
        "--prometheus-timeout",
        "seconds one request to Prometheus may take",
        default=_shown(defaults.PROMETHEUS_TIMEOUT_SECONDS),
        type=positive_seconds,
    )
    p.add(
        "--prometheus-decode-in-process",
        "decode target lists in this process's threads instead of one worker process "
        "(for a CPU limit of one core, or where no child process may start)",
        action="store_true",
        default=False,
    )
    p.add(
        "--prometheus-fleet-file",
        "YAML file listing Prometheus servers, each with its own credentials, TLS and "
        "optionally its shard/replica (docs/prometheus-fleet.md); adds to --prometheus-url",
    )
    p.add(
        "--prometheus-discovery",
        "find every Prometheus and PrometheusAgent of the Prometheus Operator, each shard and "
        "replica read at its pod IP (adds to --prometheus-url and the fleet file); off: only those",
        default=defaults.PROMETHEUS_DISCOVERY,
        choices=["on", "off"],
    )
    p.add(
        "--prometheus-pod-selector",
        "also judge the pods this label selector matches (Prometheus servers the Operator does "
        "not run), each at its pod IP and --prometheus-pod-port; as kubectl takes it: a=b,c",
    )
    p.add(
        "--prometheus-pod-port",
        "container port (name or number) of the pods --prometheus-pod-selector finds",
        default=defaults.PROMETHEUS_POD_PORT,
    )
    p.add(
        "--prometheus-discovery-namespace",
        "look for Prometheus objects and pods only in this namespace (then RBAC is needed only "
        "there); repeatable; default: the whole cluster",
        action="append",
    )
    p.add(
        "--prometheus-stale-after",
        "seconds a Prometheus that stopped answering still covers its targets with its last "
        "good answer; after that its share is reported as unknown",
        default=_shown(defaults.PROMETHEUS_STALE_AFTER_SECONDS),
        type=positive_seconds,
    )
    p.add(
        "--service",
        "Service to compare in any case, NAMESPACE/NAME; repeatable",
        action="append",
        metavar="NAMESPACE/NAME",
    )
    p.add("--namespace", "only compare Services in this namespace; repeatable", action="append")
    p.add(
        "--service-selector",
        "only compare Services whose labels match, as kubectl takes it: a=b,c!=d,e,!f",
    )
    p.add(
        "--missing-target-series-limit",
        "cap on scrape_coverage_missing_target series, shared fairly between Services, stages "
        "and scrape pools",
        default=_shown(defaults.MISSING_TARGET_SERIES_LIMIT),
        type=int,
    )
    p.add(
        "--kubernetes-sync-timeout",
        "seconds to wait for the first full list of the cluster",
        default=_shown(defaults.KUBERNETES_SYNC_TIMEOUT_SECONDS),
        type=positive_seconds,
    )
    p.add(
        "--log.level",
        "debug, info, warning or error",
        default=defaults.LOG_LEVEL,
        dest="log_level",
    )
    # The name before --log.level (Prometheus's spelling); kept for old command lines.
    p.add("--log-level", "deprecated alias of --log.level", dest="log_level_deprecated")
    p.add("--log.format", "logfmt or json", default=defaults.LOG_FORMAT, dest="log_format")
    p.add(
        "--runbook-base-url",
        "base URL of the runbook pages that findings link to "
        "(default: the project's docs/runbooks/ on GitHub)",
    )
    _guards(p)


def _guards(p: _EnvParser) -> None:
    """The bounds of app.Guards (README, "Under faults")."""
    p.add(
        "--source-deadline",
        "seconds one source (a Prometheus, the pod lists) may take per cycle; "
        "a slower one is marked down and the cycle goes on",
        default=_shown(defaults.SOURCE_DEADLINE_SECONDS),
        type=positive_seconds,
    )
    p.add(
        "--max-response-bytes",
        "largest answer held whole (a list page, a watch event, an error body), "
        "counted after decompression",
        default=_shown(defaults.MAX_RESPONSE_BYTES),
        type=int,
    )
    p.add(
        "--kubernetes-max-pod-watches",
        "most pod watches (one per namespace and Service selector in scope)",
        default=_shown(defaults.KUBERNETES_MAX_POD_WATCHES),
        type=int,
    )
    p.add(
        "--kubernetes-pod-form",
        "how pods are listed and watched: table (the apiserver's Table, ~150 B "
        "a pod; DaemonSet owners inferred from pod names) or full (the objects, "
        "3-7 KB a pod); a scope whose server refuses the Table falls back to full",
        default=defaults.KUBERNETES_POD_FORM,
        choices=list(defaults.KUBERNETES_POD_FORMS),
    )
    p.add(
        "--kubernetes-decode-in-process",
        "parse the Node list's pages in this process instead of a worker process "
        "that lives for the list (for a CPU limit of one core, or where no child "
        "process may start)",
        action="store_true",
        default=False,
    )
    p.add(
        "--kubernetes-watch-idle-timeout",
        "seconds of silence (no event, no bookmark) after which a watch is "
        "taken for a dead connection",
        default=_shown(defaults.KUBERNETES_WATCH_IDLE_SECONDS),
        type=positive_seconds,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coverage-exporter",
        description="Find the nodes Prometheus does not scrape in large Kubernetes clusters.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = _EnvParser(
        commands.add_parser(
            "serve", help="run the exporter: collect every --interval, serve /metrics"
        )
    )
    _common(serve)
    serve.add(
        "--web.listen-address",
        "address to serve /metrics on",
        default=defaults.LISTEN_ADDRESS,
        dest="listen_address",
    )
    serve.add(
        "--web.config.file",
        "exporter-toolkit web config (TLS, client certificates, basic auth); "
        "re-read when it changes",
        dest="web_config_file",
    )
    serve.add(
        "--interval",
        "seconds between collection cycles",
        default=_shown(defaults.INTERVAL_SECONDS),
        type=positive_seconds,
    )
    serve.add(
        "--operator-refresh-interval",
        "seconds between reads of the Prometheus Operator's objects for migration readiness",
        default=_shown(defaults.OPERATOR_REFRESH_SECONDS),
        type=positive_seconds,
    )
    serve.add(
        "--prometheus-full-refresh-interval",
        "seconds between full re-reads of every "
        "scrape pool (0: every cycle); in between only pools whose target count changed are read",
        default=_shown(defaults.PROMETHEUS_FULL_REFRESH_SECONDS),
        type=non_negative_seconds,
    )
    serve.add(
        "--web.max-connections",
        "most open HTTP connections; at the cap the longest-waiting one is dropped",
        default=_shown(defaults.WEB_MAX_CONNECTIONS),
        type=int,
        dest="web_max_connections",
    )
    serve.add(
        "--web.header-timeout",
        "seconds a client has to send its request head",
        default=_shown(defaults.WEB_HEADER_TIMEOUT_SECONDS),
        type=positive_seconds,
        dest="web_header_timeout",
    )

    audit = _EnvParser(
        commands.add_parser(
            "audit",
            help="collect once, print the findings; exit 0 full coverage, 1 gaps found, "
            "2 could not collect",
        )
    )
    _common(audit)
    audit.add(
        "--output",
        "table (for people), json, prometheus (exposition text), or html (one "
        "self-contained page: every missing node, where it was lost, what to do)",
        default="table",
        choices=["table", "json", "prometheus", "html"],
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from coverage_exporter import logs, runbooks

    try:
        if args.log_level_deprecated:
            logs.configure(args.log_level_deprecated, args.log_format, "--log-level")
        else:
            logs.configure(args.log_level, args.log_format)
        runbooks.set_base_url(args.runbook_base_url)
    except ValueError as err:
        print(f"coverage-exporter: {err}", file=sys.stderr)
        return 2
    if args.log_level_deprecated:
        logging.getLogger("coverage_exporter").warning("--log-level is deprecated; use --log.level")
    # Imported here so that --help and --version stay fast.
    from coverage_exporter import app, heap

    # The caches hold hundreds of thousands of small objects at 100k nodes,
    # and every cycle allocates as many; with the default gen-0 threshold
    # (700) the cyclic GC rescans them so often that it takes a third of a
    # comparison's time. Nothing here relies on prompt cycle collection.
    gc.set_threshold(50_000, 20, 20)
    heap.one_arena()

    try:
        settings = app.Settings.from_args(args)
        guards = app.Guards.from_args(args)
    except ValueError as err:
        print(f"coverage-exporter: {err}", file=sys.stderr)
        return 2
    if args.command == "serve":
        return app.serve(
            settings,
            args.listen_address,
            args.interval,
            args.prometheus_full_refresh_interval,
            guards,
            web_config_file=args.web_config_file,
        )
    return app.audit(settings, args.output, guards)


if __name__ == "__main__":
    sys.exit(main())
