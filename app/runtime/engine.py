"""Runs a declared `Machine` inside a Restate virtual object: one task per key, every step journaled.

The engine owns the task record (one pydantic value under one state key), the transition history,
the derivation of idempotency keys, and the rule that a permanent step failure becomes the
machine's failure state with the error recorded, never an unhandled 500. Agents supply only their
machine, their data model and one step function per non-terminal state.

A transition costs one journal entry, the task record's write. Its time is the end of the step's
last journaled call (each call's result is journaled with when it ended); its event is sealed in
the handler and kept in that same record, durable in Restate from then on, and written to the
event log by the next journaled call on its way (or, before the task waits or ends, by a step of
its own). So no transition waits for a clock read or a database commit of its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import json
import logging
import re
import secrets
import time
import unicodedata
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Literal, TypeVar

import restate
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from restate import ObjectContext, ObjectSharedContext, RunOptions, TerminalError
from restate.serde import BytesSerde

from app.audit import metrics, trace_export
from app.audit.event_log import GENESIS, Event, EventDraft, new_event, store_for
from app.audit.traces import CallTrace, TraceParent, attempt_span_of
from app.gates.models import (
    ApprovalRecord,
    ApprovalRequest,
    GateIntrusion,
    GatePolicy,
    Outcome,
    PendingApproval,
)
from app.gates.waiting import (
    GATE_ENTRY_TOOL_CALLS,
    GATE_TOOLS,
    Armed,
    Wake,
    await_gate,
    enter_gate,
    gate_defaults,
)
from app.llm import LlmTask, Metered, Usage, current_model, structured_by
from app.llm.port import InT, OutT
from app.runtime import tool_client
from app.runtime.budget import Budget, BudgetExceeded, BudgetStop, Spend
from app.runtime.faults import crash_if_planned
from app.runtime.machine import BUDGET as BUDGET_STATE
from app.runtime.machine import IllegalTransition, Machine, transition
from app.runtime.refusals import RefusedStart
from app.runtime.stalls import STALL_KEY, Stall, StallPolicy, StallRecord, one_line_attempts, through_outages
from app.runtime.tool_client import ToolResult
from app.settings import get_settings

log = logging.getLogger(__name__)

TASK_KEY = "task"
MAX_KEY_TASK_PART = 128
# A task id goes into Idempotency-Key headers as it is only if it is made of these characters;
# any other id (non-ASCII, spaces, very long) is represented there by its hash.
KEY_SAFE_TASK_ID = re.compile(r"^[A-Za-z0-9_.@+-]+$")
# The longest task id that can be decided (the approval webhook's limit, design.md).
MAX_TASK_ID_LENGTH = 256

D = TypeVar("D", bound=BaseModel)
InputT = TypeVar("InputT", bound=BaseModel)
T = TypeVar("T")

# One retry policy per kind of step, chosen on purpose (Restate owns retries; clients have none).
# These are the quick retries of one round. When they run out on an outage (the dependency
# unreachable or overloaded), the step stalls and is retried round after round, never failed
# (app/runtime/stalls.py); when they run out on anything else (a model that keeps answering
# unusable output), the task fails with the reason.
# An LLM call is slow and costly: few attempts, patient backoff.
LLM_RUN_OPTIONS: RunOptions[Any] = RunOptions(
    max_attempts=5,
    initial_retry_interval=timedelta(seconds=1),
    max_retry_interval=timedelta(seconds=30),
    retry_interval_factor=2.0,
)
# A tool call is idempotent by key, so retrying is always safe: more attempts, faster backoff.
TOOL_RUN_OPTIONS: RunOptions[Any] = RunOptions(
    max_attempts=8,
    max_duration=timedelta(minutes=2),
    initial_retry_interval=timedelta(milliseconds=200),
    max_retry_interval=timedelta(seconds=5),
    retry_interval_factor=2.0,
)
# Reads of static service data (the tool catalog): cheap and safe to retry.
READ_RUN_OPTIONS: RunOptions[Any] = TOOL_RUN_OPTIONS


class Transition(BaseModel):
    """One entry of a task's history: it entered `to_state` at `at` (seconds since the epoch)."""

    from_state: str | None
    to_state: str
    at: float
    note: str | None = None


class TaskError(BaseModel):
    """Why a task failed: the state it failed in, a stable code and a human message."""

    state: str
    code: str
    message: str


class Mark(BaseModel):
    """When a journaled step ended, and the highest event seq it wrote to the log on its way (0:
    none, or the log was unavailable; the events stay in the task record and go with a later step);
    for an LLM step, what it used (journaled with it: a replay never counts it twice)."""

    at: float
    logged: int = 0
    usage: Usage | None = None
    # For an LLM or tool call, when and in which Restate attempt it ran (the source of its span).
    call: CallTrace | None = None


class Stamped(Mark, Generic[T]):
    """A journaled step's result with its `Mark`: the transition after it needs no clock read."""

    value: T


class TaskRecord(BaseModel, Generic[D]):
    """Everything Restate keeps for one task, under one state key."""

    task_id: str
    agent: str
    model: str
    input_hash: str
    state: str
    history: list[Transition]
    data: D
    result: dict[str, Any] | None = None
    error: TaskError | None = None
    pending_approval: PendingApproval | None = None
    approvals: list[ApprovalRecord] = Field(default_factory=list)
    # The head of the task's chain in the event log: its last event's seq and hash.
    event_seq: int = 0
    last_event_hash: str = GENESIS
    # The unguessable part of the task's Idempotency-Keys, drawn once when the task is created, so
    # nobody can claim a key at the tool service before the task uses it. Empty for tasks created
    # before it existed (their keys keep the old shape).
    key_salt: str = ""
    # Wakes of a waiting task that did not come from the arbiter: refused, kept on record.
    intrusions: list[GateIntrusion] = Field(default_factory=list)
    # How a stalled step waits between retry rounds, read from settings when the task was created.
    stall_policy: StallPolicy = Field(default_factory=StallPolicy)
    # The approval gate policy the task was seeded with (timeouts, default approvers); None for
    # tasks created before it was, whose gates read the settings when they open.
    gate_policy: GatePolicy | None = None
    # Events sealed but not yet known to be in the event log (the chain head above includes them):
    # durable here, in Restate, until a journaled step reports them written.
    unlogged: list[Event] = Field(default_factory=list)
    # What the task has used so far (tokens, cost, tool calls), up to its last transition.
    spend: Spend = Field(default_factory=Spend)
    # Its limits (the agent's, lowered by its input, raised at the budget gate), and where the
    # budget stopped it while it waits at that gate.
    budget: Budget = Field(default_factory=Budget)
    budget_stop: BudgetStop | None = None


