"""pvestack's Debian version order agrees with dpkg's own ``--compare-versions``."""

from __future__ import annotations

import itertools
import shutil
import subprocess

import pytest

from pvestack._nodepkgs import version_lt

pytestmark = pytest.mark.contract

VERSIONS = [
    "6.0.0-1", "6.0.5-1", "6.0.5-1+b1", "6.0.5-2", "6.0.5-2+pve1", "6.0.5-10", "6.0.5~rc1-1",
    "6.0.5", "6.0.5-0.1", "1:1.0-1", "0:6.0.5-2", "6.0.5a-1", "6.0.5+dfsg-1", "6.0.5.1-1",
]  # fmt: skip


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="dpkg is not installed")
def test_version_lt_agrees_with_dpkg() -> None:
    for a, b in itertools.permutations(VERSIONS, 2):
        dpkg = subprocess.run(["dpkg", "--compare-versions", a, "lt", b], check=False)
        assert version_lt(a, b) == (dpkg.returncode == 0), (a, b)
