"""The JSON answers of the humans' HTTP surfaces (the approvals webhook and inbox, the console):
one error shape, `{"error": {"code", "message", "details"?}}`, so a client reads every refusal
the same way."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.responses import JSONResponse, Response

RETRY_AFTER_SECONDS = "5"


def error(status: int, code: str, message: str, details: Any = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status)


def validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"loc": list(err["loc"]), "msg": err["msg"]} for err in exc.errors()]


def unauthorized(message: str) -> JSONResponse:
    response = error(401, "unauthorized", message)
    response.headers["WWW-Authenticate"] = 'Bearer realm="approvals"'
    return response


def unavailable(code: str, message: str) -> Response:
    response = error(503, code, message)
    response.headers["Retry-After"] = RETRY_AFTER_SECONDS
    return response
