"""The expense domain: claims and receipts (OCR), routing to approvers, the ledger; served to
ExpenseReport. Its REST surfaces (`POST /expenses`, `GET /ledger`...) are mounted by the service."""

from __future__ import annotations

from typing import Any

from tools.domains.expense import expenses, ledger, routing
from tools.domains.expense.routing import seed_routing_policy as seed_demo_data
from tools.service.definition import Tool

TOOLS: tuple[Tool[Any, Any], ...] = (*expenses.TOOLS, *routing.TOOLS, *ledger.TOOLS)
AGENTS = ("ExpenseReport",)

__all__ = ["AGENTS", "TOOLS", "seed_demo_data"]
