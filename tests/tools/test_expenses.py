"""Submitting expenses (POST /expenses, multipart), reading them, and `get_expense`, on SQLite
and PostgreSQL. Every refused submission leaves nothing behind."""

from __future__ import annotations

import datetime as dt
import io
import re
import struct
import zlib
from typing import Any

import pytest
from PIL import Image
from starlette.testclient import TestClient

from tests.tools.calls import (
    EXPENSE_FIELDS,
    call_tool,
    count_rows,
    derived,
    receipt_png,
    store_of,
    submit_expense,
)
from tools.domains.expense import expenses
from tools.domains.expense.expenses import (
    RECEIPT_MAX_BYTES,
    SUBMIT_EXPENSE,
    Expense,
    ExpenseSubmission,
    Submission,
    check_receipt,
    parse_submission,
)
from tools.service.errors import ApiError
from tools.service.idempotency import IdempotencyKey
from tools.service.uploads import Form, UploadedFile


def _assert_nothing_stored(client: TestClient) -> None:
    assert count_rows(client, Expense) == 0
    assert count_rows(client, IdempotencyKey) == 0


def _error(response: Any, status_code: int, code: str) -> dict[str, Any]:
    assert response.status_code == status_code, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    return error


def _jpeg() -> bytes:
    output = io.BytesIO()
    Image.open(io.BytesIO(receipt_png())).save(output, format="JPEG", quality=90)
    return output.getvalue()


# --- the happy path -------------------------------------------------------------------------


def test_a_submission_is_stored_and_readable_back(client):
    response = submit_expense(client)

    assert response.status_code == 201, response.text
    assert "idempotent-replayed" not in response.headers
    expense = response.json()
    assert re.fullmatch(r"EXP-[0-9a-f]{12}", expense["expense_id"])
    assert {name: expense[name] for name in EXPENSE_FIELDS} == EXPENSE_FIELDS
    assert expense["status"] == "submitted"
    assert expense["receipt_content_type"] == "image/png"
    assert expense["receipt_size"] == len(receipt_png())
    assert expense["receipt_url"] == f"/expenses/{expense['expense_id']}/receipt"
    assert expense["submitted_at"]

    assert client.get(f"/expenses/{expense['expense_id']}").json() == expense
    receipt = client.get(expense["receipt_url"])
    assert receipt.status_code == 200
    assert receipt.headers["content-type"] == "image/png"
    assert receipt.headers["x-content-type-options"] == "nosniff"
    assert receipt.content == receipt_png()


def test_the_receipt_type_comes_from_its_bytes_not_the_declared_type(client):
    jpeg = _jpeg()

    response = submit_expense(client, receipt=jpeg, filename="receipt.png", declared_type="image/png")

    assert response.status_code == 201, response.text
    assert response.json()["receipt_content_type"] == "image/jpeg"
    receipt = client.get(response.json()["receipt_url"])
    assert receipt.headers["content-type"] == "image/jpeg"
    assert receipt.content == jpeg


def test_currency_defaults_to_usd_and_amounts_get_two_decimals(client):
    fields = {
        name: value for name, value in EXPENSE_FIELDS.items() if name not in ("currency", "description")
    }

    response = submit_expense(client, {**fields, "amount": "7.5"})

    assert response.status_code == 201, response.text
    assert (response.json()["currency"], response.json()["amount"]) == ("USD", "7.50")
    assert response.json()["description"] == ""


def test_without_a_key_each_submission_is_a_new_expense(client):
    first = submit_expense(client).json()["expense_id"]
    second = submit_expense(client).json()["expense_id"]

    assert first != second
    assert count_rows(client, Expense) == 2
    assert count_rows(client, IdempotencyKey) == 0


def test_the_list_is_newest_first_and_filters(client, clock):
    ids = []
    for employee in ("u-1", "u-2", "u-1"):
        ids.append(submit_expense(client, {**EXPENSE_FIELDS, "employee_id": employee}).json()["expense_id"])
        clock.advance(1)

    listed = client.get("/expenses").json()["expenses"]
    mine = client.get("/expenses", params={"employee_id": "u-1"}).json()["expenses"]

    assert [expense["expense_id"] for expense in listed] == list(reversed(ids))
    assert "receipt_image" not in listed[0]
    assert [expense["expense_id"] for expense in mine] == [ids[2], ids[0]]
    assert client.get("/expenses", params={"status": "recorded"}).json() == {"expenses": []}
    _error(client.get("/expenses", params={"status": "paid"}), 422, "validation_error")


def test_unknown_expenses_are_404_in_the_error_shape(client):
    error = _error(client.get("/expenses/EXP-000000000000"), 404, "unknown_expense")
    assert error["details"] == {"expense_id": "EXP-000000000000"}
    _error(client.get("/expenses/EXP-000000000000/receipt"), 404, "unknown_expense")


