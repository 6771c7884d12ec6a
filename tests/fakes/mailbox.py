"""A real SMTP server on loopback (aiosmtpd) that keeps what it accepts: the approvers' mailbox."""

from __future__ import annotations

import email
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import Message
from typing import Any

from aiosmtpd.controller import Controller

from deploy.local import free_port


class Mailbox:
    """An aiosmtpd handler: every accepted message with when it arrived; refuses chosen addresses."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.received_at: list[float] = []
        self.refuse: set[str] = set()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address in self.refuse:
            return "550 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content))
        self.received_at.append(time.time())
        return "250 Message accepted"

    def to(self, address: str, kind: str | None = None) -> list[Message]:
        return [
            m
            for m in self.messages
            if m["To"] == address and (kind is None or m["X-Notification-Kind"] == kind)
        ]


@contextmanager
def running_mailbox() -> Iterator[tuple[Mailbox, int]]:
    """The mailbox and its port, served until the block ends."""
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()
