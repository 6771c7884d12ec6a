"""Budgets as data: lowering, the limit a next step would pass, the extension a human grants, the
BUDGET gate a machine declares, and the input's `"budget"`."""

from __future__ import annotations

from decimal import Decimal

import pytest
from restate import TerminalError

from app.agents.agent_task import MACHINE as AGENT_TASK
from app.runtime.budget import BUDGET_STATE, Budget, Spend
from app.runtime.engine import AgentEngine, Next, StepContext, split_budget
from app.runtime.machine import Machine, MachineDeclarationError, to_mermaid


def test_an_input_lowers_a_limit_and_never_raises_one() -> None:
    agent = Budget(max_tokens=1000, max_tool_calls=10)
    asked = Budget(max_tokens=5000, max_tool_calls=3, max_cost_usd=Decimal("1"))
    assert agent.lowered_by(asked) == Budget(max_tokens=1000, max_tool_calls=3, max_cost_usd=Decimal("1"))
    assert agent.lowered_by(None) == agent


@pytest.mark.parametrize(
    ("budget", "spend", "elapsed", "next_step", "limit"),
    [
        (Budget(max_tool_calls=2), Spend(tool_calls=1), 0, "tool", None),
        (Budget(max_tool_calls=2), Spend(tool_calls=2), 0, "tool", "tool_calls"),
        (Budget(max_tool_calls=2), Spend(tool_calls=2), 0, "llm", None),  # a model call may still run
        (Budget(max_tokens=100), Spend(input_tokens=60, output_tokens=40), 0, "llm", "tokens"),
        (Budget(max_tokens=100), Spend(input_tokens=60, output_tokens=39), 0, "llm", None),
        (Budget(max_cost_usd=Decimal("0.10")), Spend(cost_usd=Decimal("0.10")), 0, "llm", "cost"),
        (Budget(max_seconds=60), Spend(), 60.0, "tool", "seconds"),
        (Budget(), Spend(tool_calls=10**6, input_tokens=10**9), 10**7, "llm", None),
    ],
)
def test_the_limit_the_next_step_would_pass(
    budget: Budget, spend: Spend, elapsed: float, next_step: str, limit: str | None
) -> None:
    assert budget.reached(spend, elapsed, next_step) == limit  # type: ignore[arg-type]


def test_an_extension_doubles_the_limit_reached_and_only_it() -> None:
    budget = Budget(max_tool_calls=3, max_tokens=100)
    assert budget.extended("tool_calls", Spend(tool_calls=3), 0) == Budget(max_tool_calls=6, max_tokens=100)
    assert budget.extended("tokens", Spend(input_tokens=150), 0).max_tokens == 300
    assert Budget(max_seconds=60).extended("seconds", Spend(), 3600).max_seconds == 3660


def test_the_budget_gate_is_declared_from_every_working_state_and_drawn_once() -> None:
    working = AGENT_TASK.states - AGENT_TASK.terminal - set(AGENT_TASK.gates)
    assert all(BUDGET_STATE in AGENT_TASK.transitions[state] for state in working)
    assert BUDGET_STATE not in AGENT_TASK.transitions["WAIT_APPROVAL"]
    assert AGENT_TASK.transitions[BUDGET_STATE] == working | {"FAILED"}
    assert AGENT_TASK.is_gate(BUDGET_STATE) and AGENT_TASK.has_budget_gate
    diagram = to_mermaid(AGENT_TASK)
    assert [line for line in diagram.splitlines() if "BUDGET" in line and "-->" in line] == [
        "    BUDGET --> FAILED : stop / timeout"
    ]
    assert "    note right of BUDGET : budget gate (from any working state" in diagram
    [note] = [line for line in diagram.splitlines() if "note right of BUDGET" in line]
    assert ":" not in note.split(" : ", 1)[1] and ";" not in note  # Mermaid would end the note there


def test_a_budget_gate_needs_a_failure_state_and_a_budget_needs_the_gate() -> None:
    with pytest.raises(MachineDeclarationError, match="failure state"):
        Machine.declare("NoFail", initial="A", transitions={"A": ["B"]}, terminal=["B"], budget_gate=True)
    plain = Machine.declare(
        "Plain", initial="A", transitions={"A": ["B", "F"]}, terminal=["B", "F"], failure="F"
    )

    async def step(_: StepContext[Spend]) -> Next:
        return Next(target="B")

    with pytest.raises(ValueError, match="BUDGET gate"):
        AgentEngine(plain, Spend, {"A": step}, budget=Budget(max_tool_calls=1))


def test_the_inputs_budget_is_the_engines_not_the_agents() -> None:
    own, budget = split_budget(b'{"user_id": "u", "task": "t", "budget": {"max_tool_calls": 2}}')
    assert own == b'{"user_id": "u", "task": "t"}' and budget == Budget(max_tool_calls=2)
    assert split_budget(b'{"user_id": "u"}') == (b'{"user_id": "u"}', None)
    assert split_budget(b"not json") == (b"not json", None)
    with pytest.raises(TerminalError) as refused:
        split_budget(b'{"budget": {"max_seconds": 0}}')
    assert refused.value.status_code == 400 and "budget.max_seconds" in refused.value.message
