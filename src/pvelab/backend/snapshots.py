"""Container snapshots as pve-container and pve-guest-common (AbstractConfig) make them.

A snapshot is a ``[name]`` section of the CT config (the config's options at that time,
``snaptime``, ``parent``, the description as ``#`` lines) plus one copy per volume in
``<lab>/storage/<sid>/snapshots/<vmid>/<name>/<volname>/``. PVE's rules, in its words:

- ``current`` and ``vzdump`` are reserved names (refused before the task starts);
- ``snapshot feature is not available`` when any mount point cannot be snapshotted: a bind
  or device mount point (a host path has no storage snapshot), or a volume on a storage
  that cannot snapshot (``local-dir`` in the lab). The internal ``vzdump`` snapshot (backup
  mode ``snapshot``) only looks at the mount points a backup includes (rootfs and volumes
  with ``backup=1``), so bind mounts do not block a backup;
- a template, a lock, a name in use are refused; while running the task holds the lock
  ``snapshot`` and the section ``snapstate: prepare``;
- rollback stops a running CT first (hard stop), restores the volumes and the config of
  the snapshot (the current description and ``unusedN`` stay), sets ``parent``, and starts
  it again only with ``start=1``; ``protection=1`` does not stop a rollback or a snapshot
  (pve-container has no ``check_protection`` there: protection guards removal only);
- delete removes the copies and the section and re-links ``parent``.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvelab.backend import conf as confmod
from pvelab.backend.conf import CtConf, Section
from pvelab.backend.errors import PveError
from pvelab.backend.perms import mount_type, mount_volume
from pvelab.backend.schema import is_true
from pvelab.backend.storage import copy_tree
from pvelab.backend.tasks import TaskLog

if TYPE_CHECKING:
    from pvelab.backend.auth import Identity
    from pvelab.backend.guests import Guests

MOUNT_KEY = re.compile(r"^(rootfs|mp\d+)$")
RESERVED = ("current", "vzdump")
#: keys a snapshot does not copy from the config (AbstractConfig::__snapshot_copy_config)
_NOT_COPIED = frozenset({"snapstate", "snaptime", "vmstate", "lock", "digest", "description"})


def _copyable(key: str) -> bool:
    return key not in _NOT_COPIED and not re.fullmatch(r"unused\d+", key)


def mounts(opts: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """``(key, volume, type)`` of rootfs and every mpN (``volume``/``bind``/``device``)."""
    out = []
    for k, v in sorted(opts.items(), key=lambda kv: (kv[0] != "rootfs", kv[0])):
        if MOUNT_KEY.match(k):
            vol = mount_volume(k, v)
            out.append((k, vol, mount_type(vol)))
    return out


def backup_enabled(key: str, value: str) -> bool:
    """PVE's ``mountpoint_backup_enabled``: rootfs always, a volume mpN with ``backup=1``."""
    if key == "rootfs":
        return True
    vol = mount_volume(key, value)
    if mount_type(vol) != "volume":
        return False
    return any(part == "backup=1" for part in value.split(",")[1:])


def snapshot_volumes(opts: Mapping[str, str], backup_only: bool = False) -> list[str]:
    """The volume ids a snapshot copies (backup-enabled ones only for ``vzdump``)."""
    return [vol for k, vol, kind in mounts(opts) if kind == "volume"
            and (not backup_only or backup_enabled(k, opts[k]))]  # fmt: skip


def has_snapshot_feature(guests: Guests, opts: Mapping[str, str], backup_only: bool) -> bool:
    """PVE::LXC::Config->has_feature('snapshot', ...)."""
    for k, vol, _ in mounts(opts):
        if backup_only and not backup_enabled(k, opts[k]):
            continue
        if not guests.storages.snapshot_capable(vol):
            return False
    return True


def snap_path(guests: Guests, vmid: int, snap: str, volid: str) -> Path:
    sid, _, name = volid.partition(":")
    return guests.storages.snapshot_dir(sid, vmid, snap) / name


def _drop_copies(guests: Guests, vmid: int, snap: str, opts: Mapping[str, str]) -> None:
    for volid in snapshot_volumes(opts):
        path = snap_path(guests, vmid, snap, volid)
        shutil.rmtree(path, ignore_errors=True)
        for empty in (path.parent, path.parent.parent):  # <snap>/, then <vmid>/
            with contextlib.suppress(OSError):
                empty.rmdir()


# ------------------------------------------------------------------ create


