"""The attack corpus (docs/security.md): each attack of the threat model against the real stack,
as an outside client would try it, shows the attack refused and nothing changed: the task still
waits and its real approver can still approve it; nothing is posted; no task fails."""

from __future__ import annotations

import json
import threading
import time
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from app.gates import proof
from app.gates.models import DecideInput
from app.settings import DEV_OPERATOR_TOKEN, DEV_TOOLS_API_TOKEN, DEV_WEBHOOK_SECRET
from deploy.local import Stack, wait_until
from tests.integration.flows import END, new_task_id, start, wait_parked
from tests.integration.test_expense_report import postings, run_report, seeded, wait_waiting
from tools.service.settings import DEV_EXPENSES_API_TOKEN

RELIABILITY = {
    "check": "Attack corpus: forged, replayed and unauthenticated decisions, internal handlers, open "
    "tool routes, squatted keys and unsigned endpoint calls are refused and change nothing",
    "injected": "an attacker on the network with no credential, a stolen proof or another approver's",
}

GATE_HANDLERS = (
    "open_gate",
    "attach_ticket",
    "decide",
    "take_outcome",
    "rearm",
    "expire",
    "escalate",
    "close_gate",
)


def ingress(stack: Stack, path: str, body: Any = None, **headers: str) -> httpx.Response:
    if body is None:
        return httpx.post(f"{stack.ingress_url}{path}", headers=headers, timeout=30)
    return httpx.post(f"{stack.ingress_url}{path}", json=body, headers=headers, timeout=30)


def parked_task(stack: Stack, label: str) -> tuple[str, dict[str, Any]]:
    task_id = new_task_id(label)
    start(stack, task_id, f"open a ticket: {label} is broken")
    return task_id, wait_parked(stack, task_id)["pending_approval"]


def still_waits_then_approves(stack: Stack, task_id: str, pending: dict[str, Any]) -> None:
    """Nothing changed, and the real approver can still decide, once."""
    view = stack.status("AgentTask", task_id)
    assert view["state"] == "WAIT_APPROVAL" and view["approvals"] == []
    assert view["pending_approval"]["approval_hash"] == pending["approval_hash"]
    assert view["pending_approval"]["approvers"] == pending["approvers"]
    assert view["data"]["executed"] == []
    assert stack.decide("AgentTask", task_id, "approve").status_code == 200
    done = stack.wait_for_state("AgentTask", task_id, END)
    assert done["state"] == "COMPLETE" and done["approvals"][0]["approver"] == "ops-lead"


def test_the_arbiters_handlers_are_unreachable_from_the_ingress(stack: Stack) -> None:
    task_id, pending = parked_task(stack, "gate-handlers")
    key = quote(f"AgentTask/{task_id}", safe="")
    for handler in GATE_HANDLERS:
        refused = ingress(stack, f"/ApprovalGate/{key}/{handler}", {"approver": "mallory"})
        assert refused.status_code in (400, 403, 404), (handler, refused.status_code, refused.text)
    view = ingress(stack, f"/ApprovalGate/{key}/view")
    assert view.status_code in (400, 403, 404) and "sign_" not in view.text
    # Nor can anyone have a task's invocation purged (app/runtime/refusals.py): only a refused `run`
    # reaches the forgetter.
    [run] = stack.sql(
        "select id from sys_invocation where target_service_name = 'AgentTask' "
        f"and target_service_key = '{task_id}' and target_handler_name = 'run'"
    )
    refusal = {"invocation_id": run["id"], "agent": "AgentTask", "task_id": task_id, "status_code": 400}
    forget = ingress(stack, "/RefusedStarts/forget", {**refusal, "reason": "mallory"})
    assert forget.status_code in (400, 403, 404), (forget.status_code, forget.text)
    # Escalating to mallory through the ingress was the first reproduction: mallory still may not.
    mallory = stack.decide("AgentTask", task_id, "approve", approver="mallory")
    assert mallory.status_code == 403
    still_waits_then_approves(stack, task_id, pending)


def test_no_public_answer_carries_an_awakeable_id(stack: Stack) -> None:
    task_id, pending = parked_task(stack, "id-leak")
    answers = [
        stack.call("AgentTask", task_id, "status", timeout=30).text,
        httpx.get(f"{stack.approvals_url}/approvals", headers=stack.operator_auth, timeout=30).text,
    ]
    # Awakeable ids are "sign_1..." (restate-notes §1.5).
    assert all("sign_1" not in answer and "awakeable_id" not in answer for answer in answers)
    still_waits_then_approves(stack, task_id, pending)


