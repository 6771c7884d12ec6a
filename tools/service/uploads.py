"""Uploads: reading a multipart/form-data request within limits, and knowing what an image is.

The form is read through a byte budget, so an oversized upload is refused (413) while it streams
rather than after it filled the disk. An image's type is decided by its bytes (the magic number),
never by the client's Content-Type or file name, and it must really decode: a file that only
starts like a PNG is not a receipt anyone can read.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from io import BytesIO

from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from tools.service.errors import ApiError

MULTIPART_MEDIA_TYPE = "multipart/form-data"
# Text fields are short (the longest, a description, is 2000 characters); a part this large is
# not a field anyone typed.
MAX_FIELD_BYTES = 64 * 1024

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
IMAGE_TYPES: dict[str, tuple[bytes, str]] = {
    "image/png": (PNG_MAGIC, "PNG"),
    "image/jpeg": (JPEG_MAGIC, "JPEG"),
}
# Far above any receipt photo (a 12-megapixel phone camera), far below what would take seconds and
# gigabytes to decode: a small compressed file can declare a huge canvas.
MAX_IMAGE_PIXELS = 50_000_000


@dataclass(frozen=True)
class UploadedFile:
    """A file part of the form, read into memory (its size was bounded while it streamed)."""

    filename: str | None
    data: bytes


@dataclass(frozen=True)
class Form:
    """Every part of a form by name, in order; a name given twice keeps both values, so the
    caller can refuse the repetition instead of silently taking one of them."""

    fields: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, list[UploadedFile]] = field(default_factory=dict)


async def read_multipart_form(request: Request, *, max_body_bytes: int, max_parts: int) -> Form:
    """The request's multipart form: 415 for another media type, 413 over `max_body_bytes`,
    400 for a body that is not well-formed multipart."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != MULTIPART_MEDIA_TYPE:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Send the expense as {MULTIPART_MEDIA_TYPE} (fields and a receipt file), "
            f"not {media_type or 'an empty content type'}.",
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
        raise _too_large(max_body_bytes)

    parser = MultiPartParser(
        request.headers,
        _limited(request, max_body_bytes),
        max_files=max_parts,
        max_fields=max_parts,
        max_part_size=MAX_FIELD_BYTES,
    )
    try:
        parsed = await parser.parse()
    except MultiPartException as exc:
        raise ApiError(400, "invalid_multipart", f"The multipart body is malformed: {exc.message}") from None

    form = Form()
    for name, value in parsed.multi_items():
        if isinstance(value, UploadFile):
            try:
                data = await value.read()
            finally:
                await value.close()
            form.files.setdefault(name, []).append(UploadedFile(filename=value.filename, data=data))
        else:
            form.fields.setdefault(name, []).append(value)
    return form


async def _limited(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    # Counts what actually arrives: a missing or false Content-Length does not get past it.
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        yield chunk


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "body_too_large", f"The request body exceeds the limit of {limit} bytes.")


# --- images ---------------------------------------------------------------------------------


def sniff_image_type(data: bytes) -> str | None:
    """`image/png` or `image/jpeg` from the magic number, or None for anything else."""
    for content_type, (magic, _) in IMAGE_TYPES.items():
        if data.startswith(magic):
            return content_type
    return None


def decode_problem(data: bytes, content_type: str) -> str | None:
    """Why the image does not decode as `content_type`, or None when it does (blocking: run it in
    a worker thread). The whole image is decoded: a header alone proves nothing."""
    _, expected_format = IMAGE_TYPES[content_type]
    try:
        with warnings.catch_warnings():
            # Pillow only warns below twice its own limit; ours is lower and refuses outright.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(BytesIO(data), formats=[expected_format]) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    return f"it is {width}x{height} pixels; at most {MAX_IMAGE_PIXELS} pixels are accepted"
                image.load()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        return f"it declares more than {MAX_IMAGE_PIXELS} pixels"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        # Pillow reports truncated or corrupt data as OSError (and, for some formats, SyntaxError).
        return f"it does not decode as {expected_format} ({exc})"
    return None
