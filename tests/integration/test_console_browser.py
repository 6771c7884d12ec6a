"""The console in a real headless Chromium against the real stack, as an operator uses it: find the
waiting expense, read it beside its receipt, approve it after the confirmation and watch it
complete live; a decision that is not yours is never offered; a failed task's page says why.

With CONSOLE_SCREENSHOT_DIR set (`make screenshots`), the pages are saved there for the docs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect

from deploy.local import Stack
from tests.browser import chromium
from tests.integration.flows import END
from tests.integration.test_expense_report import run_report, seeded, wait_waiting

TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def reports(stack: Stack) -> dict[str, str]:
    """One batch of sample expenses, a report started on each this module uses: label -> task."""
    expenses = seeded(stack)
    return {
        label: run_report(stack, expenses[label])
        for label in ("hotel-stay", "conference-flight", "mismatch-taxi")
    }


def screenshot(page: Page, name: str) -> None:
    folder = os.environ.get("CONSOLE_SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def signed_in(browser: Browser, stack: Stack, credential: str) -> tuple[Page, list[str]]:
    """A new tab signed in to the console; the page's errors (a CSP refusal included) collected."""
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.goto(f"{stack.approvals_url}/console")
    page.get_by_test_id("token-input").fill(credential)
    page.get_by_test_id("sign-in").click()
    return page, problems


