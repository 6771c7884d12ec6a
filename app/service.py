"""The ASGI application Restate calls: every registered agent's virtual object, and the arbiter."""

from __future__ import annotations

from typing import Any

import restate

from app.agents import registered_agents
from app.gates.arbiter import approval_gate
from app.runtime.machine import Machine
from app.runtime.refusals import refused_starts
from app.settings import Settings


def machines() -> dict[str, Machine]:
    """Every registered agent's machine, by name (diagrams, agentctl, the event log's checks)."""
    return {name: agent.machine for name, agent in registered_agents().items()}


def create_restate_app(settings: Settings) -> Any:
    """The Restate endpoint (an ASGI app) hosting every agent's virtual object.

    With identity keys, the SDK answers 401 to any request the Restate server did not sign, so
    reaching the endpoint's port is not enough to invoke a handler.
    """
    services = [agent.virtual_object for agent in registered_agents().values()]
    return restate.app(
        services=[*services, approval_gate, refused_starts],
        identity_keys=settings.restate_identity_public_keys or None,
    )
