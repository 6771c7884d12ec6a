"""Approvers' personal credentials: who signed in to the inbox, from a bearer token.

Each approver gets their own random token (`apv_` + 32 random bytes), shown once when it is
issued (`agentctl approvers add NAME`). Only its SHA-256 is stored: a token has 256 bits of
entropy, so a fast hash is as safe as a slow one and lets the surface look it up in one indexed
read; a database leak reveals no usable credential. Revoking marks the row, so the audit trail
of who held what stays. The table lives in the agent service's database (the event log's).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import UTC, datetime
from functools import lru_cache

from sqlalchemy import DateTime, Engine, String, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from app.gates.models import APPROVER_PATTERN
from common.db import make_engine

TOKEN_PREFIX = "apv_"
_APPROVER = re.compile(APPROVER_PATTERN)


class IdentityBase(DeclarativeBase):
    pass


class ApproverCredential(IdentityBase):
    __tablename__ = "approver_credentials"

    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    approver: Mapped[str] = mapped_column(String(128), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class CredentialStore:
    """Issue, look up and revoke approver credentials; every method is blocking database I/O."""

    def __init__(self, engine: Engine) -> None:
        IdentityBase.metadata.create_all(engine)
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def issue(self, approver: str) -> str:
        """A new credential for `approver`; the token is returned once and never stored."""
        if not _APPROVER.match(approver) or len(approver) > 128:
            raise ValueError(f"not an approver name: {approver!r}")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._sessions.begin() as session:
            session.add(
                ApproverCredential(
                    token_sha256=token_digest(token), approver=approver, created_at=datetime.now(UTC)
                )
            )
        return token

    def approver_of(self, token: str) -> str | None:
        """The approver a presented token belongs to, or None (unknown, revoked, malformed)."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            return None
        with self._sessions.begin() as session:
            row = session.get(ApproverCredential, token_digest(token))
            return row.approver if row is not None and row.revoked_at is None else None

    def revoke(self, approver: str) -> int:
        """Revoke every live credential of `approver`; how many were revoked."""
        with self._sessions.begin() as session:
            result = session.execute(
                update(ApproverCredential)
                .where(ApproverCredential.approver == approver, ApproverCredential.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
            return int(getattr(result, "rowcount", 0) or 0)

    def listing(self) -> list[tuple[str, datetime, datetime | None]]:
        """(approver, issued at, revoked at) of every credential, oldest first; no secrets."""
        with self._sessions.begin() as session:
            rows = session.scalars(select(ApproverCredential).order_by(ApproverCredential.created_at))
            return [(row.approver, row.created_at, row.revoked_at) for row in rows]

    def session(self) -> Session:
        return self._sessions()


@lru_cache(maxsize=4)
def credentials_for(url: str) -> CredentialStore:
    """One store (one engine and pool) per database URL per process."""
    return CredentialStore(make_engine(url))
