"""Deterministic replay: each case runs once normally and once in always-replay mode, and the two
must agree on the final task view (timestamps aside), the event log and the side effects.

`CASES` holds 110 cases over both agents (task shapes, users, approve and reject, read-only and
failing plans; expenses small and large, every category, matching and mismatching receipts).
`make test` runs every tenth case; `RELIABILITY_FULL=1` (used by `make reliability`) runs all.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import pytest

from app.audit.event_log import store_for
from deploy.local import Stack
from tests.integration.flows import END, idempotency_status, task_salt, wait_parked
from tools.domains.expense.seed import SAMPLES, SampleExpense

RELIABILITY = {
    "check": (
        "Deterministic replay: final view, event log and side effects equal between a normal and an"
        " always-replay run (both agents; approve, reject, read-only, failing plans, OCR "
        "mismatches)"
    ),
    "injected": (
        "always-replay mode: the server suspends the invocation after every await and replays the journal"
    ),
}

FULL = os.environ.get("RELIABILITY_FULL") == "1"
# Values that are times or trace ids (they differ between any two runs), dropped before comparing.
TIME_KEYS = {
    "started",
    "ended",
    "trace",
    "attempt_span",
    "at",
    "decided_at",
    "requested_at",
    "deadline",
    "reminder_at",
    "created_at",
    "submitted_at",
    "gate_wait_seconds",
}


@dataclass(frozen=True)
class ReplayCase:
    id: str
    agent: str
    body: dict[str, Any]
    decision: str  # used only if the task waits for approval
    expense: SampleExpense | None = None


def _agent_cases() -> list[ReplayCase]:
    shapes = [
        "open a ticket: {thing} is broken",
        "notify me about {thing}",
        "open a ticket and notify me: {thing} is broken",
        "note that {thing} needs attention",
        "summarize my history about {thing}",
        "open a ticket, remember it and notify me: {thing}",
        "ponder {thing}",
        "URGENT outage: open a ticket for {thing}",
        "tell me when {thing} is fixed and open a ticket",
    ]
    things = ["the printer", "the VPN", "the badge reader", "the coffee machine", "the projector"]
    cases: list[ReplayCase] = []
    for s, shape in enumerate(shapes):
        # Notes change a user's history (with the time they were written), which later tickets
        # quote: tasks that take notes get users of their own (unknown, so the note is refused).
        users = ["u-3", "u-4"] if "note" in shape or "remember" in shape else ["u-1", "u-2"]
        for t, thing in enumerate(things):
            for u, user in enumerate(users):
                index = len(cases)
                cases.append(
                    ReplayCase(
                        id=f"agent-{s}-{t}-{u}",
                        agent="AgentTask",
                        body={"user_id": user, "task": shape.format(thing=thing)},
                        decision="approve" if index % 3 else "reject",
                    )
                )
    return cases


def _expense_cases() -> list[ReplayCase]:
    variants: list[SampleExpense] = []
    for sample in SAMPLES:
        variants.append(sample)
        # The same expense a week later, and with one item more (another amount, maybe another route).
        variants.append(
            dataclasses.replace(sample, label=f"{sample.label}-later", date=sample.date + dt.timedelta(7))
        )
        extra = (*sample.items, ("Service fee", Decimal("7.25")))
        claimed = (
            sample.claimed_amount + Decimal("7.25") if sample.claimed_amount == sample.receipt_total else None
        )
        more = dataclasses.replace(sample, label=f"{sample.label}-more", items=extra)
        variants.append(
            dataclasses.replace(more, claimed_amount=claimed or more.claimed_amount + Decimal("7.25"))
        )
    cases: list[ReplayCase] = []
    for index, expense in enumerate(variants):
        for decision in ("approve", "reject") if index % 2 == 0 else ("approve",):
            cases.append(
                ReplayCase(
                    id=f"expense-{expense.label}-{decision}",
                    agent="ExpenseReport",
                    body={},
                    decision=decision,
                    expense=expense,
                )
            )
    return cases


CASES: list[ReplayCase] = _agent_cases() + _expense_cases()
SELECTED = CASES if FULL else CASES[::10]


def submit_expense(stack: Stack, case: ReplayCase) -> str:
    """The same submission (and Idempotency-Key) in both stacks gives the same expense id."""
    expense = case.expense
    assert expense is not None
    response = httpx.post(
        f"{stack.tools_url}/expenses",
        data={
            "employee_id": expense.employee_id,
            "amount": f"{expense.claimed_amount:.2f}",
            "currency": expense.currency,
            "date": expense.date.isoformat(),
            "merchant": expense.merchant,
            "description": expense.description,
        },
        files={"receipt": ("receipt.png", expense.receipt(), "image/png")},
        headers={"Idempotency-Key": f"replay-{case.id}", **stack.expenses_auth},
        timeout=60,
    )
    assert response.status_code in (200, 201), response.text
    expense_id: str = response.json()["expense_id"]
    return expense_id


def without_times(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_times(v) for k, v in value.items() if k not in TIME_KEYS}
    if isinstance(value, list):
        return [without_times(item) for item in value]
    return value


# Rows a tool creates get ids derived from the call's Idempotency-Key, which carries the task's
# random salt: the same in every replay of one run, different between the two stacks' runs.
KEY_DERIVED_ID = re.compile(r"\b(NOTE|JE|TCK|APR|NTF)-[0-9a-f]{12}\b")


def without_salt(value: Any, salt: str) -> Any:
    """The value with the task's salt and the ids derived from its keys replaced by placeholders."""
    text = KEY_DERIVED_ID.sub(r"\1-<derived>", json.dumps(value).replace(salt, "<salt>"))
    return json.loads(text)


