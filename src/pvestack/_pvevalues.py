"""The one parser of PVE's value formats: property strings, feature lists, tags, sizes.

Used by the planner, observe, destroy, the console poll and verify, so that every stage
reads ``GET .../config`` values the same way. Pure functions, no pvestack imports.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_SIZE = re.compile(r"(?:^|,)size=(\d+(?:\.\d+)?)([KMGT]?)")
_UNIT_GB = {"K": 1 / 1024**2, "M": 1 / 1024, "G": 1.0, "T": 1024.0, "": 1 / 1024**3}


def split_props(value: str, *, first_key: str | None = None) -> dict[str, str]:
    """``a=1,b=2`` -> dict; a leading bare item goes under ``first_key`` (PVE's default
    key, e.g. ``volume`` of ``mp0``); any other bare item means ``item=1``."""
    out: dict[str, str] = {}
    for i, item in enumerate(p for p in str(value).split(",") if p != ""):
        if "=" in item:
            k, _, v = item.partition("=")
            out[k.strip()] = v.strip()
        elif i == 0 and first_key:
            out[first_key] = item.strip()
        else:
            out[item.strip()] = "1"
    return out


def mount_props(value: str) -> dict[str, str]:
    """A mount point value (``rootfs``/``mpN``): its volume or host path under ``volume``."""
    return split_props(value, first_key="volume")


_MOUNT_KEY = re.compile(r"^(rootfs|mp\d+)$")


def mount_points(config: Mapping[str, object]) -> list[tuple[str, str, str]]:
    """A CT config's mount points, rootfs first: (key, volume or host path, path in the
    CT; ``?`` when a mount point names none)."""
    out = []
    for key in sorted(config, key=lambda k: (k != "rootfs", k)):
        if _MOUNT_KEY.match(key):
            props = mount_props(str(config[key]))
            where = "/" if key == "rootfs" else props.get("mp", "?")
            out.append((key, props.get("volume", ""), where))
    return out


def format_features(features: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(features.items()))


def parse_features(value: str | None) -> dict[str, str]:
    """``features`` -> the flags that are on (``0`` and empty values dropped)."""
    if not value:
        return {}
    return {k: v for k, v in split_props(value).items() if v not in ("0", "")}


def parse_tags(value: Any) -> tuple[str, ...]:
    """PVE's tag list (``;``, ``,`` or space separated) -> sorted lower-case tags."""
    if not value:
        return ()
    text = str(value).replace(",", ";").replace(" ", ";")
    return tuple(sorted({t.strip().lower() for t in text.split(";") if t.strip()}))


def size_gb(value: str) -> float | None:
    """The ``size=`` of a mount point value in GiB, or None when it has none."""
    m = _SIZE.search(value)
    if not m:
        return None
    return float(m.group(1)) * _UNIT_GB[m.group(2)]


def idmap_lines(config: Mapping[str, str]) -> tuple[str, ...]:
    """``lxc.idmap`` lines as GET .../config shows them (a list of [key, value] pairs)."""
    raw = config.get("lxc", "")
    return tuple(
        " ".join(v.split()) for v in re.findall(r"lxc\.idmap['\"]?\s*[,:=]\s*['\"]([^'\"]+)", raw)
    )
