"""Browser tests of the operator inbox page against an in-memory fake of the approvals surface.

The fake (a Starlette app defined here) implements the `GET /approvals` and `POST /inbox/decide`
contract with a fixed token and serves the real page from `app.approvals.inbox_page`; hypercorn runs it
on a background thread, and Playwright drives Debian's Chromium (`apt-get install chromium`; never
`playwright install`). One test saves a screenshot to /tmp/inbox.png (or to $INBOX_SCREENSHOT).
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

TOKEN = "test-operator-token-3f9c"
OPERATOR = "Ada Operator"
HASH_1 = "a" * 64
HASH_2 = "b" * 64


def approval(task_id: str, approval_hash: str, **overrides: Any) -> dict[str, Any]:
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
        self.decisions: list[Any] = []
        self.approvals_auth: list[str | None] = []

    def reset(self, *items: dict[str, Any]) -> None:
        with self.lock:
            self.pending = [copy.deepcopy(item) for item in items]
            self.decisions = []
            self.approvals_auth = []

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


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def build_app(fake: FakeSurface) -> Starlette:
    def authorized(request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {TOKEN}"

    def unauthorized() -> JSONResponse:
        return error(401, "unauthorized", "Missing or invalid operator token.")

    async def list_approvals(request: Request) -> JSONResponse:
        with fake.lock:
            fake.approvals_auth.append(request.headers.get("authorization"))
            pending = copy.deepcopy(fake.pending)
        if not authorized(request):
            return unauthorized()
        return JSONResponse({"approvals": pending})

    async def decide(request: Request) -> JSONResponse:
        if not authorized(request):
            return unauthorized()
        try:
            body = json.loads(await request.body())
        except ValueError:
            return error(422, "invalid", "The body is not JSON.")
        with fake.lock:
            fake.decisions.append(body)
        fields = ("agent", "task_id", "decision", "approver", "comment", "approval_hash")
        if (
            not isinstance(body, dict)
            or set(body) != set(fields)
            or not all(isinstance(body[name], str) for name in fields)
            or body["decision"] not in ("approve", "reject")
        ):
            return error(422, "invalid", "Malformed decision.")
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
            fake.pending.remove(waiting)
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


def sign_in(page: Page, base_url: str, token: str = TOKEN, name: str = OPERATOR) -> None:
    page.goto(base_url + "/inbox")
    page.get_by_label("Your name").fill(name)
    page.get_by_label("Operator token").fill(token)
    page.get_by_test_id("sign-in").click()


def row(page: Page, task_id: str) -> Locator:
    return page.locator(f'[data-testid="approval-row"][data-task-id="{task_id}"]')


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
    for test_id in (
        "token-input",
        "operator-input",
        "sign-in",
        "approvals-table",
        "approval-row",
        "comment-input",
        "approve-button",
        "reject-button",
        "status-message",
        "empty-state",
        "refresh",
    ):
        assert f'"{test_id}"' in html, test_id


def test_wrong_token_shows_401_message(page: Page, base_url: str, fake: FakeSurface) -> None:
    sign_in(page, base_url, token="not-the-token")
    status = page.get_by_test_id("status-message")
    expect(status).to_contain_text("401")
    expect(status).to_contain_text("Sign in again")
    expect(page.get_by_test_id("token-input")).to_be_visible()
    expect(page.get_by_test_id("token-input")).to_have_value("")
    expect(page.get_by_test_id("approvals-table")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('approvals.operatorToken')") is None
    assert fake.approvals_auth == ["Bearer not-the-token"]
    assert "not-the-token" not in page.url


def test_sign_in_lists_the_pending_row(page: Page, base_url: str, fake: FakeSurface) -> None:
    sign_in(page, base_url)
    pending = row(page, "t-1")
    expect(pending).to_have_count(1)
    expect(pending).to_contain_text("AgentTask")
    expect(pending).to_contain_text("Execute 1 tool call(s): create_ticket(...)")
    expect(pending).to_contain_text("ops-lead")
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
    assert fake.approvals_auth == [f"Bearer {TOKEN}"]
    assert TOKEN not in page.url
    assert page.evaluate("sessionStorage.getItem('approvals.operatorToken')") == TOKEN
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
    late.get_by_test_id("details-toggle").click()
    expect(page.get_by_test_id("token-input")).to_be_hidden()
    shot = Path(os.environ.get("INBOX_SCREENSHOT") or "/tmp/inbox.png")
    row(page, "t-1").get_by_test_id("comment-input").fill("Looks fine, ticket is needed.")
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 0


@pytest.mark.parametrize(
    ("decision", "button", "verb"), [("approve", "Approve", "Approved"), ("reject", "Reject", "Rejected")]
)
def test_decision_posts_the_expected_body_and_the_row_disappears(
    page: Page, base_url: str, fake: FakeSurface, decision: str, button: str, verb: str
) -> None:
    fake.add(approval("t-2", HASH_2, agent="ExpenseReport", summary="Expense 42.00 EUR"))
    sign_in(page, base_url)
    expect(page.get_by_test_id("approval-row")).to_have_count(2)
    row(page, "t-1").get_by_test_id("comment-input").fill('ok with <b>care</b> & "quotes"')
    page.get_by_role("button", name=f"{button} task t-1").click()
    expect(row(page, "t-1")).to_have_count(0)
    expect(row(page, "t-2")).to_have_count(1)
    status = page.get_by_test_id("status-message")
    expect(status).to_contain_text(f"{verb} task t-1")
    expect(status).to_contain_text("recorded")
    assert fake.decisions == [
        {
            "agent": "AgentTask",
            "task_id": "t-1",
            "decision": decision,
            "approver": OPERATOR,
            "comment": 'ok with <b>care</b> & "quotes"',
            "approval_hash": HASH_1,
        }
    ]
    # The last one leaves the empty state.
    row(page, "t-2").get_by_test_id(f"{decision}-button").click()
    expect(page.get_by_test_id("empty-state")).to_have_text("No approvals are waiting.")
    expect(page.get_by_test_id("approvals-table")).to_be_hidden()
    assert fake.decisions[1] == {
        "agent": "ExpenseReport",
        "task_id": "t-2",
        "decision": decision,
        "approver": OPERATOR,
        "comment": "",
        "approval_hash": HASH_2,
    }


@pytest.mark.parametrize("case", ["stale_approval", "not_waiting"])
def test_conflict_is_shown_in_the_status(page: Page, base_url: str, fake: FakeSurface, case: str) -> None:
    sign_in(page, base_url)
    expect(row(page, "t-1")).to_have_count(1)
    if case == "stale_approval":
        fake.update("t-1", approval_hash=HASH_2, summary="Execute 2 tool call(s)")
        message = "The request changed since it was shown; review it again."
    else:
        fake.remove("t-1")
        message = "Task t-1 is not waiting for approval."
    page.get_by_test_id("approve-button").click()
    status = page.get_by_test_id("status-message")
    expect(status).to_contain_text(message)
    expect(status).to_contain_text("not recorded")
    assert status.get_attribute("role") == "status"
    assert fake.decisions[0]["approval_hash"] == HASH_1
    if case == "stale_approval":  # the list is refreshed: the row now shows what is waiting
        expect(row(page, "t-1")).to_contain_text("Execute 2 tool call(s)")
        page.get_by_test_id("approve-button").click()
        expect(row(page, "t-1")).to_have_count(0)
        assert fake.decisions[1]["approval_hash"] == HASH_2
    else:
        expect(page.get_by_test_id("empty-state")).to_be_visible()


def test_script_in_a_value_is_text_not_executed(
    page: Page, base_url: str, fake: FakeSurface, console: list[str]
) -> None:
    evil = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'
    fake.reset(
        approval(
            evil, HASH_1, summary=evil, agent=evil, approvers=[evil], details={"note": evil}, deadline=evil
        )
    )
    sign_in(page, base_url)
    pending = page.get_by_test_id("approval-row")
    expect(pending).to_have_count(1)
    assert pending.get_attribute("data-task-id") == evil
    expect(pending.locator("td").nth(2)).to_have_text(evil)
    page.get_by_test_id("details-toggle").click()
    expect(page.get_by_test_id("details-json")).to_contain_text("window.__xss = 2")
    assert page.locator("table img, table script").count() == 0
    assert page.evaluate("window.__xss") is None
    pending.get_by_test_id("reject-button").click()
    expect(page.get_by_test_id("empty-state")).to_be_visible()
    assert fake.decisions[0]["task_id"] == evil
    assert page.evaluate("window.__xss") is None


def test_empty_state(page: Page, base_url: str, fake: FakeSurface) -> None:
    fake.reset()
    sign_in(page, base_url)
    expect(page.get_by_test_id("empty-state")).to_have_text("No approvals are waiting.")
    expect(page.get_by_test_id("approvals-table")).to_be_hidden()
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
