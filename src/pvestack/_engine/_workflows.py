"""The workflows the CLI runs, one function each, on one ``Session``:
plan, apply (with the console hand-off loop, then verify), destroy, verify, the
console script. The CLI parses options, calls one of these and renders the result."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pvestack import _daytwo as daytwo
from pvestack._client import PveClient
from pvestack._doctor import DoctorReport, RootSettings
from pvestack._engine._apply import ApplyResult, ProgressHook, apply
from pvestack._engine._console import (
    console_actions,
    render_console_script,
    root_effects_missing,
)
from pvestack._engine._destroy import DestroyPlan, DestroyResult, destroy, destroy_plan
from pvestack._engine._facts import TransportFactReader
from pvestack._engine._guest import GuestFactReader, places
from pvestack._engine._nodecheck import preflight, runc_guard
from pvestack._engine._session import RootAccess, Session
from pvestack._engine._status import record_report
from pvestack._engine._upgrade import Upgrader, UpgradeReport
from pvestack._errors import PvestackError
from pvestack._model import (
    Action,
    ActionKind,
    DesiredState,
    GuestAccess,
    ImageSource,
    ObservedState,
    Plan,
)
from pvestack._observe import FactReader, observe
from pvestack._plan import UpgradeInputs
from pvestack._plan import plan as make_plan
from pvestack.verify import VerifyReport, verify

Poll = Callable[[], Sequence[str]]


@dataclass(frozen=True)
class PlanResult:
    desired: DesiredState
    observed: ObservedState
    plan: Plan
    api_calls: int
    notes: tuple[str, ...] = ()  # e.g. why host facts were not read
    root_via: str = ""


def plan(
    desired: DesiredState,
    client: PveClient,
    *,
    adopt: bool = False,
    reader: FactReader | None = None,
    guest: Mapping[str, GuestAccess] | None = None,
    backup: bool = False,
) -> PlanResult:
    """Observe, then plan ``desired`` (one step of every workflow). A plan with an
    upgrade is made again with the nodes' storage types (can PVE snapshot the CT?)."""
    before = client.calls
    observed = observe(client, desired, reader=reader)
    inputs = UpgradeInputs(backup=backup)
    p = make_plan(desired, observed, adopt=adopt, guest=guest, upgrade=inputs)
    nodes = sorted({a.target.node for a in p.actions if a.kind is ActionKind.UPGRADE})
    if nodes:
        types: dict[str, str] = {}
        for node in nodes:
            types.update(daytwo.storage_types(client, node))
        inputs = UpgradeInputs(storage_types=types, backup=backup)
        p = make_plan(desired, observed, adopt=adopt, guest=guest, upgrade=inputs)
    return PlanResult(desired, observed, p, client.calls - before)


def _reader(s: Session, root: RootAccess | None) -> FactReader | None:
    """Host facts through the root transport; guest facts through the guest route."""
    if root is None:
        return None
    router = s.router
    if router is not None:
        return GuestFactReader(router, root.transport, s.client)
    return TransportFactReader(root.transport) if root.transport else None


def _plan(s: Session, root: RootAccess | None, *, backup: bool = False) -> PlanResult:
    reader = _reader(s, root)
    o = s.options
    result = plan(
        s.desired,
        s.client,
        adopt=o.adopt,
        reader=reader,
        guest=s.guest_access(generate=False),
        backup=backup,
    )
    if s.router is not None:
        s.router.learn(places(s.desired.stacks, result.observed))
    notes: tuple[str, ...] = ()
    if root is not None and root.transport is None and root.via == "ssh":
        notes = (f"host facts not read: {root.reason}",)
    guard = runc_guard(result.plan, s.desired, s.client)  # reads only for a Docker install
    return replace(
        result,
        plan=guard.plan,
        notes=(*notes, *guard.notes),
        root_via=s.cfg.root.via,
        api_calls=result.api_calls + guard.api_calls,
    )


