"""`ExpenseReport`: the article's expense approval agent, declared with the public API (app/agent.py).

FETCH the expense record, VERIFY the receipt with OCR against the claim, CLASSIFY the spend with
the model, ROUTE to the approver the routing policy names, WAIT_APPROVAL (human gate), RECORD one
ledger posting, COMPLETE. Declared outcomes:

* a receipt that cannot be read, or whose total or date disagrees with the claim, fails the report
  at VERIFY (`receipt_unreadable`, `receipt_mismatch`): nothing is classified, routed or posted;
* ROUTE -> RECORD skips the human only under the auto-approval policy: a small amount, a low-risk
  category and a confident classification (thresholds in settings, read once and journaled). The
  model never approves anything: content in the expense can change a category, not the policy;
* a rejected or expired approval fails the report; nothing is posted.
"""

from __future__ import annotations

from decimal import Decimal

from app.agent import Agent, Budget, Gate, Machine
from app.agents.expense_report import steps
from app.agents.expense_report.llm import CLASSIFY
from app.agents.expense_report.models import ExpenseData, RunExpenseReport

MACHINE = Machine.declare(
    "ExpenseReport",
    initial="FETCH",
    transitions={
        "FETCH": ["VERIFY", "FAILED"],
        "VERIFY": ["CLASSIFY", "FAILED"],
        "CLASSIFY": ["ROUTE", "FAILED"],
        "ROUTE": ["WAIT_APPROVAL", "RECORD", "FAILED"],
        "WAIT_APPROVAL": ["RECORD", "FAILED"],
        "RECORD": ["COMPLETE", "FAILED"],
    },
    terminal=["COMPLETE", "FAILED"],
    failure="FAILED",
    gates={"WAIT_APPROVAL": Gate(approve="RECORD", reject="FAILED", timeout="FAILED")},
    budget_gate=True,
    descriptions={
        "FETCH": "tool: expense record",
        "VERIFY": "tool: OCR vs claim",
        "CLASSIFY": "LLM: category, confidence",
        "ROUTE": "tool: approver; auto-approval policy",
        "RECORD": "tool: one ledger posting",
    },
)


AGENT = Agent(
    machine=MACHINE,
    description="The expense approval agent: fetch, verify (OCR), classify, route, approve, record.",
    input_type=RunExpenseReport,
    data_type=ExpenseData,
    start=lambda request: ExpenseData(expense_id=request.expense_id),
    steps={
        "FETCH": steps.fetch,
        "VERIFY": steps.verify,
        "CLASSIFY": steps.classify,
        "ROUTE": steps.route,
        "RECORD": steps.record,
    },
    approvals={"WAIT_APPROVAL": steps.approval_of_expense},
    tools=frozenset({"get_expense", "ocr_receipt", "route_expense", "record_expense"}),
    # Every report's limits (its input may lower them): at a limit it waits at BUDGET for a human.
    budget=Budget(max_tokens=50_000, max_cost_usd=Decimal("0.50"), max_tool_calls=12),
    llm_tasks=(CLASSIFY,),
)
