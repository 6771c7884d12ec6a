"""`python -m app`: serve the agent service; `python -m app diagram NAME`: print a machine's diagram."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from app.runtime.machine import to_mermaid


def _serve() -> None:
    from app.approvals.api import create_approvals_app
    from app.llm import current_model
    from app.runtime.serving import hypercorn_config, serve_until_signalled, with_lifespan
    from app.runtime.tool_client import close_clients
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
    asyncio.run(serve_until_signalled(apps, on_shutdown=close_clients))


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
