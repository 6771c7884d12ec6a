"""How the engine gets its events into the log: sealed in the task record, written on the way of
the next journaled call, and never failing that call when the log cannot take them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.audit.event_log import GENESIS, Event, EventDraft, new_event, store_for
from app.runtime.engine import Mark, snapshot_due, write_events_quietly
from app.settings import get_settings
from tests.app.test_engine_keys import record, step_for


def sealed(task_id: str, count: int) -> list[Event]:
    events, previous = [], GENESIS
    for seq in range(1, count + 1):
        item = new_event(
            EventDraft(
                agent="AgentTask",
                task_id=task_id,
                seq=seq,
                kind="transition",
                from_state=None,
                to_state=f"S{seq}",
                at=float(seq),
                payload={"note": str(seq)},
                prev_hash=previous,
            )
        )
        events.append(item)
        previous = item.hash
    return events


@pytest.fixture
def database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """This process's settings pointed at a SQLite file of the test's own."""
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'agents.db'}")
    monkeypatch.setenv("EVENT_SNAPSHOT_EVERY", "3")
    get_settings.cache_clear()
    store_for.cache_clear()
    yield tmp_path
    get_settings.cache_clear()
    store_for.cache_clear()


def test_pending_events_are_written_once_and_reported_up_to_their_last_seq(database: Path) -> None:
    events = sealed("t-quiet", 4)
    assert asyncio.run(write_events_quietly(events[:2])) == 2
    # A retried call writes the same events again: a no-op, the same answer.
    assert asyncio.run(write_events_quietly(events[:3], {"state": "S3"})) == 3
    assert asyncio.run(write_events_quietly([])) == 0
    stored = store_for(get_settings().database_url).events("AgentTask", "t-quiet")
    assert [e.hash for e in stored] == [e.hash for e in events[:3]]
    assert (database / "agents.events.db").exists()


def test_a_log_that_cannot_take_the_events_never_fails_the_call(
    database: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A directory where the log's file should be: every write fails.
    (database / "agents.events.db").mkdir()
    with caplog.at_level(logging.WARNING, logger="app.runtime.engine"):
        assert asyncio.run(write_events_quietly(sealed("t-down", 2))) == 0
    assert "AgentTask/t-down: events 1-2 not written to the log yet (kept, retried later)" in caplog.text


def test_a_step_keeps_only_the_events_no_call_has_reported_written() -> None:
    rec = record("t-step", [(None, "INITIAL"), ("INITIAL", "FETCH_CONTEXT")])
    rec = rec.model_copy(update={"unlogged": sealed("t-step", 3)})
    step = step_for(rec)
    assert [e.seq for e in step.pending_events()] == [1, 2, 3]
    step.marked(Mark(at=10.0, logged=2))
    step.marked(Mark(at=11.0, logged=0))  # a later call whose write failed keeps what was known
    assert [e.seq for e in step.pending_events()] == [3] and step.ended_at == 11.0


def test_snapshots_go_with_an_ending_and_with_every_nth_event(database: Path) -> None:
    events = sealed("t-snap", 7)
    assert not snapshot_due([], terminal=True)
    assert not snapshot_due(events[3:5], terminal=False)  # seqs 4, 5
    assert snapshot_due(events[4:6], terminal=False)  # seq 6: every third
    assert snapshot_due(events[6:], terminal=True)
