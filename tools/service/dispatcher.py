"""Delivers the outbox: each queued message sent once per row, by SMTP or a signed webhook, retried.

A row is claimed with a lease before it is sent and marked sent after, in two transactions, so two
dispatchers (replicas) never send one row at the same time, and a dispatcher that crashed
mid-send leaves a row whose lease runs out and is claimed again. The one window no outbox can
close (sent, then the crash before the mark) is covered on the receiving side: a resend carries
the same Message-ID (SMTP) and Idempotency-Key (webhook), the row's id, so the receiver shows it
once. Failures are retried with doubling backoff; after `NOTIFY_MAX_ATTEMPTS`, or at once for a
refusal (an address the server rejects, a 4xx from the webhook), the row is `dead`, its last
error kept. Every row's delivery is visible in `GET /notifications`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import secrets
import smtplib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from typing import Protocol
from urllib.parse import urlsplit

import httpx
from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from tools.service.outbox import NotificationDelivery, OutboxNotification
from tools.service.settings import ToolsSettings

log = logging.getLogger(__name__)

ERROR_MAX_LENGTH = 500


class Refused(Exception):
    """The channel refused the message for good (retrying cannot help): the row goes dead."""


@dataclass(frozen=True)
class Outgoing:
    notification_id: str
    kind: str
    reference: str | None
    recipient: str
    subject: str
    body: str


class Channel(Protocol):
    @property
    def name(self) -> str: ...

    def accepts(self, recipient: str) -> bool: ...

    def send(self, message: Outgoing) -> None: ...


@dataclass(frozen=True)
class SmtpChannel:
    """Email through an SMTP relay; a recipient without `@` gets the configured domain."""

    host: str
    port: int
    sender: str
    domain: str | None
    timeout: float = 10.0
    name: str = "smtp"

    def address(self, recipient: str) -> str | None:
        if "@" in recipient:
            return recipient
        return f"{recipient}@{self.domain}" if self.domain else None

    def accepts(self, recipient: str) -> bool:
        return self.address(recipient) is not None

    def send(self, message: Outgoing) -> None:
        to = self.address(message.recipient)
        assert to is not None
        email = EmailMessage()
        email["From"] = self.sender
        email["To"] = to
        email["Subject"] = message.subject
        # The row's id: a resend after a crash is the same message to every mail client.
        email["Message-ID"] = f"<{message.notification_id}@{self.sender.rpartition('@')[2] or 'agents'}>"
        email["X-Notification-Kind"] = message.kind
        if message.reference:
            email["X-Notification-Reference"] = message.reference
        email.set_content(message.body)
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                smtp.send_message(email)
        except smtplib.SMTPRecipientsRefused as exc:
            raise Refused(f"SMTP refused {to}: {exc.recipients}") from None


def webhook_signature(secret: str, timestamp: int, body: bytes) -> str:
    """`sha256=` HMAC over `"{timestamp}.{body}"`, as the approvals webhook signs (docs/security.md)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


@dataclass(frozen=True)
class WebhookChannel:
    """A chat-style incoming webhook: one signed JSON POST per message, its id as Idempotency-Key."""

    url: str
    secret: str
    timeout: float = 10.0
    name: str = "webhook"

    def accepts(self, recipient: str) -> bool:
        return True

    def send(self, message: Outgoing) -> None:
        body = json.dumps(
            {
                "notification_id": message.notification_id,
                "kind": message.kind,
                "reference": message.reference,
                "recipient": message.recipient,
                "subject": message.subject,
                "text": message.body,
            },
            sort_keys=True,
        ).encode()
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "idempotency-key": message.notification_id,
            "x-signature-timestamp": str(timestamp),
            "x-signature": webhook_signature(self.secret, timestamp, body),
        }
        response = httpx.post(self.url, content=body, headers=headers, timeout=self.timeout)
        if response.status_code < 300:
            return
        detail = f"webhook answered {response.status_code}: {response.text[:200]}"
        if 400 <= response.status_code < 500 and response.status_code not in (408, 409, 429):
            raise Refused(detail)
        raise OSError(detail)


def channels_from(settings: ToolsSettings) -> list[Channel]:
    """The configured channels, email first for addresses; none configured: no dispatcher runs."""
    found: list[Channel] = []
    if settings.notify_smtp_url:
        parts = urlsplit(settings.notify_smtp_url)
        found.append(
            SmtpChannel(
                host=parts.hostname or "127.0.0.1",
                port=parts.port or 25,
                sender=settings.notify_smtp_from,
                domain=settings.notify_email_domain,
            )
        )
    if settings.notify_webhook_url:
        assert settings.notify_webhook_secret is not None  # the settings refuse a webhook without one
        found.append(
            WebhookChannel(settings.notify_webhook_url, settings.notify_webhook_secret.get_secret_value())
        )
    return found


@dataclass
class Claim:
    message: Outgoing
    token: str
    attempts: int


