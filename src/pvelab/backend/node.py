"""The lab's PVE node without HTTP: containers, storages, tasks, with PVE's rules and wording.

The API server and ``pct`` (a separate process, as root@pam) both use a ``Node`` on the
same lab directory; state changes happen under one ``fcntl`` lock on
``<lab>/etc/pve/.lock`` (``store``). Container configs are ``<lab>/etc/pve/lxc/<vmid>.conf``
in PVE's format (see ``conf``). Real containers are made by the injected ``Runtime``; it
gets the config's options as they are stored (volume ids such as ``local-lvm:vm-100-disk-0``,
whose directory is ``<lab>/storage/local-lvm/images/100/vm-100-disk-0``; see ``storage``)
and the raw ``lxc.*`` lines.

``Node`` only composes: the rules live in its collaborators, functions over one
``guests.Guests`` (``power``, ``create``, ``configs``, ``status``, ``datastore``,
``snapshots``, ``vzdump``) and the stores (``store``, ``worker``, ``auth``, ``storage``).
Its methods are the calls the API handlers, ``pct`` and the lab control make.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pvelab.backend import configs, create, datastore, power, snapshots, status, vzdump
from pvelab.backend.aplinfo import AplInfo
from pvelab.backend.auth import ROOT, AuthStore, Identity
from pvelab.backend.conf import CtConf
from pvelab.backend.errors import param_error
from pvelab.backend.guests import Guests
from pvelab.backend.netinfo import NetInfo
from pvelab.backend.packages import Packages
from pvelab.backend.storage import Storages
from pvelab.backend.store import ConfigStore
from pvelab.backend.tasks import TaskStore
from pvelab.backend.worker import Worker
from pvelab.runtime_protocol import Runtime

DEFAULT_LAB_DIR = "/var/lib/pvestack-lab"
VERSION = {"version": "9.1.1", "release": "9.1", "repoid": "pvestack-lab"}


def lab_dir_from_env() -> Path:
    return Path(os.environ.get("PVESTACK_LAB_DIR", DEFAULT_LAB_DIR))


def as_identity(user: str | Identity) -> Identity:
    if isinstance(user, Identity):
        return user
    name, _, token = user.partition("!")
    return Identity(name, token or None)


class Node:
    """One PVE node. ``user`` arguments are ``Identity`` or an authid string."""

    def __init__(
        self,
        lab_dir: Path,
        runtime: Runtime,
        name: str = "pve",
        *,
        auth: AuthStore | None = None,
    ) -> None:
        self.lab_dir = lab_dir
        self.name = name
        self.etc = lab_dir / "etc" / "pve"
        self.store = ConfigStore(self.etc, name)
        self.auth = auth or AuthStore(self.etc / "lab-auth.json")
        self.storages = Storages(lab_dir / "storage")
        self.storages.ensure()
        self.tasks = TaskStore(lab_dir / "tasks", name)
        self.worker = Worker(self.tasks, self.auth, name)
        self.guests = Guests(
            name, lab_dir, runtime, self.auth, self.storages, self.tasks, self.store, self.worker
        )
        self.packages = Packages(self.etc)
        self.aplinfo = AplInfo(lab_dir)
        self.netinfo = NetInfo(self.etc)

    @property
    def runtime(self) -> Runtime:
        return self.guests.runtime

    @runtime.setter
    def runtime(self, runtime: Runtime) -> None:
        self.guests.runtime = runtime

    # ------------------------------------------------------------------ configs on disk

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """The node-wide lock (threads of this process and other processes, e.g. pct)."""
        return self.store.locked()

    def vmids(self) -> list[int]:
        return self.store.vmids()

    def load(self, vmid: int) -> CtConf:
        return self.store.load(vmid)

    def write_conf(self, vmid: int, c: CtConf) -> None:
        self.store.write(vmid, c)

    # ------------------------------------------------------------------ tasks and faults

    def fail_next_task(self, ttype: str, message: str) -> None:
        """Make the next task of this type (``vzstart``...) end with ``TASK ERROR: message``."""
        self.worker.fail_next(ttype, message)

    def reset_faults(self) -> None:
        self.worker.reset_faults()

    def wait(self, upid: str, timeout: float | None = None) -> None:
        """Wait for a task; raise ``PveError(500, exitstatus)`` if it failed (for ``pct``)."""
        self.worker.wait(upid, timeout)

    def task_list(self, who: Identity, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        return self.worker.listing(who, params)

    def task_status(self, who: Identity, upid: str) -> dict[str, Any]:
        return self.worker.status(who, upid)

    def task_log(
        self, who: Identity, upid: str, start: int = 0, limit: int = 50
    ) -> tuple[list[dict[str, Any]], int]:
        return self.worker.log(who, upid, start, limit)

    # ------------------------------------------------------------------ cluster and node

    def version(self) -> dict[str, Any]:
        return dict(VERSION)

    def node_status(self) -> dict[str, Any]:
        return status.node_status(self.lab_dir, "pve-manager/9.1.1/lab")

    def nodes(self) -> list[dict[str, Any]]:
        return [status.node_item(self.name, self.node_status())]

    def cluster_status(self) -> list[dict[str, Any]]:
        return [{"type": "node", "id": f"node/{self.name}", "name": self.name, "nodeid": 0,
                 "ip": "127.0.0.1", "local": 1, "online": 1, "level": ""}]  # fmt: skip

    def cluster_resources(self, who: Identity, kind: str | None = None) -> list[dict[str, Any]]:
        node = status.node_item(self.name, self.node_status())
        return status.cluster_resources(self.guests, who, node, kind)

    def nextid(self, vmid: int | None = None) -> str:
        used = set(self.vmids())
        if vmid is not None:
            if vmid in used:
                raise param_error({"vmid": f"VM {vmid} already exists"})
            return str(vmid)
        n = 100
        while n in used:
            n += 1
        return str(n)

    def apt_versions(self) -> list[dict[str, Any]]:
        """``GET apt/versions`` (Sys.Audit on the node, checked by the server)."""
        return self.packages.versions(f"pve-manager/{VERSION['version']}/{VERSION['repoid']}")

    # ------------------------------------------------------------------ storage

    def storage_list(self, who: Identity, content: str | None = None) -> list[dict[str, Any]]:
        return datastore.storage_list(self.guests, who, content)

    def storage_status(self, sid: str) -> dict[str, Any]:
        return datastore.storage_status(self.guests, sid)

    def storage_content(
        self, sid: str, content: str | None, vmid: int | None, who: str | Identity = ROOT
    ) -> list[dict[str, Any]]:
        return datastore.storage_content(self.guests, sid, content, vmid, as_identity(who))

    def delete_volume(self, who: Identity, sid: str, volume: str) -> str | None:
        return datastore.delete_volume(self.guests, who, sid, volume)

    def download_url(self, who: Identity, sid: str, params: Mapping[str, Any]) -> str:
        return datastore.download_url(self.guests, who, sid, params)

    def apl_download(self, who: Identity, sid: str, template: str) -> str:
        return datastore.apl_download(self.guests, self.aplinfo, who, sid, template)

    # ------------------------------------------------------------------ containers

    def lxc_list(self, who: Identity) -> list[dict[str, Any]]:
        return status.ct_list(self.guests, who)

    def status(self, vmid: int) -> dict[str, Any]:
        """``status/current``, with the state read from the runtime."""
        return status.ct_status(self.guests, vmid)

    def interfaces(self, vmid: int) -> list[dict[str, Any]] | None:
        """``GET .../interfaces``: the running CT's interfaces (PVE answers null when it
        is not running)."""
        self.load(vmid)
        return self.runtime.interfaces(vmid)

    def get_config(
        self, vmid: int, *, current: bool = False, snapshot: str | None = None
    ) -> dict[str, Any]:
        return configs.get_config(self.guests, vmid, current=current, snapshot=snapshot)

    def pending(self, vmid: int) -> list[dict[str, Any]]:
        return configs.pending(self.guests, vmid)

    def create(self, params: Mapping[str, Any], *, user: str | Identity = ROOT) -> str:
        """``POST /nodes/{node}/lxc``: the config locked ``create``, then a ``vzcreate``
        task (or, with ``restore=1``, a ``vzrestore`` one)."""
        return create.create_ct(self.guests, params, as_identity(user))

    def set_config(
        self,
        vmid: int,
        params: Mapping[str, Any],
        delete: Sequence[str] = (),
        *,
        user: str | Identity = ROOT,
        digest: str | None = None,
        revert: Sequence[str] = (),
    ) -> None:
        """``PUT /config`` (and ``pct set``): PVE's checks, then the change."""
        who = as_identity(user)
        configs.set_config(
            self.guests, vmid, params, who, delete=delete, digest=digest, revert=revert
        )

    def start(self, vmid: int, *, user: str | Identity = ROOT) -> str:
        return power.start(self.guests, vmid, as_identity(user))

    def stop(self, vmid: int, *, user: str | Identity = ROOT) -> str:
        return power.stop(self.guests, vmid, as_identity(user))

    def shutdown(
        self, vmid: int, *, user: str | Identity = ROOT, timeout: int = 60, force: bool = False
    ) -> str:
        return power.shutdown(self.guests, vmid, as_identity(user), timeout, force)

    def reboot(self, vmid: int, *, user: str | Identity = ROOT, timeout: int = 60) -> str:
        return power.reboot(self.guests, vmid, as_identity(user), timeout)

    def destroy(
        self, vmid: int, *, user: str | Identity = ROOT, force: bool = False, purge: bool = False
    ) -> str:
        return power.destroy(self.guests, vmid, as_identity(user), force)

    # ------------------------------------------------------------------ snapshots, backups

    def snapshot_list(self, vmid: int) -> list[dict[str, Any]]:
        return snapshots.listing(self.guests, vmid)

    def snapshot(
        self,
        vmid: int,
        snapname: str,
        *,
        user: str | Identity = ROOT,
        description: str | None = None,
    ) -> str:
        return snapshots.create(self.guests, vmid, snapname, as_identity(user), description)

    def delete_snapshot(self, vmid: int, snapname: str, *, user: str | Identity = ROOT) -> str:
        return snapshots.delete(self.guests, vmid, snapname, as_identity(user))

    def rollback(
        self, vmid: int, snapname: str, *, user: str | Identity = ROOT, start: bool = False
    ) -> str:
        return snapshots.rollback(self.guests, vmid, snapname, as_identity(user), start)

    def set_snapshot_config(self, vmid: int, snapname: str, description: str | None) -> None:
        snapshots.update_description(self.guests, vmid, snapname, description)

    def vzdump(self, params: Mapping[str, Any], *, user: str | Identity = ROOT) -> str:
        return vzdump.backup(self.guests, params, as_identity(user))

    def vzdump_config(self, volume: str, *, user: str | Identity = ROOT) -> str:
        return vzdump.extract_config(self.guests, volume, as_identity(user))

    # ------------------------------------------------------------------ lab control

    def reset(self) -> None:
        """Remove every container (stopping it), volume and task: a fresh node."""
        for vmid in self.vmids():
            with contextlib.suppress(Exception):
                if self.guests.is_running(vmid):
                    self.runtime.stop(vmid)
            self.guests.purge(vmid)
        shutil.rmtree(self.tasks.root, ignore_errors=True)
        self.reset_faults()
        self.packages.reset()
