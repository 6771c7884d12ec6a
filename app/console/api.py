"""The operator console's HTTP API, mounted by the approvals surface on its port.

Who may call what:

* `GET /console` (the page) and `GET /console/assets/mermaid.min.js` (the diagram library, from
  the npm package): anyone. Neither holds data.
* `GET /console/api/...`: an approver's personal credential or the operator token, as for
  `GET /approvals`; both read everything, neither decides here. A decision goes through
  `POST /inbox/decide`, which takes the approver from the credential; `may_decide` only says
  whether that would be accepted, so the page offers nothing it would refuse.
* The receipt is fetched from the tool service under the agent service's own credential, and
  only the receipt of the expense the task is about: the console never proxies a path it is
  given.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio.to_thread
import httpx
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from app.audit import metrics
from app.audit.event_log import Broken, Event, EventStore, store_for, verify_chain
from app.console.page import console_page
from app.console.query import Status, TaskQuery, iso, sql_literal
from app.console.responses import error, unauthorized, unavailable, validation_details
from app.console.tasks import STALLS_QUERY, UnknownAgent, list_tasks, stalls_of, status_of, task_gauges
from app.runtime.machine import Machine, to_mermaid_with_path
from app.settings import Settings

log = logging.getLogger(__name__)

# Where `npm ci` puts the diagram library in a checkout (package.json pins it).
MERMAID_JS = Path(__file__).resolve().parents[2] / "node_modules" / "mermaid" / "dist" / "mermaid.min.js"
CATALOG_TTL_SECONDS = 60.0
# The live stream: how often it looks at the log, how often it says it is alive, and how long one
# connection lasts before the page reconnects (a proxy's idle timeout never cuts it mid-wait).
CHANGES_POLL_SECONDS = 0.5
CHANGES_HEARTBEAT_SECONDS = 15.0
CHANGES_MAX_SECONDS = 300.0
RECEIPT_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})


class Viewer(BaseModel):
    """Who is signed in: an approver by name, or the operator (None: reads, never decides)."""

    approver: str | None


Authenticate = Callable[[Request], Awaitable[Viewer | None]]


class EventRow(BaseModel):
    seq: int
    kind: str
    from_state: str | None
    to_state: str
    at: str
    note: str | None
    payload: dict[str, Any]
    hash: str


class ChainCheck(BaseModel):
    """The task's hash chain, recomputed from the log when the page was read."""

    ok: bool
    events: int
    broken: Broken | None = None


class Diagram(BaseModel):
    mermaid: str
    path: list[str]
    current: str | None


class Invocation(BaseModel):
    """A run invocation of the task in Restate, and how to look at its journal."""

    id: str
    status: str | None
    created_at: str | None
    describe: str
    ui: str


class TaskDetail(BaseModel):
    agent: str
    task_id: str
    status: Status
    view: dict[str, Any]
    may_decide: bool
    events: list[EventRow]
    chain: ChainCheck
    diagram: Diagram
    invocations: list[Invocation]
    restate_ui: str
    # The task's tools: name -> has side effects (empty when the tool service did not answer).
    tools: dict[str, bool]
    receipt_url: str | None


