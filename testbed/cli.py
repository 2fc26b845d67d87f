"""``testbed/testbed up|env|down|status|restart|scale|migrate|shards``: the testbed from a shell."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path

from testbed import scenarios, scrapers
from testbed.cluster import DEFAULT_EXPORTER_ADDRESS, Cluster, state_dir_default


def _versions(arg: str) -> list[str]:
    return {"2": ["2"], "3": ["3"], "both": ["3", "2"]}[arg]


def cmd_up(args: argparse.Namespace) -> int:
    state = args.state_dir or state_dir_default()
    if (Path(state) / "state.json").exists():
        old = Cluster.load(state)
        if old.running() == old.components and not args.restart:
            print(f"testbed already up in {old.state_dir} (use --restart to start afresh)")
            _print_env(old)
            return 0
        print("stopping the previous testbed", file=sys.stderr)
        old.down()
    start = time.monotonic()
    versions = ["3"] if args.operator else _versions(args.prometheus)
    c = Cluster(state, prometheus=versions, rule_files=args.rule_file,
                exporter_address=args.exporter_address, operator=args.operator,
                scrapers=scrapers.kinds_of(args.scrapers) if args.scrapers else ())
    try:
        c.up()
        t_up = time.monotonic() - start
        kube = scenarios.connect(c.kubeconfig)
        if args.nodes:
            scenarios.apply(kube, args.nodes, operator=args.operator)
        if not args.operator:
            scenarios.register_server_pods(kube, c.prometheus_urls)
        if args.operator:
            from testbed import migration

            migration.settle(c, kube, timeout=300)
    except BaseException:
        print("up failed; stopping what started (state kept for its logs)", file=sys.stderr)
        c.down(remove_state=False)
        raise
    total = time.monotonic() - start
    for name in c.running():
        pid = c.pid(name)
        print(f"started {name:<24} pid {pid:<8} log {c.log_file(name)}")
    print(f"processes up in {t_up:.1f} s, scenario with {args.nodes} nodes applied, "
          f"{total:.1f} s in all")
    _print_env(c)
    return 0


def _print_env(c: Cluster) -> None:
    for k, v in c.env().items():
        print(f"{k}={shlex.quote(v)}")


def cmd_env(args: argparse.Namespace) -> int:
    _print_env(Cluster.load(args.state_dir))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    c = Cluster.load(args.state_dir)
    print(json.dumps({n: c.is_running(n) for n in c.components}, indent=2))
    return 0 if c.running() == c.components else 1


def cmd_restart(args: argparse.Namespace) -> int:
    c = Cluster.load(args.state_dir)
    c.stop(args.component, force=args.kill)
    c.start(args.component)
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    c = Cluster.load(args.state_dir)
    kube = scenarios.connect(c.kubeconfig)
    if c.operator:
        from testbed import migration

        migration.scale(c, kube, args.nodes)
    else:
        scenarios.scale_nodes(kube, args.nodes)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from testbed import migration

    c = Cluster.load(args.state_dir)
    if not c.operator:
        print("migrate needs the operator scenario (testbed/testbed up --operator)",
              file=sys.stderr)
        return 2
    start = time.monotonic()
    targets = migration.migrate(c, scenarios.connect(c.kubeconfig), args.step)
    for pod, pools in targets.items():
        counts = ", ".join(f"{pool.rsplit('/', 2)[-2]}/{pool.rsplit('/', 1)[-1]} {len(a)}"
                           for pool, a in pools.items())
        print(f"{pod}: {counts}")
    print(f"{args.step} settled in {time.monotonic() - start:.1f} s")
    return 0


def cmd_shards(args: argparse.Namespace) -> int:
    from testbed import migration

    c = Cluster.load(args.state_dir)
    if not c.operator:
        print("shards needs the operator scenario (testbed/testbed up --operator)",
              file=sys.stderr)
        return 2
    start = time.monotonic()
    migration.set_shards(c, scenarios.connect(c.kubeconfig), args.shards)
    for pod in c.operator_pods():
        print(f"{pod.name}: shard {pod.shard}, replica {pod.replica}, {pod.url}")
    print(f"{args.shards} shards settled in {time.monotonic() - start:.1f} s")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    state = Path(args.state_dir or state_dir_default())
    if not (state / "state.json").exists():
        print(f"no testbed in {state}")
        return 0
    c = Cluster.load(state)
    c.down(remove_state=not args.keep_state)
    print(f"stopped the testbed in {state}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="testbed", description=__doc__)
    p.add_argument("--state-dir", type=Path, default=None,
                   help="default $TESTBED_STATE_DIR or testbed/state")
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start everything and apply the scenario")
    up.add_argument("--nodes", type=int, default=scenarios.DEFAULT_NODES,
                    help="simulated nodes (0: no scenario)")
    up.add_argument("--prometheus", choices=["2", "3", "both"], default="both")
    up.add_argument("--rule-file", action="append", default=[], type=Path,
                    help="Prometheus rule file (repeatable)")
    up.add_argument("--exporter-address", default=DEFAULT_EXPORTER_ADDRESS,
                    help="where Prometheus scrapes coverage-exporter")
    up.add_argument("--restart", action="store_true", help="stop a running testbed first")
    up.add_argument("--scrapers", default="", metavar="KINDS",
                    help="also run other scrapers: vmagent,agent,thanos or all "
                    "(testbed/scrapers.py)")
    up.add_argument("--operator", action="store_true",
                    help="run the real Prometheus Operator (kube-system/kubelet, CR monitoring/k8s "
                         "with 2 shards x 2 replicas on Prometheus 3.x) instead of hand-written "
                         "kubelet objects and configs")
    up.set_defaults(fn=cmd_up)
    sub.add_parser("env", help="print shell assignments").set_defaults(fn=cmd_env)
    sub.add_parser("status", help="which processes run").set_defaults(fn=cmd_status)
    rs = sub.add_parser("restart", help="stop and start one component")
    rs.add_argument("component")
    rs.add_argument("--kill", action="store_true", help="SIGKILL instead of SIGTERM")
    rs.set_defaults(fn=cmd_restart)
    sc = sub.add_parser("scale", help="change the number of nodes")
    sc.add_argument("nodes", type=int)
    sc.set_defaults(fn=cmd_scale)
    mg = sub.add_parser("migrate", help="one step of the Operator's kubelet migration")
    mg.add_argument("step", choices=["dual-write", "switch-role", "endpoints-off"])
    mg.set_defaults(fn=cmd_migrate)
    sh = sub.add_parser("shards", help="PATCH the Operator's CR to N shards (its pods follow)")
    sh.add_argument("shards", type=int)
    sh.set_defaults(fn=cmd_shards)
    down = sub.add_parser("down", help="stop every process and remove the state")
    down.add_argument("--keep-state", action="store_true")
    down.set_defaults(fn=cmd_down)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        return args.fn(args)
    except FileNotFoundError as e:
        if e.filename and str(e.filename).endswith("state.json"):
            print(f"no testbed in {Path(e.filename).parent} (run: testbed/testbed up)",
                  file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