class StallView(BaseModel):
    """A stalled step as `status` shows it: the state and step, since when, how often, why, next."""

    state: str
    step: str
    rounds: int
    since: str
    last_error: str
    next_retry_at: str

    @classmethod
    def of(cls, stall: Stall) -> StallView:
        return cls(
            state=stall.state,
            step=stall.step,
            rounds=stall.rounds,
            since=_iso(stall.since),
            last_error=stall.last_error,
            next_retry_at=_iso(stall.next_retry_at),
        )


class TaskSummary(BaseModel):
    """A finished, archived task reduced to what `status` and a repeated `run` need: its outcome,
    approvals and where its full record went. The task record it replaces is gone from Restate."""

    task_id: str
    agent: str
    model: str
    input_hash: str
    state: str
    created_at: float
    ended_at: float
    result: dict[str, Any] | None = None
    error: TaskError | None = None
    approvals: list[ApprovalRecord] = Field(default_factory=list)
    events: int
    last_event_hash: str
    archive_file: str

    @classmethod
    def of(cls, record: dict[str, Any], archive_file: str) -> TaskSummary:
        """From a task record as Restate stores it (JSON), whatever the agent's data type."""
        history = record.get("history") or [{"at": 0.0}]
        return cls(
            task_id=record["task_id"],
            agent=record["agent"],
            model=record.get("model", ""),
            input_hash=record["input_hash"],
            state=record["state"],
            created_at=history[0]["at"],
            ended_at=history[-1]["at"],
            result=record.get("result"),
            error=record.get("error"),
            approvals=record.get("approvals") or [],
            events=record.get("event_seq", 0),
            last_event_hash=record.get("last_event_hash", GENESIS),
            archive_file=archive_file,
        )

    def view(self) -> TaskView:
        return TaskView(
            task_id=self.task_id,
            agent=self.agent,
            state=self.state,
            terminal=True,
            model=self.model,
            history=[
                TransitionView(
                    from_state=None, to_state="(archived)", at=_iso(self.created_at), note="created"
                ),
                TransitionView(from_state=None, to_state=self.state, at=_iso(self.ended_at), note="ended"),
            ],
            approvals=[ApprovalView.of(approval) for approval in self.approvals],
            result=self.result,
            error=self.error,
            archived=self.archive_file,
        )


class TransitionView(BaseModel):
    from_state: str | None
    to_state: str
    at: str
    note: str | None = None


class PendingApprovalView(BaseModel):
    """A waiting gate as the public sees it: what, who, until when; never the awakeable id."""

    state: str
    summary: str
    details: dict[str, Any]
    approval_hash: str
    approvers: list[str]
    requested_at: str
    deadline: str
    reminder_at: str | None
    reminded: bool
    approval_ticket_id: str | None

    @classmethod
    def of(cls, pending: PendingApproval) -> PendingApprovalView:
        return cls(
            state=pending.state,
            summary=pending.summary,
            details=pending.details,
            approval_hash=pending.approval_hash,
            approvers=pending.approvers,
            requested_at=_iso(pending.requested_at),
            deadline=_iso(pending.deadline),
            reminder_at=_iso(pending.reminder_at) if pending.reminder_at is not None else None,
            reminded=pending.reminded,
            approval_ticket_id=pending.approval_ticket_id,
        )


class ApprovalView(BaseModel):
    """How a gate ended: the decision (or timeout), who, when, with what comment, on what hash."""

    state: str
    outcome: str
    decision: str | None
    approver: str | None
    comment: str | None
    decided_at: str
    approval_hash: str
    approval_ticket_id: str | None
    reminded: bool

    @classmethod
    def of(cls, record: ApprovalRecord) -> ApprovalView:
        return cls(**{**record.model_dump(), "decided_at": _iso(record.decided_at)})


class TaskView(BaseModel):
    """What `status` and `run` return: where the task is, how it got there, and how it ended."""

    model_config = ConfigDict(extra="forbid")

    task_id: str
    agent: str
    state: str
    terminal: bool
    model: str
    history: list[TransitionView]
    pending_approval: PendingApprovalView | None = None
    approvals: list[ApprovalView] = Field(default_factory=list)
    intrusions: list[GateIntrusion] = Field(default_factory=list)
    # Set while a step waits out an outage of a dependency (it is retried, never failed).
    stall: StallView | None = None
    # For a finished task reduced to a summary: the archive file holding its events.
    archived: str | None = None
    result: dict[str, Any] | None = None
    error: TaskError | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    # What the task has used so far: model calls, tokens, cost (USD), tool calls; and its limits.
    spend: Spend = Field(default_factory=Spend)
    budget: Budget = Field(default_factory=Budget)


class Next(BaseModel):
    """What a step decided: the state to go to, and for an ending, its result or error."""

    target: str
    note: str | None = None
    result: dict[str, Any] | None = None
    error: TaskError | None = None


class TaskSeed(BaseModel):
    """What a task draws once, when it is created: its time, its key salt and the model it is
    pinned to (from this process's settings, read here so the choice is journaled)."""

    at: float
    key_salt: str
    # Empty in seeds journaled before tasks were pinned to a model.
    model: str = ""
    stall_policy: StallPolicy = Field(default_factory=StallPolicy)
    # The settings' approval gate policy (None in seeds journaled before tasks were seeded with it).
    gate_policy: GatePolicy | None = None
    # The trace the task's spans join: Restate's invocation trace if it sent one, else a new one
    # (None in seeds journaled before tasks were traced).
    trace: TraceParent | None = None


