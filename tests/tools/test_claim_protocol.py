"""The idempotency store's claim protocol under races, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import TypeVar

import pytest
from sqlalchemy.orm import Session, sessionmaker

from common.db import make_engine
from tests.tools.calls import MovableClock
from tools.domains.generic.tickets import Ticket
from tools.service.db import make_session_factory
from tools.service.idempotency import (
    Claimed,
    ClaimLost,
    Completed,
    IdempotencyStore,
    InFlight,
    KeyReused,
    Replay,
    StoredResponse,
    request_hash,
)
from tools.service.schema import create_schema

HASH = request_hash("create_ticket", {"title": "t"})
RACERS = 8
T = TypeVar("T")


@pytest.fixture
def sessions(database_url):
    engine = make_engine(database_url)
    create_schema(engine)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def store(sessions, clock):
    return IdempotencyStore(sessions, timedelta(seconds=30), clock)


def _race(action: Callable[[], T]) -> list[T]:
    """Runs `action` in RACERS threads released at the same instant; returns their results."""
    barrier = threading.Barrier(RACERS)

    def contender(_: int) -> T:
        barrier.wait(timeout=10)
        return action()

    with ThreadPoolExecutor(RACERS) as pool:
        return list(pool.map(contender, range(RACERS)))


def _store_ticket(ticket_id: str) -> Callable[[Session], StoredResponse]:
    def effect(session: Session) -> StoredResponse:
        session.add(
            Ticket(
                ticket_id=ticket_id,
                idempotency_key=ticket_id,
                title="t",
                body="",
                priority="normal",
                requester="r",
                status="open",
                created_at=MovableClock()(),
            )
        )
        return StoredResponse(200, f'{{"ticket_id":"{ticket_id}"}}')

    return effect


def _ticket_count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return session.query(Ticket).count()


def test_concurrent_first_claims_have_exactly_one_winner(store):
    outcomes = _race(lambda: store.claim("k-race", "create_ticket", HASH))

    assert sum(isinstance(outcome, Claimed) for outcome in outcomes) == 1
    assert sum(isinstance(outcome, InFlight) for outcome in outcomes) == RACERS - 1


def test_concurrent_takeovers_of_an_expired_claim_have_exactly_one_winner(store, clock):
    assert isinstance(store.claim("k-takeover", "create_ticket", HASH), Claimed)
    clock.advance(31)

    outcomes = _race(lambda: store.claim("k-takeover", "create_ticket", HASH))

    winners = [outcome for outcome in outcomes if isinstance(outcome, Claimed)]
    assert len(winners) == 1
    assert winners[0].taken_over
    assert sum(isinstance(outcome, InFlight) for outcome in outcomes) == RACERS - 1


def test_only_the_current_holder_completes(store, sessions, clock):
    old = store.claim("k-fence", "create_ticket", HASH)
    clock.advance(31)
    new = store.claim("k-fence", "create_ticket", HASH)
    assert isinstance(old, Claimed) and isinstance(new, Claimed) and new.taken_over

    assert isinstance(store.execute("k-fence", old.claim_token, _store_ticket("TCK-old")), ClaimLost)
    completed = store.execute("k-fence", new.claim_token, _store_ticket("TCK-new"))

    assert completed == Completed(StoredResponse(200, '{"ticket_id":"TCK-new"}'))
    assert _ticket_count(sessions) == 1
    assert store.claim("k-fence", "create_ticket", HASH) == Replay(completed.response)


def test_a_failed_execution_releases_only_its_own_claim(store, sessions):
    claim = store.claim("k-release", "create_ticket", HASH)
    assert isinstance(claim, Claimed)

    def broken(session):
        _store_ticket("TCK-broken")(session)
        session.flush()
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        store.execute("k-release", claim.claim_token, broken)

    assert _ticket_count(sessions) == 0
    assert store.get("k-release") is None
    again = store.claim("k-release", "create_ticket", HASH)
    assert isinstance(again, Claimed) and not again.taken_over
    assert store.release("k-release", claim.claim_token) is False  # a stale token frees nothing
    assert store.get("k-release") is not None


def test_a_different_request_hash_is_key_reuse_whatever_the_status(store):
    claim = store.claim("k-hash", "create_ticket", HASH)
    assert isinstance(store.claim("k-hash", "create_ticket", "0" * 64), KeyReused)

    store.execute("k-hash", claim.claim_token, lambda session: StoredResponse(200, "{}"))

    assert isinstance(store.claim("k-hash", "create_ticket", "0" * 64), KeyReused)
    assert store.claim("k-hash", "create_ticket", HASH) == Replay(StoredResponse(200, "{}"))


def test_retry_after_counts_down_the_lease_but_suggests_a_prompt_retry(store, clock):
    store.claim("k-lease", "create_ticket", HASH)

    fresh = store.claim("k-lease", "create_ticket", HASH)
    clock.advance(29.5)
    nearly_expired = store.claim("k-lease", "create_ticket", HASH)

    assert isinstance(fresh, InFlight) and fresh.retry_after_seconds == 5
    assert isinstance(nearly_expired, InFlight) and nearly_expired.retry_after_seconds == 1


def test_concurrent_completions_through_the_api_path_commit_one_effect(store, sessions, clock):
    """Many processes retry the same key at once after a crash: one effect, the rest wait or replay."""
    store.claim("k-storm", "create_ticket", HASH)  # the crashed holder
    clock.advance(31)

    def retry():
        outcome = store.claim("k-storm", "create_ticket", HASH)
        if isinstance(outcome, Claimed):
            return store.execute("k-storm", outcome.claim_token, _store_ticket("TCK-storm"))
        return outcome

    outcomes = _race(retry)

    assert sum(isinstance(outcome, Completed) for outcome in outcomes) == 1
    assert _ticket_count(sessions) == 1


def test_claim_and_effect_in_one_transaction_commit_one_effect_under_a_race(
    store: IdempotencyStore, sessions: sessionmaker[Session]
) -> None:
    """`run_at_once` (a tool with no slow step): racers with the same key wait for the winner's
    transaction; the losers find the key (None) and the claim path replays the winner's answer."""

    def at_once() -> Completed | None:
        return store.run_at_once("k-once", "create_ticket", HASH, _store_ticket("TCK-once"))

    outcomes = _race(at_once)

    [winner] = [outcome for outcome in outcomes if isinstance(outcome, Completed)]
    assert outcomes.count(None) == RACERS - 1
    assert _ticket_count(sessions) == 1
    assert store.claim("k-once", "create_ticket", HASH) == Replay(winner.response)
    assert isinstance(store.claim("k-once", "create_ticket", "0" * 64), KeyReused)


def test_a_failed_effect_run_at_once_leaves_neither_the_effect_nor_the_key(
    store: IdempotencyStore, sessions: sessionmaker[Session]
) -> None:
    def broken(session: Session) -> StoredResponse:
        _store_ticket("TCK-broken-once")(session)
        session.flush()
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        store.run_at_once("k-once-broken", "create_ticket", HASH, broken)

    assert _ticket_count(sessions) == 0
    assert store.get("k-once-broken") is None
    # Nothing to take over or wait for: the retry runs at once.
    done = store.run_at_once("k-once-broken", "create_ticket", HASH, _store_ticket("TCK-broken-once"))
    assert done == Completed(StoredResponse(200, '{"ticket_id":"TCK-broken-once"}'))