def plan_run(s: Session) -> PlanResult:
    """``pvestack plan``: reads host and guest facts as root only when SSH is configured
    (guest facts over the CT's own SSH when its key exists). Writes no file."""
    # guest facts over SSH only with the keys already there (opening would make them)
    keys_ready = all(g.public_key for g in s.guest_access(generate=False).values())
    via_ssh = s.cfg.root.via == "ssh" or (s.guest_settings.via == "ssh" and keys_ready)
    return _plan(s, s.root if via_ssh else None)


# ---------------------------------------------------------------- apply


@dataclass(frozen=True)
class ApplyHooks:
    """What the caller shows and asks along the way (all optional)."""

    on_plan: Callable[[Plan, str], None] | None = None  # each plan (and root.via), first
    confirm: Callable[[Plan], None] | None = None  # before adopting (raise to stop)
    on_progress: ProgressHook | None = None
    # show the console script and wait until ``poll`` lists nothing (a terminal is
    # there); None: the script is returned in the result instead
    hand_off: Callable[[str, Poll], None] | None = None
    on_verify: Callable[[], None] | None = None
    on_doctor: Callable[[DoctorReport], None] | None = None  # doctor's findings, first


@dataclass(frozen=True)
class ApplyRun:
    plan: Plan  # the last plan run
    result: ApplyResult
    script: str | None = None  # the console script still to run (not handed off)
    report: VerifyReport | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    doctor: DoctorReport | None = None  # None: --skip-doctor
    upgrades: tuple[UpgradeReport, ...] = ()  # what each upgrade action did

    @property
    def exit_code(self) -> int:
        if self.report is not None and not self.report.ok:
            return 1
        return self.result.exit_code


def _apply_plan(
    s: Session, p: Plan, hooks: ApplyHooks, upgrader: Upgrader | None = None
) -> ApplyResult:
    if not p.actions:
        return ApplyResult((), p)
    return apply(p, s.client, root=s.root, on_progress=hooks.on_progress, upgrader=upgrader)


def _doctor_first(s: Session, hooks: ApplyHooks) -> DoctorReport:
    ssh = s.cfg.root.ssh
    root = RootSettings(s.cfg.root.via, ssh.host, ssh.port, ssh.known_hosts)
    report = preflight(
        s.client, s.desired, root, token_id=s.cfg.pve.token_id, adopt=s.options.adopt
    )
    if hooks.on_doctor is not None:
        hooks.on_doctor(report)
    return report


def apply_run(
    s: Session,
    hooks: ApplyHooks = ApplyHooks(),
    *,
    run_verify: bool = True,
    run_doctor: bool = True,
    no_rollback: bool = False,
    backup: bool = False,
) -> ApplyRun:
    """``pvestack apply``: doctor's checks first (a fail stops it before any change),
    plan, apply; in console mode hand the root script over, wait for its effects
    through the API, plan again and continue; then verify."""
    found = _doctor_first(s, hooks) if run_doctor else None
    if found is not None and found.failed:
        nothing = Plan(())
        fails = sum(f.status.value == "fail" for f in found.findings)
        error = f"doctor found {fails} problem(s): nothing was changed (fix them, or --skip-doctor)"
        return ApplyRun(nothing, ApplyResult((), nothing, error=error), doctor=found)
    upgrader = Upgrader(
        s.client,
        lambda name, images: verify_run(s, only=name, images=images),
        no_rollback=no_rollback,
    )
    run = _apply_run(s, hooks, run_verify=run_verify, upgrader=upgrader, backup=backup)
    return replace(run, doctor=found, upgrades=tuple(upgrader.reports))


