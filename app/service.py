"""The ASGI application Restate calls: every virtual object of the agent service, registered once."""

from __future__ import annotations

from typing import Any

import restate

from app.agents.agent_task import AGENT_TASK, agent_task
from app.agents.expense_report import EXPENSE_REPORT, expense_report
from app.approvals.gate import approval_gate
from app.machine import Machine
from app.settings import Settings

SERVICES = [agent_task, expense_report, approval_gate]
MACHINES: dict[str, Machine] = {AGENT_TASK.name: AGENT_TASK, EXPENSE_REPORT.name: EXPENSE_REPORT}


def create_restate_app(settings: Settings) -> Any:
    """The Restate endpoint (an ASGI app) hosting every agent's virtual object.

    With identity keys, the SDK answers 401 to any request the Restate server did not sign, so
    reaching the endpoint's port is not enough to invoke a handler.
    """
    return restate.app(services=SERVICES, identity_keys=settings.restate_identity_public_keys or None)
