"""Serve an ASGI app with hypercorn until SIGTERM or SIGINT, then shut down cleanly.

The Restate SDK installs its own SIGTERM hook on the first request, which only notifies open
streams; without an explicit shutdown trigger hypercorn would never exit on SIGTERM
(restate-notes §1.10), and a Kubernetes grace period would end in SIGKILL.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config

log = logging.getLogger(__name__)

# Restate keeps long-lived HTTP/2 connections with many concurrent streams; lift hypercorn's caps.
UNBOUNDED = 2_147_483_647


def hypercorn_config(host: str, port: int) -> Config:
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.h2_max_concurrent_streams = UNBOUNDED
    config.keep_alive_max_requests = UNBOUNDED
    config.keep_alive_timeout = UNBOUNDED
    config.graceful_timeout = 10.0
    config.accesslog = None
    return config


async def serve_until_signalled(
    apps: list[tuple[Any, Config]], on_shutdown: Callable[[], Awaitable[None]] | None = None
) -> None:
    """Serve each (app, config) pair on one loop; the first SIGTERM or SIGINT stops them all."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def trigger() -> None:
        await stop.wait()

    try:
        await asyncio.gather(*(serve(app, config, shutdown_trigger=trigger) for app, config in apps))
    finally:
        if on_shutdown is not None:
            await on_shutdown()
        log.info("stopped")
