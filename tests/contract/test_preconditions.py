"""The world changes between plan and apply: for every precondition kind the executor
re-checks just before acting, and refuses (or skips what is already done) touching
nothing. fakepve with permissions on; every write is recorded."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pvestack._client import PveClient
from pvestack._commands import Command, Step
from pvestack._config import StackFile
from pvestack._desired import build_desired
from pvestack._engine import Outcome, RootAccess, apply, plan
from pvestack._model import (
    Absent,
    ActionKind,
    Actor,
    Adopt,
    Owned,
    Plan,
    Running,
    Stopped,
    TemplateAbsent,
)
from pvestack.executors import CommandOutput

pytestmark = pytest.mark.contract

NO_ROOT = RootAccess(None, 'root.via = "console": run the printed script', "console")
TEMPLATE = "debian-12-standard_12.12-1_amd64.tar.zst"
VOLID = f"local:vztmpl/{TEMPLATE}"


class RecordingTransport:
    """A root transport that records what it is asked to run (and runs nothing)."""

    def __init__(self) -> None:
        self.steps: list[str] = []

    def run_step(self, step: Step, *, on_output: Callable[[str], None] | None = None) -> bool:
        self.steps.append(step.id)
        return True

    def capture(self, command: Command) -> CommandOutput:
        return CommandOutput(0, "", "")

    def close(self) -> None:
        pass


def _plan(cfg: StackFile, client: PveClient, **kw: Any) -> Plan:
    return plan(build_desired(cfg), client, **kw).plan


def _result(res: Any, kind: ActionKind) -> Any:
    return next(r for r in res.results if r.action.kind is kind)


def _writes_to(recorder: Any, fragment: str) -> list[Any]:
    return [c for c in recorder.writes() if fragment in c[1]]


def _store_template(pve: Any) -> None:
    pve.store_file("local", TEMPLATE, 1000, content="vztmpl")


def _converged_by_root(pve: Any) -> None:
    """What the root steps do on the node (root@pam: no permission check)."""
    pve.ct(118).config.update(
        features="keyctl=1,nesting=1",
        mp0="/mnt/pve/hdd/hermes,mp=/data",
        mp1="/media/2tb/hermes,mp=/fast",
    )


# ---------------------------------------------------------------- Absent


def test_create_refused_when_a_ct_was_made_by_hand_at_the_vmid(
    pve: Any, stack_cfg: StackFile, client: PveClient, recorder: Any
) -> None:
    p = _plan(stack_cfg, client)
    create = next(a for a in p.actions if a.kind is ActionKind.CREATE)
    assert create.precondition == Absent(118, "hermes", "local", VOLID)
    pve.add_ct(118, "byhand", node="gihyeon", status="stopped", config={"memory": 512})
    before = dict(pve.ct(118).config)
    res = apply(p, client, root=NO_ROOT)
    r = _result(res, ActionKind.CREATE)
    assert r.outcome is Outcome.FAILED
    assert "vmid 118 was taken since the plan was made" in r.detail
    assert res.exit_code == 1
    assert pve.ct(118).config == before and pve.ct(118).status == "stopped"
    assert _writes_to(recorder, "/lxc/118") == []
    assert not any(c[1] == "/nodes/gihyeon/lxc" for c in recorder.writes())


def test_create_refused_when_the_template_was_deleted(
    pve: Any, stack_cfg: StackFile, client: PveClient, recorder: Any
) -> None:
    _store_template(pve)
    p = _plan(stack_cfg, client)
    assert ActionKind.TEMPLATE_DOWNLOAD not in {a.kind for a in p.actions}
    del pve.storages["local"]["volumes"][f"vztmpl/{TEMPLATE}"]
    res = apply(p, client, root=NO_ROOT)
    r = _result(res, ActionKind.CREATE)
    assert r.outcome is Outcome.FAILED
    assert f"the template {VOLID} is no longer on gihyeon" in r.detail
    assert pve.ct(118) is None
    assert recorder.writes() == []
    # the rest of the stack waits: nothing else ran
    assert {x.outcome for x in res.results if x is not r} == {Outcome.PENDING}


# ---------------------------------------------------------------- TemplateAbsent


def test_template_download_skipped_when_it_appeared_since_the_plan(
    pve: Any, stack_cfg: StackFile, client: PveClient, recorder: Any
) -> None:
    p = _plan(stack_cfg, client)
    dl = next(a for a in p.actions if a.kind is ActionKind.TEMPLATE_DOWNLOAD)
    assert dl.precondition == TemplateAbsent("local", VOLID)
    _store_template(pve)
    res = apply(Plan(actions=(dl,)), client, root=NO_ROOT)
    assert res.results[0].outcome is Outcome.SKIPPED
    assert "already there" in res.results[0].detail
    assert _writes_to(recorder, "download-url") == []


# ---------------------------------------------------------------- Owned / Adopt


def _token_apply(cfg: StackFile, client: PveClient) -> None:
    apply(_plan(cfg, client), client, root=NO_ROOT)


def test_update_refused_when_the_mark_was_removed_by_hand(
    pve: Any, stack_cfg: StackFile, client: PveClient, recorder: Any
) -> None:
    _token_apply(stack_cfg, client)
    pve.ct(118).config["memory"] = 1024
    p = _plan(stack_cfg, client)
    update = next(a for a in p.actions if a.kind is ActionKind.CONFIG_UPDATE)
    assert update.precondition == Owned("hermes")
    pve.ct(118).config["description"] = "taken over by hand"
    writes = len(recorder.writes())
    res = apply(p, client, root=NO_ROOT)
    r = _result(res, ActionKind.CONFIG_UPDATE)
    assert r.outcome is Outcome.FAILED
    assert "no longer carries the mark of stack 'hermes'" in r.detail
    assert str(pve.ct(118).config["memory"]) == "1024"
    assert len(recorder.writes()) == writes


def test_adopt_refused_when_another_stack_marked_the_ct(
    pve: Any, stack_cfg: StackFile, client: PveClient, recorder: Any
) -> None:
    pve.add_ct(118, "hermes", node="gihyeon", status="running", config={"memory": 1024})
    p = _plan(stack_cfg, client, adopt=True)
    update = next(a for a in p.actions if a.kind is ActionKind.CONFIG_UPDATE)
    assert update.precondition == Adopt("hermes")
    pve.ct(118).config.update(tags="pvestack", description="pvestack-stack: other")
    res = apply(p, client, root=NO_ROOT)
    r = _result(res, ActionKind.CONFIG_UPDATE)
    assert r.outcome is Outcome.FAILED and "mark of stack 'other'" in r.detail
    assert str(pve.ct(118).config["memory"]) == "1024"
    assert recorder.writes() == []


# ---------------------------------------------------------------- Stopped / Running


def test_start_skipped_when_the_ct_was_started_by_hand(
    pve: Any, stack_cfg: StackFile, client: PveClient, recorder: Any
) -> None:
    p = _plan(stack_cfg, client)
    apply(Plan(actions=p.actions[:2]), client, root=NO_ROOT)  # template, create
    p = _plan(stack_cfg, client)
    start = next(a for a in p.actions if a.kind is ActionKind.START)
    assert start.precondition == Stopped("hermes")
    client.post("/nodes/gihyeon/lxc/118/status/start")  # by hand
    writes = len(recorder.writes())
    res = apply(Plan(actions=(start,)), client, root=NO_ROOT)
    assert res.results[0].outcome is Outcome.SKIPPED
    assert res.results[0].detail == "already running"
    assert len(recorder.writes()) == writes


def test_reboot_refused_when_the_ct_was_stopped_by_hand(
    pve: Any, stack_cfg: StackFile, client: PveClient, recorder: Any
) -> None:
    _token_apply(stack_cfg, client)
    _converged_by_root(pve)
    pve.ct(118).pending["mp1"] = "/media/2tb/hermes,mp=/fast,backup=0"
    p = _plan(stack_cfg, client)
    reboot = next(a for a in p.actions if a.kind is ActionKind.REBOOT)
    assert reboot.actor is Actor.API and reboot.precondition == Running("hermes")
    client.post("/nodes/gihyeon/lxc/118/status/stop")  # by hand
    writes = len(recorder.writes())
    res = apply(Plan(actions=(reboot,)), client, root=NO_ROOT)
    r = res.results[0]
    assert r.outcome is Outcome.FAILED
    assert "lxc/118 on gihyeon is stopped, this step needs it running" in r.detail
    assert pve.ct(118).status == "stopped"
    assert len(recorder.writes()) == writes


def test_guest_steps_refused_when_the_ct_was_stopped_by_hand(
    pve: Any, stack_cfg: StackFile, client: PveClient, recorder: Any
) -> None:
    _token_apply(stack_cfg, client)
    _converged_by_root(pve)
    client.post("/nodes/gihyeon/lxc/118/status/reboot")
    p = _plan(stack_cfg, client)
    guest = [a for a in p.actions if a.actor is Actor.GUEST]
    assert guest and all(a.precondition == Running("hermes") for a in guest)
    client.post("/nodes/gihyeon/lxc/118/status/stop")  # by hand
    t = RecordingTransport()
    res = apply(Plan(actions=tuple(guest)), client, root=RootAccess(t, via="ssh"))
    assert res.results[0].outcome is Outcome.FAILED
    assert "is stopped, this step needs it running" in res.results[0].detail
    assert all(r.outcome is Outcome.PENDING for r in res.results[1:])
    assert t.steps == []  # nothing ran in the guest
    assert res.exit_code == 1
