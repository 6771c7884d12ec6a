"""The idempotency store: each Idempotency-Key with the hash of its request and the response given.

Semantics follow the IETF Idempotency-Key draft and Stripe:

* the first request with a key claims it (an `in_flight` row, committed on its own) and runs;
* a retry with the same key and the same request replays the stored response;
* the same key with a different request is refused (422): a key names one request;
* the same key while the first request is still running is refused (409, retry later);
* a claim whose lease has expired belongs to a holder presumed dead, and the next retry takes
  it over.

Why this is exactly-once: the tool's effect and the `done` mark (with the response) commit in ONE
transaction, conditional on still holding the claim. A process killed between the claim and that
commit leaves an `in_flight` row and no effect; after the lease, a retry takes the claim over
and acts once. Two takers cannot both win: a takeover is an UPDATE conditional on the old claim
token, and completion re-checks the token under a row lock.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import CursorResult, String, Text, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from common.db import UTCDateTime, utc_now
from tools.service.db import Base

MAX_KEY_LENGTH = 255
# A client of the expense portal chooses its own keys: they are stored under this prefix, so they
# can never name, or squat, a key of the agent service (whose keys are stored as they are and may
# not start with it).
PORTAL_KEY_PREFIX = "expenses:"


def portal_key(key: str) -> str:
    """The stored form of a key an expense portal chose for `POST /expenses`."""
    return PORTAL_KEY_PREFIX + key


# A 409 suggests retrying after the remaining lease, but at most this long: the first request
# usually finishes well before its lease, and its response is replayable as soon as it does.
MAX_RETRY_AFTER_SECONDS = 5
# Each claim attempt ends in a decision unless it races with a concurrent release or takeover;
# a handful of attempts is plenty, and the bound turns a livelock into an error.
MAX_CLAIM_ATTEMPTS = 5


class KeyStatus(enum.StrEnum):
    IN_FLIGHT = "in_flight"
    DONE = "done"


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"

    key: Mapped[str] = mapped_column(String(MAX_KEY_LENGTH), primary_key=True)
    tool_name: Mapped[str] = mapped_column(String(100))
    request_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    # A fencing token: whoever holds the current token may complete; a new token means the claim
    # was taken over and the old holder's work must roll back.
    claim_token: Mapped[str] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    response_status: Mapped[int | None]
    response_body: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


def canonical_json(value: Any) -> str:
    """One text per JSON value, whatever the key order or spacing of the request."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def request_hash(tool_name: str, body: Mapping[str, Any]) -> str:
    """sha256 of the tool name and the canonical JSON body: what "the same request" means."""
    text = f"{tool_name}\n{canonical_json(body)}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class StoredResponse:
    """A response as stored and replayed: the status code and the exact body text."""

    status_code: int
    body: str


# --- what a claim can come to ---------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    """This request holds the key and must execute (then complete) with `claim_token`."""

    claim_token: str
    taken_over: bool


@dataclass(frozen=True)
class Replay:
    """The key is done: answer with the stored response."""

    response: StoredResponse


@dataclass(frozen=True)
class KeyReused:
    """The key was used for a different request (tool or body)."""


@dataclass(frozen=True)
class InFlight:
    """Another request holds the key and its lease is live."""

    retry_after_seconds: int
    lease_expires_at: datetime | None


ClaimOutcome = Claimed | Replay | KeyReused | InFlight


@dataclass(frozen=True)
class Completed:
    response: StoredResponse


@dataclass(frozen=True)
class ClaimLost:
    """The claim was taken over before completion; nothing of this execution was committed."""


ExecuteOutcome = Completed | ClaimLost


class IdempotencyRecord(BaseModel):
    """A key's row as the read-only inspection endpoint shows it (no response body, no token)."""

    key: str
    tool_name: str
    status: KeyStatus
    response_status: int | None
    lease_expires_at: datetime
    created_at: datetime
    completed_at: datetime | None


class _LostClaim(Exception):
    """Raised inside the completion transaction to roll it back."""


