"""Idempotency keys are derived from the task, never from the clock or randomness."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from app.engine import MAX_KEY_TASK_PART, StepContext, TaskRecord, Transition


class Data(BaseModel):
    value: int = 0


def record(task_id: str, history: Sequence[tuple[str | None, str]]) -> TaskRecord[Data]:
    return TaskRecord[Data](
        task_id=task_id,
        agent="AgentTask",
        model="offline",
        input_hash="h",
        state=history[-1][1],
        history=[Transition(from_state=a, to_state=b, at=float(i)) for i, (a, b) in enumerate(history)],
        data=Data(),
    )


def step_for(rec: TaskRecord[Data]) -> StepContext[Data]:
    ctx: Any = None  # key derivation never touches the Restate context
    return StepContext(ctx, rec)


def test_key_names_agent_task_state_visit_and_index() -> None:
    step = step_for(record("t-1", [(None, "INITIAL"), ("INITIAL", "EXECUTE")]))
    assert [step.idempotency_key(i) for i in range(3)] == [
        "AgentTask:t-1:EXECUTE.1:0",
        "AgentTask:t-1:EXECUTE.1:1",
        "AgentTask:t-1:EXECUTE.1:2",
    ]


def test_same_record_gives_same_keys_on_every_replay() -> None:
    history = [(None, "INITIAL"), ("INITIAL", "EXECUTE")]
    assert step_for(record("t-1", history)).idempotency_key(0) == step_for(
        record("t-1", history)
    ).idempotency_key(0)


def test_a_second_visit_of_a_state_gets_fresh_keys() -> None:
    history = [(None, "A"), ("A", "B"), ("B", "A")]
    assert step_for(record("t-1", history)).idempotency_key(0) == "AgentTask:t-1:A.2:0"


def test_different_tasks_never_share_keys() -> None:
    history = [(None, "EXECUTE")]
    assert step_for(record("t-1", history)).idempotency_key(0) != step_for(
        record("t-2", history)
    ).idempotency_key(0)


def test_very_long_task_ids_are_hashed_to_keep_keys_short() -> None:
    long_id = "x" * (MAX_KEY_TASK_PART + 1)
    key = step_for(record(long_id, [(None, "EXECUTE")])).idempotency_key(0)
    assert len(key) < 255 and key.startswith("AgentTask:sha256-")
    assert key == step_for(record(long_id, [(None, "EXECUTE")])).idempotency_key(0)
