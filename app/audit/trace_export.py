"""Export the event log as OpenTelemetry spans over OTLP/HTTP: the log is the outbox.

A reader follows the log in insertion order from a cursor kept in the log's own database, turns
each event into its spans (app/audit/traces.py) and sends them to `OTEL_EXPORTER_OTLP_ENDPOINT`
(or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`). The cursor moves only after the collector accepted
the batch, so nothing is lost to a crash, a restart or an unreachable collector: the reader picks
up where the cursor stands. A crash after the collector accepted a batch and before the cursor
moved sends that batch again; its spans carry the same ids and content (derived from the
events), so a collector sees the same spans, never a second execution.

With several replicas of the agent service, one exports at a time: the cursor row is also a lease
(`holder`, `lease_until`, the holder named by host and port, so a restarted replica takes its own
lease back at once), taken over by another replica only once it has expired. On PostgreSQL, row ids are drawn
before their transactions commit, so a lower id can become visible after a higher one: the reader
stops at such a gap until it fills or has stayed open for `GAP_SECONDS` (an insert rolled back).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import Float, Integer, String, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.audit.event_log import Event, EventStore
from app.audit.traces import SpanRecord, TaskTrace, spans_of

log = logging.getLogger(__name__)

CURSOR_NAME = "otlp-traces"
BATCH_EVENTS = 256
LEASE_SECONDS = 30.0
GAP_SECONDS = 10.0
# Tasks whose trace context is remembered between batches (re-read from the log when forgotten).
REMEMBERED_TASKS = 10_000


class CursorBase(DeclarativeBase):
    pass


class TraceCursor(CursorBase):
    """How far the log has been exported, and which process holds the export until when."""

    __tablename__ = "trace_export_cursor"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_id: Mapped[int] = mapped_column(Integer)
    holder: Mapped[str] = mapped_column(String(200))
    lease_until: Mapped[float] = mapped_column(Float)


def replica_name(port: int) -> str:
    """This replica's name as the lease's holder: the same after a restart (a restarted replica
    goes on exporting at once, not after its own lease expires), another for each replica."""
    return f"{socket.gethostname()}:{port}"


class SpanSink(Protocol):
    """Where spans go: True once the receiver accepted them all (then the cursor moves)."""

    def export(self, spans: Sequence[SpanRecord]) -> bool: ...


@dataclass(frozen=True)
class Endings:
    """What the exporter needs of an agent's machine: its terminal states and failure state."""

    terminal: frozenset[str]
    failure: str | None


