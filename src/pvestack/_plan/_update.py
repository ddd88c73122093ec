"""The update planner's parts: what differs between a stack and its existing container.

Each part reads the observed config and returns the difference as values; the stack
planner (``_stack``) turns them into actions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from pvestack._model import BindMount, ContainerSpec
from pvestack._plan._values import TOKEN_FEATURES, same_bind, same_value
from pvestack._pvevalues import format_features, mount_props, parse_features, size_gb
from pvestack._steps.guest_access import keep_hostkey_record

#: keys pvestack may delete when the stack file no longer sets them
DELETABLE = ("nameserver", "searchdomain")


@dataclass
class TokenDiff:
    """What the token's ``PUT .../config`` must change (and root's feature part)."""

    set: dict[str, str | int] = field(default_factory=dict)
    deletes: list[str] = field(default_factory=list)
    before: dict[str, str | None] = field(default_factory=dict)
    after: dict[str, str | None] = field(default_factory=dict)
    root_features: str | None = None  # features root must set (not nesting alone)
    warnings: list[str] = field(default_factory=list)

    def put(self, key: str, value: str | int, have: str | None) -> None:
        self.set[key] = value
        self.before[key] = have
        self.after[key] = str(value)


def token_diff(stack: str, ct: ContainerSpec, cfg: Mapping[str, str]) -> TokenDiff:
    d = TokenDiff()
    for key, want in ct.api_config.items():
        if key == "rootfs":
            continue
        value = want
        if key == "description":  # keep the host-key record a root step wrote there
            value = keep_hostkey_record(str(want), str(cfg.get(key) or ""))
        if not same_value(key, value, cfg.get(key)):
            d.put(key, value, cfg.get(key))
    d.deletes = [k for k in DELETABLE if k not in ct.api_config and k in cfg]
    for k in d.deletes:
        d.before[k] = cfg[k]
        d.after[k] = None
    if ct.protection and cfg.get("protection") != "1":
        d.put("protection", 1, cfg.get("protection"))
    _volume_diff(stack, ct, cfg, d)
    _feature_diff(ct, cfg, d)
    return d


def _volume_diff(stack: str, ct: ContainerSpec, cfg: Mapping[str, str], d: TokenDiff) -> None:
    for vm in ct.volume_mounts:
        cur = cfg.get(vm.key)
        if cur is None:
            d.put(vm.key, vm.pve_value, None)
        elif mount_props(cur).get("mp") != vm.ct_path:
            d.warnings.append(
                f"{stack}: {vm.key} is {cur!r}, the stack file wants a volume at "
                f"{vm.ct_path}; pvestack does not move volumes (their data would be at risk)"
            )


def _feature_diff(ct: ContainerSpec, cfg: Mapping[str, str], d: TokenDiff) -> None:
    """The token may change ``nesting`` alone (unprivileged CT); anything else is root's."""
    have = parse_features(cfg.get("features"))
    want = dict(ct.features)
    if have == want:
        return
    changed = {k for k in set(have) | set(want) if have.get(k) != want.get(k)}
    if changed <= TOKEN_FEATURES and ct.unprivileged:
        d.set["features"] = format_features(want)
        d.before["features"] = cfg.get("features")
        d.after["features"] = format_features(want) or None
    else:
        d.root_features = format_features(want)


def changed_binds(ct: ContainerSpec, cfg: Mapping[str, str]) -> list[BindMount]:
    return [bm for bm in ct.bind_mounts if not same_bind_at(bm, cfg.get(bm.key))]


def same_bind_at(bm: BindMount, value: str | None) -> bool:
    return value is not None and same_bind(bm, value)


def unknown_mounts(stack: str, ct: ContainerSpec, cfg: Mapping[str, str]) -> list[str]:
    known = {m.key for m in ct.bind_mounts} | {m.key for m in ct.volume_mounts}
    return [
        f"{stack}: {key} ({cfg[key]}) is not in the stack file; pvestack leaves it in place"
        for key in sorted(cfg)
        if re.fullmatch(r"mp\d+", key) and key not in known
    ]


@dataclass(frozen=True)
class Resize:
    grow_to: str | None  # "32": grow the root disk to 32G
    have: float | None
    warnings: tuple[str, ...] = ()


def resize_diff(stack: str, ct: ContainerSpec, cfg: Mapping[str, str]) -> Resize:
    want = str(ct.api_config.get("rootfs", ""))
    cur = cfg.get("rootfs")
    if not want or not cur:
        return Resize(None, None)
    storage, _, size = want.partition(":")
    warnings = []
    if not cur.startswith(storage + ":"):
        warnings.append(
            f"{stack}: rootfs is on {cur.split(':', 1)[0]}, the stack file says "
            f"{storage}; pvestack does not move disks"
        )
    have = size_gb(cur)
    if have is None:
        return Resize(None, None, tuple(warnings))
    if float(size) < have:
        warnings.append(
            f"{stack}: the root disk is {have:g}G, larger than disk_gb = {size}; "
            "PVE cannot shrink it, left as is"
        )
    return Resize(size if float(size) > have else None, have, tuple(warnings))
