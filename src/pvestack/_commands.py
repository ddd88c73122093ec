"""Commands as data (the pyinfra lesson).

A root or guest change is built once as a ``Step``: an optional guard command
(exit 0 means "already done", which makes every rendering idempotent) and the
commands that make it so. Commands are argv tuples, quoted with ``shlex`` when
rendered; data goes through stdin, never argv. A ``Secret`` can only travel in
stdin, and every rendering prints it as ``***``.

The same ``Step`` values are rendered two ways, so the two paths cannot drift:

* ``render_shell(step)`` gives the text of one idempotent shell fragment, used
  for the console script (and for display);
* the SSH executor runs ``step.guard`` and then each ``Command`` with its stdin.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

MASK = "***"


@dataclass(frozen=True)
class Secret:
    """A secret value. Its ``str``/``repr`` never show the value."""

    name: str
    value: str = field(repr=False, compare=True)

    def __str__(self) -> str:
        return MASK

    def __repr__(self) -> str:
        return f"Secret({self.name!r}, ***)"

    @property
    def digest(self) -> str:
        """A short SHA-256 of the value, safe to show (to tell whether it changes)."""
        return hashlib.sha256(self.value.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Payload:
    """Bytes fed to a command's stdin, built from plain text and secrets."""

    parts: tuple[str | Secret, ...]

    @classmethod
    def text(cls, text: str) -> Payload:
        return cls((text,))

    @property
    def has_secret(self) -> bool:
        return any(isinstance(p, Secret) for p in self.parts)

    def reveal(self) -> bytes:
        """The real bytes. Only executors call this, right before writing to stdin."""
        return "".join(p.value if isinstance(p, Secret) else p for p in self.parts).encode()

    def masked(self) -> str:
        return "".join(MASK if isinstance(p, Secret) else p for p in self.parts)

    @property
    def secrets(self) -> tuple[Secret, ...]:
        return tuple(p for p in self.parts if isinstance(p, Secret))


@dataclass(frozen=True)
class Command:
    """One command run as root on the node. ``argv`` never holds a secret."""

    argv: tuple[str, ...]
    stdin: Payload | None = None

    def __post_init__(self) -> None:
        if not self.argv:
            raise ValueError("empty command")
        for arg in self.argv:
            if not isinstance(arg, str):  # a Secret in argv is a programming error
                raise TypeError(f"command arguments must be str, got {type(arg).__name__}")

    @property
    def line(self) -> str:
        """The shell-quoted command line (safe to print: argv holds no secret)."""
        return shlex.join(self.argv)

    def render(self) -> str:
        """Shell text for this command; stdin as a quoted heredoc, secrets masked."""
        if self.stdin is None:
            return self.line
        body = self.stdin.masked()
        marker = _heredoc_marker(body)
        if not body.endswith("\n"):
            # printf keeps an exact payload without a trailing newline
            return f"printf '%s' {shlex.quote(body)} | {self.line}"
        return f"{self.line} <<'{marker}'\n{body}{marker}"


def _heredoc_marker(body: str) -> str:
    marker = "PVESTACK_EOF"
    n = 0
    while marker in body:
        n += 1
        marker = f"PVESTACK_EOF_{n}"
    return marker


def cmd(*argv: str, stdin: Payload | None = None) -> Command:
    return Command(tuple(argv), stdin)


@dataclass(frozen=True)
class Step:
    """An idempotent unit of root (or guest) work.

    ``guard`` exits 0 when the step is already done; then nothing runs.
    ``commands`` run in order, each must exit 0.
    """

    id: str
    description: str
    commands: tuple[Command, ...]
    guard: Command | None = None
    timeout: float | None = None  # seconds per command; None: the transport's default

    @property
    def has_secret(self) -> bool:
        return any(c.stdin is not None and c.stdin.has_secret for c in self.commands)


def render_shell(step: Step) -> str:
    """One idempotent shell fragment for ``step`` (secrets masked)."""
    head = f"# {step.id}: {step.description}"
    body = "\n".join(c.render() for c in step.commands)
    if step.guard is None:
        return f"{head}\n{body}"
    inner = "\n".join("  " + ln if ln else ln for ln in body.splitlines())
    return f"{head}\nif ! {step.guard.render()} >/dev/null 2>&1; then\n{inner}\nfi"


def render_script(
    steps: Sequence[Step], *, title: str, success_marker: str, preamble: Iterable[str] = ()
) -> str:
    """A complete ``set -euo pipefail`` script running ``steps`` in order."""
    if any(s.has_secret for s in steps):
        raise ValueError("a step carrying a secret cannot be rendered into a printed script")
    lines = ["#!/usr/bin/env bash", f"# {title}", "set -euo pipefail", *preamble, ""]
    for step in steps:
        lines.append(render_shell(step))
        lines.append(f"echo {shlex.quote('ok: ' + step.id)}")
        lines.append("")
    lines.append(f"echo {shlex.quote(success_marker)}")
    return "\n".join(lines) + "\n"


def mask(text: str, secrets: Iterable[Secret]) -> str:
    """Replace every secret value occurring in ``text`` by ``***``."""
    for s in sorted(secrets, key=lambda s: len(s.value), reverse=True):
        if s.value:
            text = text.replace(s.value, MASK)
    return text
