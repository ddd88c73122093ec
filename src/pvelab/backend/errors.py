"""Domain errors of the lab node: an HTTP status and PVE's own message, no HTTP."""

from __future__ import annotations

from collections.abc import Mapping


class PveError(Exception):
    """What a PVE API method dies with: a status, a message (one or more lines) and, on a 400,
    the message per parameter. The edge serialises it as PVE does."""

    def __init__(self, status: int, message: str, errors: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors: dict[str, str] = dict(errors or {})

    def __str__(self) -> str:
        return f"{self.status} {self.message}"


def param_error(errors: Mapping[str, str]) -> PveError:
    """PVE's 400 for parameters that fail verification."""
    return PveError(400, "Parameter verification failed.", errors)


def permission_denied(detail: str | None = None) -> PveError:
    text = "Permission check failed" + (f" ({detail})" if detail else "")
    return PveError(403, text)


class TaskFailed(Exception):
    """A worker task ends with ``TASK ERROR: <message>``."""
