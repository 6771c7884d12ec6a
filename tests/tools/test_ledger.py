"""`record_expense` and the ledger: one balanced posting per expense, whatever the keys, and only
on the evidence the tool service recorded itself (its OCR of the receipt, an approved ticket of
the expense, or its own copy of the auto-approval policy), on SQLite and PostgreSQL.

Every expense recorded here is first OCR'd through the API (`ocr_receipt`), as the agent does;
Tesseract reads each distinct receipt image once per test session (`cached_read_receipt`).
"""

from __future__ import annotations

import io
import threading
from decimal import Decimal
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import update
from sqlalchemy.orm import Session
from starlette.testclient import TestClient

from common.db import utc_now
from tests.tools.calls import (
    APPROVAL_REQUEST,
    approval_ticket,
    cached_read_receipt,
    call_tool,
    count_rows,
    derived,
    new_expense,
    ocr_expense,
    submit_expense,
    verified_expense,
)
from tools.domains.expense import expenses
from tools.domains.expense.expenses import CATEGORIES, ReceiptCheck
from tools.domains.expense.ledger import (
    AUTO_APPROVER,
    EXPENSE_ACCOUNTS,
    PAYABLE_ACCOUNT,
    LedgerLine,
    LedgerPosting,
    RecordExpenseArgs,
    record_expense,
)
from tools.service.definition import ToolCall, ToolFailure
from tools.service.idempotency import IdempotencyKey


@pytest.fixture(autouse=True)
def _ocr_each_image_once(monkeypatch):
    monkeypatch.setattr(expenses, "read_receipt", cached_read_receipt)


def _record(client: TestClient, expense_id: str, key: str, **changes: Any) -> Any:
    """A human approval by team-lead (pass `approval_ticket_id`), unless `changes` say otherwise."""
    body = {
        "expense_id": expense_id,
        "category": "meals",
        "amount": "18.50",
        "currency": "USD",
        "approved_by": "team-lead",
        "approval": "human",
        **changes,
    }
    return call_tool(client, "record_expense", body, key)


def _approved(client: TestClient, expense_id: str, key: str, **changes: Any) -> Any:
    """Record the expense on an approval ticket of it, approved by team-lead."""
    return _record(client, expense_id, key, approval_ticket_id=approval_ticket(client, expense_id), **changes)


def _auto(client: TestClient, expense_id: str, key: str, **changes: Any) -> Any:
    return _record(client, expense_id, key, **{"approval": "auto", "approved_by": AUTO_APPROVER, **changes})


def _status(client: TestClient, expense_id: str) -> str:
    status: str = client.get(f"/expenses/{expense_id}").json()["status"]
    return status


def _refused(client: TestClient, response: Any, expense_id: str, code: str) -> dict[str, Any]:
    """A stored 403 that booked nothing and left the expense as it was."""
    assert response.status_code == 403, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    assert expense_id in error["message"]
    assert count_rows(client, LedgerPosting) == 0
    assert count_rows(client, LedgerLine) == 0
    assert _status(client, expense_id) == "submitted"
    assert count_rows(client, IdempotencyKey, status="done", response_status=403) >= 1
    return error


# --- booking --------------------------------------------------------------------------------


def test_recording_books_one_balanced_posting_and_marks_the_expense_recorded(client):
    expense_id = verified_expense(client)

    response = _approved(client, expense_id, "t:RECORD.0:0")

    assert response.status_code == 200, response.text
    assert response.json() == {
        "posting_id": derived("JE", "t:RECORD.0:0"),
        "expense_id": expense_id,
        "lines": [
            {"account": "6200 Meals", "debit": "18.50", "credit": "0.00", "currency": "USD"},
            {"account": PAYABLE_ACCOUNT, "debit": "0.00", "credit": "18.50", "currency": "USD"},
        ],
        "already_posted": False,
    }
    lines = response.json()["lines"]
    assert sum(Decimal(line["debit"]) for line in lines) == sum(Decimal(line["credit"]) for line in lines)
    assert _status(client, expense_id) == "recorded"

    [posting] = client.get("/ledger").json()["postings"]
    assert {
        key: posting[key] for key in ("posting_id", "expense_id", "category", "approved_by", "approval")
    } == {
        "posting_id": derived("JE", "t:RECORD.0:0"),
        "expense_id": expense_id,
        "category": "meals",
        "approved_by": "team-lead",
        "approval": "human",
    }
    assert posting["lines"] == lines
    assert posting["created_at"]


