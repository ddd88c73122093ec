"""``GET /nodes/{node}/network`` (pve-manager ``PVE/API2/Network.pm`` index; user => all):
the node's bridges. The lab's node is told its bridges by ``lab up``
(``<lab>/etc/pve/lab-network.json``: ``{"bridges": {"pvlab0": "10.77.0.1/24"}}``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_BRIDGE_TYPES = ("bridge", "any_bridge", "OVSBridge")


class NetInfo:
    def __init__(self, etc: Path) -> None:
        self.path = etc / "lab-network.json"

    def bridges(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in dict(data.get("bridges", {})).items()}

    def tell(self, bridges: Mapping[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"bridges": dict(bridges)}, indent=1) + "\n")

    def listing(self, kind: str | None = None) -> list[dict[str, Any]]:
        if kind not in (None, *_BRIDGE_TYPES):
            return []
        out = []
        for iface, cidr in sorted(self.bridges().items()):
            out.append({
                "iface": iface, "type": "bridge", "active": 1, "autostart": 1,
                "families": ["inet"], "method": "static", "cidr": cidr,
                "address": cidr.split("/")[0], "bridge_ports": "", "priority": 1,
            })  # fmt: skip
        return out
