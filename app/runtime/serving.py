"""Serve an ASGI app with hypercorn until SIGTERM or SIGINT, then shut down cleanly.

The Restate SDK installs its own SIGTERM handler on the first invocation, which only notifies open
streams and replaces any handler installed before it; without our hook in the SDK's own list and
an explicit shutdown trigger, hypercorn would never exit on SIGTERM (restate-notes §1.10), and a
Kubernetes grace period would end in SIGKILL.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config
from restate.server import install_shutdown_hook

log = logging.getLogger(__name__)

# Restate keeps long-lived HTTP/2 connections with many concurrent streams; lift hypercorn's caps.
UNBOUNDED = 2_147_483_647


def hypercorn_config(host: str, port: int, grace_seconds: float = 10.0) -> Config:
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.h2_max_concurrent_streams = UNBOUNDED
    config.keep_alive_max_requests = UNBOUNDED
    config.keep_alive_timeout = UNBOUNDED
    config.graceful_timeout = grace_seconds
    config.accesslog = None
    return config


async def serve_until_signalled(
    apps: list[tuple[Any, Config]], on_shutdown: Callable[[], Awaitable[None]] | None = None
) -> None:
    """Serve each (app, config) pair on one loop; the first SIGTERM or SIGINT stops them all."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # The SDK registers its SIGTERM handler through this same hook list on its first invocation;
    # a plain add_signal_handler would be replaced by it and SIGTERM would never stop the server.
    install_shutdown_hook(loop, stop.set, signal.SIGTERM)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    async def trigger() -> None:
        await stop.wait()

    try:
        await asyncio.gather(*(serve(app, config, shutdown_trigger=trigger) for app, config in apps))
    finally:
        if on_shutdown is not None:
            await on_shutdown()
        log.info("stopped")
