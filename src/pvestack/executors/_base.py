"""What the engine needs from a root transport (SSH now; anything that is root on the node)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pvestack._commands import Command, Step


@dataclass(frozen=True)
class CommandOutput:
    returncode: int
    stdout: str
    stderr: str


class RootTransport(Protocol):
    """Runs commands as root on the PVE node (``pct exec``/``pct push`` reach the guest)."""

    def run_step(self, step: Step, *, on_output: Callable[[str], None] | None = None) -> bool:
        """Run ``step``: its guard first; True if the commands ran, False if already done.
        Raises ``RootStepError`` (masked) when a command fails."""
        ...

    def capture(self, command: Command) -> CommandOutput:
        """Run one read-only command and return its output (for observing facts)."""
        ...

    def close(self) -> None: ...


class GuestTransport(Protocol):
    """Runs guest ``Step``s (inside a container). The engine chooses it: today the root
    transport (the steps are ``pct exec``/``pct push`` on the node); a transport that
    reaches the guest directly plugs in here."""

    def run_step(self, step: Step, *, on_output: Callable[[str], None] | None = None) -> bool:
        """As ``RootTransport.run_step``: True if the commands ran, False if already done."""
        ...
