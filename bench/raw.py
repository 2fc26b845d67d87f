"""The `raw` baseline: download exactly the responses the exporter asked
for in its first cycle, read every body to the end and throw it away.

Input: a JSON file with a list of {"method", "path", "port", "server",
"accept", "accept_encoding", "group"} as recorded by fake_api.py: each
request goes to 127.0.0.1:<port>, the server it hit (the Kubernetes API or
one of the Prometheus servers); without a port, to --base. Requests of one
group (one paginated list, one scrape pool) run in order; groups run
concurrently, as the exporter's reflectors and pool fetches do. Prints one
JSON object: requests, bytes (decompressed body bytes read), wall seconds.

Usage: python -m bench.raw --base http://127.0.0.1:PORT --requests FILE
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import defaultdict
from urllib.parse import urlsplit

import aiohttp
from yarl import URL


async def replay(base: str, requests: list[dict], concurrency: int) -> dict:
    host = urlsplit(base).hostname
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in requests:
        groups[r["group"]].append(r)
    total = {"requests": 0, "bytes": 0, "errors": 0}
    sem = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency), timeout=timeout, trust_env=False
    ) as session:

        async def run_group(items: list[dict]) -> None:
            for r in items:
                headers = {"Accept": r.get("accept") or "*/*"}
                if r.get("accept_encoding"):
                    headers["Accept-Encoding"] = r["accept_encoding"]
                async with sem:
                    origin = f"http://{host}:{r['port']}" if r.get("port") else base
                    url = URL(origin + r["path"], encoded=True)
                    async with session.request(r["method"], url, headers=headers) as resp:
                        n = 0
                        async for chunk in resp.content.iter_chunked(1 << 20):
                            n += len(chunk)
                        total["requests"] += 1
                        total["bytes"] += n
                        if resp.status >= 400:
                            total["errors"] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(run_group(g) for g in groups.values()))
        total["wall_s"] = time.perf_counter() - t0
    total["groups"] = len(groups)
    return total


def group_of(path: str) -> str:
    """Paginated requests of one list share a group: the path and query
    without the continue token."""
    parts = urlsplit(path)
    query = "&".join(p for p in parts.query.split("&") if not p.startswith("continue="))
    return parts.path + "?" + query


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--base", required=True)
    ap.add_argument("--requests", required=True)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args(argv)
    if not urlsplit(args.base).hostname.startswith("127."):
        ap.error("--base must be on 127.0.0.0/8")
    with open(args.requests) as f:
        reqs = json.load(f)
    for r in reqs:
        # one group per server and list: the same path on two servers runs concurrently
        r.setdefault("group", f"{r.get('port', '')} {group_of(r['path'])}")
    out = asyncio.run(replay(args.base, reqs, args.concurrency))
    json.dump(out, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
