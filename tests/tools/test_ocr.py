"""Receipt OCR through the real Tesseract (tesseract-ocr), its parsing rules, and `ocr_receipt`.

The OCR tests stay fast: OMP_THREAD_LIMIT=1 (set by the ocr module) and a handful of small
receipts, about 0.2 s each.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import threading
from decimal import Decimal
from typing import Any

import pytest
from PIL import Image, ImageFilter, ImageOps
from sqlalchemy.orm import Session

from tests.tools.calls import EXPENSE_FIELDS, TICKET, call_tool, count_rows
from tools.domains.expense import expenses, ocr
from tools.domains.expense.expenses import Expense, ReceiptCheck
from tools.domains.expense.ocr import parse_receipt_text, read_receipt
from tools.domains.expense.receipts import render_receipt
from tools.domains.expense.seed import SAMPLES, SampleExpense, seed_expenses
from tools.service.definition import ToolFailure
from tools.service.idempotency import IdempotencyKey

HOTEL = next(sample for sample in SAMPLES if sample.label == "hotel-stay")


def _png(image: Image.Image) -> bytes:
    output = io.BytesIO()
    image.save(output, format="PNG")
    return output.getvalue()


def _assert_reads(sample: SampleExpense, image_bytes: bytes) -> None:
    reading = read_receipt(image_bytes)
    assert reading.merchant == sample.merchant, reading.text
    assert reading.date == sample.date, reading.text
    assert reading.total == sample.receipt_total, reading.text
    assert reading.readable and reading.consistent, reading.text


# --- real Tesseract -------------------------------------------------------------------------


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda sample: sample.label)
def test_every_seeded_receipt_reads_merchant_date_and_total(sample):
    _assert_reads(sample, sample.receipt())


def test_a_receipt_rotated_by_2_degrees_still_reads():
    rotated = Image.open(io.BytesIO(HOTEL.receipt())).rotate(
        2, expand=True, fillcolor=255, resample=Image.Resampling.BICUBIC
    )

    _assert_reads(HOTEL, _png(rotated))


def test_a_blurred_receipt_still_reads():
    blurred = Image.open(io.BytesIO(HOTEL.receipt())).filter(ImageFilter.GaussianBlur(1.2))

    _assert_reads(HOTEL, _png(blurred))


def test_a_jpeg_receipt_reads():
    output = io.BytesIO()
    Image.open(io.BytesIO(HOTEL.receipt())).save(output, format="JPEG", quality=85)

    _assert_reads(HOTEL, output.getvalue())


def test_a_transparent_png_is_read_on_white():
    image = Image.open(io.BytesIO(HOTEL.receipt()))
    # Black ink on a fully transparent sheet: flattened onto black it would be all black.
    ink = Image.merge("LA", (Image.new("L", image.size, 0), ImageOps.invert(image)))

    _assert_reads(HOTEL, _png(ink))


def test_thousands_separators_are_removed():
    receipt = render_receipt(
        "Apple Store",
        dt.date(2025, 5, 6),
        [("MacBook Air 13in", Decimal("1199.00")), ("USB-C adapter", Decimal("19.00"))],
        Decimal("0.0725"),
    )

    reading = read_receipt(receipt)

    assert "1,306.31" in reading.text
    assert (reading.subtotal, reading.tax, reading.total) == (
        Decimal("1218.00"),
        Decimal("88.31"),
        Decimal("1306.31"),
    )
    assert reading.consistent


def test_a_receipt_whose_total_does_not_add_up_is_readable_but_inconsistent():
    receipt = render_receipt(
        "Yellow Cab Co",
        dt.date(2025, 3, 12),
        [("Metered fare", Decimal("64.20"))],
        Decimal("0"),
        total_override=Decimal("94.20"),
    )

    reading = read_receipt(receipt)

    assert reading.readable
    assert reading.total == Decimal("94.20")
    assert not reading.consistent


def test_a_blank_image_is_unreadable_not_an_error():
    reading = read_receipt(_png(Image.new("L", (600, 400), 255)))

    assert not reading.readable
    assert (reading.merchant, reading.total, reading.date) == (None, None, None)
    assert reading.engine.startswith("tesseract 5")


def test_ocr_limits_openmp_to_one_thread(monkeypatch):
    monkeypatch.delenv("OMP_THREAD_LIMIT", raising=False)

    read_receipt(_png(Image.new("L", (60, 40), 255)))

    assert os.environ["OMP_THREAD_LIMIT"] == "1"


def test_a_hanging_tesseract_is_stopped_at_the_timeout():
    with pytest.raises(ToolFailure) as raised:
        read_receipt(HOTEL.receipt(), timeout_seconds=0.001)

    assert raised.value.code == "ocr_timeout"


def test_a_missing_tesseract_names_the_package_to_install(monkeypatch):
    monkeypatch.setattr("pytesseract.pytesseract.tesseract_cmd", "/nonexistent/tesseract")

    with pytest.raises(ToolFailure) as raised:
        read_receipt(HOTEL.receipt())

    assert raised.value.code == "ocr_unavailable"
    assert "tesseract-ocr" in raised.value.message


# --- parsing (no Tesseract) -----------------------------------------------------------------

RECEIPT_TEXT = """
  Corner Deli

