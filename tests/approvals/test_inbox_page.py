"""Browser tests of the approvals inbox page against an in-memory fake of the approvals surface.

The fake (a Starlette app defined here) implements the `GET /approvals` and `POST /inbox/decide`
contract with fixed approver credentials (`signed_in_as` and `may_decide` from the credential, never
the body) and an operator token that may only read, and serves the real page from
`app.approvals.inbox_page`; hypercorn runs it on a background thread, and Playwright drives
Debian's Chromium (`apt-get install chromium`; never `playwright install`). One test saves a
screenshot to /tmp/inbox.png (or to $INBOX_SCREENSHOT).
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config
from playwright.sync_api import Browser, Locator, Page, expect
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.approvals.inbox_page import inbox_page, inbox_page_html
from tests.browser import chromium

OPERATOR_TOKEN = "test-operator-token-3f9c"
OPS_LEAD = "apv_ops-lead-credential-7d1e"
FINANCE = "apv_finance-credential-2b8a"
REVOKED = "apv_revoked-credential-5c0f"
CREDENTIALS = {OPS_LEAD: "ops-lead", FINANCE: "finance-manager"}
TOKEN_KEY = "approvals.approverToken"
HASH_1 = "a" * 64
HASH_2 = "b" * 64
DECISION_FIELDS = {"agent", "task_id", "decision", "comment", "approval_hash"}


def approval(task_id: str, approval_hash: str, **overrides: Any) -> dict[str, Any]:
    """A pending row as the surface lists it; `may_decide` is computed per caller unless given."""
    item: dict[str, Any] = {
        "agent": "AgentTask",
        "task_id": task_id,
        "summary": "Execute 1 tool call(s): create_ticket(...)",
        "details": {"tool_calls": [{"name": "create_ticket", "args": {"title": "Printer on fire"}}]},
        "approval_hash": approval_hash,
        "approvers": ["ops-lead"],
        "requested_at": "2026-11-26T13:00:00+00:00",
        "deadline": "2099-11-27T13:00:00+00:00",
        "reminded": False,
    }
    item.update(overrides)
    return item


class FakeSurface:
    """In-memory state of the fake approvals surface, shared between the test and the server thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: list[dict[str, Any]] = []
        self.credentials: dict[str, str] = {}
        self.decisions: list[Any] = []  # every body posted to /inbox/decide, as sent
        self.recorded_as: list[str] = []  # the approver of each decision recorded, from the credential
        self.approvals_auth: list[str | None] = []
        # The next decision's answer instead of the usual one: (status, code, message, record it?).
        self.next_decide: tuple[int, str, str, bool] | None = None

    def reset(self, *items: dict[str, Any]) -> None:
        with self.lock:
            self.pending = [copy.deepcopy(item) for item in items]
            self.credentials = dict(CREDENTIALS)
            self.decisions = []
            self.recorded_as = []
            self.approvals_auth = []
            self.next_decide = None

    def add(self, item: dict[str, Any]) -> None:
        with self.lock:
            self.pending.append(copy.deepcopy(item))

    def update(self, task_id: str, **changes: Any) -> None:
        with self.lock:
            for item in self.pending:
                if item["task_id"] == task_id:
                    item.update(changes)

    def remove(self, task_id: str) -> None:
        with self.lock:
            self.pending = [item for item in self.pending if item["task_id"] != task_id]

    def revoke(self, credential: str) -> None:
        with self.lock:
            self.credentials.pop(credential, None)


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def build_app(fake: FakeSurface) -> Starlette:
    def bearer(request: Request) -> str | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return token if scheme == "Bearer" and token else None

    def approver_of(request: Request) -> str | None:
        token = bearer(request)
        with fake.lock:
            return None if token is None else fake.credentials.get(token)

    def unauthorized(message: str) -> JSONResponse:
        return error(401, "unauthorized", message)

    async def list_approvals(request: Request) -> JSONResponse:
        approver = approver_of(request)
        with fake.lock:
            fake.approvals_auth.append(request.headers.get("authorization"))
            pending = copy.deepcopy(fake.pending)
        if approver is None and bearer(request) != OPERATOR_TOKEN:
            return unauthorized("An approver credential or the operator token is required.")
        for item in pending:
            item.setdefault("may_decide", approver is not None and approver in item["approvers"])
        return JSONResponse({"signed_in_as": approver, "approvals": pending})

    async def decide(request: Request) -> JSONResponse:
        approver = approver_of(request)
        if approver is None:
            return unauthorized("Sign in with your approver credential.")
        try:
            body = json.loads(await request.body())
        except ValueError:
            return error(422, "invalid_decision", "The body is not JSON.")
        with fake.lock:
            fake.decisions.append(body)
        if (
            not isinstance(body, dict)
            or set(body) != DECISION_FIELDS  # like the real surface, unknown fields are refused
            or not all(isinstance(body[name], str) for name in DECISION_FIELDS)
            or body["decision"] not in ("approve", "reject")
        ):
            return error(422, "invalid_decision", "Malformed decision.")
        with fake.lock:
            waiting = next(
                (i for i in fake.pending if (i["agent"], i["task_id"]) == (body["agent"], body["task_id"])),
                None,
            )
            if waiting is None:
                return error(409, "not_waiting", f"Task {body['task_id']} is not waiting for approval.")
            if waiting["approval_hash"] != body["approval_hash"]:
                return error(
                    409, "stale_approval", "The request changed since it was shown; review it again."
                )
            if approver not in waiting["approvers"]:
                return error(403, "not_an_approver", f"{approver} is not an approver of this request.")
            scripted, fake.next_decide = fake.next_decide, None
            if scripted is None or scripted[3]:
                fake.pending.remove(waiting)
                fake.recorded_as.append(approver)
        if scripted is not None:
            return error(scripted[0], scripted[1], scripted[2])
        return JSONResponse(
            {
                "status": "recorded",
                "agent": body["agent"],
                "task_id": body["task_id"],
                "decision": body["decision"],
            }
        )

    return Starlette(
        routes=[
            Route("/", inbox_page),
            Route("/inbox", inbox_page),
            Route("/approvals", list_approvals),
            Route("/inbox/decide", decide, methods=["POST"]),
        ]
    )