def test_an_approver_finds_reads_and_approves_an_expense_and_watches_it_complete(
    browser: Browser, stack: Stack, reports: dict[str, str]
) -> None:
    task_id = reports["hotel-stay"]
    pending = wait_waiting(stack, task_id)["pending_approval"]
    page, problems = signed_in(browser, stack, stack.approver_credential("travel-manager"))
    expect(page.locator("#who")).to_have_text("travel-manager", timeout=TIMEOUT_MS)
    expect(page.locator("#live")).to_have_text("live", timeout=TIMEOUT_MS)

    # Find it: waiting expenses.
    page.get_by_test_id("filter-agent").select_option("ExpenseReport")
    page.get_by_test_id("filter-status").select_option("waiting")
    page.get_by_test_id("apply-filters").click()
    row = page.locator(f'[data-testid="task-row"][data-task-id="{task_id}"]')
    expect(row).to_be_visible(timeout=TIMEOUT_MS)
    expect(row.get_by_test_id("status-badge")).to_have_text("waiting")
    screenshot(page, "console-tasks")
    row.get_by_role("link", name=task_id).click()

    # Read it: the claim beside the receipt, the diagram, the timeline with its chain.
    form = page.get_by_test_id("expense-form")
    expect(form).to_be_visible(timeout=TIMEOUT_MS)
    expect(form.get_by_test_id("expense-amount")).to_contain_text("420.00 USD")
    expect(form.get_by_test_id("expense-merchant")).to_contain_text("Hilton")
    expect(form.get_by_test_id("differs")).to_have_count(0)
    receipt = page.get_by_test_id("receipt-image")
    expect(receipt).to_have_attribute("src", re.compile(r"^blob:"), timeout=TIMEOUT_MS)
    page.wait_for_function(
        "() => (document.querySelector('[data-testid=receipt-image]') || {}).naturalWidth > 100",
        timeout=TIMEOUT_MS,
    )
    diagram = page.get_by_test_id("diagram")
    expect(diagram.locator("svg")).to_be_visible(timeout=TIMEOUT_MS)
    expect(diagram).to_have_attribute("data-rendered", "yes")
    expect(page.get_by_test_id("chain")).to_contain_text("Hash chain verified")
    expect(page.get_by_test_id("spend")).to_contain_text("1 model call(s)")
    expect(page.get_by_test_id("spend")).to_contain_text("(estimated), $0")
    expect(page.get_by_test_id("event-usage").filter(has_text="classify:")).to_have_count(1)
    expect(page.get_by_test_id("timeline-row").last).to_contain_text("WAIT_APPROVAL")
    expect(page.get_by_test_id("describe")).to_contain_text("restate invocations describe inv_")
    screenshot(page, "console-expense")

    # Approve it, after the confirmation says exactly what.
    page.get_by_test_id("comment-input").fill("receipt checked in the console")
    page.get_by_test_id("approve-button").click()
    dialog = page.get_by_test_id("confirm-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_test_id("confirm-approval-hash")).to_have_text(pending["approval_hash"])
    expect(dialog.get_by_test_id("confirm-decision")).to_have_text("approve")
    expect(dialog.get_by_test_id("expense-form")).to_contain_text("420.00 USD")
    screenshot(page, "console-confirm")
    dialog.get_by_test_id("confirm-go").click()
    expect(page.get_by_test_id("status-message")).to_contain_text("recorded", timeout=TIMEOUT_MS)

    # Watch it complete: the page moves by itself (the live stream), no reload.
    expect(page.locator("#task-head").get_by_test_id("status-badge")).to_have_text(
        "complete", timeout=TIMEOUT_MS
    )
    expect(page.get_by_test_id("approval-record")).to_contain_text("travel-manager")
    expect(page.get_by_test_id("approval-record")).to_contain_text("receipt checked in the console")
    screenshot(page, "console-complete")
    view = stack.wait_for_state("ExpenseReport", task_id, END)
    assert view["state"] == "COMPLETE" and view["approvals"][0]["approver"] == "travel-manager"
    assert problems == []


def test_a_decision_that_is_not_yours_is_never_offered(
    browser: Browser, stack: Stack, reports: dict[str, str]
) -> None:
    task_id = reports["conference-flight"]  # waits for travel-manager too
    wait_waiting(stack, task_id)
    page, problems = signed_in(browser, stack, stack.approver_credential("ops-lead"))
    page.goto(f"{stack.approvals_url}/console#/task/ExpenseReport/{task_id}")
    expect(page.get_by_test_id("not-yours")).to_contain_text("travel-manager", timeout=TIMEOUT_MS)
    expect(page.get_by_test_id("approve-button")).to_have_count(0)
    expect(page.get_by_test_id("reject-button")).to_have_count(0)
    # The operator token reads, never decides.
    operator, _ = signed_in(browser, stack, stack.operator_auth["authorization"].removeprefix("Bearer "))
    operator.goto(f"{stack.approvals_url}/console#/task/ExpenseReport/{task_id}")
    expect(operator.get_by_test_id("not-yours")).to_contain_text("read-only", timeout=TIMEOUT_MS)
    expect(operator.locator("#who")).to_have_text("operator (read-only)")
    assert problems == []


def test_a_failed_tasks_page_says_why(browser: Browser, stack: Stack, reports: dict[str, str]) -> None:
    task_id = reports["mismatch-taxi"]
    stack.wait_for_state("ExpenseReport", task_id, END, timeout=90)
    page, problems = signed_in(browser, stack, stack.approver_credential("travel-manager"))
    page.get_by_test_id("filter-status").select_option("failed")
    page.get_by_test_id("filter-search").fill(task_id)
    page.get_by_test_id("apply-filters").click()
    row = page.locator(f'[data-testid="task-row"][data-task-id="{task_id}"]')
    expect(row).to_contain_text("receipt_mismatch", timeout=TIMEOUT_MS)
    row.get_by_role("link", name=task_id).click()
    banner = page.get_by_test_id("error-banner")
    expect(banner).to_contain_text("Failed in VERIFY (receipt_mismatch)", timeout=TIMEOUT_MS)
    expect(page.locator("#task-head").get_by_test_id("status-badge")).to_have_text("failed")
    expect(page.get_by_test_id("diagram").locator("svg")).to_be_visible(timeout=TIMEOUT_MS)
    screenshot(page, "console-failed")
    assert problems == []
