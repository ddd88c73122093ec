"""The lab's create -> running time (and the API's latency), printed.

Run as root against a lab that is up (``eval "$(pvestack lab env)"``)::

    .venv/bin/python benchmarks/lab_create.py [--vmid 990] [--rounds 3]

It downloads the template through ``download-url`` when the storage lacks it, then per
round: create (token) -> start -> systemd up and a DHCP address -> destroy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import requests

from pvelab.control import Lab


class Client:
    def __init__(self, env: dict[str, str], cafile: Path) -> None:
        self.base = env["PVESTACK_API_URL"] + "/api2/json"
        self.node = env["PVESTACK_NODE"]
        self.s = requests.Session()
        self.cafile = str(cafile)  # per request: REQUESTS_CA_BUNDLE would override a session's
        self.s.headers["Authorization"] = (
            f"PVEAPIToken={env['PVESTACK_TOKEN_ID']}={env['PVESTACK_TOKEN_SECRET']}"
        )

    def req(self, method: str, path: str, **params: Any) -> Any:
        url = self.base + path.replace("{node}", self.node)
        if method == "GET":
            r = self.s.get(url, params=params, timeout=120, verify=self.cafile)
        else:
            r = self.s.request(method, url, data=params, timeout=120, verify=self.cafile)
        if r.status_code != 200:
            raise SystemExit(f"{method} {path}: {r.status_code} {r.text}")
        return r.json()["data"]

    def wait(self, upid: str) -> None:
        while True:
            st = self.req("GET", f"/nodes/{{node}}/tasks/{upid}/status")
            if st["status"] == "stopped":
                if st.get("exitstatus") != "OK":
                    raise SystemExit(f"task failed: {st}")
                return
            time.sleep(0.2)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--vmid", type=int, default=990)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--lab-dir", type=Path, default=None)
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root, with the lab up (pvestack lab up)")
    lab = Lab(args.lab_dir)
    env = lab.env()
    api = Client(env, lab.dir / "etc/pve/local/pve-ssl.pem")
    rt = lab.runtime()

    lat = []
    for _ in range(20):
        t = time.perf_counter()
        api.req("GET", "/version")
        lat.append((time.perf_counter() - t) * 1000)
    print(f"API latency GET /version: median {statistics.median(lat):.1f} ms, "
          f"max {max(lat):.1f} ms (n={len(lat)})")  # fmt: skip

    name = env["PVESTACK_LAB_TEMPLATE_URL"].rsplit("/", 1)[1]
    content = api.req("GET", "/nodes/{node}/storage/local/content", content="vztmpl")
    if not any(c["volid"].endswith(name) for c in content):
        t = time.perf_counter()
        url = env["PVESTACK_LAB_TEMPLATE_URL"]
        api.wait(api.req(
            "POST", "/nodes/{node}/storage/local/download-url", url=url,
            content="vztmpl", filename=name, checksum=env.get("PVESTACK_LAB_TEMPLATE_SHA512", ""),
            **{"checksum-algorithm": "sha512"},
        ))  # fmt: skip
        print(f"download-url template: {time.perf_counter() - t:.1f} s")

    results = []
    for i in range(args.rounds):
        vmid = args.vmid
        t0 = time.perf_counter()
        api.wait(api.req(
            "POST", "/nodes/{node}/lxc", vmid=vmid, ostemplate=f"local:vztmpl/{name}",
            hostname=f"bench{i}", unprivileged=1, features="nesting=1", memory=512,
            rootfs=f"{env['PVESTACK_LAB_ROOTDIR_STORAGE']}:4",
            net0=f"name=eth0,bridge={env['PVESTACK_LAB_BRIDGE']},ip=dhcp",
        ))  # fmt: skip
        t1 = time.perf_counter()
        api.wait(api.req("POST", f"/nodes/{{node}}/lxc/{vmid}/status/start"))
        t2 = time.perf_counter()
        ip = None
        while time.perf_counter() - t2 < 120:
            ip = rt.ip_address(vmid)
            if ip:
                break
            time.sleep(0.2)
        t3 = time.perf_counter()
        api.wait(api.req("POST", f"/nodes/{{node}}/lxc/{vmid}/status/stop"))
        api.wait(api.req("DELETE", f"/nodes/{{node}}/lxc/{vmid}"))
        results.append(t3 - t0)
        print(
            f"round {i + 1}: create {t1 - t0:.2f} s, start {t2 - t1:.2f} s, "
            f"DHCP address {ip} after {t3 - t2:.2f} s; create->running+ip {t3 - t0:.2f} s"
        )
    print(f"create->running (with address): median {statistics.median(results):.2f} s "
          f"over {len(results)} rounds")  # fmt: skip


if __name__ == "__main__":
    main()
