"""`record_expense` and the ledger: one balanced posting per expense, whatever the keys, on
SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.orm import Session

from tests.tools.calls import call_tool, count_rows, derived, new_expense
from tools.db import utc_now
from tools.expenses import CATEGORIES
from tools.idempotency import IdempotencyKey
from tools.ledger import EXPENSE_ACCOUNTS, PAYABLE_ACCOUNT, LedgerLine, LedgerPosting


def _record(client, expense_id: str, key: str, **changes: Any) -> Any:
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


def _status(client, expense_id: str) -> str:
    status: str = client.get(f"/expenses/{expense_id}").json()["status"]
    return status


def test_recording_books_one_balanced_posting_and_marks_the_expense_recorded(client):
    expense_id = new_expense(client)

    response = _record(client, expense_id, "t:RECORD.0:0")

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
    expense_id = new_expense(client)
    first = _record(client, expense_id, "k-record")

    retry = _record(client, expense_id, "k-record")

    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.content == first.content
    assert count_rows(client, LedgerPosting) == 1


def test_a_second_key_for_the_same_expense_gets_the_posting_back_and_writes_nothing(client):
    expense_id = new_expense(client)
    first = _record(client, expense_id, "t:RECORD.0:0").json()

    # Another visit of the state, with another category and approver: the expense is booked once.
    second = _record(
        client, expense_id, "t:RECORD.1:0", category="other", approved_by="auto-policy", approval="auto"
    )

    assert second.status_code == 200
    assert "idempotent-replayed" not in second.headers
    assert second.json() == {**first, "already_posted": True}
    assert count_rows(client, LedgerPosting) == 1
    assert count_rows(client, LedgerLine) == 2
    [posting] = client.get("/ledger").json()["postings"]
    assert (posting["category"], posting["approved_by"]) == ("meals", "team-lead")


@pytest.mark.parametrize(
    "change",
    [{"amount": "94.20"}, {"amount": "18.49"}, {"currency": "EUR"}],
    ids=["more", "less", "currency"],
)
def test_an_amount_other_than_the_claim_is_422_and_books_nothing(client, change):
    expense_id = new_expense(client)

    response = _record(client, expense_id, "k-mismatch", **change)

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "amount_mismatch"
    assert error["details"]["claimed"] == {"amount": "18.50", "currency": "USD"}
    assert count_rows(client, LedgerPosting) == 0
    assert _status(client, expense_id) == "submitted"


@pytest.mark.parametrize(
    ("changes", "status_code", "code"),
    [
        ({"expense_id": "EXP-0123456789ab"}, 404, "unknown_expense"),
        ({"approval": "maybe"}, 422, "validation_error"),
        ({"approved_by": ""}, 422, "validation_error"),
        ({"approved_by": "team lead"}, 422, "validation_error"),
        ({"category": "gifts"}, 422, "validation_error"),
        ({"amount": 18.5}, 422, "validation_error"),
        ({"posting": "yes"}, 422, "validation_error"),
    ],
)
def test_bad_requests_book_nothing(client, changes, status_code, code):
    args = dict(changes)
    expense_id = args.pop("expense_id", None) or new_expense(client)

    response = _record(client, expense_id, "k-bad", **args)

    assert response.status_code == status_code, response.text
    assert response.json()["error"]["code"] == code
    assert count_rows(client, LedgerPosting) == 0


@pytest.mark.parametrize("category", CATEGORIES)
def test_each_category_debits_its_own_expense_account(client, category):
    expense_id = new_expense(client, "1234.56")

    lines = _record(client, expense_id, f"k-{category}", category=category, amount="1234.56").json()["lines"]

    assert [(line["account"], line["debit"], line["credit"]) for line in lines] == [
        (EXPENSE_ACCOUNTS[category], "1234.56", "0.00"),
        (PAYABLE_ACCOUNT, "0.00", "1234.56"),
    ]


def test_two_keys_racing_for_one_expense_book_it_once(make_client):
    # Both calls hold their keys' claims and then run together; one books, the other gets its
    # posting back.
    client = make_client(TOOLS_SIMULATED_LATENCY_MS=300)
    expense_id = new_expense(client)
    start = threading.Barrier(2)
    answers: dict[str, Any] = {}

    def record(key: str) -> None:
        start.wait(timeout=10)
        answers[key] = _record(client, expense_id, key)

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
    assert count_rows(client, IdempotencyKey) == 2


# PostgreSQL only: SQLite serialises writers at BEGIN, so there is no race to lose.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_racing_writer_is_caught_by_the_unique_constraint(client):
    expense_id = new_expense(client)
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
            target=lambda: answer.update(response=_record(client, expense_id, "k-race"))
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


def test_the_ledger_filters_by_expense_and_balances(client):
    lunch = new_expense(client, "18.50")
    hotel = new_expense(client, "420.00")
    euros = new_expense(client, "99.90", "EUR")
    _record(client, lunch, "k-lunch")
    _record(client, hotel, "k-hotel", category="lodging", amount="420.00")
    _record(client, euros, "k-euros", category="training", amount="99.90", currency="EUR")

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
