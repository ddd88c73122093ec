"""`logs`/`shell`/`status` through the CLI against fakepve on loopback (the example stack
file, CT 118 on gihyeon): a stopped CT of the stack is a clear error with the start
hint, before any transport opens; a CT at the vmid without the stack's mark is left
alone; `status` of a stopped CT reads no app side; with `[guest] via = "pct"` and no
root transport the error names the way in."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from examplekit import EXAMPLE
from pvestack._commands import Command, Step
from pvestack._config import StackFile, load_config
from pvestack._engine import Options, RootAccess, Session
from pvestack._engine._status import record_report
from pvestack.cli import app
from pvestack.executors import CommandOutput
from pvestack.verify import CheckResult, Status, VerifyReport

pytestmark = pytest.mark.contract

MARK = {"tags": "pvestack", "description": "Hermes\npvestack-stack: hermes"}


def _cli(args: list[str], text: str | None = None, tmp: Path | None = None) -> Any:
    f = str(EXAMPLE)
    if text is not None and tmp is not None:
        (tmp / "s.toml").write_text(text)
        f = str(tmp / "s.toml")
    return CliRunner().invoke(app, [args[0], "-c", f, *args[1:]], env=dict(os.environ))


def test_a_stopped_ct_is_refused_with_the_start_hint(pve: Any, stack_cfg: StackFile) -> None:
    pve.add_ct(118, "hermes", node="gihyeon", status="stopped", config=dict(MARK))
    for args in (["logs", "hermes"], ["logs", "hermes", "hermes", "-f"],
                 ["shell", "hermes", "--", "true"]):  # fmt: skip
        r = _cli(args)
        assert r.exit_code == 1, r.output
        assert "CT 118 on gihyeon is stopped, not running" in r.output, r.output
        assert "pct start 118" in r.output
    r = _cli(["status", "--json"])
    assert r.exit_code == 0, r.output
    (row,) = json.loads(r.stdout)
    assert (row["vmid"], row["state"], row["apps"]) == (118, "stopped", None)


def test_a_ct_without_the_mark_is_left_alone(pve: Any, stack_cfg: StackFile) -> None:
    pve.add_ct(118, "other", node="gihyeon", status="running", config={"tags": "mine"})
    r = _cli(["logs", "hermes"])
    assert r.exit_code == 1 and "does not carry the mark of stack hermes" in r.output, r.output
    r = _cli(["shell", "hermes", "--", "id"])
    assert r.exit_code == 1 and "pvestack leaves it alone" in r.output, r.output


def test_pct_route_without_root_names_the_ways_in(
    pve: Any, stack_cfg: StackFile, tmp_path: Path
) -> None:
    pve.add_ct(118, "hermes", node="gihyeon", status="running", config=dict(MARK))
    text = EXAMPLE.read_text() + '\n[guest]\nvia = "pct"\n'
    r = _cli(["shell", "hermes", "--", "id"], text, tmp_path)
    assert r.exit_code == 1, r.output
    assert 'guest.via = "pct" needs root on the node' in r.output, r.output
    assert '[guest] via = "ssh"' in r.output


class _Root:
    """Root on the node standing in for SSH (the lab test runs the real one): records
    the steps it is given."""

    def __init__(self) -> None:
        self.steps: list[Step] = []

    def run_step(self, step: Step, *, on_output: Callable[[str], None] | None = None) -> bool:
        self.steps.append(step)
        return True

    def capture(self, command: Command) -> CommandOutput:
        return CommandOutput(0, "", "")

    def close(self) -> None:
        pass


def test_the_verify_result_is_kept_in_each_running_ct(
    pve: Any, stack_cfg: StackFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    pve.add_ct(118, "hermes", node="gihyeon", status="running", config=dict(MARK))
    monkeypatch.setenv("PVESTACK_ROOT_VIA", "ssh")
    cfg = load_config(EXAMPLE, overrides={"ROOT_VIA": "ssh"})
    root = _Root()
    report = VerifyReport((
        CheckResult("hermes", "a", "ct", Status.PASS, ""),
        CheckResult("hermes", "b", "app", Status.FAIL, "no answer"),
    ))  # fmt: skip
    with Session(cfg, Options(), root_opener=lambda _c: RootAccess(root, via="ssh")) as s:
        assert record_report(s, report) == ()
    (step,) = root.steps
    assert step.id == "ct118:last-verify" and step.commands[0].argv[:3] == ("pct", "exec", "118")
    assert step.commands[0].stdin is not None
    rec = json.loads(step.commands[0].stdin.reveal())
    assert (rec["ok"], rec["passed"], rec["failed"]) == (False, 1, 1)
    pve.ct(118).status = "stopped"  # a stopped CT is left as it is
    with Session(cfg, Options(), root_opener=lambda _c: RootAccess(root, via="ssh")) as s:
        assert record_report(s, report) == ()
    assert len(root.steps) == 1
