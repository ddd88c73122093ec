"""The lab's PVE node without HTTP: containers, storages, tasks, with PVE's rules and wording.

The API server and ``pct`` (a separate process, as root@pam) both use a ``Node`` on the
same lab directory; state changes happen under one ``fcntl`` lock on
``<lab>/etc/pve/.lock``. Container configs are ``<lab>/etc/pve/lxc/<vmid>.conf`` in PVE's
format (see ``conf``). Real containers are made by the injected ``Runtime``; it gets the
config's options as they are stored (volume ids such as ``local-lvm:vm-100-disk-0``, whose
directory is ``<lab>/storage/local-lvm/images/100/vm-100-disk-0``; see ``storage``) and the
raw ``lxc.*`` lines.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import re
import secrets
import shutil
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pvelab.backend import conf as confmod
from pvelab.backend import snapshots, vzdump
from pvelab.backend.aplinfo import AplInfo
from pvelab.backend.auth import ROOT, AuthStore, Identity
from pvelab.backend.conf import CtConf, Section
from pvelab.backend.errors import PveError, TaskFailed, param_error, permission_denied
from pvelab.backend.netinfo import NetInfo
from pvelab.backend.packages import Packages
from pvelab.backend.perms import (
    NEW_DISK,
    check_ct_modify_config_perm,
    features_of,
    mount_type,
)
from pvelab.backend.schema import (
    is_true,
    lxc_option_schema,
    method_schema,
    parse_property_string,
    print_property_string,
    split_list,
    validate,
)
from pvelab.backend.storage import STORAGES, TEMPLATE_EXT, Storages
from pvelab.backend.tasks import TaskLog, TaskStore, Upid
from pvelab.runtime_protocol import Runtime

DEFAULT_LAB_DIR = "/var/lib/pvestack-lab"
DEFAULT_IDMAP = ("u 0 100000 65536", "g 0 100000 65536")
VERSION = {"version": "9.1.1", "release": "9.1", "repoid": "pvestack-lab"}
_MOUNT_KEY = re.compile(r"^(rootfs|mp\d+)$")
# Parameters of create that are not container options.
_CREATE_ONLY = frozenset({
    "node", "vmid", "ostemplate", "storage", "password", "ssh-public-keys", "start", "restore",
    "force", "unique", "pool", "bwlimit", "ignore-unpack-errors", "ha-managed",
})  # fmt: skip
_SET_ONLY = frozenset({"node", "vmid", "digest", "delete", "revert"})


@dataclass(frozen=True)
class GuestSetup:
    """What create writes into the new root file system (PVE's LXC setup)."""

    ssh_keys: str | None = None
    password: str | None = field(default=None, repr=False)


def _set_root_password(rootfs: Path, password: str, log: TaskLog) -> None:
    """root's hash in the container's /etc/shadow (the password only on openssl's stdin)."""
    shadow = rootfs / "etc" / "shadow"
    if shadow.is_symlink() or not shadow.is_file():
        log.warn("no /etc/shadow in the template: root password not set")
        return
    hashed = subprocess.run(
        ["openssl", "passwd", "-6", "-stdin"], input=password, capture_output=True, text=True,
        check=True,
    ).stdout.strip()  # fmt: skip
    st = shadow.stat()
    lines = shadow.read_text().splitlines()
    out = []
    for line in lines:
        fields = line.split(":")
        if fields[0] == "root" and len(fields) > 1:
            fields[1] = hashed
        out.append(":".join(fields))
    tmp = shadow.with_name(".shadow.pvestack")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, st.st_mode & 0o7777)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(out) + "\n")
    if os.geteuid() == 0:
        os.chown(tmp, st.st_uid, st.st_gid)
    tmp.replace(shadow)


def lab_dir_from_env() -> Path:
    return Path(os.environ.get("PVESTACK_LAB_DIR", DEFAULT_LAB_DIR))


def as_identity(user: str | Identity) -> Identity:
    if isinstance(user, Identity):
        return user
    name, _, token = user.partition("!")
    return Identity(name, token or None)