def _prepare(guests: Guests, vmid: int, snapname: str, description: str | None) -> dict[str, str]:
    with guests.locked():
        c = guests.load(vmid)
        o = c.main.options
        if is_true(o.get("template")):
            raise PveError(500, "you can't take a snapshot if it's a template")
        if o.get("lock"):
            raise PveError(500, f"CT is locked ({o['lock']})")
        if snapname in c.snapshots:
            raise PveError(500, f"snapshot name '{snapname}' already used")
        if not has_snapshot_feature(guests, o, snapname == "vzdump"):
            raise PveError(500, "snapshot feature is not available")
        snap = {k: v for k, v in o.items() if _copyable(k)}
        snap["snapstate"] = "prepare"
        snap["snaptime"] = str(int(time.time()))
        snaps = dict(c.snapshots)
        snaps[snapname] = Section(snap, c.main.raw, description or None)
        main = replace(c.main, options={**o, "lock": "snapshot"})
        guests.store.write(vmid, CtConf(main, c.pending, snaps))
        return snap


def _commit(guests: Guests, vmid: int, snapname: str) -> None:
    with guests.locked():
        c = guests.load(vmid)
        if c.main.options.get("lock") != "snapshot":
            raise PveError(500, "missing snapshot lock")
        sec = c.snapshots.get(snapname)
        if sec is None:
            raise PveError(500, f"snapshot '{snapname}' does not exist")
        snaps = dict(c.snapshots)
        snaps[snapname] = replace(
            sec, options={k: v for k, v in sec.options.items() if k != "snapstate"}
        )
        main = {k: v for k, v in c.main.options.items() if k != "lock"}
        main["parent"] = snapname
        guests.store.write(vmid, CtConf(replace(c.main, options=main), c.pending, snaps))


def _abort(guests: Guests, vmid: int, snapname: str, opts: Mapping[str, str]) -> None:
    """``snapshot create failed: starting cleanup``: copies, section and lock go."""
    _drop_copies(guests, vmid, snapname, opts)
    with guests.locked():
        c = guests.load(vmid)
        snaps = {n: s for n, s in c.snapshots.items() if n != snapname}
        main = {k: v for k, v in c.main.options.items() if k != "lock"}
        guests.store.write(vmid, CtConf(replace(c.main, options=main), c.pending, snaps))


def take(guests: Guests, vmid: int, snapname: str, log: TaskLog, description: str | None) -> None:
    """The work of a ``vzsnapshot`` task (also vzdump's internal ``vzdump`` snapshot)."""
    snap = _prepare(guests, vmid, snapname, description)
    try:
        for volid in snapshot_volumes(snap, backup_only=snapname == "vzdump"):
            log.write(f"snapshotting '{volid}' ({guests.storages.get(volid.split(':')[0]).type})")
            copy_tree(guests.storages.volume_path(volid), snap_path(guests, vmid, snapname, volid))
    except Exception:
        log.write("snapshot create failed: starting cleanup")
        _abort(guests, vmid, snapname, snap)
        raise
    _commit(guests, vmid, snapname)


def create(guests: Guests, vmid: int, snapname: str, who: Identity, description: str | None) -> str:
    if snapname in RESERVED:
        raise PveError(500, f"unable to use snapshot name '{snapname}' (reserved name)")
    guests.load(vmid)
    return guests.worker.start(
        "vzsnapshot", vmid, who, lambda log: take(guests, vmid, snapname, log, description)
    )


# ------------------------------------------------------------------ delete


def remove(guests: Guests, vmid: int, snapname: str, log: TaskLog, *, locked_by: str) -> None:
    """AbstractConfig::snapshot_delete: ``snapstate: delete``, the copies, then the section."""
    with guests.locked():
        c = guests.load(vmid)
        if snapname not in c.snapshots:
            raise PveError(500, f"snapshot '{snapname}' does not exist")
        if is_true(c.main.options.get("template")):
            raise PveError(500, "you can't delete a snapshot if vm is a template")
    if locked_by == "snapshot-delete":
        guests.store.set_lock(vmid, "snapshot-delete")
    with guests.locked():
        c = guests.load(vmid)
        sec = c.snapshots[snapname]
        snaps = dict(c.snapshots)
        snaps[snapname] = replace(sec, options={**sec.options, "snapstate": "delete"})
        guests.store.write(vmid, CtConf(c.main, c.pending, snaps))
    _drop_copies(guests, vmid, snapname, sec.options)
    log.write(f"removed the copies of snapshot '{snapname}'")
    parent = sec.options.get("parent")

    def relink(s: Section) -> Section:
        if s.options.get("parent") != snapname:
            return s
        o = {k: v for k, v in s.options.items() if k != "parent"}
        if parent:
            o["parent"] = parent
        return replace(s, options=o)

    with guests.locked():
        c = guests.load(vmid)
        snaps = {n: relink(s) for n, s in c.snapshots.items() if n != snapname}
        main = relink(c.main)
        main = replace(main, options={k: v for k, v in main.options.items() if k != "lock"})
        guests.store.write(vmid, CtConf(main, c.pending, snaps))


