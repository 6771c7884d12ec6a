"""`python -m tools`: serve the tool service with hypercorn until SIGTERM or SIGINT (exit code 0)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config

from common.environment import load_or_exit
from common.listening import listen_or_exit
from tools.service.api import create_app
from tools.service.settings import ToolsSettings, get_tools_settings

logger = logging.getLogger("tools")


class _AnnounceWhenReady:
    """Logs the ready line when the app's startup (schema, demo data) has completed."""

    def __init__(self, app: Any, url: str) -> None:
        self._app = app
        self._url = url

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self._app(scope, receive, send)
            return

        async def announcing_send(message: dict[str, Any]) -> None:
            await send(message)
            if message["type"] == "lifespan.startup.complete":
                logger.info("tools service listening on %s", self._url)

        await self._app(scope, receive, announcing_send)


async def run(settings: ToolsSettings) -> None:
    shutdown = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, shutdown.set)

    config = Config()
    sock = listen_or_exit(
        "tool service", settings.tools_host, settings.tools_port, "TOOLS_HOST/TOOLS_PORT", config.backlog
    )
    host, port = sock.getsockname()[:2]
    # Hypercorn adopts the listening socket; detach so only its socket object closes the fd.
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    # Hypercorn's own log lines go through the root handler configured in main(), printed once.
    config.errorlog = logging.getLogger("hypercorn.error")
    display_host = f"[{host}]" if ":" in host else host
    app = _AnnounceWhenReady(create_app(settings), f"http://{display_host}:{port}")
    await serve(app, config, shutdown_trigger=shutdown.wait, mode="asgi")
    logger.info("tools service stopped")


def sweep(settings: ToolsSettings) -> None:
    """`python -m tools sweep`: one storage sweep now (a cron job's alternative to the service's
    own hourly one); prints what it deleted as JSON."""
    from datetime import timedelta

    from common.db import make_engine, utc_now
    from tools.service.db import make_session_factory
    from tools.service.idempotency import IdempotencyStore
    from tools.service.schema import create_schema
    from tools.service.sweeper import Sweeper

    engine = make_engine(settings.database_url)
    try:
        create_schema(engine)
        sessions = make_session_factory(engine)
        store = IdempotencyStore(sessions, timedelta(seconds=settings.idempotency_lease_seconds), utc_now)
        sweeper = Sweeper(store, sessions, timedelta(days=settings.idempotency_retention_days), utc_now, 0)
        sys.stdout.write(sweeper.sweep_once().model_dump_json() + "\n")
    finally:
        engine.dispose()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_or_exit("tool service", get_tools_settings)
    if sys.argv[1:] == ["sweep"]:
        sweep(settings)
        return
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
