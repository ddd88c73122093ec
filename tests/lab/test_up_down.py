"""``lab up`` brings every part up (idempotently); ``down`` leaves the machine as it was."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import requests
from labkit import host_tmpdir, make_lab, ssh

from pvelab.control import Lab
from pvelab.runtime.lxc import SUBID_LEDGER

pytestmark = pytest.mark.lab


def _machine_state(ours: Lab) -> dict[str, object]:
    """What a lab could leave behind, minus what other labs running at the same time (other
    engineers', other tests: their bridges, veths, tagged rules, ports) change meanwhile."""

    def run(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    def foreign(line: str) -> bool:
        names = re.findall(r"\b(pvlab\w+|veth\w+)", line)
        tags = re.findall(r"pvestack-lab:(\w+)", line)
        return any(n != ours.settings.bridge for n in [*names, *tags])

    def rules(table: str) -> list[str]:
        text = run("iptables-save", "-t", table)
        return sorted(
            ln for ln in text.splitlines() if not ln.startswith(("#", ":")) and not foreign(ln)
        )

    s = ours.settings
    own_ports = {f"127.0.0.1:{p}" for p in (s.api_port, s.ssh_port, s.http_port)}
    saved = run("iptables-save", "-t", "filter") + run("iptables-save", "-t", "nat")
    other_labs = any("pvestack-lab:" in ln and foreign(ln) for ln in saved.splitlines())
    claims = SUBID_LEDGER.read_text().splitlines() if SUBID_LEDGER.exists() else []
    return {
        "links": sorted(
            ln.split()[1] for ln in run("ip", "-o", "link").splitlines() if not foreign(ln)
        ),
        "addrs": [ln for ln in run("ip", "-o", "-4", "addr").splitlines() if not foreign(ln)],
        "filter": rules("filter"),
        "nat": rules("nat"),
        "subid-claims": [ln for ln in claims if str(ours.dir) in ln],
        # forwarding is the machine's own business only when no other lab runs
        "ip_forward": None if other_labs else Path("/proc/sys/net/ipv4/ip_forward").read_text(),
        "listening": sorted(
            ln.split()[3] for ln in run("ss", "-Hltn").splitlines() if ln.split()[3] in own_ports
        ),
    }


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_up_then_down_leaves_nothing() -> None:
    lab = make_lab(host_tmpdir("pvestack-labtest-"), 2)
    before = _machine_state(lab)
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
        ).stdout.count(f'pvestack-lab:{lab.settings.bridge}"')
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
    assert _machine_state(lab) == before


def test_cli_up_env_status_down() -> None:
    """``pvestack lab ...`` as a user runs it (ports from the lab dir's saved settings)."""
    lab = make_lab(host_tmpdir("pvestack-labcli-"), 3)
    lab.dir.joinpath("lab.json").write_text(json.dumps(asdict(lab.settings)))
    exe = str(Path(sys.executable).with_name("pvestack"))
    d = ["--lab-dir", str(lab.dir)]
    try:
        up = subprocess.run([exe, "lab", "up", "--no-install", *d], capture_output=True,
                            text=True, check=False)  # fmt: skip
        assert up.returncode == 0, up.stderr
        assert all(line.startswith(("export ", "case ")) for line in up.stdout.splitlines())
        env = subprocess.run([exe, "lab", "env", *d], capture_output=True, text=True, check=True)
        assert env.stdout == up.stdout
        shown = subprocess.run(
            ["sh", "-c", 'eval "$1"; echo "$PVESTACK_API_URL $PVESTACK_LAB_BRIDGE"', "sh",
             env.stdout],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        assert shown == [f"https://127.0.0.1:{lab.settings.api_port}", lab.settings.bridge]
        status = subprocess.run(
            [exe, "lab", "status", "--json", *d], capture_output=True, text=True, check=True
        )
        st = json.loads(status.stdout)
        assert st["api_pid"] and st["network"]["bridge_up"]
    finally:
        down = subprocess.run([exe, "lab", "down", "--purge", *d], capture_output=True,
                              text=True, check=False)  # fmt: skip
    assert down.returncode == 0, down.stderr
    assert not lab.dir.exists()
    assert not _port_open(lab.settings.api_port)
    nope = subprocess.run([exe, "lab", "env", *d], capture_output=True, text=True, check=False)
    assert nope.returncode == 1 and "not up" in nope.stderr
