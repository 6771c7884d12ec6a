"""The immutable event log: one append-only, hash-chained row per task transition.

Restate's journal is purged after its retention; this log is the audit record that outlives it.
The engine seals each event in the handler (its hash over journaled values), keeps it in the task
record and writes it inside a journaled step (`append_many`), under a deterministic event id (task +
seq) and a unique constraint, so a replay or a retry writes nothing twice and never reorders: a
second write of the same event finds it and checks its hash. Each event carries the hash of
the previous event of its task, so an edited or deleted event breaks the chain and `verify`
names the first broken link; on PostgreSQL a trigger also refuses UPDATE and DELETE outright.
Every N events a snapshot of the task's view is written, so reading the latest state of a task
never scans its history. Events hold what a step decided (the fields it produced, the outcome),
never prompts, raw model exchanges or secrets.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlalchemy import (
    Engine,
    Float,
    Integer,
    String,
    Text,
    UniqueConstraint,
    and_,
    delete,
    func,
    not_,
    select,
    text,
    tuple_,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from common.db import make_engine, normalize_database_url

GENESIS = "0" * 64


class EventBase(DeclarativeBase):
    pass


class TaskEvent(EventBase):
    __tablename__ = "task_events"
    __table_args__ = (UniqueConstraint("agent", "task_id", "seq", name="uq_task_events_task_seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(400), unique=True)
    agent: Mapped[str] = mapped_column(String(64), index=True)
    task_id: Mapped[str] = mapped_column(String(300), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))
    from_state: Mapped[str | None] = mapped_column(String(64))
    to_state: Mapped[str] = mapped_column(String(64))
    at: Mapped[float] = mapped_column(Float)
    payload: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class TaskSnapshot(EventBase):
    """The task's view as of event `seq`: the starting point for reading a task's state."""

    __tablename__ = "task_snapshots"
    __table_args__ = (UniqueConstraint("agent", "task_id", "seq", name="uq_task_snapshots_task_seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    agent: Mapped[str] = mapped_column(String(64), index=True)
    task_id: Mapped[str] = mapped_column(String(300), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(64))
    view: Mapped[str] = mapped_column(Text)
    event_hash: Mapped[str] = mapped_column(String(64))


class ChainHead(EventBase):
    """What archiving leaves behind for a task: the last archived event's seq and hash."""

    __tablename__ = "task_chain_heads"

    agent: Mapped[str] = mapped_column(String(64), primary_key=True)
    task_id: Mapped[str] = mapped_column(String(300), primary_key=True)
    archived_seq: Mapped[int] = mapped_column(Integer)
    archived_hash: Mapped[str] = mapped_column(String(64))
    archive_file: Mapped[str] = mapped_column(Text)


class EventDraft(BaseModel):
    """An event before it is sealed: what the engine decides, from journaled values only."""

    agent: str
    task_id: str
    seq: int
    kind: str
    from_state: str | None
    to_state: str
    at: float
    payload: dict[str, Any]
    prev_hash: str


class Event(EventDraft):
    """One sealed event: its id and the hash over its content (which includes the previous hash)."""

    event_id: str
    hash: str = ""

    def content(self) -> dict[str, Any]:
        return self.model_dump(exclude={"hash"})

    def sealed(self) -> Event:
        return self.model_copy(update={"hash": event_hash(self.content())})


class Appended(BaseModel):
    event_id: str
    hash: str
    replayed: bool


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def event_hash(content: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(content).encode()).hexdigest()


def new_event(draft: EventDraft) -> Event:
    """Seal a draft: inside the engine's journaled step, so its hash is journaled with it."""
    return Event(event_id=f"{draft.agent}/{draft.task_id}#{draft.seq}", **draft.model_dump()).sealed()


# --- the store ---------------------------------------------------------------------------------

