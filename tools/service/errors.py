"""The one shape of every error the tool service answers, and the exception that carries it.

`{"error": {"code": "snake_case_code", "message": "human sentence", "details": ...}}`: a client
branches on `code`, shows `message` to a person, and finds field-level detail in `details`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The JSON body of an error; `details` is left out when there are none."""
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return {"error": error}


class ApiError(Exception):
    """A request the service refuses before any tool runs (bad header, body, unknown tool...).

    Nothing is stored for it: a corrected request with the same Idempotency-Key is a new request.
    """

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        details: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details
        self.headers = dict(headers or {})
