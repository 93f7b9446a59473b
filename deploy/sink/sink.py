"""A small HTTP sink for the demo's custom writer: it answers every POST with
200, logs its path, size and the start of its body, and counts them
(``GET /stats``). Standard library only."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_lock = threading.Lock()
_stats = {"posts": 0, "bytes": 0}


class SinkHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        with _lock:
            _stats["posts"] += 1
            _stats["bytes"] += len(body)
        self.log_message(
            "POST %s %s %d bytes: %s",
            self.path,
            self.headers.get("Content-Type", "-"),
            len(body),
            body[:200].decode("utf-8", "replace"),
        )
        self._answer(200, {"ok": True})

    def do_GET(self) -> None:  # noqa: N802
        with _lock:
            stats = dict(_stats)
        self._answer(200, stats)

    def _answer(self, status: int, document: object) -> None:
        payload = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def main() -> None:
    port = int(os.environ.get("PORT", "3000"))
    server = ThreadingHTTPServer(("0.0.0.0", port), SinkHandler)
    print(f"sink listening on :{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