# --- refusals: nothing stored ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("amount", "0"),
        ("amount", "0.00"),
        ("amount", "-5.00"),
        ("amount", "12.345"),
        ("amount", "1e3"),
        ("amount", "12,50"),
        ("amount", " 12.50"),
        ("amount", "NaN"),
        ("amount", "1000000.01"),
        ("amount", ""),
        ("date", "2025-02-30"),
        ("date", "14/03/2025"),
        ("date", "2025-03-14T10:00:00"),
        ("date", "1741910400"),
        ("currency", "usd"),
        ("currency", "EURO"),
        ("currency", ""),
        ("employee_id", "u 1"),
        ("employee_id", "x" * 129),
        ("merchant", ""),
        ("merchant", "   "),
        ("merchant", "Two\nlines"),
        ("merchant", "m" * 201),
        ("merchant", "Nul\x00byte"),
        ("description", "d" * 2001),
    ],
)
def test_an_invalid_field_is_422_naming_it_and_stores_nothing(client, field, value):
    response = submit_expense(client, {**EXPENSE_FIELDS, field: value}, key="k-invalid")

    error = _error(response, 422, "validation_error")
    assert [item["loc"] for item in error["details"]] == [["form", field]]
    assert all(item["msg"] for item in error["details"])
    _assert_nothing_stored(client)


def test_the_largest_amount_and_description_are_accepted(client):
    response = submit_expense(client, {**EXPENSE_FIELDS, "amount": "1000000", "description": "d" * 2000})

    assert response.status_code == 201, response.text
    assert response.json()["amount"] == "1000000.00"


# --- the expense date -----------------------------------------------------------------------


def _days_from_today(days: int) -> str:
    return (expenses.service_date() + dt.timedelta(days=days)).isoformat()


@pytest.mark.parametrize(
    ("days", "kind"),
    [(2, "date_in_future"), (400, "date_in_future"), (-366, "date_too_old"), (-5000, "date_too_old")],
)
def test_a_claim_dated_in_the_future_or_too_long_ago_is_422_naming_the_date_and_stores_nothing(
    client, days, kind
):
    response = submit_expense(client, {**EXPENSE_FIELDS, "date": _days_from_today(days)}, key="k-date")

    error = _error(response, 422, "validation_error")
    assert [(item["loc"], item["type"]) for item in error["details"]] == [(["form", "date"], kind)]
    assert error["details"][0]["msg"]
    _assert_nothing_stored(client)


@pytest.mark.parametrize("days", [1, 0, -365], ids=["tomorrow", "today", "365-days-ago"])
def test_a_claim_dated_up_to_a_day_ahead_or_within_the_age_limit_is_accepted(client, days):
    response = submit_expense(client, {**EXPENSE_FIELDS, "date": _days_from_today(days)})

    assert response.status_code == 201, response.text


def test_today_is_the_services_utc_date(client, clock):
    # The service clock (which tests move) says what today is.
    now = clock()
    clock.advance((dt.datetime(2031, 6, 1, 12, tzinfo=dt.UTC) - now).total_seconds())

    accepted = submit_expense(client, {**EXPENSE_FIELDS, "date": "2031-06-02"})
    refused = submit_expense(client, {**EXPENSE_FIELDS, "date": "2031-06-03"})

    assert accepted.status_code == 201, accepted.text
    error = _error(refused, 422, "validation_error")
    assert error["details"][0]["type"] == "date_in_future"
    assert "2031-06-02" in error["details"][0]["msg"]


def _form(**fields: str) -> Form:
    return Form(
        fields={name: [value] for name, value in {**EXPENSE_FIELDS, **fields}.items()},
        files={"receipt": [UploadedFile(filename="receipt.png", data=receipt_png())]},
    )


def test_parse_submission_takes_the_day_and_the_age_limit():
    today = dt.date(2031, 1, 10)

    assert parse_submission(_form(date="2031-01-05"), today=today, max_age_days=5).fields.date == dt.date(
        2031, 1, 5
    )
    with pytest.raises(ApiError) as refused:
        parse_submission(_form(date="2031-01-04", amount="abc"), today=today, max_age_days=5)

    # Every field problem at once, the date's among them.
    assert refused.value.status_code == 422
    assert {item["loc"][1]: item["type"] for item in refused.value.details} == {
        "amount": "value_error",
        "date": "date_too_old",
    }
    [date_error] = [item for item in refused.value.details if item["loc"] == ["form", "date"]]
    assert "at most 5 days" in date_error["msg"] and "2031-01-05" in date_error["msg"]


