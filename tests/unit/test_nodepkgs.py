"""Node package versions and the runc/lxc-pve warning (Debian version order, as dpkg)."""

from __future__ import annotations

import pytest

from pvestack._nodepkgs import parse_versions, runc_breakage_warning, version_lt


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("6.0.5-1", "6.0.5-2"),
        ("6.0.0-1", "6.0.5-2"),
        ("6.0.5-1+b1", "6.0.5-2"),  # a binNMU of -1 is still older than -2
        ("6.0.5~rc1-1", "6.0.5-1"),  # ~ sorts before everything
        ("6.0.5-2", "6.0.5-10"),  # numeric, not lexical
        ("6.0.5-2", "6.0.5-2+pve1"),
        ("5.9.99-9", "1:1.0-1"),  # the epoch wins
        ("6.0.5", "6.0.5-0.1"),
    ],
)
def test_debian_version_order(a: str, b: str) -> None:
    assert version_lt(a, b) and not version_lt(b, a)


def test_equal_versions_are_not_older() -> None:
    assert not version_lt("6.0.5-2", "6.0.5-2") and not version_lt("0:6.0.5-2", "6.0.5-2")


@pytest.mark.parametrize("old", ["6.0.0-1", "6.0.5-1", "5.0.2-4", "6.0.5-1+b1"])
def test_old_lxc_pve_warns_with_the_fix(old: str) -> None:
    w = runc_breakage_warning({"lxc-pve": old, "pve-manager": "9.1.1"})
    assert w is not None
    assert f"lxc-pve {old} < 6.0.5-2" in w
    assert "ip_unprivileged_port_start" in w and "apt update && apt full-upgrade" in w


@pytest.mark.parametrize("new", ["6.0.5-2", "6.0.5-3", "6.1.0-1", "7.0.0-1"])
def test_fixed_lxc_pve_is_quiet(new: str) -> None:
    assert runc_breakage_warning({"lxc-pve": new}) is None


def test_no_lxc_pve_no_warning() -> None:
    assert runc_breakage_warning({"pve-manager": "9.1.1"}) is None


def test_parse_versions_reads_the_installed_version() -> None:
    rows = [
        {"Package": "lxc-pve", "Version": "6.0.5-3", "OldVersion": "6.0.0-1",
         "CurrentState": "Installed"},
        {"Package": "pve-container", "Version": "6.0.18", "CurrentState": "Installed"},
        {"Package": "ceph", "Version": "19.2.1", "CurrentState": "NotInstalled"},
        "junk",
    ]  # fmt: skip
    assert parse_versions(rows) == {"lxc-pve": "6.0.0-1", "pve-container": "6.0.18"}
