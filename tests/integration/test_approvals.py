"""Approval gates against the real server: approve, reject, timeout with one reminder, the signed
webhook's refusals, the inbox API, and tasks parked at a gate surviving crashes of everything."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from app.audit.event_log import store_for
from app.settings import DEV_OPERATOR_TOKEN, DEV_WEBHOOK_SECRET
from deploy.local import Stack, running_stack, wait_until
from tests.fakes.mailbox import Mailbox, running_mailbox
from tests.figures import record_figure
from tests.integration.conftest import sqlite_url
from tests.integration.flows import END, new_task_id, start, wait_parked

RELIABILITY = {
    "check": (
        "Approval gates: approve, reject, timeout with one reminder, webhook refusals change nothing;"
        " the request and reminder mailed to the approver before the deadline, each message once"
    ),
    "injected": (
        "forged, missing and mismatched signatures; malformed, stale and unauthorised decisions; an"
        " expired deadline; the dispatcher killed right after a send, before marking it"
    ),
}

OPERATOR = {"authorization": f"Bearer {DEV_OPERATOR_TOKEN}"}


def notifications(stack: Stack, **filters: str) -> list[dict[str, Any]]:
    response = stack.tools_get("/notifications", filters)
    response.raise_for_status()
    rows: list[dict[str, Any]] = response.json()["notifications"]
    return rows


def approval_ticket(stack: Stack, ticket_id: str) -> dict[str, Any]:
    response = stack.tools_get(f"/approval-tickets/{ticket_id}")
    response.raise_for_status()
    ticket: dict[str, Any] = response.json()
    return ticket


def pending_approvals(stack: Stack) -> list[dict[str, Any]]:
    response = httpx.get(f"{stack.approvals_url}/approvals", headers=OPERATOR, timeout=30)
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()["approvals"]
    return rows


def webhook_body(task_id: str, approval_hash: str, **overrides: Any) -> dict[str, Any]:
    body = {
        "agent": "AgentTask",
        "task_id": task_id,
        "decision": "approve",
        "approver": "ops-lead",
        "comment": "fine by me",
        "approval_hash": approval_hash,
    }
    body.update(overrides)
    return body


def test_approve_records_the_decision_and_closes_the_ticket(any_stack: Stack) -> None:
    task_id = new_task_id("approve")
    start(any_stack, task_id, "open a ticket: projector is broken")
    parked = wait_parked(any_stack, task_id)
    pending = parked["pending_approval"]
    assert pending["approvers"] == ["ops-lead"]
    assert "create_ticket" in pending["summary"]
    assert pending["details"]["plan"]["steps"][0]["tool"] == "create_ticket"
    assert "awakeable_id" not in pending  # a capability to resume the task: never shown
    ticket_id = pending["approval_ticket_id"]
    assert approval_ticket(any_stack, ticket_id)["status"] == "open"
    assert [
        n["recipient"] for n in notifications(any_stack, kind="approval_request", reference=ticket_id)
    ] == ["ops-lead"]
    assert any(item["task_id"] == task_id for item in pending_approvals(any_stack))

    answer = any_stack.signed_webhook(webhook_body(task_id, pending["approval_hash"]), DEV_WEBHOOK_SECRET)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "recorded"

    view = any_stack.wait_for_state("AgentTask", task_id, END)
    assert view["state"] == "COMPLETE"
    assert view["pending_approval"] is None
    [record] = view["approvals"]
    assert record["outcome"] == "approve" and record["decision"] == "approve"
    assert record["approver"] == "ops-lead" and record["comment"] == "fine by me"
    assert record["approval_hash"] == pending["approval_hash"] and record["decided_at"]
    assert approval_ticket(any_stack, ticket_id)["status"] == "approved"
    assert not any(item["task_id"] == task_id for item in pending_approvals(any_stack))
    # The audit log holds the decision on the gate's transition.
    [left_gate] = [
        e
        for e in store_for(any_stack.database_url).events("AgentTask", task_id)
        if e.from_state == "WAIT_APPROVAL"
    ]
    assert left_gate.payload["approval"]["approver"] == "ops-lead"
    assert left_gate.payload["approval"]["approval_hash"] == pending["approval_hash"]


def test_reject_fails_the_task_without_executing_anything(any_stack: Stack) -> None:
    task_id = new_task_id("reject")
    start(any_stack, task_id, "open a ticket and notify me: the lights are broken")
    pending = wait_parked(any_stack, task_id)["pending_approval"]
    body = webhook_body(task_id, pending["approval_hash"], decision="reject", comment="wrong building")
    assert any_stack.signed_webhook(body, DEV_WEBHOOK_SECRET).status_code == 200

    view = any_stack.wait_for_state("AgentTask", task_id, END)
    assert view["state"] == "FAILED"
    assert view["error"] == {
        "state": "WAIT_APPROVAL",
        "code": "approval_rejected",
        "message": "rejected by ops-lead: wrong building",
    }
    assert view["data"]["executed"] == []
    assert view["approvals"][0]["outcome"] == "reject"
    assert approval_ticket(any_stack, pending["approval_ticket_id"])["status"] == "rejected"


def test_webhook_refusals_change_nothing(stack: Stack) -> None:
    task_id = new_task_id("refuse")
    start(stack, task_id, "open a ticket: the sink is broken")
    before = wait_parked(stack, task_id)
    good = webhook_body(task_id, before["pending_approval"]["approval_hash"])
    raw = json.dumps(good).encode()
    url = f"{stack.approvals_url}/webhooks/approval"

    # 401: no signature, a forged one, a signature of another body.
    assert httpx.post(url, content=raw, timeout=10).status_code == 401
    forged = stack.signed_webhook(good, "not-the-secret")
    assert forged.status_code == 401 and forged.json()["error"]["code"] == "bad_signature"
    other = json.dumps({**good, "comment": "changed"}).encode()
    from app.approvals.signature import TOLERANCE_SECONDS, signed_headers

    mismatched = httpx.post(url, content=other, headers=signed_headers(DEV_WEBHOOK_SECRET, raw), timeout=10)
    assert mismatched.status_code == 401
    # A captured delivery replayed after the 5-minute window, or dated in the future, is refused.
    # A minute past the edge on either side: int() truncates up to a second and the request takes
    # time, so a timestamp one second past the window can land just inside it by the time it arrives.
    outside = TOLERANCE_SECONDS + 60
    stale = stack.signed_webhook(good, timestamp=int(time.time()) - outside)
    assert stale.status_code == 401 and "window" in stale.json()["error"]["message"]
    future = stack.signed_webhook(good, timestamp=int(time.time()) + outside)
    assert future.status_code == 401 and "window" in future.json()["error"]["message"]

    # 422: signed but malformed.
    for bad in [
        b"{not json",
        json.dumps({**good, "decision": "maybe"}).encode(),
        json.dumps({k: v for k, v in good.items() if k != "approver"}).encode(),
        json.dumps({**good, "approval_hash": "abc"}).encode(),
        json.dumps({**good, "agent": "Nope"}).encode(),
    ]:
        answer = stack.signed_webhook(bad, DEV_WEBHOOK_SECRET)
        assert answer.status_code == 422, (bad, answer.text)
        assert answer.json()["error"]["code"] == "invalid_decision"

    # 409: a task that is not waiting, a stale hash; 403: someone who is not an approver.
    unknown = stack.signed_webhook({**good, "task_id": new_task_id("nobody")}, DEV_WEBHOOK_SECRET)
    assert unknown.status_code == 409 and unknown.json()["error"]["code"] == "not_waiting"
    stale = stack.signed_webhook({**good, "approval_hash": "f" * 64}, DEV_WEBHOOK_SECRET)
    assert stale.status_code == 409 and stale.json()["error"]["code"] == "stale_approval"
    stranger = stack.signed_webhook({**good, "approver": "mallory"}, DEV_WEBHOOK_SECRET)
    assert stranger.status_code == 403

    after = stack.status("AgentTask", task_id)
    assert after["state"] == "WAIT_APPROVAL"
    assert after["pending_approval"] == before["pending_approval"]
    assert after["approvals"] == []

    # The real decision still works, exactly once; a second one is a 409 and changes nothing.
    sent_at = int(time.time())
    first = stack.signed_webhook(good, DEV_WEBHOOK_SECRET, timestamp=sent_at)
    assert first.status_code == 200
    second = stack.signed_webhook({**good, "decision": "reject"}, DEV_WEBHOOK_SECRET)
    assert second.status_code == 409
    assert second.json()["error"]["code"] in {"already_decided", "not_waiting"}
    view = stack.wait_for_state("AgentTask", task_id, END)
    assert view["state"] == "COMPLETE" and len(view["approvals"]) == 1
    # A retry of the same delivery (a lost response) gets the first answer again, even now.
    again = stack.signed_webhook(good, DEV_WEBHOOK_SECRET, timestamp=sent_at)
    assert again.status_code == 200 and again.json() == first.json()
    late = stack.signed_webhook({**good, "comment": "too late"}, DEV_WEBHOOK_SECRET)
    assert late.status_code == 409 and late.json()["error"]["code"] == "not_waiting"


def test_decide_handler_refuses_stale_hash_and_bad_input(stack: Stack) -> None:
    task_id = new_task_id("stale")
    start(stack, task_id, "open a ticket: door lock is broken")
    pending = wait_parked(stack, task_id)["pending_approval"]
    stale = stack.decide("AgentTask", task_id, "approve", approval_hash="0" * 64)
    assert stale.status_code == 409 and "stale approval_hash" in stale.text
    malformed = stack.call("AgentTask", task_id, "decide", {"decision": "approve"})
    assert malformed.status_code == 400 and "approver" in malformed.text
    # Well-formed, straight to the ingress, without the approvals surface's proof: refused.
    unproven = {"decision": "approve", "approver": "ops-lead", "approval_hash": pending["approval_hash"]}
    assert (
        stack.call("AgentTask", task_id, "decide", {**unproven, "proof": "v1.9999999999.00.ff"}).status_code
        == 401
    )
    assert stack.status("AgentTask", task_id)["state"] == "WAIT_APPROVAL"
    assert stack.decide("AgentTask", task_id, "reject").status_code == 200
    assert stack.wait_for_state("AgentTask", task_id, END)["state"] == "FAILED"


def test_approvals_api_needs_a_credential(stack: Stack) -> None:
    url = f"{stack.approvals_url}/approvals"
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, headers={"authorization": "Bearer wrong"}, timeout=10).status_code == 401
    decide = httpx.post(f"{stack.approvals_url}/inbox/decide", json={}, timeout=10)
    assert decide.status_code == 401
    # The operator token reads (no identity: it may decide nothing); an approver's credential too.
    operator = httpx.get(url, headers=OPERATOR, timeout=30).json()
    assert operator["signed_in_as"] is None
    assert all(item["may_decide"] is False for item in operator["approvals"])
    credential = stack.approver_credential("ops-lead")
    mine = httpx.get(url, headers={"authorization": f"Bearer {credential}"}, timeout=30).json()
    assert mine["signed_in_as"] == "ops-lead"


@pytest.fixture(scope="module")
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    with running_mailbox() as running:
        yield running


@pytest.fixture(scope="module")
def short_gate_stack(
    tmp_path_factory: pytest.TempPathFactory, mailbox: tuple[Mailbox, int]
) -> Iterator[Stack]:
    """Always-replay mode, gates that expire after 8 s with a reminder 4 s before, and the outbox
    delivered by email to the approvers' mailbox (a real SMTP server on loopback)."""
    workdir = tmp_path_factory.mktemp("short-gate")
    env = {
        "APPROVAL_TIMEOUT_SECONDS": "8",
        "APPROVAL_REMINDER_BEFORE_SECONDS": "4",
        "NOTIFY_SMTP_URL": f"smtp://127.0.0.1:{mailbox[1]}",
        "NOTIFY_EMAIL_DOMAIN": "example.com",
        "NOTIFY_POLL_SECONDS": "0.2",
        "NOTIFY_LEASE_SECONDS": "1",
    }
    with running_stack(workdir, sqlite_url(workdir), always_replay=True, extra_env=env) as running:
        yield running