12 Main St
Date: 03/04/2025 14:02
Sandwich 8.00
SUBTOTAL 8.00
TAX 8.875% 0.71
TOTAL $8.71
TOTAL TENDERED 10.00
"""


def test_parsing_takes_the_first_line_the_first_total_line_and_its_last_amount():
    reading = parse_receipt_text(RECEIPT_TEXT, "tesseract test")

    assert reading.merchant == "Corner Deli"
    assert (reading.subtotal, reading.tax, reading.total) == (
        Decimal("8.00"),
        Decimal("0.71"),
        Decimal("8.71"),
    )
    assert reading.consistent and reading.readable
    assert reading.date == dt.date(2025, 3, 4)  # slashes: month first


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Date: 2025-03-14", dt.date(2025, 3, 14)),
        ("14.03.2025", dt.date(2025, 3, 14)),  # dots: day first
        ("03/14/2025", dt.date(2025, 3, 14)),
        ("31/12/2025", dt.date(2025, 12, 31)),  # month first is impossible, day first is not
        ("2025-02-30 then 2025-03-01", dt.date(2025, 3, 1)),  # a date that does not exist is skipped
        ("12025-03-14", None),
        ("no date here", None),
    ],
)
def test_dates_are_normalised_to_iso(text, expected):
    assert parse_receipt_text(text, "e").date == expected


@pytest.mark.parametrize(
    ("text", "total", "consistent"),
    [
        ("M\nSUBTOTAL 1,000.00\nTAX 0.00\nTOTAL 1,000.00", Decimal("1000.00"), True),
        ("M\nSUBTOTAL 10.00\nTAX 1.00\nTOTAL 11.01", Decimal("11.01"), True),  # within a cent
        ("M\nSUBTOTAL 10.00\nTAX 1.00\nTOTAL 11.02", Decimal("11.02"), False),
        ("M\nTOTAL 11.00", Decimal("11.00"), False),  # nothing to cross-check
        ("M\nTOTAL 8.5%", None, False),  # a percentage is not an amount
        ("M\nSUB-TOTAL 4.00\nTAX 0.50\nTOTAL 4.50", Decimal("4.50"), True),
        ("M\nGrand TOTAL 4.50", None, False),  # the line must start with TOTAL
    ],
)
def test_totals_and_the_cross_check(text, total, consistent):
    reading = parse_receipt_text(text, "e")

    assert reading.total == total
    assert reading.consistent is consistent


def test_an_empty_text_is_unreadable_and_the_text_is_capped():
    assert not parse_receipt_text("   \n", "e").readable
    assert len(parse_receipt_text("x" * 5000, "e").text) == 4000


# --- the ocr_receipt tool -------------------------------------------------------------------


def test_ocr_receipt_reads_each_seeded_expense_and_reveals_the_mismatch(client):
    seeded = {expense.label: expense for expense in seed_expenses(client)}

    results = {}
    for label, expense in seeded.items():
        response = call_tool(
            client, "ocr_receipt", {"expense_id": expense.expense_id}, f"t:{label}:VERIFY.0:0"
        )
        assert response.status_code == 200, response.text
        results[label] = response.json()

    for label, result in results.items():
        expense = seeded[label]
        assert result["expense_id"] == expense.expense_id
        assert (result["merchant"], result["date"], result["total"]) == (
            expense.merchant,
            expense.date.isoformat(),
            expense.receipt_total,
        )
        assert result["readable"] and result["consistent"]
        assert result["engine"].startswith("tesseract ")
        assert expense.merchant in result["text"]
    taxi = seeded["mismatch-taxi"]
    assert (results["mismatch-taxi"]["total"], taxi.amount) == ("64.20", "94.20")
    assert set(results["small-lunch"]) == {
        "expense_id",
        "readable",
        "merchant",
        "date",
        "total",
        "subtotal",
        "tax",
        "consistent",
        "text",
        "engine",
    }


def test_ocr_receipt_replays_its_answer(client):
    [expense, *_] = seed_expenses(client)
    body = {"expense_id": expense.expense_id}

    first = call_tool(client, "ocr_receipt", body, "k-ocr")
    retry = call_tool(client, "ocr_receipt", body, "k-ocr")

    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.content == first.content


def test_ocr_receipt_of_an_unknown_expense_is_404(client):
    response = call_tool(client, "ocr_receipt", {"expense_id": "EXP-0123456789ab"}, "k-ocr-unknown")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_expense"


def test_ocr_receipt_of_a_blank_receipt_answers_unreadable(client):
    response = client.post(
        "/expenses",
        data={
            "employee_id": "u-1",
            "amount": "5.00",
            "date": EXPENSE_FIELDS["date"],
            "merchant": "Somewhere",
        },
        files={"receipt": ("blank.png", _png(Image.new("L", (400, 300), 255)), "image/png")},
    )
    expense_id = response.json()["expense_id"]

    result = call_tool(client, "ocr_receipt", {"expense_id": expense_id}, "k-ocr-blank").json()

    assert result["readable"] is False
    assert (result["merchant"], result["total"], result["consistent"]) == (None, None, False)
    check = _receipt_check(client, expense_id)
    assert (check.readable, check.merchant, check.total) == (False, None, None)


# --- the tool service's own record of what OCR read -----------------------------------------


def _receipt_check(client: Any, expense_id: str) -> ReceiptCheck:
    with Session(client.app.state.engine) as session:
        check = session.get(ReceiptCheck, expense_id)
    assert check is not None, f"no receipt check for {expense_id}"
    return check


def test_ocr_receipt_records_what_it_read_and_a_later_ocr_replaces_it(client, clock):
    [expense, *_] = seed_expenses(client)
    body = {"expense_id": expense.expense_id}
    assert count_rows(client, ReceiptCheck) == 0

    first = call_tool(client, "ocr_receipt", body, "t:VERIFY.0:0").json()

    check = _receipt_check(client, expense.expense_id)
    stored = client.get(f"/expenses/{expense.expense_id}")
    receipt_sha256 = hashlib.sha256(client.get(stored.json()["receipt_url"]).content).hexdigest()
    assert (check.readable, check.consistent) == (True, True)
    assert (check.merchant, check.receipt_date, check.total) == (
        expense.merchant,
        expense.date,
        Decimal(expense.receipt_total),
    )
    assert check.receipt_sha256 == receipt_sha256
    assert (check.engine, check.idempotency_key) == (first["engine"], "t:VERIFY.0:0")
    first_checked_at = check.checked_at

    clock.advance(60)
    call_tool(client, "ocr_receipt", body, "t:VERIFY.1:0")

    again = _receipt_check(client, expense.expense_id)
    assert count_rows(client, ReceiptCheck) == 1
    assert again.idempotency_key == "t:VERIFY.1:0"
    assert again.checked_at > first_checked_at
    # A replay of the first call answers from the store and writes nothing.
    call_tool(client, "ocr_receipt", body, "t:VERIFY.0:0")
    assert _receipt_check(client, expense.expense_id).idempotency_key == "t:VERIFY.1:0"


def test_an_ocr_of_an_unknown_expense_records_nothing(client):
    call_tool(client, "ocr_receipt", {"expense_id": "EXP-0123456789ab"}, "k-ocr-unknown")

    assert count_rows(client, ReceiptCheck) == 0


def test_a_missing_tesseract_is_a_500_that_stores_nothing_and_the_retry_works(client, monkeypatch):
    [expense, *_] = seed_expenses(client)
    body = {"expense_id": expense.expense_id}
    monkeypatch.setattr("pytesseract.pytesseract.tesseract_cmd", "/nonexistent/tesseract")

    failed = call_tool(client, "ocr_receipt", body, "k-ocr-missing")

    assert failed.status_code == 500
    error = failed.json()["error"]
    assert error["code"] == "ocr_unavailable"
    assert "apt-get install -y tesseract-ocr" in error["message"]
    assert count_rows(client, IdempotencyKey, key="k-ocr-missing") == 0

    monkeypatch.undo()
    retry = call_tool(client, "ocr_receipt", body, "k-ocr-missing")

    assert retry.status_code == 200
    assert retry.json()["total"] == expense.receipt_total
    assert count_rows(client, Expense) == len(SAMPLES)


def test_ocr_holds_neither_the_event_loop_nor_a_transaction(client, monkeypatch):
    # While OCR runs, another tool call (a write, which on SQLite needs the global write lock)
    # completes: OCR runs in a worker thread, between the claim and the transaction.
    [expense, *_] = seed_expenses(client)
    ocr_started, release_ocr = threading.Event(), threading.Event()

    def slow_read_receipt(image: bytes) -> ocr.ReceiptReading:
        ocr_started.set()
        assert release_ocr.wait(10), "the test never released OCR"
        return read_receipt(image)

    monkeypatch.setattr(expenses, "read_receipt", slow_read_receipt)
    answers: dict[str, Any] = {}
    caller = threading.Thread(
        target=lambda: answers.update(
            ocr=call_tool(client, "ocr_receipt", {"expense_id": expense.expense_id}, "k-ocr-slow")
        )
    )
    caller.start()
    try:
        assert ocr_started.wait(10)
        meanwhile = call_tool(client, "create_ticket", TICKET, "k-meanwhile")
        assert meanwhile.status_code == 200
        assert "ocr" not in answers
    finally:
        release_ocr.set()
        caller.join(timeout=30)

    assert answers["ocr"].status_code == 200
    assert answers["ocr"].json()["total"] == expense.receipt_total
