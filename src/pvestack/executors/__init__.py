"""Executors: the only code that touches the world.

``ApiExecutor`` (the token), the root transports (``open_ssh_transport``: root over SSH,
imported lazily: paramiko loads only when SSH is used), the console hand-off, and the
precondition checks run just before each action.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pvestack.executors._api import ApiExecutor
from pvestack.executors._base import CommandOutput, GuestTransport, RootTransport
from pvestack.executors._preconditions import Precheck, PreconditionChecker

if TYPE_CHECKING:
    from pvestack.executors._ssh import SshSettings, SshTransport


def open_ssh_transport(settings: SshSettings) -> SshTransport:
    """Connect as root over SSH (raises ``TransportError``/``HostKeyError``)."""
    from pvestack.executors._ssh import SshTransport  # noqa: PLC0415  (paramiko: lazily)

    return SshTransport(settings)


__all__ = [
    "ApiExecutor",
    "CommandOutput",
    "GuestTransport",
    "Precheck",
    "PreconditionChecker",
    "RootTransport",
    "open_ssh_transport",
]
