"""The registry: tool name -> Tool. The API serves exactly the tools registered here."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from tools import approvals, expenses, ledger, notifications, routing, tickets, users
from tools.definition import Tool


class ToolRegistry:
    """An ordered, name-unique collection of tools."""

    def __init__(self, tools: Iterable[Tool[Any, Any]] = ()) -> None:
        self._tools: dict[str, Tool[Any, Any]] = {}
        for tool in tools:
            self.register(tool)

    def register(self, tool: Tool[Any, Any]) -> None:
        if tool.name in self._tools:
            raise ValueError(f"a tool named {tool.name!r} is already registered")
        self._tools[tool.name] = tool

    def get(self, name: str) -> Tool[Any, Any] | None:
        return self._tools.get(name)

    def __iter__(self) -> Iterator[Tool[Any, Any]]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def catalog(self) -> list[dict[str, Any]]:
        """What `GET /tools` shows: enough for an agent (or a person) to call each tool."""
        return [
            {
                "name": tool.name,
                "description": tool.description,
                "side_effects": tool.side_effects,
                "args_schema": tool.args_model.model_json_schema(),
                "result_schema": tool.result_model.model_json_schema(),
            }
            for tool in self
        ]


def default_registry() -> ToolRegistry:
    """The generic agent's tools, the approval gate's, and the expense agent's."""
    return ToolRegistry(
        [
            *users.TOOLS,
            *tickets.TOOLS,
            *notifications.TOOLS,
            *approvals.TOOLS,
            *expenses.TOOLS,
            *routing.TOOLS,
            *ledger.TOOLS,
        ]
    )