class ServerThread:
    """hypercorn on its own event loop in a thread, on a port the OS picked (no bind race)."""

    def __init__(self, app: Starlette) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port: int = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = Config()
        self.config.bind = [f"fd://{sock.detach()}"]  # hypercorn owns (and closes) the socket
        self.config.accesslog = None
        self.config.graceful_timeout = 2.0
        self.app = app
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="inbox-fake-server", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self.error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await serve(cast(Any, self.app), self.config, shutdown_trigger=self._stop.wait)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)
        deadline = time.monotonic() + 10
        with httpx.Client(timeout=1.0) as client:
            while True:
                if self.error is not None:
                    raise RuntimeError("fake approvals server failed to start") from self.error
                try:
                    if client.get(self.url + "/inbox").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"fake approvals server not ready on {self.url}")
                time.sleep(0.02)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        assert not self._thread.is_alive(), "fake approvals server did not stop"
        if self.error is not None:
            raise self.error


@pytest.fixture(scope="module")
def surface() -> Iterator[tuple[FakeSurface, str]]:
    fake = FakeSurface()
    server = ServerThread(build_app(fake))
    server.start()
    try:
        yield fake, server.url
    finally:
        server.stop()


@pytest.fixture
def fake(surface: tuple[FakeSurface, str]) -> FakeSurface:
    surface[0].reset(approval("t-1", HASH_1))
    return surface[0]


@pytest.fixture
def base_url(surface: tuple[FakeSurface, str]) -> str:
    return surface[1]


@pytest.fixture(scope="module")  # Playwright stops with this module: no loop left behind
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def console() -> list[str]:
    return []


@pytest.fixture
def page(browser: Browser, console: list[str]) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    try:
        yield page
    finally:
        context.close()
    assert page_errors == [], f"uncaught errors in the page: {page_errors}"
    csp = [line for line in console if "Content Security Policy" in line]
    assert csp == [], f"CSP violations: {csp}"


