"""``lab up`` brings every part up (idempotently); ``down`` leaves the machine as it was."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
import requests
from labkit import host_tmpdir, make_lab, ssh

pytestmark = pytest.mark.lab


def _machine_state() -> dict[str, object]:
    def run(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    def strip_counters(text: str) -> list[str]:
        return sorted(ln for ln in text.splitlines() if not ln.startswith(("#", ":")))

    return {
        "links": sorted(ln.split()[1] for ln in run("ip", "-o", "link").splitlines()),
        "addrs": run("ip", "-o", "-4", "addr"),
        "filter": strip_counters(run("iptables-save", "-t", "filter")),
        "nat": strip_counters(run("iptables-save", "-t", "nat")),
        "subuid": Path("/etc/subuid").read_text(),
        "subgid": Path("/etc/subgid").read_text(),
        "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text(),
        "listening": sorted(
            ln.split()[3] for ln in run("ss", "-Hltn").splitlines() if "127.0.0.1:1" in ln
        ),
    }


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_up_then_down_leaves_nothing() -> None:
    before = _machine_state()
    lab = make_lab(host_tmpdir("pvestack-labtest-"), 2)
    try:
        env = lab.up(install=False)
        again = lab.up(install=False)  # idempotent: same connection, nothing duplicated
        assert again == env
        st = lab.status()
        assert st["api_pid"] and st["sshd_pid"] and st["template_http_pid"]
        net = st["network"]
        assert isinstance(net, dict)
        assert net["bridge_up"] and net["dnsmasq_pid"] and net["rules"] == 5
        rules = subprocess.run(
            ["iptables-save"], capture_output=True, text=True, check=True
        ).stdout.count("pvestack-lab:pvlabt2")
        assert rules == 5
        # secrets files are private
        assert (lab.secrets_file.stat().st_mode & 0o777) == 0o600
        assert (Path(env["PVESTACK_SSH_KEY"]).stat().st_mode & 0o777) == 0o600
        # the API answers with the token, over the pinned certificate
        r = requests.get(
            env["PVESTACK_API_URL"] + "/api2/json/version",
            headers={
                "Authorization": (
                    f"PVEAPIToken={env['PVESTACK_TOKEN_ID']}={env['PVESTACK_TOKEN_SECRET']}"
                )
            },
            verify=str(lab.dir / "etc/pve/local/pve-ssl.pem"),
            timeout=10,
        )
        assert r.status_code == 200 and "version" in r.json()["data"]
        # the template is served with the published checksum
        head = requests.head(env["PVESTACK_LAB_TEMPLATE_URL"], timeout=10)
        assert head.status_code == 200
        # root over SSH finds pct on PATH, on this lab's state
        out = ssh(env, "command -v pct && pct list")
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(str(lab.dir / "bin" / "pct"))
        assert "VMID" in out.stdout
    finally:
        lab.down(purge=True)
    assert not _port_open(lab.settings.api_port)
    assert not _port_open(lab.settings.ssh_port)
    assert not _port_open(lab.settings.http_port)
    assert not os.path.exists(f"/sys/class/net/{lab.settings.bridge}")
    assert not lab.dir.exists()
    assert _machine_state() == before
