"""``POST /nodes/{node}/lxc`` (``pct create``): pve-container's create_vm checks, the config
locked ``create``, then a ``vzcreate`` task that makes the volumes and the root file system
(and starts the CT with ``start=1``). ``restore=1`` is vzdump's restore."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pvelab.backend import vzdump
from pvelab.backend.auth import Identity
from pvelab.backend.conf import CtConf, Section
from pvelab.backend.errors import PveError, permission_denied
from pvelab.backend.guests import Guests
from pvelab.backend.options import mapped_root, normalise
from pvelab.backend.perms import check_ct_modify_config_perm, mount_type, mount_volume
from pvelab.backend.schema import method_schema, validate
from pvelab.backend.tasks import TaskLog

DEFAULT_IDMAP = ("u 0 100000 65536", "g 0 100000 65536")
_MOUNT_KEY = re.compile(r"^(rootfs|mp\d+)$")
# Parameters of create that are not container options.
_CREATE_ONLY = frozenset({
    "node", "vmid", "ostemplate", "storage", "password", "ssh-public-keys", "start", "restore",
    "force", "unique", "pool", "bwlimit", "ignore-unpack-errors", "ha-managed",
})  # fmt: skip


@dataclass(frozen=True)
class GuestSetup:
    """What create writes into the new root file system (PVE's LXC setup)."""

    ssh_keys: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class NewCt:
    """A checked create request: what the task makes."""

    vmid: int
    ostemplate: str
    template: Path
    options: dict[str, str]
    mounts: dict[str, str]
    description: str | None
    guest: GuestSetup
    unprivileged: bool


def create_ct(guests: Guests, params: Mapping[str, Any], who: Identity) -> str:
    v = validate(method_schema("/nodes/{node}/lxc", "POST"), {"node": guests.name, **params})
    if v.get("restore"):
        return vzdump.restore(guests, v, who)
    new = _checked(guests, v, who)
    vmid = new.vmid
    with guests.locked():
        _refuse_existing(guests, vmid)
        guests.store.write(vmid, CtConf(Section({"lock": "create"})))
    start = bool(v.get("start"))

    def body(log: TaskLog) -> None:
        try:
            _make(guests, new, log)
        except Exception:
            guests.purge(vmid)
            raise
        if start:
            guests.start_now(vmid, log)

    # PVE's create_vm: on error, destroy_disks + destroy_config (no lock left behind)
    return guests.worker.start("vzcreate", vmid, who, body, on_fault=lambda: guests.purge(vmid))


def _refuse_existing(guests: Guests, vmid: int) -> None:
    if guests.store.path(vmid).exists():
        raise PveError(500, f"CT {vmid} already exists on node '{guests.name}'")


def _checked(guests: Guests, v: Mapping[str, Any], who: Identity) -> NewCt:
    """create_vm's checks before anything is written, and the options to store."""
    vmid = int(v["vmid"])
    unprivileged = bool(v.get("unprivileged", 1))
    if not unprivileged:
        guests.auth.require(who, "/", "Sys.Modify")
    _refuse_existing(guests, vmid)
    if v.get("pool"):  # the lab has no pools
        raise permission_denied(f"pool '{v['pool']}' does not exist")
    if v.get("start"):
        guests.auth.require(who, f"/vms/{vmid}", "VM.PowerMgmt")
    if not guests.auth.allowed(who, f"/vms/{vmid}", "VM.Allocate"):
        raise permission_denied()
    ostemplate = str(v["ostemplate"])
    template = _check_template(guests, who, ostemplate)
    opts = {k: str(x) for k, x in v.items() if k not in _CREATE_ONLY}
    opts.pop("unprivileged", None)
    check_ct_modify_config_perm(guests.auth, who, vmid, None, opts, [], unprivileged)
    mounts = _mounts(guests, who, opts, str(v.get("storage", "local")))
    final = {k: normalise(k, x) for k, x in opts.items()}
    final.setdefault("hostname", f"CT{vmid}")
    final.setdefault("memory", "512")
    final.setdefault("swap", "512")
    final["arch"] = str(v.get("arch", "amd64"))
    final["ostype"] = str(v.get("ostype") or _ostype(ostemplate))
    if unprivileged:
        final["unprivileged"] = "1"
    description = final.pop("description", None)
    guest = GuestSetup(
        str(v.get("ssh-public-keys", "")) or None, str(v.get("password", "")) or None
    )
    return NewCt(
        vmid, ostemplate, template, final, mounts,
        description.rstrip("\n") or None if description else None, guest, unprivileged,
    )  # fmt: skip


def _mounts(guests: Guests, who: Identity, opts: dict[str, str], storage: str) -> dict[str, str]:
    """rootfs and mpN taken out of ``opts`` (``8`` means ``<storage>:8``; rootfs defaults to
    4 GiB), with their storage privileges checked; bind mounts only for root."""
    mounts: dict[str, str] = {}
    for k in [k for k in opts if _MOUNT_KEY.match(k)]:
        value = opts.pop(k)
        mounts[k] = f"{storage}:{value}" if re.fullmatch(r"\d+(\.\d+)?", value) else value
    if mounts and "rootfs" not in mounts:
        raise PveError(500, "mount points configured, but 'rootfs' not set - aborting")
    if "rootfs" not in mounts:
        mounts["rootfs"] = f"{storage}:4"
    for k, value in mounts.items():
        vol = mount_volume(k, value)
        if mount_type(vol) != "volume":
            if not who.is_root:
                raise PveError(500, "Only root can pass arbitrary filesystem paths.")
        else:
            sid = vol.partition(":")[0]
            guests.storages.get(sid)
            guests.auth.require(who, f"/storage/{sid}", "Datastore.AllocateSpace")
    return mounts


def _check_template(guests: Guests, who: Identity, ostemplate: str) -> Path:
    sid, colon, _ = ostemplate.partition(":")
    if not colon:
        if not who.is_root:
            raise PveError(500, "Only root can pass arbitrary filesystem paths.")
        return Path(ostemplate)
    path = guests.storages.template_path(ostemplate)
    guests.auth.require(
        who, f"/storage/{sid}", "Datastore.AllocateSpace", "Datastore.Audit", any_=True
    )
    return path


def _make(guests: Guests, new: NewCt, log: TaskLog) -> None:
    """The task's work: volumes, the extracted template, root's keys and password, the
    config without its ``create`` lock."""
    vmid = new.vmid
    if not new.template.is_file():
        raise PveError(
            500, f"unable to create CT {vmid} - volume '{new.ostemplate}' does not exist"
        )
    final = dict(new.options)
    owner = mapped_root((), new.unprivileged)
    for k in sorted(new.mounts, key=lambda k: (k != "rootfs", k)):
        final[k] = guests.realise(vmid, k, new.mounts[k], owner, log)
    rootfs = guests.mount_path(final["rootfs"])
    log.write(f"extracting archive '{new.template}'")
    idmap = DEFAULT_IDMAP if new.unprivileged else ()
    guests.runtime.create_rootfs(vmid, new.template, rootfs, idmap, new.unprivileged)
    if new.guest.ssh_keys:
        _write_keys(rootfs, new.guest.ssh_keys, owner)
    if new.guest.password:
        _set_root_password(rootfs, new.guest.password, log)
    log.write("Total bytes written: (extracted in the container's user namespace)")
    with guests.locked():
        c = guests.load(vmid)
        guests.store.write(vmid, replace(c, main=Section(final, (), new.description)))


def _write_keys(rootfs: Path, keys: str, owner: int | None) -> None:
    ssh = rootfs / "root" / ".ssh"
    ssh.mkdir(parents=True, exist_ok=True)
    (ssh / "authorized_keys").write_text(keys.rstrip("\n") + "\n")
    if owner is not None and os.geteuid() == 0:
        for p in (ssh, ssh / "authorized_keys"):
            os.chown(p, owner, owner)
    ssh.chmod(0o700)


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
    out = []
    for line in shadow.read_text().splitlines():
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


def _ostype(template: str) -> str:
    name = template.rpartition("/")[2]
    for os_name in ("debian", "ubuntu", "centos", "fedora", "alpine", "archlinux", "opensuse"):
        if name.startswith(os_name):
            return os_name
    return "unmanaged"
