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
import socket
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config
from restate.server import install_shutdown_hook

log = logging.getLogger(__name__)

# Restate keeps long-lived HTTP/2 connections with many concurrent streams; lift hypercorn's caps.
UNBOUNDED = 2_147_483_647


def hypercorn_config(
    host: str, port: int, grace_seconds: float = 10.0, sock: socket.socket | None = None
) -> Config:
    """Hypercorn's settings for one of our apps; on `sock` if it is already listening."""
    config = Config()
    # Hypercorn adopts a listening socket by fd; detached, so only its socket object closes it.
    config.bind = [f"fd://{sock.detach()}"] if sock is not None else [f"{host}:{port}"]
    config.h2_max_concurrent_streams = UNBOUNDED
    config.keep_alive_max_requests = UNBOUNDED
    config.keep_alive_timeout = UNBOUNDED
    config.graceful_timeout = grace_seconds
    config.accesslog = None
    # Its log lines go through the root handler (`python -m app` configures it): printed once.
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


def with_lifespan(app: Any) -> Any:
    """The app, answering ASGI lifespan itself: the Restate SDK's app does not, and hypercorn
    would warn on every start that it carries on without it."""

    async def served(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    return served


class QuietStreamsAtShutdown(logging.Filter):
    """Drops the tracebacks of invocation streams still open when the server stops, from the
    moment the stop was asked for: hypercorn refuses the SDK's last write ("TaskGroup ... is
    shutting down", logged twice per stream) and asyncio reports each cancelled connection.
    Harmless: Restate retries the invocation elsewhere or after the restart."""

    LOGGERS = ("hypercorn.error", "restate.server", "asyncio")

    def __init__(self) -> None:
        super().__init__()
        self.stopping = False

    def stop(self) -> None:
        self.stopping = True
        # The same refused write leaves one of hypercorn's coroutines never awaited.
        warnings.filterwarnings("ignore", message=r"coroutine 'TCPServer\._idle_timeout' was never awaited")

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.stopping or not record.exc_info:
            return True
        error = record.exc_info[1]
        if isinstance(error, asyncio.CancelledError):
            return False
        return not (isinstance(error, RuntimeError) and "is shutting down" in str(error))


async def serve_until_signalled(
    apps: list[tuple[Any, Config]], on_shutdown: Callable[[], Awaitable[None]] | None = None
) -> None:
    """Serve each (app, config) pair on one loop; the first SIGTERM or SIGINT stops them all."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    quiet = QuietStreamsAtShutdown()
    for name in QuietStreamsAtShutdown.LOGGERS:
        logging.getLogger(name).addFilter(quiet)
    # The SDK registers its SIGTERM handler through this same hook list on its first invocation;
    # a plain add_signal_handler would be replaced by it and SIGTERM would never stop the server.
    install_shutdown_hook(loop, stop.set, signal.SIGTERM)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    async def trigger() -> None:
        await stop.wait()
        quiet.stop()

    try:
        await asyncio.gather(*(serve(app, config, shutdown_trigger=trigger) for app, config in apps))
    finally:
        if on_shutdown is not None:
            await on_shutdown()
        log.info("stopped")
