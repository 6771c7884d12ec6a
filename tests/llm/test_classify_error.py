"""The error classification the engine relies on: permanent -> TerminalError, transient -> as is."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2
import pytest
from pydantic import ValidationError
from restate import TerminalError

from app.agents.agent_task.models import Analysis
from app.llm.anthropic_model import ModelOutputError, UnknownToolError, classify_error, is_permanent_status
from app.outage import MARK, Unreachable

REQUEST = httpx2.Request("POST", "https://api.anthropic.test/v1/messages")


def status_error(cls: type[anthropic.APIStatusError], status: int, message: str = "boom") -> Exception:
    body: dict[str, Any] = {"type": "error", "error": {"type": "some_error", "message": message}}
    response = httpx2.Response(status, request=REQUEST, json=body, headers={"request-id": "req_1"})
    return cls(f"Error code: {status} - {body}", response=response, body=body)


def validation_error() -> ValidationError:
    try:
        Analysis.model_validate({"summary": "s"})
    except ValidationError as exc:
        return exc
    raise AssertionError("unreachable")


PERMANENT = [
    status_error(anthropic.BadRequestError, 400),
    status_error(anthropic.AuthenticationError, 401),
    status_error(anthropic.PaymentRequiredError, 402),
    status_error(anthropic.PermissionDeniedError, 403),
    status_error(anthropic.NotFoundError, 404),
    status_error(anthropic.ContentTooLargeError, 413),
    status_error(anthropic.UnprocessableEntityError, 422),
    status_error(anthropic.APIStatusError, 418),
    status_error(anthropic.RequestHeaderFieldsTooLargeError, 431),
]

# The API unreachable or overloaded: an outage the task waits out (stalls), never fails on.
OUTAGES = [
    status_error(anthropic.RequestTimeoutError, 408),
    status_error(anthropic.ConflictError, 409),
    status_error(anthropic.RateLimitError, 429),
    status_error(anthropic.InternalServerError, 500),
    status_error(anthropic.ServiceUnavailableError, 503),
    status_error(anthropic.GatewayTimeoutError, 504),
    status_error(anthropic.OverloadedError, 529),
    anthropic.APIConnectionError(request=REQUEST),
    anthropic.APITimeoutError(request=REQUEST),
]

# Transient, but not an outage: retried a bounded number of times.
TRANSIENT = [
    ModelOutputError("no tool_use block"),
    UnknownToolError("wire_money"),
    validation_error(),
    TimeoutError(),
    ConnectionResetError(),
]


@pytest.mark.parametrize("exc", PERMANENT, ids=lambda e: type(e).__name__)
def test_permanent_errors_become_terminal(exc: Exception) -> None:
    classified = classify_error(exc)

    assert isinstance(classified, TerminalError)
    assert isinstance(exc, anthropic.APIStatusError)
    assert str(exc.status_code) in classified.message
    assert classified.metadata == {
        "provider": "anthropic",
        "provider_status": str(exc.status_code),
        "provider_error_type": "some_error",
        "provider_request_id": "req_1",
    }


@pytest.mark.parametrize("exc", TRANSIENT, ids=lambda e: type(e).__name__)
def test_transient_errors_are_returned_unchanged(exc: Exception) -> None:
    assert classify_error(exc) is exc


@pytest.mark.parametrize("exc", OUTAGES, ids=lambda e: type(e).__name__)
def test_outages_become_one_marked_line(exc: Exception) -> None:
    classified = classify_error(exc, secret="sk-secret")

    assert isinstance(classified, Unreachable)
    assert repr(classified).startswith(MARK) and "\n" not in repr(classified)
    if isinstance(exc, anthropic.APIStatusError):
        assert str(exc.status_code) in str(classified)


def test_terminal_error_passes_through() -> None:
    error = TerminalError("already terminal")
    assert classify_error(error) is error


def test_secret_is_redacted_from_terminal_message() -> None:
    secret = "sk-ant-very-secret"
    exc = status_error(anthropic.AuthenticationError, 401, message=f"invalid x-api-key {secret}")

    classified = classify_error(exc, secret=secret)

    assert isinstance(classified, TerminalError)
    assert secret not in classified.message
    assert "[redacted]" in classified.message


@pytest.mark.parametrize(
    ("status", "permanent"),
    [
        (400, True),
        (401, True),
        (403, True),
        (404, True),
        (405, True),
        (408, False),
        (409, False),
        (413, True),
        (422, True),
        (429, False),
        (499, True),
        (500, False),
        (502, False),
        (503, False),
        (529, False),
        (200, False),
    ],
)
def test_is_permanent_status(status: int, permanent: bool) -> None:
    assert is_permanent_status(status) is permanent
