"""AgentTask's offline behaviour: what the offline model answers for its three LLM tasks.

Same input, same output: no randomness, no clock, no network. The rules are deliberately simple so
a demo and the tests can predict them.

**Intents** (`analyze`), from whole words of the task, case-insensitive; a task can match several,
always reported and planned in this order:

| intent        | words                                                    | tool               |
|---------------|----------------------------------------------------------|--------------------|
| `open_ticket` | ticket(s), bug(s), broken, issue(s), incident, outage     | `create_ticket`    |
| `notify`      | notify, notification, email, tell, remind, reminder, alert | `send_notification`|
| `record_note` | note(s), remember                                        | `add_user_note`    |
| `review_history` | history, summarize, summarise, recap                | `lookup_user_history` |

No match is the intent `unknown`. Several matches are joined with `+` (`open_ticket+notify`).

**Plan** (`plan`): one step per intent found in the task, in the order above, each only if its tool
is in the given catalog (`PlanInput.tools`); `unknown` (or no tool available) gives an empty plan.
`create_ticket`: title = the task (whitespace collapsed) cut to 80 characters; body = the task and
the user's most recent history event, if any; priority `high` when the task says "urgent", "asap"
or "outage", else `normal`; requester = the user id. `send_notification`: to the user, subject =
the task cut to 80 characters, body = the task. `add_user_note`: the task as the note.

**Verify** (`verify`): success iff the plan has at least one step, every planned step was executed,
and every executed call has a non-empty result; the reason says which rule decided.
"""

from __future__ import annotations

import re

from app.agents.agent_task.models import (
    Analysis,
    AnalyzeInput,
    HistoryEvent,
    Plan,
    PlanInput,
    PlannedCall,
    UserContext,
    Verification,
    VerifyInput,
)

OPEN_TICKET = "open_ticket"
NOTIFY = "notify"
RECORD_NOTE = "record_note"
REVIEW_HISTORY = "review_history"
UNKNOWN = "unknown"

# Checked in this order; the order is also the order of the planned steps.
_INTENT_WORDS: tuple[tuple[str, frozenset[str]], ...] = (
    (
        OPEN_TICKET,
        frozenset({"ticket", "tickets", "bug", "bugs", "broken", "issue", "issues", "incident", "outage"}),
    ),
    (NOTIFY, frozenset({"notify", "notification", "email", "tell", "remind", "reminder", "alert"})),
    (RECORD_NOTE, frozenset({"note", "notes", "remember"})),
    (REVIEW_HISTORY, frozenset({"history", "summarize", "summarise", "recap"})),
)

_INTENT_TOOL = {
    OPEN_TICKET: "create_ticket",
    NOTIFY: "send_notification",
    RECORD_NOTE: "add_user_note",
    REVIEW_HISTORY: "lookup_user_history",
}

_INTENT_SUMMARY = {
    OPEN_TICKET: "open a support ticket",
    NOTIFY: "send the user a notification",
    RECORD_NOTE: "record a note on the user's profile",
    REVIEW_HISTORY: "review the user's history",
}

_INTENT_RISK = {
    OPEN_TICKET: "Creates a ticket in the tracker (side effect).",
    NOTIFY: "Sends a notification to the user (side effect).",
    RECORD_NOTE: "Writes a note to the user's record (side effect).",
    REVIEW_HISTORY: "Reads the user's history (no side effect).",
}

_HIGH_PRIORITY_WORDS = ("urgent", "asap", "outage")

_TITLE_CHARS = 80
_SUMMARY_TASK_CHARS = 120
_BODY_CHARS = 5000
_NOTE_CHARS = 2000

_WORD = re.compile(r"[a-z0-9]+")


def _clean(text: str) -> str:
    return " ".join(text.split())


