"""The registered agents: every package under `app/agents/` that declares `AGENT`, plus the modules
named in `AGENT_MODULES`. Nothing else keeps a list: the service, the webhook, `agentctl`, the
diagrams and the inbox all read this registry."""

from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache
from typing import Any

from app.agent import Agent

AGENT_ATTRIBUTE = "AGENT"


class RegistrationError(RuntimeError):
    """A module named as an agent does not declare one, or two agents share a name."""


def _declared(module_name: str) -> Agent[Any, Any] | None:
    module = importlib.import_module(module_name)
    agent = getattr(module, AGENT_ATTRIBUTE, None)
    if agent is not None and not isinstance(agent, Agent):
        raise RegistrationError(f"{module_name}.{AGENT_ATTRIBUTE} is not an app.agent.Agent")
    return agent


@lru_cache(maxsize=1)
def registered_agents() -> dict[str, Agent[Any, Any]]:
    """Name -> agent, in a stable order (the built-in agents by package name, then AGENT_MODULES)."""
    from app.settings import get_settings

    names = [
        f"{__name__}.{info.name}" for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name)
    ]
    extra = get_settings().agent_modules
    agents: dict[str, Agent[Any, Any]] = {}
    for module_name in [*names, *extra]:
        agent = _declared(module_name)
        if agent is None:
            if module_name in extra:
                raise RegistrationError(
                    f"AGENT_MODULES names {module_name}, which declares no {AGENT_ATTRIBUTE}"
                )
            continue
        if agent.name in agents:
            raise RegistrationError(f"two agents are named {agent.name} ({module_name} and another)")
        agents[agent.name] = agent
    return agents
