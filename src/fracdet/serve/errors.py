"""Errors the API answers with: :class:`ApiError` (status, code, one-line message) and the
JSON body every error has: ``{"error": {"status": 415, "code": "unsupported", "message": "..."}}``."""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException

STATUS_CODES = {
    400: "unreadable",
    401: "unauthorised",
    404: "not_found",
    413: "too_large",
    415: "unsupported",
    422: "refused",
    500: "internal",
    503: "unavailable",
}


class ApiError(HTTPException):
    """An error with the HTTP status the client gets; ``message`` is one line, never pixels.
    An HTTPException, so that one raised while the request body is parsed (the upload limit)
    reaches its handler instead of becoming FastAPI's generic 400."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        self.message = " ".join(str(message).split())
        super().__init__(status_code=status, detail=self.message)
        self.status = status
        self.code = code or STATUS_CODES.get(status, "error")

    def body(self) -> dict[str, Any]:
        return {"error": {"status": self.status, "code": self.code, "message": self.message}}


def error_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    return ApiError(status, message, code).body()
