"""Commands as data (the pyinfra lesson).

A root or guest change is built once as a ``Step``: an optional guard command
(exit 0 means "already done", which makes every rendering idempotent) and the
commands that make it so. Commands are argv tuples, quoted with ``quote`` when
rendered; data goes through stdin, never argv. A ``Secret`` can only travel in
stdin, and every rendering prints it as ``***``.

The same ``Step`` values are rendered two ways, so the two paths cannot drift:

* ``render_shell(step)`` gives the text of one idempotent shell fragment, used
  for the console script (and for display);
* the SSH executor runs ``step.guard`` and then each ``Command`` with its stdin.

Every byte of a printed script that comes from data goes through ``quote`` (a
shell word) or ``comment`` (the text of a ``#`` line). ``quote`` keeps a
printable value in POSIX single quotes and writes anything else (ESC, CR, other
control or non-printable characters) as a bash ``$'...'`` word made only of
printable escapes, so the printed script never carries a raw control
character; ``comment`` escapes newlines and every non-printable character, so
data cannot end a comment line. ``display`` does the same for human-readable
output (plan, apply, destroy, verify): a description holding ESC ``[2J`` is
shown as ``\\x1b[2J``, it does not clear the operator's screen.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

MASK = "***"

_SAFE_WORD = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")
_C_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\", "'": "\\'"}


def _escape_char(c: str) -> str:
    """One character as a printable escape (``\\x1b``; UTF-8 bytes for others), for ``$'...'``."""
    if c in _C_ESCAPES:
        return _C_ESCAPES[c]
    # bytes of the UTF-8 encoding: the same value whatever the locale of the shell
    return "".join(f"\\x{b:02x}" for b in c.encode("utf-8", "surrogatepass"))


def _plain(text: str, allowed: str = "") -> bool:
    """Only printable characters (and those in ``allowed``)."""
    return all(c.isprintable() or c in allowed for c in text)


def quote(value: str) -> str:
    """The one quoting function for data in shell text: ``value`` as one shell word.

    Printable text (newlines and tabs allowed) is single-quoted (POSIX); text with
    any other control or non-printable character becomes a ``$'...'`` word whose
    every such character is a printable escape. Either way the word stands for
    exactly ``value`` and the rendered text holds no raw control character other
    than newline and tab inside quotes.
    """
    if value and _SAFE_WORD.fullmatch(value):
        return value
    if _plain(value, "\n\t"):
        return "'" + value.replace("'", "'\"'\"'") + "'"
    return (
        "$'"
        + "".join(c if c.isprintable() and c not in "\\'" else _escape_char(c) for c in value)
        + "'"
    )


def display(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` safe for a terminal: control and non-printable characters escaped.

    ESC ``[2J`` (clear screen) is shown as the text ``\\x1b[2J``. With
    ``keep_newlines`` the line breaks of multi-line output are kept (tabs too).
    """
    allowed = "\n\t" if keep_newlines else ""
    if _plain(text, allowed):
        return text
    return "".join(c if c.isprintable() or c in allowed else _escape_char(c) for c in text)


def comment(text: str) -> str:
    """The text of one ``#`` comment line: nothing in it can end the line."""
    return display(text)


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
        return " ".join(quote(a) for a in self.argv)

    def render(self) -> str:
        """Shell text for this command; stdin as one quoted ``printf`` word, secrets masked."""
        if self.stdin is None:
            return self.line
        # printf keeps the exact payload; the payload is one quoted word
        return f"printf '%s' {quote(self.stdin.masked())} | {self.line}"


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
    head = f"# {comment(step.id)}: {comment(step.description)}"
    if step.guard is None:
        return head + "".join("\n" + c.render() for c in step.commands)
    # only each command's first line is indented: a quoted word spanning lines (a
    # script, a payload) must stay byte for byte what the step holds
    inner = "".join("\n  " + c.render() for c in step.commands)
    return f"{head}\nif ! {step.guard.render()} >/dev/null 2>&1; then{inner}\nfi"


def render_script(
    steps: Sequence[Step], *, title: str, success_marker: str, preamble: Iterable[str] = ()
) -> str:
    """A complete ``set -euo pipefail`` script running ``steps`` in order."""
    if any(s.has_secret for s in steps):
        raise ValueError("a step carrying a secret cannot be rendered into a printed script")
    lines = ["#!/usr/bin/env bash", f"# {comment(title)}", "set -euo pipefail", *preamble, ""]
    for step in steps:
        lines.append(render_shell(step))
        lines.append(f"echo {quote('ok: ' + step.id)}")
        lines.append("")
    lines.append(f"echo {quote(success_marker)}")
    return "\n".join(lines) + "\n"


def mask(text: str, secrets: Iterable[Secret]) -> str:
    """Replace every secret value occurring in ``text`` by ``***``."""
    for s in sorted(secrets, key=lambda s: len(s.value), reverse=True):
        if s.value:
            text = text.replace(s.value, MASK)
    return text