@pytest.mark.parametrize("missing", ["employee_id", "amount", "date", "merchant"])
def test_a_missing_field_is_422_and_stores_nothing(client, missing):
    fields = {name: value for name, value in EXPENSE_FIELDS.items() if name != missing}

    error = _error(submit_expense(client, fields), 422, "validation_error")

    assert error["details"] == [{"loc": ["form", missing], "msg": "Field required", "type": "missing"}]
    _assert_nothing_stored(client)


def test_every_field_problem_is_reported_at_once(client):
    response = submit_expense(
        client, {**EXPENSE_FIELDS, "amount": "abc", "currency": "us", "approved": "yes"}, key="k-many"
    )

    error = _error(response, 422, "validation_error")
    assert {tuple(item["loc"]) for item in error["details"]} == {
        ("form", "amount"),
        ("form", "currency"),
        ("form", "approved"),
    }
    _assert_nothing_stored(client)


def test_a_repeated_field_is_refused_not_resolved(client):
    response = client.post(
        "/expenses",
        data={**EXPENSE_FIELDS, "amount": ["18.50", "1.00"]},
        files={"receipt": ("r.png", receipt_png(), "image/png")},
    )

    error = _error(response, 422, "validation_error")
    assert error["details"][0]["loc"] == ["form", "amount"]
    assert error["details"][0]["type"] == "repeated"
    _assert_nothing_stored(client)


def test_a_missing_receipt_is_422(client):
    response = client.post("/expenses", data=EXPENSE_FIELDS, files={"other": ("x.txt", b"x", "text/plain")})

    error = _error(response, 422, "validation_error")
    assert {tuple(item["loc"]): item["type"] for item in error["details"]} == {
        ("form", "other"): "extra_forbidden",
        ("form", "receipt"): "missing",
    }
    _assert_nothing_stored(client)