def delete(guests: Guests, vmid: int, snapname: str, who: Identity) -> str:
    guests.load(vmid)
    return guests.worker.start(
        "vzdelsnapshot",
        vmid,
        who,
        lambda log: remove(guests, vmid, snapname, log, locked_by="snapshot-delete"),
    )


# ------------------------------------------------------------------ rollback


def _rollback(guests: Guests, vmid: int, snapname: str, log: TaskLog, start: bool) -> None:
    with guests.locked():
        c = guests.load(vmid)
        if is_true(c.main.options.get("template")):
            raise PveError(500, "you can't rollback if vm is a template")
        snap = c.snapshots.get(snapname)
        if snap is None:
            raise PveError(500, f"snapshot '{snapname}' does not exist")
        if snap.options.get("snapstate"):
            raise PveError(
                500,
                "unable to rollback to incomplete snapshot "
                f"(snapstate = {snap.options['snapstate']})",
            )
        if c.main.options.get("lock"):
            raise PveError(500, f"CT is locked ({c.main.options['lock']})")
        if guests.is_running(vmid):
            log.write(f"stopping CT {vmid}")
            guests.runtime.stop(vmid)
        guests.store.write(vmid, replace(c, main=replace(
            c.main, options={**c.main.options, "lock": "rollback"})))  # fmt: skip
    for volid in snapshot_volumes(snap.options):
        src = snap_path(guests, vmid, snapname, volid)
        dst = guests.storages.volume_path(volid)
        log.write(f"rolling back '{volid}' to snapshot '{snapname}'")
        shutil.rmtree(dst, ignore_errors=True)
        copy_tree(src, dst)
    with guests.locked():
        c = guests.load(vmid)
        if c.main.options.get("lock") != "rollback":
            raise PveError(500, "got wrong lock")
        opts = {k: v for k, v in c.main.options.items() if re.fullmatch(r"unused\d+", k)}
        in_snap = set(snapshot_volumes(snap.options))
        for _, vol, kind in mounts(c.main.options):  # volumes only the current config has
            if kind == "volume" and vol not in in_snap and vol not in opts.values():
                n = 0
                while f"unused{n}" in opts:
                    n += 1
                opts[f"unused{n}"] = vol
        opts.update({k: v for k, v in snap.options.items() if _copyable(k)})
        opts["parent"] = snapname
        main = Section(opts, snap.raw, c.main.description)
        guests.store.write(vmid, CtConf(main, Section(), c.snapshots))
    if start:
        guests.start_now(vmid, log)


def rollback(guests: Guests, vmid: int, snapname: str, who: Identity, start: bool) -> str:
    guests.load(vmid)
    return guests.worker.start(
        "vzrollback", vmid, who, lambda log: _rollback(guests, vmid, snapname, log, start)
    )


# ------------------------------------------------------------------ reads and metadata


def listing(guests: Guests, vmid: int) -> list[dict[str, Any]]:
    c, text = guests.store.read(vmid)
    out: list[dict[str, Any]] = []
    for name, sec in c.snapshots.items():
        item: dict[str, Any] = {
            "name": name, "snaptime": int(sec.options.get("snaptime", "0") or 0),
            "description": sec.description or "",
        }  # fmt: skip
        if sec.options.get("parent"):
            item["parent"] = sec.options["parent"]
        if sec.options.get("snapstate"):
            item["snapstate"] = sec.options["snapstate"]
        out.append(item)
    cur: dict[str, Any] = {
        "name": "current", "description": "You are here!", "digest": confmod.digest(text),
        "running": 1 if guests.is_running(vmid) else 0,
    }  # fmt: skip
    if c.main.options.get("parent"):
        cur["parent"] = c.main.options["parent"]
    out.append(cur)
    return out


def update_description(guests: Guests, vmid: int, snapname: str, description: str | None) -> None:
    """``PUT .../snapshot/{snap}/config``: only the description; a lock refuses."""
    if description is None:
        return
    with guests.locked():
        c = guests.load(vmid)
        if c.main.options.get("lock"):
            raise PveError(500, f"CT is locked ({c.main.options['lock']})")
        sec = c.snapshots.get(snapname)
        if sec is None:
            raise PveError(500, f"snapshot '{snapname}' does not exist")
        snaps = dict(c.snapshots)
        snaps[snapname] = replace(sec, description=description.rstrip("\n") or None)
        guests.store.write(vmid, CtConf(c.main, c.pending, snaps))