def test_a_retry_with_the_same_key_replays(client):
    expense_id = verified_expense(client)
    ticket_id = approval_ticket(client, expense_id)
    first = _record(client, expense_id, "k-record", approval_ticket_id=ticket_id)

    retry = _record(client, expense_id, "k-record", approval_ticket_id=ticket_id)

    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.content == first.content
    assert count_rows(client, LedgerPosting) == 1


def test_a_second_key_for_the_same_expense_gets_the_posting_back_and_writes_nothing(client):
    expense_id = verified_expense(client)
    ticket_id = approval_ticket(client, expense_id)
    first = _record(client, expense_id, "t:RECORD.0:0", approval_ticket_id=ticket_id).json()

    # Another visit of the state, with another category: the expense is booked once.
    second = _record(client, expense_id, "t:RECORD.1:0", approval_ticket_id=ticket_id, category="other")

    assert second.status_code == 200
    assert "idempotent-replayed" not in second.headers
    assert second.json() == {**first, "already_posted": True}
    assert count_rows(client, LedgerPosting) == 1
    assert count_rows(client, LedgerLine) == 2
    [posting] = client.get("/ledger").json()["postings"]
    assert (posting["category"], posting["approved_by"]) == ("meals", "team-lead")


def test_a_booked_expense_is_not_shown_to_a_call_without_evidence(client):
    expense_id = verified_expense(client)
    assert _approved(client, expense_id, "t:RECORD.0:0").status_code == 200

    response = _record(client, expense_id, "k-bogus", approved_by="ceo", approval="auto")

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "auto_approval_not_allowed"
    assert count_rows(client, LedgerPosting) == 1


@pytest.mark.parametrize("category", CATEGORIES)
def test_each_category_debits_its_own_expense_account(client, category):
    expense_id = verified_expense(client, "1234.56")

    response = _approved(client, expense_id, f"k-{category}", category=category, amount="1234.56")

    assert response.status_code == 200, response.text
    assert [(line["account"], line["debit"], line["credit"]) for line in response.json()["lines"]] == [
        (EXPENSE_ACCOUNTS[category], "1234.56", "0.00"),
        (PAYABLE_ACCOUNT, "0.00", "1234.56"),
    ]


def test_an_auto_approval_within_the_policy_is_booked(client):
    small = verified_expense(client)
    at_the_limit = verified_expense(client, "50.00")

    lunch = _auto(client, small, "k-auto-lunch")
    supplies = _auto(client, at_the_limit, "k-auto-supplies", category="office_supplies", amount="50.00")

    assert (lunch.status_code, supplies.status_code) == (200, 200), (lunch.text, supplies.text)
    approvals = {posting["expense_id"]: posting for posting in client.get("/ledger").json()["postings"]}
    assert {(posting["approval"], posting["approved_by"]) for posting in approvals.values()} == {
        ("auto", AUTO_APPROVER)
    }


def test_a_receipt_total_within_the_tolerance_is_accepted(client):
    # The receipt says 18.45, the claim 18.50: within the default tolerance of 0.05.
    expense_id = verified_expense(client, "18.50", receipt_total="18.45")

    assert _approved(client, expense_id, "k-tolerated").status_code == 200


# --- refusals: each one books nothing and leaves the expense as it was -----------------------


def test_without_the_tool_services_own_receipt_check_nothing_is_booked(client):
    expense_id = new_expense(client)
    ticket_id = approval_ticket(client, expense_id)

    error = _refused(
        client,
        _record(client, expense_id, "k-no-ocr", approval_ticket_id=ticket_id),
        expense_id,
        "receipt_not_verified",
    )

    assert "ocr_receipt" in error["message"]
    # The refusal is the key's stored answer; with the receipt checked, a new call books it.
    replay = _record(client, expense_id, "k-no-ocr", approval_ticket_id=ticket_id)
    assert (replay.status_code, replay.headers["idempotent-replayed"]) == (403, "true")
    ocr_expense(client, expense_id)
    assert _record(client, expense_id, "k-after-ocr", approval_ticket_id=ticket_id).status_code == 200


