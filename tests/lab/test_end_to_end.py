"""The issue's end-to-end test through the lab, on real LXC:

a token creates an unprivileged CT; root (``pct set`` over SSH) adds ``keyctl=1`` and a
bind mount of a host dir owned by 100000; the CT boots systemd and gets a DHCP address;
a file written as root inside lands on the host owned by 100000; Docker installed inside
(``apt-get install docker.io``) runs a nested container (base image from the template,
``docker import``, no registry) whose writes to the bind mount land as 100000 too.
"""

from __future__ import annotations

import ipaddress
import os
import time
from pathlib import Path

import pytest
from labkit import Api, download_template, ssh, wait_systemd

from pvelab.control import Lab
from pvelab.runtime import template

pytestmark = pytest.mark.lab

VMID = 210


def _pct(env: dict[str, str], command: str, timeout: float = 900) -> str:
    r = ssh(env, f"pct {command}", timeout)
    assert r.returncode == 0, f"pct {command}: {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def test_token_root_systemd_dhcp_bindmount_docker_nested(
    lab: Lab, env: dict[str, str], api: Api, host_dir: Path, tmp_path: Path
) -> None:
    t_start = time.monotonic()
    # The token downloads the lab's template (a real HTTP download, checksum verified).
    name = download_template(api, env)

    # The token creates an unprivileged CT with nesting (a token may set nesting alone).
    upid = api.ok(
        "POST",
        "/nodes/{node}/lxc",
        vmid=VMID,
        ostemplate=f"local:vztmpl/{name}",
        hostname="e2e",
        unprivileged=1,
        features="nesting=1",
        memory=2048,
        swap=512,
        cores=2,
        rootfs=f"{env['PVESTACK_LAB_ROOTDIR_STORAGE']}:8",
        net0=f"name=eth0,bridge={env['PVESTACK_LAB_BRIDGE']},ip=dhcp",
    )
    st = api.wait(upid)
    assert st["exitstatus"] == "OK", st

    # The token may not add keyctl or a bind mount: PVE's root-only rules.
    r = api.call("PUT", f"/nodes/{{node}}/lxc/{VMID}/config", features="keyctl=1,nesting=1")
    assert r.status_code == 403, r.text
    os.chown(host_dir, 100000, 100000)
    r = api.call("PUT", f"/nodes/{{node}}/lxc/{VMID}/config", mp0=f"{host_dir},mp=/data")
    assert r.status_code == 403, r.text

    # Root, over SSH with pct, does both.
    _pct(env, f"set {VMID} -features keyctl=1,nesting=1 -mp0 {host_dir},mp=/data")
    config = _pct(env, f"config {VMID}")
    assert "features: keyctl=1,nesting=1" in config
    assert f"mp0: {host_dir},mp=/data" in config
    cfg = api.ok("GET", f"/nodes/{{node}}/lxc/{VMID}/config")
    assert cfg["features"] == "keyctl=1,nesting=1" and cfg["unprivileged"] == 1

    # The token starts it; it boots systemd and gets a DHCP lease on the lab bridge.
    t_start_ct = time.monotonic()
    upid = api.ok("POST", f"/nodes/{{node}}/lxc/{VMID}/status/start")
    assert api.wait(upid)["exitstatus"] == "OK"
    cur = api.ok("GET", f"/nodes/{{node}}/lxc/{VMID}/status/current")
    assert cur["status"] == "running"
    wait_systemd(lab, VMID)
    rt = lab.runtime()
    assert rt.exec(VMID, ["cat", "/proc/1/comm"]).stdout.decode().strip() == "systemd"
    ip, deadline = None, time.monotonic() + 60
    while time.monotonic() < deadline and ip is None:
        ip = rt.ip_address(VMID)
        time.sleep(0.5)
    assert ip is not None
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(lab.settings.subnet)
    lease = rt.exec(VMID, ["ip", "-4", "-o", "addr", "show", "eth0"]).stdout.decode()
    assert "dynamic" in lease, lease  # from DHCP, not static
    print(f"\ncreate->running+ip: {time.monotonic() - t_start_ct:.1f}s")

    # What the features mean in the LXC config the runtime wrote (and seccomp: keyctl allowed).
    lxc_conf = (lab.dir / "lxc" / str(VMID) / "config").read_text()
    assert "lxc.mount.auto = proc:rw sys:rw cgroup:rw:force" in lxc_conf
    assert "nesting.conf" in lxc_conf
    assert "lxc.idmap = u 0 100000 65536" in lxc_conf
    assert f"lxc.mount.entry = {host_dir} data none bind,create=dir 0 0" in lxc_conf
    assert "keyctl" not in (lab.dir / "lxc" / str(VMID) / "rules.seccomp").read_text()
    assert "# keyctl: allowed (keyctl=1)" in lxc_conf

    # A file written as root inside lands on the host owned by 100000.
    out = ssh(env, f"pct exec {VMID} -- sh -c 'id -u && echo hello > /data/from-root.txt'")
    assert out.returncode == 0 and out.stdout.strip() == "0", out.stderr
    st_host = (host_dir / "from-root.txt").stat()
    assert (st_host.st_uid, st_host.st_gid) == (100000, 100000)
    assert (host_dir / "from-root.txt").read_text() == "hello\n"

    # pct exec passes stdin through (how payloads reach a guest without argv)
    piped = ssh(env, f"pct exec {VMID} -- sh -c 'cat > /root/in.txt && wc -c < /root/in.txt'",
                stdin="payload-on-stdin")  # fmt: skip
    assert piped.returncode == 0 and piped.stdout.strip() == "16", piped.stderr

    # push / pull through root's pct
    src = tmp_path / "pushed.txt"
    src.write_text("pushed\n")
    _pct(env, f"push {VMID} {src} /root/pushed.txt --perms 0600")
    mode = rt.exec(VMID, ["stat", "-c", "%a %U", "/root/pushed.txt"]).stdout.decode().split()
    assert mode == ["600", "root"]
    _pct(env, f"pull {VMID} /etc/hostname {tmp_path / 'hostname'}")
    assert (tmp_path / "hostname").read_text() == "e2e\n"

    # Docker inside the CT (Debian's docker.io; the packages come through the lab's NAT).
    install = rt.exec(
        VMID,
        ["sh", "-c", "apt-get update -q && DEBIAN_FRONTEND=noninteractive "
         "apt-get install -y -q --no-install-recommends docker.io"],
        timeout=900,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr.decode()[-2000:]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if rt.exec(VMID, ["docker", "info"]).returncode == 0:
            break
        time.sleep(1)
    info = rt.exec(VMID, ["docker", "info", "--format", "{{.Driver}}"])
    assert info.returncode == 0, info.stderr.decode()
    # A base image without a registry: the template's rootfs, imported.
    tpl = template.cached(lab.cache)
    assert tpl is not None
    _pct(env, f"push {VMID} {tpl.path} /root/base.tar.zst")
    imp = rt.exec(
        VMID, ["sh", "-c", "zstd -dcq /root/base.tar.zst | docker import - labbase"], timeout=300
    )
    assert imp.returncode == 0, imp.stderr.decode()
    run = rt.exec(
        VMID,
        ["docker", "run", "--rm", "-v", "/data:/data", "labbase",
         "sh", "-c", "echo nested > /data/from-nested.txt && id -u"],
        timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr.decode()
    assert run.stdout.decode().strip() == "0"
    st_nested = (host_dir / "from-nested.txt").stat()
    assert (st_nested.st_uid, st_nested.st_gid) == (100000, 100000)
    print(f"end-to-end total: {time.monotonic() - t_start:.1f}s")

    # Root's pct sees the same state as the API, and reboots it.
    assert _pct(env, f"status {VMID}").strip() == "status: running"
    _pct(env, f"reboot {VMID}")
    assert rt.state(VMID) == "running"
    assert api.ok("GET", f"/nodes/{{node}}/lxc/{VMID}/status/current")["status"] == "running"
    bad = ssh(env, f"pct set {VMID} -features bogus=1")
    assert bad.returncode == 255 and "400 Parameter verification failed." in bad.stderr

    # The token stops it (and a running CT cannot be deleted).
    r = api.call("DELETE", f"/nodes/{{node}}/lxc/{VMID}")
    assert r.status_code == 500
    upid = api.ok("POST", f"/nodes/{{node}}/lxc/{VMID}/status/stop")
    assert api.wait(upid)["exitstatus"] == "OK"
    assert rt.state(VMID) == "stopped"
    _pct(env, f"set {VMID} -delete mp0")
    assert "mp0" not in _pct(env, f"config {VMID}")
    assert "mp0" not in api.ok("GET", f"/nodes/{{node}}/lxc/{VMID}/config")

    # onboot=1: `lab up` again (as after a reboot of the machine) starts it, as PVE's boot does.
    api.ok("PUT", f"/nodes/{{node}}/lxc/{VMID}/config", onboot=1)
    assert lab.up(install=False) == env
    assert rt.state(VMID) == "running"
