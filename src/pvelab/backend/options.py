"""Container option values as PVE stores and returns them (pure functions over strings).

``normalise`` is what a write stores, ``typed`` what ``GET .../config`` answers,
``hotplug`` which options a running CT takes at once, ``commit_pending`` what ``vm_start``
makes of ``[pve:pending]``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from pvelab.backend.conf import CtConf, Section
from pvelab.backend.perms import features_of, mount_type, mount_volume
from pvelab.backend.schema import lxc_option_schema, parse_property_string, split_list

# Options a running container takes at once (PVE: $LXC_FASTPLUG_OPTIONS and the hot-plug
# branches of vmconfig_hotplug_pending); everything else waits for the next start.
_FASTPLUG = frozenset({
    "description", "onboot", "startup", "protection", "hostname", "hookscript", "cores", "tags",
    "lock", "cpulimit", "cpuunits", "memory", "swap",
})  # fmt: skip
MP_KEY = re.compile(r"mp\d+")


def hotplug(opt: str) -> bool:
    return opt in _FASTPLUG or re.fullmatch(r"(net|mp|unused)\d+", opt) is not None


def mapped_root(raw: Sequence[tuple[str, str]], unprivileged: bool) -> int | None:
    """The host uid of the CT's root (``lxc.idmap`` or the default map), None if privileged."""
    if not unprivileged:
        return None
    for key, value in raw:
        parts = value.split()
        if key == "lxc.idmap" and len(parts) == 4 and parts[0] == "u" and parts[1] == "0":
            return int(parts[2])
    return 100000


def unused_key(opts: Mapping[str, str]) -> str:
    n = 0
    while f"unused{n}" in opts:
        n += 1
    return f"unused{n}"


def drop_option(opts: dict[str, str], opt: str) -> None:
    """Remove ``opt``; a removed volume mount point stays as ``unusedN`` (as PVE's delete)."""
    gone = opts.pop(opt, None)
    if gone is not None and MP_KEY.fullmatch(opt):
        vol = mount_volume(opt, gone)
        if mount_type(vol) == "volume":
            opts[unused_key(opts)] = vol


def commit_pending(c: CtConf) -> CtConf:
    """What vm_start does first: pending changes (and deletions) become the config."""
    opts = dict(c.main.options)
    for opt in split_list(c.pending.options.get("delete", "")):
        drop_option(opts, opt)
    opts.update({k: x for k, x in c.pending.options.items() if k != "delete"})
    return CtConf(replace(c.main, options=opts), Section(), c.snapshots)


def _random_mac() -> str:
    tail = secrets.token_bytes(3)
    return "BC:24:11:" + ":".join(f"{b:02X}" for b in tail)


def normalise(key: str, value: str) -> str:
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


def typed(key: str, value: str) -> Any:
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