def sign_in(page: Page, base_url: str, credential: str = OPS_LEAD) -> None:
    page.goto(base_url + "/inbox")
    page.get_by_label("Your approver credential").fill(credential)
    page.get_by_test_id("sign-in").click()


def row(page: Page, task_id: str) -> Locator:
    return page.locator(f'[data-testid="approval-row"][data-task-id="{task_id}"]')


def session_storage(page: Page) -> dict[str, str]:
    return cast(dict[str, str], page.evaluate("Object.fromEntries(Object.entries(sessionStorage))"))


def expect_signed_out(page: Page, credential: str) -> None:
    status = page.get_by_test_id("status-message")
    expect(status).to_contain_text("Your approver credential was not accepted (401)")
    expect(status).to_contain_text("Sign in again")
    expect(page.get_by_test_id("token-input")).to_be_visible()
    expect(page.get_by_test_id("token-input")).to_have_value("")
    expect(page.get_by_test_id("token-input")).to_be_focused()
    expect(page.get_by_test_id("approvals-table")).to_be_hidden()
    expect(page.get_by_test_id("approval-row")).to_have_count(0)
    assert session_storage(page) == {}
    assert credential not in page.url


def test_page_is_self_contained_and_served_at_root_and_inbox(base_url: str) -> None:
    html = inbox_page_html()
    with httpx.Client(base_url=base_url) as client:
        for path in ("/", "/inbox"):
            response = client.get(path)
            assert response.status_code == 200
            assert response.text == html
            assert response.headers["content-type"].startswith("text/html")
            assert response.headers["cache-control"] == "no-store"
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "no external assets"
    assert "sessionStorage" in html and ".innerHTML" not in html
    assert f'"{TOKEN_KEY}"' in html
    assert "operator-input" not in html and "approver:" not in html
    assert "agentctl approvers add NAME" in html
    for test_id in (
        "token-input",
        "sign-in",
        "approvals-table",
        "approval-row",
        "comment-input",
        "approve-button",
        "reject-button",
        "not-yours",
        "status-message",
        "empty-state",
        "refresh",
    ):
        assert f'"{test_id}"' in html, test_id


@pytest.mark.parametrize("credential", ["apv_not-a-credential", REVOKED])
def test_unknown_or_revoked_credential_shows_401_message(
    page: Page, base_url: str, fake: FakeSurface, credential: str
) -> None:
    fake.credentials[REVOKED] = "ops-lead"
    fake.revoke(REVOKED)
    sign_in(page, base_url, credential)
    expect_signed_out(page, credential)
    assert fake.approvals_auth == [f"Bearer {credential}"]


def test_sign_in_asks_only_for_the_credential_and_shows_who_the_server_says(
    page: Page, base_url: str, fake: FakeSurface
) -> None:
    page.goto(base_url + "/inbox")
    # Left behind by the earlier page (shared token, typed name): cleared, never sent.
    page.evaluate(
        "sessionStorage.setItem('approvals.operatorToken', 'old-shared-token');"
        "sessionStorage.setItem('approvals.operatorName', 'Somebody Else')"
    )
    page.reload()
    assert session_storage(page) == {}
    form = page.locator("#sign-in-form")
    expect(form.locator("input")).to_have_count(1)
    expect(form.locator("input")).to_have_attribute("type", "password")
    expect(page.get_by_test_id("operator-input")).to_have_count(0)
    expect(page.locator("#token-hint")).to_contain_text("personal approver credential")
    expect(page.locator("#token-hint")).to_contain_text("agentctl approvers add NAME")
    page.get_by_label("Your approver credential").fill(FINANCE)
    page.get_by_test_id("sign-in").click()
    expect(page.locator("#who")).to_have_text("finance-manager")
    expect(page.locator(".toolbar .who")).to_have_text("Signed in as finance-manager")
    assert session_storage(page) == {TOKEN_KEY: FINANCE}
    assert fake.approvals_auth == [f"Bearer {FINANCE}"]
    assert FINANCE not in page.url


