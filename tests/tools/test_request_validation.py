"""Bad requests are refused with a clear error and leave nothing in the idempotency store."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.tools.calls import TICKET, call_tool, count_rows
from tools.domains.generic.tickets import Ticket
from tools.service.idempotency import IdempotencyKey


def _assert_nothing_stored(client: TestClient) -> None:
    assert count_rows(client, IdempotencyKey) == 0
    assert count_rows(client, Ticket) == 0


def _error(response: Any, status_code: int, code: str) -> dict[str, Any]:
    assert response.status_code == status_code, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    return error


@pytest.mark.parametrize("key", [None, "", "   "])
def test_a_missing_or_empty_key_is_400(client, key):
    _error(call_tool(client, "create_ticket", TICKET, key), 400, "missing_idempotency_key")
    _assert_nothing_stored(client)


def test_a_key_longer_than_255_characters_is_400_and_255_is_fine(client):
    error = _error(call_tool(client, "create_ticket", TICKET, "k" * 256), 400, "invalid_idempotency_key")
    assert "255" in error["message"]
    _assert_nothing_stored(client)

    assert call_tool(client, "create_ticket", TICKET, "k" * 255).status_code == 200


def test_an_unknown_tool_is_404_and_stores_nothing(client):
    error = _error(call_tool(client, "launch_missiles", {}, "k-unknown"), 404, "unknown_tool")
    assert "launch_missiles" in error["message"]
    _assert_nothing_stored(client)


def test_invalid_arguments_are_422_with_field_errors_and_store_nothing(client):
    response = call_tool(
        client, "create_ticket", {"title": "", "body": "b", "priority": "urgent", "owner": "x"}, "k-bad"
    )

    error = _error(response, 422, "validation_error")
    problems = {tuple(item["loc"]): item["msg"] for item in error["details"]}
    assert set(problems) == {("title",), ("priority",), ("requester",), ("owner",)}
    assert all(isinstance(message, str) and message for message in problems.values())
    _assert_nothing_stored(client)
    # Nothing was stored, so the corrected request with the same key is a fresh request.
    assert call_tool(client, "create_ticket", TICKET, "k-bad").status_code == 200


def test_a_body_over_the_limit_is_413_and_stores_nothing(make_client):
    client = make_client(MAX_BODY_BYTES=200)

    response = call_tool(client, "create_ticket", {**TICKET, "body": "x" * 300}, "k-big")

    _error(response, 413, "body_too_large")
    _assert_nothing_stored(client)


def test_a_streamed_body_over_the_limit_is_413(make_client):
    client = make_client(MAX_BODY_BYTES=200)
    chunks = (b"x" * 100 for _ in range(5))  # no Content-Length: the limit applies while reading

    response = client.post(
        "/tools/create_ticket",
        content=chunks,
        headers={"Idempotency-Key": "k-stream", "Content-Type": "application/json"},
    )

    _error(response, 413, "body_too_large")
    _assert_nothing_stored(client)


@pytest.mark.parametrize(
    ("raw", "status_code", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"", 400, "invalid_json"),
        (b'{"title": NaN}', 400, "invalid_json"),
        (b"\xff\xfe{}", 400, "invalid_encoding"),
        (b"[1, 2]", 422, "body_not_object"),
        (b'"a string"', 422, "body_not_object"),
        (b"[" * 100_000, 400, "invalid_json"),
        (b'{"title": "\\ud800"}', 400, "invalid_json"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_refused_and_stores_nothing(client, raw, status_code, code):
    response = client.post(
        "/tools/create_ticket",
        content=raw,
        headers={"Idempotency-Key": "k-raw", "Content-Type": "application/json"},
    )

    _error(response, status_code, code)
    _assert_nothing_stored(client)


def test_a_non_json_content_type_is_415(client):
    response = client.post("/tools/create_ticket", content=b"title=x", headers={"Idempotency-Key": "k-form"})
    # httpx sends no content type for raw bytes: the body is judged as JSON and refused.
    _error(response, 400, "invalid_json")

    response = client.post(
        "/tools/create_ticket",
        content=b"title=x",
        headers={"Idempotency-Key": "k-form", "Content-Type": "application/x-www-form-urlencoded"},
    )
    _error(response, 415, "unsupported_media_type")
    _assert_nothing_stored(client)


def test_unknown_routes_and_methods_use_the_error_shape(client):
    _error(client.get("/nowhere"), 404, "not_found")
    _error(client.get("/tools/create_ticket"), 405, "method_not_allowed")
    _error(client.get("/idempotency/never-used"), 404, "unknown_idempotency_key")