def test_a_receipt_sent_as_text_is_422(client):
    # A multipart body with `receipt` as a plain field (no filename).
    response = client.post(
        "/expenses", files={**{k: (None, v) for k, v in EXPENSE_FIELDS.items()}, "receipt": (None, "img")}
    )

    error = _error(response, 422, "validation_error")
    assert error["details"] == [
        {
            "loc": ["form", "receipt"],
            "msg": "Send the receipt as a file, not a text field",
            "type": "not_a_file",
        }
    ]
    _assert_nothing_stored(client)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@pytest.mark.parametrize(
    ("receipt", "status_code", "code"),
    [
        pytest.param(b"Taxi 94.20, trust me", 415, "unsupported_receipt_type", id="not-an-image"),
        pytest.param(b"GIF89a" + b"\x00" * 64, 415, "unsupported_receipt_type", id="gif-declared-as-png"),
        pytest.param(b"%PDF-1.7\n" + b"x" * 64, 415, "unsupported_receipt_type", id="pdf"),
        pytest.param(b"", 422, "invalid_receipt", id="empty"),
        pytest.param(
            b"\x89PNG\r\n\x1a\n" + b"garbage" * 20, 422, "invalid_receipt", id="png-magic-then-garbage"
        ),
        pytest.param(
            b"\xff\xd8\xff\xe0" + b"garbage" * 20, 422, "invalid_receipt", id="jpeg-magic-then-garbage"
        ),
        pytest.param(None, 422, "invalid_receipt", id="truncated-png"),
        pytest.param(
            b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)),
            422,
            "invalid_receipt",
            id="huge-canvas",
        ),
    ],
)
def test_a_receipt_that_is_not_a_usable_png_or_jpeg_is_refused(client, receipt, status_code, code):
    if receipt is None:
        receipt = receipt_png()[: len(receipt_png()) // 2]

    response = submit_expense(client, receipt=receipt, key="k-bad-receipt")

    error = _error(response, status_code, code)
    assert error["details"]["field"] == "receipt"
    _assert_nothing_stored(client)


def test_a_receipt_over_5_mib_is_413(client):
    too_large = b"\x89PNG\r\n\x1a\n" + b"\x00" * (RECEIPT_MAX_BYTES - 7)

    error = _error(submit_expense(client, receipt=too_large, key="k-large"), 413, "receipt_too_large")

    assert str(RECEIPT_MAX_BYTES) in error["message"]
    _assert_nothing_stored(client)


def test_a_body_far_over_the_limit_is_413_while_streaming(client):
    response = submit_expense(client, receipt=b"\x89PNG\r\n\x1a\n" + b"\x00" * (6 * 1024 * 1024))

    _error(response, 413, "body_too_large")
    _assert_nothing_stored(client)


def test_a_streamed_body_without_content_length_is_cut_off_at_the_limit(client):
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="receipt"; filename="r.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    chunks = (head if index == 0 else b"\x00" * (1024 * 1024) for index in range(8))

    response = client.post(
        "/expenses", content=chunks, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )

    _error(response, 413, "body_too_large")
    _assert_nothing_stored(client)


def test_too_many_parts_is_400(client):
    fields = {**EXPENSE_FIELDS, **{f"extra{index}": "x" for index in range(20)}}

    _error(submit_expense(client, fields), 400, "invalid_multipart")
    _assert_nothing_stored(client)


def test_a_json_body_is_415_and_a_broken_multipart_body_is_400(client):
    _error(client.post("/expenses", json=EXPENSE_FIELDS), 415, "unsupported_media_type")
    broken = client.post(
        "/expenses", content=b"--x\r\nnot multipart", headers={"Content-Type": "multipart/form-data"}
    )
    _error(broken, 400, "invalid_multipart")
    _assert_nothing_stored(client)


# --- the optional Idempotency-Key -----------------------------------------------------------


def test_the_same_key_and_submission_returns_the_same_expense(client):
    first = submit_expense(client, key="upload-1")

    # The same amount written differently is the same submission.
    retry = submit_expense(client, {**EXPENSE_FIELDS, "amount": "18.5"}, key="upload-1")

    assert first.status_code == 201
    assert first.json()["expense_id"] == derived("EXP", "expenses:upload-1")
    assert retry.status_code == 200
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.content == first.content
    assert count_rows(client, Expense) == 1
    assert client.get("/idempotency/upload-1?scope=expenses").json()["tool_name"] == SUBMIT_EXPENSE


@pytest.mark.parametrize("change", ["field", "image"])
def test_the_same_key_with_another_submission_is_422(client, change):
    submit_expense(client, key="upload-2")

    if change == "field":
        reused = submit_expense(client, {**EXPENSE_FIELDS, "amount": "81.50"}, key="upload-2")
    else:
        reused = submit_expense(client, receipt=_jpeg(), key="upload-2")

    _error(reused, 422, "idempotency_key_reused")
    [expense] = client.get("/expenses").json()["expenses"]
    assert expense["amount"] == "18.50" and expense["receipt_content_type"] == "image/png"


def test_a_portals_keys_and_the_agents_keys_live_in_separate_namespaces(client):
    # The same string as an agent's tool-call key neither blocks the submission nor is blocked by
    # it: a portal choosing its own keys cannot squat a key an agent is about to use.
    call_tool(client, "lookup_user_history", {"user_id": "u-1"}, "shared-key")
    assert submit_expense(client, key="shared-key").status_code == 201
    assert call_tool(client, "lookup_user_history", {"user_id": "u-1"}, "shared-key").status_code == 200
    assert count_rows(client, Expense) == 1
    # ...and a tool call may not use the portal's namespace.
    _error(
        call_tool(client, "lookup_user_history", {"user_id": "u-1"}, "expenses:shared-key"),
        400,
        "invalid_idempotency_key",
    )


def test_the_same_key_while_the_first_is_in_flight_is_409(client):
    submission = Submission(
        fields=ExpenseSubmission.model_validate(EXPENSE_FIELDS), receipt=check_receipt(receipt_png())
    )
    store_of(client).claim("expenses:upload-busy", SUBMIT_EXPENSE, submission.request_hash())

    busy = submit_expense(client, key="upload-busy")

    _error(busy, 409, "request_in_flight")
    assert int(busy.headers["retry-after"]) >= 1
    assert count_rows(client, Expense) == 0


def test_an_empty_key_is_400(client):
    _error(submit_expense(client, key=" "), 400, "missing_idempotency_key")
    _assert_nothing_stored(client)


# --- the get_expense tool -------------------------------------------------------------------


def test_get_expense_returns_the_claim_without_the_image(client):
    expense = submit_expense(client).json()

    response = call_tool(client, "get_expense", {"expense_id": expense["expense_id"]}, "task-1:FETCH.0:0")

    assert response.status_code == 200
    assert response.json() == {
        "expense_id": expense["expense_id"],
        **EXPENSE_FIELDS,
        "status": "submitted",
        "submitted_at": expense["submitted_at"],
    }


def test_get_expense_of_an_unknown_expense_is_404_and_a_malformed_id_422(client):
    unknown = call_tool(client, "get_expense", {"expense_id": "EXP-0123456789ab"}, "k-unknown")
    malformed = call_tool(client, "get_expense", {"expense_id": "42"}, "k-malformed")

    assert _error(unknown, 404, "unknown_expense")["details"] == {"expense_id": "EXP-0123456789ab"}
    _error(malformed, 422, "validation_error")
    # The 404 is the key's stored answer: a retry gets it again.
    assert (
        call_tool(client, "get_expense", {"expense_id": "EXP-0123456789ab"}, "k-unknown").headers[
            "idempotent-replayed"
        ]
        == "true"
    )