def test_sign_in_lists_the_pending_row(page: Page, base_url: str, fake: FakeSurface) -> None:
    sign_in(page, base_url)
    pending = row(page, "t-1")
    expect(pending).to_have_count(1)
    expect(page.locator("#who")).to_have_text("ops-lead")
    expect(pending).to_contain_text("AgentTask")
    expect(pending).to_contain_text("Execute 1 tool call(s): create_ticket(...)")
    expect(pending).to_contain_text("ops-lead")
    expect(pending.get_by_test_id("approve-button")).to_be_visible()
    expect(pending.get_by_test_id("not-yours")).to_have_count(0)
    expect(pending.get_by_text("overdue")).to_be_hidden()
    expect(pending.get_by_text("reminder sent")).to_be_hidden()
    expect(page.get_by_test_id("empty-state")).to_be_hidden()
    expect(page.get_by_test_id("status-message")).to_have_text("")
    expect(page.get_by_test_id("details-json")).to_be_hidden()
    toggle = page.get_by_role("button", name="Details of task t-1")
    expect(toggle).to_have_attribute("aria-expanded", "false")
    toggle.click()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    expect(page.get_by_test_id("details-json")).to_contain_text('"title": "Printer on fire"')
    assert fake.approvals_auth == [f"Bearer {OPS_LEAD}"]
    assert OPS_LEAD not in page.url
    assert session_storage(page) == {TOKEN_KEY: OPS_LEAD}
    # A reload keeps the session (same tab) without asking again.
    fake.add(
        approval(
            "exp-2026-0042",
            HASH_2,
            agent="ExpenseReport",
            summary="Expense report of 1,284.50 EUR (hotel, train) by j.doe",
            approvers=["finance-manager", "cfo"],
            deadline="2026-01-01T09:00:00+00:00",
            reminded=True,
        )
    )
    page.reload()
    expect(row(page, "t-1")).to_have_count(1)
    late = row(page, "exp-2026-0042")
    expect(late.get_by_text("overdue")).to_be_visible()
    expect(late.get_by_text("reminder sent")).to_be_visible()
    expect(late).to_contain_text("finance-manager, cfo")
    expect(late.get_by_test_id("not-yours")).to_be_visible()
    late.get_by_test_id("details-toggle").click()
    expect(page.get_by_test_id("token-input")).to_be_hidden()
    shot = Path(os.environ.get("INBOX_SCREENSHOT") or "/tmp/inbox.png")
    row(page, "t-1").get_by_test_id("comment-input").fill("Looks fine, ticket is needed.")
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 0


@pytest.mark.parametrize(
    ("decision", "button", "verb"), [("approve", "Approve", "Approved"), ("reject", "Reject", "Rejected")]
)
def test_decision_posts_no_approver_and_the_row_disappears(
    page: Page, base_url: str, fake: FakeSurface, decision: str, button: str, verb: str
) -> None:
    fake.add(approval("t-2", HASH_2, agent="ExpenseReport", summary="Expense 42.00 EUR"))
    sign_in(page, base_url)
    expect(page.get_by_test_id("approval-row")).to_have_count(2)
    row(page, "t-1").get_by_test_id("comment-input").fill('ok with <b>care</b> & "quotes"')
    with page.expect_request("**/inbox/decide") as posted:
        page.get_by_role("button", name=f"{button} task t-1").click()
    expect(row(page, "t-1")).to_have_count(0)
    expect(row(page, "t-2")).to_have_count(1)
    status = page.get_by_test_id("status-message")
    expect(status).to_have_text(f"{verb} task t-1 (AgentTask) as ops-lead: recorded.")
    assert posted.value.headers["authorization"] == f"Bearer {OPS_LEAD}"
    assert OPS_LEAD not in posted.value.url
    assert fake.decisions == [
        {
            "agent": "AgentTask",
            "task_id": "t-1",
            "decision": decision,
            "comment": 'ok with <b>care</b> & "quotes"',
            "approval_hash": HASH_1,
        }
    ]
    assert "approver" not in fake.decisions[0]
    assert fake.recorded_as == ["ops-lead"]
    # The last one leaves the empty state.
    row(page, "t-2").get_by_test_id(f"{decision}-button").click()
    expect(page.get_by_test_id("empty-state")).to_have_text("No approvals are waiting.")
    expect(page.get_by_test_id("approvals-table")).to_be_hidden()
    assert fake.decisions[1] == {
        "agent": "ExpenseReport",
        "task_id": "t-2",
        "decision": decision,
        "comment": "",
        "approval_hash": HASH_2,
    }
    assert fake.recorded_as == ["ops-lead", "ops-lead"]


