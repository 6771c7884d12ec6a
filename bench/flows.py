"""The flows the benchmark drives, each the same shape: start, wait at the human step, approve the
moment it waits, and wait for the end (attached to the run's invocation, so the end is seen as soon
as Restate has it, not at the next poll)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from app.approvals.signature import signed_headers
from deploy.local import Stack
from tools.domains.expense.seed import SAMPLES, submit_sample

# Waiting for the human step is polled, as an inbox would. The first poll comes at about the time
# this kind of flow took to get there so far (a running estimate), then every 2 ms growing by half
# up to 50 ms: a flow is seen soon after it waits, for a few status calls, not dozens.
FIRST_POLL_SECONDS = 0.002
MAX_POLL_SECONDS = 0.05
TIMEOUT_SECONDS = 120.0
T = TypeVar("T")


class FlowError(RuntimeError):
    """A flow did not end as the benchmark expects (it measures only flows that complete)."""


_local = threading.local()


def client() -> httpx.Client:
    """One HTTP client per benchmark thread, so connections are reused and never shared."""
    existing: httpx.Client | None = getattr(_local, "client", None)
    if existing is None:
        existing = httpx.Client(timeout=TIMEOUT_SECONDS)
        _local.client = existing
    return existing


@dataclass
class Flow:
    """One kind of flow against one stack. `service` is the Restate service the run belongs to."""

    name: str
    service: str
    stack: Stack
    # Seconds from start to the human step, a running estimate (see FIRST_POLL_SECONDS).
    _to_wait: float = field(default=0.0, repr=False)
    polls: int = field(default=0, repr=False)
    started: dict[str, float] = field(default_factory=dict, repr=False)

    def reset_estimate(self) -> None:
        self._to_wait = 0.0

    def until_waiting(self, key: str, probe: Callable[[], T | None]) -> T:
        started = self.started.pop(key)
        time.sleep(max(0.0, started + 0.8 * self._to_wait - time.monotonic()))
        deadline = time.monotonic() + TIMEOUT_SECONDS
        pause = FIRST_POLL_SECONDS
        while True:
            self.polls += 1
            value = probe()
            if value is not None:
                took = time.monotonic() - started
                self._to_wait = took if not self._to_wait else 0.8 * self._to_wait + 0.2 * took
                return value
            if time.monotonic() > deadline:
                raise FlowError(f"timed out waiting for {key} to wait for its human")
            time.sleep(pause)
            pause = min(MAX_POLL_SECONDS, pause * 1.5)

    def prepare(self, count: int) -> None:
        """Create what `count` flows will need before the clock starts (nothing by default)."""

    def body(self, index: int) -> dict[str, Any] | str:
        raise NotImplementedError

    def start(self, index: int) -> tuple[str, str]:
        """Send the run; returns (key, invocation id)."""
        key = f"bench-{uuid.uuid4().hex[:12]}"
        url = f"{self.stack.ingress_url}/{self.service}/{key}/run/send"
        sent = time.monotonic()
        answer = client().post(url, json=self.body(index))
        if answer.status_code != 202:
            raise FlowError(f"{self.name}: start answered {answer.status_code} {answer.text[:200]}")
        self.started[key] = sent
        return key, str(answer.json()["invocationId"])

    def approve_when_waiting(self, key: str) -> float:
        """Wait until the flow waits for its human, approve it; returns when the approval's 2xx came."""
        raise NotImplementedError

    def finish(self, invocation_id: str) -> None:
        answer = client().get(f"{self.stack.ingress_url}/restate/attach/{invocation_id}")
        if answer.status_code != 200:
            raise FlowError(f"{self.name}: run ended {answer.status_code} {answer.text[:200]}")
        self.check(answer.json())

    def check(self, result: Any) -> None:
        if isinstance(result, dict) and result.get("state") not in (None, "COMPLETE"):
            raise FlowError(f"{self.name}: ended {result.get('state')}: {result.get('error')}")


class FloorFlow(Flow):
    def body(self, index: int) -> str:
        return f"floor flow {index}"

    def approve_when_waiting(self, key: str) -> float:
        url = f"{self.stack.ingress_url}/{self.service}/{key}/waiting"

        def awakeable() -> str | None:
            found: str | None = client().post(url, json=None).json().get("awakeable_id")
            return found

        awakeable_id = self.until_waiting(key, awakeable)
        resolved = client().post(
            f"{self.stack.ingress_url}/restate/awakeables/{awakeable_id}/resolve", json="approve"
        )
        if resolved.status_code >= 300:
            raise FlowError(f"floor: resolve answered {resolved.status_code} {resolved.text[:200]}")
        return time.monotonic()


class AgentFlow(Flow):
    """Our agents: approved through the signed approval webhook, as a chat tool would."""

    def approve_when_waiting(self, key: str) -> float:
        status_url = f"{self.stack.ingress_url}/{self.service}/{key}/status"

        def pending() -> dict[str, Any] | None:
            view = client().post(status_url, json=None)
            if view.status_code != 200:
                return None
            body = view.json()
            if body["state"] in ("COMPLETE", "FAILED"):
                raise FlowError(
                    f"{self.name}: {key} ended {body['state']} before its approval: {body['error']}"
                )
            waiting: dict[str, Any] | None = body.get("pending_approval")
            return waiting

        waiting = self.until_waiting(key, pending)
        decision = {
            "agent": self.service,
            "task_id": key,
            "decision": "approve",
            "approver": waiting["approvers"][0],
            "comment": "approved by the benchmark",
            "approval_hash": waiting["approval_hash"],
        }
        body = json.dumps(decision).encode()
        answer = client().post(
            f"{self.stack.approvals_url}/webhooks/approval",
            content=body,
            headers={"content-type": "application/json", **signed_headers(self.stack.webhook_secret, body)},
        )
        if answer.status_code != 200:
            raise FlowError(f"{self.name}: webhook answered {answer.status_code} {answer.text[:200]}")
        return time.monotonic()


class AgentTaskFlow(AgentFlow):
    def body(self, index: int) -> dict[str, Any]:
        return {"user_id": "u-1", "task": f"open a ticket: benchmark printer {index} is broken"}


class ExpenseFlow(AgentFlow):
    """The hotel stay of the demo's samples (over the auto-approval limit, so a human approves),
    with its rendered receipt, which the tool service OCRs during the flow."""

    expenses: list[str]

    def prepare(self, count: int) -> None:
        [hotel] = [sample for sample in SAMPLES if sample.label == "hotel-stay"]
        receipt = hotel.receipt()  # rendered once: every expense of the run attaches the same image
        with httpx.Client(
            base_url=self.stack.tools_url, timeout=120, headers=self.stack.expenses_auth
        ) as http:
            self.expenses = [
                submit_sample(http, hotel, f"bench:{uuid.uuid4().hex}", receipt) for _ in range(count)
            ]

    def body(self, index: int) -> dict[str, Any]:
        return {"expense_id": self.expenses.pop()}
