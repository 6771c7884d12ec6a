"""The inbox in a real headless Chromium against the real stack: an approver signs in with their
personal credential, a pending task is listed, and approving it in the browser completes the task
with the approver the credential names."""

from __future__ import annotations

from playwright.sync_api import expect

from deploy.local import Stack
from tests.browser import chromium
from tests.integration.flows import END, new_task_id, start, wait_parked


def test_approving_in_the_inbox_page_completes_the_task(stack: Stack) -> None:
    task_id = new_task_id("inbox")
    start(stack, task_id, "open a ticket: the badge reader is broken")
    pending = wait_parked(stack, task_id)["pending_approval"]

    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        page.goto(f"{stack.approvals_url}/inbox")
        page.get_by_test_id("token-input").fill(stack.approver_credential("ops-lead"))
        page.get_by_test_id("sign-in").click()
        expect(page.locator("#who")).to_have_text("ops-lead", timeout=15_000)

        row = page.locator(f'[data-testid="approval-row"][data-task-id="{task_id}"]')
        expect(row).to_be_visible(timeout=15_000)
        expect(row).to_contain_text("create_ticket")
        expect(row.get_by_test_id("review-link")).to_have_attribute(
            "href", f"/console#/task/AgentTask/{task_id}"
        )
        row.get_by_test_id("comment-input").fill("approved from the inbox")
        row.get_by_test_id("approve-button").click()
        expect(page.get_by_test_id("status-message")).to_contain_text("ecorded", timeout=15_000)
        expect(row).to_have_count(0, timeout=15_000)
        context.close()

    view = stack.wait_for_state("AgentTask", task_id, END)
    assert view["state"] == "COMPLETE"
    [record] = view["approvals"]
    assert record["approver"] == "ops-lead"
    assert record["comment"] == "approved from the inbox"
    assert record["approval_hash"] == pending["approval_hash"]
