"""The public approvals surface, served by `python -m app` on APPROVALS_PORT, apart from Restate.

Who may call what (docs/security.md):

* `POST /webhooks/approval`: an integration holding APPROVAL_WEBHOOK_SECRET, which vouches for
  the approver it names. Signed over "{timestamp}.{raw body}" and refused outside a 5-minute
  window (401); 422 malformed; 409 not waiting or stale; 403 not an approver of that gate. A
  retry of the same delivery gets the first answer again: the decision goes to Restate under an
  Idempotency-Key derived from the body. 2xx only once the arbiter has durably recorded it.
* `POST /inbox/decide`: an approver signed in with their personal credential; the approver is
  the credential's owner, never a field of the body.
* `GET /approvals`: an approver's credential, or the operator token (read-only).
* `GET /` and `GET /inbox`: the inbox page (it holds no data); `GET /health`.

Either way the surface mints a proof for exactly the authenticated decision
(app/gates/proof.py): the agents' `decide` handlers, public on the ingress, refuse any
decision without one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TypeVar
from urllib.parse import quote

import anyio.to_thread
import httpx
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.approvals import signature
from app.approvals.identity import CredentialStore, credentials_for
from app.approvals.inbox_page import inbox_page
from app.console.api import ConsoleApi, Viewer
from app.console.responses import error, unauthorized, unavailable, validation_details
from app.console.tasks import OPEN_GATES_QUERY, open_gates
from app.gates import proof
from app.gates.models import DecideInput, InboxDecision, ProvenDecision, WebhookDecision
from app.runtime.machine import Machine
from app.settings import Settings

log = logging.getLogger(__name__)

DecisionT = TypeVar("DecisionT", bound=InboxDecision)

MAX_BODY_BYTES = 64 * 1024
# Restate's answer to a decision comes once the arbiter has recorded it (milliseconds); past this
# the outcome is unknown, and the client is told so rather than "nothing was recorded".
DECIDE_TIMEOUT_SECONDS = 30.0


class ApprovalsSurface:
    """The handlers, sharing one pooled client to the Restate ingress and admin API."""

    def __init__(
        self,
        settings: Settings,
        machines: Mapping[str, Machine],
        credentials: CredentialStore | None = None,
        decide_timeout: float = DECIDE_TIMEOUT_SECONDS,
    ) -> None:
        self.settings = settings
        self.decide_timeout = decide_timeout
        self.agents = frozenset(machines)
        self.console = ConsoleApi(settings, machines, self.viewer, self._http)
        self.proof_key = proof.proof_key(settings.webhook_secret)
        self.client: httpx.AsyncClient | None = None
        self._credentials = credentials

    @asynccontextmanager
    async def lifespan(self, _: Starlette) -> AsyncIterator[None]:
        if self._credentials is None:
            url = self.settings.database_url
            self._credentials = await anyio.to_thread.run_sync(credentials_for, url)
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(self.decide_timeout, connect=5.0))
        try:
            yield
        finally:
            await self.client.aclose()

    def _http(self) -> httpx.AsyncClient:
        assert self.client is not None, "the approvals surface is not started"
        return self.client

    @staticmethod
    def _bearer(request: Request) -> str | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    def _is_operator(self, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self.settings.operator_secret.encode())

    async def viewer(self, request: Request) -> Viewer | None:
        """Who may read the console: an approver by their credential, or the operator by its token."""
        token = self._bearer(request)
        approver = await self._approver(token)
        if approver is not None:
            return Viewer(approver=approver)
        if token is not None and self._is_operator(token):
            return Viewer(approver=None)
        return None

    async def _approver(self, token: str | None) -> str | None:
        """The approver whose personal credential this is, or None."""
        if token is None:
            return None
        assert self._credentials is not None, "the approvals surface is not started"
        return await anyio.to_thread.run_sync(self._credentials.approver_of, token)

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

    def _parse(self, model: type[DecisionT], raw: bytes) -> DecisionT | Response:
        """The decision, or the 422 that says what is wrong with it (an unknown agent included)."""
        try:
            decision = model.model_validate_json(raw)
        except ValidationError as exc:
            return error(422, "invalid_decision", "the decision is malformed", validation_details(exc))
        if decision.agent in self.agents:
            return decision
        known = ", ".join(sorted(self.agents))
        return error(
            422,
            "invalid_decision",
            f"unknown agent {decision.agent!r}; registered agents: {known}",
            [{"loc": ["agent"], "msg": f"must be one of: {known}"}],
        )

    async def webhook(self, request: Request) -> Response:
        raw = await self._body(request)
        if isinstance(raw, Response):
            return raw
        problem = signature.verify(
            self.settings.webhook_secret,
            raw,
            request.headers.get(signature.HEADER),
            request.headers.get(signature.TIMESTAMP_HEADER),
        )
        if problem is not None:
            return error(401, "bad_signature", problem)
        decision = self._parse(WebhookDecision, raw)
        if isinstance(decision, Response):
            return decision
        # One signed delivery (timestamp and body, exactly what was signed) is one decision attempt:
        # its retry attaches to the first attempt's outcome; a new delivery is decided afresh.
        timestamp = request.headers.get(signature.TIMESTAMP_HEADER, "").strip()
        delivery = "webhook:" + hashlib.sha256(timestamp.encode() + b"." + raw).hexdigest()
        vouched = decision.decide_input(decision.approver)
        return await self._deliver(decision.agent, decision.task_id, vouched, delivery)

    async def inbox_decide(self, request: Request) -> Response:
        approver = await self._approver(self._bearer(request))
        if approver is None:
            return unauthorized("sign in with your approver credential (Authorization: Bearer apv_...)")
        raw = await self._body(request)
        if isinstance(raw, Response):
            return raw
        decision = self._parse(InboxDecision, raw)
        if isinstance(decision, Response):
            return decision
        # The page may name its attempt (a retry after a lost answer then gets that answer again).
        given = request.headers.get("idempotency-key", "").strip()[:200]
        delivery = "inbox:" + hashlib.sha256(f"{approver}\n{given}".encode()).hexdigest() if given else None
        return await self._deliver(
            decision.agent, decision.task_id, decision.decide_input(approver), delivery
        )

    async def _deliver(
        self, agent: str, task_id: str, decision: DecideInput, delivery: str | None
    ) -> Response:
        """Hand an authenticated decision, with its proof, to the task's `decide` handler."""
        proven = ProvenDecision(
            **decision.model_dump(), proof=proof.mint(self.proof_key, agent, task_id, decision)
        )
        url = f"{self.settings.restate_ingress_url}/{agent}/{quote(task_id, safe='')}/decide"
        try:
            headers = {"Idempotency-Key": delivery} if delivery else {}
            response = await self._http().post(url, json=proven.model_dump(mode="json"), headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            # No connection: the request never left, so nothing can have been recorded.
            log.warning("approval for %s/%s not delivered: %r", agent, task_id, exc)
            return unavailable("not_delivered", "Restate is unreachable; nothing was recorded, retry later")
        except httpx.TransportError as exc:
            log.warning("approval for %s/%s: outcome unknown: %r", agent, task_id, exc)
            return _outcome_unknown()
        return _answer(agent, task_id, response)

    async def approvals(self, request: Request) -> Response:
        token = self._bearer(request)
        approver = await self._approver(token)
        if approver is None and not (token is not None and self._is_operator(token)):
            return unauthorized("an approver credential or the operator token is required")
        try:
            response = await self._http().post(
                f"{self.settings.restate_admin_url}/query",
                json={"query": OPEN_GATES_QUERY},
                headers={"accept": "application/json"},
            )
        except httpx.TransportError:
            return unavailable("restate_unavailable", "Restate's admin API is unreachable")
        if response.status_code != 200:
            return error(502, "restate_error", f"Restate answered {response.status_code} to the state query")
        pending = [row.as_listed(approver) for row in open_gates(response.json().get("rows", []))]
        return JSONResponse({"signed_in_as": approver, "approvals": pending})

    async def health(self, _: Request) -> Response:
        return JSONResponse({"status": "ok"})


def _outcome_unknown() -> Response:
    return unavailable(
        "outcome_unknown",
        "the decision may or may not have been recorded; send the same delivery again (it is "
        "idempotent and answers with the outcome) or check the task's status",
    )


# The gate's refusals, by the words its messages start with (app/gates/arbiter.py).
_CONFLICTS = (
    ("stale approval_hash", "stale_approval"),
    ("already closed", "already_decided"),
    ("not waiting", "not_waiting"),
)


def _answer(agent: str, task_id: str, response: httpx.Response) -> Response:
    """Map Restate's answer to `decide` onto the webhook's contract."""
    where = f"{agent} {task_id}"
    if response.status_code == 200:
        return JSONResponse(
            {"status": "recorded", "agent": agent, "task_id": task_id, "gate": response.json()}
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
    if response.status_code == 401:
        # Our own proof was refused: a misconfiguration (two secrets?), never the caller's fault.
        return error(
            500, "proof_refused", "the agent refused the approvals surface's proof; nothing was recorded"
        )
    return _outcome_unknown()


def create_approvals_app(
    settings: Settings,
    machines: Mapping[str, Machine],
    credentials: CredentialStore | None = None,
    decide_timeout: float = DECIDE_TIMEOUT_SECONDS,
) -> Starlette:
    surface = ApprovalsSurface(settings, machines, credentials, decide_timeout)
    return Starlette(
        routes=[
            Route("/webhooks/approval", surface.webhook, methods=["POST"]),
            Route("/approvals", surface.approvals, methods=["GET"]),
            Route("/inbox/decide", surface.inbox_decide, methods=["POST"]),
            Route("/", inbox_page, methods=["GET"]),
            Route("/inbox", inbox_page, methods=["GET"]),
            Route("/health", surface.health, methods=["GET"]),
            *surface.console.routes(),
        ],
        lifespan=surface.lifespan,
    )
