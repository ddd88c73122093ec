"""The one exception tree of pvestack.

Every error that leaves the package is a ``PvestackError``. Foreign errors
(proxmoxer/requests, paramiko, pydantic, OS errors) are translated into this
tree at exactly one boundary each: ``_client`` for the PVE API, the SSH
executor for SSH, ``_config`` for the stack file. The CLI prints ``str(err)``
and, when present, ``err.hint``; it never prints a traceback for these.

    PvestackError
    ├── ConfigError            the stack file is invalid (one Problem per issue)
    ├── PveError               the PVE API said no (keeps PVE's message verbatim)
    │   ├── PveAuthError       401
    │   ├── PvePermissionError 403 (hint names the root step and how to provide it)
    │   ├── PveNotFoundError   404 / "does not exist"
    │   ├── PveParamError      400 (``errors`` holds PVE's per-parameter texts)
    │   └── PveTaskError       a task (UPID) ended with an error exit status
    ├── TransportError         the API or SSH could not be reached
    │   ├── TlsError           the node's TLS certificate did not verify (never retried)
    │   └── HostKeyError       SSH host key unknown or mismatched
    ├── OwnershipError         the guest is not ours (no mark) and --adopt was not given
    ├── PreconditionError      the world changed since the plan: the executor refused
    ├── ReplacementRequired    a key PVE cannot change (e.g. ``unprivileged``) differs
    ├── RootStepError          a root or guest command failed (command, exit code, stderr; masked)
    ├── WaitTimeout            a wait (task, console hand-off, boot) ran out of time
    └── SecretError            a secret source is missing or unreadable
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


class PvestackError(Exception):
    """Base of every error pvestack raises on purpose."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Problem:
    """One problem in a stack file: where, which key, what is wrong."""

    file: str
    key: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(PvestackError):
    def __init__(self, problems: list[Problem] | tuple[Problem, ...]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class PveError(PvestackError):
    """An error answer from the PVE API. ``pve_message`` is PVE's text, verbatim."""

    def __init__(
        self,
        status: int,
        pve_message: str,
        *,
        method: str = "",
        path: str = "",
        errors: Mapping[str, str] | None = None,
        hint: str | None = None,
    ) -> None:
        self.status = status
        self.pve_message = pve_message
        self.method = method
        self.path = path
        self.errors: Mapping[str, str] = dict(errors or {})
        text = f"{status} {pve_message}".rstrip()
        if self.errors:
            text += " (" + "; ".join(f"{k}: {v}" for k, v in sorted(self.errors.items())) + ")"
        if method or path:
            text = f"{method} {path}: {text}".strip()
        super().__init__(text, hint=hint)


class PveAuthError(PveError):
    pass


class PvePermissionError(PveError):
    pass


class PveNotFoundError(PveError):
    pass


class PveParamError(PveError):
    pass


class PveTaskError(PveError):
    def __init__(self, upid: str, exitstatus: str, *, log_tail: tuple[str, ...] = ()) -> None:
        self.upid = upid
        self.exitstatus = exitstatus
        self.log_tail = log_tail
        super().__init__(500, f"task {upid} failed: {exitstatus}")
        if log_tail:  # the cause is in the task log (e.g. why a start failed)
            self.message += "\n" + "\n".join(f"  task log: {line}" for line in log_tail)


class TransportError(PvestackError):
    pass


class TlsError(TransportError):
    """The node's certificate did not verify (never retried)."""


class HostKeyError(TransportError):
    pass


class GuestKeyRefused(TransportError):
    """A container refused the stack's SSH key (the root steps must authorize it)."""


class PreconditionError(PvestackError):
    """An action's precondition no longer holds just before it runs (the plan is stale).
    Nothing was touched."""


class OwnershipError(PvestackError):
    pass


class ReplacementRequired(PvestackError):
    pass


class RootStepError(PvestackError):
    """A command run as root on the node (or in the guest) failed. All text is masked."""

    def __init__(self, command: str, exit_code: int, stderr: str, *, hint: str | None = None):
        self.command = command
        self.exit_code = exit_code
        self.stderr = stderr
        msg = f"command failed (exit {exit_code}): {command}"
        if stderr.strip():
            msg += "\n" + stderr.strip()
        super().__init__(msg, hint=hint)


class WaitTimeout(PvestackError):
    pass


class SecretError(PvestackError):
    pass


class SnapshotUnavailable(PvestackError):
    """PVE cannot snapshot this CT (a bind mount, or a storage without snapshots)."""

    def __init__(self, vmid: int, reasons: Sequence[str]) -> None:
        self.reasons = tuple(reasons)
        super().__init__(
            f"CT {vmid} cannot be snapshotted (PVE: snapshot feature is not available): "
            + "; ".join(reasons),
            hint="take a backup instead: `pvestack backup STACK` (vzdump, mode snapshot "
            "falls back to suspend; bind-mounted host directories are not in a backup either: "
            "back them up on the host)",
        )


class RollbackFailed(PvestackError):
    """A rollback task failed; the message says the CT's state and what to run."""


class UpgradeFailed(PvestackError):
    """An upgrade did not end green: its image did not load (nothing restarted), or
    verify failed (then rolled back, or kept with ``--no-rollback``)."""


class CannotRun(PvestackError):
    """A check could not look (no transport, the container or address unreachable):
    verify reports it as ``unverified``, never as a pass."""


class GuestLockedError(PvestackError):
    """A guest's config holds a lock (``lock: create``, ...) and no task of it runs."""
