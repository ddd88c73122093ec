"""A container's config through the API: ``GET .../config``, ``GET .../pending`` and
``PUT .../config`` (``pct set``) with pve-container's checks and hot-plug rules."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pvelab.backend import conf as confmod
from pvelab.backend.auth import Identity
from pvelab.backend.conf import CtConf, Section
from pvelab.backend.errors import PveError, param_error
from pvelab.backend.guests import Guests
from pvelab.backend.options import MP_KEY, drop_option, hotplug, mapped_root, normalise, typed
from pvelab.backend.perms import NEW_DISK, check_ct_modify_config_perm, mount_type, mount_volume
from pvelab.backend.schema import is_true, lxc_option_schema, method_schema, split_list, validate
from pvelab.backend.tasks import TaskLog

_SET_ONLY = frozenset({"node", "vmid", "digest", "delete", "revert"})


def get_config(
    guests: Guests, vmid: int, *, current: bool = False, snapshot: str | None = None
) -> dict[str, Any]:
    c, text = guests.store.read(vmid)
    sec = c.main
    if snapshot is not None:
        if snapshot not in c.snapshots:
            raise PveError(500, f"snapshot '{snapshot}' does not exist")
        sec = c.snapshots[snapshot]
    out: dict[str, Any] = {k: typed(k, v) for k, v in sec.options.items()}
    if not current and snapshot is None:
        for k, v in c.pending.options.items():
            if k != "delete":
                out[k] = typed(k, v)
        for k in split_list(c.pending.options.get("delete", "")):
            out.pop(k, None)
    if sec.description is not None:
        out["description"] = sec.description + "\n"
    if sec.raw:
        out["lxc"] = [[k, v] for k, v in sec.raw]
    out["digest"] = confmod.digest(text)
    return out


def pending(guests: Guests, vmid: int) -> list[dict[str, Any]]:
    """PVE's ``config_with_pending_array``: every key of the config (``digest`` too,
    as ``load_config`` adds it), its pending value or delete, the pending-only keys."""
    c, text = guests.store.read(vmid)
    out: list[dict[str, Any]] = [{"key": "digest", "value": confmod.digest(text)}]
    keys = set(c.main.options) | set(c.pending.options) - {"delete"}
    deleted = set(split_list(c.pending.options.get("delete", "")))
    for k in sorted(keys):
        item: dict[str, Any] = {"key": k}
        if k in c.main.options:
            item["value"] = typed(k, c.main.options[k])
        if k in c.pending.options:
            item["pending"] = typed(k, c.pending.options[k])
        if k in deleted:
            item["delete"] = 1
        out.append(item)
    if c.main.description is not None:
        out.append({"key": "description", "value": c.main.description + "\n"})
    return out


@dataclass
class _Edit:
    """The config being changed: current options, description, pending values and deletes.
    A running CT takes what PVE hot-plugs at once; the rest waits in ``[pve:pending]``
    until the next start (PVE's vmconfig_hotplug_pending)."""

    opts: dict[str, str]
    description: str | None
    running: bool
    pending: dict[str, str] = field(default_factory=dict)
    pending_del: list[str] = field(default_factory=list)

    def revert(self, opt: str) -> None:
        if lxc_option_schema(opt) is None:
            raise param_error({"revert": f"unknown option '{opt}'"})
        self.pending.pop(opt, None)
        self.pending_del = [d for d in self.pending_del if d != opt]

    def delete(self, opt: str) -> None:
        if opt in ("memory", "rootfs", "ostype"):
            raise PveError(500, f"unable to delete required option '{opt}'")
        if opt == "unprivileged":
            raise PveError(500, "unable to delete read-only option: 'unprivileged'")
        if opt == "description":
            self.description = None
            return
        self.pending.pop(opt, None)
        if self.running and not hotplug(opt) and opt in self.opts:
            self.pending_del = [*[d for d in self.pending_del if d != opt], opt]
            return
        drop_option(self.opts, opt)

    def set(self, opt: str, value: str) -> None:
        if opt == "unprivileged":
            raise PveError(500, "unable to modify read-only option: 'unprivileged'")
        if opt == "description":
            self.description = value.rstrip("\n") or None
            return
        self.pending_del = [d for d in self.pending_del if d != opt]
        if self.running and not hotplug(opt):
            self.pending[opt] = normalise(opt, value)
            return
        self.pending.pop(opt, None)
        self.opts[opt] = normalise(opt, value)


def set_config(
    guests: Guests,
    vmid: int,
    params: Mapping[str, Any],
    who: Identity,
    *,
    delete: Sequence[str] = (),
    digest: str | None = None,
    revert: Sequence[str] = (),
) -> None:
    """``PUT /config`` (and ``pct set``): PVE's checks, then the change."""
    raw: dict[str, Any] = {"node": guests.name, "vmid": vmid, **params}
    for key, listed in (("delete", delete), ("revert", revert)):
        if listed:
            raw[key] = ",".join(listed)
    if digest:
        raw["digest"] = digest
    v = validate(method_schema("/nodes/{node}/lxc/{vmid}/config", "PUT"), raw)
    values = {k: str(x) for k, x in v.items() if k not in _SET_ONLY}
    deletes = split_list(str(v.get("delete", "")))
    reverts = split_list(str(v.get("revert", "")))
    if not values and not deletes and not reverts:
        raise PveError(500, "no options specified")
    with guests.locked():
        c, text = guests.store.read(vmid)
        _check(guests, who, vmid, c, text, v.get("digest"), values, deletes)
        edit = _Edit(
            dict(c.main.options), c.main.description, guests.is_running(vmid),
            {k: x for k, x in c.pending.options.items() if k != "delete"},
            split_list(c.pending.options.get("delete", "")),
        )  # fmt: skip
        for opt in reverts:
            edit.revert(opt)
        for opt in deletes:
            edit.delete(opt)
        owner = mapped_root(c.main.raw, is_true(c.main.options.get("unprivileged")))
        for opt in sorted(values):
            edit.set(opt, _new_volume(guests, vmid, opt, values[opt], owner))
        if edit.pending_del:
            edit.pending["delete"] = ",".join(edit.pending_del)
        main = Section(edit.opts, c.main.raw, edit.description)
        guests.store.write(
            vmid, CtConf(main, replace(c.pending, options=edit.pending), c.snapshots)
        )


def _check(  # noqa: PLR0917
    guests: Guests,
    who: Identity,
    vmid: int,
    c: CtConf,
    text: str,
    digest: Any,
    values: Mapping[str, str],
    deletes: Sequence[str],
) -> None:
    """The lock, the digest, the privileges of the change, unknown and doubled deletes."""
    old = c.main.options
    if old.get("lock"):
        raise PveError(500, f"CT is locked ({old['lock']})")
    if digest and digest != confmod.digest(text):
        raise PveError(
            500, "detected modified configuration - file changed by other user? Try again."
        )
    unpriv = is_true(old.get("unprivileged"))
    check_ct_modify_config_perm(guests.auth, who, vmid, old, {}, deletes, unpriv)
    for opt in deletes:
        if lxc_option_schema(opt) is None:
            raise param_error({"delete": f"unknown option '{opt}'"})
        if opt in values:
            raise param_error(
                {"delete": f"you can't use '-{opt}' and -delete {opt}' at the same time"}
            )
    check_ct_modify_config_perm(guests.auth, who, vmid, old, values, [], unpriv)


def _new_volume(guests: Guests, vmid: int, opt: str, value: str, owner: int | None) -> str:
    """A rootfs/mpN value that asks for a new volume (``local-lvm:8``) gets it now."""
    if not (MP_KEY.fullmatch(opt) or opt == "rootfs"):
        return value
    vol = mount_volume(opt, value)
    if mount_type(vol) != "volume":
        return value
    m = NEW_DISK.match(vol)
    if m:
        guests.storages.get(m.group(1))
    return guests.realise(vmid, opt, value, owner, _NullLog())


class _NullLog(TaskLog):
    def __init__(self) -> None:
        self.warnings = 0

    def write(self, line: str) -> None:
        return None