def new_task_seed(trace: TraceParent | None = None) -> TaskSeed:
    """Runs only inside `ctx.run_typed`: journaled, so every replay sees the same seed."""
    settings = get_settings()
    return TaskSeed(
        trace=trace or TraceParent(trace_id=secrets.token_hex(16)),
        at=time.time(),
        key_salt=secrets.token_hex(12),
        model=current_model().name,
        stall_policy=StallPolicy(
            initial_seconds=settings.stall_retry_initial_seconds, max_seconds=settings.stall_retry_max_seconds
        ),
        gate_policy=gate_defaults(),
    )


def refuse_bad_task_id(task_id: str) -> None:
    """A task id that could not be worked on end to end is refused before anything is written."""
    if len(task_id) > MAX_TASK_ID_LENGTH:
        raise RefusedStart(
            f"invalid task id: at most {MAX_TASK_ID_LENGTH} characters, not {len(task_id)}", status_code=400
        )
    if not task_id.strip() or any(unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") for char in task_id):
        raise RefusedStart(
            "invalid task id: it must not be blank or contain control or format characters", status_code=400
        )


def key_task_part(task_id: str) -> str:
    """The task id as it appears in Idempotency-Keys: itself if safe and short, else its hash."""
    if len(task_id) <= MAX_KEY_TASK_PART and KEY_SAFE_TASK_ID.match(task_id):
        return task_id
    return "sha256-" + hashlib.sha256(task_id.encode()).hexdigest()


class StepContext(Generic[D]):
    """What a step function gets: its task's data and journaled ways to call the outside world."""

    def __init__(
        self,
        ctx: ObjectContext,
        record: TaskRecord[D],
        first_call_index: int = 0,
        view: Callable[[], TaskView] | None = None,
    ) -> None:
        self.ctx = ctx
        self.task_id = record.task_id
        self.agent = record.agent
        self.state = record.state
        self.data = record.data
        self.approvals = list(record.approvals)
        self.key_salt = record.key_salt
        # The model the task was pinned to at creation: a restart with other settings never
        # switches a task's model mid-way (its journal would no longer match).
        self.model = record.model
        self.stall_policy = record.stall_policy
        self.gate_defaults = record.gate_policy
        # Outages this step waited out, for the audit record of the transition that ends it.
        self.stalls: list[StallRecord] = []
        # A state visited again (a loop) gets fresh keys; a replay of the same visit the same keys.
        self.visit = sum(1 for t in record.history if t.to_state == record.state)
        self._tool_calls = first_call_index
        # What this step's model calls used, and how many tool calls it made (journaled values),
        # on top of what the task had spent before it; and the limits they are checked against.
        self.usage: list[Usage] = []
        self.tool_calls_made = 0
        # Each model and tool call as it executed (journaled records), for the transition's spans.
        self.calls: list[CallTrace] = []
        self.spent_before = record.spend
        self.budget = record.budget
        self.budget_stop = record.budget_stop
        self.created_at = record.history[0].at if record.history else 0.0
        # The task's events not yet in the log; each journaled call writes them on its way.
        self.unlogged = list(record.unlogged)
        # The view a snapshot of the log records, as of the task's last event (made only if due).
        self.view = view
        # From the journaled calls' marks: the highest event seq written, when the last one ended.
        self.logged = 0
        self.ended_at: float | None = None

    def pending_events(self) -> list[Event]:
        return [item for item in self.unlogged if item.seq > self.logged]

    def snapshot_for(self, pending: list[Event]) -> dict[str, Any] | None:
        """The snapshot to write with `pending`, if one is due (settings shape only the write's
        arguments, never what is journaled: the view is that of the task's last event)."""
        if self.view is None or not snapshot_due(pending, terminal=False):
            return None
        return self.view().model_dump(mode="json")

    def marked(self, mark: Mark) -> None:
        self.ended_at = mark.at
        self.logged = max(self.logged, mark.logged)
        if mark.usage is not None:
            self.usage.append(mark.usage)
        if mark.call is not None:
            self.calls.append(mark.call)

    def idempotency_key(self, index: int) -> str:
        """Derived from agent, task, its salt, state, visit and call index: stable across retries
        and replays, unguessable before the task exists (the salt)."""
        task = key_task_part(self.task_id)
        if not self.key_salt:
            return f"{self.agent}:{task}:{self.state}.{self.visit}:{index}"
        return f"{self.agent}:{task}:{self.key_salt}:{self.state}.{self.visit}:{index}"

    def next_idempotency_key(self) -> str:
        return self.idempotency_key(self._tool_calls)

    def spent(self) -> Spend:
        """What the task has spent, this step's calls so far included."""
        return self.spent_before.plus(self.usage, self.tool_calls_made)

    def within_budget(self, next_step: Literal["llm", "tool"]) -> None:
        """Before a model or tool call: stop (BudgetExceeded) if it would go over the budget. From
        journaled values only (spend, the last journaled time), so a replay decides the same."""
        elapsed = max(
            0.0, (self.ended_at if self.ended_at is not None else self.created_at) - self.created_at
        )
        spent = self.spent()
        limit = self.budget.reached(spent, elapsed, next_step)
        if limit is not None:
            raise BudgetExceeded(limit, self.budget.describe(limit, spent, elapsed))

    async def call_tool(self, name: str, args: Mapping[str, Any]) -> ToolResult:
        """Call a tool through the tool service, journaled, with this call's derived Idempotency-Key."""
        # The gate's own calls (ask, remind, close) are not the task's work: never stopped, not counted.
        if name not in GATE_TOOLS:
            self.within_budget("tool")
            self.tool_calls_made += 1
        index = self._tool_calls
        self._tool_calls += 1
        return await self._journaled(
            f"{self.state} tool {index} {name}",
            tool_client.call_tool,
            TOOL_RUN_OPTIONS,
            ToolResult,
            traced="tool",
            agent=self.agent,
            name=name,
            args=dict(args),
            idempotency_key=self.idempotency_key(index),
        )

    async def run(
        self,
        label: str,
        action: Callable[..., Coroutine[Any, Any, T]],
        result_type: type[T],
        *args: Any,
        options: RunOptions[Any] = LLM_RUN_OPTIONS,
        traced: Literal["llm"] | None = None,
    ) -> T:
        """Run one journaled step (an LLM call, a read) whose result is one of our pydantic types;
        `traced="llm"` records it as a model call (its span)."""
        return await self._journaled(
            f"{self.state} {label}", action, options, result_type, *args, traced=traced
        )

    async def _journaled(
        self,
        label: str,
        action: Callable[..., Coroutine[Any, Any, T]],
        options: RunOptions[Any],
        result_type: type[T],
        *args: Any,
        traced: Literal["llm", "tool"] | None = None,
        **kwargs: Any,
    ) -> T:
        """One journaled step that waits out outages of its dependency (stalls) instead of failing.

        On its way it writes the task's pending events to the log, and its journaled result carries
        when it ended: the transition after it needs no journal entry for either. A `traced` call
        also carries its `CallTrace`, made where it executes (never on a replay).
        """
        attempt = one_line_attempts(f"{self.agent}/{self.task_id} {label}", action)
        pending = self.pending_events()
        snapshot = self.snapshot_for(pending)
        stamped_type = Stamped[result_type]  # type: ignore[valid-type]
        # Read in this attempt's handler code; the closure runs (if at all) in this same attempt.
        attempt_span = attempt_span_of(self.ctx.request().attempt_headers) if traced else None

        async def stamped(*call_args: Any, **call_kwargs: Any) -> Stamped[T]:
            # The write goes alongside the call, not before it: the events are durable in Restate
            # already, and a step never waits for the log's commit.
            written = asyncio.ensure_future(write_events_quietly(pending, snapshot))
            started = time.time()
            try:
                # Timed here, inside the journaled closure: only a real execution, never a replay.
                with metrics.timed_attempt(self.agent, label):
                    value = await attempt(*call_args, **call_kwargs)
            finally:
                logged = await written
            usage = None
            if isinstance(value, Metered):
                # An LLM step: its value is journaled as the step's result, its usage beside it.
                usage = value.usage.model_copy(update={"step": label})
                value = value.value
            ended = time.time()
            call = None
            if traced is not None:
                tool = value if isinstance(value, ToolResult) else None
                call = CallTrace(
                    kind=traced,
                    step=label,
                    started=started,
                    ended=ended,
                    attempt_span=attempt_span,
                    tool=tool.tool if tool else None,
                    idempotency_key=tool.idempotency_key if tool else None,
                    replayed=tool.replayed if tool else None,
                )
            return stamped_type(value=value, at=ended, logged=logged, usage=usage, call=call)

        stamped_options = _with_type(options, stamped_type)
        stall = Stall(
            agent=self.agent,
            task_id=self.task_id,
            state=self.state,
            step=label,
            rounds=0,
            since=0.0,
            last_error="",
            next_retry_at=0.0,
            nudge_id="",
        )

        def run_once(name: str) -> Awaitable[Stamped[T]]:
            return self.ctx.run_typed(name, stamped, stamped_options, *args, **kwargs)

        result, ended = await through_outages(self.ctx, stall, self.stall_policy, run_once)
        if ended is not None:
            self.stalls.append(ended)
        self.marked(result)
        return result.value

    async def llm(self, task: LlmTask[InT, OutT], request: InT) -> OutT:
        """Run one of the agent's LLM tasks as a journaled step: the output is journaled, never the
        prompt; a replay returns the journaled output without calling the model."""
        self.within_budget("llm")
        action: Callable[..., Coroutine[Any, Any, OutT]] = structured_by  # type: ignore[assignment]
        return await self.run(
            f"llm {task.name}", action, task.output_type, self.model, task, request, traced="llm"
        )


StepFn = Callable[[StepContext[D]], Awaitable[Next]]
# What a gate state asks a human to approve, built from the task's data.
ApprovalFn = Callable[[StepContext[D]], ApprovalRequest]


class _WithBudget(BaseModel):
    """What a task's input hash covers when the input asks for a budget."""

    input: dict[str, Any]
    budget: Budget

    def __init__(self, input: BaseModel, budget: Budget) -> None:
        super().__init__(input=input.model_dump(mode="json"), budget=budget)


def _limit_of(budget: Budget, limit: str) -> str:
    value = {
        "tokens": budget.max_tokens,
        "cost": budget.max_cost_usd,
        "tool_calls": budget.max_tool_calls,
        "seconds": budget.max_seconds,
    }[limit]
    return f"${value}" if limit == "cost" else f"{value:,}" if isinstance(value, int) else str(value)


def budget_request(step: StepContext[Any]) -> ApprovalRequest:
    """What the budget gate asks: the task stopped, what it spent against what limit, and the
    budget an "extend" gives it (a reject stops it)."""
    stop = step.budget_stop
    assert stop is not None, "the budget gate is entered only by a budget stop"
    spent = step.spent_before
    elapsed = max(0.0, (step.ended_at or step.created_at) - step.created_at)
    extended = step.budget.extended(stop.limit, spent, elapsed)
    return ApprovalRequest(
        summary=(
            f"{step.agent} {step.task_id} stopped by its budget before its next step in {stop.state}: "
            f"{stop.reason}. Approve to extend {stop.limit} to {_limit_of(extended, stop.limit)} and go on; "
            "reject to stop the task."
        ),
        details={
            "stopped_in": stop.state,
            "limit": stop.limit,
            "reason": stop.reason,
            "spent": spent.model_dump(mode="json"),
            "budget": step.budget.model_dump(mode="json"),
            "extended_budget": extended.model_dump(mode="json"),
        },
    )


def _with_type(options: RunOptions[Any], result_type: type[T]) -> RunOptions[T]:
    """The step kind's retry options, with the type its result is journaled as."""
    cap = get_settings().step_max_quick_attempts
    attempts = options.max_attempts
    if cap and attempts is not None:
        attempts = min(attempts, cap)
    return dataclasses.replace(options, type_hint=result_type, max_attempts=attempts)


def input_hash(payload: BaseModel) -> str:
    canonical = json.dumps(payload.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def split_budget(raw: bytes) -> tuple[bytes, Budget | None]:
    """A run's raw input without its `"budget"` (the engine's, not the agent's), and that budget
    validated; a 400 naming what is wrong with it."""
    try:
        body = json.loads(raw or b"")
    except ValueError:
        return raw, None  # not JSON: the agent's own validation says so
    if not isinstance(body, dict) or "budget" not in body:
        return raw, None
    asked = body.pop("budget")
    try:
        budget = Budget.model_validate(asked)
    except ValidationError as exc:
        problems = "; ".join(
            f"budget.{'.'.join(str(p) for p in err['loc']) or ''}: {err['msg']}" for err in exc.errors()
        )
        raise TerminalError(f"invalid input: {problems}", status_code=400) from None
    return json.dumps(body).encode(), budget


def parse_input(raw: bytes, model: type[InputT]) -> InputT:
    """Validate a handler's raw JSON input; bad input is a 400 that names what is wrong."""
    try:
        return model.model_validate_json(raw or b"")
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()
        )
        raise TerminalError(f"invalid input: {problems}", status_code=400) from None


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")


def view_of(record: TaskRecord[Any], machine: Machine) -> TaskView:
    return TaskView(
        task_id=record.task_id,
        agent=record.agent,
        state=record.state,
        terminal=machine.is_terminal(record.state),
        model=record.model,
        history=[
            TransitionView(from_state=t.from_state, to_state=t.to_state, at=_iso(t.at), note=t.note)
            for t in record.history
        ],
        pending_approval=PendingApprovalView.of(record.pending_approval) if record.pending_approval else None,
        approvals=[ApprovalView.of(approval) for approval in record.approvals],
        intrusions=record.intrusions,
        result=record.result,
        error=record.error,
        data=record.data.model_dump(mode="json"),
        spend=record.spend,
        budget=record.budget,
    )


class AgentEngine(Generic[D]):
    """Binds a machine, its data model and its step functions; drives tasks inside handlers."""

    def __init__(
        self,
        machine: Machine,
        data_type: type[D],
        steps: Mapping[str, StepFn[D]],
        approvals: Mapping[str, ApprovalFn[D]] | None = None,
        budget: Budget | None = None,
    ) -> None:
        approvals = dict(approvals or {})
        budget = budget or Budget()
        if machine.has_budget_gate:
            # The budget gate asks the same way for every agent: what was spent, what is asked.
            approvals.setdefault(BUDGET_STATE, budget_request)
        elif budget != Budget():
            raise ValueError(
                f"{machine.name}: a budget needs the BUDGET gate to stop at "
                "(Machine.declare(budget_gate=True))"
            )
        working = machine.states - machine.terminal - set(machine.gates)
        missing = working - set(steps)
        if missing:
            raise ValueError(f"{machine.name}: no step function for states {sorted(missing)}")
        extra = set(steps) - working
        if extra:
            raise ValueError(f"{machine.name}: step functions for undeclared or gate states {sorted(extra)}")
        if set(approvals) != set(machine.gates):
            raise ValueError(
                f"{machine.name}: gates {sorted(machine.gates)} need exactly one approval function each"
            )
        self.machine = machine
        self.data_type = data_type
        self.steps = dict(steps)
        self.approvals = approvals
        self.budget = budget
        self.record_type: type[TaskRecord[D]] = TaskRecord[data_type]  # type: ignore[valid-type]

    async def load(self, ctx: ObjectContext | ObjectSharedContext) -> TaskRecord[D] | TaskSummary | None:
        """The task's record, or its summary once archived: both live under the one state key, so
        reading it is one journal entry either way (the shape replays of older runs expect)."""
        raw = await ctx.get(TASK_KEY, serde=BytesSerde())
        if raw is None:
            return None
        value = json.loads(raw)
        if isinstance(value, dict) and "archive_file" in value:
            return TaskSummary.model_validate(value)
        return self.record_type.model_validate(value)

    async def start_or_resume(
        self, ctx: ObjectContext, payload: BaseModel, initial_data: D, asked_budget: Budget | None = None
    ) -> TaskView:
        """Create the task on first call, then drive it to a terminal state.

        A second `run` with the same input resumes (or just reports) the task; with different input
        it is refused, so a task id always names one piece of work. `asked_budget` is the budget
        the input asks for (it may only lower the agent's), part of the input.
        """
        # Logged on every attempt (a replay starts from the top), so operators and the always-replay
        # tests can see how often Restate resumed the handler.
        log.info("%s/%s run: attempt started", self.machine.name, ctx.key())
        digest = (
            input_hash(payload)
            if asked_budget is None
            else input_hash(_WithBudget(input=payload, budget=asked_budget))
        )
        record = await self.load(ctx)
        if isinstance(record, TaskSummary):
            # Archived: the same input reports how it ended; other input is another task.
            if record.input_hash != digest:
                raise RefusedStart(
                    f"task {ctx.key()} already exists with a different input; use a new task id",
                    status_code=409,
                )
            return record.view()
        clock: float | None = None
        if record is None:
            refuse_bad_task_id(ctx.key())
            # Restate's trace context of this attempt (if it sends one): the task's spans join it.
            restate_trace = TraceParent.from_headers(ctx.request().attempt_headers)
            seed = await ctx.run_typed(
                "task seed", new_task_seed, RunOptions(type_hint=TaskSeed), restate_trace
            )
            now = clock = seed.at
            model_name = seed.model or current_model().name
            record = self.record_type(
                stall_policy=seed.stall_policy,
                task_id=ctx.key(),
                agent=self.machine.name,
                model=model_name,
                input_hash=digest,
                state=self.machine.initial,
                history=[Transition(from_state=None, to_state=self.machine.initial, at=now, note="created")],
                data=initial_data,
                key_salt=seed.key_salt,
                gate_policy=seed.gate_policy,
                budget=self.budget.lowered_by(asked_budget),
            )
            created: dict[str, Any] = {"input": payload.model_dump(mode="json"), "model": model_name}
            if record.budget != Budget():
                created["budget"] = record.budget.model_dump(mode="json")
            if seed.trace is not None:
                created["trace"] = seed.trace.model_dump(mode="json")
            record = self._seal(record, "created", None, now, created)
            crash_if_planned(record.agent, record.task_id, record.event_seq)
            ctx.set(TASK_KEY, record)
        elif record.input_hash != digest:
            raise RefusedStart(
                f"task {ctx.key()} already exists with a different input; use a new task id",
                status_code=409,
            )
        record = await self.drive(ctx, record, clock)
        return view_of(record, self.machine)

    async def drive(
        self, ctx: ObjectContext, record: TaskRecord[D], clock: float | None = None
    ) -> TaskRecord[D]:
        """Run step after step until a terminal state, persisting the record at every transition.

        `clock` is the last time this invocation journaled (None if it has none yet): a step that
        makes no journaled call (pure logic, microseconds) is timed by it, not by a clock read.
        """
        # What wakes the task at a gate it entered in this invocation (None after a restart).
        armed: Armed | None = None
        while not self.machine.is_terminal(record.state):
            before = record.data.model_dump(mode="json")
            approvals_before = (len(record.approvals), len(record.intrusions))
            gate = self.machine.is_gate(record.state)
            calls = GATE_ENTRY_TOOL_CALLS if gate else 0
            step = StepContext(ctx, record, calls, functools.partial(view_of, record, self.machine))
            step.ended_at = clock
            decision, record = await self._run_step(ctx, record, step, armed)
            record, armed = await self._apply(ctx, record, step, decision, before, approvals_before)
            clock = record.history[-1].at
        return record

    async def _run_step(
        self, ctx: ObjectContext, record: TaskRecord[D], step: StepContext[D], armed: Armed | None
    ) -> tuple[Next, TaskRecord[D]]:
        try:
            if self.machine.is_gate(step.state):
                return await self._run_gate(ctx, record, step, armed)
            return await self.steps[step.state](step), record
        except BudgetExceeded as over:
            # The next call would go over the budget: it never starts; a human decides at the gate.
            stop = BudgetStop(state=step.state, limit=over.limit, reason=over.reason)
            return Next(target=BUDGET_STATE, note=f"budget: {over.reason}"), record.model_copy(
                update={"budget_stop": stop}
            )
        except TerminalError as exc:
            # A permanent failure of this step (exhausted retries, a refused tool call, a model error).
            # Only TerminalError is caught: Restate's suspension signals are BaseExceptions and pass.
            if not self.machine.can_fail(step.state):
                raise
            assert self.machine.failure is not None
            # An operator's `agentctl cancel` reaches the handler as this error at its next await.
            cancelled = exc.status_code == 409 and exc.message == "cancelled"
            # It failed after its last journaled call ended: the failure's time is read afresh.
            step.ended_at = None
            code = "cancelled" if cancelled else "step_failed"
            message = "cancelled by an operator" if cancelled else exc.message
            failed = Next(
                target=self.machine.failure, error=TaskError(state=step.state, code=code, message=message)
            )
            return failed, record

    async def _run_gate(
        self, ctx: ObjectContext, record: TaskRecord[D], step: StepContext[D], armed: Armed | None
    ) -> tuple[Next, TaskRecord[D]]:
        """Suspend at an approval gate until a decision or the deadline; take the declared outcome."""
        current = record

        def persist(pending: PendingApproval | None) -> None:
            nonlocal current
            current = current.model_copy(update={"pending_approval": pending})
            ctx.set(TASK_KEY, current)

        def intruded(intrusion: GateIntrusion) -> None:
            nonlocal current
            log.warning("%s/%s: %s", self.machine.name, record.task_id, intrusion.detail)
            current = current.model_copy(update={"intrusions": [*current.intrusions, intrusion]})
            ctx.set(TASK_KEY, current)

        if record.pending_approval is None:
            # Entered before this engine opened gates on entry: enter it now.
            pending, woken = await enter_gate(
                StepContext(ctx, record), self.approvals[step.state](StepContext(ctx, record))
            )
            armed = Armed(woken)
            persist(pending)
        assert current.pending_approval is not None
        outcome, approval = await await_gate(step, current.pending_approval, armed, persist, intruded)
        current = current.model_copy(update={"approvals": [*current.approvals, approval]})
        if step.state == BUDGET_STATE:
            return self._budget_outcome(current, outcome, approval)
        target = self.machine.gates[step.state].outcomes()[outcome]
        if outcome == "approve":
            return Next(target=target, note=f"approved by {approval.approver}"), current
        if outcome == "reject":
            why = f"rejected by {approval.approver}" + (f": {approval.comment}" if approval.comment else "")
            error = TaskError(state=step.state, code="approval_rejected", message=why)
            return Next(target=target, note=f"rejected by {approval.approver}", error=error), current
        error = TaskError(
            state=step.state, code="approval_timed_out", message="no decision before the deadline"
        )
        return Next(target=target, note="approval timed out", error=error), current

    def _budget_outcome(
        self, record: TaskRecord[D], outcome: Outcome, approval: ApprovalRecord
    ) -> tuple[Next, TaskRecord[D]]:
        """Leave the budget gate: extended, back to the state it stopped; else FAILED."""
        stop = record.budget_stop
        assert stop is not None and self.machine.failure is not None
        if outcome == "approve":
            elapsed = max(0.0, approval.decided_at - record.history[0].at)
            extended = record.budget.extended(stop.limit, record.spend, elapsed)
            note = (
                f"budget extended by {approval.approver}: {stop.limit} to {_limit_of(extended, stop.limit)}"
            )
            return Next(target=stop.state, note=note), record.model_copy(
                update={"budget": extended, "budget_stop": None}
            )
        if outcome == "reject":
            why = f"stopped by {approval.approver} at its budget: {stop.reason}"
            code = "budget_stopped"
        else:
            why, code = f"no decision on its budget before the deadline: {stop.reason}", "budget_timed_out"
        error = TaskError(state=stop.state, code=code, message=why)
        return Next(target=self.machine.failure, note=why, error=error), record

    async def _apply(
        self,
        ctx: ObjectContext,
        record: TaskRecord[D],
        step: StepContext[D],
        decision: Next,
        before: dict[str, Any],
        approvals_before: tuple[int, int],
    ) -> tuple[TaskRecord[D], Armed | None]:
        try:
            target = transition(self.machine, record.state, decision.target)
        except IllegalTransition as exc:
            if not self.machine.can_fail(record.state):
                raise TerminalError(str(exc), status_code=500) from None
            assert self.machine.failure is not None
            target = self.machine.failure
            decision = Next(
                target=target,
                error=TaskError(state=record.state, code="illegal_transition", message=str(exc)),
            )
        woken: Wake | None = None
        if self.machine.is_gate(target):
            entered = await self._enter_gate(ctx, record, step, target)
            if isinstance(entered, Next):
                decision, target = entered, entered.target
            else:
                pending, woken = entered
                record = record.model_copy(update={"pending_approval": pending})
        now = step.ended_at if step.ended_at is not None else await self._time_of(ctx, step)
        updated = record.model_copy(
            update={
                "state": target,
                "data": step.data,
                "history": [
                    *record.history,
                    Transition(from_state=record.state, to_state=target, at=now, note=decision.note),
                ],
                "result": decision.result if decision.result is not None else record.result,
                "error": decision.error if decision.error is not None else record.error,
                # Only a gate state has a pending approval: leaving one clears it in this write.
                "pending_approval": record.pending_approval if self.machine.is_gate(target) else None,
                "spend": record.spend.plus(step.usage, step.tool_calls_made),
            }
        )
        after = updated.data.model_dump(mode="json")
        produced = {field: value for field, value in after.items() if before.get(field) != value}
        payload: dict[str, Any] = {
            "note": decision.note,
            "produced": produced,
            "result": decision.result,
            "error": decision.error.model_dump() if decision.error else None,
        }
        decided_before, intruded_before = approvals_before
        if len(updated.approvals) > decided_before:
            payload["approval"] = updated.approvals[-1].model_dump(mode="json")
            if record.pending_approval is not None:
                # How long the gate waited for its outcome (the metrics' gate wait), from journaled times.
                waited = updated.approvals[-1].decided_at - record.pending_approval.requested_at
                payload["gate_wait_seconds"] = round(max(0.0, waited), 3)
        if target == BUDGET_STATE and updated.budget_stop is not None:
            payload["budget_stop"] = updated.budget_stop.model_dump(mode="json")
        if record.state == BUDGET_STATE and target != self.machine.failure:
            # Extended at the budget gate: the new limits go on the record of the decision.
            payload["budget"] = updated.budget.model_dump(mode="json")
        if step.calls:
            # When and where each call ran: the source of the task's spans (app/audit/traces.py).
            payload["calls"] = [call.model_dump(mode="json", exclude_none=True) for call in step.calls]
        if step.usage:
            # What the step's model calls used: per call, as journaled (tokens, cost, model).
            payload["usage"] = [usage.model_dump(mode="json") for usage in step.usage]
        if step.stalls:
            # The outages this step waited out, for the record of when the task was stalled and why.
            payload["stalls"] = [stall.model_dump(mode="json") for stall in step.stalls]
        if len(updated.intrusions) > intruded_before:
            # Refused wakes at the gate go into the audit record with the transition that left it.
            payload["intrusions"] = [i.model_dump(mode="json") for i in updated.intrusions[intruded_before:]]
        if updated.pending_approval is not None and self.machine.is_gate(target):
            payload["pending_approval"] = {
                "approval_hash": updated.pending_approval.approval_hash,
                "approvers": updated.pending_approval.approvers,
                "approval_ticket_id": updated.pending_approval.approval_ticket_id,
            }
        # What the step's journaled calls wrote to the log on their way is no longer kept here.
        unlogged = [item for item in updated.unlogged if item.seq > step.logged]
        updated = self._seal(
            updated.model_copy(update={"unlogged": unlogged}), "transition", record.state, now, payload
        )
        armed: Armed | None = None
        if self.machine.is_terminal(target) or self.machine.is_gate(target):
            # Before a task waits (maybe for days) or ends, the log holds its whole history.
            updated, written_at = await self._write_events(ctx, updated)
            if woken is not None:
                armed = Armed(woken, written_at)
        # The crash matrix's fault switch: a no-op unless a test armed it (app/runtime/faults.py).
        crash_if_planned(updated.agent, updated.task_id, updated.event_seq)
        ctx.set(TASK_KEY, updated)
        return updated, armed

    async def _enter_gate(
        self, ctx: ObjectContext, record: TaskRecord[D], step: StepContext[D], gate: str
    ) -> tuple[PendingApproval, Wake] | Next:
        """Open the gate being entered and ask for its approval, before the state says it waits.

        Runs as part of the transition, so `status` never shows a gate state without its pending
        approval. A refused request fails the task from the state it came from.
        """
        entering = record.model_copy(
            update={
                "state": gate,
                "data": step.data,
                "history": [*record.history, Transition(from_state=record.state, to_state=gate, at=0.0)],
                "spend": step.spent(),
            }
        )
        at_gate = StepContext(ctx, entering, view=functools.partial(view_of, record, self.machine))
        # Outages waited out while opening the gate belong to this transition's record too.
        at_gate.stalls = step.stalls
        at_gate.logged = step.logged
        at_gate.ended_at = step.ended_at
        try:
            entered = await enter_gate(at_gate, self.approvals[gate](at_gate))
            # The transition into the gate is timed by the gate's last call (the request).
            if at_gate.ended_at is not None:
                step.ended_at = at_gate.ended_at
            step.logged = max(step.logged, at_gate.logged)
            step.tool_calls_made += at_gate.tool_calls_made
            step.calls.extend(at_gate.calls)
            return entered
        except TerminalError as exc:
            assert self.machine.failure is not None
            step.logged, step.ended_at = max(step.logged, at_gate.logged), None
            step.tool_calls_made += at_gate.tool_calls_made
            step.calls.extend(at_gate.calls)
            return Next(
                target=self.machine.failure,
                error=TaskError(state=gate, code="step_failed", message=exc.message),
            )

    def _seal(
        self,
        record: TaskRecord[D],
        kind: str,
        from_state: str | None,
        at: float,
        payload: dict[str, Any],
    ) -> TaskRecord[D]:
        """The record with the event for its new state sealed, chained and kept as unlogged.

        Sealing is pure (the hash of journaled values), and the sealed event goes into the task
        record's next write, which Restate compares on replay: a replay on code that words a note
        differently is refused before anything is written, so it cannot fork the chain.
        """
        seq = record.event_seq + 1
        draft = EventDraft(
            agent=record.agent,
            task_id=record.task_id,
            seq=seq,
            kind=kind,
            from_state=from_state,
            to_state=record.state,
            at=at,
            payload=payload,
            prev_hash=record.last_event_hash,
        )
        event = new_event(draft)
        return record.model_copy(
            update={"event_seq": seq, "last_event_hash": event.hash, "unlogged": [*record.unlogged, event]}
        )

    async def _write_events(self, ctx: ObjectContext, record: TaskRecord[D]) -> tuple[TaskRecord[D], float]:
        """Write the record's unlogged events to the log as a journaled step that must succeed
        (retried until the log takes them); the record without them, and the time after."""
        first, last = record.unlogged[0].seq, record.unlogged[-1].seq
        snapshot = None
        if snapshot_due(record.unlogged, terminal=self.machine.is_terminal(record.state)):
            snapshot = view_of(record, self.machine).model_dump(mode="json")
        written = await ctx.run_typed(
            f"events {first}-{last}", write_events, RunOptions(type_hint=Mark), record.unlogged, snapshot
        )
        return record.model_copy(update={"unlogged": []}), written.at

    async def _time_of(self, ctx: ObjectContext, step: StepContext[D]) -> float:
        """The time of a transition with no journaled time of this invocation to go by (a step that
        failed after its last call, or a pure step right after a restart): one journaled step reads
        the clock (and writes pending events on its way, as any call does)."""
        pending = step.pending_events()
        mark = await ctx.run_typed(
            f"{step.state} ended", stamp, RunOptions(type_hint=Mark), pending, step.snapshot_for(pending)
        )
        step.marked(mark)
        return mark.at

    async def status(self, ctx: ObjectSharedContext) -> TaskView:
        record = await self.load(ctx)
        if isinstance(record, TaskSummary):
            return record.view()
        if record is None:
            raise TerminalError(f"no {self.machine.name} task {ctx.key()}", status_code=404)
        view = view_of(record, self.machine)
        stall = await ctx.get(STALL_KEY, type_hint=Stall)
        if stall is not None and not view.terminal:
            view.stall = StallView.of(stall)
        return view


def snapshot_due(pending: list[Event], terminal: bool) -> bool:
    """A snapshot goes with an ending's events, and with any write that passes every N-th event."""
    every = get_settings().event_snapshot_every
    return bool(pending) and (terminal or any(item.seq % every == 0 for item in pending))


async def write_events(pending: list[Event], snapshot: dict[str, Any] | None) -> Mark:
    """Write sealed events to the event log (one transaction), with the snapshot of the task's view
    as of the last of them if given; only inside `ctx.run_typed`."""
    store = store_for(get_settings().database_url)
    inserted = await asyncio.to_thread(store.write, pending, snapshot)
    # Counted here, where each event is inserted once (a retried write inserts nothing).
    metrics.observe_logged(inserted)
    if inserted:
        trace_export.nudge()
    return Mark(at=time.time(), logged=pending[-1].seq if pending else 0)


async def write_events_quietly(pending: list[Event], snapshot: dict[str, Any] | None = None) -> int:
    """On the way into a journaled call: write pending events, never failing the call for it (the
    events stay in the task record and are written by a later call, at the latest before the task
    waits or ends). Returns the highest seq written, 0 for none."""
    if not pending:
        return 0
    try:
        return (await write_events(pending, snapshot)).logged
    except Exception as exc:  # the log unavailable or refusing: the step itself must not fail
        first = pending[0]
        log.warning(
            "%s/%s: events %d-%d not written to the log yet (kept, retried later): %s: %s",
            first.agent,
            first.task_id,
            first.seq,
            pending[-1].seq,
            type(exc).__name__,
            exc,
        )
        return 0


async def stamp(pending: list[Event], snapshot: dict[str, Any] | None) -> Mark:
    """The clock, after writing pending events on the way; only inside `ctx.run_typed`."""
    logged = await write_events_quietly(pending, snapshot)
    return Mark(at=time.time(), logged=logged)


def agent_object(name: str, description: str) -> restate.VirtualObject:
    """An agent's virtual object, with the Restate options every agent needs, chosen on purpose."""
    settings = get_settings()
    seconds = settings.inactivity_timeout_seconds
    return restate.VirtualObject(
        name,
        description=description,
        # Suspend idle invocations soon (a task parked at a gate holds no worker memory), but give
        # a step in flight until the abort timeout, longer than the slowest LLM call, to finish.
        # 0 defers to the server's setting (the always-replay tests set 0s there).
        inactivity_timeout=timedelta(seconds=seconds) if seconds > 0 else None,
        abort_timeout=timedelta(seconds=settings.llm_timeout_seconds + 60),
        # Restate keeps a journal no longer than the invocation's result: both get the same retention.
        journal_retention=timedelta(days=settings.journal_retention_days),
        idempotency_retention=timedelta(days=settings.journal_retention_days),
        invocation_retry_policy=invocation_retry_policy(),
    )


def invocation_retry_policy() -> restate.InvocationRetryPolicy:
    """Retries of a whole invocation (a crashed or unreachable agent service).

    Backoff is capped (30 s by default, `AGENT_RETRY_MAX_INTERVAL_SECONDS`) so a restarted worker
    is picked up quickly; after 200 attempts (well over an hour at the default) the invocation is
    paused, not killed, so an operator can resume it (`agentctl resume`): nothing is lost.
    """
    return restate.InvocationRetryPolicy(
        initial_interval=timedelta(milliseconds=250),
        exponentiation_factor=2.0,
        max_interval=timedelta(seconds=get_settings().invocation_retry_max_interval_seconds),
        max_attempts=200,
        on_max_attempts="pause",
    )