def test_a_claim_the_receipt_does_not_back_is_refused_whoever_approved_it(client):
    # The taxi ride claimed at 94.20 whose receipt says 64.20, approved (by the ceo, no less).
    expense_id = verified_expense(client, "94.20", receipt_total="64.20")
    ticket_id = approval_ticket(client, expense_id, decided_by="ceo")

    response = _record(
        client,
        expense_id,
        "k-taxi",
        amount="94.20",
        category="travel",
        approved_by="ceo",
        approval_ticket_id=ticket_id,
    )

    error = _refused(client, response, expense_id, "receipt_total_mismatch")
    assert error["details"] == {
        "expense_id": expense_id,
        "claimed": "94.20",
        "receipt_total": "64.20",
        "tolerance": "0.05",
    }
    assert "64.20" in error["message"] and "94.20" in error["message"]


def test_the_tolerance_is_the_services_setting(make_client):
    client = make_client(EXPENSE_TOTAL_TOLERANCE="0")
    expense_id = verified_expense(client, "18.50", receipt_total="18.45")

    _refused(client, _approved(client, expense_id, "k-strict"), expense_id, "receipt_total_mismatch")


def test_an_unreadable_receipt_backs_nothing(client):
    blank = io.BytesIO()
    Image.new("L", (400, 300), 255).save(blank, format="PNG")
    response = submit_expense(client, receipt=blank.getvalue())
    expense_id: str = response.json()["expense_id"]
    assert ocr_expense(client, expense_id)["readable"] is False

    error = _refused(client, _approved(client, expense_id, "k-blank"), expense_id, "receipt_not_verified")

    assert "could not be read" in error["message"]


def test_a_receipt_check_of_another_image_backs_nothing(client):
    expense_id = verified_expense(client)
    with Session(client.app.state.engine) as session, session.begin():
        session.execute(
            update(ReceiptCheck).where(ReceiptCheck.expense_id == expense_id).values(receipt_sha256="0" * 64)
        )

    error = _refused(
        client, _approved(client, expense_id, "k-other-image"), expense_id, "receipt_not_verified"
    )

    assert error["details"]["checked_sha256"] == "0" * 64


@pytest.mark.parametrize("subject", ["another-expense", None], ids=["another-expense", "no-subject"])
def test_a_ticket_that_does_not_name_the_expense_approves_nothing(client, subject):
    expense_id = verified_expense(client)
    if subject is None:
        opened = call_tool(client, "request_approval", {**APPROVAL_REQUEST, "task_id": "t-1"}, "k-open")
        ticket_id = opened.json()["approval_ticket_id"]
        call_tool(
            client,
            "close_approval",
            {"approval_ticket_id": ticket_id, "outcome": "approved", "decided_by": "team-lead"},
            "k-close",
        )
    else:
        other = new_expense(client)
        ticket_id = approval_ticket(client, other)

    error = _refused(
        client,
        _record(client, expense_id, "k-other-ticket", approval_ticket_id=ticket_id),
        expense_id,
        "approval_not_recorded",
    )

    assert error["details"]["expected_subject"] == f"expense:{expense_id}"


@pytest.mark.parametrize("outcome", [None, "rejected", "expired"], ids=["open", "rejected", "expired"])
def test_a_ticket_not_approved_approves_nothing(client, outcome):
    expense_id = verified_expense(client)
    ticket_id = approval_ticket(client, expense_id, outcome=outcome)

    error = _refused(
        client,
        _record(client, expense_id, "k-not-approved", approval_ticket_id=ticket_id),
        expense_id,
        "approval_not_recorded",
    )

    assert error["details"]["status"] == (outcome or "open")


def test_a_ticket_approved_by_someone_else_than_approved_by_approves_nothing(client):
    expense_id = verified_expense(client)
    ticket_id = approval_ticket(client, expense_id, decided_by="team-lead")

    response = _record(client, expense_id, "k-ceo", approved_by="ceo", approval_ticket_id=ticket_id)

    error = _refused(client, response, expense_id, "approval_not_recorded")
    assert (error["details"]["decided_by"], error["details"]["approved_by"]) == ("team-lead", "ceo")


def test_an_unknown_ticket_approves_nothing(client):
    expense_id = verified_expense(client)

    response = _record(client, expense_id, "k-unknown-ticket", approval_ticket_id="APR-000000000000")

    _refused(client, response, expense_id, "approval_not_recorded")


