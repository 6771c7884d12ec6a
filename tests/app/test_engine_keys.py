"""Idempotency keys are derived from the task and its salt (drawn once, journaled), never from the
clock or randomness at the call; task ids that could not travel in a header are hashed or refused."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from pydantic import BaseModel
from restate import TerminalError

from app.runtime.engine import (
    MAX_KEY_TASK_PART,
    StepContext,
    TaskRecord,
    Transition,
    new_task_seed,
    refuse_bad_task_id,
)

SALT = "0123456789abcdef01234567"


class Data(BaseModel):
    value: int = 0


def record(task_id: str, history: Sequence[tuple[str | None, str]], salt: str = SALT) -> TaskRecord[Data]:
    return TaskRecord[Data](
        task_id=task_id,
        agent="AgentTask",
        model="offline",
        input_hash="h",
        state=history[-1][1],
        history=[Transition(from_state=a, to_state=b, at=float(i)) for i, (a, b) in enumerate(history)],
        data=Data(),
        key_salt=salt,
    )


def step_for(rec: TaskRecord[Data]) -> StepContext[Data]:
    ctx: Any = None  # key derivation never touches the Restate context
    return StepContext(ctx, rec)


def test_key_names_agent_task_state_visit_and_index() -> None:
    step = step_for(record("t-1", [(None, "INITIAL"), ("INITIAL", "EXECUTE")]))
    assert [step.idempotency_key(i) for i in range(3)] == [
        f"AgentTask:t-1:{SALT}:EXECUTE.1:0",
        f"AgentTask:t-1:{SALT}:EXECUTE.1:1",
        f"AgentTask:t-1:{SALT}:EXECUTE.1:2",
    ]


def test_same_record_gives_same_keys_on_every_replay() -> None:
    history = [(None, "INITIAL"), ("INITIAL", "EXECUTE")]
    assert step_for(record("t-1", history)).idempotency_key(0) == step_for(
        record("t-1", history)
    ).idempotency_key(0)


def test_a_second_visit_of_a_state_gets_fresh_keys() -> None:
    history = [(None, "A"), ("A", "B"), ("B", "A")]
    assert step_for(record("t-1", history)).idempotency_key(0) == f"AgentTask:t-1:{SALT}:A.2:0"


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


def test_the_salt_makes_keys_unguessable_from_the_task_id_alone() -> None:
    history = [(None, "FETCH")]
    first, second = new_task_seed().key_salt, new_task_seed().key_salt
    assert first != second and len(first) == 24
    assert step_for(record("t-1", history, first)).idempotency_key(0) != step_for(
        record("t-1", history, second)
    ).idempotency_key(0)


def test_tasks_created_before_salts_keep_their_key_shape() -> None:
    assert step_for(record("t-1", [(None, "FETCH")], salt="")).idempotency_key(0) == "AgentTask:t-1:FETCH.1:0"


@pytest.mark.parametrize("task_id", ["tâche-été", "with space", "a/b", "emoji-\U0001f600"])
def test_task_ids_a_header_cannot_carry_are_hashed_into_ascii_keys(task_id: str) -> None:
    key = step_for(record(task_id, [(None, "FETCH")])).idempotency_key(0)
    assert key.isascii() and key.isprintable() and " " not in key
    assert key.startswith("AgentTask:sha256-")


@pytest.mark.parametrize("task_id", ["bell\x07", "line\nbreak", "nul\x00", "rtl\u202e", "x" * 257, "   "])
def test_task_ids_that_cannot_work_end_to_end_are_refused_with_400(task_id: str) -> None:
    with pytest.raises(TerminalError) as refused:
        refuse_bad_task_id(task_id)
    assert refused.value.status_code == 400 and "invalid task id" in refused.value.message


def test_ordinary_task_ids_pass() -> None:
    refuse_bad_task_id("report-EXP-0123456789ab")
    refuse_bad_task_id("tâche-été")