def test_a_row_not_yours_to_decide_has_no_buttons(page: Page, base_url: str, fake: FakeSurface) -> None:
    fake.add(approval("exp-7", HASH_2, agent="ExpenseReport", approvers=["finance-manager", "cfo"]))
    sign_in(page, base_url)
    mine, theirs = row(page, "t-1"), row(page, "exp-7")
    expect(theirs).to_have_count(1)
    expect(theirs.get_by_test_id("not-yours")).to_have_text("Not yours to decide")
    for test_id in ("comment-input", "approve-button", "reject-button"):
        expect(theirs.get_by_test_id(test_id)).to_have_count(0)
        expect(mine.get_by_test_id(test_id)).to_have_count(1)
    expect(mine.get_by_test_id("not-yours")).to_have_count(0)
    expect(page.get_by_role("button", name="Approve task exp-7")).to_have_count(0)
    # Signed in as one of its approvers, the same row can be decided.
    page.get_by_test_id("sign-out").click()
    sign_in(page, base_url, FINANCE)
    expect(row(page, "exp-7").get_by_test_id("approve-button")).to_be_visible()
    expect(row(page, "t-1").get_by_test_id("not-yours")).to_be_visible()


def test_the_operator_token_sees_the_rows_read_only(page: Page, base_url: str, fake: FakeSurface) -> None:
    # Even a row the server marked decidable stays read-only without an approver identity.
    fake.add(approval("t-2", HASH_2, may_decide=True))
    sign_in(page, base_url, OPERATOR_TOKEN)
    expect(page.get_by_test_id("approval-row")).to_have_count(2)
    expect(page.locator(".toolbar .who")).to_have_text("Signed in as operator (read-only)")
    expect(page.get_by_test_id("not-yours")).to_have_count(2)
    for test_id in ("comment-input", "approve-button", "reject-button"):
        expect(page.get_by_test_id(test_id)).to_have_count(0)
    expect(page.get_by_test_id("details-toggle")).to_have_count(2)  # reading is allowed
    assert fake.approvals_auth == [f"Bearer {OPERATOR_TOKEN}"]
    assert fake.decisions == []


def test_whether_a_row_is_yours_follows_the_server_and_keeps_the_comment(
    page: Page, base_url: str, fake: FakeSurface
) -> None:
    sign_in(page, base_url)
    comment = row(page, "t-1").get_by_test_id("comment-input")
    comment.fill("kept across the change")
    fake.update("t-1", approvers=["cfo"])
    page.get_by_test_id("refresh").click()
    expect(row(page, "t-1").get_by_test_id("not-yours")).to_be_visible()
    expect(row(page, "t-1").get_by_test_id("approve-button")).to_have_count(0)
    fake.update("t-1", approvers=["cfo", "ops-lead"])  # e.g. escalated to ops-lead after a reminder
    page.get_by_test_id("refresh").click()
    expect(row(page, "t-1").get_by_test_id("comment-input")).to_have_value("kept across the change")
    expect(row(page, "t-1").get_by_test_id("not-yours")).to_have_count(0)


