"""The node's package versions and the November 2025 runc breakage.

runc 1.3.3 (Docker's containerd.io >= 1.7.28-2) fails inside unprivileged LXC with
``open sysctl net.ipv4.ip_unprivileged_port_start file: reopen fd 8: permission denied``
on PVE 8/9 nodes whose ``lxc-pve`` is older than 6.0.5-2; nesting and keyctl do not help,
the node-side fix is ``lxc-pve`` >= 6.0.5-2. Versions are compared as dpkg does
(python-debian's ``Version``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from debian.debian_support import Version

LXC_PVE_FIXED = "6.0.5-2"
RUNC_ERROR = "open sysctl net.ipv4.ip_unprivileged_port_start file"
RUNC_FIX = "on the node: apt update && apt full-upgrade (lxc-pve >= 6.0.5-2), then restart the CT"


class ApiGetter(Protocol):
    def get(self, path: str, **params: str | int) -> Any: ...


def version_lt(a: str, b: str) -> bool:
    """``dpkg --compare-versions a lt b``."""
    return Version(a) < Version(b)


def parse_versions(rows: Any) -> dict[str, str]:
    """``GET /nodes/{node}/apt/versions`` -> installed package -> version. As pve-manager's
    APT.pm: ``OldVersion`` is the installed version (``Version`` the candidate); packages
    whose ``CurrentState`` is not ``Installed`` are left out."""
    out: dict[str, str] = {}
    for r in rows or []:
        if not isinstance(r, dict) or not r.get("Package"):
            continue
        if r.get("CurrentState", "Installed") != "Installed":
            continue
        version = r.get("OldVersion") or r.get("Version")
        if version:
            out[str(r["Package"])] = str(version)
    return out


def node_versions(client: ApiGetter, node: str) -> dict[str, str]:
    """The node's installed package versions (needs Sys.Audit on /nodes/NODE)."""
    return parse_versions(client.get(f"/nodes/{node}/apt/versions"))


def runc_breakage_warning(versions: Mapping[str, str]) -> str | None:
    """The warning (with the fix) when ``lxc-pve`` predates the runc 1.3.3 fix; None when
    it is fixed or not installed (not a PVE node we know of)."""
    lxc = versions.get("lxc-pve")
    if lxc is None or not version_lt(lxc, LXC_PVE_FIXED):
        return None
    return (
        f"lxc-pve {lxc} < {LXC_PVE_FIXED}: Docker's runc >= 1.3.3 (containerd.io >= 1.7.28-2) "
        f"fails in unprivileged containers ('{RUNC_ERROR}: reopen fd 8: permission denied'); "
        f"fix: {RUNC_FIX}"
    )
