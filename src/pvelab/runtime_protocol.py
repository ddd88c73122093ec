"""The seam between the lab's HTTP-free backend (PVE semantics, state, tasks)
and its runtime (real LXC on this machine).

The backend owns the node state on disk under the lab directory:
``<lab>/etc/pve/lxc/<vmid>.conf`` in PVE's own format, storages as
directories, tasks. It decides *what* happens (validation, permissions, locks,
UPIDs, error strings). The runtime only makes it real with lxc tools; it never
checks permissions and never talks HTTP. ``pct`` (root on the node) and the API
server both go through the same backend, so they see one state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class ExecResult:
    returncode: int
    stdout: bytes
    stderr: bytes


class Runtime(Protocol):
    def create_rootfs(
        self, vmid: int, template: Path, rootfs: Path, idmap: Sequence[str], unprivileged: bool
    ) -> None:
        """Extract ``template`` (a .tar.zst/.tar.gz/.tar.xz) into ``rootfs`` inside the user
        namespace given by ``idmap`` lines (``"u 0 100000 65536"``...), as PVE does."""

    def start(self, vmid: int, conf: Mapping[str, str], raw_lxc: Sequence[tuple[str, str]]) -> None:
        """Translate the PVE config (+ raw ``lxc.*`` lines) into an LXC config and start.
        Raises RuntimeError with a message on failure."""

    def stop(self, vmid: int) -> None:
        """Hard stop (``lxc-stop -k``)."""

    def shutdown(self, vmid: int, timeout: int) -> None:
        """Clean shutdown (``lxc-stop -t timeout``); hard stop when it runs out."""

    def state(self, vmid: int) -> str:
        """``"running"`` or ``"stopped"``, read from LXC."""

    def pid(self, vmid: int) -> int | None: ...

    def exec(
        self,
        vmid: int,
        argv: Sequence[str],
        stdin: bytes | None = None,
        timeout: float | None = None,
    ) -> ExecResult:
        """Run ``argv`` inside the running container as root (``lxc-attach``)."""

    def destroy(self, vmid: int) -> None:
        """Remove the LXC container definition and its rootfs (not bind-mount sources)."""

    def ip_address(self, vmid: int) -> str | None:
        """The container's IPv4 address on its lab bridge, if it has one."""

    def interfaces(self, vmid: int) -> list[dict[str, Any]] | None:
        """``GET .../lxc/{vmid}/interfaces`` as PVE answers it; None when not running."""
