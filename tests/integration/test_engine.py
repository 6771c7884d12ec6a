"""The engine's own guarantees, on a probe machine served against the real Restate server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from deploy.local import Stack

RELIABILITY = {
    "check": ("Engine: undeclared transitions and permanent step errors end in the declared failure state"),
    "injected": ("a step asking for an undeclared transition; a step raising a permanent error"),
}


@pytest.fixture(scope="module")
def probe(stack: Stack) -> Iterator[Stack]:
    with stack.serving("engine probe", "tests.integration.probe_service"):
        yield stack


def test_undeclared_transition_is_refused_and_recorded(probe: Stack) -> None:
    key = uuid.uuid4().hex
    response = probe.call("EngineProbe", key, "run", {"behaviour": "undeclared"})
    assert response.status_code == 200, response.text
    view = response.json()
    assert view["state"] == "FAILED"
    assert view["error"]["code"] == "illegal_transition"
    assert "undeclared transition WORK -> START" in view["error"]["message"]
    assert [e["to_state"] for e in view["history"]] == ["START", "WORK", "FAILED"]


def test_terminal_error_in_a_step_becomes_the_failure_state(probe: Stack) -> None:
    key = uuid.uuid4().hex
    view = probe.call("EngineProbe", key, "run", {"behaviour": "terminal_error"}).json()
    assert view["state"] == "FAILED"
    assert view["error"] == {
        "state": "WORK",
        "code": "step_failed",
        "message": "the probe's work failed for good",
    }


def test_normal_probe_run_completes(probe: Stack) -> None:
    view = probe.call("EngineProbe", uuid.uuid4().hex, "run", {"behaviour": "normal"}).json()
    assert view["state"] == "DONE" and view["result"] == {"ok": True}
