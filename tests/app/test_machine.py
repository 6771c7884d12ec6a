"""The machine declaration, the pure transition function and the generated diagram."""

from __future__ import annotations

import itertools
import subprocess
import sys
from typing import Any

import pytest

from app.agents.agent_task import MACHINE as AGENT_TASK
from app.runtime.machine import (
    Gate,
    IllegalTransition,
    Machine,
    MachineDeclarationError,
    to_mermaid,
    to_mermaid_with_path,
    transition,
)

HAPPY_PATH = ["INITIAL", "FETCH_CONTEXT", "ANALYZE", "PLAN", "WAIT_APPROVAL", "EXECUTE", "VERIFY", "COMPLETE"]


def test_agent_task_happy_path_is_declared() -> None:
    for current, target in itertools.pairwise(HAPPY_PATH):
        assert transition(AGENT_TASK, current, target) == target


@pytest.mark.parametrize("state", HAPPY_PATH[:-1])
def test_every_working_state_can_fail(state: str) -> None:
    assert transition(AGENT_TASK, state, "FAILED") == "FAILED"
    assert AGENT_TASK.can_fail(state)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        ("INITIAL", "EXECUTE"),  # skipping the plan
        ("PLAN", "COMPLETE"),  # skipping execution and verification
        ("EXECUTE", "PLAN"),  # going back
        ("COMPLETE", "FAILED"),  # leaving a terminal state
        ("FAILED", "INITIAL"),
    ],
)
def test_undeclared_transition_is_refused_with_a_clear_error(current: str, target: str) -> None:
    with pytest.raises(IllegalTransition) as raised:
        transition(AGENT_TASK, current, target)
    message = str(raised.value)
    assert f"undeclared transition {current} -> {target}" in message
    assert raised.value.allowed == sorted(AGENT_TASK.transitions[current])


def test_unknown_state_is_refused() -> None:
    with pytest.raises(IllegalTransition):
        transition(AGENT_TASK, "NOPE", "FAILED")


def test_terminal_states() -> None:
    assert AGENT_TASK.terminal == {"COMPLETE", "FAILED"}
    assert AGENT_TASK.is_terminal("COMPLETE") and not AGENT_TASK.is_terminal("VERIFY")


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"initial": "X", "transitions": {"A": ["B"]}, "terminal": ["B"]}, "initial state X"),
        ({"initial": "A", "transitions": {"A": ["C"]}, "terminal": ["B"]}, "undeclared states ['C']"),
        (
            {"initial": "A", "transitions": {"A": ["B"], "B": ["A"]}, "terminal": ["B"]},
            "terminal state B has",
        ),
        ({"initial": "A", "transitions": {"A": ["B"], "C": ["B"]}, "terminal": ["B"]}, "unreachable"),
        ({"initial": "A", "transitions": {"A": ["B"], "B": []}, "terminal": []}, "dead end"),
        (
            {"initial": "A", "transitions": {"A": ["B", "F"]}, "terminal": ["B"], "failure": "F"},
            "undeclared states",
        ),
    ],
)
def test_inconsistent_declarations_are_refused(kwargs: dict[str, Any], problem: str) -> None:
    with pytest.raises(MachineDeclarationError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        Machine.declare("Broken", **kwargs)


def test_mermaid_lists_every_declared_transition_and_nothing_else() -> None:
    diagram = to_mermaid(AGENT_TASK)
    assert diagram.startswith("stateDiagram-v2\n")
    assert "    [*] --> INITIAL" in diagram
    edges = {
        tuple(line.strip().split(" : ")[0].split(" --> "))
        for line in diagram.splitlines()
        if " --> " in line and "[*]" not in line
    }
    # The budget gate is drawn as one line and a note (tests/app/test_budget.py), every other
    # declared transition as an arrow.
    declared = {
        (source, target)
        for source, targets in AGENT_TASK.transitions.items()
        for target in targets
        if "BUDGET" not in (source, target)
    }
    assert edges == declared | {("BUDGET", "FAILED")}
    assert "    COMPLETE --> [*]" in diagram and "    FAILED --> [*]" in diagram


def test_read_only_plans_skip_the_gate() -> None:
    assert transition(AGENT_TASK, "PLAN", "EXECUTE") == "EXECUTE"


def test_gate_outcomes_are_declared_and_labelled() -> None:
    gate = AGENT_TASK.gates["WAIT_APPROVAL"]
    assert gate.outcomes() == {"approve": "EXECUTE", "reject": "FAILED", "timeout": "FAILED"}
    assert AGENT_TASK.is_gate("WAIT_APPROVAL") and not AGENT_TASK.is_gate("PLAN")
    diagram = to_mermaid(AGENT_TASK)
    assert "    WAIT_APPROVAL --> EXECUTE : approve\n" in diagram
    assert "    WAIT_APPROVAL --> FAILED : reject / timeout\n" in diagram


@pytest.mark.parametrize(
    ("gate", "problem"),
    [
        (Gate(approve="B", reject="F", timeout="X"), "timeout outcome leads to X"),
        (Gate(approve="F", reject="F", timeout="F"), None),
    ],
)
def test_gate_outcomes_must_be_declared_transitions(gate: Gate, problem: str | None) -> None:
    def declare() -> Machine:
        return Machine.declare(
            "Gated",
            initial="A",
            transitions={"A": ["G"], "G": ["B", "F"]},
            terminal=["B", "F"],
            failure="F",
            gates={"G": gate},
        )

    if problem is None:
        assert declare().is_gate("G")
    else:
        with pytest.raises(MachineDeclarationError, match=problem):
            declare()


def test_a_terminal_state_cannot_be_a_gate() -> None:
    with pytest.raises(MachineDeclarationError, match="non-terminal"):
        Machine.declare(
            "Gated", initial="A", transitions={"A": ["B"]}, terminal=["B"], gates={"B": Gate("B", "B", "B")}
        )


def test_diagram_command_prints_the_generated_diagram() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app", "diagram", "AgentTask"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == to_mermaid(AGENT_TASK)


def test_diagram_command_names_unknown_machines() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app", "diagram", "Nope"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert "unknown machine 'Nope'" in done.stderr and "AgentTask" in done.stderr


def test_a_tasks_path_is_marked_on_its_diagram_and_nothing_else_is() -> None:
    text = to_mermaid_with_path(AGENT_TASK, ["INITIAL", "FETCH_CONTEXT", "NOT_A_STATE", "ANALYZE"], "ANALYZE")
    assert text.startswith(to_mermaid(AGENT_TASK).rstrip("\n"))
    assert "    class FETCH_CONTEXT,INITIAL visited\n" in text
    assert text.endswith("    class ANALYZE current\n")
    assert "NOT_A_STATE" not in text
    assert "class " not in to_mermaid_with_path(AGENT_TASK, [], None).split("classDef current")[1]


def test_a_description_never_ends_a_mermaid_statement() -> None:
    machine = Machine.declare(
        name="Semicolons",
        initial="A",
        transitions={"A": ["B"], "B": []},
        terminal=["B"],
        descriptions={"A": "one; two"},
    )
    assert "    A : A (one, two)\n" in to_mermaid(machine)
