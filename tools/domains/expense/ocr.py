"""Reading receipts with Tesseract: the merchant, the date and the totals a receipt image shows.

The settings follow what was measured on our machines (shared/reference/platform-notes.md):
page segmentation mode 6, because the default (3) moves right-aligned amounts into a column of
their own and TOTAL loses its amount; a 3x3 median filter first, which removes scanner speckle
that otherwise breaks the reading; and OpenMP limited to one thread, because on two cores its
contention made each receipt take 800 ms instead of 150.

A receipt nobody can read is an answer (`readable` is false), not an error: the agent decides
what that means for the claim. Only the engine failing (not installed, crashing, hanging) raises,
as a ToolFailure the caller retries.

`read_receipt` blocks for as long as Tesseract runs: call it from a worker thread (the tool
service does, in the `ocr_receipt` tool's prepare step), never on the event loop.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from io import BytesIO

# No type hints upstream; "unused-ignore" keeps this line valid once pyproject ignores it too.
import pytesseract  # type: ignore[import-untyped,unused-ignore]
from PIL import Image, ImageFilter, ImageOps

from tools.service.definition import ToolFailure

TESSERACT_CONFIG = "--psm 6"
OCR_TIMEOUT_SECONDS = 20
TEXT_MAX_LENGTH = 4000
MERCHANT_MAX_LENGTH = 200
APT_PACKAGE = "tesseract-ocr"
# TOTAL must equal SUBTOTAL + TAX to the cent; a misread digit (notes: "2024" read as "3024" at
# 10 degrees of rotation) almost never keeps that sum true.
CONSISTENCY_TOLERANCE = Decimal("0.01")

DATE_PATTERN = re.compile(r"\b(\d{4}-\d{2}-\d{2}|\d{2}[./]\d{2}[./]\d{4})\b")
# An amount with exactly two decimals, optionally with thousands separators ("1,234.56"); not a
# percentage ("TAX 8.50%") and not part of a longer number.
AMOUNT_PATTERN = re.compile(r"(?<![\d.,])(\d{1,3}(?:,\d{3})+|\d+)\.(\d{2})(?![\d%])")
TOTAL_LINE = re.compile(r"^TOTAL\b", re.IGNORECASE)
SUBTOTAL_LINE = re.compile(r"^SUB[\s-]?TOTAL\b", re.IGNORECASE)
TAX_LINE = re.compile(r"^TAX\b", re.IGNORECASE)


@dataclass(frozen=True)
class ReceiptReading:
    """What OCR made of a receipt; every field is None when it was not found."""

    text: str
    merchant: str | None
    date: dt.date | None
    subtotal: Decimal | None
    tax: Decimal | None
    total: Decimal | None
    engine: str

    @property
    def readable(self) -> bool:
        """Enough to check a claim against: who was paid, and how much."""
        return self.merchant is not None and self.total is not None

    @property
    def consistent(self) -> bool:
        """The printed TOTAL is SUBTOTAL + TAX; False when any of them is missing."""
        if self.total is None or self.subtotal is None or self.tax is None:
            return False
        return abs(self.total - (self.subtotal + self.tax)) <= CONSISTENCY_TOLERANCE


def read_receipt(image_bytes: bytes, *, timeout_seconds: float = OCR_TIMEOUT_SECONDS) -> ReceiptReading:
    """OCR a PNG or JPEG receipt and parse it (blocking; see the module docstring)."""
    engine = engine_version()
    text = _tesseract(_prepare_image(image_bytes), timeout_seconds)
    return parse_receipt_text(text, engine)


def parse_receipt_text(text: str, engine: str) -> ReceiptReading:
    """The fields of a receipt from its OCR text (pure; the parsing rules of the platform notes)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return ReceiptReading(
        text=text.strip()[:TEXT_MAX_LENGTH],
        merchant=lines[0][:MERCHANT_MAX_LENGTH] if lines else None,
        date=_first_date(text),
        subtotal=_amount_on_line(lines, SUBTOTAL_LINE),
        tax=_amount_on_line(lines, TAX_LINE),
        total=_amount_on_line(lines, TOTAL_LINE),
        engine=engine,
    )


