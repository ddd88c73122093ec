"""In-memory lab runtimes for the backend's unit and contract tests (no root, no LXC),
and small template tarballs for them (importable by any test: tests/ is on sys.path).

They record what the node asked of them; the real runtime is tested in tests/lab.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pvelab.pct import wrapper_script
from pvelab.runtime.lxc import pve_interfaces
from pvelab.runtime_protocol import ExecResult

# what ``ip --json a`` prints in a container with one veth (a real capture, shortened)
STUB_IP_JSON = """[
{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536,
 "link_type":"loopback","address":"00:00:00:00:00:00","broadcast":"00:00:00:00:00:00",
 "addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host","label":"lo"},
  {"family":"inet6","local":"::1","prefixlen":128,"scope":"host"}]},
{"ifindex":2,"link_index":9,"ifname":"eth0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],
 "mtu":1500,"link_type":"ether","address":"bc:24:11:00:00:31","broadcast":"ff:ff:ff:ff:ff:ff",
 "link_netnsid":0,"addr_info":[{"family":"inet","local":"10.78.61.77","prefixlen":24,
 "broadcast":"10.78.61.255","scope":"global","label":"eth0"},
 {"family":"inet6","local":"fe80::be24:11ff:fe00:31","prefixlen":64,"scope":"link"}]}
]"""


class StubRuntime:
    def __init__(self) -> None:
        self.running: dict[int, tuple[dict[str, str], list[tuple[str, str]]]] = {}
        self.destroyed: list[int] = []
        self.fail_start: str | None = None

    def create_rootfs(
        self, vmid: int, template: Path, rootfs: Path, idmap: Sequence[str], unprivileged: bool
    ) -> None:
        with tarfile.open(template) as t:
            t.extractall(rootfs, filter="data")

    def start(self, vmid: int, conf: Mapping[str, str], raw_lxc: Sequence[tuple[str, str]]) -> None:
        if self.fail_start:
            raise RuntimeError(self.fail_start)
        self.running[vmid] = (dict(conf), list(raw_lxc))

    def stop(self, vmid: int) -> None:
        self.running.pop(vmid, None)

    def shutdown(self, vmid: int, timeout: int) -> None:
        self.running.pop(vmid, None)

    def state(self, vmid: int) -> str:
        return "running" if vmid in self.running else "stopped"

    def pid(self, vmid: int) -> int | None:
        return 4242 if vmid in self.running else None

    def exec(
        self,
        vmid: int,
        argv: Sequence[str],
        stdin: bytes | None = None,
        timeout: float | None = None,
    ) -> ExecResult:
        return ExecResult(0, b"", b"")

    def destroy(self, vmid: int) -> None:
        self.destroyed.append(vmid)

    def ip_address(self, vmid: int) -> str | None:
        return None

    def interfaces(self, vmid: int) -> list[dict[str, Any]] | None:
        return pve_interfaces(json.loads(STUB_IP_JSON)) if vmid in self.running else None


class ExtractOnlyRuntime(StubRuntime):
    """Archives are really extracted (tarfile); start/stop only flip a state; a running CT
    has no pid and answers with one eth0 on 10.77.5.50."""

    def pid(self, vmid: int) -> int | None:
        return None

    def destroy(self, vmid: int) -> None:
        super().destroy(vmid)
        self.running.pop(vmid, None)

    def ip_address(self, vmid: int) -> str | None:
        return "10.77.5.50" if vmid in self.running else None

    def interfaces(self, vmid: int) -> list[dict[str, Any]] | None:
        if vmid not in self.running:
            return None  # PVE answers null for a stopped CT
        rows = [
            {"ifname": "lo", "address": "00:00:00:00:00:00",
             "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}]},
            {"ifname": "eth0", "address": "bc:24:11:00:00:05",
             "addr_info": [{"family": "inet", "local": "10.77.5.50", "prefixlen": 24}]},
        ]  # fmt: skip
        return pve_interfaces(rows)


#: the name the test templates go by (PVE's Debian 12 appliance), and its volume id
TEMPLATE = "debian-12-standard_12.12-1_amd64.tar.gz"
OSTEMPLATE = f"local:vztmpl/{TEMPLATE}"

#: what the small test templates hold unless a test says otherwise
TEMPLATE_FILES: Mapping[str, bytes] = {
    "./etc/hostname": b"localhost\n",
    "./etc/os-release": b"ID=debian\n",
}


def make_template(
    path: Path, files: Mapping[str, bytes] = TEMPLATE_FILES, mode: int = 0o644
) -> Path:
    """A ``.tar.gz`` template at ``path`` (its directory made) with these regular files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            t.addfile(info, io.BytesIO(data))
    return path


def pct_node(tmp: Path, conf: str, exec_line: str | None = None) -> tuple[Path, Path]:
    """A lab node dir ``tmp/lab`` holding CT 118 (``conf``, stopped) and ``tmp/bin`` with the
    lab's real ``pct`` for it; with ``exec_line``, ``pct exec`` only prints that line (no
    container runs here) and the real one is ``pct-lab``. Returns (lab dir, bin dir)."""
    lab = tmp / "lab"
    (lab / "etc" / "pve" / "lxc").mkdir(parents=True)
    (lab / "etc" / "pve" / "lxc" / "118.conf").write_text(conf)
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    real = bin_dir / ("pct" if exec_line is None else "pct-lab")
    real.write_text(wrapper_script(sys.executable, lab))
    real.chmod(0o755)
    if exec_line is not None:
        (bin_dir / "pct").write_text(
            "#!/bin/sh\n"
            f'if [ "$1" = exec ]; then echo "{exec_line}"; exit 0; fi\n'
            f'exec {real} "$@"\n'
        )
        (bin_dir / "pct").chmod(0o755)
    return lab, bin_dir