IMMUTABLE_TRIGGER = """
CREATE OR REPLACE FUNCTION task_events_append_only() RETURNS trigger AS $$
BEGIN
    -- Only the archive command, which moves events into verified files, may delete.
    IF TG_OP = 'DELETE' AND current_setting('agents.archiving', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'task_events is append-only: % refused', TG_OP;
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS task_events_append_only ON task_events;
CREATE TRIGGER task_events_append_only BEFORE UPDATE OR DELETE ON task_events
    FOR EACH ROW EXECUTE FUNCTION task_events_append_only();
"""


def create_schema(engine: Engine) -> None:
    EventBase.metadata.create_all(engine)
    if engine.dialect.name == "postgresql":
        with engine.begin() as connection:
            connection.execute(text(IMMUTABLE_TRIGGER))


@dataclass
class EventStore:
    engine: Engine

    def __post_init__(self) -> None:
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessions() as session, session.begin():
            yield session

    def append(self, item: Event, snapshot: dict[str, Any] | None = None) -> Appended:
        """One event (and its snapshot), as `append_many` writes it, saying whether it was there."""
        written = self.write([item], snapshot)
        return Appended(event_id=item.event_id, hash=item.hash, replayed=not written)

    def append_many(self, items: Sequence[Event], snapshot: dict[str, Any] | None = None) -> int:
        """Write a task's events in one transaction, with a snapshot of its view as of the last of
        them if given; returns the highest seq now in the log (0 for none)."""
        self.write(items, snapshot)
        return items[-1].seq if items else 0

    def write(self, items: Sequence[Event], snapshot: dict[str, Any] | None = None) -> list[Event]:
        """Insert the events not yet stored, in one transaction; returns those it inserted. Events
        already there are checked by hash and left alone, so a retried write is a no-op; one stored
        with other content is refused (the log never changes). The snapshot goes with the last
        event, if that one is new."""
        if not items:
            return []
        ids = [item.event_id for item in items]
        written: list[Event] = []
        with self.session() as session:
            stored = dict(
                session.execute(
                    select(TaskEvent.event_id, TaskEvent.hash).where(TaskEvent.event_id.in_(ids))
                ).all()
            )
            for item in items:
                if item.event_id in stored:
                    if stored[item.event_id] != item.hash:
                        raise EventConflictError(
                            f"event {item.event_id} exists with other content: the log refuses to change it"
                        )
                    continue
                session.add(_row_of(item))
                written.append(item)
                if snapshot is not None and item is items[-1]:
                    session.add(_snapshot_of(item, snapshot))
        return written

    def events(self, agent: str, task_id: str) -> list[Event]:
        with self.session() as session:
            rows = session.scalars(
                select(TaskEvent)
                .where(TaskEvent.agent == agent, TaskEvent.task_id == task_id)
                .order_by(TaskEvent.seq)
            ).all()
        return [_event_of(row) for row in rows]

    def chain(self, agent: str, task_id: str) -> list[Event]:
        """A task's whole chain: its archived events (if archived; OSError if the archive cannot
        be read) and the ones still in the database."""
        kept = self.events(agent, task_id)
        head = self.head(agent, task_id)
        if head is None:
            return kept
        return [*read_archive(Path(head.archive_file), agent, task_id), *kept]

    def tasks(self) -> list[tuple[str, str]]:
        with self.session() as session:
            pairs = session.execute(select(TaskEvent.agent, TaskEvent.task_id).distinct()).all()
            heads = session.execute(select(ChainHead.agent, ChainHead.task_id)).all()
        return sorted({(a, t) for a, t in pairs} | {(a, t) for a, t in heads})

    def latest_snapshot(self, agent: str, task_id: str, at_most: int | None = None) -> TaskSnapshot | None:
        with self.session() as session:
            query = select(TaskSnapshot).where(TaskSnapshot.agent == agent, TaskSnapshot.task_id == task_id)
            if at_most is not None:
                query = query.where(TaskSnapshot.seq <= at_most)
            return session.scalar(query.order_by(TaskSnapshot.seq.desc()).limit(1))

    def head(self, agent: str, task_id: str) -> ChainHead | None:
        with self.session() as session:
            return session.get(ChainHead, (agent, task_id))

    def cursor(self) -> int:
        """How far the log has been written (its highest row id; 0 when empty): what a reader
        that follows the log remembers, to ask `moves_since` what happened after."""
        with self.session() as session:
            return session.scalar(select(func.max(TaskEvent.id))) or 0

    def moves_since(self, cursor: int, limit: int = 100) -> list[TaskMove]:
        with self.session() as session:
            rows = session.execute(
                select(TaskEvent.id, TaskEvent.agent, TaskEvent.task_id, TaskEvent.to_state)
                .where(TaskEvent.id > cursor)
                .order_by(TaskEvent.id)
                .limit(limit)
            ).all()
        return [
            TaskMove(cursor=row.id, agent=row.agent, task_id=row.task_id, state=row.to_state) for row in rows
        ]

    def rows_after(self, cursor: int, limit: int) -> list[tuple[int, Event]]:
        """The events inserted after row id `cursor`, in insertion order, each with its row id:
        what a reader that exports the log (app/audit/trace_export.py) takes next."""
        with self.session() as session:
            rows = session.scalars(
                select(TaskEvent).where(TaskEvent.id > cursor).order_by(TaskEvent.id).limit(limit)
            ).all()
        return [(row.id, _event_of(row)) for row in rows]

    def events_at(self, keys: Collection[tuple[str, str, int]]) -> dict[tuple[str, str, int], Event]:
        """The events at these (agent, task id, seq) keys that the log still holds."""
        if not keys:
            return {}
        with self.session() as session:
            rows = session.scalars(
                select(TaskEvent).where(tuple_(TaskEvent.agent, TaskEvent.task_id, TaskEvent.seq).in_(keys))
            ).all()
        return {(row.agent, row.task_id, row.seq): _event_of(row) for row in rows}

    def state_counts(self) -> list[tuple[str, str, int]]:
        """How many tasks are in each state, by agent, as of each task's last logged event."""
        last = (
            select(TaskEvent.agent, TaskEvent.task_id, func.max(TaskEvent.seq).label("last_seq"))
            .group_by(TaskEvent.agent, TaskEvent.task_id)
            .subquery()
        )
        query = (
            select(TaskEvent.agent, TaskEvent.to_state, func.count())
            .join(
                last,
                and_(
                    TaskEvent.agent == last.c.agent,
                    TaskEvent.task_id == last.c.task_id,
                    TaskEvent.seq == last.c.last_seq,
                ),
            )
            .group_by(TaskEvent.agent, TaskEvent.to_state)
        )
        with self.session() as session:
            return [(agent, state, int(count)) for agent, state, count in session.execute(query).all()]

    def heads(self, selection: HeadSelection) -> tuple[int, list[TaskHead]]:
        """The tasks `selection` picks, each as of its last event, newest task first: how many
        match in all, and the page `selection.offset`, `selection.limit` of them."""
        per_task = (
            select(
                TaskEvent.agent,
                TaskEvent.task_id,
                func.min(TaskEvent.at).label("created_at"),
                func.max(TaskEvent.seq).label("last_seq"),
                func.count().label("events"),
            )
            .group_by(TaskEvent.agent, TaskEvent.task_id)
            .subquery()
        )
        last = TaskEvent
        joined = select(per_task, last.to_state, last.at, last.payload).join(
            last,
            and_(
                last.agent == per_task.c.agent,
                last.task_id == per_task.c.task_id,
                last.seq == per_task.c.last_seq,
            ),
        )
        conditions = list(selection.conditions(per_task.c.agent, per_task.c.task_id, last.to_state))
        if conditions:
            joined = joined.where(*conditions)
        with self.session() as session:
            total = session.scalar(select(func.count()).select_from(joined.subquery())) or 0
            rows = session.execute(
                joined.order_by(per_task.c.created_at.desc(), per_task.c.agent, per_task.c.task_id)
                .offset(selection.offset)
                .limit(selection.limit)
            ).all()
        return total, [
            TaskHead(
                agent=row.agent,
                task_id=row.task_id,
                state=row.to_state,
                created_at=row.created_at,
                updated_at=row.at,
                events=row.events,
                last_payload=json.loads(row.payload),
            )
            for row in rows
        ]