def _cut(text: str, limit: int) -> str:
    text = _clean(text)
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _limit(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, keeping its line breaks."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def detect_intents(task: str) -> list[str]:
    """The intents the task's words express, in the fixed order; `[]` when none."""
    words = set(_WORD.findall(task.lower()))
    return [intent for intent, keys in _INTENT_WORDS if words & keys]


def _most_recent(context: UserContext) -> HistoryEvent | None:
    """The event with the greatest `at` (ISO timestamps sort as text); the later one on a tie."""
    if not context.events:
        return None
    index = max(range(len(context.events)), key=lambda i: (context.events[i].at, i))
    return context.events[index]


def analyze(request: AnalyzeInput) -> Analysis:
    intents = detect_intents(request.task)
    quoted = _cut(request.task, _SUMMARY_TASK_CHARS) or "(empty task)"
    if not intents:
        return Analysis(
            summary=f'No supported action recognised in the request "{quoted}".',
            intent=UNKNOWN,
            risks=[],
        )
    actions = " and ".join(_INTENT_SUMMARY[intent] for intent in intents)
    return Analysis(
        summary=f'The user wants to {actions}, for the request "{quoted}".',
        intent="+".join(intents),
        risks=[_INTENT_RISK[intent] for intent in intents],
    )


def plan(request: PlanInput) -> Plan:
    catalog = {tool.name for tool in request.tools}
    intents = detect_intents(request.task)
    steps: list[PlannedCall] = []
    for intent in intents:
        tool = _INTENT_TOOL[intent]
        if tool not in catalog:
            continue
        if intent == OPEN_TICKET:
            steps.append(_ticket_step(request))
        elif intent == NOTIFY:
            steps.append(_notification_step(request, ticket_planned=bool(steps)))
        elif intent == RECORD_NOTE:
            steps.append(_note_step(request))
        elif intent == REVIEW_HISTORY:
            steps.append(
                PlannedCall(
                    tool="lookup_user_history",
                    args={"user_id": request.context.user_id},
                    reason="The task asks about the user's history.",
                )
            )
    return Plan(steps=steps)


def _ticket_step(request: PlanInput) -> PlannedCall:
    task = _clean(request.task)
    user_id = request.context.user_id
    body = f"Requested by {user_id}: {task or '(empty task)'}"
    event = _most_recent(request.context)
    if event is not None:
        body += f"\n\nMost recent history event ({event.at}, {event.kind}): {_clean(event.summary)}"
    lowered = task.lower()
    priority = "high" if any(word in lowered for word in _HIGH_PRIORITY_WORDS) else "normal"
    return PlannedCall(
        tool="create_ticket",
        args={
            "title": _cut(task, _TITLE_CHARS) or "Untitled request",
            "body": _limit(body, _BODY_CHARS),
            "priority": priority,
            "requester": user_id,
        },
        reason=f"The task reports a problem to track ({priority} priority).",
    )


def _notification_step(request: PlanInput, *, ticket_planned: bool) -> PlannedCall:
    task = _clean(request.task)
    body = f"Your request: {task or '(empty task)'}"
    if ticket_planned:
        body += "\nA ticket is being opened for it."
    return PlannedCall(
        tool="send_notification",
        args={
            "recipient": request.context.user_id,
            "subject": _cut(task, _TITLE_CHARS) or "Your request",
            "body": _limit(body, _BODY_CHARS),
        },
        reason="The task asks for the user to be notified.",
    )


def _note_step(request: PlanInput) -> PlannedCall:
    return PlannedCall(
        tool="add_user_note",
        args={
            "user_id": request.context.user_id,
            "note": _cut(request.task, _NOTE_CHARS) or "(empty task)",
        },
        reason="The task asks for something to be remembered about the user.",
    )


def verify(request: VerifyInput) -> Verification:
    planned = len(request.plan.steps)
    if planned == 0:
        return Verification(success=False, reason="no tool was planned: nothing was done for the task")
    for index, call in enumerate(request.results, start=1):
        if not call.result:
            return Verification(success=False, reason=f"call {index} ({call.tool}) returned no result")
    executed = len(request.results)
    if executed < planned:
        return Verification(success=False, reason=f"only {executed} of {planned} planned calls were executed")
    tools = ", ".join(call.tool for call in request.results)
    return Verification(success=True, reason=f"all {executed} planned calls returned a result: {tools}")
