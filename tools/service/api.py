"""The tool service's HTTP surface (Starlette): run tools under an Idempotency-Key, list them.

`POST /tools/{name}` checks everything about the request first (header, size, JSON, arguments),
so bad input is refused without touching the idempotency store; then it claims the key, runs the
tool and completes the key in one transaction (`run_at_once`), or, for a tool with a prepare step
(OCR), claims the key in a commit of its own, does that slow, read-only work, then runs the tool
and completes the key in a second transaction, so no transaction stays open while Tesseract runs
(see tools/service/idempotency.py for why each is exactly-once).

People use plain REST: `POST /expenses` (multipart: the claim and its receipt image, with an
optional Idempotency-Key under the same store and rules), `GET /expenses[/{id}[/receipt]]`, and
the ledger (`GET /ledger`, `GET /ledger/balance`); the rest are read-only inspection endpoints.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Literal, TypeVar

import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from common.db import make_engine, utc_now
from common.ids import derive_id
from tools.domains.expense.expenses import (
    EXPENSE_ID_PREFIX,
    SUBMISSION_MAX_BYTES,
    SUBMISSION_MAX_PARTS,
    SUBMIT_EXPENSE,
    ExpenseQuery,
    create_expense,
    get_expense_view,
    get_receipt,
    list_expenses,
    new_expense_id,
    parse_submission,
)
from tools.domains.expense.ledger import LedgerQuery, ledger_balance, list_postings
from tools.domains.generic.tickets import list_tickets
from tools.service.approval_tickets import ApprovalTicketQuery, get_approval_ticket, list_approval_tickets
from tools.service.auth import Credential, calling_agent, require
from tools.service.db import make_session_factory
from tools.service.definition import Tool, ToolCall, ToolError, ToolFailure
from tools.service.dispatcher import Dispatcher
from tools.service.errors import ApiError, error_body
from tools.service.idempotency import (
    MAX_KEY_LENGTH,
    PORTAL_KEY_PREFIX,
    Claimed,
    ClaimLost,
    IdempotencyStore,
    InFlight,
    KeyReused,
    Replay,
    StoredResponse,
    portal_key,
    request_hash,
)
from tools.service.outbox import NotificationQuery, list_notifications
from tools.service.registry import ToolRegistry, default_registry, domain_seeds
from tools.service.schema import create_schema
from tools.service.settings import ToolsSettings, get_tools_settings
from tools.service.sweeper import Sweeper
from tools.service.uploads import read_multipart_form

logger = logging.getLogger(__name__)

IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
JSON_MEDIA_TYPE = "application/json"

QueryT = TypeVar("QueryT", bound=BaseModel)
Handler = Callable[[Request], Awaitable[Response]]


def render_json(content: Any) -> str:
    """The exact text of a JSON response body; stored as is, so a replay is byte-identical."""
    return json.dumps(content, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def json_response(content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return _text_response(render_json(content), status_code, headers)


def _text_response(body: str, status_code: int, headers: Mapping[str, str] | None = None) -> Response:
    return Response(body, status_code=status_code, headers=dict(headers or {}), media_type=JSON_MEDIA_TYPE)


def error_response(
    status_code: int,
    code: str,
    message: str,
    details: Any = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    return json_response(error_body(code, message, details), status_code, headers)


# --- reading and checking a tool request ----------------------------------------------------


def idempotency_key_from(request: Request, max_length: int = MAX_KEY_LENGTH) -> str:
    """The request's Idempotency-Key, bare (Stripe) or as a structured-field string (IETF)."""
    raw = request.headers.get(IDEMPOTENCY_KEY_HEADER)
    if raw is None or not raw.strip():
        raise ApiError(
            400,
            "missing_idempotency_key",
            f"Send an {IDEMPOTENCY_KEY_HEADER} header: every tool call must be safe to retry.",
        )
    key = raw.strip()
    if len(key) >= 2 and key.startswith('"') and key.endswith('"'):
        key = key[1:-1]
    if not key:
        raise ApiError(400, "missing_idempotency_key", f"The {IDEMPOTENCY_KEY_HEADER} header is empty.")
    if len(key) > max_length:
        raise ApiError(
            400,
            "invalid_idempotency_key",
            f"The {IDEMPOTENCY_KEY_HEADER} is {len(key)} characters long; at most {max_length} are allowed.",
        )
    if not key.isprintable():
        raise ApiError(
            400, "invalid_idempotency_key", f"The {IDEMPOTENCY_KEY_HEADER} contains non-printable characters."
        )
    return key