@dataclass
class ConsoleApi:
    settings: Settings
    machines: Mapping[str, Machine]
    authenticate: Authenticate
    http: Callable[[], httpx.AsyncClient]
    _catalogs: dict[str, tuple[float, dict[str, bool]]] = field(default_factory=dict)

    def store(self) -> EventStore:
        return store_for(self.settings.database_url)

    def routes(self) -> list[Route]:
        return [
            Route("/console", console_page, methods=["GET"]),
            Route("/console/assets/mermaid.min.js", self.mermaid, methods=["GET"]),
            Route("/console/api/tasks", self.tasks, methods=["GET"]),
            Route("/console/api/tasks/{agent}/{task_id}", self.task, methods=["GET"]),
            Route("/console/api/tasks/{agent}/{task_id}/receipt", self.receipt, methods=["GET"]),
            Route("/console/api/changes", self.changes, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
        ]

    async def _viewer(self, request: Request) -> Viewer | Response:
        viewer = await self.authenticate(request)
        if viewer is None:
            return unauthorized("sign in with your approver credential (or the operator token)")
        return viewer

    # --- the list ------------------------------------------------------------------------------

    async def tasks(self, request: Request) -> Response:
        viewer = await self._viewer(request)
        if isinstance(viewer, Response):
            return viewer
        try:
            query = TaskQuery.model_validate(dict(request.query_params))
        except ValidationError as exc:
            return error(422, "invalid_query", "the task query is malformed", validation_details(exc))
        stalls = None
        rows = await self._admin_query(STALLS_QUERY)
        if rows is not None:
            stalls = stalls_of(rows)
        try:
            page = await anyio.to_thread.run_sync(list_tasks, self.store(), self.machines, query, stalls)
        except UnknownAgent as exc:
            return error(422, "invalid_query", str(exc), [{"loc": ["agent"], "msg": str(exc)}])
        except LookupError as exc:
            return unavailable("restate_unavailable", str(exc))
        return JSONResponse(
            {
                **page.model_dump(mode="json"),
                "agents": sorted(self.machines),
                "signed_in_as": viewer.approver,
            }
        )

    # --- one task ------------------------------------------------------------------------------

    async def task(self, request: Request) -> Response:
        viewer = await self._viewer(request)
        if isinstance(viewer, Response):
            return viewer
        agent, task_id = request.path_params["agent"], request.path_params["task_id"]
        machine = self.machines.get(agent)
        if machine is None:
            known = ", ".join(sorted(self.machines))
            return error(404, "unknown_agent", f"unknown agent {agent!r}; registered agents: {known}")
        view = await self._status(agent, task_id)
        if isinstance(view, Response):
            return view
        invocations, tools, events = await asyncio.gather(
            self._invocations(agent, task_id),
            self._catalog(agent),
            anyio.to_thread.run_sync(self.store().chain, agent, task_id),
        )
        pending = view.get("pending_approval") or {}
        broken = verify_chain(agent, task_id, events) if events else None
        path = [entry["to_state"] for entry in view.get("history") or []]
        detail = TaskDetail(
            agent=agent,
            task_id=task_id,
            status=status_of(machine, str(view.get("state")), stalled=view.get("stall") is not None),
            view=view,
            may_decide=viewer.approver is not None and viewer.approver in (pending.get("approvers") or []),
            events=[_event_row(item) for item in events],
            chain=ChainCheck(ok=broken is None, events=len(events), broken=broken),
            diagram=Diagram(
                mermaid=to_mermaid_with_path(machine, path, view.get("state")),
                path=path,
                current=view.get("state"),
            ),
            invocations=invocations,
            restate_ui=self._restate_ui(),
            tools=tools,
            receipt_url=(
                f"/console/api/tasks/{quote(agent, safe='')}/{quote(task_id, safe='')}/receipt"
                if _expense_id(view) is not None
                else None
            ),
        )
        return JSONResponse({**detail.model_dump(mode="json"), "signed_in_as": viewer.approver})

    async def receipt(self, request: Request) -> Response:
        viewer = await self._viewer(request)
        if isinstance(viewer, Response):
            return viewer
        agent, task_id = request.path_params["agent"], request.path_params["task_id"]
        if agent not in self.machines:
            return error(404, "unknown_agent", f"unknown agent {agent!r}")
        view = await self._status(agent, task_id)
        if isinstance(view, Response):
            return view
        expense_id = _expense_id(view)
        if expense_id is None:
            return error(404, "no_receipt", f"{agent} {task_id} is not about an expense with a receipt")
        url = f"{self.settings.tools_url.rstrip('/')}/receipts/{quote(expense_id, safe='')}"
        try:
            answer = await self.http().get(url, headers=self._tools_auth())
        except httpx.TransportError:
            return unavailable("tools_unavailable", "the tool service is unreachable")
        content_type = answer.headers.get("content-type", "").split(";")[0].strip()
        if answer.status_code != 200 or content_type not in RECEIPT_TYPES:
            log.warning("receipt of %s: the tool service answered %s", expense_id, answer.status_code)
            return error(502, "receipt_unavailable", f"the tool service answered {answer.status_code}")
        return Response(
            answer.content,
            media_type=content_type,
            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=300"},
        )

    # --- live updates --------------------------------------------------------------------------

    async def changes(self, request: Request) -> Response:
        """Server-sent events: one `moved` event per batch of tasks that moved in the log. Read
        with `fetch` (EventSource cannot send the credential's header)."""
        viewer = await self._viewer(request)
        if isinstance(viewer, Response):
            return viewer
        store = self.store()
        start = await anyio.to_thread.run_sync(store.cursor)

        async def stream() -> AsyncIterator[bytes]:
            cursor, began = start, time.monotonic()
            beat = began
            yield f"event: ready\ndata: {json.dumps({'cursor': cursor})}\n\n".encode()
            while time.monotonic() - began < CHANGES_MAX_SECONDS:
                await asyncio.sleep(CHANGES_POLL_SECONDS)
                if await request.is_disconnected():
                    return
                moves = await anyio.to_thread.run_sync(store.moves_since, cursor)
                if moves:
                    cursor = moves[-1].cursor
                    data = {"cursor": cursor, "moves": [move.model_dump() for move in moves]}
                    yield f"event: moved\ndata: {json.dumps(data)}\n\n".encode()
                elif time.monotonic() - beat > CHANGES_HEARTBEAT_SECONDS:
                    beat = time.monotonic()
                    yield b": alive\n\n"

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    # --- metrics -------------------------------------------------------------------------------

    async def metrics(self, request: Request) -> Response:
        """Prometheus' scrape, with the operator token (`authorization: credentials` in its scrape
        config): the counters of this process, and gauges of what exists now."""
        viewer = await self._viewer(request)
        if isinstance(viewer, Response):
            return viewer
        if viewer.approver is not None:
            return error(
                403, "operator_only", "the metrics are the operator's: scrape with the operator token"
            )
        counts = await anyio.to_thread.run_sync(self.store().state_counts)
        rows = await self._admin_query(STALLS_QUERY)
        gauges = task_gauges(counts, self.machines, stalls_of(rows) if rows is not None else None)
        return Response(generate_latest(metrics.REGISTRY) + gauges, media_type=CONTENT_TYPE_LATEST)

    async def mermaid(self, _: Request) -> Response:
        if not MERMAID_JS.is_file():
            return error(404, "not_installed", "the diagram library is not installed (npm ci)")
        return FileResponse(
            MERMAID_JS,
            media_type="text/javascript",
            headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
        )

    # --- what the API reads --------------------------------------------------------------------

    async def _status(self, agent: str, task_id: str) -> dict[str, Any] | Response:
        url = f"{self.settings.restate_ingress_url.rstrip('/')}/{agent}/{quote(task_id, safe='')}/status"
        try:
            answer = await self.http().post(url)
        except httpx.TransportError:
            return unavailable("restate_unavailable", "Restate's ingress is unreachable")
        if answer.status_code == 404:
            return error(404, "unknown_task", f"no {agent} task {task_id!r}")
        if answer.status_code != 200:
            return error(502, "restate_error", f"Restate answered {answer.status_code} to the task's status")
        view: dict[str, Any] = answer.json()
        return view

    async def _admin_query(self, query: str) -> list[dict[str, Any]] | None:
        try:
            answer = await self.http().post(
                f"{self.settings.restate_admin_url.rstrip('/')}/query",
                json={"query": query},
                headers={"accept": "application/json"},
            )
        except httpx.TransportError:
            return None
        if answer.status_code != 200:
            return None
        rows: list[dict[str, Any]] = answer.json().get("rows", [])
        return rows

    async def _invocations(self, agent: str, task_id: str) -> list[Invocation]:
        rows = await self._admin_query(
            "SELECT id, status, created_at FROM sys_invocation "
            f"WHERE target_service_name = {sql_literal(agent)} "
            f"AND target_service_key = {sql_literal(task_id)} "
            "AND target_handler_name = 'run' ORDER BY created_at"
        )
        return [
            Invocation(
                id=str(row["id"]),
                status=row.get("status"),
                created_at=row.get("created_at"),
                describe=f"restate invocations describe {row['id']}",
                ui=self._restate_ui(),
            )
            for row in rows or []
        ]

    async def _catalog(self, agent: str) -> dict[str, bool]:
        """Which of the agent's tools have side effects (the tool service's catalog, cached)."""
        cached = self._catalogs.get(agent)
        if cached is not None and time.monotonic() - cached[0] < CATALOG_TTL_SECONDS:
            return cached[1]
        try:
            answer = await self.http().get(
                f"{self.settings.tools_url.rstrip('/')}/tools",
                params={"agent": agent},
                headers=self._tools_auth(),
            )
            tools = {str(tool["name"]): bool(tool.get("side_effects")) for tool in answer.json()["tools"]}
        except (httpx.TransportError, ValueError, KeyError, TypeError):
            return {}
        self._catalogs[agent] = (time.monotonic(), tools)
        return tools

    def _tools_auth(self) -> dict[str, str]:
        token = self.settings.tools_api_token
        return {"authorization": f"Bearer {token.get_secret_value()}"} if token is not None else {}

    def _restate_ui(self) -> str:
        return f"{self.settings.restate_admin_url.rstrip('/')}/ui/"


def _event_row(item: Event) -> EventRow:
    note = item.payload.get("note")
    return EventRow(
        seq=item.seq,
        kind=item.kind,
        from_state=item.from_state,
        to_state=item.to_state,
        at=iso(item.at),
        note=note if isinstance(note, str) else ("created" if item.kind == "created" else None),
        payload=item.payload,
        hash=item.hash,
    )


def _expense_id(view: Mapping[str, Any]) -> str | None:
    """The expense a task is about: in its data, else in the approval it waits for."""
    for holder in (view.get("data") or {}, (view.get("pending_approval") or {}).get("details") or {}):
        expense = holder.get("expense") if isinstance(holder, Mapping) else None
        if isinstance(expense, Mapping) and isinstance(expense.get("expense_id"), str):
            return str(expense["expense_id"])
    return None