@pytest.mark.parametrize(
    ("amount", "changes", "detail"),
    [
        ("50.01", {"amount": "50.01"}, {"amount": "50.01", "limit": "50.00"}),
        ("18.50", {"category": "travel"}, {"category": "travel", "categories": ["meals", "office_supplies"]}),
        ("18.50", {"approved_by": "ceo"}, {"approved_by": "ceo"}),
    ],
    ids=["above-the-limit", "outside-the-categories", "another-approver"],
)
def test_an_auto_approval_outside_the_policy_is_refused(client, amount, changes, detail):
    expense_id = verified_expense(client, amount)

    error = _refused(
        client, _auto(client, expense_id, "k-auto", **changes), expense_id, "auto_approval_not_allowed"
    )

    assert error["details"] == {"expense_id": expense_id, **detail}


def test_the_auto_approval_policy_is_the_services_setting(make_client):
    client = make_client(AUTO_APPROVE_MAX_AMOUNT="10.00", AUTO_APPROVE_CATEGORIES="travel")
    expense_id = verified_expense(client)

    _refused(client, _auto(client, expense_id, "k-auto-meals"), expense_id, "auto_approval_not_allowed")
    _refused(
        client,
        _auto(client, expense_id, "k-auto-travel", category="travel"),
        expense_id,
        "auto_approval_not_allowed",
    )


def test_a_call_without_the_services_settings_books_nothing(client):
    expense_id = verified_expense(client)
    args = RecordExpenseArgs.model_validate(
        {
            "expense_id": expense_id,
            "category": "meals",
            "amount": "18.50",
            "currency": "USD",
            "approved_by": AUTO_APPROVER,
            "approval": "auto",
        }
    )

    with Session(client.app.state.engine) as session, pytest.raises(ToolFailure) as failure:
        record_expense(ToolCall(session=session, idempotency_key="k-direct", now=utc_now()), args)

    assert failure.value.code == "expense_policy_unavailable"
    assert count_rows(client, LedgerPosting) == 0


@pytest.mark.parametrize(
    ("changes", "status_code", "code"),
    [
        ({"expense_id": "EXP-0123456789ab", "approval_ticket_id": "APR-1"}, 404, "unknown_expense"),
        ({"amount": "94.20", "approval_ticket_id": "APR-1"}, 422, "amount_mismatch"),
        ({"currency": "EUR", "approval_ticket_id": "APR-1"}, 422, "amount_mismatch"),
        ({}, 422, "validation_error"),  # a human approval without its ticket
        (
            {"approval": "auto", "approved_by": AUTO_APPROVER, "approval_ticket_id": "APR-1"},
            422,
            "validation_error",
        ),
        ({"approval_ticket_id": ""}, 422, "validation_error"),
        ({"approval": "maybe", "approval_ticket_id": "APR-1"}, 422, "validation_error"),
        ({"approved_by": "", "approval_ticket_id": "APR-1"}, 422, "validation_error"),
        ({"approved_by": "team lead", "approval_ticket_id": "APR-1"}, 422, "validation_error"),
        ({"category": "gifts", "approval_ticket_id": "APR-1"}, 422, "validation_error"),
        ({"amount": 18.5, "approval_ticket_id": "APR-1"}, 422, "validation_error"),
        ({"posting": "yes", "approval_ticket_id": "APR-1"}, 422, "validation_error"),
    ],
)
def test_bad_requests_book_nothing(client, changes, status_code, code):
    args = dict(changes)
    expense_id = args.pop("expense_id", None) or new_expense(client)

    response = _record(client, expense_id, "k-bad", **args)

    assert response.status_code == status_code, response.text
    assert response.json()["error"]["code"] == code
    assert count_rows(client, LedgerPosting) == 0


def test_the_ticket_rule_is_reported_on_the_ticket_field(client):
    expense_id = new_expense(client)

    human = _record(client, expense_id, "k-human").json()["error"]["details"]
    auto = _auto(client, expense_id, "k-auto", approval_ticket_id="APR-1").json()["error"]["details"]

    assert [item["loc"] for item in human] == [["approval_ticket_id"]]
    assert "required for a human approval" in human[0]["msg"]
    assert [item["loc"] for item in auto] == [["approval_ticket_id"]]
    assert "left out for an auto approval" in auto[0]["msg"]