def _mapped_root(raw: Sequence[tuple[str, str]], unprivileged: bool) -> int | None:
    if not unprivileged:
        return None
    for key, value in raw:
        parts = value.split()
        if key == "lxc.idmap" and len(parts) == 4 and parts[0] == "u" and parts[1] == "0":
            return int(parts[2])
    return 100000


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
        self.runtime = runtime
        self.name = name
        self.etc = lab_dir / "etc" / "pve"
        self.lxc_dir = self.etc / "lxc"
        self.auth = auth or AuthStore(self.etc / "lab-auth.json")
        self.storages = Storages(lab_dir / "storage")
        self.tasks = TaskStore(lab_dir / "tasks", name)
        self.lxc_dir.mkdir(parents=True, exist_ok=True)
        self.storages.ensure()
        self._thread_lock = threading.RLock()
        self._held = threading.local()
        self._fail_next: dict[str, str] = {}
        self.packages = Packages(self.etc)
        self.aplinfo = AplInfo(lab_dir)
        self.netinfo = NetInfo(self.etc)

    # ------------------------------------------------------------------ locking and files

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

    def conf_path(self, vmid: int) -> Path:
        return self.lxc_dir / f"{vmid}.conf"

    def vmids(self) -> list[int]:
        return sorted(int(p.stem) for p in self.lxc_dir.glob("*.conf") if p.stem.isdigit())

    def _read(self, vmid: int) -> tuple[CtConf, str]:
        path = self.conf_path(vmid)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise PveError(
                500, f"Configuration file 'nodes/{self.name}/lxc/{vmid}.conf' does not exist"
            ) from None
        return confmod.parse(text, source=str(path)), text

    def load(self, vmid: int) -> CtConf:
        return self._read(vmid)[0]

    def _write(self, vmid: int, c: CtConf) -> None:
        path = self.conf_path(vmid)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(confmod.write(c))
        tmp.replace(path)

    def _update_main(self, vmid: int, **changes: str | None) -> CtConf:
        with self.locked():
            c = self.load(vmid)
            opts = dict(c.main.options)
            for k, v in changes.items():
                if v is None:
                    opts.pop(k, None)
                else:
                    opts[k] = v
            c = replace(c, main=replace(c.main, options=opts))
            self._write(vmid, c)
            return c

    # ------------------------------------------------------------------ faults

    def fail_next_task(self, ttype: str, message: str) -> None:
        """Make the next task of this type (``vzstart``...) end with ``TASK ERROR: message``."""
        self._fail_next[ttype] = message

    def reset_faults(self) -> None:
        self._fail_next.clear()

    def _task(
        self, ttype: str, vmid: int | str, who: Identity, body: Any, on_fault: Any = None
    ) -> str:
        fault = self._fail_next.pop(ttype, None)
        if fault is not None:

            def failing(log: TaskLog) -> None:
                if on_fault is not None:
                    on_fault()  # what the real body does when it fails (create: purge)
                raise TaskFailed(fault)

            body = failing
        return self.tasks.start(ttype, str(vmid), who.authid, body)

    def wait(self, upid: str, timeout: float | None = None) -> None:
        """Wait for a task; raise ``PveError(500, exitstatus)`` if it failed (for ``pct``)."""
        status = self.tasks.wait(upid, timeout)
        if status != "OK" and not status.startswith("WARNINGS"):
            raise PveError(500, status)

    # ------------------------------------------------------------------ cluster and node

    def version(self) -> dict[str, Any]:
        return dict(VERSION)

    def nodes(self) -> list[dict[str, Any]]:
        return [self._node_item()]

    def _node_item(self) -> dict[str, Any]:
        st = self.node_status()
        return {
            "node": self.name, "status": "online", "type": "node", "id": f"node/{self.name}",
            "cpu": st["cpu"], "maxcpu": st["cpuinfo"]["cpus"], "mem": st["memory"]["used"],
            "maxmem": st["memory"]["total"], "uptime": st["uptime"], "level": "",
            "ssl_fingerprint": "", "disk": st["rootfs"]["used"], "maxdisk": st["rootfs"]["total"],
        }  # fmt: skip

    def node_status(self) -> dict[str, Any]:
        mem = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            k, _, v = line.partition(":")
            mem[k] = int(v.split()[0]) * 1024
        fs = os.statvfs(self.lab_dir)
        load = os.getloadavg()
        uptime = int(float(Path("/proc/uptime").read_text().split()[0]))
        cpus = os.cpu_count() or 1
        return {
            "uptime": uptime, "cpu": min(1.0, load[0] / cpus),
            "loadavg": [f"{x:.2f}" for x in load],
            "memory": {"total": mem["MemTotal"], "free": mem["MemAvailable"],
                       "used": mem["MemTotal"] - mem["MemAvailable"]},
            "swap": {"total": mem.get("SwapTotal", 0), "free": mem.get("SwapFree", 0),
                     "used": mem.get("SwapTotal", 0) - mem.get("SwapFree", 0)},
            "rootfs": {"total": fs.f_blocks * fs.f_frsize, "avail": fs.f_bavail * fs.f_frsize,
                       "used": (fs.f_blocks - fs.f_bfree) * fs.f_frsize,
                       "free": fs.f_bfree * fs.f_frsize},
            "cpuinfo": {"cpus": cpus, "sockets": 1, "cores": cpus, "model": "pvestack lab"},
            "kversion": " ".join(os.uname()[:3]), "pveversion": "pve-manager/9.1.1/lab",
            "idle": 0, "wait": 0.0,
        }  # fmt: skip

    def cluster_status(self) -> list[dict[str, Any]]:
        return [{"type": "node", "id": f"node/{self.name}", "name": self.name, "nodeid": 0,
                 "ip": "127.0.0.1", "local": 1, "online": 1, "level": ""}]  # fmt: skip

    def cluster_resources(self, who: Identity, kind: str | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if kind in (None, "vm"):
            for vmid in self.vmids():
                if not self.auth.allowed(who, f"/vms/{vmid}", "VM.Audit"):
                    continue
                try:
                    st = self.status(vmid)
                except PveError:
                    continue
                item = {
                    "id": f"lxc/{vmid}", "type": "lxc", "node": self.name, "vmid": vmid,
                    "name": st["name"], "status": st["status"], "template": st.get("template", 0),
                    "maxcpu": st["cpus"], "maxmem": st["maxmem"], "maxdisk": st["maxdisk"],
                    "cpu": st["cpu"], "mem": st["mem"], "disk": st["disk"], "uptime": st["uptime"],
                    "netin": 0, "netout": 0, "diskread": 0, "diskwrite": 0,
                }  # fmt: skip
                for extra in ("tags", "lock"):
                    if st.get(extra):
                        item[extra] = st[extra]
                out.append(item)
        if kind in (None, "node"):
            n = self._node_item()
            n.pop("ssl_fingerprint")
            out.append(n | {"cgroup-mode": 2})
        if kind in (None, "storage"):
            for s in STORAGES:
                if not self.auth.privileges(who, f"/storage/{s.id}") & {
                    "Datastore.Audit",
                    "Datastore.AllocateSpace",
                }:
                    continue
                st = self.storage_status(s.id)
                out.append({
                    "id": f"storage/{self.name}/{s.id}", "type": "storage", "node": self.name,
                    "storage": s.id, "status": "available", "plugintype": s.type,
                    "content": ",".join(s.content), "shared": 0,
                    "disk": st["used"], "maxdisk": st["total"],
                })  # fmt: skip
        return out

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

    # ------------------------------------------------------------------ storage

    def storage_list(self, who: Identity, content: str | None = None) -> list[dict[str, Any]]:
        out = []
        for s in STORAGES:
            if content and not set(split_list(content)) & set(s.content):
                continue
            if not self.auth.privileges(who, f"/storage/{s.id}") & {
                "Datastore.Audit",
                "Datastore.AllocateSpace",
            }:
                continue
            out.append(self.storage_status(s.id))
        return out

    def storage_status(self, sid: str) -> dict[str, Any]:
        s = self.storages.get(sid)
        fs = os.statvfs(self.lab_dir)
        total, avail = fs.f_blocks * fs.f_frsize, fs.f_bavail * fs.f_frsize
        return {
            "storage": sid, "type": s.type, "content": ",".join(s.content), "active": 1,
            "enabled": 1, "shared": 0, "total": total, "avail": avail, "used": total - avail,
            "used_fraction": (total - avail) / total if total else 0,
        }  # fmt: skip

    def storage_content(
        self, sid: str, content: str | None, vmid: int | None, who: str | Identity = ROOT
    ) -> list[dict[str, Any]]:
        items = self.storages.content(sid, content, vmid)
        return vzdump.visible_backups(self, as_identity(who), sid, items)

    def delete_volume(self, who: Identity, sid: str, volume: str) -> str | None:
        volid = volume if ":" in volume else f"{sid}:{volume}"
        self.auth.require(who, f"/storage/{sid}", "Datastore.Allocate")
        path = self.storages.volume_path(volid)
        if not path.exists():
            raise PveError(500, f"volume '{volid}' does not exist")
        m = re.match(r"^vm-(\d+)-disk-\d+$", volid.partition(":")[2])
        if m and self.conf_path(int(m.group(1))).exists():
            raise PveError(500, f"unable to delete volume '{volid}', it's used by CT {m.group(1)}")

        def body(log: TaskLog) -> None:
            self.storages.free(volid)
            log.write(f"Removed volume '{volid}'")

        return self._task("imgdel", "", who, body)

    def download_url(self, who: Identity, sid: str, params: Mapping[str, Any]) -> str:
        filename = str(params["filename"])
        if params["content"] == "vztmpl" and not TEMPLATE_EXT.search(filename):
            raise param_error({"filename": "wrong file extension"})
        if "/" in filename or filename.startswith("."):
            raise param_error({"filename": "invalid filename"})
        store = self.storages.get(sid)
        if params["content"] not in store.content:
            raise PveError(
                500, f"storage '{sid}' is not configured for content-type '{params['content']}'"
            )
        checksum = None
        if params.get("checksum"):
            checksum = (str(params["checksum-algorithm"]), str(params["checksum"]))
        url = str(params["url"])
        host = urllib.parse.urlsplit(url).hostname or ""
        if not _is_loopback(host):
            raise PveError(500, f"lab: download-url only fetches from loopback, not '{host}'")

        def body(log: TaskLog) -> None:
            self.storages.download(sid, filename, url, checksum, log.write)

        return self._task("download", filename, who, body)

    # ------------------------------------------------------------------ node: apt, aplinfo

    def apt_versions(self) -> list[dict[str, Any]]:
        """``GET apt/versions`` (Sys.Audit on the node, checked by the server)."""
        return self.packages.versions(f"pve-manager/{VERSION['version']}/{VERSION['repoid']}")

    def apl_download(self, who: Identity, sid: str, template: str) -> str:
        """``POST aplinfo``: the record's file into ``sid`` as a ``download`` task; the
        node verifies the index's sha512sum (APLInfo's hash_required)."""
        store = self.storages.get(sid)
        record = self.aplinfo.lookup(template, store.content, sid)
        url = str(record["location"])
        if not _is_loopback(urllib.parse.urlsplit(url).hostname or ""):
            raise PveError(500, f"lab: aplinfo only fetches from loopback, not '{url}'")
        sha512 = str(record.get("sha512sum") or "")

        def body(log: TaskLog) -> None:
            if not sha512:
                raise PveError(500, "sha512sum missing for appliance (hash required)")
            self.storages.download(sid, template, url, ("sha512", sha512), log.write)

        return self._task("download", template, who, body)

    # ------------------------------------------------------------------ containers: reads

    def get_config(
        self, vmid: int, *, current: bool = False, snapshot: str | None = None
    ) -> dict[str, Any]:
        c, text = self._read(vmid)
        sec = c.main
        if snapshot is not None:
            if snapshot not in c.snapshots:
                raise PveError(500, f"snapshot '{snapshot}' does not exist")
            sec = c.snapshots[snapshot]
        out: dict[str, Any] = {}
        for k, v in sec.options.items():
            out[k] = _typed(k, v)
        if not current and snapshot is None:
            for k, v in c.pending.options.items():
                if k != "delete":
                    out[k] = _typed(k, v)
            for k in split_list(c.pending.options.get("delete", "")):
                out.pop(k, None)
        if sec.description is not None:
            out["description"] = sec.description + "\n"
        if sec.raw:
            out["lxc"] = [[k, v] for k, v in sec.raw]
        out["digest"] = confmod.digest(text)
        return out

    def pending(self, vmid: int) -> list[dict[str, Any]]:
        """PVE's ``config_with_pending_array``: every key of the config (``digest`` too,
        as ``load_config`` adds it), its pending value or delete, the pending-only keys."""
        c, text = self._read(vmid)
        out: list[dict[str, Any]] = [{"key": "digest", "value": confmod.digest(text)}]
        keys = set(c.main.options) | set(c.pending.options) - {"delete"}
        deleted = set(split_list(c.pending.options.get("delete", "")))
        for k in sorted(keys):
            item: dict[str, Any] = {"key": k}
            if k in c.main.options:
                item["value"] = _typed(k, c.main.options[k])
            if k in c.pending.options:
                item["pending"] = _typed(k, c.pending.options[k])
            if k in deleted:
                item["delete"] = 1
            out.append(item)
        if c.main.description is not None:
            out.append({"key": "description", "value": c.main.description + "\n"})
        return out

    def lxc_list(self, who: Identity) -> list[dict[str, Any]]:
        out = []
        for vmid in self.vmids():
            if self.auth.allowed(who, f"/vms/{vmid}", "VM.Audit"):
                with contextlib.suppress(PveError):
                    out.append(self.status(vmid))
        return out

    def interfaces(self, vmid: int) -> list[dict[str, Any]] | None:
        """``GET .../interfaces``: the running CT's interfaces (PVE answers null when it
        is not running)."""
        self.load(vmid)
        return self.runtime.interfaces(vmid)

    def status(self, vmid: int) -> dict[str, Any]:
        """``status/current``, with the state read from the runtime."""
        c = self.load(vmid)
        o = c.main.options
        state = self.runtime.state(vmid)
        running = state == "running"
        mem = int(o.get("memory", "512")) * 1024 * 1024
        swap = int(o.get("swap", "512")) * 1024 * 1024
        size = 0
        if "rootfs" in o:
            m = re.search(r"(?:^|,)size=(\d+(?:\.\d+)?)([KMGT]?)", o["rootfs"])
            if m:
                size = int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " "))
        pid = self.runtime.pid(vmid) if running else None
        out: dict[str, Any] = {
            "vmid": vmid, "name": o.get("hostname", f"CT{vmid}"), "type": "lxc",
            "status": "running" if running else "stopped",
            "cpus": int(o.get("cores", str(os.cpu_count() or 1))), "maxmem": mem, "maxswap": swap,
            "maxdisk": size, "disk": 0, "mem": 0, "swap": 0, "cpu": 0, "netin": 0, "netout": 0,
            "diskread": 0, "diskwrite": 0,
            "uptime": _process_uptime(pid) if pid else 0,
            "ha": {"managed": 0},
        }  # fmt: skip
        if pid:
            out["pid"] = pid
            out["mem"] = _cgroup_memory(pid)
        if o.get("tags"):
            out["tags"] = o["tags"]
        if o.get("lock"):
            out["lock"] = o["lock"]
        if is_true(o.get("template")):
            out["template"] = 1
        return out

    # ------------------------------------------------------------------ create

    def create(self, params: Mapping[str, Any], *, user: str | Identity = ROOT) -> str:
        """``POST /nodes/{node}/lxc``: checks, the config locked ``create``, then a
        ``vzcreate`` task that makes the rootfs (and starts it with ``start=1``)."""
        who = as_identity(user)
        v = validate(method_schema("/nodes/{node}/lxc", "POST"), {"node": self.name, **params})
        vmid = int(v["vmid"])
        if v.get("restore"):
            return vzdump.restore(self, v, who)
        unprivileged = bool(v.get("unprivileged", 1))
        if not unprivileged:
            self.auth.require(who, "/", "Sys.Modify")
        if self.conf_path(vmid).exists():
            raise PveError(500, f"CT {vmid} already exists on node '{self.name}'")
        if v.get("pool"):  # the lab has no pools
            raise permission_denied(f"pool '{v['pool']}' does not exist")
        if v.get("start"):
            self.auth.require(who, f"/vms/{vmid}", "VM.PowerMgmt")
        if not self.auth.allowed(who, f"/vms/{vmid}", "VM.Allocate"):
            raise permission_denied()
        ostemplate = str(v["ostemplate"])
        storage = str(v.get("storage", "local"))
        template = self._check_template(who, ostemplate)
        opts = {
            k: str(x) if not isinstance(x, str) else x
            for k, x in v.items()
            if k not in _CREATE_ONLY
        }
        opts.pop("unprivileged", None)
        check_ct_modify_config_perm(self.auth, who, vmid, None, opts, [], unprivileged)
        mounts: dict[str, str] = {}
        for k in [k for k in opts if _MOUNT_KEY.match(k)]:
            value = opts.pop(k)
            mounts[k] = f"{storage}:{value}" if re.fullmatch(r"\d+(\.\d+)?", value) else value
        if mounts and "rootfs" not in mounts:
            raise PveError(500, "mount points configured, but 'rootfs' not set - aborting")
        if "rootfs" not in mounts:
            mounts["rootfs"] = f"{storage}:4"
        for k, value in mounts.items():
            vol = _volume_of(k, value)
            if mount_type(vol) != "volume":
                if not who.is_root:
                    raise PveError(500, "Only root can pass arbitrary filesystem paths.")
            else:
                sid = vol.partition(":")[0]
                self.storages.get(sid)
                self.auth.require(who, f"/storage/{sid}", "Datastore.AllocateSpace")
        final = {k: _normalise(k, x) for k, x in opts.items()}
        final.setdefault("hostname", f"CT{vmid}")
        final.setdefault("memory", "512")
        final.setdefault("swap", "512")
        final["arch"] = str(v.get("arch", "amd64"))
        final["ostype"] = str(v.get("ostype") or _ostype(ostemplate))
        if unprivileged:
            final["unprivileged"] = "1"
        description = final.pop("description", None)
        final["_ostemplate"] = ostemplate  # for the task's message; never written
        description = description.rstrip("\n") or None if description else None
        with self.locked():
            if self.conf_path(vmid).exists():
                raise PveError(500, f"CT {vmid} already exists on node '{self.name}'")
            self._write(vmid, CtConf(Section({"lock": "create"})))
        guest = GuestSetup(
            str(v.get("ssh-public-keys", "")) or None, str(v.get("password", "")) or None
        )
        start = bool(v.get("start"))

        def body(log: TaskLog) -> None:
            try:
                self._do_create(
                    vmid, template, final, mounts, description, guest, unprivileged, log
                )
            except Exception:
                self._purge(vmid)
                raise
            if start:
                self._do_start(vmid, log)

        # PVE's create_vm: on error, destroy_disks + destroy_config (no lock left behind)
        return self._task("vzcreate", vmid, who, body, on_fault=lambda: self._purge(vmid))

    def _check_template(self, who: Identity, ostemplate: str) -> Path:
        sid, colon, _ = ostemplate.partition(":")
        if not colon:
            if not who.is_root:
                raise PveError(500, "Only root can pass arbitrary filesystem paths.")
            return Path(ostemplate)
        path = self.storages.template_path(ostemplate)
        self.auth.require(
            who, f"/storage/{sid}", "Datastore.AllocateSpace", "Datastore.Audit", any_=True
        )
        return path

    def _do_create(  # noqa: PLR0917
        self,
        vmid: int,
        template: Path,
        final: dict[str, str],
        mounts: Mapping[str, str],
        description: str | None,
        guest: GuestSetup,
        unprivileged: bool,
        log: TaskLog,
    ) -> None:
        if not template.is_file():
            volid = str(final.get("_ostemplate", template))
            raise PveError(500, f"unable to create CT {vmid} - volume '{volid}' does not exist")
        final.pop("_ostemplate", None)
        owner = _mapped_root((), unprivileged)
        for k in sorted(mounts, key=lambda k: (k != "rootfs", k)):
            final[k] = self._realise(vmid, k, mounts[k], owner, log)
        rootfs = self._resolve_mount(final["rootfs"])[0]
        log.write(f"extracting archive '{template}'")
        self.runtime.create_rootfs(vmid, template, rootfs, DEFAULT_IDMAP if unprivileged else (),
                                   unprivileged)  # fmt: skip
        if guest.ssh_keys:
            ssh = rootfs / "root" / ".ssh"
            ssh.mkdir(parents=True, exist_ok=True)
            (ssh / "authorized_keys").write_text(guest.ssh_keys.rstrip("\n") + "\n")
            if owner is not None and os.geteuid() == 0:
                for p in (ssh, ssh / "authorized_keys"):
                    os.chown(p, owner, owner)
            ssh.chmod(0o700)
        if guest.password:
            _set_root_password(rootfs, guest.password, log)
        log.write("Total bytes written: (extracted in the container's user namespace)")
        with self.locked():
            c = self.load(vmid)
            self._write(vmid, replace(c, main=Section(final, (), description)))

    def _realise(self, vmid: int, key: str, value: str, owner: int | None, log: TaskLog) -> str:
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

    def _resolve_mount(self, value: str) -> tuple[Path, str]:
        vol, _, rest = value.partition(",")
        path = Path(vol) if vol.startswith("/") else self.storages.volume_path(vol)
        return path, rest

    def _purge(self, vmid: int) -> None:
        with contextlib.suppress(Exception):
            self.runtime.destroy(vmid)
        for volid in self.storages.vm_volumes(vmid):
            self.storages.free(volid)
        for s in STORAGES:
            shutil.rmtree(self.storages.root / s.id / "snapshots" / str(vmid), ignore_errors=True)
            with contextlib.suppress(OSError):
                (self.storages.root / s.id / "images" / str(vmid)).rmdir()
        with self.locked():
            self.conf_path(vmid).unlink(missing_ok=True)

    # ------------------------------------------------------------------ config writes

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
        raw: dict[str, Any] = {"node": self.name, "vmid": vmid, **params}
        if delete:
            raw["delete"] = ",".join(delete)
        if revert:
            raw["revert"] = ",".join(revert)
        if digest:
            raw["digest"] = digest
        v = validate(method_schema("/nodes/{node}/lxc/{vmid}/config", "PUT"), raw)
        values = {k: str(x) for k, x in v.items() if k not in _SET_ONLY}
        deletes = [k for k in split_list(str(v.get("delete", "")))]
        reverts = [k for k in split_list(str(v.get("revert", "")))]
        if not values and not deletes and not reverts:
            raise PveError(500, "no options specified")
        with self.locked():
            c, text = self._read(vmid)
            old = c.main.options
            if old.get("lock"):
                raise PveError(500, f"CT is locked ({old['lock']})")
            if v.get("digest") and v["digest"] != confmod.digest(text):
                raise PveError(
                    500, "detected modified configuration - file changed by other user? Try again."
                )
            unpriv = is_true(old.get("unprivileged"))
            check_ct_modify_config_perm(self.auth, who, vmid, old, {}, deletes, unpriv)
            for opt in deletes:
                if lxc_option_schema(opt) is None:
                    raise param_error({"delete": f"unknown option '{opt}'"})
                if opt in values:
                    raise param_error(
                        {"delete": f"you can't use '-{opt}' and -delete {opt}' at the same time"}
                    )
            check_ct_modify_config_perm(self.auth, who, vmid, old, values, [], unpriv)
            opts = dict(old)
            description = c.main.description
            # A running container takes what PVE hot-plugs at once; the rest waits in
            # [pve:pending] until the next start (PVE's vmconfig_hotplug_pending).
            running = self._running(vmid)
            pending = {k: x for k, x in c.pending.options.items() if k != "delete"}
            pending_del = [d for d in split_list(c.pending.options.get("delete", ""))]
            for opt in reverts:
                if lxc_option_schema(opt) is None:
                    raise param_error({"revert": f"unknown option '{opt}'"})
                pending.pop(opt, None)
                pending_del = [d for d in pending_del if d != opt]
            for opt in deletes:
                if opt in ("memory", "rootfs", "ostype"):
                    raise PveError(500, f"unable to delete required option '{opt}'")
                if opt == "unprivileged":
                    raise PveError(500, "unable to delete read-only option: 'unprivileged'")
                if opt == "description":
                    description = None
                    continue
                pending.pop(opt, None)
                if running and not _hotplug(opt) and opt in opts:
                    pending_del = [*[d for d in pending_del if d != opt], opt]
                    continue
                gone = opts.pop(opt, None)
                if gone is not None and re.fullmatch(r"mp\d+", opt):
                    vol = _volume_of(opt, gone)
                    if mount_type(vol) == "volume":
                        opts[_unused_key(opts)] = vol
            owner = _mapped_root(c.main.raw, unpriv)
            log = _NullLog()
            for opt in sorted(values):
                value = values[opt]
                if opt == "unprivileged":
                    raise PveError(500, "unable to modify read-only option: 'unprivileged'")
                if opt == "description":
                    description = value.rstrip("\n") or None
                    continue
                if re.fullmatch(r"mp\d+", opt) or opt == "rootfs":
                    vol = _volume_of(opt, value)
                    if mount_type(vol) == "volume":
                        m = NEW_DISK.match(vol)
                        if m:
                            self.storages.get(m.group(1))
                        value = self._realise(vmid, opt, value, owner, log)
                pending_del = [d for d in pending_del if d != opt]
                if running and not _hotplug(opt):
                    pending[opt] = _normalise(opt, value)
                    continue
                pending.pop(opt, None)
                opts[opt] = _normalise(opt, value)
            if pending_del:
                pending["delete"] = ",".join(pending_del)
            main = Section(opts, c.main.raw, description)
            self._write(vmid, CtConf(main, replace(c.pending, options=pending), c.snapshots))

    def _apply_pending(self, vmid: int) -> None:
        """What vm_start does first: pending changes become the config."""
        with self.locked():
            c = self.load(vmid)
            if not c.pending.options:
                return
            opts = dict(c.main.options)
            for opt in split_list(c.pending.options.get("delete", "")):
                gone = opts.pop(opt, None)
                if gone is not None and re.fullmatch(r"mp\d+", opt):
                    vol = _volume_of(opt, gone)
                    if mount_type(vol) == "volume":
                        opts[_unused_key(opts)] = vol
            opts.update({k: x for k, x in c.pending.options.items() if k != "delete"})
            self._write(vmid, CtConf(replace(c.main, options=opts), Section(), c.snapshots))

    # ------------------------------------------------------------------ power

    def _need_conf(self, vmid: int) -> CtConf:
        return self.load(vmid)

    def _running(self, vmid: int) -> bool:
        return self.runtime.state(vmid) == "running"

    def _check_lock(self, vmid: int, allow: Sequence[str] = ()) -> None:
        lock = self.load(vmid).main.options.get("lock")
        if lock and lock not in allow:
            raise PveError(500, f"CT is locked ({lock})")

    def start(self, vmid: int, *, user: str | Identity = ROOT) -> str:
        who = as_identity(user)
        self._need_conf(vmid)
        if self._running(vmid):
            raise PveError(500, f"CT {vmid} already running")

        def body(log: TaskLog) -> None:
            self._check_lock(vmid, ("mounted",))
            self._do_start(vmid, log)

        return self._task("vzstart", vmid, who, body)

    def _do_start(self, vmid: int, log: TaskLog) -> None:
        if is_true(self.load(vmid).main.options.get("template")):
            raise PveError(500, "you can't start a CT if it's a template")
        self._apply_pending(vmid)
        c = self.load(vmid)
        opts, raw = dict(c.main.options), list(c.main.raw)
        try:
            self.runtime.start(vmid, opts, raw)
        except RuntimeError as e:
            # PVE's vm_start: the cause goes to the task log, the exit status is fixed.
            for line in str(e).splitlines():
                if line.strip() and not line.startswith("startup for container"):
                    log.write(line)
            raise PveError(500, f"startup for container '{vmid}' failed") from e

    def stop(self, vmid: int, *, user: str | Identity = ROOT) -> str:
        who = as_identity(user)
        self._need_conf(vmid)
        if not self._running(vmid):
            raise PveError(500, f"CT {vmid} not running")

        def body(log: TaskLog) -> None:
            self.runtime.stop(vmid)

        return self._task("vzstop", vmid, who, body)

    def shutdown(
        self, vmid: int, *, user: str | Identity = ROOT, timeout: int = 60, force: bool = False
    ) -> str:
        who = as_identity(user)
        self._need_conf(vmid)
        if not self._running(vmid):
            raise PveError(500, f"CT {vmid} not running")

        def body(log: TaskLog) -> None:
            self._check_lock(vmid)
            self.runtime.shutdown(vmid, timeout)
            if self._running(vmid):
                if not force:
                    raise PveError(500, "container did not stop")
                self.runtime.stop(vmid)

        return self._task("vzshutdown", vmid, who, body)

    def reboot(self, vmid: int, *, user: str | Identity = ROOT, timeout: int = 60) -> str:
        who = as_identity(user)
        self._need_conf(vmid)
        if not self._running(vmid):
            raise PveError(500, f"VM {vmid} not running")

        def body(log: TaskLog) -> None:
            self.runtime.shutdown(vmid, timeout)
            if self._running(vmid):
                self.runtime.stop(vmid)
            self._do_start(vmid, log)

        return self._task("vzreboot", vmid, who, body)

    def destroy(
        self, vmid: int, *, user: str | Identity = ROOT, force: bool = False, purge: bool = False
    ) -> str:
        who = as_identity(user)
        c = self._need_conf(vmid)
        if is_true(c.main.options.get("protection")):
            raise PveError(500, f"can't remove CT {vmid} - protection mode enabled")
        if c.main.options.get("lock"):
            raise PveError(500, f"CT is locked ({c.main.options['lock']})")
        msg = f"unable to destroy CT {vmid} - container is running"
        if self._running(vmid) and not force:
            raise PveError(500, msg)

        def body(log: TaskLog) -> None:
            if self._running(vmid):
                if not force:
                    raise PveError(500, msg)
                log.write(f"forced to stop CT {vmid} before destroying!")
                self.runtime.stop(vmid)
            self._update_main(vmid, lock="destroyed")
            self._purge(vmid)

        return self._task("vzdestroy", vmid, who, body)

    # ------------------------------------------------------------------ snapshots, backups
    # (the rules are in ``snapshots`` and ``vzdump``; these are the entry points)

    def snapshot_list(self, vmid: int) -> list[dict[str, Any]]:
        return snapshots.listing(self, vmid)

    def snapshot(
        self,
        vmid: int,
        snapname: str,
        *,
        user: str | Identity = ROOT,
        description: str | None = None,
    ) -> str:
        return snapshots.create(self, vmid, snapname, as_identity(user), description)

    def delete_snapshot(self, vmid: int, snapname: str, *, user: str | Identity = ROOT) -> str:
        return snapshots.delete(self, vmid, snapname, as_identity(user))

    def rollback(
        self, vmid: int, snapname: str, *, user: str | Identity = ROOT, start: bool = False
    ) -> str:
        return snapshots.rollback(self, vmid, snapname, as_identity(user), start)

    def set_snapshot_config(self, vmid: int, snapname: str, description: str | None) -> None:
        snapshots.update_description(self, vmid, snapname, description)

    def vzdump(self, params: Mapping[str, Any], *, user: str | Identity = ROOT) -> str:
        return vzdump.backup(self, params, as_identity(user))

    def vzdump_config(self, volume: str, *, user: str | Identity = ROOT) -> str:
        return vzdump.extract_config(self, volume, as_identity(user))

    # Names the day-two modules use (stable while the private ones move).
    def read_conf(self, vmid: int) -> tuple[CtConf, str]:
        return self._read(vmid)

    def write_conf(self, vmid: int, c: CtConf) -> None:
        self._write(vmid, c)

    def start_task(self, ttype: str, vmid: int | str, who: Identity, body: Any) -> str:
        return self._task(ttype, vmid, who, body)

    def is_running(self, vmid: int) -> bool:
        return self._running(vmid)

    def start_now(self, vmid: int, log: TaskLog) -> None:
        self._do_start(vmid, log)

    def realise(self, vmid: int, key: str, value: str, owner: int | None, log: TaskLog) -> str:
        return self._realise(vmid, key, value, owner, log)

    def purge(self, vmid: int) -> None:
        self._purge(vmid)

    # ------------------------------------------------------------------ tasks

    def task_list(self, who: Identity, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        out = []
        vmid = params.get("vmid")
        source = params.get("source", "archive")
        for t in self.tasks.all():
            if not _task_visible(self.auth, who, t["user"], self.name):
                continue
            if vmid is not None and t["id"] != str(vmid):
                continue
            if params.get("typefilter") and t["type"] != params["typefilter"]:
                continue
            if params.get("userfilter") and params["userfilter"] not in t["user"]:
                continue
            if params.get("errors") and t.get("exitstatus", "OK") == "OK":
                continue
            if source == "active" and t["status"] != "running":
                continue
            if source == "archive" and t["status"] == "running":
                continue
            if params.get("since") is not None and t["starttime"] < int(params["since"]):
                continue
            if params.get("until") is not None and t["starttime"] > int(params["until"]):
                continue
            item = dict(t)
            if t["status"] == "stopped":
                item["status"] = t["exitstatus"]
            out.append(item)
        start = int(params.get("start", 0))
        limit = int(params.get("limit", 50))
        return out[start : start + limit] if limit else out[start:]

    def _task_check(self, who: Identity, upid: str, priv: str = "Sys.Audit") -> Upid:
        """pve-manager's Tasks.pm: a bad UPID or an unknown task is a 400; someone else's
        task needs ``priv`` on the node."""
        u = Upid.parse(upid)
        if not _task_visible(self.auth, who, u.user, self.name, priv):
            raise permission_denied(f"/nodes/{self.name}, {priv}")
        return u

    def task_status(self, who: Identity, upid: str) -> dict[str, Any]:
        u = Upid.parse(upid)
        if u.node != self.name or not self.tasks.exists(upid):
            raise param_error({"upid": "no such task"})
        self._task_check(who, upid)
        return self.tasks.status(upid)

    def task_log(
        self, who: Identity, upid: str, start: int = 0, limit: int = 50
    ) -> tuple[list[dict[str, Any]], int]:
        self._task_check(who, upid)
        return self.tasks.log(upid, start, limit)

    # ------------------------------------------------------------------ lab control

    def reset(self) -> None:
        """Remove every container (stopping it), volume and task: a fresh node."""
        for vmid in self.vmids():
            with contextlib.suppress(Exception):
                if self._running(vmid):
                    self.runtime.stop(vmid)
            self._purge(vmid)
        shutil.rmtree(self.tasks.root, ignore_errors=True)
        self.reset_faults()
        self.packages.reset()

    def new_token(self, tokenid: str, *, privsep: bool = False) -> str:
        return self.auth.add_token(tokenid, secrets.token_hex(16), privsep=privsep)


class _NullLog(TaskLog):
    def __init__(self) -> None:
        self.warnings = 0

    def write(self, line: str) -> None:
        return None


def _task_visible(
    auth: AuthStore, who: Identity, owner: str, node: str, priv: str = "Sys.Audit"
) -> bool:
    """A user sees its tasks and its tokens'; a token its own; others need ``priv`` on the node."""
    if owner == who.authid or (who.token is None and owner.partition("!")[0] == who.user):
        return True
    return auth.allowed(who, f"/nodes/{node}", priv)


# Options a running container takes at once (PVE: $LXC_FASTPLUG_OPTIONS and the hot-plug
# branches of vmconfig_hotplug_pending); everything else waits for the next start.
_FASTPLUG = frozenset({
    "description", "onboot", "startup", "protection", "hostname", "hookscript", "cores", "tags",
    "lock", "cpulimit", "cpuunits", "memory", "swap",
})  # fmt: skip


def _hotplug(opt: str) -> bool:
    return opt in _FASTPLUG or re.fullmatch(r"(net|mp|unused)\d+", opt) is not None


def _cgroup_memory(pid: int, root: Path = Path("/sys/fs/cgroup")) -> int:
    """Bytes charged to the container's memory cgroup (v1 or v2), found from its init."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        _, controllers, path = line.split(":", 2)
        parts = path.strip("/").split("/")
        top = next((i for i, p in enumerate(parts) if p.startswith("lxc.payload")), None)
        if top is not None:
            path = "/".join(parts[: top + 1])
        if "memory" in controllers.split(","):
            candidates = [root / "memory" / path / "memory.usage_in_bytes"]
        elif controllers == "":
            candidates = [
                root / path / "memory.current",
                root / "unified" / path / "memory.current",
            ]
        else:
            continue
        for f in candidates:
            try:
                return int(f.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return 0


def _process_uptime(pid: int) -> int:
    """Seconds since ``pid`` started (the container's init), from /proc."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return 0
    return max(0, int(boot - ticks / os.sysconf("SC_CLK_TCK")))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _volume_of(key: str, value: str) -> str:
    sch = lxc_option_schema(key)
    assert sch is not None
    try:
        return parse_property_string(sch["format"], value).get("volume", "")
    except ValueError:
        return value.split(",", 1)[0]


def _unused_key(opts: Mapping[str, str]) -> str:
    n = 0
    while f"unused{n}" in opts:
        n += 1
    return f"unused{n}"


def _ostype(template: str) -> str:
    name = template.rpartition("/")[2]
    for os_name in ("debian", "ubuntu", "centos", "fedora", "alpine", "archlinux", "opensuse"):
        if name.startswith(os_name):
            return os_name
    return "unmanaged"


def _random_mac() -> str:
    tail = secrets.token_bytes(3)
    return "BC:24:11:" + ":".join(f"{b:02X}" for b in tail)


def _normalise(key: str, value: str) -> str:
    """The value as PVE stores it (features sorted, tags lowercased and sorted, net0 with
    ``type=veth`` and a ``hwaddr``)."""
    if key == "features":
        flags = features_of(value)
        return ",".join(f"{k}={flags[k]}" for k in sorted(flags))
    if key == "tags":
        tags = sorted({t.lower() for t in re.split(r"[;,\s]+", value) if t})
        return ";".join(tags)
    if re.fullmatch(r"net\d+", key):
        sch = lxc_option_schema(key)
        assert sch is not None
        parts = parse_property_string(sch["format"], value)
        parts.setdefault("hwaddr", _random_mac())
        parts["type"] = "veth"
        order = ["name", *sorted(k for k in parts if k != "name")]
        return ",".join(f"{k}={parts[k]}" for k in order if k in parts)
    return value


def _typed(key: str, value: str) -> Any:
    """Config values as PVE's JSON returns them: integers and numbers as numbers."""
    sch = lxc_option_schema(key)
    kind = sch.get("type") if sch else None
    if key in ("snaptime",) or kind in ("integer", "boolean"):
        try:
            return int(value)
        except ValueError:
            return value
    if kind == "number":
        try:
            f = float(value)
        except ValueError:
            return value
        return int(f) if f == int(f) else f
    return value
