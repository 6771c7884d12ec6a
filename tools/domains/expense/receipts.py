"""Rendering receipt images (PNG) for demo data and tests, the way a till prints them.

The layout is chosen so Tesseract reads it reliably (shared/reference/platform-notes.md): white
8-bit grayscale ("L"), Pillow's TrueType default font at a given size (the bitmap font it falls
back to without one is too small to read), the merchant on the first line, the date as
YYYY-MM-DD, and amounts right-aligned after their labels (a line too long to keep them apart is
refused). The output is deterministic: the same arguments give the same bytes, so an OCR test
reads the same pixels every run.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal
from io import BytesIO

from PIL import Image, ImageDraw, ImageFont

# 28 px rather than the notes' 24: measured on the seed receipts, a 1.2 px blur read "Inn" as
# "inn" at 24 px, and every variant (blur 1.2, rotation of 2 and 3 degrees) read exactly at 28.
FONT_SIZE = 28
LINE_HEIGHT = 42
WIDTH = 720
MARGIN = 40
# The least space between an item's name and its amount, so OCR keeps them apart.
MIN_GAP = 24
CENT = Decimal("0.01")
DEFAULT_ADDRESS = "100 Market St, San Francisco CA"


def receipt_totals(
    items: Sequence[tuple[str, Decimal]], tax_rate: Decimal
) -> tuple[Decimal, Decimal, Decimal]:
    """(subtotal, tax, total) as the till computes them: tax rounded half-up to the cent."""
    subtotal = sum((amount for _, amount in items), Decimal("0")).quantize(CENT)
    tax = (subtotal * tax_rate).quantize(CENT, rounding=ROUND_HALF_UP)
    return subtotal, tax, subtotal + tax


def render_receipt(
    merchant: str,
    date: dt.date,
    items: list[tuple[str, Decimal]],
    tax_rate: Decimal,
    *,
    address: str = DEFAULT_ADDRESS,
    total_override: Decimal | None = None,
) -> bytes:
    """A PNG receipt. `total_override` prints another TOTAL than SUBTOTAL + TAX: a receipt that
    does not add up, as a misprint or a tampered image would, which OCR must report as
    inconsistent."""
    subtotal, tax, total = receipt_totals(items, tax_rate)
    if total_override is not None:
        total = total_override
    rate = f"{(tax_rate * 100).quantize(CENT)}%"
    rows: list[tuple[str, str]] = [
        (merchant, ""),
        (address, ""),
        (f"Date: {date.isoformat()}", ""),
        ("", ""),
        *((name, _money(amount)) for name, amount in items),
        ("", ""),
        ("SUBTOTAL", _money(subtotal)),
        (f"TAX {rate}", _money(tax)),
        ("TOTAL", _money(total)),
        ("", ""),
        ("Thank you for your visit", ""),
    ]

    font = ImageFont.load_default(size=FONT_SIZE)
    image = Image.new("L", (WIDTH, 2 * MARGIN + LINE_HEIGHT * len(rows)), color=255)
    draw = ImageDraw.Draw(image)
    for index, (left, right) in enumerate(rows):
        y = MARGIN + index * LINE_HEIGHT
        right_x = WIDTH - MARGIN - draw.textlength(right, font=font)
        limit = right_x - MIN_GAP if right else WIDTH - MARGIN
        if MARGIN + draw.textlength(left, font=font) > limit:
            raise ValueError(f"the line {left!r} is too long for the receipt")
        draw.text((MARGIN, y), left, font=font, fill=0)
        draw.text((right_x, y), right, font=font, fill=0)
    output = BytesIO()
    image.save(output, format="PNG")
    return output.getvalue()


def _money(amount: Decimal) -> str:
    return f"{amount.quantize(CENT):,.2f}"
