"""How many API calls, and how long (in process), a no-op ``plan`` costs on clusters of
10, 1,000 and 5,000 guests.

fakepve (the test emulator, on loopback) is seeded with N guests (VMs and
containers) plus the example's Hermes stack, created by pvestack's own apply and
then finished the way root would finish it (features + bind mounts). A no-op
plan is then timed. Target: 2 API calls (``pending`` + ``status/current``), a time
that does not grow with the cluster.

    .venv/bin/python benchmarks/plan_calls.py [--guests 10 1000 5000] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from fakepve import FakePve
from fakepve.certs import make_cert

from pvestack._config import parse_config
from pvestack._desired import build_desired
from pvestack._engine import RootAccess, apply, connect, plan

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "hermes.toml"
TOKEN_ID = "bench@pve!plan"
TOKEN_SECRET = "bench-secret"


class Served:
    """A FakePve on its own event loop in a thread."""

    def __init__(self, pve: FakePve, certfile: str, keyfile: str) -> None:
        self.pve = pve
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(pve.start(certfile, keyfile), self.loop).result(30)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.pve.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def seed(pve: Any, guests: int) -> None:
    pve.add_node("gihyeon")
    for n in range(2, 5):
        pve.add_node(f"node{n}")
    for i in range(guests):
        vmid = 1000 + i
        node = "gihyeon" if i % 4 == 0 else f"node{2 + i % 3}"
        if i % 2:
            pve.add_vm(vmid, f"vm{vmid}", node=node, status="running" if i % 3 else "stopped")
        else:
            pve.add_ct(vmid, f"ct{vmid}", node=node, status="running", config={"tags": "misc"})
    pve.apitokens[TOKEN_ID] = TOKEN_SECRET
    pve.grant(
        TOKEN_ID,
        "/",
        "VM.Allocate", "VM.Audit", "VM.Config.CPU", "VM.Config.Memory", "VM.Config.Disk",
        "VM.Config.Network", "VM.Config.Options", "VM.PowerMgmt", "Datastore.AllocateSpace",
        "Datastore.AllocateTemplate", "Datastore.Audit", "Sys.Audit", "Sys.Modify", "SDN.Use",
    )  # fmt: skip


def measure(guests: int, runs: int) -> tuple[int, list[int], list[float]]:
    """(guests on the cluster, calls per run, seconds per run) of a no-op plan."""
    with tempfile.TemporaryDirectory() as tmp:
        certfile, keyfile, _ = make_cert(tmp, hosts=("127.0.0.1",))
        pve = FakePve(host="127.0.0.1", port=0)
        pve.time_scale = 0
        seed(pve, guests)
        served = Served(pve, certfile, keyfile)
        try:
            env = {
                "PVESTACK_API_URL": pve.url,
                "PVESTACK_TOKEN_ID": TOKEN_ID,
                "PVESTACK_TOKEN_SECRET": TOKEN_SECRET,
                "PVESTACK_CA_FILE": certfile,
                "LITELLM_API_KEY": "bench",
            }
            os.environ.update(env)
            cfg = parse_config(EXAMPLE.read_text(), str(EXAMPLE), env=env)
            client = connect(cfg)
            desired = build_desired(cfg, with_apps=False)
            first = plan(desired, client)
            apply(first.plan, client, root=RootAccess(None, "benchmark: no root"))
            # what the root steps would have done (pct set features + bind mounts)
            ct = pve.ct(118)
            ct.config["features"] = "keyctl=1,nesting=1"
            ct.config["mp0"] = "/mnt/pve/hdd/hermes,mp=/data"
            ct.config["mp1"] = "/media/2tb/hermes,mp=/fast"
            times: list[float] = []
            calls: list[int] = []
            for _ in range(runs):
                t0 = time.perf_counter()
                r = plan(desired, client)
                times.append(time.perf_counter() - t0)
                calls.append(r.api_calls)
                if r.plan.actions:
                    raise SystemExit(f"unexpected changes: {[a.id for a in r.plan.actions]}")
            n_guests = len(client.get("/cluster/resources", type="vm"))
        finally:
            served.stop()
    return n_guests, calls, times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--guests", type=int, nargs="+", default=[10, 1000, 5000])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    print(f"{'guests':>8} {'calls':>6} {'median ms':>10} {'max ms':>8}   (no-op plan, in process)")
    worst = 0
    for n in args.guests:
        total, calls, times = measure(n, args.runs)
        worst = max(worst, *calls)
        print(f"{total:>8} {max(calls):>6} {statistics.median(times) * 1000:>10.1f} "
              f"{max(times) * 1000:>8.1f}")  # fmt: skip
    print(f"target: 2 calls whatever the cluster's size; worst seen {worst}")
    return 0 if worst <= 2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
