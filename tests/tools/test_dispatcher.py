"""The outbox dispatcher against a real SMTP server (aiosmtpd on loopback) and a real HTTP webhook
receiver, on SQLite and PostgreSQL: each row sent once, retried with backoff, dead after a bound
or a refusal, a lost lease taken over without a second concurrent send."""

from __future__ import annotations

import hmac
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from common.db import make_engine
from deploy.local import free_port
from tests.fakes.mailbox import Mailbox, running_mailbox
from tests.tools.calls import MovableClock
from tools.service.db import make_session_factory
from tools.service.dispatcher import Dispatcher, SmtpChannel, WebhookChannel, webhook_signature
from tools.service.outbox import OutboxNotification, list_notifications
from tools.service.schema import create_schema

SECRET = "w" * 40


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    with running_mailbox() as running:
        yield running


class Receiver(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ReceiverHandler)
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.answers: list[int] = []


class ReceiverHandler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
        status = self.server.answers.pop(0) if self.server.answers else 200
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine: Engine = make_engine(database_url)
    create_schema(engine)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


def queue(sessions: sessionmaker[Session], clock: MovableClock, *recipients: str) -> list[str]:
    ids = []
    with sessions.begin() as session:
        for index, recipient in enumerate(recipients):
            notification_id = f"NTF-test-{index}"
            session.add(
                OutboxNotification(
                    notification_id=notification_id,
                    idempotency_key=f"key-{index}",
                    kind="approval_request",
                    reference="APT-1",
                    recipient=recipient,
                    subject=f"Approval needed {index}",
                    body="Please decide.",
                    status="queued",
                    created_at=clock(),
                )
            )
            ids.append(notification_id)
    return ids


def views(sessions: sessionmaker[Session]) -> dict[str, Any]:
    with sessions() as session:
        return {view.notification_id: view for view in list_notifications(session)}


def dispatcher(
    sessions: sessionmaker[Session], clock: MovableClock, *channels: Any, **options: Any
) -> Dispatcher:
    return Dispatcher(sessions, list(channels), clock=clock, **options)


def drain(d: Dispatcher) -> list[str]:
    outcomes = []
    while (outcome := d.deliver_one()) is not None:
        outcomes.append(outcome)
    return outcomes


def test_each_queued_row_is_mailed_once_with_its_id_as_message_id(
    sessions: sessionmaker[Session], clock: MovableClock, smtp: tuple[Mailbox, int]
) -> None:
    inbox, port = smtp
    ids = queue(sessions, clock, "travel-manager", "ceo@example.com")
    d = dispatcher(sessions, clock, SmtpChannel("127.0.0.1", port, "agents@example.com", "example.com"))
    assert drain(d) == ["sent", "sent"]
    assert drain(d) == []  # nothing is sent twice
    assert sorted(m["To"] for m in inbox.messages) == ["ceo@example.com", "travel-manager@example.com"]
    assert sorted(m["Message-ID"] for m in inbox.messages) == sorted(f"<{i}@example.com>" for i in ids)
    shown = views(sessions)
    assert {v.status for v in shown.values()} == {"sent"}
    assert all(v.attempts == 1 and v.channel == "smtp" and v.sent_at is not None for v in shown.values())


def test_a_failing_server_is_retried_with_backoff_then_the_row_is_dead(
    sessions: sessionmaker[Session], clock: MovableClock
) -> None:
    [row] = queue(sessions, clock, "ops-lead@example.com")
    unreachable = SmtpChannel("127.0.0.1", free_port(), "agents@example.com", None, timeout=2)
    d = dispatcher(sessions, clock, unreachable, max_attempts=3, retry_initial=timedelta(seconds=10))
    assert d.deliver_one() == "queued"
    assert d.deliver_one() is None  # not due yet: backing off
    clock.advance(10)
    assert d.deliver_one() == "queued"
    clock.advance(19)
    assert d.deliver_one() is None  # the second wait is twice as long
    clock.advance(1)
    assert d.deliver_one() == "dead"
    shown = views(sessions)[row]
    assert shown.status == "dead" and shown.attempts == 3 and "ConnectionRefused" in (shown.last_error or "")


def test_a_refused_recipient_is_dead_at_once_and_others_go_on(
    sessions: sessionmaker[Session], clock: MovableClock, smtp: tuple[Mailbox, int]
) -> None:
    inbox, port = smtp
    inbox.refuse.add("gone@example.com")
    queue(sessions, clock, "gone@example.com", "here@example.com")
    d = dispatcher(sessions, clock, SmtpChannel("127.0.0.1", port, "agents@example.com", None))
    assert drain(d) == ["dead", "sent"]
    assert [m["To"] for m in inbox.messages] == ["here@example.com"]
    assert "gone@example.com" in (views(sessions)["NTF-test-0"].last_error or "")


def test_a_name_without_a_channel_for_it_is_dead_with_the_reason(
    sessions: sessionmaker[Session], clock: MovableClock, smtp: tuple[Mailbox, int]
) -> None:
    _, port = smtp
    queue(sessions, clock, "travel-manager")
    d = dispatcher(sessions, clock, SmtpChannel("127.0.0.1", port, "agents@example.com", None))
    assert drain(d) == ["dead"]
    assert "no channel" in (views(sessions)["NTF-test-0"].last_error or "")


def test_the_webhook_is_signed_idempotent_and_retried_on_5xx(
    sessions: sessionmaker[Session], clock: MovableClock, receiver: Receiver
) -> None:
    [row] = queue(sessions, clock, "travel-manager")
    receiver.answers = [503]
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    d = dispatcher(sessions, clock, WebhookChannel(url, SECRET), retry_initial=timedelta(seconds=1))
    assert d.deliver_one() == "queued"
    clock.advance(1)
    assert d.deliver_one() == "sent"
    assert len(receiver.posts) == 2
    for headers, body in receiver.posts:
        assert headers["idempotency-key"] == row
        expected = webhook_signature(SECRET, int(headers["x-signature-timestamp"]), body)
        assert hmac.compare_digest(headers["x-signature"], expected)
        assert json.loads(body)["recipient"] == "travel-manager"


def test_a_webhook_refusal_is_dead_at_once(
    sessions: sessionmaker[Session], clock: MovableClock, receiver: Receiver
) -> None:
    queue(sessions, clock, "travel-manager")
    receiver.answers = [400]
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    d = dispatcher(sessions, clock, WebhookChannel(url, SECRET))
    assert drain(d) == ["dead"]
    assert len(receiver.posts) == 1


def test_a_dispatcher_that_lost_its_lease_does_not_mark_and_the_row_is_sent_by_the_next(
    sessions: sessionmaker[Session], clock: MovableClock, smtp: tuple[Mailbox, int]
) -> None:
    inbox, port = smtp
    [row] = queue(sessions, clock, "ops@example.com")
    channel = SmtpChannel("127.0.0.1", port, "agents@example.com", None)
    first = dispatcher(sessions, clock, channel, lease=timedelta(seconds=30))
    claim = first.claim()  # ...and then this dispatcher stalls (or crashes) before it sends
    assert claim is not None
    second = dispatcher(sessions, clock, channel, lease=timedelta(seconds=30))
    assert second.claim() is None  # leased: nobody else sends it meanwhile
    clock.advance(31)
    assert second.deliver_one() == "sent"
    assert first.finish(claim, "smtp", None, False) == "lost"
    assert views(sessions)[row].status == "sent" and views(sessions)[row].attempts == 2
    assert [m["Message-ID"] for m in inbox.messages] == [f"<{row}@example.com>"]
