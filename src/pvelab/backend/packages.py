"""The node's package versions: ``GET /nodes/{node}/apt/versions`` (pve-manager
``PVE/API2/APT.pm`` ``versions``, Sys.Audit on the node).

The lab has no Proxmox packages, so it reports the versions it is told to through its
control endpoint (``POST /_lab/packages {"lxc-pve": "6.0.0-1"}``; ``null`` uninstalls,
``DELETE /_lab/packages`` restores the defaults); they live in
``<lab>/etc/pve/lab-packages.json``. The defaults are a patched PVE 9.1 node (lxc-pve
6.0.5-3: the runc 1.3.3 / ``ip_unprivileged_port_start`` fix is in 6.0.5-2).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULT_VERSIONS: Mapping[str, str] = {
    "proxmox-ve": "9.1.0",
    "pve-manager": "9.1.1",
    "libpve-access-control": "9.0.4",
    "libpve-common-perl": "9.0.13",
    "libpve-guest-common-perl": "6.0.2",
    "libpve-storage-perl": "9.1.0",
    "lxc-pve": "6.0.5-3",
    "lxcfs": "6.0.4-pve1",
    "pve-cluster": "9.0.7",
    "pve-container": "6.0.18",
    "qemu-server": "9.1.0",
}
_TITLES = {
    "proxmox-ve": "Proxmox Virtual Environment",
    "pve-manager": "Proxmox Virtual Environment Management Tools",
    "lxc-pve": "Linux containers userspace tools",
    "lxcfs": "FUSE based filesystem for LXC",
    "pve-container": "Proxmox VE Container management tool",
}
_FIRST = ("proxmox-ve", "pve-manager")  # APT.pm: "order most important things first"


class Packages:
    def __init__(self, etc: Path) -> None:
        self.path = etc / "lab-packages.json"

    def installed(self) -> dict[str, str]:
        """Package -> installed version (the defaults with what the lab was told)."""
        out = dict(DEFAULT_VERSIONS)
        try:
            told: dict[str, str | None] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            told = {}
        for name, version in told.items():
            if version is None:
                out.pop(name, None)
            else:
                out[name] = version
        return out

    def tell(self, versions: Mapping[str, Any]) -> None:
        """Set (a version string) or uninstall (``None``) packages."""
        try:
            told: dict[str, str | None] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            told = {}
        for name, version in versions.items():
            if not isinstance(name, str) or not (version is None or isinstance(version, str)):
                raise ValueError("packages: a JSON object of name -> version string or null")
            told[name] = version
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(told, indent=1, sort_keys=True) + "\n")
        tmp.replace(self.path)

    def reset(self) -> None:
        self.path.unlink(missing_ok=True)

    def versions(self, manager_text: str) -> list[dict[str, Any]]:
        """The API's answer: APT.pm's fields (Version is the candidate, OldVersion the
        installed one; the lab's candidate is the installed version)."""
        have = self.installed()
        order = [p for p in _FIRST if p in have] + sorted(p for p in have if p not in _FIRST)
        out = []
        for name in order:
            item: dict[str, Any] = {
                "Package": name, "Title": _TITLES.get(name, name), "Origin": "Proxmox",
                "Description": _TITLES.get(name, name), "Section": "admin", "Arch": "amd64",
                "Priority": "optional", "Version": have[name], "OldVersion": have[name],
                "CurrentState": "Installed",
            }  # fmt: skip
            if name == "pve-manager":
                item["ManagerVersion"] = manager_text
            elif name == "proxmox-ve":
                item["RunningKernel"] = os.uname().release
            out.append(item)
        return out
