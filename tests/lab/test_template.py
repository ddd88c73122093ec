"""The lab's template, as ``lab up`` built it: debian-12-standard-like, checksum recorded,
served over loopback HTTP byte for byte."""

from __future__ import annotations

import hashlib
import subprocess

import pytest
import requests

from pvelab.control import Lab
from pvelab.runtime import template

pytestmark = pytest.mark.lab

NEEDED = (
    "./usr/sbin/init",  # systemd-sysv
    "./usr/lib/systemd/systemd",
    "./usr/sbin/ifup",  # ifupdown
    "./usr/sbin/dhclient",  # isc-dhcp-client
    "./usr/bin/curl",
    "./usr/bin/gpg",
    "./usr/sbin/update-ca-certificates",
    "./usr/bin/lsb_release",
    "./usr/sbin/sshd",
    "./usr/bin/ssh",
    "./usr/bin/zstd",
    "./etc/network/interfaces",
)


def test_template_contents_checksum_and_http(lab: Lab, env: dict[str, str]) -> None:
    tpl = template.cached(lab.cache)
    assert tpl is not None
    assert tpl.name == template.TEMPLATE_NAME
    assert template.sha512_of(tpl.path) == tpl.sha512 == env["PVESTACK_LAB_TEMPLATE_SHA512"]
    listing = subprocess.run(
        f"zstd -dcq {tpl.path} | tar -tvf - --numeric-owner",
        shell=True, capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    names = {line.split()[5].rstrip("/") for line in listing if len(line.split()) >= 6}
    missing = [n for n in NEEDED if n not in names]
    assert not missing, missing
    # owners are the container's own ids (0), shifted only when a CT is created
    owners = {line.split()[1] for line in listing}
    assert "0/0" in owners and not any(o.startswith("100000/") for o in owners)
    # no SSH host keys shipped (each CT makes its own), DHCP on eth0
    assert not [n for n in names if n.startswith("./etc/ssh/ssh_host_")]
    ifaces = subprocess.run(
        f"zstd -dcq {tpl.path} | tar -xOf - ./etc/network/interfaces",
        shell=True, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "iface eth0 inet dhcp" in ifaces
    # the loopback HTTP server serves exactly these bytes, and the checksum file
    h = hashlib.sha512()
    with requests.get(env["PVESTACK_LAB_TEMPLATE_URL"], stream=True, timeout=30) as r:
        assert r.status_code == 200
        for chunk in r.iter_content(1 << 20):
            h.update(chunk)
    assert h.hexdigest() == tpl.sha512
    sums = requests.get(env["PVESTACK_LAB_TEMPLATE_URL"] + ".sha512", timeout=10).text
    assert sums.split()[0] == tpl.sha512


def test_apt_mirror_is_this_machines() -> None:
    mirror = template.apt_mirror()
    assert mirror.startswith(("http://", "https://"))
    sources = subprocess.run(
        "cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null",
        shell=True, capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    assert mirror in sources
