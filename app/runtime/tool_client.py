"""Calls to the tool service: one pooled HTTP client, derived Idempotency-Keys, errors classified.

These functions run only inside `ctx.run_typed`, so each call's result is journaled once and a
retry reuses the same key. The classification is the contract with Restate's retries:

* 2xx: the result (a replayed answer from the tool service's store is a normal result);
* 409 with Retry-After: the same key is still in flight (e.g. a crashed attempt's lease), so ask
  Restate to retry after that delay; the retry is safe because the key is the same;
* 422 `idempotency_key_reused`: the key was used for another request. Keys carry the task's
  unguessable salt, so this is a bug (a step whose arguments changed on replay), never an
  attacker: it fails the step with a message that says so, and is logged as an error;
* any other 4xx: a request the tool service will never accept: `TerminalError`, no blind retry;
* 5xx, timeouts, connection errors and our own refused credential: `Unreachable`, an outage the
  task waits out (the engine stalls the step, retrying with the same key), never a task failure.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict
from restate import TerminalError
from restate.exceptions import RetryableError

from app.outage import Unreachable, unreachable_message
from app.runtime.faults import crash_in_tool_call_if_planned
from app.settings import get_settings

log = logging.getLogger(__name__)

# The agent the call is made for: the tool service offers and allows only that agent's tools.
AGENT_HEADER = "X-Agent"
KEY_REUSED = "idempotency_key_reused"


class ToolResult(BaseModel):
    """What a tool call journals: the tool, the key it used and its JSON result."""

    model_config = ConfigDict(frozen=True)

    tool: str
    idempotency_key: str
    result: dict[str, Any]
    replayed: bool = False


class ToolSpec(BaseModel):
    """A tool as the tool service's catalog (`GET /tools`) describes it.

    Fields the catalog adds later are ignored, so the tool service can grow without breaking us.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    description: str
    side_effects: bool
    args_schema: dict[str, Any]


class ToolCatalog(BaseModel):
    tools: list[ToolSpec]

    def names(self) -> set[str]:
        return {tool.name for tool in self.tools}

    def without(self, names: frozenset[str]) -> ToolCatalog:
        return ToolCatalog(tools=[tool for tool in self.tools if tool.name not in names])

    def get(self, name: str) -> ToolSpec | None:
        return next((tool for tool in self.tools if tool.name == name), None)


class ToolServiceError(Unreachable):
    """The tool service is unreachable, failing (5xx) or refuses our credential: an outage."""


_clients: dict[int, httpx.AsyncClient] = {}


def _client() -> httpx.AsyncClient:
    """One pooled client per event loop (the SDK runs handlers on one loop per process)."""
    loop_id = id(asyncio.get_running_loop())
    client = _clients.get(loop_id)
    if client is None or client.is_closed:
        settings = get_settings()
        client = httpx.AsyncClient(
            base_url=settings.tools_url,
            # The credential never enters the journal: it is added here, outside the step's arguments.
            headers={"authorization": f"Bearer {settings.tools_token}"},
            # A call waiting for a free connection is queued here, not failed: under a burst (2,000
            # tasks started at once) a pool timeout read as "unreachable" stalled tasks for minutes
            # behind a tool service that was up. Connections are kept, not reopened per burst.
            timeout=httpx.Timeout(settings.tool_timeout_seconds, connect=5.0, pool=None),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
        )
        _clients[loop_id] = client
    return client


async def close_clients() -> None:
    for client in list(_clients.values()):
        await client.aclose()
    _clients.clear()


def _error_code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        error = body.get("error", {}) if isinstance(body, dict) else {}
        message = error.get("message") if isinstance(error, dict) else None
        details = error.get("details") if isinstance(error, dict) else None
        if message:
            return f"{message}" + (f" ({details})" if details else "")
    except ValueError:
        pass
    return response.text[:500] or response.reason_phrase


def _retry_after(response: httpx.Response) -> timedelta:
    try:
        return timedelta(seconds=max(1, int(response.headers.get("retry-after", "1"))))
    except ValueError:
        return timedelta(seconds=1)


def classify(response: httpx.Response, what: str) -> None:
    """Raise the exception that tells Restate what to do with a non-2xx answer."""
    status = response.status_code
    if status < 400:
        return
    message = f"{what}: tool service answered {status}: {_error_message(response)}"
    if status == 409 and "retry-after" in response.headers:
        raise RetryableError(
            unreachable_message(message), status_code=409, retry_after=_retry_after(response)
        )
    if status in (408, 429):
        raise RetryableError(
            unreachable_message(message), status_code=status, retry_after=_retry_after(response)
        )
    if status == 422 and _error_code(response) == KEY_REUSED:
        log.error("%s: Idempotency-Key conflict (a step's arguments changed between attempts?)", what)
        raise TerminalError(
            f"{what}: idempotency_key_conflict: the tool service holds this call's key for another "
            "request; nothing was done twice, but the step cannot go on (see the agent's log)",
            status_code=409,
        )
    if status == 401:
        # Our own credential was refused: a configuration fault an operator fixes, not a task's
        # outcome. Retried (the task stalls, visibly) instead of failing work a human approved.
        raise ToolServiceError(f"{message} (check TOOLS_API_TOKEN)")
    if status < 500:
        raise TerminalError(message, status_code=status)
    raise ToolServiceError(message)


async def call_tool(agent: str, name: str, args: dict[str, Any], idempotency_key: str) -> ToolResult:
    """POST /tools/{name} for `agent` with the call's Idempotency-Key; only inside `ctx.run_typed`."""
    try:
        response = await _client().post(
            f"/tools/{name}", json=args, headers={"Idempotency-Key": idempotency_key, AGENT_HEADER: agent}
        )
    except httpx.TransportError as exc:
        raise ToolServiceError(
            f"tool {name}: tool service unreachable: {type(exc).__name__}: {exc}"
        ) from None
    classify(response, f"tool {name}")
    # The crash tests' fault switch: a no-op unless a test armed it (app/runtime/faults.py).
    crash_in_tool_call_if_planned()
    body = response.json()
    if not isinstance(body, dict):
        raise TerminalError(f"tool {name}: tool service answered a non-object result", status_code=502)
    return ToolResult(
        tool=name,
        idempotency_key=idempotency_key,
        result=body,
        replayed=response.headers.get("idempotent-replayed") == "true",
    )


async def fetch_catalog(agent: str) -> ToolCatalog:
    """GET /tools: the tools the service offers `agent`, their argument schemas and side effects."""
    try:
        response = await _client().get("/tools", headers={AGENT_HEADER: agent})
    except httpx.TransportError as exc:
        raise ToolServiceError(
            f"tool catalog: tool service unreachable: {type(exc).__name__}: {exc}"
        ) from None
    classify(response, "tool catalog")
    try:
        return ToolCatalog.model_validate(response.json())
    except ValueError as exc:
        # A catalog we cannot read will not fix itself on retry: fail the step clearly.
        raise TerminalError(f"tool catalog: unreadable answer from the tool service: {exc}") from exc
