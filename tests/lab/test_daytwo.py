"""Day two on real LXC: a snapshot of a running CT, a file written after it, a rollback
(the file is gone, the CT runs again); a vzdump archive of it, listed with its notes, and
PVE's own restore command (``pct restore`` over the node's SSH) into a new vmid that
starts with the data the backup held."""

from __future__ import annotations

import time

import pytest
from labkit import Api, download_template, ssh, wait_systemd

from pvelab.control import Lab

pytestmark = pytest.mark.lab

VMID, RESTORED = 251, 252


def _sh(lab: Lab, vmid: int, script: str) -> tuple[int, str]:
    r = lab.runtime().exec(vmid, ["sh", "-c", script])
    return r.returncode, r.stdout.decode()


def test_snapshot_rollback_then_vzdump_and_pct_restore(
    lab: Lab, env: dict[str, str], api: Api
) -> None:
    name = download_template(api, env)
    upid = api.ok(
        "POST", "/nodes/{node}/lxc", vmid=VMID, ostemplate=f"local:vztmpl/{name}",
        hostname="daytwo", unprivileged=1, memory=512, swap=256, cores=1, start=1,
        rootfs=f"{env['PVESTACK_LAB_ROOTDIR_STORAGE']}:2",
        net0=f"name=eth0,bridge={env['PVESTACK_LAB_BRIDGE']},ip=dhcp",
    )  # fmt: skip
    assert api.wait(upid)["exitstatus"] == "OK"
    wait_systemd(lab, VMID)
    assert _sh(lab, VMID, "echo kept > /root/before.txt")[0] == 0

    # snapshot (running CT), write a file, roll back with start=1: the file is gone
    snap = time.strftime("pvestack-%Y%m%dT%H%M%SZ", time.gmtime())
    t0 = time.monotonic()
    upid = api.ok("POST", f"/nodes/{{node}}/lxc/{VMID}/snapshot", snapname=snap)
    assert api.wait(upid)["exitstatus"] == "OK"
    t_snap = time.monotonic() - t0
    assert _sh(lab, VMID, "echo broken > /root/after.txt")[0] == 0
    t0 = time.monotonic()
    upid = api.ok("POST", f"/nodes/{{node}}/lxc/{VMID}/snapshot/{snap}/rollback", start=1)
    assert api.wait(upid)["exitstatus"] == "OK"
    wait_systemd(lab, VMID)
    t_rollback = time.monotonic() - t0
    assert _sh(lab, VMID, "test -e /root/after.txt")[0] != 0
    assert _sh(lab, VMID, "cat /root/before.txt") == (0, "kept\n")
    print(f"\nsnapshot {t_snap:.1f}s, rollback+start {t_rollback:.1f}s")

    # vzdump (snapshot mode, zstd) into local:backup, listed with its notes
    upid = api.ok(
        "POST", "/nodes/{node}/vzdump", vmid=VMID, storage="local", mode="snapshot",
        compress="zstd", **{"notes-template": "{{guestname}} (pvestack-stack: daytwo)"},
    )  # fmt: skip
    st = api.wait(upid)
    assert st["exitstatus"] == "OK", st
    backups = api.ok("GET", "/nodes/{node}/storage/local/content", content="backup")
    [b] = [x for x in backups if x["vmid"] == VMID]
    assert b["volid"].endswith(".tar.zst") and b["notes"] == "daytwo (pvestack-stack: daytwo)"
    snaps = api.ok("GET", f"/nodes/{{node}}/lxc/{VMID}/snapshot")
    assert "vzdump" not in [s["name"] for s in snaps]

    # PVE's restore command, as root on the node, into a new vmid; it starts with the data
    r = ssh(env, f"pct restore {RESTORED} {b['volid']} --storage local-lvm --unique", timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    cfg = api.ok("GET", f"/nodes/{{node}}/lxc/{RESTORED}/config")
    assert cfg["hostname"] == "daytwo" and cfg["rootfs"].startswith(f"local-lvm:vm-{RESTORED}-")
    assert (
        cfg["net0"].split("hwaddr=")[1][:17]
        != api.ok("GET", f"/nodes/{{node}}/lxc/{VMID}/config")["net0"].split("hwaddr=")[1][:17]
    )  # --unique
    upid = api.ok("POST", f"/nodes/{{node}}/lxc/{RESTORED}/status/start")
    assert api.wait(upid)["exitstatus"] == "OK"
    wait_systemd(lab, RESTORED)
    assert _sh(lab, RESTORED, "cat /root/before.txt") == (0, "kept\n")
    # GET .../interfaces: `ip --json a` in the CT's network namespace, as PVE reads it
    addrs: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not addrs:
        rows = api.ok("GET", f"/nodes/{{node}}/lxc/{RESTORED}/interfaces")
        addrs = [r["inet"] for r in rows if r["name"] == "eth0" and r.get("inet")]
        time.sleep(1)
    assert addrs and addrs[0].startswith(lab.settings.subnet.rsplit(".", 1)[0] + "."), addrs
    owner = _sh(lab, RESTORED, "stat -c %u:%g /root/before.txt")[1].strip()
    assert owner == "0:0"  # the archive holds the CT's view of owners; restore maps them back
    for vmid in (RESTORED, VMID):
        upid = api.ok("DELETE", f"/nodes/{{node}}/lxc/{vmid}", force=1)
        assert api.wait(upid)["exitstatus"] == "OK"
