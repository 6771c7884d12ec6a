"""The engine's own guarantees, on a probe machine served against the real Restate server."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator

import httpx
import pytest

from deploy.local import ManagedProcess, Stack, free_port

RELIABILITY = {
    "check": ("Engine: undeclared transitions and permanent step errors end in the declared failure state"),
    "injected": ("a step asking for an undeclared transition; a step raising a permanent error"),
}


@pytest.fixture(scope="module")
def probe(stack: Stack) -> Iterator[Stack]:
    port = free_port()
    process = ManagedProcess(
        name="engine probe",
        argv=[sys.executable, "-m", "tests.integration.probe_service", str(port)],
        env=stack.service_env(),
        log_path=stack.workdir / "logs/probe.log",
        ready=lambda: httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code < 500,
    )
    process.start()
    try:
        registered = httpx.post(
            f"{stack.admin_url}/deployments",
            json={"uri": f"http://127.0.0.1:{port}", "force": True},
            timeout=30,
        )
        assert registered.status_code < 300, registered.text
        yield stack
    finally:
        process.stop()


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
