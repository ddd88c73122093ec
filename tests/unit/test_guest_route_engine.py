"""The SSH guest route in the engine: the planner's guest-access steps and create key,
the console script holding root steps only, the hand-off poll waiting for the host-key
record, the router that sends each guest step to its container, and the faults."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_plan import CONVERGED, api_params, ids, observed

from examplekit import load_example
from pvestack._commands import Command, Step, cmd
from pvestack._desired import build_desired
from pvestack._engine import RootAccess, apply
from pvestack._engine._console import (
    console_actions,
    render_console_script,
    root_effects_missing,
)
from pvestack._engine._guest import NO_ROOT, GuestPlace, GuestRouter, ipv4_of, vmid_of
from pvestack._errors import GuestKeyRefused, HostKeyError, SecretError, TransportError
from pvestack._guest_settings import GuestSettings, check_private_key, stack_key
from pvestack._model import ActionKind, Actor, DesiredState, GuestAccess, Plan
from pvestack._plan import plan
from pvestack.executors import CommandOutput
from pvestack.executors._guest_ssh import GuestTarget, _unreachable

KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDWr1Yq2VSmD1gYhF3OtvFlTFPLvZ3r2Q7Cz5m5X8D2r "
    "pvestack-hermes"
)
FP = "SHA256:" + "Q" * 43
SSH = {"hermes": GuestAccess("ssh", KEY)}


SECRET = "sk-unit-guest-route-31337"


def desired_with_app() -> DesiredState:
    env = {"LITELLM_API_KEY": SECRET, "PVESTACK_TOKEN_SECRET": "x" * 36}
    return build_desired(load_example(), env=env)


def steps_of(p: Plan, kind: ActionKind) -> list[str]:
    return [s.id for a in p.actions if a.kind is kind for s in a.steps]


# ---------------------------------------------------------------- the planner


def test_create_passes_the_key_and_plans_sshd_and_the_record() -> None:
    p = plan(desired_with_app(), observed(None), guest=SSH)
    create = next(a for a in p.actions if a.kind is ActionKind.CREATE)
    assert api_params(create)["ssh-public-keys"] == KEY
    access = steps_of(p, ActionKind.GUEST_ACCESS)
    # the key went in at create: no authorized-key step
    assert access == ["ct118:guest-access:sshd", "ct118:guest-access:hostkey-record"]
    order = ids(p)
    assert order.index("hermes:guest-access") > order.index("hermes:ct:start")
    assert order.index("hermes:guest-access") < min(
        i for i, a in enumerate(p.actions) if a.actor is Actor.GUEST
    )


def test_plan_without_a_key_yet_says_one_will_be_made(example_desired: DesiredState) -> None:
    p = plan(example_desired, observed(None), guest={"hermes": GuestAccess("ssh", None)})
    create = next(a for a in p.actions if a.kind is ActionKind.CREATE)
    assert "ssh-public-keys" not in api_params(create)
    assert any("a new SSH key" in w for w in p.warnings)


def test_pct_route_plans_no_guest_access(example_desired: DesiredState) -> None:
    p = plan(example_desired, observed(None), guest={"hermes": GuestAccess("pct", KEY)})
    assert steps_of(p, ActionKind.GUEST_ACCESS) == []
    create = next(a for a in p.actions if a.kind is ActionKind.CREATE)
    assert "ssh-public-keys" not in api_params(create)


def test_ct_without_record_gets_the_key_authorized(example_desired: DesiredState) -> None:
    """Adopted, or made by Terraform: no record, so sshd + the key + the record."""
    p = plan(example_desired, observed(CONVERGED), guest=SSH)
    assert steps_of(p, ActionKind.GUEST_ACCESS) == [
        "ct118:guest-access:sshd",
        "ct118:guest-access:authorized-key",
        "ct118:guest-access:hostkey-record",
    ]


def test_recorded_ct_needs_no_access_step_unless_the_key_was_refused(
    example_desired: DesiredState,
) -> None:
    recorded = CONVERGED | {"description": CONVERGED["description"] + f"pvestack-hostkey: {FP}\n"}
    assert (
        steps_of(plan(example_desired, observed(recorded), guest=SSH), ActionKind.GUEST_ACCESS)
        == []
    )
    refused = {"hermes": GuestAccess("ssh", KEY, key_refused=True)}
    p = plan(example_desired, observed(recorded), guest=refused)
    assert "ct118:guest-access:authorized-key" in steps_of(p, ActionKind.GUEST_ACCESS)
    assert "refused" in next(a for a in p.actions if a.kind is ActionKind.GUEST_ACCESS).reason


# ---------------------------------------------------------------- the console script


def test_console_script_holds_root_steps_only_and_no_secret(
    example_desired: DesiredState,
) -> None:
    d = desired_with_app()
    p = plan(d, observed(None), guest=SSH)
    in_script, left = console_actions(p, root_only=True)
    assert in_script and all(a.actor is Actor.ROOT for a in in_script)
    assert left and all(a.actor is Actor.GUEST for a in left)
    script = render_console_script(p, source="x.toml", root_only=True)
    assert script is not None
    assert "guest-access:hostkey-record" in script
    assert "docker" not in script and "pct push" not in script
    assert SECRET not in script
    assert any(s.has_secret for a in left for s in a.steps)  # the .env went over SSH
    assert script.rstrip().endswith("pvestack_root_steps </dev/null")


class FakeClient:
    def __init__(self, config: dict[str, str], status: str = "running") -> None:
        self.config, self.status = config, status

    def get(self, path: str) -> Any:
        return self.config if path.endswith("/config") else {"status": self.status}


def test_hand_off_waits_for_the_host_key_record(example_desired: DesiredState) -> None:
    p = plan(example_desired, observed(CONVERGED), guest=SSH)
    client = FakeClient(dict(CONVERGED))
    missing = root_effects_missing(client, p)  # type: ignore[arg-type]
    assert missing() == ["lxc/118: no pvestack-hostkey record in the description yet"]
    client.config["description"] += f"pvestack-hostkey: {FP}\n"
    assert missing() == []


# ---------------------------------------------------------------- the router


class FakeGuest:
    def __init__(self, vmid: int, log: list[tuple[int, str]]) -> None:
        self.vmid, self.log = vmid, log

    def run_step(self, step: Step, *, on_output: Callable[[str], None] | None = None) -> bool:
        self.log.append((self.vmid, step.id))
        return True

    def capture(self, command: Command) -> CommandOutput:
        return CommandOutput(0, f"in {self.vmid}", "")

    def close(self) -> None:
        self.log.append((self.vmid, "closed"))


def test_router_sends_each_step_to_its_container_one_transport_each() -> None:
    log: list[tuple[int, str]] = []
    opened: list[int] = []

    def opener(p: GuestPlace) -> FakeGuest:
        opened.append(p.vmid)
        return FakeGuest(p.vmid, log)

    r = GuestRouter(opener)
    r.learn({217: GuestPlace("gw", "n", 217, "dhcp"), 218: GuestPlace("h", "n", 218, "dhcp")})
    for vmid, sid in ((217, "a"), (218, "b"), (217, "c")):
        r.run_step(Step(sid, "", (cmd("pct", "exec", str(vmid), "--", "true"),)))
    assert log == [(217, "a"), (218, "b"), (217, "c")] and opened == [217, 218]
    assert r.capture(cmd("pct", "exec", "218", "--", "id")).stdout == "in 218"
    # a node command (verify's host-side probe) with no root transport: an honest failure
    out = r.capture(cmd("stat", "-c", "%u", "/srv"))
    assert out.returncode == 1 and out.stderr == NO_ROOT
    with pytest.raises(ValueError, match="not a guest step"):
        r.run_step(Step("x", "", (cmd("pct", "set", "217"),)))
    r.close()
    assert (217, "closed") in log and (218, "closed") in log


def test_vmid_and_address_of_a_stack(example_desired: DesiredState) -> None:
    assert vmid_of(cmd("pct", "push", "218", "/a", "/b")) == 218
    assert vmid_of(cmd("sh", "-c", "pct exec 218")) is None
    assert ipv4_of(example_desired.stacks[0]) == "dhcp"


def test_a_refused_key_is_pending_and_remembered(example_desired: DesiredState) -> None:
    """The CT refused the key: the guest action waits (exit 3, the script authorizes the
    key), it is not a failure, and the router remembers the stack for the next plan."""

    def opener(p: GuestPlace) -> FakeGuest:
        raise GuestKeyRefused(f"CT {p.vmid} refused pvestack's key", hint="authorize it")

    r = GuestRouter(opener)
    r.learn({118: GuestPlace("hermes", "gihyeon", 118, "dhcp")})
    recorded = CONVERGED | {"description": CONVERGED["description"] + f"pvestack-hostkey: {FP}\n"}
    p = plan(desired_with_app(), observed(recorded), guest=SSH)
    guest = Plan(actions=tuple(a for a in p.actions if a.actor is Actor.GUEST)[:1])
    assert guest.actions
    res = apply(guest, FakeClient(recorded), root=RootAccess(None, "console", "console", r))  # type: ignore[arg-type]
    assert res.exit_code == 3 and "refused" in res.results[0].detail
    assert r.refused == {"hermes"}


# ---------------------------------------------------------------- faults


def test_unreachable_names_address_reason_and_the_pct_route(tmp_path: Path) -> None:
    t = GuestTarget(vmid=218, host="10.78.5.9", pinned=FP, key_file=tmp_path / "k")
    e = _unreachable(t, "connection refused")
    assert isinstance(e, TransportError)
    text = f"{e} {e.hint}"
    assert (
        "10.78.5.9" in text
        and "connection refused" in text
        and 'guest.via = "pct"' in text.replace("[guest] via", "guest.via")
    )


def test_no_record_says_which_script_to_run() -> None:
    from pvestack._steps.guest_access import require_hostkey_record  # noqa: PLC0415

    with pytest.raises(HostKeyError) as e:
        require_hostkey_record("Hermes\npvestack-stack: hermes", 218)
    assert "console-script" in (e.value.hint or "")


def test_operator_key_unreadable_or_loose(tmp_path: Path) -> None:
    k = tmp_path / "id"
    k.write_text("x")
    k.chmod(0o644)
    with pytest.raises(SecretError) as e:
        check_private_key(k)
    assert e.value.hint == f"chmod 600 {k}"
    settings = GuestSettings(via="ssh", key_file=str(tmp_path / "missing"))
    with pytest.raises(SecretError, match="does not exist"):
        stack_key(settings, "hermes")


def test_lab_console_example_is_console_only_with_the_ssh_guest_route() -> None:
    from pvestack._config import load_config  # noqa: PLC0415
    from pvestack._guest_settings import resolve_guest_settings  # noqa: PLC0415

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "examples" / "lab-console.toml", env={})
    assert cfg.root.via == "console"
    assert resolve_guest_settings(cfg).via == "ssh"
    assert [s.name for s in cfg.stack] == ["gateway", "hermes"]


def test_plan_writes_no_key_apply_makes_it(tmp_path: Path) -> None:
    from pvestack._engine import Options, Session  # noqa: PLC0415

    cfg = load_example(ROOT_VIA="console")
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    s = Session(cfg, Options(), env=env)
    assert s.guest_access(generate=False) == {"hermes": GuestAccess("ssh", None)}
    assert not (tmp_path / "pvestack").exists()
    made = s.guest_access(generate=True)["hermes"].public_key
    assert made is not None and made.startswith("ssh-ed25519 ")
    assert oct((tmp_path / "pvestack" / "keys" / "hermes").stat().st_mode & 0o777) == "0o600"
    assert s.guest_access(generate=False)["hermes"].public_key == made