@dataclass(frozen=True)
class HeadSelection:
    """Which tasks `EventStore.heads` lists. States and tasks are (agent, name) pairs: a state
    name means something only within its agent's machine."""

    agent: str | None = None
    # A substring of the task id.
    search: str | None = None
    states: Collection[tuple[str, str]] | None = None
    not_states: Collection[tuple[str, str]] = ()
    tasks: Collection[tuple[str, str]] | None = None
    not_tasks: Collection[tuple[str, str]] = ()
    offset: int = 0
    limit: int = 50

    def conditions(self, agent: Any, task_id: Any, state: Any) -> Iterator[Any]:
        if self.agent is not None:
            yield agent == self.agent
        if self.search:
            yield task_id.contains(self.search, autoescape=True)
        if self.states is not None:
            yield tuple_(agent, state).in_(list(self.states)) if self.states else text("1 = 0")
        if self.not_states:
            yield not_(tuple_(agent, state).in_(list(self.not_states)))
        if self.tasks is not None:
            yield tuple_(agent, task_id).in_(list(self.tasks)) if self.tasks else text("1 = 0")
        if self.not_tasks:
            yield not_(tuple_(agent, task_id).in_(list(self.not_tasks)))


class TaskMove(BaseModel):
    """One event as a follower of the log sees it: which task went where."""

    cursor: int
    agent: str
    task_id: str
    state: str


