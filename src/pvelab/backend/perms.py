"""pve-container's ``check_ct_modify_config_perm``: who may set which container option.

``root@pam`` (a password/ticket login, or ``pct`` on the node) may set anything. Everyone
else, every API token included (its authid is ``user@realm!name``, never ``root@pam``),
is held to the table in /work/shared/pve-api/README.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from pvelab.backend.auth import AuthStore, Identity
from pvelab.backend.errors import PveError, permission_denied
from pvelab.backend.privileges import bridge_path, ct_option_priv
from pvelab.backend.schema import lxc_option_schema, parse_property_string

NEW_DISK = re.compile(r"^([a-zA-Z][a-zA-Z0-9\-_.]*[a-zA-Z0-9]):(\d+(\.\d+)?)$")


def mount_type(volume: str) -> str:
    """``device`` (/dev/...), ``bind`` (any other absolute path) or ``volume``."""
    if volume.startswith("/dev/"):
        return "device"
    if volume.startswith("/"):
        return "bind"
    return "volume"


def mount_volume(key: str, value: str) -> str:
    sch = lxc_option_schema(key)
    fmt = sch["format"] if sch else {}
    try:
        return parse_property_string(fmt, value).get("volume", "")
    except ValueError:
        return value.split(",", 1)[0]


def features_of(value: str | None) -> dict[str, str]:
    if not value:
        return {}
    sch = lxc_option_schema("features")
    assert sch is not None
    try:
        parsed = parse_property_string(sch["format"], value)
    except ValueError:
        return {}
    return {k: ("1" if v.lower() in ("1", "on", "yes", "true") else "0") if k != "mount" else v
            for k, v in parsed.items()}  # fmt: skip


def _features_change(
    old: Mapping[str, str] | None, new: Mapping[str, str], deleting: bool
) -> tuple[bool, bool]:
    """(nesting changed, another flag changed), as pve-container decides them."""
    if not deleting and old and old.get("features"):
        before, after = features_of(old["features"]), features_of(new.get("features"))
        nesting = False
        for flag in [*before, *after]:
            if before.get(flag, "0") != after.get(flag, "0"):
                if flag != "nesting":
                    return nesting, True
                nesting = True
        return nesting, False
    flags = features_of((old or {}).get("features") if deleting else new.get("features"))
    if len(flags) == 1 and flags.get("nesting") == "1":
        return True, False
    return False, bool(flags)


def _check_features(  # noqa: PLR0917 - the arguments of pve-container's branch
    auth: AuthStore,
    who: Identity,
    vm: str,
    old: Mapping[str, str] | None,
    new: Mapping[str, str],
    deleting: bool,
    unprivileged: bool,
) -> None:
    if not unprivileged:
        raise permission_denied(
            "changing feature flags for privileged container is only allowed for root@pam"
        )
    nesting, other = _features_change(old, new, deleting)
    if other:
        raise permission_denied(
            "changing feature flags (except nesting) is only allowed for root@pam"
        )
    if nesting:
        auth.require(who, vm, ct_option_priv("features"))


def check_bridge_access(auth: AuthStore, who: Identity, raw: str) -> None:
    """pve-container's ``check_bridge_access`` -> pve-guest-common's ``check_vnet_access``:
    SDN.Use on ``/sdn/zones/localnetwork/<bridge>`` (``/<tag>`` with a VLAN tag)."""
    if who.is_root:
        return
    sch = lxc_option_schema("net0")
    try:
        net = parse_property_string(sch["format"], raw) if sch else {}
    except ValueError:
        return
    bridge = net.get("bridge")
    if bridge:
        auth.require(who, bridge_path(bridge, net.get("tag")), "SDN.Use")


def check_ct_modify_config_perm(  # noqa: PLR0917 - the argument list of pve-container's
    auth: AuthStore,
    who: Identity,
    vmid: int,
    old: Mapping[str, str] | None,
    new: Mapping[str, str],
    delete: Iterable[str],
    unprivileged: bool,
) -> None:
    if who.is_root:
        return
    vm = f"/vms/{vmid}"

    def check(opt: str, deleting: bool) -> None:
        priv = ct_option_priv(opt)  # the table in privileges.py
        if re.fullmatch(r"dev\d+", opt):
            raise permission_denied("configuring device passthrough is only allowed for root@pam")
        if opt == "hookscript":
            raise permission_denied("changing the hookscript is only allowed for root@pam")
        if opt == "features":
            _check_features(auth, who, vm, old, new, deleting, unprivileged)
            return
        auth.require(who, vm, priv)
        if (opt == "rootfs" or re.fullmatch(r"mp\d+", opt)) and not deleting:
            volume = mount_volume(opt, new[opt])
            kind = mount_type(volume)
            if kind != "volume":
                raise permission_denied(f"mount point type {kind} is only allowed for root@pam")
            m = NEW_DISK.match(volume)
            if m:
                auth.require(who, f"/storage/{m.group(1)}", "Datastore.AllocateSpace")
        elif re.fullmatch(r"net\d+", opt):
            for raw in ((old or {}).get(opt), None if deleting else new.get(opt)):
                if raw:
                    check_bridge_access(auth, who, raw)

    for opt in new:
        check(opt, False)
    for opt in delete:
        check(opt, True)


# ---------------------------------------------------------------------------------------
# Day two: snapshots, backups, restore. Checks PVE makes in code, beside the schema's
# ``permissions.check`` (which the API server applies to every method):
#   snapshot create/delete, PUT snapshot config    VM.Snapshot on /vms/{vmid}      (schema)
#   rollback                    VM.Snapshot or VM.Snapshot.Rollback on /vms/{vmid} (schema;
#                               ``start=1`` needs nothing more: pve-container starts it)
#   snapshot list               VM.Audit on /vms/{vmid}                              (schema)
#   GET snapshot config         VM.Snapshot, VM.Snapshot.Rollback or VM.Audit        (schema)
#   vzdump                      Datastore.AllocateSpace on /storage/{storage} (before the
#                               task: 403), VM.Backup on /vms/{vmid} (in the task: the task
#                               fails with the permission message)
#   content listing             a backup is listed only if ``check_volume_access`` allows
#                               it (VM.Backup on its CT + Datastore.AllocateSpace, or
#                               Datastore.Allocate)
#   restore (create, restore=1) VM.Allocate on /vms/{vmid}; the archive as
#                               ``check_volume_access``; Datastore.AllocateSpace on the
#                               target storage; Sys.Modify on / for a privileged CT
# ---------------------------------------------------------------------------------------


def check_vzdump_perm(auth: AuthStore, who: Identity, storage: str) -> None:
    """pve-manager's vzdump API before its worker: the backup storage."""
    auth.require(who, f"/storage/{storage}", "Datastore.AllocateSpace")


def check_backup_volume_access(
    auth: AuthStore, who: Identity, sid: str, owner: int | None, vmid: int | None
) -> None:
    """pve-storage's ``check_volume_access`` for a ``backup`` volume."""
    if auth.allowed(who, f"/storage/{sid}", "Datastore.Allocate"):
        return
    if owner is not None and vmid is not None and owner == vmid:
        return
    if owner is None:
        raise PveError(500, "missing privileges to access the volume")
    auth.require(who, f"/storage/{sid}", "Datastore.AllocateSpace")
    auth.require(who, f"/vms/{owner}", "VM.Backup")
