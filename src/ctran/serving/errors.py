"""The one error type of the HTTP layer: a status code and a message, sent as ``{"error": message}``."""

from __future__ import annotations


class ApiError(Exception):
    """A request the server refuses; ``status`` is the 4xx code the client gets."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
