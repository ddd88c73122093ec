"""The ``pct``-based root steps against the lab's real ``pct`` (the same backend as the lab
node's API) on a node directory of its own, no containers started: ``pct set`` runs once,
its guard then sees it done, whatever order PVE prints the property items in."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from labstub import pct_node
from pvestack._commands import Step
from pvestack._model import BindMount, IdMap, IdMapEntry
from pvestack._steps import root

CONF = (
    "arch: amd64\nhostname: t\nmemory: 512\nostype: debian\n"
    "rootfs: local:118/vm-118-disk-0.raw,size=2G\nunprivileged: 1\n"
)


@pytest.fixture
def node(tmp_path: Path) -> dict[str, str]:
    """A lab node dir with CT 118 (stopped) and ``pct`` first on PATH; the env to use."""
    lab, bin_dir = pct_node(tmp_path, CONF)
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
        "PVESTACK_LAB_DIR": str(lab),
    }


def run(step: Step, env: dict[str, str]) -> bool:
    assert step.guard is not None
    if subprocess.run(step.guard.line, shell=True, env=env, check=False).returncode == 0:
        return False
    for c in step.commands:
        r = subprocess.run(c.line, shell=True, env=env, capture_output=True, text=True, check=False)
        assert r.returncode == 0, (c.line, r.stderr)
    return True


def config(env: dict[str, str]) -> str:
    return subprocess.run(
        ["pct", "config", "118"], env=env, capture_output=True, text=True, check=True
    ).stdout


def test_pct_set_once_then_done(node: dict[str, str]) -> None:
    m = BindMount("mp0", "/srv/app", "/opt/app", backup=False)
    # items in another order than PVE prints them: the guard compares them as sets
    step = root.pct_set_step(118, {"features": "nesting=1,keyctl=1", "mp0": m.pve_value})
    assert run(step, node) is True
    cfg = config(node)
    assert "features: keyctl=1,nesting=1" in cfg
    assert "mp0: /srv/app,mp=/opt/app,backup=0" in cfg
    assert run(step, node) is False
    # a different value is not "done"
    changed = root.pct_set_step(118, {"features": "keyctl=1,nesting=1,fuse=1"})
    assert run(changed, node) is True
    assert run(changed, node) is False


def test_pct_delete_once_then_done(node: dict[str, str]) -> None:
    run(root.pct_set_step(118, {"mp1": "/srv/old,mp=/old"}), node)
    assert "mp1:" in config(node)
    step = root.pct_set_step(118, {}, ["mp1"])
    assert step.commands[0].argv[-2:] == ("-delete", "mp1")
    assert run(step, node) is True
    assert "mp1:" not in config(node)
    assert run(step, node) is False


def test_idmap_step_finds_the_lab_conf_and_pct_sees_it(
    node: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "subuid").write_text("root:100000:65536\n")
    (tmp_path / "subgid").write_text("root:100000:65536\n")
    m = IdMap(
        (
            IdMapEntry("u", 0, 100000, 33),
            IdMapEntry("u", 33, 1033, 1),
            IdMapEntry("u", 34, 100034, 65502),
            IdMapEntry("g", 0, 100000, 65536),
        ),
        custom=True,
    )
    step = root.idmap_step(118, m, subid_dir=str(tmp_path))  # conf dir from the env
    assert run(step, node) is True
    cfg = config(node)
    assert [ln for ln in cfg.splitlines() if ln.startswith("lxc.idmap")] == [
        f"lxc.idmap: {e.lxc_line}" for e in m.entries
    ]
    assert "root:1033:1" in (tmp_path / "subuid").read_text()
    assert run(step, node) is False


def test_reboot_guard_not_done_when_stopped(node: dict[str, str]) -> None:
    step = root.reboot_step(118)
    assert step.guard is not None
    g = subprocess.run(step.guard.line, shell=True, env=node, check=False)
    assert g.returncode != 0  # a stopped CT still needs its start
