"""Lab API figures: request latency (p50/p95/max) for the calls pvestack makes, and, as root
on real LXC, the time from ``POST /nodes/{node}/lxc`` to a running container.

    .venv/bin/python benchmarks/lab_api.py [--requests 200] [--template PATH]

It runs its own lab (private directory under /var/tmp, API on a free loopback port) and
removes it at the end. The template is ``--template``, else the lab's cached Debian
template, else a small busybox root file system built for the run (printed either way).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import ssl
import statistics
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from pvelab.api.server import LabApiServer
from pvelab.backend.node import Node
from pvelab.runtime.lxc import LxcRuntime, remove_recorded_subids

TOKEN_ID, SECRET, NODE = "bench@pve!api", "bench-secret", "pve"
DEBIAN = "debian-12-standard_12.12-1_amd64.tar.zst"


class Client:
    def __init__(self, server: LabApiServer) -> None:
        self.base = server.url + "/api2/json"
        self.ctx = ssl.create_default_context(cafile=str(server.certfile))

    def call(self, method: str, path: str, data: dict[str, Any] | None = None) -> Any:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        req = urllib.request.Request(self.base + path, data=body, method=method)
        req.add_header("Authorization", f"PVEAPIToken={TOKEN_ID}={SECRET}")
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=600) as r:
                return json.loads(r.read())["data"]
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{method} {path}: {e.code} {e.reason}") from None

    def wait(self, upid: str) -> str:
        while True:
            st = self.call("GET", f"/nodes/{NODE}/tasks/{urllib.parse.quote(upid)}/status")
            if st["status"] == "stopped":
                if st["exitstatus"] != "OK":
                    raise SystemExit(f"task {upid} failed: {st['exitstatus']}")
                return str(st["exitstatus"])
            time.sleep(0.05)


def find_template(explicit: str | None) -> Path | None:
    lab = Path(os.environ.get("PVESTACK_LAB_DIR", "/var/lib/pvestack-lab"))
    for p in [Path(explicit)] if explicit else [lab / d / DEBIAN for d in ("www", "cache")]:
        if p.is_file():
            return p
    return None


def busybox_template(target: Path) -> None:
    busybox = shutil.which("busybox")
    if busybox is None:
        raise SystemExit("no template and no busybox: pass --template")
    with tarfile.open(target, "w:gz") as t:
        for d in ("bin", "sbin", "etc", "etc/network", "proc", "sys", "dev", "tmp", "root", "run"):
            info = tarfile.TarInfo("./" + d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            t.addfile(info)
        data = Path(busybox).read_bytes()
        info = tarfile.TarInfo("./bin/busybox")
        info.size, info.mode = len(data), 0o755
        t.addfile(info, io.BytesIO(data))
        for link in ("bin/sh", "sbin/init", "bin/sleep", "bin/true"):
            info = tarfile.TarInfo("./" + link)
            info.type, info.linkname = tarfile.SYMTYPE, "/bin/busybox"
            t.addfile(info)
        inittab = b"::sysinit:/bin/true\n::respawn:/bin/sleep 1000000\n"
        info = tarfile.TarInfo("./etc/inittab")
        info.size = len(inittab)
        t.addfile(info, io.BytesIO(inittab))


def figures(name: str, secs: list[float]) -> str:
    ms = sorted(s * 1000 for s in secs)
    p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
    return (
        f"{name:<42} n={len(ms):<4} p50={statistics.median(ms):7.2f} ms  "
        f"p95={p95:7.2f} ms  max={ms[-1]:7.2f} ms"
    )


def timed(fn: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--template")
    args = ap.parse_args()
    root = os.geteuid() == 0
    labdir = Path(tempfile.mkdtemp(prefix="pvestack-lab-bench-", dir="/var/tmp"))
    labdir.chmod(0o755)  # the container root (uid 100000) must traverse to its rootfs
    runtime = LxcRuntime(labdir)
    node = Node(labdir, runtime, NODE)
    node.auth.add_token(TOKEN_ID, SECRET)
    node.auth.grant(
        "bench@pve",
        "/",
        [
            "VM.Allocate",
            "VM.Audit",
            "VM.PowerMgmt",
            "VM.Config.Options",
            "VM.Config.Memory",
            "VM.Config.Disk",
            "Datastore.AllocateSpace",
            "Datastore.Audit",
            "Sys.Audit",
        ],
    )
    cache = labdir / "storage/local/template/cache"
    tpl = find_template(args.template)
    if tpl is not None:
        name = tpl.name
        shutil.copy2(tpl, cache / name)
    else:
        name = "busybox-bench_1.0_amd64.tar.gz"
        busybox_template(cache / name)
    server = LabApiServer(node, "127.0.0.1", 0)
    server.start()
    c = Client(server)
    try:
        print(f"pvestack lab API benchmark ({server.url}, template {name})")
        n = args.requests
        print(figures("GET /version", timed(lambda: c.call("GET", "/version"), n)))
        print(
            figures("GET /cluster/resources", timed(lambda: c.call("GET", "/cluster/resources"), n))
        )
        print(figures("GET /cluster/nextid", timed(lambda: c.call("GET", "/cluster/nextid"), n)))
        if not root:
            print("create->running: skipped (needs root for real LXC containers)")
            return
        t0 = time.perf_counter()
        upid = c.call(
            "POST",
            f"/nodes/{NODE}/lxc",
            {
                "vmid": 900,
                "ostemplate": f"local:vztmpl/{name}",
                "rootfs": "local-lvm:4",
                "unprivileged": 1,
                "features": "nesting=1",
            },
        )
        t_accept = time.perf_counter() - t0
        assert c.wait(upid) == "OK"
        t_created = time.perf_counter() - t0
        assert c.wait(c.call("POST", f"/nodes/{NODE}/lxc/900/status/start")) == "OK"
        t_running = time.perf_counter() - t0
        state = c.call("GET", f"/nodes/{NODE}/lxc/900/status/current")["status"]
        print(f"{'create (POST answered)':<42} {t_accept * 1000:8.1f} ms")
        print(f"{'create task done (rootfs extracted)':<42} {t_created:8.2f} s")
        print(f"{'create -> running (' + state + ')':<42} {t_running:8.2f} s")
        path = f"/nodes/{NODE}/lxc/900/status/current"
        print(figures("GET status/current (running CT)", timed(lambda: c.call("GET", path), n)))
        cfg = f"/nodes/{NODE}/lxc/900/config"
        print(figures("GET config", timed(lambda: c.call("GET", cfg), n)))
        mem = iter(range(10**6))
        put = timed(lambda: c.call("PUT", cfg, {"memory": 512 + next(mem) % 512}), min(n, 100))
        print(figures("PUT config (memory)", put))
        t0 = time.perf_counter()
        assert c.wait(c.call("POST", f"/nodes/{NODE}/lxc/900/status/stop")) == "OK"
        print(f"{'stop':<42} {time.perf_counter() - t0:8.2f} s")
    finally:
        server.stop()
        node.reset()
        remove_recorded_subids(runtime.subid_record)
        shutil.rmtree(labdir, ignore_errors=True)


if __name__ == "__main__":
    main()
