"""Command line: `coverage-exporter serve` and `coverage-exporter audit`.

Flags are spelled as Prometheus spells its own (coverage_exporter/flagtypes.py):
durations such as 90s, 1m or 1h30m, sizes such as 256MiB, log levels as
promslog names them; every default is kept once, in that spelling, in
coverage_exporter/defaults.py. Every flag can also be set from the environment,
`--web.listen-address` as COVERAGE_EXPORTER_WEB_LISTEN_ADDRESS and so on;
repeatable flags take a comma-separated list there. A flag on the command
line wins. A value in the environment that the flag would refuse is a
usage error naming the variable, never a silent default.
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import platform
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from coverage_exporter import __version__, defaults, exit_codes, flagtypes, logs

ENV_PREFIX = "COVERAGE_EXPORTER_"

AUDIT_EPILOG = f"""\
{exit_codes.HELP}
examples:
  # Every Prometheus of the Prometheus Operator, each shard and replica found
  # and read at its pod IP, the current kubeconfig context:
  coverage-exporter audit

  # Another cluster, JSON for CI, and a Thanos Query named besides:
  coverage-exporter audit --kubeconfig ~/.kube/prod --context prod \\
      --prometheus-url thanos=http://thanos-query:10902 --output json

  # A Prometheus the Operator does not run, found by its pods' labels:
  coverage-exporter audit --prometheus-pod-selector app.kubernetes.io/name=prometheus

  # Every missing node on one page:
  coverage-exporter audit --prometheus-fleet-file fleet.yaml --output html > report.html

Every flag can also be set as {ENV_PREFIX}<FLAG> (--prometheus-url as
{ENV_PREFIX}PROMETHEUS_URL, comma-separated); a flag on the command line wins.
Durations: 90s, 1m, 1h30m, 2d (or seconds); sizes: 512KiB, 256MiB, 1GiB (or bytes).
"""

SERVE_EPILOG = f"""\
examples:
  coverage-exporter serve --interval 1m    # the Prometheus servers are found
  coverage-exporter serve --prometheus-url thanos=http://thanos-query:10902

Every flag can also be set as {ENV_PREFIX}<FLAG>; a flag on the command line wins.
Durations: 90s, 1m, 1h30m, 2d (or seconds); sizes: 512KiB, 256MiB, 1GiB (or bytes).
"""


def env_name(flag: str) -> str:
    return ENV_PREFIX + re.sub(r"[^A-Za-z0-9]+", "_", flag.lstrip("-")).upper()


@dataclass(frozen=True)
class InvalidEnv:
    """A flag's default taken from an environment variable the flag refuses:
    reported by main() as a usage error, after --help and --version had
    their chance."""

    variable: str
    value: str
    reason: str

    def __str__(self) -> str:
        return f"{self.variable}={self.value!r}: {self.reason}"


class _EnvParser:
    """Adds flags, in help groups, whose defaults come from the environment."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser
        self._group: argparse._ArgumentGroup | argparse.ArgumentParser = parser

    def group(self, title: str, description: str | None = None) -> _EnvParser:
        """Flags added next are listed under `title` in --help."""
        self._group = self.parser.add_argument_group(title, description)
        return self

    def add(
        self,
        flag: str,
        help: str,
        default: object = None,
        env: bool = True,
        shown: str | None = None,
        **kw: object,
    ) -> None:
        variable = env_name(flag)
        raw = os.environ.get(variable) if env else None
        action = kw.get("action")
        if raw is not None:
            default = _from_env(variable, raw, action, kw)
        if (
            shown is None
            and default not in (None, [], False)
            and not isinstance(default, InvalidEnv)
        ):
            shown = str(default)
        text = help + (f" (default: {shown})" if shown else "")
        if env:
            text += f" [env {variable}]"
        if help is argparse.SUPPRESS:
            text = help
        self._group.add_argument(flag, default=default, help=text, **kw)  # type: ignore[arg-type]


def _from_env(variable: str, raw: str, action: object, kw: dict[str, object]) -> object:
    """A flag's default from its variable, checked as the flag would check a
    value given on the command line."""
    if action == "append":
        return [v.strip() for v in raw.split(",") if v.strip()]
    if action == "store_true":
        try:
            return flagtypes.parse_bool(raw)
        except ValueError as err:
            return InvalidEnv(variable, raw, str(err))
    convert = kw.get("type")
    if callable(convert):
        try:
            convert(raw)
        except (argparse.ArgumentTypeError, ValueError) as err:
            return InvalidEnv(variable, raw, str(err))
    choices = kw.get("choices")
    if choices is not None and raw not in choices:  # type: ignore[operator]
        listed = ", ".join(map(str, choices))  # type: ignore[call-overload]
        return InvalidEnv(variable, raw, f"not one of {listed}")
    return raw