class TaskHead(BaseModel):
    """A task as of its last logged event (the log is written with the step after a transition,
    so a task that is between two steps may show the state it is leaving)."""

    agent: str
    task_id: str
    state: str
    created_at: float
    updated_at: float
    events: int
    last_payload: dict[str, Any]


class EventConflictError(RuntimeError):
    """An event id already holds different content: someone edited the log, or code diverged."""


def _row_of(item: Event) -> TaskEvent:
    return TaskEvent(
        event_id=item.event_id,
        agent=item.agent,
        task_id=item.task_id,
        seq=item.seq,
        kind=item.kind,
        from_state=item.from_state,
        to_state=item.to_state,
        at=item.at,
        payload=canonical(item.payload),
        prev_hash=item.prev_hash,
        hash=item.hash,
    )


def _snapshot_of(item: Event, snapshot: dict[str, Any]) -> TaskSnapshot:
    return TaskSnapshot(
        agent=item.agent,
        task_id=item.task_id,
        seq=item.seq,
        state=item.to_state,
        view=canonical(snapshot),
        event_hash=item.hash,
    )


def _event_of(row: TaskEvent) -> Event:
    return Event(
        event_id=row.event_id,
        agent=row.agent,
        task_id=row.task_id,
        seq=row.seq,
        kind=row.kind,
        from_state=row.from_state,
        to_state=row.to_state,
        at=row.at,
        payload=json.loads(row.payload),
        prev_hash=row.prev_hash,
        hash=row.hash,
    )


def event_log_url(database_url: str) -> str:
    """Where the event log of the database at `database_url` lives. Beside a SQLite file, in a file
    of its own (`agents.db` -> `agents.events.db`): SQLite has one write lock per file, and the
    log's commits would otherwise queue behind the tool service's (and its behind theirs). In a
    PostgreSQL database, in that database: row locks do not contend."""
    url = normalize_database_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return database_url
    path = Path(url.database)
    return url.set(database=str(path.with_name(f"{path.stem}.events{path.suffix}"))).render_as_string(
        hide_password=False
    )


@lru_cache(maxsize=4)
def store_for(database_url: str) -> EventStore:
    """The event log of the database at `database_url` (see `event_log_url`): one store (one engine
    and pool) per URL per process; the schema is made once."""
    engine = make_engine(event_log_url(database_url))
    create_schema(engine)
    return EventStore(engine)


# --- verification ------------------------------------------------------------------------------


class Broken(BaseModel):
    """The first broken link of a task's chain."""

    agent: str
    task_id: str
    seq: int
    problem: str