def optional_idempotency_key(request: Request) -> str | None:
    """The Idempotency-Key where it is optional (REST submissions): None when the header is absent;
    present, it follows the same rules as for tool calls."""
    if IDEMPOTENCY_KEY_HEADER not in request.headers:
        return None
    return idempotency_key_from(request, MAX_KEY_LENGTH - len(PORTAL_KEY_PREFIX))


def check_content_type(request: Request) -> None:
    content_type = request.headers.get("content-type")
    if content_type is None:
        return  # tolerated: the body must still be a JSON object
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != JSON_MEDIA_TYPE and not media_type.endswith("+json"):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Send the arguments as {JSON_MEDIA_TYPE}, not {media_type or 'an empty content type'}.",
        )


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    too_large = ApiError(413, "body_too_large", f"The request body exceeds the limit of {limit} bytes.")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        decoded = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(
            400, "invalid_encoding", f"The request body is not valid UTF-8 (byte {exc.start})."
        ) from None
    if not decoded.strip():
        raise ApiError(400, "invalid_json", "The request body is empty; send the arguments as a JSON object.")
    try:
        payload = json.loads(decoded, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise ApiError(
            400,
            "invalid_json",
            f"The request body is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.",
        ) from None
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", f"The request body is not valid JSON: {exc}.") from None
    if _has_unpaired_surrogate(payload):
        # "\ud800" is legal JSON but not text: no database would store it, so refuse it here.
        raise ApiError(400, "invalid_json", "The request body contains an unpaired UTF-16 surrogate escape.")
    if not isinstance(payload, dict):
        raise ApiError(
            422,
            "body_not_object",
            f"The request body must be a JSON object of arguments, not a JSON {_json_kind(payload)}.",
        )
    return payload


def _has_unpaired_surrogate(payload: Any) -> bool:
    try:
        json.dumps(payload, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def _field_errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]} for error in exc.errors()]


def validate_args(tool: Tool[Any, Any], payload: dict[str, Any]) -> Any:
    try:
        return tool.args_model.model_validate(payload)
    except ValidationError as exc:
        errors = _field_errors(exc)
        raise ApiError(
            422,
            "validation_error",
            f"The arguments of {tool.name!r} are invalid ({len(errors)} error(s)); see details.",
            errors,
        ) from None


def parse_query(request: Request, model: type[QueryT]) -> QueryT:
    """The query string as `model`; a filter that cannot match anything (an unknown status, a
    misspelt parameter, one given twice) is refused with 422 rather than quietly ignored."""
    items = request.query_params.multi_items()
    names = [name for name, _ in items]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ApiError(
            422,
            "validation_error",
            f"Give each query parameter at most once; repeated: {', '.join(repeated)}.",
            [
                {"loc": ["query", name], "msg": "Repeated query parameter", "type": "repeated"}
                for name in repeated
            ],
        )
    try:
        return model.model_validate(dict(items))
    except ValidationError as exc:
        errors = [{**error, "loc": ["query", *error["loc"]]} for error in _field_errors(exc)]
        raise ApiError(
            422,
            "validation_error",
            f"The query parameters are invalid ({len(errors)} error(s)); see details.",
            errors,
        ) from None


# --- the application ------------------------------------------------------------------------


