"""Comparing desired values with what ``GET .../config`` shows (one parser: ``_pvevalues``)."""

from __future__ import annotations

from pvestack._model import BindMount, HostPathFact, IdMap
from pvestack._pvevalues import mount_props, parse_tags, size_gb, split_props

#: the feature flags a token may set (alone, on an unprivileged CT)
TOKEN_FEATURES = frozenset({"nesting"})
#: net0 properties PVE adds itself
_NET_SERVER_KEYS = frozenset({"hwaddr", "type"})


def same_value(key: str, desired: str | int, observed: str | None) -> bool:
    """Whether ``observed`` (GET .../config) already is ``desired`` (as sent at create)."""
    d = str(desired)
    if observed is None:
        return key == "onboot" and d == "0"
    o = str(observed)
    if key == "tags":
        return parse_tags(d) == parse_tags(o)
    if key == "description":
        return d.strip() == o.strip()
    if key == "nameserver":
        return d.split() == o.split()
    if key.startswith("net"):
        dp = split_props(d)
        op = {k: v for k, v in split_props(o).items() if k not in _NET_SERVER_KEYS or k in dp}
        return dp == op
    if key == "rootfs":
        ds = d.split(":", 1)
        return o.startswith(ds[0] + ":") and size_gb(o) == float(ds[1])
    return d == o


def same_bind(bm: BindMount, value: str) -> bool:
    p = mount_props(value)
    if p.get("volume") != bm.host_path or p.get("mp") != bm.ct_path:
        return False
    if (p.get("ro") == "1") != bm.read_only:
        return False
    if bm.backup is not None and p.get("backup", "0") != str(int(bm.backup)):
        return False
    return not (bm.shared is not None and p.get("shared", "0") != str(int(bm.shared)))


def host_owner(bm: BindMount, idmap: IdMap) -> str:
    try:
        return f"{idmap.host_uid(bm.owner_uid)}:{idmap.host_gid(bm.owner_gid)}"
    except ValueError:
        return "unmapped"


def host_dir_need(
    bm: BindMount, idmap: IdMap, fact: HostPathFact | None
) -> tuple[bool, str, dict[str, str | None]]:
    """(needs the root step?, why, the before values to show)."""
    if fact is None:
        return True, "", {}
    if not fact.exists:
        return True, "the host directory does not exist", {"path": None}
    want = host_owner(bm, idmap)
    have = f"{fact.uid}:{fact.gid}"
    mode = fact.mode.zfill(4) if fact.mode is not None else None
    before: dict[str, str | None] = {"path": fact.path, "owner": have, "mode": mode}
    if have != want:
        return (
            True,
            f"owned by {have} on the host; container uid {bm.owner_uid} is host uid "
            f"{want.split(':')[0]} in an unprivileged container"
            + (
                "; taking ownership (take_ownership = true)"
                if bm.take_ownership
                else "; refused on the node if it is not empty (set take_ownership = true)"
            ),
            before,
        )
    if fact.mode is not None and fact.mode.lstrip("0") != bm.mode.lstrip("0"):
        return True, f"mode {fact.mode}, want {bm.mode}", before
    return False, "", before