class Dispatcher:
    """Claims due rows one at a time, sends each on the first channel that takes its recipient."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        channels: list[Channel],
        *,
        clock: Callable[[], datetime],
        lease: timedelta = timedelta(seconds=60),
        max_attempts: int = 8,
        retry_initial: timedelta = timedelta(seconds=2),
        retry_max: timedelta = timedelta(minutes=5),
        poll_seconds: float = 1.0,
        exit_after_send: bool = False,
    ) -> None:
        self._sessions = sessions
        self._channels = channels
        self._clock = clock
        self._lease = lease
        self._max_attempts = max_attempts
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._poll_seconds = poll_seconds
        self._exit_after_send = exit_after_send

    @classmethod
    def from_settings(
        cls, settings: ToolsSettings, sessions: sessionmaker[Session], clock: Callable[[], datetime]
    ) -> Dispatcher | None:
        channels = channels_from(settings)
        if not channels:
            return None
        return cls(
            sessions,
            channels,
            clock=clock,
            lease=timedelta(seconds=settings.notify_lease_seconds),
            max_attempts=settings.notify_max_attempts,
            retry_initial=timedelta(seconds=settings.notify_retry_initial_seconds),
            retry_max=timedelta(seconds=settings.notify_retry_max_seconds),
            poll_seconds=settings.notify_poll_seconds,
            exit_after_send=settings.notify_fault_exit_after_send,
        )

    def claim(self) -> Claim | None:
        """The oldest due row, leased to this call: queued and due, or sending with its lease out."""
        now = self._clock()
        with self._sessions.begin() as session:
            due = (
                select(OutboxNotification, NotificationDelivery)
                .outerjoin(
                    NotificationDelivery,
                    NotificationDelivery.notification_id == OutboxNotification.notification_id,
                )
                .where(
                    or_(
                        (OutboxNotification.status == "queued")
                        & or_(
                            NotificationDelivery.next_attempt_at.is_(None),
                            NotificationDelivery.next_attempt_at <= now,
                        ),
                        (OutboxNotification.status == "sending") & (NotificationDelivery.lease_until < now),
                    )
                )
                .order_by(OutboxNotification.created_at, OutboxNotification.notification_id)
                .limit(1)
                .with_for_update(skip_locked=True, of=OutboxNotification)
            )
            found = session.execute(due).first()
            if found is None:
                return None
            row, delivery = found
            if delivery is None:
                delivery = NotificationDelivery(notification_id=row.notification_id, attempts=0)
                session.add(delivery)
            token = secrets.token_hex(16)
            delivery.attempts += 1
            delivery.claim_token = token
            delivery.lease_until = now + self._lease
            row.status = "sending"
            message = Outgoing(
                row.notification_id, row.kind, row.reference, row.recipient, row.subject, row.body
            )
            return Claim(message, token, delivery.attempts)

    def finish(self, claim: Claim, channel: str | None, error: str | None, permanent: bool) -> str:
        """Record the attempt's outcome, if this claim still holds the row; the row's new status."""
        now = self._clock()
        with self._sessions.begin() as session:
            row = session.get(OutboxNotification, claim.message.notification_id)
            delivery = session.get(NotificationDelivery, claim.message.notification_id)
            if row is None or delivery is None or delivery.claim_token != claim.token:
                return "lost"  # another dispatcher took over after our lease ran out
            delivery.claim_token = None
            delivery.lease_until = None
            delivery.channel = channel
            if error is None:
                row.status = "sent"
                delivery.sent_at = now
                delivery.last_error = None
                return row.status
            delivery.last_error = error[:ERROR_MAX_LENGTH]
            if permanent or claim.attempts >= self._max_attempts:
                row.status = "dead"
                return row.status
            backoff = min(self._retry_max, self._retry_initial * 2 ** (claim.attempts - 1))
            delivery.next_attempt_at = now + backoff
            row.status = "queued"
            return row.status

    def deliver_one(self) -> str | None:
        """Claim, send and record one row; None when nothing is due."""
        claim = self.claim()
        if claim is None:
            return None
        channel = next((c for c in self._channels if c.accepts(claim.message.recipient)), None)
        if channel is None:
            return self.finish(claim, None, f"no channel for recipient {claim.message.recipient!r}", True)
        try:
            channel.send(claim.message)
        except Refused as exc:
            status = self.finish(claim, channel.name, str(exc), True)
        except (OSError, smtplib.SMTPException, httpx.HTTPError) as exc:
            status = self.finish(claim, channel.name, f"{type(exc).__name__}: {exc}", False)
        else:
            if self._exit_after_send:
                # The crash test's fault: sent, and gone before the row says so.
                log.warning(
                    "NOTIFY_FAULT_EXIT_AFTER_SEND: exiting after sending %s", claim.message.notification_id
                )
                os._exit(70)
            status = self.finish(claim, channel.name, None, False)
        level = logging.INFO if status == "sent" else logging.WARNING
        log.log(level, "notification %s via %s: %s", claim.message.notification_id, channel.name, status)
        return status

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop`: everything due at once, then poll."""
        while not stop.is_set():
            try:
                delivered = await asyncio.to_thread(self.deliver_one)
            except Exception:  # a database error: log it, keep the loop alive, try again later
                log.exception("notification dispatcher: delivery round failed")
                delivered = None
            if delivered is None:
                try:
                    await asyncio.wait_for(stop.wait(), timeout=self._poll_seconds)
                except TimeoutError:
                    pass
