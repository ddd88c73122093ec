"""Console hand-off: the printed script (shellcheck, bash -n, idempotent when re-run in a
sandbox, never a secret) and the wait for the root steps' effects."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from pvestack._commands import Payload, Secret, Step, cmd
from pvestack._errors import PvestackError, TransportError, WaitTimeout
from pvestack._model import BindMount, IdMap, IdMapEntry
from pvestack._steps import root
from pvestack.executors._console import (
    SUCCESS_MARKER,
    console_script,
    hand_off,
    wait_for_root_steps,
)

SHELLCHECK = shutil.which("shellcheck")

IDMAP = IdMap(
    (
        IdMapEntry("u", 0, 400000, 5000),
        IdMapEntry("u", 5000, 7000, 10),
        IdMapEntry("u", 5010, 405010, 60526),
        IdMapEntry("g", 0, 400000, 65536),
    ),
    custom=True,
)


def sandbox_steps(tmp: Path) -> list[Step]:
    """Root steps that need no PVE: host dirs and the id map in a temp 'node'."""
    (tmp / "lxc").mkdir()
    (tmp / "lxc" / "131.conf").write_text("arch: amd64\nhostname: t\n")
    (tmp / "subuid").write_text("")
    (tmp / "subgid").write_text("root:100000:65536\n")
    a = BindMount("mp0", str(tmp / "srv" / "app data"), "/data", owner_uid=5003, owner_gid=77)
    b = BindMount("mp1", str(tmp / "srv" / "cfg"), "/cfg", mode="0700")
    return [
        root.host_dir_step(a, IDMAP),
        root.host_dir_step(b, IDMAP),
        root.idmap_step(131, IDMAP, conf_dir=str(tmp / "lxc"), subid_dir=str(tmp)),
    ]


def full_steps() -> list[Step]:
    m = BindMount("mp0", "/srv/hermes data", "/opt/hermes", owner_uid=10000, owner_gid=10000)
    return [
        root.host_dir_step(m, IdMap()),
        root.pct_set_step(118, {"features": "keyctl=1,nesting=1", "mp0": m.pve_value}),
        root.idmap_step(118, IDMAP),
        root.reboot_step(118),
        root.mount_probe_step(118, m, IdMap()),
    ]


def snapshot(tmp: Path) -> dict[str, tuple[int, int, int, bytes | None]]:
    out = {}
    for p in sorted(tmp.rglob("*")):
        st = p.lstat()
        out[str(p)] = (st.st_uid, st.st_gid, st.st_mode, p.read_bytes() if p.is_file() else None)
    return out


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck not installed")
def test_script_is_shellcheck_clean(tmp_path: Path) -> None:
    script = console_script(full_steps(), title="pvestack root steps: hermes.toml")
    path = tmp_path / "root.sh"
    path.write_text(script)
    subprocess.run(["bash", "-n", str(path)], check=True)
    r = subprocess.run([str(SHELLCHECK), str(path)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout
    lines = script.rstrip("\n").splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert "set -euo pipefail" in lines
    assert f"echo {SUCCESS_MARKER}" in lines
    assert lines[-1] == "pvestack_root_steps </dev/null"  # paste-safe (_steps.paste_script)
    assert any("command -v pct" in ln for ln in lines)  # it uses pct: checks for it


def test_script_never_holds_a_secret() -> None:
    s = Secret("token", "do-not-print-me")
    step = Step("g:env", "write .env", (cmd("tee", "/x/.env", stdin=Payload(("K=", s, "\n"))),))
    with pytest.raises(PvestackError, match="g:env"):
        console_script([*full_steps(), step], title="t")
    assert "do-not-print-me" not in console_script(full_steps(), title="t")


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to mapped ids needs root")
def test_rerunning_the_script_changes_nothing(tmp_path: Path) -> None:
    node = tmp_path / "node"
    node.mkdir()
    script = console_script(sandbox_steps(node), title="sandbox")
    path = tmp_path / "root.sh"
    path.write_text(script)
    first = subprocess.run(["bash", str(path)], capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr
    assert first.stdout.rstrip().splitlines()[-1] == SUCCESS_MARKER
    data = node / "srv" / "app data"
    st = data.stat()
    assert (st.st_uid, st.st_gid) == (7003, 400077)  # uid 5003 -> 7003 via the custom map
    assert (node / "srv" / "cfg").stat().st_uid == 400000
    assert "lxc.idmap: u 5000 7000 10" in (node / "lxc" / "131.conf").read_text()
    assert "root:7000:10" in (node / "subuid").read_text()
    before = snapshot(node)
    second = subprocess.run(["bash", str(path)], capture_output=True, text=True, check=False)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout  # only the ok: lines and the marker
    assert snapshot(node) == before
    # a broken step stops the script before the marker (set -e)
    (node / "lxc" / "131.conf").unlink()
    third = subprocess.run(["bash", str(path)], capture_output=True, text=True, check=False)
    assert third.returncode != 0
    assert SUCCESS_MARKER not in third.stdout
    assert "no config file" in third.stderr


def test_script_refuses_non_root(tmp_path: Path) -> None:
    script = console_script([Step("x", "x", (cmd("true"),))], title="t")
    path = tmp_path / "s.sh"
    path.write_text(script)
    if os.geteuid() == 0:
        r = subprocess.run(
            ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "bash", "-s"],
            input=script, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert r.returncode == 1
        assert "run this as root" in r.stderr
    else:
        r = subprocess.run(["bash", str(path)], capture_output=True, text=True, check=False)
        assert r.returncode == 1


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def test_wait_until_nothing_missing() -> None:
    clock = FakeClock()
    answers: list[Sequence[str]] = [
        ["lxc/118: features is None, want 'keyctl=1,nesting=1'", "lxc/118: not running"],
        ["lxc/118: not running"],
    ]

    def poll() -> Sequence[str]:
        if len(answers) == 1 and clock.t < 20:
            raise TransportError("connection refused")  # node busy: keep waiting
        return answers.pop(0) if answers else []

    seen: list[tuple[str, ...]] = []
    waited = wait_for_root_steps(
        poll, timeout=60, interval=5, on_status=lambda m: seen.append(tuple(m)),
        clock=clock.now, sleep=clock.sleep,
    )  # fmt: skip
    # t=0 two missing, 5..15 the API fails, 20 one missing, 25 nothing
    assert waited == 25
    assert [len(m) for m in seen] == [2, 1, 1, 0]
    assert "could not be read" in seen[1][0]
    assert seen[2] == ("lxc/118: not running",)


def test_wait_times_out_listing_what_is_missing() -> None:
    clock = FakeClock()
    with pytest.raises(WaitTimeout) as ei:
        wait_for_root_steps(
            lambda: ["lxc/118: mp0 is None, want '/srv/x,mp=/x'"],
            timeout=30, interval=7, clock=clock.now, sleep=clock.sleep,
        )  # fmt: skip
    assert clock.t == 30
    assert "mp0 is None" in str(ei.value)
    assert "30s" in str(ei.value)


def test_hand_off_without_terminal_prints_and_returns() -> None:
    printed: list[str] = []
    polls: list[int] = []

    def poll() -> list[str]:
        polls.append(1)
        return ["x"]

    h = hand_off(
        "#!/usr/bin/env bash\necho hi\n", poll,
        write=printed.append, interactive=False,
    )  # fmt: skip
    assert (h.waited, h.done) == (False, False)
    assert "echo hi\n" in "".join(printed)
    assert polls == []


def test_hand_off_waits_on_a_terminal() -> None:
    clock = FakeClock()
    state = {"n": 0}

    def poll() -> list[str]:
        state["n"] += 1
        return ["lxc/118: not running"] if state["n"] < 3 else []

    printed: list[str] = []
    h = hand_off(
        "echo hi\n", poll, write=printed.append, interactive=True, interval=2,
        clock=clock.now, sleep=clock.sleep,
    )  # fmt: skip
    assert (h.waited, h.done, h.elapsed) == (True, True, 4)
    text = "".join(printed)
    assert "- lxc/118: not running" in text
    assert text.rstrip().endswith("root steps done: the node shows their effects")
