"""The JSON error shape every API failure uses."""

from __future__ import annotations


class ApiError(Exception):
    """An error answered as `{"error": {"code", "message"}}` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict[str, dict[str, str]]:
        """The JSON body for this error."""
        return {"error": {"code": self.code, "message": self.message}}


class InvalidInput(ApiError):
    """400: the request is malformed; nothing was changed."""

    def __init__(self, message: str, code: str = "invalid_request") -> None:
        super().__init__(400, code, message)
