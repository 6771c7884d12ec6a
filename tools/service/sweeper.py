"""Bounded storage: done idempotency keys and delivered outbox rows are deleted after their retention."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from pydantic import BaseModel
from sqlalchemy.orm import Session, sessionmaker

from tools.service.idempotency import IdempotencyStore
from tools.service.outbox import sweep_delivered

log = logging.getLogger(__name__)


class SweepReport(BaseModel):
    """What one sweep deleted, and the cut-off it used."""

    before: datetime
    idempotency_keys: int
    notifications: int


class Sweeper:
    def __init__(
        self,
        store: IdempotencyStore,
        sessions: sessionmaker[Session],
        retention: timedelta,
        clock: Callable[[], datetime],
        interval_seconds: float,
    ) -> None:
        self._store = store
        self._sessions = sessions
        self._retention = retention
        self._clock = clock
        self._interval = interval_seconds

    def sweep_once(self) -> SweepReport:
        before = self._clock() - self._retention
        keys = self._store.sweep(before)
        with self._sessions.begin() as session:
            notifications = sweep_delivered(session, before)
        if keys or notifications:
            log.info(
                "swept %d idempotency keys and %d notifications older than %s", keys, notifications, before
            )
        return SweepReport(before=before, idempotency_keys=keys, notifications=notifications)

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep at start, then every interval, until `stop` (every replica may: deletes are idempotent)."""
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.sweep_once)
            except Exception:  # a database error: the next round tries again
                log.exception("storage sweep failed")
            try:
                await asyncio.wait_for(stop.wait(), timeout=self._interval)
            except TimeoutError:
                pass
