"""The public approvals surface, served by `python -m app` on APPROVALS_PORT, apart from Restate.

* `POST /webhooks/approval`: a signed decision (design.md); 401 bad or missing signature, 422
  malformed, 409 not waiting or stale, 403 not an approver; 2xx only once the decision is durably
  recorded in Restate (the gate's `decide` returned), so a decision answered 2xx is never lost.
* `GET /approvals`: the pending approvals, read from Restate's state (operator token).
* `POST /inbox/decide`: the inbox page's decisions (operator token instead of a signature).
* `GET /` and `GET /inbox`: the operator page; `GET /health`.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.approvals import signature
from app.approvals.inbox_page import inbox_page
from app.approvals.models import GateState, WebhookDecision
from app.engine import PendingApprovalView
from app.settings import Settings

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024


def error(status: int, code: str, message: str, details: Any = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status)


def _validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"loc": list(err["loc"]), "msg": err["msg"]} for err in exc.errors()]


class ApprovalsSurface:
    """The handlers, sharing one pooled client to the Restate ingress and admin API."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client: httpx.AsyncClient | None = None

    @asynccontextmanager
    async def lifespan(self, _: Starlette) -> AsyncIterator[None]:
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=5.0))
        try:
            yield
        finally:
            await self.client.aclose()

    def _http(self) -> httpx.AsyncClient:
        assert self.client is not None, "the approvals surface is not started"
        return self.client

    def _operator(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        expected = self.settings.operator_token.get_secret_value()
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected.encode())

    async def _body(self, request: Request) -> bytes | Response:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return error(413, "body_too_large", f"the body must be at most {MAX_BODY_BYTES} bytes")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return error(413, "body_too_large", f"the body must be at most {MAX_BODY_BYTES} bytes")
        return body

    async def webhook(self, request: Request) -> Response:
        raw = await self._body(request)
        if isinstance(raw, Response):
            return raw
        secret = self.settings.approval_webhook_secret.get_secret_value()
        if not signature.verify(secret, raw, request.headers.get(signature.HEADER)):
            return error(401, "bad_signature", f"missing or invalid {signature.HEADER} signature")
        return await self._decide_from(raw)

    async def inbox_decide(self, request: Request) -> Response:
        if not self._operator(request):
            return error(401, "unauthorized", "an operator token is required (Authorization: Bearer)")
        raw = await self._body(request)
        if isinstance(raw, Response):
            return raw
        return await self._decide_from(raw)

    async def _decide_from(self, raw: bytes) -> Response:
        try:
            decision = WebhookDecision.model_validate_json(raw)
        except ValidationError as exc:
            return error(422, "invalid_decision", "the decision is malformed", _validation_details(exc))
        url = (
            f"{self.settings.restate_ingress_url}/{decision.agent}/{quote(decision.task_id, safe='')}/decide"
        )
        try:
            response = await self._http().post(url, json=decision.decide_input().model_dump(mode="json"))
        except httpx.TransportError as exc:
            log.warning("approval for %s/%s not delivered: %r", decision.agent, decision.task_id, exc)
            return _unavailable("Restate is unreachable; nothing was recorded, retry later")
        return _answer(decision, response)

    async def approvals(self, request: Request) -> Response:
        if not self._operator(request):
            return error(401, "unauthorized", "an operator token is required (Authorization: Bearer)")
        query = (
            "SELECT service_key, value_utf8 FROM state "
            "WHERE service_name = 'ApprovalGate' AND key = 'gate' AND value_utf8 LIKE '%\"status\":\"open\"%'"
        )
        try:
            response = await self._http().post(
                f"{self.settings.restate_admin_url}/query",
                json={"query": query},
                headers={"accept": "application/json"},
            )
        except httpx.TransportError:
            return _unavailable("Restate's admin API is unreachable")
        if response.status_code != 200:
            return error(502, "restate_error", f"Restate answered {response.status_code} to the state query")
        pending = []
        for row in response.json().get("rows", []):
            gate = GateState.model_validate_json(row["value_utf8"])
            if gate.status != "open":
                continue
            view = PendingApprovalView.of(gate.pending).model_dump(mode="json")
            pending.append({"agent": gate.pending.agent, "task_id": gate.pending.task_id, **view})
        pending.sort(key=lambda item: item["deadline"])
        return JSONResponse({"approvals": pending})

    async def health(self, _: Request) -> Response:
        return JSONResponse({"status": "ok"})


def _unavailable(message: str) -> Response:
    response = error(503, "restate_unavailable", message)
    response.headers["Retry-After"] = "5"
    return response


# The gate's refusals, by the words its messages start with (app/approvals/gate.py).
_CONFLICTS = (
    ("stale approval_hash", "stale_approval"),
    ("already closed", "already_decided"),
    ("not waiting", "not_waiting"),
)


def _answer(decision: WebhookDecision, response: httpx.Response) -> Response:
    """Map Restate's answer to `decide` onto the webhook's contract."""
    where = f"{decision.agent} {decision.task_id}"
    if response.status_code == 200:
        return JSONResponse(
            {
                "status": "recorded",
                "agent": decision.agent,
                "task_id": decision.task_id,
                "gate": response.json(),
            }
        )
    try:
        message = str(json.loads(response.text).get("message", response.text))
    except (ValueError, AttributeError):
        message = response.text
    if response.status_code == 409:
        code = next((code for words, code in _CONFLICTS if words in message), "conflict")
        return error(409, code, message)
    if response.status_code == 404:
        return error(409, "not_waiting", f"{where} is not waiting for an approval")
    if response.status_code == 403:
        return error(403, "not_an_approver", message)
    if response.status_code == 400:
        return error(422, "invalid_decision", message)
    log.error("decide for %s failed: %s %s", where, response.status_code, response.text[:500])
    return _unavailable(f"Restate answered {response.status_code}; nothing was recorded, retry later")


def create_approvals_app(settings: Settings) -> Starlette:
    surface = ApprovalsSurface(settings)
    return Starlette(
        routes=[
            Route("/webhooks/approval", surface.webhook, methods=["POST"]),
            Route("/approvals", surface.approvals, methods=["GET"]),
            Route("/inbox/decide", surface.inbox_decide, methods=["POST"]),
            Route("/", inbox_page, methods=["GET"]),
            Route("/inbox", inbox_page, methods=["GET"]),
            Route("/health", surface.health, methods=["GET"]),
        ],
        lifespan=surface.lifespan,
    )
