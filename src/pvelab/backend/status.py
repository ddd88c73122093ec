"""What the node reports: ``status/current`` of a CT (the run state from the runtime,
memory from its cgroup), the CT list, ``/nodes/{node}/status`` from the host's /proc, and
``/cluster/resources`` (what ``who`` may audit)."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any

from pvelab.backend.auth import Identity
from pvelab.backend.datastore import storage_status, visible_storages
from pvelab.backend.errors import PveError
from pvelab.backend.guests import Guests
from pvelab.backend.schema import is_true


def ct_status(guests: Guests, vmid: int) -> dict[str, Any]:
    """``status/current``, with the state read from the runtime."""
    o = guests.load(vmid).main.options
    running = guests.is_running(vmid)
    size = 0
    m = re.search(r"(?:^|,)size=(\d+(?:\.\d+)?)([KMGT]?)", o.get("rootfs", ""))
    if m:
        size = int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " "))
    pid = guests.runtime.pid(vmid) if running else None
    out: dict[str, Any] = {
        "vmid": vmid, "name": o.get("hostname", f"CT{vmid}"), "type": "lxc",
        "status": "running" if running else "stopped",
        "cpus": int(o.get("cores", str(os.cpu_count() or 1))),
        "maxmem": int(o.get("memory", "512")) * 1024 * 1024,
        "maxswap": int(o.get("swap", "512")) * 1024 * 1024,
        "maxdisk": size, "disk": 0, "mem": 0, "swap": 0, "cpu": 0, "netin": 0, "netout": 0,
        "diskread": 0, "diskwrite": 0,
        "uptime": _process_uptime(pid) if pid else 0,
        "ha": {"managed": 0},
    }  # fmt: skip
    if pid:
        out["pid"] = pid
        out["mem"] = _cgroup_memory(pid)
    for extra in ("tags", "lock"):
        if o.get(extra):
            out[extra] = o[extra]
    if is_true(o.get("template")):
        out["template"] = 1
    return out


def ct_list(guests: Guests, who: Identity) -> list[dict[str, Any]]:
    out = []
    for vmid in guests.store.vmids():
        if guests.auth.allowed(who, f"/vms/{vmid}", "VM.Audit"):
            with contextlib.suppress(PveError):
                out.append(ct_status(guests, vmid))
    return out


def node_status(lab_dir: Path, pveversion: str) -> dict[str, Any]:
    mem = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        k, _, v = line.partition(":")
        mem[k] = int(v.split()[0]) * 1024
    fs = os.statvfs(lab_dir)
    load = os.getloadavg()
    uptime = int(float(Path("/proc/uptime").read_text().split()[0]))
    cpus = os.cpu_count() or 1
    return {
        "uptime": uptime, "cpu": min(1.0, load[0] / cpus),
        "loadavg": [f"{x:.2f}" for x in load],
        "memory": {"total": mem["MemTotal"], "free": mem["MemAvailable"],
                   "used": mem["MemTotal"] - mem["MemAvailable"]},
        "swap": {"total": mem.get("SwapTotal", 0), "free": mem.get("SwapFree", 0),
                 "used": mem.get("SwapTotal", 0) - mem.get("SwapFree", 0)},
        "rootfs": {"total": fs.f_blocks * fs.f_frsize, "avail": fs.f_bavail * fs.f_frsize,
                   "used": (fs.f_blocks - fs.f_bfree) * fs.f_frsize,
                   "free": fs.f_bfree * fs.f_frsize},
        "cpuinfo": {"cpus": cpus, "sockets": 1, "cores": cpus, "model": "pvestack lab"},
        "kversion": " ".join(os.uname()[:3]), "pveversion": pveversion,
        "idle": 0, "wait": 0.0,
    }  # fmt: skip


def node_item(name: str, st: dict[str, Any]) -> dict[str, Any]:
    """The node as ``GET /nodes`` lists it, from its ``node_status``."""
    return {
        "node": name, "status": "online", "type": "node", "id": f"node/{name}",
        "cpu": st["cpu"], "maxcpu": st["cpuinfo"]["cpus"], "mem": st["memory"]["used"],
        "maxmem": st["memory"]["total"], "uptime": st["uptime"], "level": "",
        "ssl_fingerprint": "", "disk": st["rootfs"]["used"], "maxdisk": st["rootfs"]["total"],
    }  # fmt: skip


def cluster_resources(
    guests: Guests, who: Identity, node: dict[str, Any], kind: str | None
) -> list[dict[str, Any]]:
    """``GET /cluster/resources``: CTs (VM.Audit), this ``node`` item, storages."""
    out: list[dict[str, Any]] = []
    if kind in (None, "vm"):
        for vmid in guests.store.vmids():
            if guests.auth.allowed(who, f"/vms/{vmid}", "VM.Audit"):
                with contextlib.suppress(PveError):
                    out.append(_vm_resource(guests.name, ct_status(guests, vmid)))
    if kind in (None, "node"):
        n = dict(node)
        n.pop("ssl_fingerprint")
        out.append(n | {"cgroup-mode": 2})
    if kind in (None, "storage"):
        for s in visible_storages(guests, who):
            st = storage_status(guests, s.id)
            out.append({
                "id": f"storage/{guests.name}/{s.id}", "type": "storage", "node": guests.name,
                "storage": s.id, "status": "available", "plugintype": s.type,
                "content": ",".join(s.content), "shared": 0,
                "disk": st["used"], "maxdisk": st["total"],
            })  # fmt: skip
    return out


def _vm_resource(node: str, st: dict[str, Any]) -> dict[str, Any]:
    vmid = st["vmid"]
    item = {
        "id": f"lxc/{vmid}", "type": "lxc", "node": node, "vmid": vmid,
        "name": st["name"], "status": st["status"], "template": st.get("template", 0),
        "maxcpu": st["cpus"], "maxmem": st["maxmem"], "maxdisk": st["maxdisk"],
        "cpu": st["cpu"], "mem": st["mem"], "disk": st["disk"], "uptime": st["uptime"],
        "netin": 0, "netout": 0, "diskread": 0, "diskwrite": 0,
    }  # fmt: skip
    for extra in ("tags", "lock"):
        if st.get(extra):
            item[extra] = st[extra]
    return item


def _cgroup_memory(pid: int, root: Path = Path("/sys/fs/cgroup")) -> int:
    """Bytes charged to the container's memory cgroup (v1 or v2), found from its init."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        _, controllers, path = line.split(":", 2)
        parts = path.strip("/").split("/")
        top = next((i for i, p in enumerate(parts) if p.startswith("lxc.payload")), None)
        if top is not None:
            path = "/".join(parts[: top + 1])
        if "memory" in controllers.split(","):
            candidates = [root / "memory" / path / "memory.usage_in_bytes"]
        elif controllers == "":
            candidates = [
                root / path / "memory.current",
                root / "unified" / path / "memory.current",
            ]
        else:
            continue
        for f in candidates:
            try:
                return int(f.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return 0


def _process_uptime(pid: int) -> int:
    """Seconds since ``pid`` started (the container's init), from /proc."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return 0
    return max(0, int(boot - ticks / os.sysconf("SC_CLK_TCK")))
