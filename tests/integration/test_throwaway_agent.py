"""An agent declared in a test module (tests/integration/throwaway_agent.py), registered only by
naming it in AGENT_MODULES, runs end to end through the ingress: its LLM task, its gate decided
through the signed webhook, its diagram; nothing outside its file names it."""

from __future__ import annotations

import subprocess
import sys

from deploy.local import ROOT, Stack
from tests.integration.flows import new_task_id, wait_parked


def test_a_throwaway_agent_runs_through_the_ingress_and_its_gate(stack: Stack) -> None:
    task_id = new_task_id("greet")
    stack.send("Greeter", task_id, "run", {"name": "Ada"})
    pending = wait_parked(stack, task_id, agent="Greeter")["pending_approval"]
    assert pending["summary"] == "Send the greeting 'Hello, Ada!'?"
    assert stack.decide("Greeter", task_id, "approve").status_code == 200
    view = stack.wait_for_state("Greeter", task_id, {"SENT", "DROPPED"})
    assert view["state"] == "SENT" and view["result"] == {"greeting": "Hello, Ada!"}
    assert [entry["to_state"] for entry in view["history"]] == ["COMPOSE", "REVIEW", "SEND", "SENT"]
    # Bad input is refused at the start, like any agent's.
    refused = stack.call("Greeter", new_task_id("greet"), "run", {"name": ""})
    assert refused.status_code == 400 and "name" in refused.text


def test_the_throwaway_agent_is_known_to_the_diagram_command() -> None:
    env = {"ENV": "development", "AGENT_MODULES": "tests.integration.throwaway_agent", "PATH": ""}
    done = subprocess.run(
        [sys.executable, "-m", "app", "diagram", "Greeter"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "REVIEW --> SEND : approve" in done.stdout
