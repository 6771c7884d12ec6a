"""`RefundDesk`: a customer's refund request, written only with the public API (app/agent.py).

LOOKUP the order, ASSESS (the model proposes an amount), CHECK it against the tool service's
refund policy (a refused amount goes back to ASSESS with the policy's answer, at most
REFUND_MAX_REVISIONS times), WAIT_APPROVAL (a human approves exactly that refund), ISSUE it once,
COMPLETE. An order past the policy's window, or refunded already, ends DECLINED.
"""

from __future__ import annotations

from app.agent import Agent, Gate, Machine
from app.agents.refund_desk import steps
from app.agents.refund_desk.llm import PROPOSE
from app.agents.refund_desk.models import RefundData, RunRefund

MACHINE = Machine.declare(
    "RefundDesk",
    initial="LOOKUP",
    transitions={
        "LOOKUP": ["ASSESS", "DECLINED", "FAILED"],
        "ASSESS": ["CHECK", "FAILED"],
        "CHECK": ["WAIT_APPROVAL", "ASSESS", "DECLINED", "FAILED"],
        "WAIT_APPROVAL": ["ISSUE", "DECLINED", "FAILED"],
        "ISSUE": ["COMPLETE", "FAILED"],
    },
    terminal=["COMPLETE", "DECLINED", "FAILED"],
    failure="FAILED",
    gates={"WAIT_APPROVAL": Gate(approve="ISSUE", reject="DECLINED", timeout="FAILED")},
    descriptions={
        "LOOKUP": "tool: the order",
        "ASSESS": "LLM: proposed amount",
        "CHECK": "tool: refund policy; revises on refusal",
        "ISSUE": "tool: one refund, against the approval",
    },
)

AGENT = Agent(
    machine=MACHINE,
    description="A refund desk: look up the order, propose within policy, have it approved, refund once.",
    input_type=RunRefund,
    data_type=RefundData,
    start=lambda request: RefundData(order_id=request.order_id, reason=request.reason),
    steps={"LOOKUP": steps.lookup, "ASSESS": steps.assess, "CHECK": steps.check, "ISSUE": steps.issue},
    approvals={"WAIT_APPROVAL": steps.approval_of_refund},
    tools=frozenset({"get_order", "check_refund_policy", "issue_refund"}),
    llm_tasks=(PROPOSE,),
)