def engine_version() -> str:
    """`tesseract <version>`, as the tool reports it; ToolFailure when Tesseract is missing."""
    return _engine_version(str(pytesseract.pytesseract.tesseract_cmd))


@lru_cache(maxsize=4)
def _engine_version(command: str) -> str:
    # Keyed by the command, so pointing pytesseract at another binary asks that one.
    try:
        version = pytesseract.get_tesseract_version()
    except pytesseract.TesseractNotFoundError:
        raise _not_installed(command) from None
    except SystemExit as exc:
        # pytesseract raises SystemExit for a version string it cannot parse; in a worker thread
        # that would end the request in a confusing way, so say what happened instead.
        raise ToolFailure(
            "ocr_unavailable", f"Tesseract at {command!r} reports no usable version: {exc}"
        ) from None
    return f"tesseract {version}"


def _not_installed(command: str) -> ToolFailure:
    return ToolFailure(
        "ocr_unavailable",
        f"Tesseract OCR is not installed (no {command!r} on PATH): install the Debian/Ubuntu "
        f"package {APT_PACKAGE} (apt-get install -y {APT_PACKAGE}).",
    )


def _prepare_image(image_bytes: bytes) -> Image.Image:
    with Image.open(BytesIO(image_bytes)) as opened:
        # A phone photo stores its rotation in EXIF; Tesseract reads pixels, so apply it.
        image = ImageOps.exif_transpose(opened)
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            # Flatten onto white: converting to grayscale would turn transparent paper black.
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
        gray = image.convert("L")
    return gray.filter(ImageFilter.MedianFilter(3))


def _tesseract(image: Image.Image, timeout_seconds: float) -> str:
    # Inherited by the tesseract process pytesseract starts; setdefault leaves an operator's
    # explicit choice alone.
    os.environ.setdefault("OMP_THREAD_LIMIT", "1")
    command = str(pytesseract.pytesseract.tesseract_cmd)
    try:
        return str(pytesseract.image_to_string(image, config=TESSERACT_CONFIG, timeout=timeout_seconds))
    except pytesseract.TesseractNotFoundError:
        raise _not_installed(command) from None
    except pytesseract.TesseractError as exc:
        raise ToolFailure(
            "ocr_failed", f"Tesseract failed with exit status {exc.status}: {exc.message}".strip()
        ) from None
    except RuntimeError as exc:
        # pytesseract kills the process at the timeout and raises a bare RuntimeError.
        if "timeout" not in str(exc).lower():
            raise
        raise ToolFailure(
            "ocr_timeout", f"Tesseract did not finish reading the receipt within {timeout_seconds:g} s."
        ) from None


def _first_date(text: str) -> dt.date | None:
    for match in DATE_PATTERN.finditer(text):
        parsed = _parse_date(match.group(1))
        if parsed is not None:
            return parsed
    return None


def _parse_date(value: str) -> dt.date | None:
    """ISO as is; `DD.MM.YYYY` day first (the European habit); `MM/DD/YYYY` month first (the US
    habit) unless that is impossible and day first is not. None for a date that does not exist."""
    try:
        if "-" in value:
            return dt.date.fromisoformat(value)
        first, second, year = int(value[0:2]), int(value[3:5]), int(value[6:10])
        if value[2] == "." or first > 12:
            return dt.date(year, second, first)
        return dt.date(year, first, second)
    except ValueError:
        return None


def _amount_on_line(lines: list[str], label: re.Pattern[str]) -> Decimal | None:
    """The last amount on the first line starting with `label`: the amount is right-aligned, and
    a rate may come before it ("TAX 8.50% 1.45")."""
    for line in lines:
        if label.match(line):
            amounts = AMOUNT_PATTERN.findall(line)
            if not amounts:
                return None
            whole, cents = amounts[-1]
            return Decimal(f"{whole.replace(',', '')}.{cents}")
    return None