def test_timeout_sends_one_reminder_then_fails_and_closes_everything(
    short_gate_stack: Stack, mailbox: tuple[Mailbox, int]
) -> None:
    stack = short_gate_stack
    task_id = new_task_id("timeout")
    start(stack, task_id, "open a ticket: the fridge is broken")
    pending = wait_parked(stack, task_id)["pending_approval"]
    ticket_id = pending["approval_ticket_id"]

    view = stack.wait_for_state("AgentTask", task_id, END, timeout=60)
    assert view["state"] == "FAILED"
    assert view["error"]["code"] == "approval_timed_out"
    [record] = view["approvals"]
    assert record["outcome"] == "timeout" and record["decision"] is None and record["reminded"] is True
    # Exactly one reminder round (to the approver and the escalation approver), before the deadline,
    # although always-replay mode replayed the handler after every await.
    reminders = notifications(stack, kind="approval_reminder", reference=ticket_id)
    assert sorted(n["recipient"] for n in reminders) == ["ops-lead", "ops-manager"]
    deadline = datetime.fromisoformat(pending["deadline"])
    assert all(datetime.fromisoformat(n["created_at"]) < deadline for n in reminders), reminders
    ticket = approval_ticket(stack, ticket_id)
    assert ticket["status"] == "expired" and ticket["reminders"] == 1
    assert notifications(stack, kind="approval_closed", reference=ticket_id)
    # The request and the reminder reached the approver's mailbox before the deadline, once each.
    inbox = mailbox[0]

    def mailed(kind: str) -> list[Any]:
        return [
            m for m in inbox.to("ops-lead@example.com", kind) if m["X-Notification-Reference"] == ticket_id
        ]

    wait_until(lambda: len(mailed("approval_closed")) == 1, timeout=30, what="the closing mail")
    assert len(mailed("approval_request")) == 1 and len(mailed("approval_reminder")) == 1
    arrived = dict(zip([m["Message-ID"] for m in inbox.messages], inbox.received_at, strict=True))
    assert arrived[mailed("approval_reminder")[0]["Message-ID"]] < deadline.timestamp()
    assert {n["status"] for n in notifications(stack, reference=ticket_id)} == {"sent"}
    # Nothing is left waiting: the gate is closed and the inbox no longer lists it.
    late = stack.decide("AgentTask", task_id, "approve", approval_hash=pending["approval_hash"])
    assert late.status_code == 409, late.text
    assert not any(item["task_id"] == task_id for item in pending_approvals(stack))


