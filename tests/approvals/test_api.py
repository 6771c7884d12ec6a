"""The approvals surface in-process (no Restate behind it): signatures, proofs, credentials, and
what it answers when the decision's outcome is unknown."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from sqlalchemy import text
from starlette.testclient import TestClient

from app.agents.agent_task import MACHINE as AGENT_TASK_MACHINE
from app.approvals import signature
from app.approvals.api import create_approvals_app
from app.approvals.identity import CredentialStore
from app.gates import proof
from app.gates.models import DecideInput
from app.settings import DEV_WEBHOOK_SECRET, Settings
from common.db import make_engine

HASH = "a" * 64
BODY = {
    "agent": "AgentTask",
    "task_id": "t-1",
    "decision": "approve",
    "approver": "ops-lead",
    "comment": None,
    "approval_hash": HASH,
}


@pytest.fixture
def credentials(tmp_path: Path) -> CredentialStore:
    return CredentialStore(make_engine(f"sqlite:///{tmp_path / 'agents.db'}"))


@pytest.fixture
def silent_ingress() -> Iterator[str]:
    """A server that accepts connections and never answers: the outcome of a call is unknown."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    for connection in held:
        connection.close()
    server.close()


def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def client_for(ingress: str, credentials: CredentialStore) -> TestClient:
    settings = Settings(_env_file=None, ENV="development", RESTATE_INGRESS_URL=ingress)
    return TestClient(
        create_approvals_app(settings, {"AgentTask": AGENT_TASK_MACHINE}, credentials, decide_timeout=1.0)
    )


def post_signed(client: TestClient, body: Mapping[str, object] | bytes, **override: str) -> object:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {
        "content-type": "application/json",
        **signature.signed_headers(DEV_WEBHOOK_SECRET, raw),
        **override,
    }
    return client.post("/webhooks/approval", content=raw, headers=headers)


def test_signature_covers_timestamp_and_body_within_the_window() -> None:
    raw, now = b'{"a":1}', 1_700_000_000
    good = signature.sign("k", now, raw)
    assert signature.verify("k", raw, good, str(now), now=now + 299) is None
    assert "window" in str(signature.verify("k", raw, good, str(now), now=now + 301))
    assert "window" in str(signature.verify("k", raw, good, str(now), now=now - 301))
    assert signature.verify("k", raw + b" ", good, str(now), now=now) is not None
    assert signature.verify("k", raw, good, str(now + 1), now=now) is not None
    assert signature.verify("other", raw, good, str(now), now=now) is not None
    assert signature.verify("k", raw, None, str(now), now=now) is not None
    assert signature.verify("k", raw, good, None, now=now) is not None
    assert signature.verify("k", raw, good, "soon", now=now) is not None


def test_a_proof_binds_exactly_one_decision_on_one_task_for_five_minutes() -> None:
    key = proof.proof_key(DEV_WEBHOOK_SECRET)
    decision = DecideInput(decision="approve", approver="ops-lead", approval_hash=HASH)
    minted = proof.mint(key, "AgentTask", "t-1", decision, now=1000)
    assert proof.check(key, minted, "AgentTask", "t-1", decision, now=1000 + 299).ok
    assert proof.check(key, minted, "AgentTask", "t-1", decision, now=1000 + 301).reason == (
        "the decision proof has expired"
    )
    for changed in (
        {"approver": "ops-manager"},
        {"decision": "reject"},
        {"comment": "added"},
        {"approval_hash": "b" * 64},
    ):
        other = decision.model_copy(update=changed)
        assert not proof.check(key, minted, "AgentTask", "t-1", other, now=1000).ok, changed
    assert not proof.check(key, minted, "AgentTask", "t-2", decision, now=1000).ok
    assert not proof.check(key, minted, "ExpenseReport", "t-1", decision, now=1000).ok
    assert not proof.check(
        proof.proof_key("another secret"), minted, "AgentTask", "t-1", decision, now=1000
    ).ok
    expires = minted.split(".")[1]
    assert not proof.check(
        key, minted.replace(expires, str(int(expires) + 600)), "AgentTask", "t-1", decision
    ).ok
    assert not proof.check(key, "v1.x.y.z", "AgentTask", "t-1", decision).ok


def test_unsigned_forged_and_stale_webhooks_are_401(credentials: CredentialStore) -> None:
    with client_for(closed_port(), credentials) as client:
        raw = json.dumps(BODY).encode()
        assert client.post("/webhooks/approval", content=raw).status_code == 401
        stale = signature.signed_headers(DEV_WEBHOOK_SECRET, raw, int(time.time()) - 600)
        assert client.post("/webhooks/approval", content=raw, headers=stale).status_code == 401
        forged = signature.signed_headers("not the secret", raw)
        assert client.post("/webhooks/approval", content=raw, headers=forged).status_code == 401


def test_an_unregistered_agent_is_422(credentials: CredentialStore) -> None:
    with client_for(closed_port(), credentials) as client:
        answer = post_signed(client, {**BODY, "agent": "Payroll"})
        assert answer.status_code == 422  # type: ignore[attr-defined]
        assert "registered agents: AgentTask" in answer.text  # type: ignore[attr-defined]


def test_restate_unreachable_is_reported_as_nothing_recorded(credentials: CredentialStore) -> None:
    with client_for(closed_port(), credentials) as client:
        answer = post_signed(client, BODY)
    assert answer.status_code == 503  # type: ignore[attr-defined]
    assert answer.json()["error"]["code"] == "not_delivered"  # type: ignore[attr-defined]


def test_a_timeout_after_sending_is_reported_as_unknown_never_as_nothing_recorded(
    credentials: CredentialStore, silent_ingress: str
) -> None:
    credential = credentials.issue("ops-lead")
    with client_for(silent_ingress, credentials) as client:
        webhook = post_signed(client, BODY)
        inbox = client.post(
            "/inbox/decide",
            json={key: value for key, value in BODY.items() if key != "approver"},
            headers={"authorization": f"Bearer {credential}"},
        )
    for answer in (webhook, inbox):
        assert answer.status_code == 503  # type: ignore[attr-defined]
        error = answer.json()["error"]  # type: ignore[attr-defined]
        assert error["code"] == "outcome_unknown" and "may or may not have been recorded" in error["message"]


def test_credentials_are_stored_hashed_and_can_be_revoked(credentials: CredentialStore) -> None:
    token = credentials.issue("ops-lead")
    assert token.startswith("apv_") and len(token) > 40
    assert credentials.approver_of(token) == "ops-lead"
    assert credentials.approver_of(token + "x") is None
    assert credentials.approver_of("ops-lead") is None
    with credentials.session() as session:
        stored = session.execute(text("select * from approver_credentials")).all()
    assert token not in repr(stored)
    assert credentials.revoke("ops-lead") == 1
    assert credentials.approver_of(token) is None
    with pytest.raises(ValueError):
        credentials.issue("not a name")
