"""Bounded storage: done idempotency keys and delivered outbox rows go after their retention; keys
in flight, fresh keys and undelivered messages stay (SQLite and PostgreSQL)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from starlette.testclient import TestClient

from tests.tools.calls import MovableClock, call_tool, count_rows, store_of
from tools.service.idempotency import IdempotencyKey
from tools.service.outbox import OutboxNotification
from tools.service.sweeper import Sweeper

DAY = 24 * 3600


def notify(client: TestClient, key: str) -> None:
    call_tool(client, "send_notification", {"recipient": "r@example.com", "subject": "s", "body": "b"}, key)


def mark(client: TestClient, status: str, *keys: str) -> None:
    with client.app.state.engine.begin() as connection:  # type: ignore[attr-defined]
        connection.execute(
            update(OutboxNotification)
            .where(OutboxNotification.idempotency_key.in_(keys))
            .values(status=status)
        )


def test_a_sweep_deletes_only_what_is_past_its_retention_and_delivered(
    make_client: Callable[..., TestClient], clock: MovableClock
) -> None:
    client = make_client(IDEMPOTENCY_SWEEP_INTERVAL_SECONDS=0)
    sweeper: Sweeper = client.app.state.sweeper  # type: ignore[attr-defined]
    for key in ("old-sent", "old-dead", "old-queued"):
        notify(client, key)
    mark(client, "sent", "old-sent")
    mark(client, "dead", "old-dead")
    claimed = store_of(client).claim("old-in-flight", "send_notification", "h" * 64)
    assert claimed is not None
    clock.advance(31 * DAY)
    notify(client, "fresh")
    mark(client, "sent", "fresh")

    report = sweeper.sweep_once()

    assert (report.idempotency_keys, report.notifications) == (3, 2)
    remaining = {row.key for row in _keys(client)}
    assert remaining == {"old-in-flight", "fresh"}
    assert count_rows(client, OutboxNotification, status="queued") == 1  # undelivered: kept
    assert count_rows(client, OutboxNotification, status="sent") == 1  # fresh: kept
    assert client.get("/idempotency/old-sent").status_code == 404
    again = sweeper.sweep_once()
    assert (again.idempotency_keys, again.notifications) == (0, 0)


def test_the_retention_is_a_setting(make_client: Callable[..., TestClient], clock: MovableClock) -> None:
    client = make_client(IDEMPOTENCY_RETENTION_DAYS=1, IDEMPOTENCY_SWEEP_INTERVAL_SECONDS=0)
    notify(client, "a-day-old")
    clock.advance(DAY + 60)
    assert client.app.state.sweeper.sweep_once().idempotency_keys == 1  # type: ignore[attr-defined]


def test_the_sweep_command_runs_once_and_reports(database_url: str) -> None:
    env = {"ENV": "development", "DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "tools", "sweep"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert '"idempotency_keys":0' in done.stdout and '"notifications":0' in done.stdout


def _keys(client: TestClient) -> list[IdempotencyKey]:
    with Session(client.app.state.engine) as session:  # type: ignore[attr-defined]
        return list(session.scalars(select(IdempotencyKey)))