@pytest.mark.parametrize("case", ["stale_approval", "not_waiting", "not_an_approver"])
def test_refusal_is_shown_in_the_status(page: Page, base_url: str, fake: FakeSurface, case: str) -> None:
    sign_in(page, base_url)
    expect(row(page, "t-1")).to_have_count(1)
    if case == "stale_approval":
        fake.update("t-1", approval_hash=HASH_2, summary="Execute 2 tool call(s)")
        message = "The request changed since it was shown; review it again."
    elif case == "not_waiting":
        fake.remove("t-1")
        message = "Task t-1 is not waiting for approval."
    else:
        fake.update("t-1", approvers=["cfo"])
        message = "ops-lead is not an approver of this request."
    page.get_by_test_id("approve-button").click()
    status = page.get_by_test_id("status-message")
    expect(status).to_contain_text(message)
    expect(status).to_contain_text("not recorded")
    expect(status).to_have_attribute("data-kind", "error")
    assert status.get_attribute("role") == "status"
    assert fake.decisions[0]["approval_hash"] == HASH_1
    assert fake.recorded_as == []
    if case == "stale_approval":  # the list is refreshed: the row now shows what is waiting
        expect(row(page, "t-1")).to_contain_text("Execute 2 tool call(s)")
        page.get_by_test_id("approve-button").click()
        expect(row(page, "t-1")).to_have_count(0)
        assert fake.decisions[1]["approval_hash"] == HASH_2
    elif case == "not_waiting":
        expect(page.get_by_test_id("empty-state")).to_be_visible()
    else:
        expect(row(page, "t-1").get_by_test_id("not-yours")).to_be_visible()
        expect(status).to_contain_text(message)  # the refresh keeps the answer on screen


@pytest.mark.parametrize("recorded", [False, True])
def test_outcome_unknown_says_it_may_have_been_recorded(
    page: Page, base_url: str, fake: FakeSurface, recorded: bool
) -> None:
    message = "Restate did not answer in time; the decision may or may not have been recorded."
    fake.next_decide = (503, "outcome_unknown", message, recorded)
    sign_in(page, base_url)
    page.get_by_test_id("approve-button").click()
    status = page.get_by_test_id("status-message")
    expect(status).to_have_text(
        f"The decision for task t-1 may have been recorded, or may not: {message}"
        " Press Refresh to check before trying again."
    )
    expect(status).not_to_contain_text("not recorded")
    expect(status).to_have_attribute("data-kind", "error")
    # The list is reloaded, and Refresh shows which it was; the message stays until then.
    expect(row(page, "t-1")).to_have_count(0 if recorded else 1)
    page.get_by_test_id("refresh").click()
    expect(row(page, "t-1")).to_have_count(0 if recorded else 1)
    expect(status).to_contain_text("may have been recorded")
    if not recorded:
        expect(row(page, "t-1").get_by_test_id("approve-button")).to_be_enabled()


def test_network_error_on_decide_may_have_been_recorded(page: Page, base_url: str, fake: FakeSurface) -> None:
    sign_in(page, base_url)
    page.route("**/inbox/decide", lambda route: route.abort())
    page.get_by_test_id("reject-button").click()
    status = page.get_by_test_id("status-message")
    expect(status).to_contain_text("may or may not have been recorded")
    expect(status).to_contain_text("Press Refresh")
    expect(row(page, "t-1").get_by_test_id("reject-button")).to_be_enabled()


def test_401_on_decide_signs_out(page: Page, base_url: str, fake: FakeSurface) -> None:
    sign_in(page, base_url)
    expect(row(page, "t-1")).to_have_count(1)
    row(page, "t-1").get_by_test_id("comment-input").fill("revoked meanwhile")
    fake.revoke(OPS_LEAD)
    page.get_by_test_id("approve-button").click()
    expect_signed_out(page, OPS_LEAD)
    expect(page.locator("#who")).to_have_text("")
    assert len(fake.approvals_auth) == 1, "no list is loaded after the 401"
    assert fake.decisions == [] and fake.recorded_as == []


