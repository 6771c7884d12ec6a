"""`make demo`: the whole stack on the embedded defaults (SQLite, offline model), one AgentTask end to end.

Starts restate-server, the tool service and the agent service on free ports under `var/demo/`,
registers the agent service, sends one task through the Restate ingress, waits for its result,
prints the state timeline and Restate's journal of the run (`restate invocations describe`), and
stops everything it started, also on Ctrl-C or failure.
"""

from __future__ import annotations

import shutil
import sys
import time
import uuid
from typing import Any

import httpx

from app.settings import DEV_WEBHOOK_SECRET
from deploy.local import ROOT, Stack, StackError, running_stack

DEMO_DIR = ROOT / "var/demo"
DEMO_TASK = {
    "user_id": "u-1",
    "task": "Open a ticket: the office VPN is broken, and notify me when it is filed",
}


def say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def timeline(view: dict[str, Any]) -> str:
    rows = []
    for entry in view["history"]:
        arrow = f"{entry['from_state'] or '':>13} -> {entry['to_state']:<13}"
        note = f"  {entry['note']}" if entry.get("note") else ""
        rows.append(f"  {entry['at']}  {arrow}{note}")
    return "\n".join(rows)


def run_demo(stack: Stack) -> int:
    task_id = f"demo-{uuid.uuid4().hex[:8]}"
    say(f"Sending AgentTask/{task_id}/run through the Restate ingress ({stack.ingress_url}):")
    say(f"  {DEMO_TASK}")
    invocation_id = stack.send("AgentTask", task_id, "run", DEMO_TASK, idempotency_key=f"demo-{task_id}")
    started = time.monotonic()

    parked = stack.wait_for_state("AgentTask", task_id, {"WAIT_APPROVAL", "COMPLETE", "FAILED"}, timeout=60)
    pending = parked.get("pending_approval")
    if pending:
        say("\nThe plan has side effects, so the task suspended at WAIT_APPROVAL (no worker memory held):")
        say(f"  {pending['summary']}")
        say(f"  approvers {pending['approvers']}, deadline {pending['deadline']}")
        say(f"  approval_hash {pending['approval_hash']}")
        decision = {
            "agent": "AgentTask",
            "task_id": task_id,
            "decision": "approve",
            "approver": pending["approvers"][0],
            "comment": "approved in the demo",
            "approval_hash": pending["approval_hash"],
        }
        answer = stack.signed_webhook(decision, DEV_WEBHOOK_SECRET)
        say(f"Approving through the signed webhook POST {stack.approvals_url}/webhooks/approval:")
        say(f"  {answer.status_code} {answer.json().get('status', answer.text)}")

    result = httpx.get(f"{stack.ingress_url}/restate/attach/{invocation_id}", timeout=120)
    elapsed = time.monotonic() - started
    if result.status_code != 200:
        say(f"The task's invocation failed: {result.status_code} {result.text}")
        return 1
    view = result.json()
    say(f"\nTask {task_id} ended in {view['state']} after {elapsed:.2f}s (model: {view['model']}).")
    for approval in view["approvals"]:
        say(
            f"Approval: {approval['outcome']} by {approval['approver']} at {approval['decided_at']}"
            f" ({approval['comment']!r})"
        )
    say("\nState timeline (from the task's own history in Restate state):")
    say(timeline(view))
    if view["error"]:
        say(f"\nError: {view['error']}")
    else:
        say(f"\nResult: {view['result']}")
    say("\nTool calls (each under its derived Idempotency-Key):")
    for call in view["data"]["executed"]:
        say(f"  [{call['idempotency_key']}]\n    {call['tool']}({call['args']})\n    -> {call['result']}")

    say(f"\nRestate's journal of the run: restate invocations describe {invocation_id}")
    described = stack.cli("invocations", "describe", invocation_id)
    say(described.stdout.rstrip() or described.stderr.rstrip())
    return 0 if view["state"] == "COMPLETE" else 1


def main() -> int:
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    say("Starting restate-server, the tool service and the agent service (SQLite, offline model)...")
    try:
        with running_stack(DEMO_DIR, f"sqlite:///{DEMO_DIR / 'agents.db'}", extra_env={}) as stack:
            say(f"  restate ingress {stack.ingress_url}, admin {stack.admin_url}")
            say(f"  agent service {stack.app_url} (registered), tool service {stack.tools_url}")
            say(f"  logs in {DEMO_DIR / 'logs'}\n")
            code = run_demo(stack)
    except StackError as exc:
        say(f"The stack did not start: {exc}")
        return 1
    say("\nStopped everything the demo started.")
    return code


if __name__ == "__main__":
    sys.exit(main())
