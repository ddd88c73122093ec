"""``docker = "debian"``: the install from Debian's own packages on bookworm and trixie.

``INSTALL_DOCKER_DEBIAN`` is run by ``sh`` with stand-ins for apt-cache (which answers
for ``docker-cli`` as the release's archive does: trixie has the package, bookworm does
not), apt-get and systemctl (recorded). The real installs run in the lab tests
(``tests/lab/test_trixie_stacks.py`` on debian-13, the seed tests on debian-12)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pvestack._steps import guest

pytestmark = pytest.mark.skipif(shutil.which("sh") is None, reason="sh is needed")
# docker.io's Recommends the engine uses (installed without the others): apparmor_parser
# on an AppArmor kernel (every PVE node), xz for `docker load` of .tar.xz, TLS roots
ENGINE_NEEDS = ["apparmor", "xz-utils", "ca-certificates"]


def run_install(tmp_path: Path, archive: set[str]) -> tuple[subprocess.CompletedProcess[str], str]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls"
    calls.touch()
    known = " ".join(sorted(archive))
    (bindir / "apt-cache").write_text(
        "#!/bin/sh\n"
        '[ "$1" = show ] || exit 2\n'
        f'for p in {known}; do [ "$p" = "$2" ] && echo "Package: $p" && exit 0; done\n'
        'echo "E: No packages found" >&2\nexit 100\n'
    )
    for tool in ("apt-get", "systemctl"):
        (bindir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >>"{calls}"\n')
    for p in bindir.iterdir():
        p.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    r = subprocess.run(
        ["sh", "-c", guest.INSTALL_DOCKER_DEBIAN, "sh"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    return r, calls.read_text()


def _installed(calls: str) -> list[str]:
    line = next(ln for ln in calls.splitlines() if " install " in f" {ln} ")
    return line.split(" install -y -q --no-install-recommends ", 1)[1].split()


def test_trixie_installs_the_docker_cli_package_and_compose(tmp_path: Path) -> None:
    # trixie: /usr/bin/docker is in docker-cli, only a Recommends of docker.io
    r, calls = run_install(tmp_path, {"docker.io", "docker-cli", "docker-compose"})
    assert r.returncode == 0, r.stderr
    assert _installed(calls) == ["docker.io", "docker-cli", "docker-compose", *ENGINE_NEEDS]
    assert calls.splitlines()[-1] == "systemctl enable --now docker"


def test_bookworm_has_no_docker_cli_package(tmp_path: Path) -> None:
    r, calls = run_install(tmp_path, {"docker.io", "docker-compose"})
    assert r.returncode == 0, r.stderr
    assert _installed(calls) == ["docker.io", "docker-compose", *ENGINE_NEEDS]
    assert calls.splitlines()[0].startswith("apt-get ") and " update " in calls.splitlines()[0]
