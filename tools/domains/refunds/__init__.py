"""The refunds domain: orders, the refund policy, and refunds issued; served to `RefundDesk`."""

from __future__ import annotations

from tools.domains.refunds.orders import TOOLS
from tools.domains.refunds.orders import seed as seed_demo_data

AGENTS = ("RefundDesk",)

__all__ = ["AGENTS", "TOOLS", "seed_demo_data"]
