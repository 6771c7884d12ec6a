"""The tool service's schema: every table of the service and its domains, created or upgraded at start."""

from __future__ import annotations

from sqlalchemy import Engine

from tools.service import approval_tickets, outbox, registry
from tools.service import idempotency as _idempotency  # noqa: F401 - imported for its table
from tools.service.db import Base


def create_schema(engine: Engine) -> None:
    """Create every table; existing tables are left as they are, except those of an earlier
    version, which are upgraded in the same transaction (outbox.upgrade_outbox_table,
    approval_tickets.upgrade_approval_tickets_table): a process that dies half-way through an
    upgrade leaves the old shape."""
    registry.domains()  # imports every domain, so their tables are on Base.metadata
    with engine.begin() as connection:
        outbox.upgrade_outbox_table(connection)
        approval_tickets.upgrade_approval_tickets_table(connection)
        Base.metadata.create_all(connection)