def test_decisions_straight_to_the_ingress_need_the_surfaces_proof(stack: Stack) -> None:
    task_id, pending = parked_task(stack, "unproven")
    other_id, other_pending = parked_task(stack, "other-task")
    decision = DecideInput(decision="approve", approver="ops-lead", approval_hash=pending["approval_hash"])
    body = decision.model_dump()
    right_key = proof.proof_key(DEV_WEBHOOK_SECRET)
    attempts = {
        "no proof": body,
        "garbage proof": {**body, "proof": "v1.9999999999.abcd.00"},
        "proof under a guessed key": {
            **body,
            "proof": proof.mint(proof.proof_key("guessed"), "AgentTask", task_id, decision),
        },
        "proof for another task": {**body, "proof": proof.mint(right_key, "AgentTask", other_id, decision)},
        "proof for another approver": {
            **body,
            "proof": proof.mint(
                right_key, "AgentTask", task_id, decision.model_copy(update={"approver": "ops-manager"})
            ),
        },
        "proof for a rejection, sent with an approval": {
            **body,
            "proof": proof.mint(
                right_key, "AgentTask", task_id, decision.model_copy(update={"decision": "reject"})
            ),
        },
        "expired proof": {
            **body,
            "proof": proof.mint(right_key, "AgentTask", task_id, decision, now=time.time() - 301),
        },
    }
    for what, attempt in attempts.items():
        answer = stack.call("AgentTask", task_id, "decide", attempt, timeout=30)
        assert answer.status_code in (400, 401), (what, answer.status_code, answer.text)
    still_waits_then_approves(stack, task_id, pending)
    still_waits_then_approves(stack, other_id, other_pending)


def test_signed_webhook_attacks_are_refused(stack: Stack) -> None:
    task_id, pending = parked_task(stack, "webhook-attacks")
    good = {
        "agent": "AgentTask",
        "task_id": task_id,
        "decision": "approve",
        "approver": "ops-lead",
        "comment": None,
        "approval_hash": pending["approval_hash"],
    }
    raw = json.dumps(good).encode()
    url = f"{stack.approvals_url}/webhooks/approval"
    from app.approvals.signature import HEADER, TIMESTAMP_HEADER, sign

    now = int(time.time())
    forged = {
        "old scheme (body only, no timestamp)": {HEADER: "sha256=" + "0" * 64},
        "signature without timestamp": {HEADER: sign(DEV_WEBHOOK_SECRET, now, raw)},
        "timestamp moved after signing": {
            TIMESTAMP_HEADER: str(now + 1),
            HEADER: sign(DEV_WEBHOOK_SECRET, now, raw),
        },
        "replayed after the window": {
            TIMESTAMP_HEADER: str(now - 400),
            HEADER: sign(DEV_WEBHOOK_SECRET, now - 400, raw),
        },
        "signed with the operator token": {
            TIMESTAMP_HEADER: str(now),
            HEADER: sign(DEV_OPERATOR_TOKEN, now, raw),
        },
    }
    for what, headers in forged.items():
        answer = httpx.post(url, content=raw, headers=headers, timeout=30)
        assert answer.status_code == 401, (what, answer.text)
    still_waits_then_approves(stack, task_id, pending)


