"""State machines declared as data, a pure transition function and the Mermaid diagram derived from them.

Nothing here imports Restate: the declaration is checked when it is built, and `transition` is a
pure function, so both are unit-testable and the diagram can never drift from what the engine runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# The budget gate's state (app/runtime/budget.py), declared by `Machine.declare(budget_gate=True)`.
BUDGET = "BUDGET"


class MachineDeclarationError(ValueError):
    """The declaration itself is inconsistent (caught when the machine is built, at import time)."""


class IllegalTransition(ValueError):
    """A step asked for a transition the machine does not declare."""

    def __init__(self, machine: str, current: str, target: str, allowed: Iterable[str]) -> None:
        allowed_list = sorted(allowed)
        self.machine = machine
        self.current = current
        self.target = target
        self.allowed = allowed_list
        where = ", ".join(allowed_list) if allowed_list else "nothing (terminal state)"
        super().__init__(
            f"{machine}: undeclared transition {current} -> {target}; "
            f"from {current} the machine allows {where}"
        )


@dataclass(frozen=True)
class Gate:
    """An approval gate: the task suspends in this state until a human decides or time runs out.

    Each outcome names the state it leads to; all three must be declared transitions of the gate.
    """

    approve: str
    reject: str
    timeout: str

    def outcomes(self) -> dict[str, str]:
        return {"approve": self.approve, "reject": self.reject, "timeout": self.timeout}


@dataclass(frozen=True)
class Machine:
    """An explicit state machine: its states, the transitions it allows, where it starts and ends.

    `failure` names the state a step's permanent error leads to; like every other transition it must
    be declared from each state that can fail.
    """

    name: str
    initial: str
    transitions: Mapping[str, frozenset[str]]
    terminal: frozenset[str]
    failure: str | None = None
    descriptions: Mapping[str, str] = field(default_factory=dict)
    gates: Mapping[str, Gate] = field(default_factory=dict)

    def __post_init__(self) -> None:
        states = self.states
        if self.initial not in self.transitions:
            raise MachineDeclarationError(f"{self.name}: initial state {self.initial} is not declared")
        for source, targets in self.transitions.items():
            unknown = targets - states
            if unknown:
                raise MachineDeclarationError(
                    f"{self.name}: {source} leads to undeclared states {sorted(unknown)}"
                )
        for state in self.terminal:
            if self.transitions.get(state):
                raise MachineDeclarationError(f"{self.name}: terminal state {state} has outgoing transitions")
            if state not in self.transitions:
                raise MachineDeclarationError(f"{self.name}: terminal state {state} is not declared")
        if self.failure is not None and self.failure not in self.terminal:
            raise MachineDeclarationError(f"{self.name}: failure state {self.failure} must be terminal")
        for state in states - self.terminal:
            if not self.transitions[state]:
                raise MachineDeclarationError(f"{self.name}: {state} is a dead end but not terminal")
        for state, gate in self.gates.items():
            if state not in states or state in self.terminal:
                raise MachineDeclarationError(
                    f"{self.name}: gate {state} must be a declared, non-terminal state"
                )
            for outcome, target in gate.outcomes().items():
                if target not in self.transitions[state]:
                    raise MachineDeclarationError(
                        f"{self.name}: gate {state}'s {outcome} outcome leads to {target}, "
                        "which is not a declared transition"
                    )
        unreachable = states - self._reachable()
        if unreachable:
            raise MachineDeclarationError(f"{self.name}: states {sorted(unreachable)} are unreachable")

    @classmethod
    def declare(
        cls,
        name: str,
        *,
        initial: str,
        transitions: Mapping[str, Iterable[str]],
        terminal: Iterable[str],
        failure: str | None = None,
        descriptions: Mapping[str, str] | None = None,
        gates: Mapping[str, Gate] | None = None,
        budget_gate: bool = False,
    ) -> Machine:
        """Build a machine from plain lists; terminal states need not be listed as sources.

        `budget_gate` adds the `BUDGET` gate (app/runtime/budget.py): every working state may go
        there, and from there back to any working state (a human extended the budget: the task
        resumes where it was stopped) or to `failure` (stopped, or no decision in time)."""
        terminal_set = frozenset(terminal)
        table = {source: frozenset(targets) for source, targets in transitions.items()}
        for state in terminal_set:
            table.setdefault(state, frozenset())
        gate_table = dict(gates or {})
        if budget_gate:
            if failure is None:
                raise MachineDeclarationError(f"{name}: a budget gate needs a failure state to stop in")
            working = {state for state in table if state not in terminal_set and state not in gate_table}
            for state in working:
                table[state] = table[state] | {BUDGET}
            table[BUDGET] = frozenset(working | {failure})
            # Its "approve" resumes the stopped state (the engine's to decide); declared as data
            # here, as every gate's outcomes are, with stop and timeout leading to failure.
            gate_table[BUDGET] = Gate(approve=failure, reject=failure, timeout=failure)
        return cls(
            name=name,
            initial=initial,
            transitions=table,
            terminal=terminal_set,
            failure=failure,
            descriptions=dict(descriptions or {}),
            gates=gate_table,
        )

    @property
    def states(self) -> frozenset[str]:
        return frozenset(self.transitions)

    def allowed(self, current: str) -> frozenset[str]:
        if current not in self.transitions:
            raise IllegalTransition(self.name, current, "?", ())
        return self.transitions[current]

    def is_terminal(self, state: str) -> bool:
        return state in self.terminal

    def is_gate(self, state: str) -> bool:
        return state in self.gates

    @property
    def has_budget_gate(self) -> bool:
        return BUDGET in self.gates

    def can_fail(self, state: str) -> bool:
        return self.failure is not None and self.failure in self.transitions.get(state, frozenset())

    def _reachable(self) -> set[str]:
        seen = {self.initial}
        frontier = [self.initial]
        while frontier:
            for target in self.transitions[frontier.pop()]:
                if target not in seen:
                    seen.add(target)
                    frontier.append(target)
        return seen

    def ordered_states(self) -> list[str]:
        """States in breadth-first order from the initial state: a stable, readable order."""
        order = [self.initial]
        index = 0
        while index < len(order):
            for target in sorted(self.transitions[order[index]] - {BUDGET}, key=self._terminal_last):
                if target not in order:
                    order.append(target)
            index += 1
        if BUDGET in self.transitions:
            # Reached from everywhere: shown after the task's own flow, before its ends.
            ends = [state for state in order if state in self.terminal]
            order = [state for state in order if state not in self.terminal] + [BUDGET] + ends
        return order

    def _terminal_last(self, state: str) -> tuple[bool, str]:
        return (state in self.terminal, state)


def transition(machine: Machine, current: str, target: str) -> str:
    """Return `target` if the machine declares `current -> target`, else raise `IllegalTransition`."""
    allowed = machine.allowed(current)
    if target not in allowed:
        raise IllegalTransition(machine.name, current, target, allowed)
    return target


def to_mermaid(machine: Machine) -> str:
    """A Mermaid `stateDiagram-v2` generated from the declaration (never drawn by hand)."""
    lines = ["stateDiagram-v2", f"    [*] --> {machine.initial}"]
    for source in machine.ordered_states():
        if source == BUDGET:
            # Entered from every working state and back to the one it stopped: one line and a
            # note say it, where two arrows per state would bury the task's own flow.
            lines.append(f"    {BUDGET} --> {machine.failure} : stop / timeout")
            continue
        gate = machine.gates.get(source)
        for target in sorted(machine.transitions[source] - {BUDGET}, key=machine._terminal_last):
            labels = [name for name, goes_to in gate.outcomes().items() if goes_to == target] if gate else []
            label = f" : {' / '.join(labels)}" if labels else ""
            lines.append(f"    {source} --> {target}{label}")
    for state in sorted(machine.terminal):
        lines.append(f"    {state} --> [*]")
    for state, text in machine.descriptions.items():
        # A `;` ends a Mermaid statement: the rest of the line would be a syntax error.
        lines.append(f"    {state} : {state} ({text.replace(';', ',')})")
    for state in sorted(machine.gates):
        if state == BUDGET:
            # No `:` or `;` in a note's text: Mermaid takes either for the end of the note.
            lines.append(
                f"    note right of {BUDGET} : budget gate (from any working state whose next step would "
                "exceed the task's budget, extend resumes it)"
            )
            continue
        lines.append(f"    note right of {state} : approval gate (human decision or timeout)")
    return "\n".join(lines) + "\n"


# How the console marks a task's way through its diagram (Mermaid classDef styles).
VISITED_STYLE = "fill:#dbeafe,stroke:#1d4ed8,color:#0b1f44"
CURRENT_STYLE = "fill:#fde68a,stroke:#b45309,stroke-width:3px,color:#3b2300"


def to_mermaid_with_path(machine: Machine, visited: Iterable[str], current: str | None) -> str:
    """The diagram with the states a task has been through and the one it is in marked. Names not
    in the machine are left out: a task's history is data, the diagram's source is code."""
    states = machine.states
    been = sorted({state for state in visited if state in states} - {current})
    lines = [
        to_mermaid(machine).rstrip("\n"),
        f"    classDef visited {VISITED_STYLE}",
        f"    classDef current {CURRENT_STYLE}",
    ]
    if been:
        lines.append(f"    class {','.join(been)} visited")
    if current in states:
        lines.append(f"    class {current} current")
    return "\n".join(lines) + "\n"