@dataclass
class TraceExporter:
    """Follows the event log and exports each event's spans once (see the module docstring)."""

    store: EventStore
    endings: Mapping[str, Endings]
    sink: SpanSink
    holder: str = field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
    )
    batch: int = BATCH_EVENTS
    tasks: dict[tuple[str, str], TaskTrace] = field(default_factory=dict)
    # Gaps in the row ids seen ahead of the cursor, and since when (PostgreSQL only).
    gaps: dict[int, float] = field(default_factory=dict)
    # While this process holds the lease: the cursor, and until when the lease is surely ours.
    held_cursor: int | None = None
    held_until: float = 0.0

    def __post_init__(self) -> None:
        CursorBase.metadata.create_all(self.store.engine)
        self.gap_free = self.store.engine.dialect.name == "sqlite"

    def export_once(self) -> int:
        """Export the next batch if this process holds the lease; the number of events exported."""
        cursor = self._lease()
        if cursor is None:
            return 0
        rows = self._ready(cursor, self.store.rows_after(cursor, self.batch))
        if not rows:
            return 0
        events = [event for _, event in rows]
        spans = self._spans(events)
        if spans and not self.sink.export(spans):
            raise ExportRefused(f"the collector did not accept {len(spans)} spans; retried from the cursor")
        self._advance(rows[-1][0])
        return len(rows)

    def _lease(self) -> int | None:
        """Take or renew the lease; the cursor if this process holds it now, else None. While the
        lease has more than half its time left, no database write: each `_advance` renews it."""
        now = time.time()
        if self.held_cursor is not None and now < self.held_until - LEASE_SECONDS / 2:
            return self.held_cursor
        self.held_cursor = None
        with self.store.session() as session:
            taken = session.execute(
                update(TraceCursor)
                .where(TraceCursor.name == CURSOR_NAME)
                .where((TraceCursor.holder == self.holder) | (TraceCursor.lease_until < now))
                .values(holder=self.holder, lease_until=now + LEASE_SECONDS)
            )
            if taken.rowcount:  # type: ignore[attr-defined]
                cursor = session.scalar(select(TraceCursor.last_id).where(TraceCursor.name == CURSOR_NAME))
                self.held_cursor, self.held_until = cursor, now + LEASE_SECONDS
                return cursor
            exists = session.scalar(select(TraceCursor.name).where(TraceCursor.name == CURSOR_NAME))
        if exists is not None:
            return None
        try:
            with self.store.session() as session:
                session.execute(
                    insert(TraceCursor).values(
                        name=CURSOR_NAME, last_id=0, holder=self.holder, lease_until=now + LEASE_SECONDS
                    )
                )
        except IntegrityError:
            return None  # another replica made it first, and holds it
        self.held_cursor, self.held_until = 0, now + LEASE_SECONDS
        return 0

    def _advance(self, last_id: int) -> None:
        """Move the cursor past the exported batch and renew the lease, if still ours."""
        now = time.time()
        with self.store.session() as session:
            moved = session.execute(
                update(TraceCursor)
                .where(TraceCursor.name == CURSOR_NAME, TraceCursor.holder == self.holder)
                .values(last_id=last_id, lease_until=now + LEASE_SECONDS)
            )
        if moved.rowcount:  # type: ignore[attr-defined]
            self.held_cursor, self.held_until = last_id, now + LEASE_SECONDS
        else:
            self.held_cursor = None  # taken over while this process was stalled

    def _ready(self, cursor: int, rows: list[tuple[int, Event]]) -> list[tuple[int, Event]]:
        """The rows up to the first gap in the ids that may still fill (PostgreSQL)."""
        if self.gap_free:
            return rows
        now, expected, ready = time.time(), cursor + 1, []
        for row_id, event in rows:
            if row_id != expected:
                first_seen = self.gaps.setdefault(expected, now)
                if now - first_seen < GAP_SECONDS:
                    break
            ready.append((row_id, event))
            expected = row_id + 1
        self.gaps = {gap: seen for gap, seen in self.gaps.items() if gap >= expected}
        return ready

    def _spans(self, events: Sequence[Event]) -> list[SpanRecord]:
        """The batch's spans, with each task's trace and each state's entry time looked up."""
        wanted = {(e.agent, e.task_id, e.seq - 1) for e in events if e.seq > 1}
        wanted |= {(e.agent, e.task_id, 1) for e in events if (e.agent, e.task_id) not in self.tasks}
        known = {(e.agent, e.task_id, e.seq): e for e in events}
        known.update(self.store.events_at(wanted - set(known)))
        spans: list[SpanRecord] = []
        for event in events:
            key = (event.agent, event.task_id)
            created = known.get((*key, 1))
            if key not in self.tasks:
                if len(self.tasks) >= REMEMBERED_TASKS:
                    self.tasks.clear()
                self.tasks[key] = (
                    TaskTrace.of_created(created)
                    if created is not None
                    else TaskTrace.of_created(event.model_copy(update={"payload": {}}))
                )
            previous = known.get((*key, event.seq - 1))
            ending = self.endings.get(event.agent, Endings(frozenset(), None))
            spans.extend(
                spans_of(
                    event,
                    self.tasks[key],
                    entered_at=previous.at if previous is not None else None,
                    terminal=event.to_state in ending.terminal,
                    failure=event.to_state == ending.failure,
                )
            )
            if event.to_state in ending.terminal:
                self.tasks.pop(key, None)
        return spans


class ExportRefused(RuntimeError):
    """The collector refused or could not take a batch: it is sent again from the cursor."""


# --- running it in the agent service -----------------------------------------------------------

_wake: asyncio.Event | None = None


def nudge() -> None:
    """New events are in the log: export them now rather than at the next poll (on the loop)."""
    if _wake is not None:
        _wake.set()


async def follow(exporter: TraceExporter, interval: float, stop: asyncio.Event) -> None:
    """Export until `stop`, woken by `nudge` or every `interval` seconds; failures are logged and
    retried (the cursor has not moved); once stopped, what is left is exported one last time."""
    global _wake
    _wake = asyncio.Event()
    failures = 0
    try:
        while not stop.is_set():
            _wake.clear()
            try:
                exported = await asyncio.to_thread(exporter.export_once)
                failures = 0
            except Exception as exc:
                failures += 1
                exported = 0
                if failures == 1 or failures % 60 == 0:
                    log.warning("trace export: %s: %s (retried)", type(exc).__name__, exc)
            if exported >= exporter.batch:
                continue  # more waiting: no pause
            pause = interval if failures == 0 else min(30.0, interval * 2 ** min(failures, 5))
            waits = [asyncio.ensure_future(_wake.wait()), asyncio.ensure_future(stop.wait())]
            try:
                await asyncio.wait(waits, timeout=pause, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()
        await asyncio.to_thread(_drain, exporter)
    finally:
        _wake = None


def _drain(exporter: TraceExporter) -> None:
    try:
        while exporter.export_once() >= exporter.batch:
            pass
    except Exception as exc:
        log.warning("trace export at shutdown: %s: %s (left for the next start)", type(exc).__name__, exc)
