"""Root step builders: ownership from the id map, quoting, validation, guards that make
re-running a no-op (run for real in a temp sandbox where no PVE is needed)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from pvestack._commands import Command, Step, render_script, render_shell
from pvestack._errors import ConfigError
from pvestack._model import BindMount, IdMap, IdMapEntry
from pvestack._steps import root

SHELLCHECK = shutil.which("shellcheck")
IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="chown to mapped ids needs root")

# Not the seed's values: container uid 2000 under a custom map that passes 1000..2999
# through to the host at 51000.., the rest shifted to 300000.
CUSTOM = IdMap(
    (
        IdMapEntry("u", 0, 300000, 1000),
        IdMapEntry("u", 1000, 51000, 2000),
        IdMapEntry("u", 3000, 303000, 62536),
        IdMapEntry("g", 0, 300000, 1000),
        IdMapEntry("g", 1000, 61000, 2000),
        IdMapEntry("g", 3000, 303000, 62536),
    ),
    custom=True,
)


def bm(host: str = "/srv/app data", ct: str = "/opt/app", **kw: object) -> BindMount:
    return BindMount("mp0", host, ct, **kw)  # type: ignore[arg-type]


def run_step(step: Step, env: dict[str, str] | None = None) -> bool:
    """Run a step the way the SSH executor does (guard, then commands); True if it ran."""
    e = {**os.environ, **(env or {})}
    if step.guard is not None:
        g = subprocess.run(step.guard.line, shell=True, env=e, capture_output=True, check=False)
        if g.returncode == 0:
            return False
    for c in step.commands:
        r = subprocess.run(
            c.line,
            shell=True,
            env=e,
            input=c.stdin.reveal() if c.stdin else None,
            capture_output=True,
            check=False,
        )
        assert r.returncode == 0, (c.line, r.stderr.decode())
    return True


def inner_scripts(step: Step) -> list[str]:
    cmds: list[Command] = [*step.commands, *([step.guard] if step.guard else [])]
    return [c.argv[2] for c in cmds if c.argv[:2] == ("sh", "-c")]


# ---------------------------------------------------------------- ownership math


def test_default_map_root_and_hermes_user() -> None:
    assert root.host_owner(bm(), IdMap()) == (100000, 100000)
    assert root.host_owner(bm(owner_uid=10000, owner_gid=10000), IdMap()) == (110000, 110000)


def test_custom_map_non_root_owner() -> None:
    m = bm(owner_uid=2000, owner_gid=1500)
    assert root.host_owner(m, CUSTOM) == (52000, 61500)
    assert root.host_owner(bm(owner_uid=5, owner_gid=5), CUSTOM) == (300005, 300005)
    step = root.host_dir_step(m, CUSTOM)
    (make,) = step.commands
    assert make.argv[-4:] == ("/srv/app data", "52000:61500", "755", "0")


def test_unmapped_owner_is_a_config_error() -> None:
    small = IdMap((IdMapEntry("u", 0, 100000, 1000), IdMapEntry("g", 0, 100000, 1000)), True)
    with pytest.raises(ConfigError, match="uid 10000 is not mapped"):
        root.host_dir_step(bm(owner_uid=10000, owner_gid=0), small)


def test_never_a_recursive_chown() -> None:
    for step in (
        root.host_dir_step(bm(), IdMap()),
        root.host_dir_step(bm(take_ownership=True), IdMap()),
    ):
        for c in (*step.commands, step.guard):
            assert c is not None
            assert "-R" not in c.argv
            assert "chown -R" not in " ".join(c.argv) and "chown -r" not in " ".join(c.argv)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("host", "ct", "needle"),
    [
        ("srv/data", "/data", "relative"),
        ("/srv/../etc", "/data", "'..'"),
        ("/srv/data", "data", "relative"),
        ("/srv/data", "/", "mount point over the root"),
        ("/srv/data", "/opt/../x", "'..'"),
        ("/", "/data", "node's root filesystem"),
        ("/srv/a,b", "/data", "','"),
    ],
)
def test_bad_paths_are_refused(host: str, ct: str, needle: str) -> None:
    problems = root.bind_mount_problems(bm(host, ct), IdMap(), file="stack.toml", key="k")
    assert any(needle in p.message for p in problems), problems
    assert all(p.file == "stack.toml" and p.key == "k" for p in problems)
    with pytest.raises(ConfigError):
        root.host_dir_step(bm(host, ct), IdMap())


def test_good_mount_has_no_problem() -> None:
    assert root.bind_mount_problems(bm(owner_uid=10000, owner_gid=10000), IdMap()) == ()


def test_overlapping_idmap_refused() -> None:
    bad = IdMap((IdMapEntry("u", 0, 100000, 65536), IdMapEntry("u", 1000, 1000, 1)), True)
    with pytest.raises(ConfigError, match="overlap"):
        root.idmap_step(118, bad)


# ---------------------------------------------------------------- rendering


def test_pct_set_quotes_and_deletes() -> None:
    step = root.pct_set_step(
        118, {"mp0": "/srv/app data,mp=/opt/app", "features": "keyctl=1,nesting=1"}, ["mp1"]
    )
    (c,) = step.commands
    assert c.argv == (
        "pct", "set", "118",
        "-features", "keyctl=1,nesting=1",
        "-mp0", "/srv/app data,mp=/opt/app",
        "-delete", "mp1",
    )  # fmt: skip
    assert shlex.split(c.line) == list(c.argv)
    assert "'/srv/app data,mp=/opt/app'" in c.line
    with pytest.raises(ValueError):
        root.pct_set_step(118, {"mp0; rm -rf /": "x"})


def all_steps() -> list[Step]:
    m = bm("/srv/it's here", "/opt/app", owner_uid=2000, owner_gid=1500, mode="2770")
    return [
        root.host_dir_step(m, CUSTOM),
        root.host_dir_step(replace(m, take_ownership=True), CUSTOM),
        root.pct_set_step(118, {"features": "keyctl=1,nesting=1", "mp0": m.pve_value}, ["mp1"]),
        root.idmap_step(118, CUSTOM),
        root.reboot_step(118),
        root.mount_probe_step(118, m, CUSTOM),
        root.mount_probe_step(118, bm(read_only=True), IdMap()),
    ]


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck not installed")
def test_script_and_inner_scripts_pass_shellcheck(tmp_path: Path) -> None:
    script = render_script(all_steps(), title="t", success_marker="PVESTACK ROOT STEPS DONE")
    path = tmp_path / "s.sh"
    path.write_text(script)
    subprocess.run(["bash", "-n", str(path)], check=True)
    r = subprocess.run([str(SHELLCHECK), str(path)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout
    for i, step in enumerate(all_steps()):
        for j, inner in enumerate(inner_scripts(step)):
            p = tmp_path / f"inner{i}_{j}.sh"
            p.write_text("#!/bin/sh\n" + inner + "\n")
            r = subprocess.run(
                [str(SHELLCHECK), "-s", "sh", str(p)], capture_output=True, text=True, check=False
            )
            assert r.returncode == 0, (step.id, r.stdout)
            subprocess.run(["sh", "-n", str(p)], check=True)


def test_each_step_renders_with_its_guard() -> None:
    for step in all_steps():
        text = render_shell(step)
        if step.guard is not None:
            assert text.splitlines()[1].startswith("if ! sh -c ")


# ---------------------------------------------------------------- real runs in a sandbox


def stat_of(p: Path) -> tuple[int, int, str]:
    st = p.stat()
    return st.st_uid, st.st_gid, f"{st.st_mode & 0o7777:o}"


@needs_root
def test_host_dir_step_runs_then_is_a_noop(tmp_path: Path) -> None:
    target = tmp_path / "a b" / "it's data"
    m = bm(str(target), "/opt/app", owner_uid=2000, owner_gid=1500, mode="0750")
    step = root.host_dir_step(m, CUSTOM)
    assert run_step(step) is True
    assert stat_of(target) == (52000, 61500, "750")
    assert run_step(step) is False  # the guard says done
    os.chmod(target, 0o755)  # drift is repaired
    assert run_step(step) is True
    assert stat_of(target) == (52000, 61500, "750")


@needs_root
def test_existing_foreign_data_needs_take_ownership(tmp_path: Path) -> None:
    target = tmp_path / "data"
    target.mkdir()
    (target / "keep.db").write_text("x")
    m = bm(str(target), "/opt/app", owner_uid=10000, owner_gid=10000)
    step = root.host_dir_step(m, IdMap())
    (make,) = step.commands
    r = subprocess.run(make.line, shell=True, capture_output=True, text=True, check=False)
    assert r.returncode == 3 and "take_ownership" in r.stderr
    assert stat_of(target)[:2] == (0, 0)  # refused: untouched
    taking = root.host_dir_step(replace(m, take_ownership=True), IdMap())
    assert run_step(taking) is True
    assert stat_of(target)[:2] == (110000, 110000)
    assert stat_of(target / "keep.db")[:2] == (0, 0)  # the content never
    assert run_step(step) is False  # now ours: done, without the opt-in too
    # an empty directory of someone else's is simply taken
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_step(root.host_dir_step(bm(str(empty), "/opt/x"), IdMap())) is True
    assert stat_of(empty)[:2] == (100000, 100000)


def write_conf(path: Path, extra: str = "") -> None:
    path.write_text(
        "arch: amd64\nhostname: t\nlxc.idmap: u 0 100000 65536\nmemory: 512\n"
        + extra
        + "\n[pve:pending]\nlxc.idmap: u 9 9 9\nswap: 0\n"
    )


def test_idmap_step_writes_main_section_and_subids_once(tmp_path: Path) -> None:
    conf_dir, subid = tmp_path / "lxc", tmp_path / "etc"
    conf_dir.mkdir()
    subid.mkdir()
    write_conf(conf_dir / "118.conf")
    (subid / "subuid").write_text("root:100000:65536\n")
    (subid / "subgid").write_text("root:100000:65536\nroot:61000:5000\n")
    step = root.idmap_step(118, CUSTOM, conf_dir=str(conf_dir), subid_dir=str(subid))
    assert run_step(step) is True
    text = (conf_dir / "118.conf").read_text()
    main, _, pending = text.partition("[pve:pending]")
    assert [ln for ln in main.splitlines() if ln.startswith("lxc.idmap")] == [
        f"lxc.idmap: {e.lxc_line}" for e in CUSTOM.entries
    ]
    assert "lxc.idmap: u 9 9 9" in pending  # other sections untouched
    assert "memory: 512" in main
    uid_lines = (subid / "subuid").read_text().splitlines()
    assert uid_lines == [
        "root:100000:65536",
        "root:300000:1000",
        "root:51000:2000",
        "root:303000:62536",
    ]
    # 61000:2000 is inside the existing root:61000:5000 line: nothing added for it
    assert "root:61000:2000" not in (subid / "subgid").read_text()
    before = {
        p: p.read_bytes() for p in (conf_dir / "118.conf", subid / "subuid", subid / "subgid")
    }
    assert run_step(step) is False
    assert {p: p.read_bytes() for p in before} == before


def test_idmap_step_default_map_removes_lines(tmp_path: Path) -> None:
    conf_dir = tmp_path / "lxc"
    conf_dir.mkdir()
    write_conf(conf_dir / "7.conf")
    (tmp_path / "subuid").write_text("root:100000:65536\n")
    (tmp_path / "subgid").write_text("root:100000:65536\n")
    step = root.idmap_step(7, IdMap(), conf_dir=str(conf_dir), subid_dir=str(tmp_path))
    assert run_step(step) is True
    main = (conf_dir / "7.conf").read_text().partition("[")[0]
    assert "lxc.idmap" not in main
    assert run_step(step) is False


def test_idmap_conf_dir_from_the_environment(tmp_path: Path) -> None:
    lxc = tmp_path / "etc" / "pve" / "lxc"
    lxc.mkdir(parents=True)
    write_conf(lxc / "9.conf")
    (tmp_path / "subuid").write_text("root:100000:65536\n")
    (tmp_path / "subgid").write_text("root:100000:65536\n")
    step = root.idmap_step(9, CUSTOM, subid_dir=str(tmp_path))
    assert run_step(step, {"PVESTACK_LAB_DIR": str(tmp_path)}) is True
    assert "lxc.idmap: u 1000 51000 2000" in (lxc / "9.conf").read_text()