def _seconds(minimum: float, inclusive: bool) -> Callable[[str], float]:
    """A duration flag's type: a Prometheus duration or seconds, finite, at
    least (or above) `minimum`. 0 would busy-loop the collection; inf or
    nan never times out."""

    def convert(text: str) -> float:
        try:
            value = flagtypes.parse_seconds(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            bound = "0 or more" if inclusive else "above 0"
            raise argparse.ArgumentTypeError(f"must be a duration {bound}, got {text}")
        return value

    convert.__name__ = "duration"
    return convert


positive_seconds = _seconds(0.0, inclusive=False)
non_negative_seconds = _seconds(0.0, inclusive=True)


def positive_bytes(text: str) -> int:
    try:
        value = flagtypes.parse_bytes(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a size above 0, got {text}")
    return value


positive_bytes.__name__ = "size"


def _count(minimum: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more, got {text}")
        return value

    convert.__name__ = "count"
    return convert


def _log_level(text: str) -> str:
    """promslog's levels; `warning`, this flag's spelling before, still reads as warn."""
    try:
        return logs.normalized_level(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"one of {', '.join(logs.LEVELS)}, got {text!r}") from None


_log_level.__name__ = "log level"


def _kubernetes(p: _EnvParser) -> None:
    p.group("Kubernetes")
    p.add(
        "--kubeconfig",
        "kubeconfig file; default: in-cluster service account, "
        "then $KUBECONFIG, then ~/.kube/config",
        metavar="FILE",
    )
    p.add("--context", "kubeconfig context to use", metavar="NAME")
    p.add(
        "--kubernetes-sync-timeout",
        "how long to wait for the first full list of the cluster",
        default=defaults.KUBERNETES_SYNC_TIMEOUT,
        type=positive_seconds,
        metavar="DURATION",
    )
    p.add(
        "--kubernetes-max-pod-watches",
        "most pod watches (one per namespace and Service selector in scope)",
        default=str(defaults.KUBERNETES_MAX_POD_WATCHES),
        type=_count(0),
        metavar="N",
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
        "silence (no event, no bookmark) after which a watch is taken for a dead connection",
        default=defaults.KUBERNETES_WATCH_IDLE_TIMEOUT,
        type=positive_seconds,
        metavar="DURATION",
    )


def _prometheus(p: _EnvParser) -> None:
    p.group(
        "Finding Prometheus servers",
        "found in the cluster by default, each shard and replica at its pod IP (docs/discovery.md)",
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
        metavar="SELECTOR",
    )
    p.add(
        "--prometheus-pod-port",
        "container port (name or number) of the pods --prometheus-pod-selector finds",
        default=defaults.PROMETHEUS_POD_PORT,
        metavar="PORT",
    )
    p.add(
        "--prometheus-discovery-namespace",
        "look for Prometheus objects and pods only in this namespace (then RBAC is needed only "
        "there); repeatable; default: the whole cluster",
        action="append",
        metavar="NAMESPACE",
    )
    p.group("Prometheus servers", "named explicitly: they add to the servers found")
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
        "--prometheus-fleet-file",
        "YAML file listing Prometheus servers, each with its own credentials, TLS and "
        "optionally its shard/replica (docs/prometheus-fleet.md); adds to --prometheus-url",
        metavar="FILE",
    )
    p.add(
        "--prometheus-timeout",
        "how long one request to Prometheus may take",
        default=defaults.PROMETHEUS_TIMEOUT,
        type=positive_seconds,
        metavar="DURATION",
    )
    p.add(
        "--prometheus-stale-after",
        "how long a Prometheus that stopped answering still covers its targets with its "
        "last good answer; after that its share is reported as unknown",
        default=defaults.PROMETHEUS_STALE_AFTER,
        type=positive_seconds,
        metavar="DURATION",
    )
    p.add(
        "--prometheus-discovery-grace",
        "how long after a Prometheus starts (its process_start_time_seconds) its coverage is "
        "unknown, 'still discovering', rather than judged: a fresh server's pools are empty "
        "until its service discovery delivers",
        default=defaults.PROMETHEUS_DISCOVERY_GRACE,
        type=positive_seconds,
        metavar="DURATION",
    )
    p.add(
        "--prometheus-decode-in-process",
        "decode target lists in this process's threads instead of one worker process "
        "(for a CPU limit of one core, or where no child process may start)",
        action="store_true",
        default=False,
    )
    p.group("Prometheus credentials and TLS", "used for every --prometheus-url")
    p.add(
        "--prometheus-bearer-token-file",
        "file holding a bearer token (re-read every cycle)",
        metavar="FILE",
    )
    p.add("--prometheus-basic-auth-user", "basic auth user", metavar="USER")
    p.add(
        "--prometheus-basic-auth-password-file", "file holding the basic auth password",
        metavar="FILE",
    )  # fmt: skip
    p.add("--prometheus-ca-file", "CA bundle to verify Prometheus's certificate", metavar="FILE")
    p.add("--prometheus-cert-file", "client certificate (mTLS)", metavar="FILE")
    p.add("--prometheus-key-file", "client key (mTLS)", metavar="FILE")
    p.add(
        "--prometheus-insecure-skip-verify",
        "do not verify Prometheus's TLS certificate",
        action="store_true",
        default=False,
    )


def _scope(p: _EnvParser) -> None:
    p.group("Scope", "default: every Service a Prometheus discovers or is meant to scrape")
    p.add(
        "--service",
        "Service to compare in any case; repeatable",
        action="append",
        metavar="NAMESPACE/NAME",
    )
    p.add(
        "--namespace",
        "only compare Services in this namespace; repeatable",
        action="append",
        metavar="NAMESPACE",
    )
    p.add(
        "--service-selector",
        "only compare Services whose labels match, as kubectl takes it: a=b,c!=d,e,!f",
        metavar="SELECTOR",
    )
    p.add(
        "--missing-target-series-limit",
        "cap on scrape_coverage_missing_target series, shared fairly between Services, stages "
        "and scrape pools",
        default=str(defaults.MISSING_TARGET_SERIES_LIMIT),
        type=_count(0),
        metavar="N",
    )


def _limits(p: _EnvParser) -> None:
    p.group("Limits", "the bounds that keep one bad source from hurting the rest")
    p.add(
        "--source-deadline",
        "how long one source (a Prometheus, the pod lists) may take per cycle; "
        "a slower one is marked down and the cycle goes on",
        # argparse formats help with %: a percent sign is written %%.
        shown=f"serve: {defaults.SOURCE_DEADLINE_SHARE_OF_INTERVAL * 100:.0f}%% of --interval "
        f"and at least {defaults.MIN_SOURCE_DEADLINE}, so that a cycle ends within it; "
        f"audit: {defaults.SOURCE_DEADLINE}",
        type=positive_seconds,
        metavar="DURATION",
    )
    p.add(
        "--max-response-bytes",
        "largest answer held whole (a list page, a watch event, an error body), "
        "counted after decompression",
        default=defaults.MAX_RESPONSE_SIZE,
        type=positive_bytes,
        metavar="SIZE",
    )


def _logging(p: _EnvParser) -> None:
    p.group("Logging")
    p.add(
        "--log.level",
        "only log messages with this severity or above: debug, info, warn, error",
        default=defaults.LOG_LEVEL,
        dest="log_level",
        type=_log_level,
        metavar="LEVEL",
    )
    # The spelling before --log.level; kept for old command lines. No
    # variable of its own: COVERAGE_EXPORTER_LOG_LEVEL is --log.level's.
    p.add(
        "--log-level",
        argparse.SUPPRESS,
        dest="log_level_deprecated",
        env=False,
        type=_log_level,
    )
    p.add(
        "--log.format",
        "output format of log messages: logfmt or json",
        default=defaults.LOG_FORMAT,
        dest="log_format",
        choices=["logfmt", "json"],
    )


class _Version(argparse.Action):
    """--version as Prometheus's programs print it, revision included."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kw: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(version_text())
        parser.exit()


def version_text() -> str:
    from coverage_exporter import build

    return (
        f"coverage-exporter, version {__version__} (revision: {build.revision()})\n"
        f"  python version: {platform.python_version()}\n"
        f"  platform: {sys.platform}/{platform.machine()}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coverage-exporter",
        description="Find the nodes Prometheus does not scrape in large Kubernetes clusters.",
    )
    parser.add_argument("--version", action=_Version)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    formatter = argparse.RawDescriptionHelpFormatter

    serve = _EnvParser(
        commands.add_parser(
            "serve",
            help="run the exporter: collect every --interval, serve /metrics",
            description="Collect every --interval and serve the last result on /metrics\n"
            "(and /report, /-/healthy, /-/ready); a scrape never calls Kubernetes or\n"
            "Prometheus.",
            usage="coverage-exporter serve [flags]",
            epilog=SERVE_EPILOG,
            formatter_class=formatter,
        )
    )
    serve.group("Web server")
    serve.add(
        "--web.listen-address", "address to serve /metrics on", default=defaults.LISTEN_ADDRESS,
        dest="listen_address", metavar="[HOST]:PORT",
    )  # fmt: skip
    serve.add(
        "--web.config.file",
        "exporter-toolkit web config (TLS, client certificates, basic auth); "
        "re-read when it changes",
        dest="web_config_file",
        metavar="FILE",
    )
    serve.add(
        "--web.max-connections",
        "most open HTTP connections; at the cap the longest-waiting one is dropped",
        default=str(defaults.WEB_MAX_CONNECTIONS),
        type=_count(1),
        dest="web_max_connections",
        metavar="N",
    )
    serve.add(
        "--web.header-timeout",
        "how long a client has to send its request head",
        default=defaults.WEB_HEADER_TIMEOUT,
        type=positive_seconds,
        dest="web_header_timeout",
        metavar="DURATION",
    )
    serve.group("Collection")
    serve.add(
        "--interval",
        "time between collection cycles",
        default=defaults.INTERVAL,
        type=positive_seconds,
        metavar="DURATION",
    )
    serve.add(
        "--operator-refresh-interval",
        "time between reads of the Prometheus Operator's objects for migration readiness",
        default=defaults.OPERATOR_REFRESH_INTERVAL,
        type=positive_seconds,
        metavar="DURATION",
    )
    serve.add(
        "--prometheus-full-refresh-interval",
        "time between full re-reads of every scrape pool (0: every cycle); in between only "
        "pools whose target count changed are read",
        default=defaults.PROMETHEUS_FULL_REFRESH_INTERVAL,
        type=non_negative_seconds,
        metavar="DURATION",
    )
    _common(serve)

    audit = _EnvParser(
        commands.add_parser(
            "audit",
            help="collect once, print the findings; exit 0 full coverage, 1 gaps found, "
            f"{exit_codes.USAGE} usage error, {exit_codes.CANNOT_JUDGE} could not judge",
            description="Collect once from the cluster and every Prometheus, compare, print\n"
            "the findings and exit with the verdict (exit codes, below): a CI job can\n"
            "tell gaps from a wrong flag and from a source that could not be read.",
            usage="coverage-exporter audit [flags]",
            epilog=AUDIT_EPILOG,
            formatter_class=formatter,
        )
    )
    audit.group("Output")
    audit.add(
        "--output",
        "table (for people), json (docs/audit-json.md), prometheus (exposition text), or html "
        "(one self-contained page: every missing node, where it was lost, what to do)",
        default="table",
        choices=["table", "json", "prometheus", "html"],
    )
    _common(audit)
    return parser


def _common(p: _EnvParser) -> None:
    _prometheus(p)
    _kubernetes(p)
    _scope(p)
    p.group("Runbooks")
    p.add(
        "--runbook-base-url",
        "base URL of the runbook pages that findings link to "
        "(default: the project's docs/runbooks/ on GitHub)",
        metavar="URL",
    )
    _limits(p)
    _logging(p)


def env_errors(args: argparse.Namespace) -> list[InvalidEnv]:
    return [v for v in vars(args).values() if isinstance(v, InvalidEnv)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # argparse converts a string default (one from the environment) with
    # the flag's type itself; a value the type refuses is an InvalidEnv.
    args = parser.parse_args(argv)
    bad = env_errors(args)
    if bad:
        for err in bad:
            print(f"coverage-exporter: {err}", file=sys.stderr)
        return exit_codes.USAGE
    from coverage_exporter import runbooks

    try:
        logs.configure(args.log_level_deprecated or args.log_level, args.log_format)
        runbooks.set_base_url(args.runbook_base_url)
    except ValueError as err:
        print(f"coverage-exporter: {err}", file=sys.stderr)
        return exit_codes.USAGE
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
        return exit_codes.USAGE
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
