"""The `naive` baseline: the obvious script anyone would write first.

Official `kubernetes` client, typed lists (CoreV1Api / DiscoveryV1Api /
AppsV1Api list_* with full deserialization into model objects, no
pagination), and `requests` with `.json()` on the full unfiltered
/api/v1/targets of every Prometheus server (one --prometheus-url each, as
NAME=URL or URL). It computes the same per-Service gap as the exporter:
for every node-wide Service (DaemonSet-backed, or selector-less with Node
addresses), which nodes are missing from the Endpoints object, from the
EndpointSlices, and from each scrape pool (the union over the servers: a
naive script knows nothing of shards and replicas).

Prints one JSON object with the gaps and its own wall time.

Usage: python -m bench.naive --kubeconfig FILE --prometheus-url [NAME=]URL ...
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from urllib.parse import urlsplit


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--prometheus-url", required=True, action="append")
    args = ap.parse_args(argv)
    urls = [u.split("=", 1)[1] if "=" in u.split("://", 1)[0] else u for u in args.prometheus_url]
    for u in urls:
        if not (urlsplit(u).hostname or "").startswith("127."):
            ap.error("--prometheus-url must be on 127.0.0.0/8")

    import requests
    from kubernetes import client, config

    t0 = time.perf_counter()
    config.load_kube_config(config_file=args.kubeconfig)
    core = client.CoreV1Api()
    disc = client.DiscoveryV1Api()
    apps = client.AppsV1Api()

    nodes = core.list_node(_request_timeout=1800).items
    services = core.list_service_for_all_namespaces(_request_timeout=1800).items
    endpoints = core.list_endpoints_for_all_namespaces(_request_timeout=1800).items
    slices = disc.list_endpoint_slice_for_all_namespaces(_request_timeout=1800).items
    daemonsets = apps.list_daemon_set_for_all_namespaces(_request_timeout=1800).items
    targets = []
    for u in urls:
        resp = requests.get(u.rstrip("/") + "/api/v1/targets", timeout=1800)
        resp.raise_for_status()
        targets += resp.json()["data"]["activeTargets"]
    t_fetch = time.perf_counter() - t0

    node_names = {n.metadata.name for n in nodes}
    node_by_ip = {}
    for n in nodes:
        for a in n.status.addresses or []:
            if a.type in ("InternalIP", "ExternalIP"):
                node_by_ip[a.address] = n.metadata.name

    ds_selectors = [(d.metadata.namespace, d.spec.selector.match_labels or {}) for d in daemonsets]

    def node_wide(svc) -> bool:
        sel = svc.spec.selector
        if sel:
            return any(
                ns == svc.metadata.namespace and all(m.get(k) == v for k, v in sel.items())
                for ns, m in ds_selectors
            ) or any(
                ns == svc.metadata.namespace and all(sel.get(k) == v for k, v in m.items())
                for ns, m in ds_selectors
            )
        return False

    ep_by_key = {(e.metadata.namespace, e.metadata.name): e for e in endpoints}
    slices_by_key = defaultdict(list)
    for s in slices:
        name = (s.metadata.labels or {}).get("kubernetes.io/service-name")
        if name:
            slices_by_key[(s.metadata.namespace, name)].append(s)

    def ep_node(addr) -> str | None:
        if addr.node_name:
            return addr.node_name
        if addr.target_ref is not None and addr.target_ref.kind == "Node":
            return addr.target_ref.name
        return node_by_ip.get(addr.ip)

    pools = defaultdict(set)  # (ns, svc, pool) -> nodes
    for t in targets:
        d = t["discoveredLabels"]
        ns = d.get("__meta_kubernetes_namespace")
        svc = d.get("__meta_kubernetes_service_name")
        node = (
            d.get("__meta_kubernetes_endpoint_node_name")
            or d.get("__meta_kubernetes_endpointslice_endpoint_node_name")
            or d.get("__meta_kubernetes_pod_node_name")
        )
        if not node and (
            d.get("__meta_kubernetes_endpoint_address_target_kind") == "Node"
            or d.get("__meta_kubernetes_endpointslice_address_target_kind") == "Node"
        ):
            node = d.get("__meta_kubernetes_endpoint_address_target_name") or d.get(
                "__meta_kubernetes_endpointslice_address_target_name"
            )
        if not node:
            node = node_by_ip.get(d.get("__address__", "").rsplit(":", 1)[0])
        pools[(ns, svc, t["scrapePool"])].add(node)

    report = []
    for svc in services:
        key = (svc.metadata.namespace, svc.metadata.name)
        ep = ep_by_key.get(key)
        ep_nodes = set()
        node_targets = False
        if ep is not None:
            for subset in ep.subsets or []:
                for addr in (subset.addresses or []) + (subset.not_ready_addresses or []):
                    if addr.target_ref is not None and addr.target_ref.kind == "Node":
                        node_targets = True
                    ep_nodes.add(ep_node(addr))
        if not (node_wide(svc) or (not svc.spec.selector and node_targets)):
            continue
        slice_nodes = set()
        for s in slices_by_key.get(key, []):
            for e in s.endpoints or []:
                if e.node_name:
                    slice_nodes.add(e.node_name)
                elif e.target_ref is not None and e.target_ref.kind == "Node":
                    slice_nodes.add(e.target_ref.name)
                else:
                    slice_nodes.add(node_by_ip.get(e.addresses[0]))
        entry = {
            "namespace": key[0],
            "service": key[1],
            "expected": len(node_names),
            "missing_endpoints": len(node_names - ep_nodes),
            "missing_endpointslices": len(node_names - slice_nodes),
            "pools": {},
        }
        for (ns, name, pool), found in pools.items():
            if (ns, name) == key:
                entry["pools"][pool] = len(node_names - found)
        report.append(entry)

    out = {
        "fetch_s": round(t_fetch, 3),
        "wall_s": round(time.perf_counter() - t0, 3),
        "nodes": len(nodes),
        "targets": len(targets),
        "services": sorted(report, key=lambda e: (e["namespace"], e["service"])),
    }
    json.dump(out, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
