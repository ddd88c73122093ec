"""One session per run: a full apply (console hand-off with its re-plans, or root
steps and verify) reads every secret source once and validates every app once."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from pvestack import recipes
from pvestack._commands import Command, Step
from pvestack._config import parse_config
from pvestack._engine import ApplyHooks, Options, RootAccess, Session, apply_run
from pvestack._model import Plan
from pvestack.executors import CommandOutput

pytestmark = pytest.mark.contract

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hermes.toml"
TOKEN_ID = "pvestack@pve!deploy"  # as conftest's pve fixture grants
TOKEN_SECRET = "0f6c7a43-1d2e-4c55-9a9e-contract-test"


def _secret_command(counter: Path, value: str) -> str:
    """A ``command`` secret source that notes each run in ``counter`` (TOML inline table)."""
    argv = ["sh", "-c", f'echo run >> "$1"; printf %s {value}', "sh", str(counter)]
    return "{ command = " + json.dumps(argv) + " }"


@pytest.fixture
def counted(
    pve: Any, fakepve_cafile: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """The example file with its token and gateway key read by commands that count."""
    token_runs, key_runs = tmp_path / "token.runs", tmp_path / "key.runs"
    text = EXAMPLE.read_text()
    text = text.replace(
        'token_secret = { env = "PVESTACK_TOKEN_SECRET" }',
        "token_secret = " + _secret_command(token_runs, TOKEN_SECRET),
    ).replace(
        'litellm_key = { env = "LITELLM_API_KEY" }',
        "litellm_key = " + _secret_command(key_runs, "sk-session-test"),
    )
    env = {
        "PVESTACK_API_URL": pve.url,
        "PVESTACK_TOKEN_ID": TOKEN_ID,
        "PVESTACK_CA_FILE": fakepve_cafile,
    }
    validations: list[str] = []
    real_load = recipes.load_app

    def counting_load(*a: Any, **kw: Any) -> Any:
        validations.append(kw.get("stack_name", "?"))
        return real_load(*a, **kw)

    monkeypatch.setattr(recipes, "load_app", counting_load)
    return {"text": text, "env": env, "token": token_runs, "key": key_runs, "apps": validations}


def _runs(f: Path) -> int:
    return len(f.read_text().splitlines()) if f.exists() else 0


class FakeGuest:
    """A container's own SSH transport (``guest.via = "ssh"``): records the guest steps."""

    def __init__(self, vmid: int, log: list[str]) -> None:
        self.vmid, self.log = vmid, log

    def run_step(self, step: Step, *, on_output: Callable[[str], None] | None = None) -> bool:
        assert all(
            c.argv[:3] in (("pct", "exec", "118"), ("pct", "push", "118")) for c in step.commands
        )
        self.log.append(step.id)
        return True

    def capture(self, command: Command) -> CommandOutput:
        return CommandOutput(1, "", "")

    def close(self) -> None:
        pass


def test_console_apply_with_hand_off_reads_each_secret_once(
    pve: Any, counted: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**counted["env"], "PVESTACK_ROOT_VIA": "console"}
    cfg = parse_config(counted["text"], str(EXAMPLE), env=env)
    plans: list[Plan] = []
    handed: list[str] = []
    guest_log: list[str] = []
    opened: list[Any] = []

    def opener(settings: Any, client: Any, env: Any = None) -> Callable[[Any], FakeGuest]:
        def open_one(place: Any) -> FakeGuest:
            opened.append(place)
            return FakeGuest(place.vmid, guest_log)

        return open_one

    monkeypatch.setattr("pvestack._engine._session.ssh_opener", opener)

    def hand_off(script: str, poll: Callable[[], Sequence[str]]) -> None:
        handed.append(script)
        assert poll()  # the root steps' effects are missing until the script ran
        pve.ct(118).config.update(
            features="keyctl=1,nesting=1",
            mp0="/mnt/pve/hdd/hermes,mp=/data",
            mp1="/media/2tb/hermes,mp=/fast",
        )
        assert list(poll()) == ["lxc/118: no pvestack-hostkey record in the description yet"]
        desc = pve.ct(118).config["description"]
        pve.ct(118).config["description"] = desc + "\npvestack-hostkey: SHA256:" + "Q" * 43
        assert list(poll()) == []

    hooks = ApplyHooks(on_plan=lambda p, _via: plans.append(p), hand_off=hand_off)
    with Session(cfg, Options(), env=env) as s:
        run = apply_run(
            s, hooks, run_verify=False, run_doctor=False
        )  # fakepve: no permissions model
    assert len(handed) == 1 and len(plans) == 2  # planned, handed off, planned again
    assert "ct118:guest-access:hostkey-record" in handed[0] and "docker" not in handed[0]
    # guest.via = "ssh": every guest step went over the CT's own transport, secrets too
    assert run.exit_code == 0, run.result.to_json()
    assert [p.vmid for p in opened] == [118]
    assert any(".env" in i or "env" in i for i in guest_log), guest_log
    assert _runs(counted["token"]) == 1
    assert _runs(counted["key"]) == 1
    assert counted["apps"] == ["hermes"]


class FakeRoot:
    """Root on the node for the engine: records steps; answers reads as an empty node."""

    def __init__(self) -> None:
        self.steps: list[str] = []

    def run_step(self, step: Step, *, on_output: Callable[[str], None] | None = None) -> bool:
        self.steps.append(step.id)
        return True

    def capture(self, command: Command) -> CommandOutput:
        if command.argv[0] == "stat":
            return CommandOutput(1, "", "No such file or directory")
        return CommandOutput(0, "absent\n", "")

    def close(self) -> None:
        pass


def test_ssh_apply_and_verify_read_each_secret_once(pve: Any, counted: dict[str, Any]) -> None:
    env = {**counted["env"], "PVESTACK_ROOT_VIA": "ssh"}
    cfg = parse_config(counted["text"], str(EXAMPLE), env=env)
    root = FakeRoot()
    with Session(cfg, Options(), env=env, root_opener=lambda _c: RootAccess(root, via="ssh")) as s:
        run = apply_run(s, ApplyHooks(), run_doctor=False)
    assert run.result.exit_code == 0, run.result.to_json()
    assert run.report is not None  # verify ran on the same session
    assert any(sid.startswith("pct-set:118") for sid in root.steps)
    assert _runs(counted["token"]) == 1
    assert _runs(counted["key"]) == 1
    assert counted["apps"] == ["hermes"]