class VerifyReport(BaseModel):
    tasks: int
    events: int
    broken: list[Broken]

    @property
    def ok(self) -> bool:
        return not self.broken


def verify_chain(
    agent: str, task_id: str, events: Sequence[Event], start_seq: int = 1, start_hash: str = GENESIS
) -> Broken | None:
    """Walk one chain from (start_seq, start_hash): every hash recomputed, every link and seq checked."""
    expected_seq, previous = start_seq, start_hash
    for item in events:
        if item.seq != expected_seq:
            missing = "missing" if item.seq > expected_seq else "repeated"
            return Broken(
                agent=agent, task_id=task_id, seq=expected_seq, problem=f"event {expected_seq} {missing}"
            )
        if item.prev_hash != previous:
            return Broken(agent=agent, task_id=task_id, seq=item.seq, problem="prev_hash does not link")
        if event_hash(item.content()) != item.hash:
            return Broken(
                agent=agent, task_id=task_id, seq=item.seq, problem="content does not match its hash"
            )
        expected_seq, previous = item.seq + 1, item.hash
    return None


def verify_store(store: EventStore, archive_dir: Path | None = None) -> VerifyReport:
    """Verify every task's chain: from the archive (when one exists) through the kept events."""
    broken: list[Broken] = []
    total = 0
    tasks = store.tasks()
    for agent, task_id in tasks:
        kept = store.events(agent, task_id)
        head = store.head(agent, task_id)
        start_seq, start_hash = 1, GENESIS
        if head is not None:
            archived = read_archive(Path(head.archive_file), agent, task_id)
            total += len(archived)
            problem = verify_chain(agent, task_id, archived)
            if problem is None and (not archived or archived[-1].hash != head.archived_hash):
                problem = Broken(
                    agent=agent, task_id=task_id, seq=head.archived_seq, problem="archive head differs"
                )
            if problem is not None:
                broken.append(problem)
                continue
            start_seq, start_hash = head.archived_seq + 1, head.archived_hash
        total += len(kept)
        problem = verify_chain(agent, task_id, kept, start_seq, start_hash)
        if problem is not None:
            broken.append(problem)
    return VerifyReport(tasks=len(tasks), events=total, broken=broken)


# --- archiving ---------------------------------------------------------------------------------


def read_archive(path: Path, agent: str, task_id: str) -> list[Event]:
    items: list[Event] = []
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            item = Event.model_validate_json(line)
            if item.agent == agent and item.task_id == task_id:
                items.append(item)
    return sorted(items, key=lambda e: e.seq)


def archive_finished(
    store: EventStore, terminal_states: dict[str, frozenset[str]], before: float, directory: Path
) -> tuple[Path | None, int]:
    """Move the events of finished tasks whose last event is older than `before` into one gzipped
    JSON Lines file, keeping per task the chain head (last seq and hash) so the chain stays
    verifiable from the archive plus what is kept. Returns the file (None if nothing) and count."""
    candidates: list[tuple[str, str, list[Event]]] = []
    for agent, task_id in store.tasks():
        items = store.events(agent, task_id)
        if not items or store.head(agent, task_id) is not None:
            continue
        last = items[-1]
        if last.to_state in terminal_states.get(agent, frozenset()) and last.at < before:
            candidates.append((agent, task_id, items))
    if not candidates:
        return None, 0
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = directory / f"events-{stamp}.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as out:
        for _, _, items in candidates:
            for item in items:
                out.write(item.model_dump_json() + "\n")
    moved = 0
    with store.session() as session:
        if store.engine.dialect.name == "postgresql":
            session.execute(text("SET LOCAL agents.archiving = 'on'"))
        for agent, task_id, items in candidates:
            session.add(
                ChainHead(
                    agent=agent,
                    task_id=task_id,
                    archived_seq=items[-1].seq,
                    archived_hash=items[-1].hash,
                    archive_file=str(path.resolve()),
                )
            )
            session.execute(delete(TaskEvent).where(TaskEvent.agent == agent, TaskEvent.task_id == task_id))
            moved += len(items)
    return path, moved
