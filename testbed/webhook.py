"""Alertmanager webhook receiver: appends every notification as one JSON line
to a file the tests read. Runs as a script (no package imports) so the
testbed can start it with any Python:

    python testbed/webhook.py --port 9099 --out state/webhook.jsonl
"""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_lock = threading.Lock()


def make_handler(out: Path) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                line = json.dumps(json.loads(body), separators=(",", ":"))
            except ValueError:
                self.send_response(400)
                self.end_headers()
                return
            with _lock, out.open("a") as f:
                f.write(line + "\n")
            self.send_response(200)
            self.end_headers()

        def do_GET(self) -> None:  # readiness probe
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok\n")

        def log_message(self, format: str, *args: object) -> None:
            print(f"{self.address_string()} {format % args}", flush=True)

    return Handler


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.touch()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(args.out))
    server.serve_forever()


if __name__ == "__main__":
    main()
