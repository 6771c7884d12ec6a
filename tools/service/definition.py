"""What a tool is: its arguments, its result, and the function that performs it in a transaction.

A tool never commits. It is handed a session inside the transaction that also marks its
Idempotency-Key done, so its effect and the stored response commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict
from sqlalchemy.orm import Session, sessionmaker

from common.ids import derive_id
from tools.service.settings import ToolsSettings


class ToolArgs(BaseModel):
    """Base of every tool's arguments: an unknown field is an error, never silently dropped."""

    model_config = ConfigDict(extra="forbid")


class ToolResult(BaseModel):
    """Base of every tool's result."""

    model_config = ConfigDict(extra="forbid")


ArgsT = TypeVar("ArgsT", bound=ToolArgs)
ResultT = TypeVar("ResultT", bound=ToolResult)


class ToolError(Exception):
    """A definite domain answer (4xx), such as an unknown user: the tool's effect is rolled back,
    and the answer is stored under the Idempotency-Key so a retry gets the same answer."""

    def __init__(self, status_code: int, code: str, message: str, details: Any = None) -> None:
        if not 400 <= status_code < 500:
            raise ValueError("a ToolError is a client error; its status code must be 4xx")
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details


class ToolFailure(Exception):
    """A technical failure (a missing OCR engine, a broken policy table): answered 500 and NOT
    stored under the Idempotency-Key, so the caller's retry runs the tool again once it is fixed.

    Unlike an unexpected exception, its message is meant for people (it says what to fix), so the
    API shows it instead of a generic "failed unexpectedly".
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ToolCall:
    """One execution of a tool: the transaction to work in and what identifies the request."""

    session: Session
    idempotency_key: str
    # The service clock at execution, so a tool's timestamps come from one place.
    now: datetime
    # What the tool's `prepare` produced before this transaction began (None for other tools).
    prepared: object = None
    # The service's settings, for tools that enforce a policy (the ledger's evidence rules).
    settings: ToolsSettings | None = None

    def derived_id(self, prefix: str) -> str:
        """An id for the row this call creates, derived from the Idempotency-Key, never random:
        a re-execution (after a crash before commit) creates the very same id, and the database
        refuses a second row with it."""
        return derive_id(prefix, self.idempotency_key)


@dataclass(frozen=True)
class Tool(Generic[ArgsT, ResultT]):
    """A tool as the registry lists it and the API runs it."""

    name: str
    description: str
    # False for read-only tools; the catalog tells the agent which calls change the world.
    side_effects: bool
    args_model: type[ArgsT]
    result_model: type[ResultT]
    run: Callable[[ToolCall, ArgsT], ResultT]
    # Optional slow, read-only work (OCR) done in a worker thread after the key is claimed and
    # before the transaction begins, reading what it needs in its own short transaction: holding
    # the completion transaction open for seconds would stall every other writer (SQLite's write
    # lock is global). It never decides the answer; `run` does, from `call.prepared`.
    prepare: Callable[[sessionmaker[Session], ArgsT], object] | None = None
