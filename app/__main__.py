"""`python -m app`: serve the agent service; `python -m app diagram NAME`: print a machine's diagram."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import TYPE_CHECKING, Any

from app.runtime.machine import to_mermaid

if TYPE_CHECKING:
    from app.settings import Settings


def _serve() -> None:
    from app.approvals.api import create_approvals_app
    from app.llm import current_model
    from app.runtime.serving import hypercorn_config, with_lifespan
    from app.service import create_restate_app, machines
    from app.settings import get_settings
    from common.environment import load_or_exit, refuse
    from common.listening import listen_or_exit

    settings = load_or_exit("agent service", get_settings)
    problems = settings.startup_problems()
    if problems:
        refuse("agent service", "; ".join(problems))
    host = settings.app_host
    endpoint = listen_or_exit("agent service", host, settings.app_port, "APP_HOST/APP_PORT")
    approvals = listen_or_exit("agent service", host, settings.approvals_port, "APP_HOST/APPROVALS_PORT")
    logging.getLogger(__name__).info(
        "agent service on http://%s:%s (ENV=%s, model: %s, request identity: %s)",
        settings.app_host,
        settings.app_port,
        settings.env,
        "offline" if settings.uses_offline_model else settings.anthropic_model,
        "required" if settings.restate_identity_public_keys else "OFF (development only)",
    )
    # Built now, not at the first task: the Anthropic adapter's import takes seconds.
    current_model()
    grace = settings.shutdown_grace_seconds
    apps = [
        (
            with_lifespan(create_restate_app(settings)),
            hypercorn_config(host, settings.app_port, grace, sock=endpoint),
        ),
        (
            create_approvals_app(settings, machines()),
            hypercorn_config(host, settings.approvals_port, grace, sock=approvals),
        ),
    ]
    asyncio.run(_serve_and_export(settings, apps))


async def _serve_and_export(settings: Settings, apps: list[tuple[Any, Any]]) -> None:
    """Serve the apps; alongside, if a collector is configured, export the event log as spans."""
    from app.runtime.serving import serve_until_signalled
    from app.runtime.tool_client import close_clients

    endpoint = settings.traces_endpoint
    if endpoint is None:
        await serve_until_signalled(apps, on_shutdown=close_clients)
        return
    from app.audit import trace_export
    from app.audit.event_log import store_for
    from app.audit.otlp import OtlpSink
    from app.service import machines

    endings = {
        name: trace_export.Endings(frozenset(machine.terminal), machine.failure)
        for name, machine in machines().items()
    }
    sink = OtlpSink(endpoint, settings.otel_service_name)
    exporter = trace_export.TraceExporter(
        store_for(settings.database_url), endings, sink, holder=trace_export.replica_name(settings.app_port)
    )
    logging.getLogger(__name__).info("exporting task spans to %s", endpoint)
    stop = asyncio.Event()
    following = asyncio.ensure_future(
        trace_export.follow(exporter, settings.trace_export_interval_seconds, stop)
    )
    try:
        await serve_until_signalled(apps, on_shutdown=close_clients)
    finally:
        stop.set()
        await following
        sink.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="serve the Restate endpoint (the default)")
    diagram = commands.add_parser("diagram", help="print a machine's Mermaid stateDiagram-v2")
    diagram.add_argument("name", help="the machine, e.g. AgentTask")
    args = parser.parse_args(argv)

    if args.command == "diagram":
        from app.service import machines

        known = machines()
        machine = known.get(args.name)
        if machine is None:
            sys.stderr.write(f"unknown machine {args.name!r}; known: {', '.join(sorted(known))}\n")
            return 2
        sys.stdout.write(to_mermaid(machine))
        return 0

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One line per request to the tool service would drown what matters (steps, stalls, refusals).
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from app.runtime.stalls import OneLinePerFailedAttempt

    for handler in logging.getLogger().handlers:
        handler.addFilter(OneLinePerFailedAttempt())
    _serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