def test_the_inbox_takes_the_approver_from_the_credential(stack: Stack) -> None:
    task_id, pending = parked_task(stack, "inbox-identity")
    url = f"{stack.approvals_url}/inbox/decide"
    body = {
        "agent": "AgentTask",
        "task_id": task_id,
        "decision": "approve",
        "approval_hash": pending["approval_hash"],
    }
    # The operator token no longer decides (it names nobody), nor does any token but an approver's.
    for token in (DEV_OPERATOR_TOKEN, DEV_TOOLS_API_TOKEN, "apv_made-up"):
        assert (
            httpx.post(url, json=body, headers={"authorization": f"Bearer {token}"}, timeout=30).status_code
            == 401
        )
    # ops-manager's own credential, naming ops-lead in the body: the body may not say who decides.
    manager = {"authorization": f"Bearer {stack.approver_credential('ops-manager')}"}
    impersonating = httpx.post(url, json={**body, "approver": "ops-lead"}, headers=manager, timeout=30)
    assert impersonating.status_code == 422
    # ...and as themselves they are not an approver of this gate.
    assert httpx.post(url, json=body, headers=manager, timeout=30).status_code == 403
    # A revoked credential is refused.
    from app.approvals.identity import credentials_for

    revoked = stack.approver_credential("ops-lead")
    credentials_for(stack.database_url).revoke("ops-lead")
    answer = httpx.post(url, json=body, headers={"authorization": f"Bearer {revoked}"}, timeout=30)
    assert answer.status_code == 401
    view = stack.status("AgentTask", task_id)
    assert view["state"] == "WAIT_APPROVAL" and view["approvals"] == []
    # The real approver's fresh credential decides, and the record names them.
    mine = {"authorization": f"Bearer {stack.approver_credential('ops-lead')}"}
    decided = httpx.post(url, json={**body, "comment": "from the inbox"}, headers=mine, timeout=30)
    assert decided.status_code == 200, decided.text
    done = stack.wait_for_state("AgentTask", task_id, END)
    assert done["state"] == "COMPLETE" and done["approvals"][0]["approver"] == "ops-lead"


def test_the_tool_service_trusts_only_credentialed_callers(stack: Stack) -> None:
    url = stack.tools_url
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    routes = [
        ("POST", "/tools/record_expense"),
        ("POST", "/tools/create_ticket"),
        ("GET", "/tools"),
        ("GET", "/idempotency/anything"),
        ("GET", "/tickets"),
        ("GET", "/notifications"),
        ("GET", "/approval-tickets"),
        ("GET", "/receipts/EXP-000000000000"),
        ("POST", "/expenses"),
        ("GET", "/expenses"),
        ("GET", "/ledger"),
        ("GET", "/ledger/balance"),
    ]
    for method, path in routes:
        for headers in ({}, {"authorization": "Bearer guess"}):
            answer = httpx.request(method, f"{url}{path}", headers=headers, json={}, timeout=10)
            assert answer.status_code == 401, (method, path, answer.text)
    # Least privilege: the portal's token does not open the tools, nor the tools' the ledger.
    portal = {"authorization": f"Bearer {DEV_EXPENSES_API_TOKEN}"}
    assert httpx.get(f"{url}/tools", headers=portal, timeout=10).status_code == 401
    assert httpx.get(f"{url}/ledger", headers=stack.tools_auth, timeout=10).status_code == 401
    # A receipt: the portal reads it on its surface, the agent service (the console) on its own.
    expense_id = seeded(stack)["mismatch-taxi"]
    for path, allowed, refused in (
        (f"/expenses/{expense_id}/receipt", portal, stack.tools_auth),
        (f"/receipts/{expense_id}", stack.tools_auth, portal),
    ):
        read = httpx.get(f"{url}{path}", headers=allowed, timeout=10)
        assert read.status_code == 200 and read.headers["content-type"].startswith("image/"), path
        assert httpx.get(f"{url}{path}", headers=refused, timeout=10).status_code == 401, path


def test_a_credentialed_caller_cannot_post_an_expense_nobody_approved(stack: Stack) -> None:
    expense_id = seeded(stack)["mismatch-taxi"]  # claims 94.20; the receipt says 64.20
    args = {
        "expense_id": expense_id,
        "category": "travel",
        "amount": "94.20",
        "currency": "USD",
        "approved_by": "ceo",
        "approval": "human",
    }
    headers = {**stack.tools_auth, "Idempotency-Key": f"attack-{expense_id}"}
    answer = httpx.post(f"{stack.tools_url}/tools/record_expense", json=args, headers=headers, timeout=30)
    assert answer.status_code in (403, 422), answer.text
    # An agent's planner (AgentTask) may not even call it, whatever the evidence.
    as_planner = {**headers, "X-Agent": "AgentTask", "Idempotency-Key": f"planner-{expense_id}"}
    refused = httpx.post(f"{stack.tools_url}/tools/record_expense", json=args, headers=as_planner, timeout=30)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "tool_not_granted"
    catalog = httpx.get(
        f"{stack.tools_url}/tools", headers={**stack.tools_auth, "X-Agent": "AgentTask"}, timeout=10
    )
    assert "record_expense" not in {tool["name"] for tool in catalog.json()["tools"]}
    assert postings(stack, expense_id) == []