def test_escalation_approver_may_decide_after_the_reminder(short_gate_stack: Stack) -> None:
    stack = short_gate_stack
    task_id = new_task_id("escalate")
    start(stack, task_id, "open a ticket: the heater is broken")
    pending = wait_parked(stack, task_id)["pending_approval"]
    assert stack.decide("AgentTask", task_id, "approve", approver="ops-manager").status_code == 403
    reminded = stack.wait_for_state("AgentTask", task_id, {"WAIT_APPROVAL"}, timeout=20)
    # Poll until the reminder went out; then the escalation approver is one of the approvers.
    wait_until(
        lambda: stack.status("AgentTask", task_id)["pending_approval"]["reminded"] is True,
        timeout=20,
        what="the reminder",
    )
    reminded = stack.status("AgentTask", task_id)
    assert reminded["pending_approval"]["approvers"] == ["ops-lead", "ops-manager"]
    decided = stack.decide(
        "AgentTask", task_id, "approve", approver="ops-manager", approval_hash=pending["approval_hash"]
    )
    assert decided.status_code == 200, decided.text
    view = stack.wait_for_state("AgentTask", task_id, END, timeout=30)
    assert view["state"] == "COMPLETE"
    assert view["approvals"][0]["approver"] == "ops-manager" and view["approvals"][0]["reminded"] is True


