"""`python -m common.healthcheck`: the container image's health check, for either service.

One image runs the agent service (`python -m app`, its `/health` on APPROVALS_PORT) or the tool
service (`python -m tools`, on TOOLS_PORT); a container runs one of them, so it is healthy when
the one it runs answers `/health` with 200 on loopback. Standard library only: it runs every few
seconds and must not pay for importing either service. Kubernetes probes the ports directly
(deploy/k8s), so this serves `docker run` and compose.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_SECONDS = 2.0


def health_urls(environ: dict[str, str]) -> list[str]:
    ports = [environ.get("APPROVALS_PORT", "9081"), environ.get("TOOLS_PORT", "9090")]
    return [f"http://127.0.0.1:{port}/health" for port in ports]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def main_for(environ: dict[str, str]) -> int:
    """The exit code: 0 when the service answers, 1 when neither port does."""
    return 0 if any(healthy(url) for url in health_urls(environ)) else 1


if __name__ == "__main__":
    sys.exit(main_for(dict(os.environ)))
