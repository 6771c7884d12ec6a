"""`make demo`: the expense report agent end to end on the embedded defaults (SQLite, offline model).

Starts restate-server, the tool service and the agent service on free ports under `var/demo/`,
registers the agent service, seeds sample expenses (rendered receipts) through the tool service's
REST API, submits each through the Restate ingress, approves one and rejects one through the
signed webhook, prints every task's timeline, one task's Restate journal (`restate invocations
describe`) and the ledger, then the generic agent on one task, and stops everything it started,
also on Ctrl-C or failure.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from typing import Any

import httpx

from deploy.local import ROOT, Stack, StackError, running_stack, wait_until
from tools.domains.expense.seed import seed_expenses

DEMO_DIR = ROOT / "var/demo"
END = {"COMPLETE", "FAILED"}
# What the demo's human does with each report that waits for approval.
DECISIONS = {"hotel-stay": "approve", "conference-flight": "reject"}


def say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def timeline(view: dict[str, Any]) -> str:
    rows = []
    for entry in view["history"]:
        arrow = f"{entry['from_state'] or '':>13} -> {entry['to_state']:<13}"
        note = f"  {entry['note']}" if entry.get("note") else ""
        rows.append(f"    {entry['at']}  {arrow}{note}")
    return "\n".join(rows)


def outcome(view: dict[str, Any]) -> str:
    if view["error"]:
        error = view["error"]
        return f"{view['state']} at {error['state']} ({error['code']}): {error['message']}"
    return f"{view['state']}: {view['result']}"


def decide_by_webhook(stack: Stack, agent: str, task_id: str, decision: str) -> None:
    seen: dict[str, Any] = {}

    def requested_or_ended() -> bool:
        seen.update(stack.status(agent, task_id))
        return seen["state"] in END or bool((seen["pending_approval"] or {}).get("approval_ticket_id"))

    wait_until(requested_or_ended, timeout=60, what=f"{task_id} to ask for approval")
    view = seen
    pending = view["pending_approval"]
    if pending is None:
        say(f"  {task_id} did not wait for approval: {outcome(view)}")
        return
    body = {
        "agent": agent,
        "task_id": task_id,
        "decision": decision,
        "approver": pending["approvers"][0],
        "comment": f"{decision.replace('approve', 'approved').replace('reject', 'rejected')} in the demo",
        "approval_hash": pending["approval_hash"],
    }
    answer = stack.signed_webhook(body)
    say(f"  {task_id}: waiting for {pending['approvers']} -> {decision} by {pending['approvers'][0]}")
    say(f"    signed POST /webhooks/approval answered {answer.status_code} {answer.json().get('status', '')}")


def expense_demo(stack: Stack) -> tuple[bool, str | None]:
    say("Seeding sample expenses (receipts rendered with Pillow) through POST /expenses:")
    with httpx.Client(base_url=stack.tools_url, timeout=60, headers=stack.expenses_auth) as client:
        expenses = seed_expenses(client)
    tasks: dict[str, str] = {}
    invocations: dict[str, str] = {}
    for expense in expenses:
        say(f"  {expense.expense_id}  {expense.label:<18} {expense.amount:>8} at {expense.merchant}")
        task_id = f"report-{expense.expense_id}"
        tasks[expense.label] = task_id
        invocations[expense.label] = stack.send(
            "ExpenseReport", task_id, "run", {"expense_id": expense.expense_id}
        )

    say("\nSubmitted each through the Restate ingress (POST /ExpenseReport/{task}/run/send).")
    say("Human decisions through the signed approval webhook:")
    for label, decision in DECISIONS.items():
        decide_by_webhook(stack, "ExpenseReport", tasks[label], decision)

    say("\nTimelines (each task's history, kept in Restate state):")
    views = {}
    for label, task_id in tasks.items():
        view = stack.wait_for_state("ExpenseReport", task_id, END, timeout=120)
        views[label] = view
        say(f"\n  {label} ({task_id}): {outcome(view)}")
        say(timeline(view))

    journal_label = "hotel-stay"
    inspect(stack, tasks[journal_label], invocations[journal_label])

    say("\nThe ledger (one double-entry posting per approved expense):")
    ledger = stack.tools_get("/ledger").json()["postings"]
    for posting in ledger:
        say(f"  {posting['posting_id']}  {posting['expense_id']}  approved by {posting['approved_by']}")
        for line in posting["lines"]:
            amounts = f"debit {line['debit']:>9}  credit {line['credit']:>9} {line['currency']}"
            say(f"      {line['account']:<40} {amounts}")

    expected = {"small-lunch": "COMPLETE", "hotel-stay": "COMPLETE", "conference-flight": "FAILED"}
    expected["mismatch-taxi"] = "FAILED"
    ok = all(views[label]["state"] == state for label, state in expected.items()) and len(ledger) == 2
    return ok, tasks.get("hotel-stay")


def inspect(stack: Stack, task_id: str, invocation_id: str) -> None:
    """One task, inspected the three ways the README describes."""
    say(f"\n1. The operator CLI: agentctl timeline ExpenseReport {task_id}")
    env = {**stack.service_env(), "APPROVALS_URL": stack.approvals_url}
    timeline_run = subprocess.run(
        [sys.executable, "-m", "app.cli.agentctl", "timeline", "ExpenseReport", task_id],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    say(timeline_run.stdout.rstrip() or timeline_run.stderr.rstrip())
    say(f"\n2. Restate's journal: restate invocations describe {invocation_id}")
    described = stack.cli("invocations", "describe", invocation_id)
    say(described.stdout.rstrip() or described.stderr.rstrip())
    query = f"select index, entry_type, name from sys_journal where id = '{invocation_id}' order by index"
    say(f'\n3. Restate\'s SQL: restate sql "{query}"')
    sql = stack.cli("sql", query)
    say(sql.stdout.rstrip() or sql.stderr.rstrip())


def agent_task_demo(stack: Stack) -> bool:
    task_id = f"demo-{uuid.uuid4().hex[:8]}"
    task = {
        "user_id": "u-1",
        "task": "Open a ticket: the office VPN is broken, and notify me when it is filed",
    }
    say(f"\nThe generic agent: AgentTask/{task_id} {task}")
    stack.send("AgentTask", task_id, "run", task)
    decide_by_webhook(stack, "AgentTask", task_id, "approve")
    view = stack.wait_for_state("AgentTask", task_id, END, timeout=120)
    say(f"  {outcome(view)}")
    say(timeline(view))
    return bool(view["state"] == "COMPLETE")


def refund_demo(stack: Stack) -> bool:
    """The third agent, written only against the public API: the ASSESS <-> CHECK loop at work."""
    task_id = f"refund-{uuid.uuid4().hex[:8]}"
    request = {"order_id": "ORD-1002", "reason": "The desk wobbles; I would like my money back."}
    say(f"\nRefundDesk/{task_id} {request} (a standing desk bought 45 days ago: half refunds only)")
    stack.send("RefundDesk", task_id, "run", request)
    decide_by_webhook(stack, "RefundDesk", task_id, "approve")
    view = stack.wait_for_state("RefundDesk", task_id, {"COMPLETE", "DECLINED", "FAILED"}, timeout=120)
    say(f"  {outcome(view)}")
    say(timeline(view))
    return bool(view["state"] == "COMPLETE" and view["result"]["amount"] == "200.00")


def main() -> int:
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    say("Starting restate-server, the tool service and the agent service (SQLite, offline model)...")
    try:
        with running_stack(DEMO_DIR, f"sqlite:///{DEMO_DIR / 'agents.db'}") as stack:
            say(f"  restate ingress {stack.ingress_url}, admin {stack.admin_url}")
            say(f"  agent service {stack.app_url} (registered), approvals {stack.approvals_url}")
            say(f"  tool service {stack.tools_url}; logs in {DEMO_DIR / 'logs'}\n")
            expenses_ok, _ = expense_demo(stack)
            agent_ok = agent_task_demo(stack)
            agent_ok = refund_demo(stack) and agent_ok
    except StackError as exc:
        say(f"The stack did not start: {exc}")
        return 1
    say("\nStopped everything the demo started.")
    if not (expenses_ok and agent_ok):
        say("Some task did not end as expected: see the timelines above.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
