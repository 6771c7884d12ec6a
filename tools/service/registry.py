"""The registry: tool name -> Tool, and which agent may call which tool.

The API serves exactly the tools registered here. Least privilege is enforced here, by the tool
service, not by the agents: a calling agent (the `X-Agent` header the agent service sends) is
offered, and may call, only its own toolset, so a planner talked into "record this expense" by
its input cannot reach the ledger.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import ModuleType
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

import tools.domains
from tools.service import approval_tickets
from tools.service.definition import Tool


class ToolRegistry:
    """An ordered, name-unique collection of tools."""

    def __init__(
        self,
        tools: Iterable[Tool[Any, Any]] = (),
        toolsets: Mapping[str, Iterable[str]] | None = None,
        shared: Iterable[str] = (),
    ) -> None:
        self._tools: dict[str, Tool[Any, Any]] = {}
        # Each agent's catalog, built once: the schemas cost more than the rest of a `GET /tools`.
        self._catalogs: dict[str | None, list[dict[str, Any]]] = {}
        for tool in tools:
            self.register(tool)
        self._toolsets = {agent: frozenset(names) for agent, names in (toolsets or {}).items()}
        # Granted to every agent, also one registered after this service was built (its gates).
        self._shared = frozenset(shared)
        for agent, names in {**self._toolsets, "(shared)": self._shared}.items():
            unknown = sorted(names - set(self._tools))
            if unknown:
                raise ValueError(f"the toolset of {agent} names unregistered tools {unknown}")

    def register(self, tool: Tool[Any, Any]) -> None:
        if tool.name in self._tools:
            raise ValueError(f"a tool named {tool.name!r} is already registered")
        self._tools[tool.name] = tool
        self._catalogs.clear()

    def get(self, name: str) -> Tool[Any, Any] | None:
        return self._tools.get(name)

    def __iter__(self) -> Iterator[Tool[Any, Any]]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def agents(self) -> list[str]:
        return sorted(self._toolsets)

    def granted(self, agent: str | None, tool: str) -> bool:
        """May `agent` call `tool`? None is a direct caller with the token (agentctl, the demo)."""
        return agent is None or tool in self._shared or tool in self._toolsets.get(agent, frozenset())

    def catalog(self, agent: str | None = None) -> list[dict[str, Any]]:
        """What `GET /tools` shows: enough for an agent (or a person) to call each tool; for an
        agent, only its own toolset. Built once per agent (until a tool is registered) and shared:
        callers must not change it."""
        cached = self._catalogs.get(agent)
        if cached is None:
            cached = self._catalogs[agent] = self._build_catalog(agent)
        return cached

    def _build_catalog(self, agent: str | None) -> list[dict[str, Any]]:
        return [
            {
                "name": tool.name,
                "description": tool.description,
                "side_effects": tool.side_effects,
                "args_schema": tool.args_model.model_json_schema(),
                "result_schema": tool.result_model.model_json_schema(),
            }
            for tool in self
            if self.granted(agent, tool.name)
        ]


def _names(*groups: Iterable[Tool[Any, Any]]) -> frozenset[str]:
    return frozenset(tool.name for group in groups for tool in group)


# Every agent's gates call the approval tools, which belong to the service, not to a domain.
GATE_TOOLS = _names(approval_tickets.TOOLS)


def domains() -> list[ModuleType]:
    """Every tool domain under tools/domains/ (each exposes TOOLS and AGENTS, maybe `seed_demo_data`)."""
    found = sorted(info.name for info in pkgutil.iter_modules(tools.domains.__path__) if info.ispkg)
    return [importlib.import_module(f"{tools.domains.__name__}.{name}") for name in found]


def domain_seeds() -> list[Callable[[sessionmaker[Session]], None]]:
    """The domains' demo-data functions, run at start (each inserts only what is missing)."""
    return [domain.seed_demo_data for domain in domains() if hasattr(domain, "seed_demo_data")]


def default_registry() -> ToolRegistry:
    """The approval gates' tools (every agent's) and every domain's tools (its agents' only)."""
    toolsets: dict[str, set[str]] = {}
    domain_tools: list[Tool[Any, Any]] = []
    for domain in domains():
        domain_tools.extend(domain.TOOLS)
        for agent in domain.AGENTS:
            toolsets.setdefault(agent, set()).update(tool.name for tool in domain.TOOLS)
    return ToolRegistry([*approval_tickets.TOOLS, *domain_tools], toolsets, shared=GATE_TOOLS)
