"""What an operator asks the task index for, and the small formats its answers share: light
to import (no Restate SDK), so every agentctl command starts fast."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

Status = Literal["running", "waiting", "stalled", "failed", "complete"]
STATUSES: tuple[Status, ...] = ("running", "waiting", "stalled", "failed", "complete")
MAX_PAGE = 500


class TaskQuery(BaseModel):
    """What an operator asks for: filters and a page. Validated at the boundary (query string,
    command line), so a bad filter is a clear 4xx / usage error, never an empty list."""

    agent: str | None = Field(None, min_length=1, max_length=64)
    status: Status | None = None
    search: str | None = Field(None, max_length=300, description="a substring of the task id")
    limit: int = Field(50, ge=1, le=MAX_PAGE)
    offset: int = Field(0, ge=0)


def sql_literal(value: str) -> str:
    """A SQL string literal for Restate's introspection queries: quoted, single quotes doubled."""
    return "'" + value.replace("'", "''") + "'"


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