class IdempotencyStore:
    """The claim / execute-and-complete / release protocol over the `idempotency_keys` table.

    Every method is blocking (database I/O): the API calls them in a worker thread.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        lease: timedelta,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._sessions = sessions
        self._lease = lease
        self._clock = clock

    def claim(self, key: str, tool_name: str, request_hash: str) -> ClaimOutcome:
        """Claim the key for this request, in its own committed transaction, or say why not."""
        for _ in range(MAX_CLAIM_ATTEMPTS):
            now = self._clock()
            token = secrets.token_hex(16)
            try:
                with self._sessions.begin() as session:
                    session.add(
                        IdempotencyKey(
                            key=key,
                            tool_name=tool_name,
                            request_hash=request_hash,
                            status=KeyStatus.IN_FLIGHT,
                            claim_token=token,
                            lease_expires_at=now + self._lease,
                            created_at=now,
                        )
                    )
            except IntegrityError:
                pass  # the key exists: decide below
            else:
                return Claimed(claim_token=token, taken_over=False)

            with self._sessions.begin() as session:
                row = session.get(IdempotencyKey, key)
                if row is None:
                    continue  # released between our insert and this read: claim afresh
                outcome = self._decide(row, request_hash, now)
                if outcome is not None:
                    return outcome
                # The holder's lease expired: take over, unless someone else just did.
                taken = session.execute(
                    update(IdempotencyKey)
                    .where(
                        IdempotencyKey.key == key,
                        IdempotencyKey.claim_token == row.claim_token,
                        IdempotencyKey.status == KeyStatus.IN_FLIGHT,
                    )
                    .values(claim_token=token, lease_expires_at=now + self._lease)
                    .execution_options(synchronize_session=False)
                )
                if _rowcount(taken) == 1:
                    return Claimed(claim_token=token, taken_over=True)
            # Lost the takeover race: the next attempt sees the winner's live lease.
        raise RuntimeError(f"could not settle a claim on Idempotency-Key {key!r}")

    def execute(
        self, key: str, claim_token: str, effect: Callable[[Session], StoredResponse]
    ) -> ExecuteOutcome:
        """Run `effect` and mark the key done with its response, in one transaction.

        `effect` does its writes in the session it is given and never commits. If the claim was
        taken over, nothing commits and ClaimLost is returned. If `effect` raises, its writes roll
        back, the claim is released (so a retry can run at once) and the exception propagates.
        """
        try:
            with self._sessions.begin() as session:
                # Lock the key row first: a concurrent takeover waits for this transaction and
                # then finds the token changed or the key done, so at most one effect commits.
                row = session.execute(
                    select(IdempotencyKey).where(IdempotencyKey.key == key).with_for_update()
                ).scalar_one_or_none()
                if row is None or row.claim_token != claim_token or row.status != KeyStatus.IN_FLIGHT:
                    raise _LostClaim
                response = effect(session)
                completed = session.execute(
                    update(IdempotencyKey)
                    .where(
                        IdempotencyKey.key == key,
                        IdempotencyKey.claim_token == claim_token,
                        IdempotencyKey.status == KeyStatus.IN_FLIGHT,
                    )
                    .values(
                        status=KeyStatus.DONE,
                        response_status=response.status_code,
                        response_body=response.body,
                        completed_at=self._clock(),
                    )
                    .execution_options(synchronize_session=False)
                )
                if _rowcount(completed) != 1:
                    raise _LostClaim
        except _LostClaim:
            return ClaimLost()
        except Exception:
            self.release(key, claim_token)
            raise
        return Completed(response)

    def run_at_once(
        self, key: str, tool_name: str, request_hash: str, effect: Callable[[Session], StoredResponse]
    ) -> Completed | None:
        """Claim the key, run `effect` and mark it done, all in ONE transaction; None if the key
        already exists (the caller then goes through `claim`, which says what it holds).

        For a tool whose whole work is `effect` (no slow step between claim and effect): nothing
        can be left half-done, since a crash before the commit leaves neither the key nor the effect,
        and a concurrent request with the same key waits for this transaction's lock and then finds
        the key. It saves the claim's own commit, one of the two a call costs otherwise. If `effect`
        raises, everything rolls back and the exception propagates.
        """
        now = self._clock()
        with self._sessions.begin() as session:
            row = IdempotencyKey(
                key=key,
                tool_name=tool_name,
                request_hash=request_hash,
                status=KeyStatus.IN_FLIGHT,
                claim_token=secrets.token_hex(16),
                lease_expires_at=now + self._lease,
                created_at=now,
            )
            try:
                with session.begin_nested():
                    session.add(row)
            except IntegrityError:
                return None
            response = effect(session)
            row.status = KeyStatus.DONE
            row.response_status = response.status_code
            row.response_body = response.body
            row.completed_at = self._clock()
        return Completed(response)

    def release(self, key: str, claim_token: str) -> bool:
        """Give up an in-flight claim (the execution failed unexpectedly) so a retry runs again.

        Only our own claim is deleted: if it was taken over, the new holder's row stays.
        """
        with self._sessions.begin() as session:
            deleted = session.execute(
                delete(IdempotencyKey)
                .where(
                    IdempotencyKey.key == key,
                    IdempotencyKey.claim_token == claim_token,
                    IdempotencyKey.status == KeyStatus.IN_FLIGHT,
                )
                .execution_options(synchronize_session=False)
            )
            return _rowcount(deleted) == 1

    def sweep(self, completed_before: datetime, batch: int = 1000) -> int:
        """Delete done keys completed before `completed_before`, `batch` rows per transaction.

        Safe once no caller can still retry those calls: the agent service journals each result,
        so only a step whose answer was lost in a crash ever retries, within minutes or hours, not
        after the retention (30 days by default). In-flight keys are never swept.
        """
        swept = 0
        while True:
            with self._sessions.begin() as session:
                keys = session.scalars(
                    select(IdempotencyKey.key)
                    .where(
                        IdempotencyKey.status == KeyStatus.DONE,
                        IdempotencyKey.completed_at < completed_before,
                    )
                    .limit(batch)
                ).all()
                if keys:
                    session.execute(
                        delete(IdempotencyKey)
                        .where(IdempotencyKey.key.in_(keys), IdempotencyKey.status == KeyStatus.DONE)
                        .execution_options(synchronize_session=False)
                    )
            swept += len(keys)
            if len(keys) < batch:
                return swept

    def current_outcome(self, key: str, request_hash: str) -> Replay | KeyReused | InFlight:
        """What a request that lost its claim should answer, without claiming anything."""
        now = self._clock()
        with self._sessions.begin() as session:
            row = session.get(IdempotencyKey, key)
            outcome = None if row is None else self._decide(row, request_hash, now)
        # No row (the new holder failed and released) or an expired lease: retry now.
        return outcome or InFlight(retry_after_seconds=1, lease_expires_at=None)

    def get(self, key: str) -> IdempotencyRecord | None:
        with self._sessions.begin() as session:
            row = session.get(IdempotencyKey, key)
            return None if row is None else IdempotencyRecord.model_validate(row, from_attributes=True)

    def _decide(
        self, row: IdempotencyKey, request_hash: str, now: datetime
    ) -> Replay | KeyReused | InFlight | None:
        """The answer for an existing key, or None when its in-flight lease has expired."""
        if row.request_hash != request_hash:
            return KeyReused()
        if row.status == KeyStatus.DONE:
            assert row.response_status is not None and row.response_body is not None
            return Replay(StoredResponse(status_code=row.response_status, body=row.response_body))
        if row.lease_expires_at > now:
            remaining = (row.lease_expires_at - now).total_seconds()
            retry_after = max(1, min(MAX_RETRY_AFTER_SECONDS, math.ceil(remaining)))
            return InFlight(retry_after_seconds=retry_after, lease_expires_at=row.lease_expires_at)
        return None


def _rowcount(result: Any) -> int:
    # DML through Session.execute returns a CursorResult, which carries the affected row count.
    assert isinstance(result, CursorResult)
    return result.rowcount