def test_squatting_a_tasks_keys_before_it_starts_changes_nothing(stack: Stack) -> None:
    task_id = new_task_id("squat")
    # With the tool service's credential (an insider, a leaked token), claim every key the task
    # would have used before keys had an unguessable part.
    for state, tool, args in (
        ("FETCH_CONTEXT.1:0", "lookup_user_history", {"user_id": "u-2"}),
        ("EXECUTE.1:0", "lookup_user_history", {"user_id": "u-2"}),
    ):
        headers = {**stack.tools_auth, "Idempotency-Key": f"AgentTask:{task_id}:{state}"}
        httpx.post(f"{stack.tools_url}/tools/{tool}", json=args, headers=headers, timeout=30)
    # A portal's client-chosen key lives in its own namespace, and cannot pose as one.
    colliding = {**stack.tools_auth, "Idempotency-Key": f"expenses:AgentTask:{task_id}"}
    refused = httpx.post(
        f"{stack.tools_url}/tools/lookup_user_history", json={"user_id": "u-1"}, headers=colliding, timeout=30
    )
    assert refused.status_code == 400
    start(stack, task_id, "open a ticket: the squatted printer is broken")
    wait_parked(stack, task_id)
    assert stack.decide("AgentTask", task_id, "approve").status_code == 200
    assert stack.wait_for_state("AgentTask", task_id, END)["state"] == "COMPLETE"


def test_the_agent_endpoint_accepts_only_requests_restate_signed(stack: Stack) -> None:
    for path in ("/discover", "/invoke/AgentTask/status", "/invoke/ApprovalGate/decide"):
        answer = httpx.post(f"{stack.app_url}{path}", content=b"", timeout=10)
        assert answer.status_code == 401, (path, answer.status_code, answer.text)
    assert httpx.get(f"{stack.app_url}/discover", timeout=10).status_code == 401


def test_status_shows_the_gate_state_only_with_its_pending_approval(stack: Stack) -> None:
    """12 tasks at once, polled while they enter their gates: WAIT_APPROVAL never shows without
    the pending approval (hash, approvers, deadline, ticket) in the same state write."""
    task_ids = [new_task_id("open-first") for _ in range(12)]
    seen: list[dict[str, Any]] = []
    stop = threading.Event()

    def poll(task_id: str) -> None:
        while not stop.is_set():
            answer = stack.call("AgentTask", task_id, "status", timeout=30)
            if answer.status_code == 200 and answer.json()["state"] == "WAIT_APPROVAL":
                seen.append(answer.json())
                return

    pollers = [threading.Thread(target=poll, args=(task_id,)) for task_id in task_ids]
    for poller in pollers:
        poller.start()
    for task_id in task_ids:
        start(stack, task_id, "open a ticket: one of twelve printers is broken")
    try:
        wait_until(lambda: len(seen) == len(task_ids), timeout=90, what="every task to wait")
    finally:
        stop.set()
        for poller in pollers:
            poller.join(timeout=30)
    for view in seen:
        pending = view["pending_approval"]
        assert pending is not None, view
        assert pending["approval_hash"] and pending["approvers"] and pending["deadline"]
        assert pending["approval_ticket_id"], view
    # A decision right away is taken, not refused as "not waiting".
    for task_id in task_ids:
        assert stack.decide("AgentTask", task_id, "approve").status_code == 200
    for task_id in task_ids:
        assert stack.wait_for_state("AgentTask", task_id, END)["state"] == "COMPLETE"


@pytest.mark.parametrize("task_id", ["bell\x07-task", "nul\x00-task", "x" * 300])
def test_task_ids_that_cannot_work_are_refused_at_the_start(stack: Stack, task_id: str) -> None:
    answer = stack.call("AgentTask", quote(task_id, safe=""), "run", {"user_id": "u-1", "task": "hello"})
    assert answer.status_code == 400 and "invalid task id" in answer.text
    assert stack.call("AgentTask", quote(task_id, safe=""), "status", timeout=30).status_code == 404