# --- concurrency ----------------------------------------------------------------------------


def test_two_keys_racing_for_one_expense_book_it_once(make_client):
    # Both calls hold their keys' claims and then run together; one books, the other gets its
    # posting back.
    client = make_client(TOOLS_SIMULATED_LATENCY_MS=300)
    expense_id = verified_expense(client)
    ticket_id = approval_ticket(client, expense_id)
    start = threading.Barrier(2)
    answers: dict[str, Any] = {}

    def record(key: str) -> None:
        start.wait(timeout=10)
        answers[key] = _record(client, expense_id, key, approval_ticket_id=ticket_id)

    threads = [
        threading.Thread(target=record, args=(key,)) for key in ("run-a:RECORD.0:0", "run-b:RECORD.0:0")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert [answer.status_code for answer in answers.values()] == [200, 200]
    results = [answer.json() for answer in answers.values()]
    assert sorted(result["already_posted"] for result in results) == [False, True]
    assert results[0]["posting_id"] == results[1]["posting_id"]
    assert count_rows(client, LedgerPosting) == 1
    assert count_rows(client, LedgerLine) == 2
    assert count_rows(client, IdempotencyKey, tool_name="record_expense") == 2


# PostgreSQL only: SQLite serialises writers at BEGIN, so there is no race to lose.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_racing_writer_is_caught_by_the_unique_constraint(client):
    expense_id = verified_expense(client)
    ticket_id = approval_ticket(client, expense_id)
    engine = client.app.state.engine
    # Another writer books the expense without locking it and commits only once our call is
    # blocked on the unique index: our lookup saw nothing, our insert fails.
    with Session(engine) as other:
        other.add(
            LedgerPosting(
                posting_id="JE-0ther0writer",
                expense_id=expense_id,
                idempotency_key="other-writer",
                category="meals",
                approved_by="someone",
                approval="human",
                created_at=utc_now(),
            )
        )
        other.flush()
        answer: dict[str, Any] = {}
        caller = threading.Thread(
            target=lambda: answer.update(
                response=_record(client, expense_id, "k-race", approval_ticket_id=ticket_id)
            )
        )
        caller.start()
        caller.join(timeout=1.5)
        assert caller.is_alive(), "the call should wait for the other writer's unique key"
        other.commit()
    caller.join(timeout=30)

    response = answer["response"]
    assert response.status_code == 200, response.text
    assert response.json()["posting_id"] == "JE-0ther0writer"
    assert response.json()["already_posted"] is True
    assert count_rows(client, LedgerPosting) == 1


# --- inspection -----------------------------------------------------------------------------


def test_the_ledger_filters_by_expense_and_balances(client):
    lunch = verified_expense(client, "18.50")
    hotel = verified_expense(client, "420.00")
    euros = verified_expense(client, "99.90", "EUR")
    for response in (
        _approved(client, lunch, "k-lunch"),
        _approved(client, hotel, "k-hotel", category="lodging", amount="420.00"),
        _approved(client, euros, "k-euros", category="training", amount="99.90", currency="EUR"),
    ):
        assert response.status_code == 200, response.text

    only_hotel = client.get("/ledger", params={"expense_id": hotel}).json()["postings"]
    balance = client.get("/ledger/balance").json()

    assert [posting["expense_id"] for posting in only_hotel] == [hotel]
    assert balance == {
        "accounts": [
            {"account": PAYABLE_ACCOUNT, "currency": "EUR", "debits": "0.00", "credits": "99.90"},
            {"account": PAYABLE_ACCOUNT, "currency": "USD", "debits": "0.00", "credits": "438.50"},
            {"account": "6150 Lodging", "currency": "USD", "debits": "420.00", "credits": "0.00"},
            {"account": "6200 Meals", "currency": "USD", "debits": "18.50", "credits": "0.00"},
            {"account": "6500 Training", "currency": "EUR", "debits": "99.90", "credits": "0.00"},
        ],
        "totals": [
            {"currency": "EUR", "debits": "99.90", "credits": "99.90"},
            {"currency": "USD", "debits": "438.50", "credits": "438.50"},
        ],
        "balanced": True,
    }
    assert client.get("/ledger", params={"bogus": "1"}).status_code == 422
    assert client.get("/ledger/balance", params={"bogus": "1"}).status_code == 422
