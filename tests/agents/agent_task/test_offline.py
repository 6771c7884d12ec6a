"""AgentTask's offline behaviour: deterministic keyword rules, catalog-only plans, strict verification."""

from __future__ import annotations

import pytest

from app.agents.agent_task import offline
from app.agents.agent_task.llm import ANALYZE, PLAN, VERIFY
from app.agents.agent_task.models import (
    AnalyzeInput,
    ExecutedCall,
    Plan,
    PlanInput,
    PlannedCall,
    UserContext,
    VerifyInput,
)
from app.llm.offline_model import OfflineModel
from tests.agents.agent_task.support import shipped_catalog, user_context


def full_run(task: str, context: UserContext | None = None) -> tuple[PlanInput, Plan]:
    ctx = context or user_context()
    analysis = offline.analyze(AnalyzeInput(task=task, context=ctx))
    request = PlanInput(task=task, context=ctx, analysis=analysis, tools=shipped_catalog())
    return request, offline.plan(request)


async def model_run(task: str) -> tuple[PlanInput, Plan]:
    """`full_run` through the port: what the engine gets from the offline model."""
    model = OfflineModel()
    ctx = user_context()
    analysis = (await model.structured(ANALYZE, AnalyzeInput(task=task, context=ctx))).output
    request = PlanInput(task=task, context=ctx, analysis=analysis, tools=shipped_catalog())
    return request, (await model.structured(PLAN, request)).output


@pytest.mark.anyio
async def test_determinism_same_input_same_output_through_the_offline_model() -> None:
    task = "URGENT: the checkout is broken, open a ticket and notify me"
    first_request, first_plan = await model_run(task)
    second_request, second_plan = await model_run(task)

    assert first_request == second_request
    assert first_plan == second_plan
    # The offline model answers with the agent's own rules.
    assert (first_request, first_plan) == full_run(task)
    verify = VerifyInput(
        task=task,
        plan=first_plan,
        results=[ExecutedCall(tool=s.tool, args=s.args, result={"ok": True}) for s in first_plan.steps],
    )
    verification = (await OfflineModel().structured(VERIFY, verify)).output
    assert verification == (await OfflineModel().structured(VERIFY, verify)).output
    assert verification == offline.verify(verify)


@pytest.mark.parametrize(
    ("task", "intent"),
    [
        ("My laptop is broken", "open_ticket"),
        ("There is a bug in the invoice export", "open_ticket"),
        ("Please open a TICKET for the VPN issue", "open_ticket"),
        ("Notify me when it is done", "notify"),
        ("Email the summary to me", "notify"),
        ("Remind me tomorrow", "notify"),
        ("Remember that I prefer French", "record_note"),
        ("Add a note: VIP customer", "record_note"),
        ("Open a ticket and notify me", "open_ticket+notify"),
        ("Note this bug and tell me", "open_ticket+notify+record_note"),
        ("What is the weather like?", "unknown"),
        ("notebooks are nice", "unknown"),
        ("", "unknown"),
    ],
)
def test_intents_from_keywords(task: str, intent: str) -> None:
    analysis = offline.analyze(AnalyzeInput(task=task, context=user_context()))
    assert analysis.intent == intent


def test_analysis_quotes_task_and_lists_side_effect_risks() -> None:
    task = "The printer is broken " + "x" * 300
    analysis = offline.analyze(AnalyzeInput(task=task, context=user_context()))

    assert "The printer is broken" in analysis.summary
    assert len(analysis.summary) < 250
    assert analysis.risks == ["Creates a ticket in the tracker (side effect)."]

    unknown = offline.analyze(AnalyzeInput(task="hello", context=user_context()))
    assert unknown.risks == []
    assert "hello" in unknown.summary


def test_ticket_step_args() -> None:
    task = "URGENT: the payment page is broken for every customer and nobody can pay us since this morning"
    _, plan = full_run(task)

    assert [step.tool for step in plan.steps] == ["create_ticket"]
    args = plan.steps[0].args
    assert set(args) == {"title", "body", "priority", "requester"}
    assert len(args["title"]) == 80 and args["title"].startswith("URGENT: the payment page")
    assert args["priority"] == "high"
    assert args["requester"] == "user-42"
    # The most recent event by timestamp, not by list position.
    assert "Card declined for order 981" in args["body"]
    assert task in args["body"]
    assert len(args["body"]) <= 5000


