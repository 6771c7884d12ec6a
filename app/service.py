"""The ASGI application Restate calls: every virtual object of the agent service, registered once."""

from __future__ import annotations

from typing import Any

import restate

from app.agents.agent_task import AGENT_TASK, agent_task
from app.agents.expense_report import EXPENSE_REPORT, expense_report
from app.approvals.gate import approval_gate
from app.machine import Machine

SERVICES = [agent_task, expense_report, approval_gate]
MACHINES: dict[str, Machine] = {AGENT_TASK.name: AGENT_TASK, EXPENSE_REPORT.name: EXPENSE_REPORT}


def create_restate_app() -> Any:
    """The Restate endpoint (an ASGI app) hosting every agent's virtual object."""
    return restate.app(services=SERVICES)
