"""What every container operation of the node shares: its configs, tasks, storages,
privileges and the runtime that makes real containers, and the steps several of them take
(start a CT, make a new volume, remove a CT with its volumes).

The operations (``power``, ``create``, ``configs``, ``snapshots``, ``vzdump``, ...) are
functions over a ``Guests``; ``Node`` composes them for the API server and ``pct``.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from pvelab.backend.auth import AuthStore
from pvelab.backend.conf import CtConf
from pvelab.backend.errors import PveError
from pvelab.backend.options import commit_pending
from pvelab.backend.perms import NEW_DISK
from pvelab.backend.schema import (
    is_true,
    lxc_option_schema,
    parse_property_string,
    print_property_string,
)
from pvelab.backend.storage import STORAGES, Storages
from pvelab.backend.store import ConfigStore
from pvelab.backend.tasks import TaskLog, TaskStore
from pvelab.backend.worker import Worker
from pvelab.runtime_protocol import Runtime


@dataclass
class Guests:
    """The containers of node ``name`` under ``lab_dir``."""

    name: str
    lab_dir: Path
    runtime: Runtime
    auth: AuthStore
    storages: Storages
    tasks: TaskStore
    store: ConfigStore
    worker: Worker

    # the store's and the worker's names the operations use most
    def locked(self) -> contextlib.AbstractContextManager[None]:
        return self.store.locked()

    def load(self, vmid: int) -> CtConf:
        return self.store.load(vmid)

    def is_running(self, vmid: int) -> bool:
        return self.runtime.state(vmid) == "running"

    def start_now(self, vmid: int, log: TaskLog) -> None:
        """vm_start inside a task: pending changes applied, then the runtime starts it."""
        if is_true(self.load(vmid).main.options.get("template")):
            raise PveError(500, "you can't start a CT if it's a template")
        with self.locked():
            c = self.load(vmid)
            if c.pending.options:
                self.store.write(vmid, commit_pending(c))
        c = self.load(vmid)
        try:
            self.runtime.start(vmid, dict(c.main.options), list(c.main.raw))
        except RuntimeError as e:
            # PVE's vm_start: the cause goes to the task log, the exit status is fixed.
            for line in str(e).splitlines():
                if line.strip() and not line.startswith("startup for container"):
                    log.write(line)
            raise PveError(500, f"startup for container '{vmid}' failed") from e

    def realise(self, vmid: int, key: str, value: str, owner: int | None, log: TaskLog) -> str:
        """``local-lvm:8`` -> a new volume ``local-lvm:vm-N-disk-K,size=8G``."""
        sch = lxc_option_schema(key)
        assert sch is not None
        parts = parse_property_string(sch["format"], value)
        m = NEW_DISK.match(parts.get("volume", ""))
        if m:
            size = m.group(2)
            parts["volume"] = self.storages.allocate(m.group(1), vmid, float(size), owner)
            parts["size"] = f"{size}G"
            log.write(f"allocated volume {parts['volume']} ({size} GiB)")
        order = ["mp", *sorted(k for k in parts if k not in ("volume", "mp"))]
        return print_property_string(sch["format"], parts, order)

    def mount_path(self, value: str) -> Path:
        """The host directory of a rootfs/mpN value (a volume's directory or a bind path)."""
        vol = value.partition(",")[0]
        return Path(vol) if vol.startswith("/") else self.storages.volume_path(vol)

    def purge(self, vmid: int) -> None:
        """The CT gone: its container, volumes, snapshot copies and config."""
        with contextlib.suppress(Exception):
            self.runtime.destroy(vmid)
        for volid in self.storages.vm_volumes(vmid):
            self.storages.free(volid)
        for s in STORAGES:
            shutil.rmtree(self.storages.root / s.id / "snapshots" / str(vmid), ignore_errors=True)
            with contextlib.suppress(OSError):
                (self.storages.root / s.id / "images" / str(vmid)).rmdir()
        with self.locked():
            self.store.path(vmid).unlink(missing_ok=True)
