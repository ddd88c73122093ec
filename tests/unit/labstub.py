"""An in-memory lab runtime for the backend's unit tests (no root, no LXC).

It records what the node asked of it; the real runtime is tested in tests/lab.
"""

from __future__ import annotations

import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from pvelab.runtime_protocol import ExecResult


class StubRuntime:
    def __init__(self) -> None:
        self.running: dict[int, tuple[dict[str, str], list[tuple[str, str]]]] = {}
        self.destroyed: list[int] = []
        self.fail_start: str | None = None

    def create_rootfs(
        self, vmid: int, template: Path, rootfs: Path, idmap: Sequence[str], unprivileged: bool
    ) -> None:
        with tarfile.open(template) as t:
            t.extractall(rootfs, filter="data")

    def start(self, vmid: int, conf: Mapping[str, str], raw_lxc: Sequence[tuple[str, str]]) -> None:
        if self.fail_start:
            raise RuntimeError(self.fail_start)
        self.running[vmid] = (dict(conf), list(raw_lxc))

    def stop(self, vmid: int) -> None:
        self.running.pop(vmid, None)

    def shutdown(self, vmid: int, timeout: int) -> None:
        self.running.pop(vmid, None)

    def state(self, vmid: int) -> str:
        return "running" if vmid in self.running else "stopped"

    def pid(self, vmid: int) -> int | None:
        return 4242 if vmid in self.running else None

    def exec(
        self,
        vmid: int,
        argv: Sequence[str],
        stdin: bytes | None = None,
        timeout: float | None = None,
    ) -> ExecResult:
        return ExecResult(0, b"", b"")

    def destroy(self, vmid: int) -> None:
        self.destroyed.append(vmid)

    def ip_address(self, vmid: int) -> str | None:
        return None