def test_ticket_priority_normal_and_no_history() -> None:
    _, plan = full_run("The wifi is broken", UserContext(user_id="u-1"))

    args = plan.steps[0].args
    assert args["priority"] == "normal"
    assert args["title"] == "The wifi is broken"
    assert "history" not in args["body"]


def test_multi_intent_plan_order_ticket_first() -> None:
    _, plan = full_run("Notify me once you open a ticket for the outage, and remember I am on call")

    assert [step.tool for step in plan.steps] == ["create_ticket", "send_notification", "add_user_note"]
    notification = plan.steps[1].args
    assert notification["recipient"] == "user-42"
    assert 1 <= len(notification["subject"]) <= 200
    assert "ticket is being opened" in notification["body"]
    assert plan.steps[2].args["user_id"] == "user-42"
    assert plan.steps[0].args["priority"] == "high"


def test_only_catalog_tools_are_used() -> None:
    ctx = user_context()
    task = "Open a ticket and notify me"
    analysis = offline.analyze(AnalyzeInput(task=task, context=ctx))
    without_notifications = [tool for tool in shipped_catalog() if tool.name != "send_notification"]

    plan = offline.plan(PlanInput(task=task, context=ctx, analysis=analysis, tools=without_notifications))
    assert [step.tool for step in plan.steps] == ["create_ticket"]

    empty = offline.plan(PlanInput(task=task, context=ctx, analysis=analysis, tools=[]))
    assert empty.steps == []

    for task in ["broken", "tell me", "remember this", "bug, email and note", "nothing"]:
        _, plan = full_run(task)
        catalog = {tool.name for tool in shipped_catalog()}
        assert {step.tool for step in plan.steps} <= catalog


def test_unknown_intent_gives_empty_plan_and_failing_verification() -> None:
    request, plan = full_run("What is the capital of France?")

    assert request.analysis.intent == "unknown"
    assert plan.steps == []
    verification = offline.verify(VerifyInput(task=request.task, plan=plan, results=[]))
    assert verification.success is False
    assert verification.reason == "no tool was planned: nothing was done for the task"


def _plan(*tools: str) -> Plan:
    return Plan(steps=[PlannedCall(tool=tool, args={}, reason="r") for tool in tools])


def test_verify_success_when_every_call_has_a_result() -> None:
    plan = _plan("create_ticket", "send_notification")
    results = [
        ExecutedCall(tool="create_ticket", args={}, result={"ticket_id": "T-1"}),
        ExecutedCall(tool="send_notification", args={}, result={"notification_id": "N-1"}),
    ]

    verification = offline.verify(VerifyInput(task="t", plan=plan, results=results))

    assert verification.success is True
    assert "create_ticket" in verification.reason and "send_notification" in verification.reason


def test_verify_fails_on_empty_result() -> None:
    plan = _plan("create_ticket", "send_notification")
    results = [
        ExecutedCall(tool="create_ticket", args={}, result={"ticket_id": "T-1"}),
        ExecutedCall(tool="send_notification", args={}, result={}),
    ]

    verification = offline.verify(VerifyInput(task="t", plan=plan, results=results))

    assert verification.success is False
    assert verification.reason == "call 2 (send_notification) returned no result"


def test_verify_fails_when_planned_calls_were_not_executed() -> None:
    plan = _plan("create_ticket", "send_notification")
    results = [ExecutedCall(tool="create_ticket", args={}, result={"ticket_id": "T-1"})]

    verification = offline.verify(VerifyInput(task="t", plan=plan, results=results))

    assert verification.success is False
    assert verification.reason == "only 1 of 2 planned calls were executed"


def test_detect_intents_is_word_based() -> None:
    assert offline.detect_intents("issues, bugs and tickets") == ["open_ticket"]
    assert offline.detect_intents("notation, noteworthy, retell") == []
