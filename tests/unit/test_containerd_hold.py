"""The docker-ce install that holds containerd.io below the runc 1.3.3 release.

``INSTALL_HELD_CONTAINERD`` is run by ``sh`` with stand-ins for apt-cache (Docker's
repository as ``apt-cache madison`` lists it), dpkg (``--compare-versions`` as dpkg
does, through python-debian) and apt-get/apt-mark (recorded). Docker's repository is
not reachable from here: the rendered commands are what is tested."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_guest import VMID, hermes_spec

from pvestack._steps import guest

pytestmark = pytest.mark.skipif(shutil.which("sh") is None, reason="sh is needed")

MADISON = """\
containerd.io | 1.7.28-2~debian.13~trixie | https://download.docker.com/linux/debian trixie/stable amd64 Packages
containerd.io | 2.1.4-1~debian.13~trixie | https://download.docker.com/linux/debian trixie/stable amd64 Packages
containerd.io | 1.7.27-1 | https://download.docker.com/linux/debian trixie/stable amd64 Packages
containerd.io | 1.7.28-1~debian.13~trixie | https://download.docker.com/linux/debian trixie/stable amd64 Packages
containerd.io | 1.7.25-1 | https://download.docker.com/linux/debian trixie/stable amd64 Packages
"""  # noqa: E501

DPKG = f"""#!{sys.executable}
import sys
from debian.debian_support import Version
_, op, a, rel, b = sys.argv
assert op == "--compare-versions", sys.argv
ok = {{"lt": Version(a) < Version(b), "gt": Version(a) > Version(b)}}[rel]
sys.exit(0 if ok else 1)
"""


def run_held(tmp_path: Path, madison: str) -> tuple[subprocess.CompletedProcess[str], str]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls"
    calls.touch()
    (bindir / "madison.txt").write_text(madison)
    (bindir / "apt-cache").write_text(f'#!/bin/sh\ncat "{bindir}/madison.txt"\n')
    (bindir / "dpkg").write_text(DPKG)
    for tool in ("apt-get", "apt-mark"):
        (bindir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >>"{calls}"\n')
    for p in bindir.iterdir():
        p.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    r = subprocess.run(
        ["sh", "-c", "set -eu\n" + guest.INSTALL_HELD_CONTAINERD, "sh"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    return r, calls.read_text()


def test_installs_the_newest_containerd_below_the_breaking_release_and_holds_it(
    tmp_path: Path,
) -> None:
    r, calls = run_held(tmp_path, MADISON)
    assert r.returncode == 0, r.stderr
    install, hold = calls.splitlines()
    assert install.startswith("apt-get ") and "install -y -q --allow-downgrades" in install
    assert "containerd.io=1.7.28-1~debian.13~trixie" in install.split()
    assert "docker-ce" in install.split() and "docker-compose-plugin" in install.split()
    assert hold == "apt-mark hold containerd.io"
    assert "containerd.io 1.7.28-1~debian.13~trixie held" in r.stdout


def test_stops_when_the_repository_has_no_older_containerd(tmp_path: Path) -> None:
    r, calls = run_held(tmp_path, MADISON.splitlines(keepends=True)[0])
    assert r.returncode == 1
    assert "no containerd.io older than 1.7.28-2" in r.stderr
    assert calls == ""  # nothing installed, nothing held


def test_docker_steps_hold_only_for_docker_ce() -> None:
    ce = hermes_spec(docker="docker-ce").app
    deb = hermes_spec(docker="debian").app
    assert ce is not None and deb is not None
    held = guest.docker_steps(ce, VMID, hold_containerd=True)[0]
    plain = guest.docker_steps(ce, VMID)[0]
    text = "\n".join(held.commands[0].argv)
    assert guest.INSTALL_DOCKER_CE_HELD in held.commands[0].argv
    assert guest.INSTALL_HELD_CONTAINERD in text and "held below 1.7.28-2" in held.description
    # the held script is the plain one with only the install line swapped
    assert guest.INSTALL_DOCKER_CE in plain.commands[0].argv
    assert text.count(guest.DOCKER_KEY_FINGERPRINT) == 2
    assert "containerd.io docker-buildx-plugin" not in text
    assert guest.docker_steps(deb, VMID, hold_containerd=True) == guest.docker_steps(deb, VMID)
