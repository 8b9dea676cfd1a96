#!/usr/bin/env python3
"""The image's health check: exit 0 when this container's videoserve answers /healthz with 200.

An API container (`videoserve serve`) answers on VIDEOSERVE_PORT; a worker container
(`videoserve worker`) on VIDEOSERVE_WORKER_METRICS_PORT, beside its /metrics. Nothing listens
on the other port, so the first port that accepts a connection is this container's process.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    ports = [os.environ.get("VIDEOSERVE_PORT", "8000")]
    if os.environ.get("VIDEOSERVE_WORKER_METRICS_PORT", "0") != "0":
        ports.append(os.environ["VIDEOSERVE_WORKER_METRICS_PORT"])
    last = ""
    for port in ports:
        url = f"http://127.0.0.1:{port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return 0 if answer.status == 200 else 1
        except urllib.error.HTTPError as exc:
            print(f"{url}: {exc.code} {exc.read()[:300]!r}", file=sys.stderr)
            return 1
        except OSError as exc:
            last = f"{url}: {exc}"
    print(f"no videoserve answers here ({last})", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
