"""The one database module both services use: engines with the same SQLite and PostgreSQL settings.

SQLite (the zero-set-up default) and PostgreSQL (production, CI) must behave the same for the
idempotency protocol and the event log, so the SQLite engine takes the write lock at BEGIN: two
transactions that read a row and then write it serialise, never fail half-way. Each service keeps
its own tables (its own declarative base); they may share one database file or server.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Engine, create_engine, event, make_url
from sqlalchemy.engine import URL, Dialect
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.types import TypeDecorator

# A writer waits this long for SQLite's lock (both services and the CLI share one file).
SQLITE_BUSY_TIMEOUT_MS = 10_000


def utc_now() -> datetime:
    """The service clock: timezone-aware UTC, the only kind of datetime the tables accept."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python, whatever the database.

    PostgreSQL stores `timestamptz`; SQLite has no time zones, so the value is stored as naive UTC
    and made aware again on the way out. Comparisons in SQL (lease expiry) then see one format.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass a timezone-aware UTC datetime")
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def normalize_database_url(database_url: str) -> URL:
    """Parse the URL, mapping plain PostgreSQL URLs to the psycopg 3 driver we ship."""
    url = make_url(database_url)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def make_engine(database_url: str) -> Engine:
    """An engine for the URL; for a SQLite file, also creates the file's directory."""
    url = normalize_database_url(database_url)
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)

    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False})
    _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: Engine) -> None:
    # WAL lets readers proceed while one writer commits; busy_timeout makes a second writer wait
    # for the lock instead of failing at once with "database is locked".
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Take transaction control away from the sqlite3 module (which would BEGIN lazily, and
        # not at all before a SELECT) so the "begin" hook below decides how a transaction starts.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    # BEGIN IMMEDIATE takes the write lock up front. With a deferred BEGIN, a transaction that
    # reads the idempotency row and then updates it can fail with SQLITE_BUSY_SNAPSHOT when another
    # writer committed in between, and busy_timeout cannot help; taking the lock first serialises
    # writers the way PostgreSQL's row locks do.
    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