def _apply_run(
    s: Session, hooks: ApplyHooks, *, run_verify: bool, upgrader: Upgrader, backup: bool
) -> ApplyRun:
    root = s.root
    notes = (root.reason,) if root.transport is None and root.via == "ssh" else ()
    s.guest_access(generate=True)  # the per-stack keys exist before the plan (create needs them)
    p = _plan(s, root, backup=backup).plan
    if hooks.on_plan is not None:
        hooks.on_plan(p, s.cfg.root.via)
    if p.actions and s.options.adopt and hooks.confirm is not None:
        hooks.confirm(p)
    res = _apply_plan(s, p, hooks, upgrader)
    script = None
    root_only = s.router is not None
    if res.exit_code == 3 and root.via == "console":
        # the token's part changed the node (e.g. started the CT): the script comes
        # from a fresh plan, so it holds what is needed now (the reboot, for one)
        fresh = _plan(s, None).plan
        script = render_console_script(fresh, source=s.cfg.source_file, root_only=root_only)
        if script is not None and hooks.hand_off is not None:
            hooks.hand_off(script, root_effects_missing(s.client, fresh))
            script = None  # printed, and its effects seen
            p = _plan(s, root, backup=backup).plan
            if hooks.on_plan is not None:
                hooks.on_plan(p, s.cfg.root.via)
            res = _apply_plan(s, p, hooks, upgrader)
    elif res.exit_code == 3 and s.router is not None and s.router.refused and root.transport:
        p = _plan(s, root, backup=backup).plan  # root over SSH authorizes the refused key
        res = _apply_plan(s, p, hooks, upgrader)
    report = None
    if run_verify and res.exit_code == 0:
        if hooks.on_verify is not None:
            hooks.on_verify()
        report = verify_run(s)
        notes = (*notes, *record_report(s, report))  # the last verify, kept in each CT
    return ApplyRun(p, res, script, report, notes)


# ---------------------------------------------------------------- destroy / verify / script


@dataclass(frozen=True)
class DestroyRun:
    plan: DestroyPlan
    result: DestroyResult

    @property
    def exit_code(self) -> int:
        return self.result.exit_code

    def to_json(self) -> dict[str, Any]:
        return {**self.plan.to_json(), "result": self.result.to_json()}


def destroy_run(
    s: Session,
    *,
    confirm: Callable[[DestroyPlan], None] | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> DestroyRun:
    """``pvestack destroy``: the marked containers of this file; ``confirm`` sees the
    destroy plan first (raise to stop). Exit code 1 when a guest was refused."""
    dp = destroy_plan(s.containers, s.client)
    if not dp.targets:
        return DestroyRun(dp, DestroyResult(refused=dp.refused))
    if confirm is not None:
        confirm(dp)
    return DestroyRun(dp, destroy(dp, s.client, on_progress=on_progress))


def verify_run(
    s: Session, *, only: str | None = None, images: Sequence[str] | None = None
) -> VerifyReport:
    """Observe, then run the verify checks on the containers carrying this file's marks
    (``only``: one stack's; ``images``: the images it runs instead of the pinned ones,
    e.g. after an upgrade's rollback)."""
    desired = s.desired
    if only is not None:
        spec = desired.stack(only)
        if images is not None and spec.app is not None:
            app = replace(spec.app, images=tuple(ImageSource(ref) for ref in images))
            spec = replace(spec, app=app)
        desired = replace(desired, stacks=(spec,))
    observed = observe(s.client, desired)
    vmids: dict[str, int | None] = {}
    for st in observed.stacks:
        c = st.container
        vmids[st.name] = c.vmid if c is not None and c.owner_stack == st.name else None
    router = s.router
    if router is not None:  # in-container checks over the guest route
        router.learn(places(desired.stacks, observed))
        return verify(desired, vmids, s.client.get, router, node_root=s.root.transport is not None)
    return verify(desired, vmids, s.client.get, s.root.transport)


@dataclass(frozen=True)
class ConsoleScript:
    script: str | None  # None: no root step pending
    left: tuple[Action, ...]  # actions a printed script cannot carry (they hold a secret)


def console_script_run(s: Session) -> ConsoleScript:
    """``pvestack console-script``: the current plan's root steps as one script."""
    p = _plan(s, None).plan
    root_only = s.guest_settings.via == "ssh"
    _in_script, left = console_actions(p, root_only=root_only)
    if root_only:  # guest.via = "ssh": guest steps never belong in the script
        left = ()
    try:
        script = render_console_script(p, source=s.cfg.source_file, root_only=root_only)
    except ValueError as e:  # a secret in a step: render_script refuses
        raise PvestackError(str(e)) from None
    return ConsoleScript(script, left)
