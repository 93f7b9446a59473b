"""Load generator for the demo: GETs and POSTs to the app's routes at about
``RATE`` requests per second (default 10), forever. Standard library only."""

from __future__ import annotations

import os
import random
import time
import urllib.error
import urllib.request

#: (method, path, weight): mostly reads, some writes, on two routes.
REQUESTS = [
    ("GET", "/", 4),
    ("POST", "/", 2),
    ("GET", "/api/orders", 3),
    ("POST", "/api/orders", 3),
]


def send(target: str, method: str, path: str) -> int:
    data = b"{}" if method == "POST" else None
    req = urllib.request.Request(target + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as response:
        response.read()
        return int(response.status)


def main() -> None:
    target = os.environ.get("TARGET_URL", "http://localhost:8000").rstrip("/")
    rate = float(os.environ.get("RATE", "10"))
    choices = [(method, path) for method, path, weight in REQUESTS for _ in range(weight)]
    sent = failed = 0
    started = time.monotonic()
    print(f"loadgen: {rate:g} requests/s to {target}", flush=True)
    while True:
        method, path = random.choice(choices)
        try:
            send(target, method, path)
            sent += 1
        except (urllib.error.URLError, OSError) as exc:
            failed += 1
            if failed % 50 == 1:
                print(f"loadgen: {method} {path} failed: {exc}", flush=True)
        if (sent + failed) % 500 == 0:
            elapsed = time.monotonic() - started
            print(f"loadgen: {sent} sent, {failed} failed in {elapsed:.0f} s", flush=True)
        time.sleep(random.expovariate(rate))


if __name__ == "__main__":
    main()
