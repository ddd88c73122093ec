"""The node's container configs on disk (``<lab>/etc/pve/lxc/<vmid>.conf``) and its lock.

The API server and ``pct`` (another process) change them under one ``fcntl`` lock on
``<lab>/etc/pve/.lock``, re-entrant within a thread, as PVE's ``lock_config``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from pvelab.backend import conf as confmod
from pvelab.backend.conf import CtConf
from pvelab.backend.errors import PveError


class ConfigStore:
    """Read and write ``<vmid>.conf`` files of node ``node`` in ``etc`` (``etc/pve``)."""

    def __init__(self, etc: Path, node: str) -> None:
        self.etc = etc
        self.lxc_dir = etc / "lxc"
        self.node = node
        self.lxc_dir.mkdir(parents=True, exist_ok=True)
        self._thread_lock = threading.RLock()
        self._held = threading.local()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The node-wide lock (threads of this process and other processes, e.g. pct)."""
        with self._thread_lock:
            depth = getattr(self._held, "depth", 0)
            if depth:  # re-entered in this thread: the flock is already ours
                self._held.depth = depth + 1
                try:
                    yield
                finally:
                    self._held.depth = depth
                return
            fd = os.open(self.etc / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._held.depth = 1
                yield
            finally:
                self._held.depth = 0
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    def path(self, vmid: int) -> Path:
        return self.lxc_dir / f"{vmid}.conf"

    def vmids(self) -> list[int]:
        return sorted(int(p.stem) for p in self.lxc_dir.glob("*.conf") if p.stem.isdigit())

    def read(self, vmid: int) -> tuple[CtConf, str]:
        """The parsed config and its text (the text makes the ``digest``)."""
        path = self.path(vmid)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise PveError(
                500, f"Configuration file 'nodes/{self.node}/lxc/{vmid}.conf' does not exist"
            ) from None
        return confmod.parse(text, source=str(path)), text

    def load(self, vmid: int) -> CtConf:
        return self.read(vmid)[0]

    def write(self, vmid: int, c: CtConf) -> None:
        path = self.path(vmid)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(confmod.write(c))
        tmp.replace(path)

    def update_main(self, vmid: int, **changes: str | None) -> CtConf:
        """Set (or, with ``None``, remove) options of the current config, under the lock."""
        with self.locked():
            c = self.load(vmid)
            opts = dict(c.main.options)
            for k, v in changes.items():
                if v is None:
                    opts.pop(k, None)
                else:
                    opts[k] = v
            c = replace(c, main=replace(c.main, options=opts))
            self.write(vmid, c)
            return c

    def check_lock(self, vmid: int, allow: tuple[str, ...] = ()) -> None:
        """PVE's ``check_lock``: refuse a locked CT unless its lock is one of ``allow``."""
        lock = self.load(vmid).main.options.get("lock")
        if lock and lock not in allow:
            raise PveError(500, f"CT is locked ({lock})")

    def set_lock(self, vmid: int, lock: str | None) -> None:
        """PVE's ``set_lock`` (refused when the CT is locked already) or, with ``None``,
        ``remove_lock``."""
        with self.locked():
            lock_now = self.load(vmid).main.options.get("lock")
            if lock is not None and lock_now:
                raise PveError(500, f"CT is locked ({lock_now})")
            self.update_main(vmid, lock=lock)