class _ToolService:
    """The handlers, bound to the database, the idempotency store and the registry."""

    def __init__(
        self,
        settings: ToolsSettings,
        registry: ToolRegistry,
        engine: Engine,
        sessions: sessionmaker[Session],
        store: IdempotencyStore,
        clock: Callable[[], datetime],
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.engine = engine
        self.sessions = sessions
        self.store = store
        self.clock = clock

    def start(self) -> None:
        create_schema(self.engine)
        for seed in domain_seeds():
            seed(self.sessions)

    async def call_tool(self, request: Request) -> Response:
        name = request.path_params["name"]
        tool = self.registry.get(name)
        if tool is None:
            raise ApiError(404, "unknown_tool", f"There is no tool named {name!r}; GET /tools lists them.")
        agent = calling_agent(request)
        if not self.registry.granted(agent, tool.name):
            raise ApiError(
                403,
                "tool_not_granted",
                f"The agent {agent} may not call {tool.name!r}; GET /tools lists the tools it may call.",
            )
        key = idempotency_key_from(request)
        if key.startswith(PORTAL_KEY_PREFIX):
            # The expense portal's namespace (tools/service/idempotency.py): not a tool call's to take.
            raise ApiError(
                400,
                "invalid_idempotency_key",
                f"An {IDEMPOTENCY_KEY_HEADER} of a tool call may not start with {PORTAL_KEY_PREFIX!r}.",
            )
        check_content_type(request)
        payload = parse_json_object(await read_body(request, self.settings.max_body_bytes))
        args = validate_args(tool, payload)
        fingerprint = request_hash(tool.name, payload)

        def effect_with(prepared: object) -> Callable[[Session], StoredResponse]:
            def effect(session: Session) -> StoredResponse:
                return self._run_tool(
                    tool,
                    args,
                    ToolCall(
                        session=session,
                        idempotency_key=key,
                        now=self.clock(),
                        prepared=prepared,
                        settings=self.settings,
                    ),
                )

            return effect

        latency = self.settings.simulated_latency_for(tool.name)
        if tool.prepare is None and not latency:
            # Nothing slow comes between claim and effect: both in one transaction (one commit).
            try:
                done = await anyio.to_thread.run_sync(
                    self.store.run_at_once, key, tool.name, fingerprint, effect_with(None)
                )
            except Exception as exc:
                # Everything rolled back, the key included: a retry runs the tool afresh.
                return self._tool_failed(tool, key, exc)
            if done is not None:
                return _text_response(done.response.body, done.response.status_code)
            # The key exists: the claim below says whether to replay, refuse or take over.

        claim = await anyio.to_thread.run_sync(self.store.claim, key, tool.name, fingerprint)
        if not isinstance(claim, Claimed):
            return self._answer_without_running(claim)
        if claim.taken_over:
            logger.warning("took over the expired claim on Idempotency-Key %r (%s)", key, tool.name)

        if latency:
            # Testing knob: the claim is committed, the effect not yet (see ToolsSettings).
            await anyio.sleep(latency)

        prepared: object = None
        if tool.prepare is not None:
            try:
                prepared = await anyio.to_thread.run_sync(tool.prepare, self.sessions, args)
            except Exception as exc:
                # Nothing was written; give the key back so the retry prepares afresh.
                await anyio.to_thread.run_sync(self.store.release, key, claim.claim_token)
                return self._tool_failed(tool, key, exc)

        try:
            outcome = await anyio.to_thread.run_sync(
                self.store.execute, key, claim.claim_token, effect_with(prepared)
            )
        except Exception as exc:
            # The effect rolled back and the claim was released: a retry runs the tool afresh.
            return self._tool_failed(tool, key, exc)
        if isinstance(outcome, ClaimLost):
            logger.warning("lost the claim on Idempotency-Key %r to a takeover; rolled back", key)
            return self._answer_without_running(
                await anyio.to_thread.run_sync(self.store.current_outcome, key, fingerprint)
            )
        return _text_response(outcome.response.body, outcome.response.status_code)

    @staticmethod
    def _tool_failed(tool: Tool[Any, Any], key: str, exc: Exception) -> Response:
        """The 500 for a tool that raised (called from the except block): nothing is stored."""
        if isinstance(exc, ToolFailure):
            # A known technical failure: its message says what to fix.
            logger.error("tool %r failed (Idempotency-Key %r): %s", tool.name, key, exc.message)
            return error_response(
                500, exc.code, f"{exc.message} Nothing was stored; retry with the same Idempotency-Key."
            )
        logger.exception("tool %r failed unexpectedly (Idempotency-Key %r)", tool.name, key)
        return error_response(
            500,
            "tool_failed",
            f"The tool {tool.name!r} failed unexpectedly; its effect was rolled back. "
            "Retry with the same Idempotency-Key.",
        )

    @staticmethod
    def _run_tool(tool: Tool[Any, Any], args: Any, call: ToolCall) -> StoredResponse:
        """Runs inside the completion transaction; a domain error becomes a stored 4xx."""
        try:
            # A savepoint, so a domain error undoes the tool's partial writes but the
            # transaction still commits the key as done with the error response.
            with call.session.begin_nested():
                result = tool.run(call, args)
        except ToolError as exc:
            return StoredResponse(
                exc.status_code, render_json(error_body(exc.code, exc.message, exc.details))
            )
        return StoredResponse(200, render_json(result.model_dump(mode="json")))

    @staticmethod
    def _answer_without_running(
        outcome: Replay | KeyReused | InFlight, replay_status: int | None = None
    ) -> Response:
        """`replay_status` replaces the stored status of a replay (a creation's 201 replays as 200:
        nothing was created this time)."""
        if isinstance(outcome, Replay):
            return _text_response(
                outcome.response.body,
                replay_status or outcome.response.status_code,
                {REPLAYED_HEADER: "true"},
            )
        if isinstance(outcome, KeyReused):
            return error_response(
                422,
                "idempotency_key_reused",
                "Idempotency-Key reused with a different request: a key names exactly one request "
                "(tool and body); use a new key for a new request.",
            )
        details = None
        if outcome.lease_expires_at is not None:
            details = {"lease_expires_at": outcome.lease_expires_at.isoformat()}
        return error_response(
            409,
            "request_in_flight",
            "The first request with this Idempotency-Key is still in flight; retry after it completes.",
            details,
            {"Retry-After": str(outcome.retry_after_seconds)},
        )

    async def list_tools(self, request: Request) -> Response:
        query = parse_query(request, _CatalogQuery)
        agent = calling_agent(request) or query.agent
        return json_response({"tools": self.registry.catalog(agent)})

    async def health(self, request: Request) -> Response:
        try:
            await anyio.to_thread.run_sync(self._ping_database)
        except Exception:
            logger.exception("health check: the database is unreachable")
            return error_response(503, "database_unavailable", "The database does not answer.")
        return json_response({"status": "ok"})

    def _ping_database(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    async def get_idempotency_record(self, request: Request) -> Response:
        key = request.path_params["key"]
        query = parse_query(request, _IdempotencyQuery)
        stored = portal_key(key) if query.scope == "expenses" else key
        record = await anyio.to_thread.run_sync(self.store.get, stored)
        if record is None:
            raise ApiError(
                404, "unknown_idempotency_key", f"No request has used the Idempotency-Key {key!r}."
            )
        return json_response(record.model_dump(mode="json"))

    async def get_tickets(self, request: Request) -> Response:
        tickets = await anyio.to_thread.run_sync(self._read, list_tickets)
        return json_response({"tickets": [ticket.model_dump(mode="json") for ticket in tickets]})

    async def get_notifications(self, request: Request) -> Response:
        query = parse_query(request, NotificationQuery)
        rows = await anyio.to_thread.run_sync(
            self._read, partial(list_notifications, kind=query.kind, reference=query.reference)
        )
        return json_response({"notifications": [row.model_dump(mode="json") for row in rows]})

    async def get_approval_tickets(self, request: Request) -> Response:
        query = parse_query(request, ApprovalTicketQuery)
        tickets = await anyio.to_thread.run_sync(
            self._read,
            partial(list_approval_tickets, agent=query.agent, task_id=query.task_id, status=query.status),
        )
        return json_response({"approval_tickets": [ticket.model_dump(mode="json") for ticket in tickets]})

    async def get_approval_ticket_by_id(self, request: Request) -> Response:
        ticket_id = request.path_params["ticket_id"]
        ticket = await anyio.to_thread.run_sync(self._read, partial(get_approval_ticket, ticket_id=ticket_id))
        if ticket is None:
            raise ApiError(
                404,
                "unknown_approval_ticket",
                f"There is no approval ticket with id {ticket_id!r}.",
                {"approval_ticket_id": ticket_id},
            )
        return json_response(ticket.model_dump(mode="json"))

    # --- expenses and the ledger (plain REST for people; the agent uses the tools) ----------

    async def submit_expense(self, request: Request) -> Response:
        """`POST /expenses`: everything is checked before anything is stored; with an
        Idempotency-Key, the expense commits together with the key's response."""
        given = optional_idempotency_key(request)
        # Stored in the portal's own namespace: a portal can never squat an agent's key.
        key = None if given is None else portal_key(given)
        form = await read_multipart_form(
            request, max_body_bytes=SUBMISSION_MAX_BYTES, max_parts=SUBMISSION_MAX_PARTS
        )
        # Decoding the image to prove it is one takes CPU time: off the event loop.
        submission = await anyio.to_thread.run_sync(
            partial(
                parse_submission,
                form,
                today=self.clock().date(),
                max_age_days=self.settings.expense_max_age_days,
            )
        )

        if key is None:
            view = await anyio.to_thread.run_sync(
                self._write,
                partial(
                    create_expense,
                    submission=submission,
                    expense_id=new_expense_id(),
                    idempotency_key=None,
                    now=self.clock(),
                ),
            )
            return json_response(view.model_dump(mode="json"), 201)

        fingerprint = submission.request_hash()
        claim = await anyio.to_thread.run_sync(self.store.claim, key, SUBMIT_EXPENSE, fingerprint)
        if not isinstance(claim, Claimed):
            return self._answer_without_running(claim, replay_status=200)

        def effect(session: Session) -> StoredResponse:
            view = create_expense(
                session,
                submission,
                expense_id=derive_id(EXPENSE_ID_PREFIX, key),
                idempotency_key=key,
                now=self.clock(),
            )
            return StoredResponse(201, render_json(view.model_dump(mode="json")))

        # An unexpected failure rolls back, releases the claim and ends as the one 500 shape.
        outcome = await anyio.to_thread.run_sync(self.store.execute, key, claim.claim_token, effect)
        if isinstance(outcome, ClaimLost):
            return self._answer_without_running(
                await anyio.to_thread.run_sync(self.store.current_outcome, key, fingerprint),
                replay_status=200,
            )
        return _text_response(outcome.response.body, outcome.response.status_code)

    async def get_expenses(self, request: Request) -> Response:
        query = parse_query(request, ExpenseQuery)
        views = await anyio.to_thread.run_sync(
            self._read, partial(list_expenses, employee_id=query.employee_id, status=query.status)
        )
        return json_response({"expenses": [view.model_dump(mode="json") for view in views]})

    async def get_expense_by_id(self, request: Request) -> Response:
        expense_id = request.path_params["expense_id"]
        view = await anyio.to_thread.run_sync(self._read, partial(get_expense_view, expense_id=expense_id))
        if view is None:
            raise _unknown_expense(expense_id)
        return json_response(view.model_dump(mode="json"))

    async def get_expense_receipt(self, request: Request) -> Response:
        expense_id = request.path_params["expense_id"]
        receipt = await anyio.to_thread.run_sync(self._read, partial(get_receipt, expense_id=expense_id))
        if receipt is None:
            raise _unknown_expense(expense_id)
        image, content_type = receipt
        # nosniff: the bytes were checked to be this type; no browser should guess otherwise.
        return Response(image, media_type=content_type, headers={"X-Content-Type-Options": "nosniff"})

    async def get_ledger(self, request: Request) -> Response:
        query = parse_query(request, LedgerQuery)
        postings = await anyio.to_thread.run_sync(
            self._read, partial(list_postings, expense_id=query.expense_id)
        )
        return json_response({"postings": [posting.model_dump(mode="json") for posting in postings]})

    async def get_ledger_balance(self, request: Request) -> Response:
        parse_query(request, _NoQuery)
        balance = await anyio.to_thread.run_sync(self._read, ledger_balance)
        return json_response(balance.model_dump(mode="json"))

    def _write(self, change: Callable[[Session], Any]) -> Any:
        with self.sessions.begin() as session:
            return change(session)

    def _read(self, query: Callable[[Session], Any]) -> Any:
        with self.sessions.begin() as session:
            return query(session)


class _NoQuery(BaseModel):
    """An endpoint without query parameters: one given anyway is refused, not ignored."""

    model_config = ConfigDict(extra="forbid")


class _CatalogQuery(BaseModel):
    """`GET /tools?agent=...`: the catalog of one agent's toolset (all tools without it)."""

    model_config = ConfigDict(extra="forbid")

    agent: str | None = Field(None, min_length=1, max_length=64)


class _IdempotencyQuery(BaseModel):
    """`GET /idempotency/{key}?scope=...`: which caller's key (the agent service's by default)."""

    model_config = ConfigDict(extra="forbid")

    scope: Literal["tools", "expenses"] = "tools"


def _unknown_expense(expense_id: str) -> ApiError:
    return ApiError(
        404, "unknown_expense", f"There is no expense with id {expense_id!r}.", {"expense_id": expense_id}
    )


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status_code, exc.code, exc.message, exc.details, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    # Routing errors (unknown path 404, wrong method 405) in the service's one error shape.
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    return error_response(500, "internal_error", "The tool service failed unexpectedly.")


def create_app(
    settings: ToolsSettings | None = None,
    *,
    registry: ToolRegistry | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> Starlette:
    """The tool service. The schema, demo data and the default routing policy are created at
    startup (the ASGI lifespan).

    `registry` defaults to every tool (default_registry); `clock` is the service clock (leases,
    timestamps). `app.state.engine` and `app.state.store` expose the database for inspection.
    """
    settings = settings or get_tools_settings()
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    store = IdempotencyStore(sessions, timedelta(seconds=settings.idempotency_lease_seconds), clock)
    service = _ToolService(settings, registry or default_registry(), engine, sessions, store, clock)

    dispatcher = Dispatcher.from_settings(settings, sessions, clock)
    retention = timedelta(days=settings.idempotency_retention_days)
    sweeper = Sweeper(store, sessions, retention, clock, settings.idempotency_sweep_interval_seconds)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(service.start)
        stop = asyncio.Event()
        # The outbox's dispatcher lives with its only writer; each replica runs one (claims with
        # leases keep them from sending one row twice at the same time).
        background = [asyncio.create_task(dispatcher.run(stop))] if dispatcher else []
        if settings.idempotency_sweep_interval_seconds > 0:
            background.append(asyncio.create_task(sweeper.run(stop)))
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*background)
            engine.dispose()

    def guarded(credential: Credential, handler: Handler) -> Handler:
        async def checked(request: Request) -> Response:
            require(request, settings, credential)
            return await handler(request)

        return checked

    tools, expenses = Credential.TOOLS, Credential.EXPENSES
    app = Starlette(
        routes=[
            Route("/health", service.health, methods=["GET"]),
            Route("/tools", guarded(tools, service.list_tools), methods=["GET"]),
            Route("/tools/{name}", guarded(tools, service.call_tool), methods=["POST"]),
            Route("/idempotency/{key:path}", guarded(tools, service.get_idempotency_record), methods=["GET"]),
            Route("/tickets", guarded(tools, service.get_tickets), methods=["GET"]),
            Route("/notifications", guarded(tools, service.get_notifications), methods=["GET"]),
            Route("/approval-tickets", guarded(tools, service.get_approval_tickets), methods=["GET"]),
            Route(
                "/approval-tickets/{ticket_id}",
                guarded(tools, service.get_approval_ticket_by_id),
                methods=["GET"],
            ),
            # The same receipt as the portal's, for the agent service's console (an approver reads
            # the receipt beside the OCR'd fields); under the agent service's own credential.
            Route("/receipts/{expense_id}", guarded(tools, service.get_expense_receipt), methods=["GET"]),
            Route("/expenses", guarded(expenses, service.submit_expense), methods=["POST"]),
            Route("/expenses", guarded(expenses, service.get_expenses), methods=["GET"]),
            Route("/expenses/{expense_id}", guarded(expenses, service.get_expense_by_id), methods=["GET"]),
            Route(
                "/expenses/{expense_id}/receipt",
                guarded(expenses, service.get_expense_receipt),
                methods=["GET"],
            ),
            Route("/ledger", guarded(expenses, service.get_ledger), methods=["GET"]),
            Route("/ledger/balance", guarded(expenses, service.get_ledger_balance), methods=["GET"]),
        ],
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            Exception: _unexpected_error,
        },
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.store = store
    app.state.sweeper = sweeper
    app.state.settings = settings
    return app