def test_script_in_a_value_is_text_not_executed(
    page: Page, base_url: str, fake: FakeSurface, console: list[str]
) -> None:
    evil = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'
    fake.reset(
        approval(
            evil, HASH_1, summary=evil, agent=evil, approvers=[evil], details={"note": evil}, deadline=evil
        ),
        approval("t-evil", HASH_2, approvers=["ops-lead"], summary=evil),
    )
    fake.credentials["apv_evil"] = evil
    sign_in(page, base_url, "apv_evil")
    expect(page.get_by_test_id("approval-row")).to_have_count(2)
    pending = page.get_by_test_id("approval-row").first  # its task id has quotes: no CSS selector
    expect(page.locator("#who")).to_have_text(evil)
    assert pending.get_attribute("data-task-id") == evil
    expect(pending.locator("td").nth(2)).to_have_text(evil)
    pending.get_by_test_id("details-toggle").click()
    expect(page.get_by_test_id("details-json").first).to_contain_text("window.__xss = 2")
    expect(row(page, "t-evil").get_by_test_id("not-yours")).to_be_visible()
    assert page.locator("table img, table script, #who *").count() == 0
    assert page.evaluate("window.__xss") is None
    pending.get_by_test_id("reject-button").click()
    expect(page.get_by_test_id("approval-row")).to_have_count(1)
    expect(page.get_by_test_id("status-message")).to_contain_text(f"as {evil}: recorded.")
    assert fake.decisions[0]["task_id"] == evil
    assert fake.recorded_as == [evil]
    assert page.evaluate("window.__xss") is None


def test_empty_state(page: Page, base_url: str, fake: FakeSurface) -> None:
    fake.reset()
    sign_in(page, base_url)
    expect(page.get_by_test_id("empty-state")).to_have_text("No approvals are waiting.")
    expect(page.get_by_test_id("approvals-table")).to_be_hidden()
    expect(page.locator("#who")).to_have_text("ops-lead")
    fake.add(approval("t-9", HASH_1))
    page.get_by_test_id("refresh").click()
    expect(row(page, "t-9")).to_have_count(1)
    expect(page.get_by_test_id("empty-state")).to_be_hidden()


def test_network_error_is_reported(page: Page, base_url: str, fake: FakeSurface) -> None:
    sign_in(page, base_url)
    expect(row(page, "t-1")).to_have_count(1)
    page.route("**/approvals", lambda route: route.abort())
    page.get_by_test_id("refresh").click()
    status = page.get_by_test_id("status-message")
    expect(status).to_contain_text("Network error")
    expect(row(page, "t-1")).to_have_count(1)  # the last list stays, marked out of date
    page.unroute("**/approvals")
    page.get_by_test_id("refresh").click()
    expect(status).to_have_text("")


def test_auto_refresh_keeps_a_comment_being_typed(page: Page, base_url: str, fake: FakeSurface) -> None:
    page.clock.install()
    sign_in(page, base_url)
    expect(row(page, "t-1")).to_have_count(1)
    comment = row(page, "t-1").get_by_test_id("comment-input")
    comment.fill("half-written")
    fake.add(approval("t-2", HASH_2))
    page.clock.run_for(10_000)
    expect(row(page, "t-2")).to_have_count(1)
    expect(comment).to_have_value("half-written")
    expect(comment).to_be_focused()
    assert len(fake.approvals_auth) == 2


@pytest.mark.parametrize("width", [375, 1024])
def test_no_horizontal_scroll_on_narrow_screens(
    browser: Browser, base_url: str, fake: FakeSurface, width: int
) -> None:
    fake.add(approval("exp-2026-0042", HASH_2, agent="ExpenseReport", approvers=["finance-manager", "cfo"]))
    context = browser.new_context(viewport={"width": width, "height": 740})
    try:
        page = context.new_page()
        sign_in(page, base_url)
        expect(row(page, "t-1")).to_have_count(1)
        expect(page.get_by_test_id("details-json")).to_have_count(2)
        expect(page.locator('[data-testid="details-json"]:visible')).to_have_count(0)
        expect(page.locator(".tag:visible")).to_have_count(0)
        expect(page.get_by_test_id("not-yours")).to_be_visible()
        for name in ("Approve task t-1", "Reject task t-1"):
            box = page.get_by_role("button", name=name).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, (name, box)
        wrap = page.locator(".table-wrap")
        assert wrap.evaluate("el => el.scrollWidth - el.clientWidth") <= 0
        if width < 500 and os.environ.get("INBOX_NARROW_SCREENSHOT"):
            page.screenshot(path=os.environ["INBOX_NARROW_SCREENSHOT"], full_page=True)
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0
    finally:
        context.close()
