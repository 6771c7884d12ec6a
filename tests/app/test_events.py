"""The event log on SQLite and PostgreSQL: append-once, hash chains, tamper detection, archive."""

from __future__ import annotations

import gzip
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from app.audit.event_log import (
    GENESIS,
    Event,
    EventConflictError,
    EventDraft,
    EventStore,
    archive_finished,
    create_schema,
    event_log_url,
    new_event,
    read_archive,
    verify_store,
)
from common.db import make_engine

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventStore]:
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'events.db'}")
        create_schema(engine)
        yield EventStore(engine)
        engine.dispose()
        return
    name = f"events_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(f"{POSTGRES}/test", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine = make_engine(f"{POSTGRES}/{name}")
    try:
        create_schema(engine)
        yield EventStore(engine)
    finally:
        engine.dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def chain(task_id: str, states: list[str], agent: str = "AgentTask", start: float = 1000.0) -> list[Event]:
    events: list[Event] = []
    previous, from_state = GENESIS, None
    for seq, state in enumerate(states, start=1):
        item = new_event(
            EventDraft(
                agent=agent,
                task_id=task_id,
                seq=seq,
                kind="created" if seq == 1 else "transition",
                from_state=from_state,
                to_state=state,
                at=start + seq,
                payload={"note": f"step {seq}", "produced": {"n": seq}},
                prev_hash=previous,
            )
        )
        events.append(item)
        previous, from_state = item.hash, state
    return events


def write(store: EventStore, events: list[Event]) -> None:
    for item in events:
        assert store.append(item).replayed is False


def tamper(store: EventStore, sql: str) -> None:
    """Edit the log behind the application's back (on PostgreSQL past the trigger, as a superuser)."""
    with store.engine.begin() as connection:
        if store.engine.dialect.name == "postgresql":
            connection.execute(text("ALTER TABLE task_events DISABLE TRIGGER task_events_append_only"))
        connection.execute(text(sql))
        if store.engine.dialect.name == "postgresql":
            connection.execute(text("ALTER TABLE task_events ENABLE TRIGGER task_events_append_only"))


def test_appending_the_same_event_again_is_a_no_op(store: EventStore) -> None:
    events = chain("t-1", ["INITIAL", "FETCH_CONTEXT", "ANALYZE"])
    write(store, events)
    assert store.append(events[1]).replayed is True  # a replay or a retry of the same step
    assert [e.seq for e in store.events("AgentTask", "t-1")] == [1, 2, 3]
    assert verify_store(store).ok


def test_a_batch_of_events_is_written_once_with_its_snapshot_and_again_is_a_no_op(store: EventStore) -> None:
    """How the engine writes: the events a task sealed since its last write, in one transaction,
    retried as often as its journaled step is; the snapshot goes with the last of them."""
    events = chain("t-batch", ["INITIAL", "FETCH_CONTEXT", "ANALYZE", "PLAN"])
    assert store.append_many([]) == 0
    assert store.append_many(events[:2]) == 2
    view = {"state": "PLAN", "n": 4}
    # A retry that overlaps what is written: the written ones are left alone, the rest go in.
    assert store.append_many(events[1:], snapshot=view) == 4
    assert store.append_many(events[1:], snapshot={"state": "other"}) == 4
    assert [e.hash for e in store.events("AgentTask", "t-batch")] == [e.hash for e in events]
    snapshot = store.latest_snapshot("AgentTask", "t-batch")
    assert snapshot is not None and (snapshot.seq, snapshot.state) == (4, "PLAN")
    assert snapshot.event_hash == events[3].hash and '"n":4' in snapshot.view
    # Content that differs from what is stored is refused, and nothing of its batch is written.
    forged = events[3].model_copy(update={"payload": {"note": "rewritten"}}).sealed()
    later = chain("t-batch", ["INITIAL", "FETCH_CONTEXT", "ANALYZE", "PLAN", "EXECUTE"])[4]
    with pytest.raises(EventConflictError):
        store.append_many([forged, later])
    assert len(store.events("AgentTask", "t-batch")) == 4
    assert verify_store(store).ok


def test_an_event_id_never_takes_other_content(store: EventStore) -> None:
    events = chain("t-1", ["INITIAL", "FETCH_CONTEXT"])
    write(store, events)
    forged = events[1].model_copy(update={"payload": {"note": "rewritten"}}).sealed()
    with pytest.raises(EventConflictError):
        store.append(forged)
    assert store.events("AgentTask", "t-1")[1].payload == events[1].payload


