"""How the tool client turns the tool service's answers into Restate's retry decisions."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from restate import TerminalError
from restate.exceptions import RetryableError

from app.runtime.tool_client import ToolServiceError, classify


def answer(
    status: int, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.Response(status, json=body or {}, headers=headers or {})


@pytest.mark.parametrize("status", [200, 201, 204])
def test_success_passes(status: int) -> None:
    classify(answer(status), "tool x")


@pytest.mark.parametrize("status", [400, 403, 404, 413, 422])
def test_refusals_are_terminal_with_the_service_message(status: int) -> None:
    body = {"error": {"code": "bad", "message": "user_id is required", "details": "loc=user_id"}}
    with pytest.raises(TerminalError) as raised:
        classify(answer(status, body), "tool x")
    assert raised.value.status_code == status
    assert "tool x: tool service answered" in raised.value.message
    assert "user_id is required" in raised.value.message


def test_in_flight_conflict_is_retried_after_the_advertised_delay() -> None:
    with pytest.raises(RetryableError) as raised:
        classify(answer(409, {"error": {"message": "in flight"}}, {"Retry-After": "4"}), "tool x")
    assert raised.value.retry_after == timedelta(seconds=4)


def test_conflict_without_retry_after_is_terminal() -> None:
    with pytest.raises(TerminalError):
        classify(answer(409, {"error": {"message": "conflict"}}), "tool x")


@pytest.mark.parametrize("status", [429, 408])
def test_throttling_is_retried(status: int) -> None:
    with pytest.raises(RetryableError):
        classify(answer(status, headers={"Retry-After": "oops"}), "tool x")


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_transient(status: int) -> None:
    with pytest.raises(ToolServiceError):
        classify(answer(status), "tool x")


def test_our_own_credential_refused_is_a_stall_not_a_task_failure() -> None:
    # A wrong TOOLS_API_TOKEN is fixed by an operator; it must not fail work a human approved.
    with pytest.raises(ToolServiceError, match="TOOLS_API_TOKEN"):
        classify(answer(401, {"error": {"code": "unauthorized", "message": "needs a token"}}), "tool x")


def test_a_key_used_for_another_request_fails_loudly_as_a_conflict() -> None:
    body = {"error": {"code": "idempotency_key_reused", "message": "reused"}}
    with pytest.raises(TerminalError) as raised:
        classify(answer(422, body), "tool x")
    assert "idempotency_key_conflict" in raised.value.message


def test_non_json_error_bodies_are_reported() -> None:
    with pytest.raises(TerminalError, match="plain text problem"):
        classify(httpx.Response(400, text="plain text problem"), "tool x")