def run_case(stack: Stack, case: ReplayCase) -> dict[str, Any]:
    """Run the case to its end; what it ended as, what it logged and what it did to the world."""
    task_id = f"replay-{case.id}"
    body = case.body
    if case.agent == "ExpenseReport":
        body = {"expense_id": submit_expense(stack, case)}
    stack.send(case.agent, task_id, "run", body)
    view = stack.wait_for_state(case.agent, task_id, {"WAIT_APPROVAL", *END}, timeout=120)
    if view["state"] == "WAIT_APPROVAL":
        pending = wait_parked(stack, task_id, timeout=60, agent=case.agent)["pending_approval"]
        approver = pending["approvers"][0]
        answer = stack.decide(case.agent, task_id, case.decision, approver=approver, comment="replay corpus")
        assert answer.status_code == 200, answer.text
    view = stack.wait_for_state(case.agent, task_id, END, timeout=120)
    events = [
        without_times(
            {"seq": e.seq, "kind": e.kind, "from": e.from_state, "to": e.to_state, "payload": e.payload}
        )
        for e in store_for(stack.database_url).events(case.agent, task_id)
    ]
    effects: dict[str, Any] = {}
    for call in view["data"].get("executed", []):
        effects[call["idempotency_key"]] = idempotency_status(stack, call["idempotency_key"])
    if case.agent == "ExpenseReport":
        ledger = stack.tools_get("/ledger", {"expense_id": body["expense_id"]})
        effects["postings"] = [p["posting_id"] for p in ledger.json()["postings"]]
    salt = task_salt(stack, case.agent, task_id)
    outcome = {"view": without_times(view), "events": events, "effects": effects}
    return {name: without_salt(part, salt) for name, part in outcome.items()}


@pytest.mark.parametrize("case", SELECTED, ids=[case.id for case in SELECTED])
def test_always_replay_agrees_with_a_normal_run(case: ReplayCase, stack: Stack, replay_stack: Stack) -> None:
    normal = run_case(stack, case)
    replayed = run_case(replay_stack, case)
    assert replayed["view"] == normal["view"]
    assert replayed["events"] == normal["events"]
    assert replayed["effects"] == normal["effects"]
    # Every side effect happened exactly once and is recorded as done under its key.
    assert set(normal["effects"].get("postings", [])) == (
        {normal["view"]["result"]["posting_id"]}
        if normal["view"]["state"] == "COMPLETE" and case.expense
        else set()
    )
    assert all(status == "done" for key, status in normal["effects"].items() if key != "postings")


def test_the_corpus_has_over_a_hundred_cases_over_both_agents() -> None:
    assert len(CASES) >= 100
    assert {case.agent for case in CASES} == {"AgentTask", "ExpenseReport"}
    assert len({case.id for case in CASES}) == len(CASES)