def test_verify_catches_an_edited_event(store: EventStore) -> None:
    write(store, chain("t-edit", ["INITIAL", "FETCH_CONTEXT", "ANALYZE", "PLAN"]))
    write(store, chain("t-fine", ["INITIAL", "FETCH_CONTEXT"]))
    tamper(store, "UPDATE task_events SET to_state = 'COMPLETE' WHERE task_id = 't-edit' AND seq = 3")
    report = verify_store(store)
    assert [(b.task_id, b.seq, b.problem) for b in report.broken] == [
        ("t-edit", 3, "content does not match its hash")
    ]


def test_verify_catches_a_deleted_event(store: EventStore) -> None:
    write(store, chain("t-del", ["INITIAL", "FETCH_CONTEXT", "ANALYZE", "PLAN"]))
    tamper(store, "DELETE FROM task_events WHERE task_id = 't-del' AND seq = 2")
    [broken] = verify_store(store).broken
    assert (broken.task_id, broken.seq, broken.problem) == ("t-del", 2, "event 2 missing")


def test_verify_catches_a_rehashed_edit_by_the_broken_link(store: EventStore) -> None:
    events = chain("t-rehash", ["INITIAL", "FETCH_CONTEXT", "ANALYZE"])
    write(store, events)
    # A forger who recomputes the edited event's own hash still breaks the next event's link.
    edited = events[1].model_copy(update={"to_state": "COMPLETE"}).sealed()
    tamper(
        store,
        f"UPDATE task_events SET to_state = 'COMPLETE', hash = '{edited.hash}' "
        "WHERE task_id = 't-rehash' AND seq = 2",
    )
    [broken] = verify_store(store).broken
    assert (broken.seq, broken.problem) == (3, "prev_hash does not link")


def test_postgres_trigger_refuses_update_and_delete(store: EventStore) -> None:
    if store.engine.dialect.name != "postgresql":
        assert store.engine.dialect.name == "sqlite"  # SQLite has no such trigger; verify is its guard
        return
    write(store, chain("t-pg", ["INITIAL", "FETCH_CONTEXT"]))
    for statement in [
        "UPDATE task_events SET kind = 'edited' WHERE task_id = 't-pg'",
        "DELETE FROM task_events WHERE task_id = 't-pg'",
    ]:
        with pytest.raises(DBAPIError, match="append-only"), store.engine.begin() as connection:
            connection.execute(text(statement))
    assert len(store.events("AgentTask", "t-pg")) == 2 and verify_store(store).ok


def test_archive_then_verify_from_the_archive_and_the_kept_head(store: EventStore, tmp_path: Path) -> None:
    write(store, chain("t-done", ["INITIAL", "FETCH_CONTEXT", "COMPLETE"]))
    write(store, chain("t-busy", ["INITIAL", "FETCH_CONTEXT"]))
    terminal = {"AgentTask": frozenset({"COMPLETE", "FAILED"})}
    path, moved = archive_finished(store, terminal, before=10_000.0, directory=tmp_path / "archive")
    assert path is not None and moved == 3
    assert store.events("AgentTask", "t-done") == []
    assert [e.seq for e in read_archive(path, "AgentTask", "t-done")] == [1, 2, 3]
    assert len(store.events("AgentTask", "t-busy")) == 2  # not finished: kept
    report = verify_store(store)
    assert report.ok and report.events == 5 and report.tasks == 2

    # An edit inside the archive file is caught too.
    lines = gzip.open(path, "rt").read().replace('"FETCH_CONTEXT"', '"ANALYZE"', 1)
    with gzip.open(path, "wt") as out:
        out.write(lines)
    assert [b.task_id for b in verify_store(store).broken] == ["t-done"]


def test_only_old_finished_tasks_are_archived(store: EventStore, tmp_path: Path) -> None:
    write(store, chain("t-recent", ["INITIAL", "COMPLETE"], start=5_000.0))
    path, moved = archive_finished(
        store, {"AgentTask": frozenset({"COMPLETE"})}, before=4_000.0, directory=tmp_path / "archive"
    )
    assert (path, moved) == (None, 0)
    assert len(store.events("AgentTask", "t-recent")) == 2


def test_a_sqlite_databases_event_log_has_a_file_of_its_own_and_postgresqls_shares_it() -> None:
    """One write lock per SQLite file: the log beside the tool service's file never queues behind it."""
    assert event_log_url("sqlite:///var/agents.db") == "sqlite:///var/agents.events.db"
    assert event_log_url("sqlite:////tmp/x/bench.sqlite3") == "sqlite:////tmp/x/bench.events.sqlite3"
    assert event_log_url("sqlite:///:memory:") == "sqlite:///:memory:"
    assert event_log_url(f"{POSTGRES}/test") == f"{POSTGRES}/test"