def test_a_dispatcher_killed_after_sending_resends_the_same_message_once(
    short_gate_stack: Stack, mailbox: tuple[Mailbox, int]
) -> None:
    stack = short_gate_stack
    inbox = mailbox[0]
    original = dict(stack.extra_env)
    assert stack.tools is not None
    # The earlier tests' mail all sent first: the faulty service's one send must be this message.
    wait_until(
        lambda: all(n["status"] in ("sent", "dead") for n in notifications(stack)),
        timeout=30,
        what="the outbox to drain",
    )
    stack.tools.stop()
    # The tool service exits right after its first send, before the row says "sent".
    stack.extra_env = {**original, "NOTIFY_FAULT_EXIT_AFTER_SEND": "1"}
    stack.start_tools()
    before = len(inbox.messages)
    answer = httpx.post(
        f"{stack.tools_url}/tools/send_notification",
        json={"recipient": "ops@example.com", "subject": "crash test", "body": "once"},
        headers={**stack.tools_auth, "Idempotency-Key": new_task_id("notify"), "X-Agent": "AgentTask"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    notification_id = answer.json()["notification_id"]
    tools = stack.tools
    assert tools is not None
    wait_until(lambda: not tools.alive(), timeout=30, what="the tool service to exit after sending")
    assert [m["Message-ID"] for m in inbox.messages[before:]] == [f"<{notification_id}@localhost>"]
    stack.extra_env = original
    stack.start_tools()
    # Its lease ran out: claimed again, sent again with the same Message-ID, then marked sent.
    wait_until(
        lambda: notifications(stack, kind="notification")[0]["status"] == "sent",
        timeout=30,
        what="the resend",
    )
    ids = [m["Message-ID"] for m in inbox.messages[before:]]
    assert set(ids) == {f"<{notification_id}@localhost>"} and len(ids) == 2
    [row] = [n for n in notifications(stack) if n["notification_id"] == notification_id]
    assert row["attempts"] == 2 and row["channel"] == "smtp"
    record_figure(
        "messages delivered exactly once",
        "approval request and reminder mailed to the approver before the deadline, once each; a dispatcher"
        " killed after sending resent the same Message-ID once (one message to the reader)",
    )


def awakeable_of(stack: Stack, agent: str, task_id: str) -> str:
    """The awakeable a waiting task's gate holds, read from Restate's state (admin access)."""
    rows = stack.sql(
        f"select value_utf8 from state where service_name = '{agent}' "
        f"and service_key = '{task_id}' and key = 'task'"
    )
    awakeable_id: str = json.loads(rows[0]["value_utf8"])["pending_approval"]["awakeable_id"]
    return awakeable_id


def test_a_wake_that_bypasses_the_gate_changes_nothing_and_the_gate_is_rearmed(any_stack: Stack) -> None:
    stack = any_stack
    task_id = new_task_id("bypass")
    start(stack, task_id, "open a ticket: the vault door is broken")
    pending = wait_parked(stack, task_id)["pending_approval"]
    # Someone who learnt the awakeable's id resolves it straight through the ingress, skipping
    # the arbiter's hash and approver checks, then rejects the re-armed one.
    forged = {"decision": "approve", "approver": "mallory", "approval_hash": pending["approval_hash"]}
    first = awakeable_of(stack, "AgentTask", task_id)
    resolved = httpx.post(f"{stack.ingress_url}/restate/awakeables/{first}/resolve", json=forged, timeout=10)
    assert resolved.status_code < 300, resolved.text
    wait_until(
        lambda: (
            len(stack.status("AgentTask", task_id)["intrusions"]) == 1
            and awakeable_of(stack, "AgentTask", task_id) != first
        ),
        timeout=30,
        what="the intrusion to be recorded and the gate re-armed",
    )
    second = awakeable_of(stack, "AgentTask", task_id)
    rejected = httpx.post(
        f"{stack.ingress_url}/restate/awakeables/{second}/reject",
        content=b"denied",
        headers={"content-type": "text/plain"},
        timeout=10,
    )
    assert rejected.status_code < 300, rejected.text
    wait_until(
        lambda: len(stack.status("AgentTask", task_id)["intrusions"]) == 2,
        timeout=30,
        what="the second intrusion",
    )

    # Nothing changed: the task still waits for the same approval, nothing was executed.
    view = stack.status("AgentTask", task_id)
    assert view["state"] == "WAIT_APPROVAL" and view["approvals"] == []
    assert view["pending_approval"]["approval_hash"] == pending["approval_hash"]
    assert view["data"]["executed"] == []
    assert [i["how"] for i in view["intrusions"]] == ["resolved", "rejected"]
    assert approval_ticket(stack, pending["approval_ticket_id"])["status"] == "open"
    # The real approver still decides, once.
    assert stack.decide("AgentTask", task_id, "approve").status_code == 200
    done = stack.wait_for_state("AgentTask", task_id, END)
    assert done["state"] == "COMPLETE" and done["approvals"][0]["approver"] == "ops-lead"
    assert len(done["intrusions"]) == 2
    # The refused wakes are in the audit record, with the transition that left the gate.
    [left_gate] = [
        e
        for e in store_for(stack.database_url).events("AgentTask", task_id)
        if e.from_state == "WAIT_APPROVAL"
    ]
    assert [i["how"] for i in left_gate.payload["intrusions"]] == ["resolved", "rejected"]
