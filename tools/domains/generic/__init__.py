"""The generic agent's domain: users and their history, tickets, notifications; served to AgentTask."""

from __future__ import annotations

from typing import Any

from tools.domains.generic import notifications, tickets, users
from tools.domains.generic.users import seed_demo_users as seed_demo_data
from tools.service.definition import Tool

TOOLS: tuple[Tool[Any, Any], ...] = (*users.TOOLS, *tickets.TOOLS, *notifications.TOOLS)
AGENTS = ("AgentTask",)

__all__ = ["AGENTS", "TOOLS", "seed_demo_data"]
