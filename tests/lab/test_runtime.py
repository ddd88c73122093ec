"""LxcRuntime on real LXC: keyctl's seccomp rule, cgroup limits, a custom idmap, a static
address, and ``destroy``."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pvelab.control import Lab
from pvelab.runtime import template
from pvelab.runtime.lxc import LxcRuntime

pytestmark = pytest.mark.lab

# keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0) through perl (in the template).
KEYCTL = "perl -e '$r = syscall(250, 0, -3, 0); print $r < 0 ? qq{$!} : qq{ok}'"


def _conf(rt: LxcRuntime, vmid: int, lab: Lab, **extra: str) -> dict[str, str]:
    rootfs = rt.volume_path(f"local-lvm:vm-{vmid}-disk-0", vmid)
    mac = f"BC:24:11:00:00:{vmid % 100:02d}"
    return {
        "arch": "amd64",
        "ostype": "debian",
        "hostname": f"rt{vmid}",
        "memory": "768",
        "swap": "256",
        "cores": "1",
        "rootfs": f"{rootfs},size=4G",
        "unprivileged": "1",
        "net0": f"name=eth0,bridge={lab.settings.bridge},hwaddr={mac},ip=dhcp",
        **extra,
    }


def _wait_running(rt: LxcRuntime, vmid: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out = rt.exec(vmid, ["systemctl", "is-system-running"]).stdout.decode().strip()
        if out in ("running", "degraded"):
            return
        time.sleep(0.5)
    raise AssertionError("systemd did not come up")


def test_keyctl_seccomp_and_cgroup_limits(lab: Lab) -> None:
    rt = lab.runtime()
    tpl = template.cached(lab.cache)
    assert tpl is not None
    vmid = 301
    conf = _conf(rt, vmid, lab)
    rt.create_rootfs(vmid, tpl.path, rt.volume_path(f"local-lvm:vm-{vmid}-disk-0", vmid), [], True)
    try:
        rt.start(vmid, conf, [])
        assert rt.state(vmid) == "running"
        out = rt.exec(vmid, ["sh", "-c", KEYCTL]).stdout.decode()
        assert out == "Function not implemented", out  # ENOSYS, as PVE without keyctl=1
        limit = subprocess.run(
            ["lxc-cgroup", "-n", str(vmid), "-P", str(rt.lxcpath), "memory.limit_in_bytes"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        assert int(limit) == 768 * 1024 * 1024
        cpus = subprocess.run(
            ["lxc-cgroup", "-n", str(vmid), "-P", str(rt.lxcpath), "cpuset.cpus"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        assert cpus == "0"
        rt.shutdown(vmid, 20)
        assert rt.state(vmid) == "stopped"

        rt.start(vmid, {**conf, "features": "keyctl=1,nesting=1"}, [])
        out = rt.exec(vmid, ["sh", "-c", KEYCTL]).stdout.decode()
        assert out != "Function not implemented", out
        rt.stop(vmid)
        assert rt.state(vmid) == "stopped"
    finally:
        rt.destroy(vmid)
    assert not (rt.lxcpath / str(vmid)).exists()
    assert not rt.volume_path(f"local-lvm:vm-{vmid}-disk-0", vmid).exists()


def test_custom_idmap_and_static_address(lab: Lab, host_dir: Path) -> None:
    rt = lab.runtime()
    tpl = template.cached(lab.cache)
    assert tpl is not None
    vmid = 302
    idmap = ["u 0 300000 65536", "g 0 300000 65536"]
    rootfs = rt.volume_path(f"local-lvm:vm-{vmid}-disk-0", vmid)
    host_dir.chmod(0o777)
    static = str(lab.net.network.network_address + 50)
    conf = _conf(
        rt, vmid, lab,
        net0=f"name=eth0,bridge={lab.settings.bridge},ip={static}/24,gw={lab.net.gateway}",
        mp0=f"{host_dir},mp=/data",
    )  # fmt: skip
    try:
        rt.create_rootfs(vmid, tpl.path, rootfs, idmap, True)
        assert (rootfs / "etc").stat().st_uid == 300000
        assert "root:300000:65536" in Path("/etc/subuid").read_text()
        rt.start(vmid, conf, [("lxc.idmap", line) for line in idmap])
        _wait_running(rt, vmid)
        r = rt.exec(vmid, ["sh", "-c", "touch /data/f && ip -4 -o addr show eth0"])
        assert r.returncode == 0, r.stderr
        assert f"{static}/24" in r.stdout.decode()
        assert (host_dir / "f").stat().st_uid == 300000
        deadline = time.monotonic() + 20
        while rt.ip_address(vmid) is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert rt.ip_address(vmid) == static
    finally:
        rt.destroy(vmid)


@pytest.fixture
def forward_drop() -> Iterator[None]:
    """The host as a Docker engine leaves it: FORWARD policy DROP."""
    before = subprocess.run(
        ["iptables", "-S", "FORWARD"], capture_output=True, text=True, check=True
    ).stdout.splitlines()[0]
    subprocess.run(["iptables", "-P", "FORWARD", "DROP"], check=True)
    try:
        yield
    finally:
        subprocess.run(["iptables", "-P", "FORWARD", before.split()[2]], check=True)


def test_egress_to_the_debian_mirror_with_forward_policy_drop(lab: Lab, forward_drop: None) -> None:
    rt = lab.runtime()
    tpl = template.cached(lab.cache)
    assert tpl is not None
    vmid = 303
    rootfs = rt.volume_path(f"local-lvm:vm-{vmid}-disk-0", vmid)
    try:
        rt.create_rootfs(vmid, tpl.path, rootfs, [], True)
        rt.start(vmid, _conf(rt, vmid, lab), [])
        _wait_running(rt, vmid)
        deadline = time.monotonic() + 30
        while rt.ip_address(vmid) is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert (rootfs / "etc/resolv.conf").read_text() == f"nameserver {lab.net.gateway}\n"
        r = rt.exec(vmid, ["apt-get", "update", "-q"], timeout=180)
        assert r.returncode == 0, r.stdout.decode()[-1000:] + r.stderr.decode()[-1000:]
        assert b"Err:" not in r.stdout
    finally:
        rt.destroy(vmid)


def test_split_idmap_passes_one_uid_through(lab: Lab, host_dir: Path) -> None:
    """The classic Proxmox recipe: container uid/gid 1000 is host 1000, the rest shifted."""
    rt = lab.runtime()
    tpl = template.cached(lab.cache)
    assert tpl is not None
    vmid = 304
    idmap = [
        f"{k} {ct} {host} {n}"
        for k in ("u", "g")
        for ct, host, n in ((0, 100000, 1000), (1000, 1000, 1), (1001, 101001, 64535))
    ]
    rootfs = rt.volume_path(f"local-lvm:vm-{vmid}-disk-0", vmid)
    host_dir.chmod(0o777)
    conf = _conf(rt, vmid, lab, mp0=f"{host_dir},mp=/data")
    try:
        rt.create_rootfs(vmid, tpl.path, rootfs, idmap, True)
        assert "root:1000:1" in Path("/etc/subuid").read_text()
        rt.start(vmid, conf, [("lxc.idmap", line) for line in idmap])
        r = rt.exec(
            vmid,
            ["sh", "-c", "setpriv --reuid=1000 --regid=1000 --clear-groups touch /data/u1000 "
             "&& touch /data/u0"],
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        st = (host_dir / "u1000").stat()
        assert (st.st_uid, st.st_gid) == (1000, 1000)
        assert (host_dir / "u0").stat().st_uid == 100000
    finally:
        rt.destroy(vmid)