def test_a_non_ascii_task_id_works_end_to_end(stack: Stack) -> None:
    task_id = f"tâche-été-{new_task_id()}"
    quoted = quote(task_id, safe="")
    stack.send(
        "AgentTask", quoted, "run", {"user_id": "u-1", "task": "open a ticket: l'imprimante est cassée"}
    )
    pending = wait_parked(stack, quoted)["pending_approval"]
    assert (
        stack.decide("AgentTask", task_id, "approve", approval_hash=pending["approval_hash"]).status_code
        == 200
    )
    assert stack.wait_for_state("AgentTask", quoted, END)["state"] == "COMPLETE"


def test_the_approvals_list_shows_the_ticket_status_shows(stack: Stack) -> None:
    task_id, pending = parked_task(stack, "ticket-id")
    listed = httpx.get(f"{stack.approvals_url}/approvals", headers=stack.operator_auth, timeout=30)
    [row] = [item for item in listed.json()["approvals"] if item["task_id"] == task_id]
    assert row["approval_ticket_id"] == pending["approval_ticket_id"] is not None
    still_waits_then_approves(stack, task_id, pending)


def test_the_routed_approver_alone_decides_an_expense(stack: Stack) -> None:
    """The mallory reproduction: a hotel stay routed to travel-manager."""
    expense_id = seeded(stack)["hotel-stay"]
    task_id = run_report(stack, expense_id)
    pending = wait_waiting(stack, task_id)["pending_approval"]
    assert pending["approvers"] == ["travel-manager"]
    key = quote(f"ExpenseReport/{task_id}", safe="")
    assert ingress(stack, f"/ApprovalGate/{key}/escalate", {"approver": "mallory"}).status_code in (
        400,
        403,
        404,
    )
    for approver in ("mallory", "ops-lead"):
        assert stack.decide("ExpenseReport", task_id, "approve", approver=approver).status_code == 403
    inbox = {"authorization": f"Bearer {stack.approver_credential('ops-lead')}"}
    body = {
        "agent": "ExpenseReport",
        "task_id": task_id,
        "decision": "approve",
        "approval_hash": pending["approval_hash"],
    }
    assert (
        httpx.post(f"{stack.approvals_url}/inbox/decide", json=body, headers=inbox, timeout=30).status_code
        == 403
    )
    assert postings(stack, expense_id) == []
    assert stack.status("ExpenseReport", task_id)["state"] == "WAIT_APPROVAL"
    assert stack.decide("ExpenseReport", task_id, "approve", approver="travel-manager").status_code == 200
    done = stack.wait_for_state("ExpenseReport", task_id, END, timeout=90)
    assert done["state"] == "COMPLETE", done
    [posting] = postings(stack, expense_id)
    assert posting["approved_by"] == "travel-manager"


def test_no_secret_reaches_the_logs_the_journal_or_the_event_log(stack: Stack) -> None:
    task_id, pending = parked_task(stack, "secrets")
    credential = stack.approver_credential("ops-lead")
    body = {
        "agent": "AgentTask",
        "task_id": task_id,
        "decision": "approve",
        "approval_hash": pending["approval_hash"],
    }
    decided = httpx.post(
        f"{stack.approvals_url}/inbox/decide",
        json=body,
        headers={"authorization": f"Bearer {credential}"},
        timeout=30,
    )
    assert decided.status_code == 200
    assert stack.wait_for_state("AgentTask", task_id, END)["state"] == "COMPLETE"
    secrets = [
        DEV_WEBHOOK_SECRET,
        DEV_OPERATOR_TOKEN,
        DEV_TOOLS_API_TOKEN,
        DEV_EXPENSES_API_TOKEN,
        credential,
    ]
    secrets.append(proof.proof_key(DEV_WEBHOOK_SECRET).hex())
    logs = "".join(path.read_text(errors="replace") for path in (stack.workdir / "logs").glob("*.log"))
    journal = json.dumps(
        stack.sql(
            "select j.entry_json from sys_journal j join sys_invocation i on j.id = i.id "
            f"where i.target_service_key = '{task_id}'"
        )
    )
    state = json.dumps(stack.sql(f"select value_utf8 from state where service_key = '{task_id}'"))
    from app.audit.event_log import store_for

    events = json.dumps([e.model_dump() for e in store_for(stack.database_url).events("AgentTask", task_id)])
    for secret in secrets:
        for where, text in (("logs", logs), ("journal", journal), ("state", state), ("events", events)):
            assert secret not in text, f"a secret is in the {where}"
