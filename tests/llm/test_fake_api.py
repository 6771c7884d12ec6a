"""The fake Messages API itself: its HTTP control surface and its subprocess mode."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.agents.agent_task.llm import ANALYZE, PLAN, VERIFY
from app.agents.agent_task.models import AnalyzeInput, Plan, PlanInput, VerifyInput
from app.agents.expense_report.llm import CLASSIFY
from app.llm.anthropic_model import AnthropicModel
from tests.agents.agent_task.support import shipped_catalog, user_context
from tests.fakes import anthropic_api as fake_module
from tests.fakes.anthropic_api import FakeAnthropicAPI
from tests.llm.support import TEST_API_KEY, TEST_MODEL

REPO_ROOT = Path(__file__).resolve().parents[2]

MINIMAL_BODY = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


def test_tool_names_agree_with_the_agents_tasks() -> None:
    fake_names = (
        fake_module.ANALYZE_TOOL,
        fake_module.PLAN_TOOL,
        fake_module.VERIFY_TOOL,
        fake_module.CLASSIFY_TOOL,
    )
    assert fake_names == (ANALYZE.tool_name, PLAN.tool_name, VERIFY.tool_name, CLASSIFY.tool_name)


def test_missing_api_key_is_401_like_the_real_api(fake_api: FakeAnthropicAPI) -> None:
    with httpx.Client(base_url=fake_api.url) as client:
        response = client.post("/v1/messages", json=MINIMAL_BODY, headers={"anthropic-version": "2023-06-01"})

    assert response.status_code == 401
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "authentication_error"
    assert fake_api.requests[0]["status"] == 401


def test_raw_message_format_and_validation(fake_api: FakeAnthropicAPI) -> None:
    headers = {"x-api-key": TEST_API_KEY, "anthropic-version": "2023-06-01"}
    with httpx.Client(base_url=fake_api.url, headers=headers) as client:
        body = {**MINIMAL_BODY, "tool_choice": {"type": "tool", "name": VERIFY.tool_name}}
        ok = client.post("/v1/messages", json=body).json()
        missing = client.post("/v1/messages", json={"model": "m"})
        unknown_path = client.get("/v1/nothing")

    assert ok["type"] == "message" and ok["role"] == "assistant" and ok["model"] == "m"
    assert ok["stop_reason"] == "tool_use"
    assert set(ok["usage"]) == {"input_tokens", "output_tokens"}
    [block] = ok["content"]
    assert (
        block["type"] == "tool_use" and block["name"] == VERIFY.tool_name and block["id"].startswith("toolu_")
    )
    assert set(block["input"]) == {"success", "reason"}
    assert missing.status_code == 400 and missing.json()["error"]["type"] == "invalid_request_error"
    assert unknown_path.status_code == 404


def test_scripts_match_their_tool_and_are_consumed_in_order(fake_api: FakeAnthropicAPI) -> None:
    fake_api.queue_tool_input({"success": False, "reason": "scripted"}, tool=VERIFY.tool_name)
    fake_api.queue_error(529, times=2)
    headers = {"x-api-key": TEST_API_KEY, "anthropic-version": "2023-06-01"}

    def call(client: httpx.Client, tool: str) -> httpx.Response:
        return client.post(
            "/v1/messages", json={**MINIMAL_BODY, "tool_choice": {"type": "tool", "name": tool}}
        )

    with httpx.Client(base_url=fake_api.url, headers=headers) as client:
        first = call(client, ANALYZE.tool_name)  # skips the verify-only item, takes a 529
        second = call(client, VERIFY.tool_name)  # the verify item
        third = call(client, PLAN.tool_name)  # the second 529
        fourth = call(client, PLAN.tool_name)  # default answer

    assert first.status_code == 529 and first.json()["error"]["type"] == "overloaded_error"
    assert second.json()["content"][0]["input"] == {"success": False, "reason": "scripted"}
    assert third.status_code == 529
    assert fourth.status_code == 200
    assert fake_api.pending == 0
    assert fake_api.counts() == {ANALYZE.tool_name: 1, VERIFY.tool_name: 1, PLAN.tool_name: 2}


def test_http_control_endpoints(fake_api: FakeAnthropicAPI) -> None:
    with httpx.Client(base_url=fake_api.url) as client:
        assert client.get("/_fake/health").json() == {"ok": True}
        queued = client.post(
            "/_fake/script",
            json={
                "items": [
                    {"error": {"status": 500}},
                    {"tool": PLAN.tool_name, "input": {"steps": []}, "times": 2},
                ]
            },
        )
        assert queued.json() == {"queued": 3, "pending": 3}
        bad = client.post("/_fake/script", json={"tool": PLAN.tool_name})
        assert bad.status_code == 400
        client.post(
            "/v1/messages",
            json={**MINIMAL_BODY, "tool_choice": {"type": "tool", "name": PLAN.tool_name}},
            headers={"x-api-key": TEST_API_KEY, "anthropic-version": "2023-06-01"},
        )
        recorded = client.get("/_fake/requests", params={"tool": PLAN.tool_name}).json()
        assert recorded["counts"] == {PLAN.tool_name: 1}
        assert recorded["pending"] == 2
        [request] = recorded["requests"]
        assert request["status"] == 500 and request["body"]["model"] == "m"
        assert request["headers"]["x-api-key"] == TEST_API_KEY
        assert client.post("/_fake/reset").json() == {"ok": True}
        assert client.get("/_fake/requests").json() == {"requests": [], "counts": {}, "pending": 0}


@pytest.fixture
def fake_process() -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.anthropic_api", "--port", "0", "--api-key", TEST_API_KEY],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        yield url
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
        if process.stdout is not None:
            process.stdout.close()


@pytest.mark.anyio
async def test_subprocess_mode_with_the_real_sdk(fake_process: str, anyio_backend: str) -> None:
    async with httpx.AsyncClient(base_url=fake_process) as control:
        await control.post(
            "/_fake/script", json={"tool": VERIFY.tool_name, "input": {"success": False, "reason": "no"}}
        )
        async with AnthropicModel(api_key=TEST_API_KEY, model=TEST_MODEL, base_url=fake_process) as model:
            ctx = user_context()
            analysis = (
                await model.structured(ANALYZE, AnalyzeInput(task="The VPN is broken", context=ctx))
            ).output
            plan = (
                await model.structured(
                    PLAN,
                    PlanInput(
                        task="The VPN is broken", context=ctx, analysis=analysis, tools=shipped_catalog()
                    ),
                )
            ).output
            verification = (
                await model.structured(VERIFY, VerifyInput(task="The VPN is broken", plan=plan, results=[]))
            ).output
        recorded = (await control.get("/_fake/requests")).json()

    assert plan.steps[0].tool == "create_ticket" and plan.steps[0].args["title"] == "The VPN is broken"
    assert verification.success is False and verification.reason == "no"
    assert recorded["counts"] == {ANALYZE.tool_name: 1, PLAN.tool_name: 1, VERIFY.tool_name: 1}


@pytest.mark.anyio
async def test_default_plan_respects_the_catalog(model: AnthropicModel) -> None:
    ctx = user_context()
    analysis = (await model.structured(ANALYZE, AnalyzeInput(task="broken", context=ctx))).output
    no_tickets = [tool for tool in shipped_catalog() if tool.name != "create_ticket"]

    plan = (
        await model.structured(
            PLAN, PlanInput(task="broken", context=ctx, analysis=analysis, tools=no_tickets)
        )
    ).output

    assert plan == Plan(steps=[])
