"""Orchestration: connect, observe, plan, apply, destroy.

``apply`` runs the plan's actions in order: ``api`` actions through the
token's executor (precondition re-checked just before each), ``root`` and
``guest`` actions through a ``RootTransport`` when one is available. Without
one the root actions are reported *pending* with the exact reason, guest
actions of that stack wait for them, and the result's exit code is 3.
Nothing here prints: progress goes to a callback (the CLI renders it).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pvestack._client import CallHook, ClientSettings, PveClient
from pvestack._commands import Step
from pvestack._config import StackFile
from pvestack._desired import build_desired, check_apps, token_secret
from pvestack._errors import (
    OwnershipError,
    PveError,
    PvestackError,
    ReplacementRequired,
)
from pvestack._facts import ShellFactReader
from pvestack._model import (
    Action,
    Actor,
    ApiCall,
    Change,
    DesiredState,
    ObservedState,
    Plan,
)
from pvestack._observe import FactReader, observe
from pvestack._plan import plan as make_plan_from
from pvestack._plan import split_props
from pvestack.executors._api import ApiExecutor
from pvestack.executors._base import RootTransport
from pvestack.executors._ssh import open_transport as open_ssh_transport
from pvestack.verify import VerifyReport, verify

CONSOLE_SUCCESS_MARKER = "PVESTACK-ROOT-STEPS-DONE"


# ---------------------------------------------------------------- connect


def client_settings(cfg: StackFile, *, insecure: bool = False) -> ClientSettings:
    return ClientSettings(
        api_url=cfg.pve.api_url,
        token_id=cfg.pve.token_id,
        token_secret=token_secret(cfg),
        fingerprint=cfg.pve.fingerprint,
        ca_file=cfg.pve.ca_file,
        insecure=insecure or cfg.pve.insecure,
        timeout=cfg.pve.timeout,
    )


def connect(
    cfg: StackFile, *, insecure: bool = False, on_call: CallHook | None = None
) -> PveClient:
    return PveClient(client_settings(cfg, insecure=insecure), on_call=on_call)


# ---------------------------------------------------------------- root transport


@dataclass(frozen=True)
class RootAccess:
    """The root transport, or why there is none."""

    transport: RootTransport | None
    reason: str = ""
    via: str = ""


def open_root_transport(cfg: StackFile) -> RootAccess:
    """Open the configured root transport (``root.via``) when its executor exists.

    ``ssh``: ``pvestack.executors._ssh`` (``open_transport(cfg)``). ``console``:
    no transport here; the CLI hands the script over (``console-script``).
    """
    via = cfg.root.via
    if via == "none":
        return RootAccess(None, 'root.via = "none": root steps are left to you', via)
    if via == "console":
        return RootAccess(
            None,
            'root.via = "console": run the printed script in the node\'s shell '
            "(pvestack console-script)",
            via,
        )
    try:
        transport = open_ssh_transport(cfg)
    except PvestackError as e:
        return RootAccess(None, f"SSH to {cfg.root.ssh.host} failed: {e}", via)
    return RootAccess(transport, "", via)


#: facts for observe, read as root through the transport (``pvestack._facts``)
TransportFactReader = ShellFactReader


# ---------------------------------------------------------------- plan


@dataclass(frozen=True)
class PlanResult:
    desired: DesiredState
    observed: ObservedState
    plan: Plan
    api_calls: int


def plan(
    cfg: StackFile,
    client: PveClient,
    *,
    adopt: bool = False,
    chown_recursive: bool = False,
    reader: FactReader | None = None,
    with_apps: bool = True,
) -> PlanResult:
    check_apps(cfg)
    desired = build_desired(cfg, source=cfg.source_file, with_apps=with_apps)
    before = client.calls
    observed = observe(client, desired, reader=reader)
    p = make_plan_from(desired, observed, adopt=adopt, chown_recursive=chown_recursive)
    return PlanResult(desired, observed, p, client.calls - before)


# ---------------------------------------------------------------- apply


class Outcome(StrEnum):
    DONE = "done"
    SKIPPED = "skipped"  # precondition says already done
    PENDING = "pending"  # waits for root (no transport) or for a pending root step
    FAILED = "failed"


@dataclass(frozen=True)
class ActionResult:
    action: Action
    outcome: Outcome
    detail: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            **self.action.to_json(),
            "outcome": self.outcome.value,
            "detail": self.detail,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class ApplyResult:
    results: tuple[ActionResult, ...]
    plan: Plan
    error: str | None = None
    pending_reason: str = ""

    @property
    def pending(self) -> tuple[ActionResult, ...]:
        return tuple(r for r in self.results if r.outcome is Outcome.PENDING)

    @property
    def exit_code(self) -> int:
        if self.error or self.plan.refused:
            return 1
        if any(r.outcome is Outcome.FAILED for r in self.results):
            return 1
        return 3 if self.pending else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": 1,
            "exit_code": self.exit_code,
            "error": self.error,
            "pending_reason": self.pending_reason or None,
            "results": [r.to_json() for r in self.results],
            "refused": list(self.plan.refused),
            "warnings": list(self.plan.warnings),
        }


ProgressHook = Callable[[Action, str, str], None]  # action, phase ("start"|outcome), detail


def _vmid_of(action: Action) -> int:
    m = re.match(r"lxc/(\d+)", action.target)
    return int(m.group(1)) if m else 0


def _node_of(action: Action) -> str:
    if " on " in action.target:
        return action.target.rsplit(" on ", 1)[1]
    return action.target.split(":", 1)[0]


def apply(
    p: Plan,
    client: PveClient,
    *,
    root: RootAccess,
    on_progress: ProgressHook | None = None,
) -> ApplyResult:
    """Run ``p``. Raises ``ReplacementRequired`` before doing anything if it asks for one."""
    replace = [a for a in p.actions if a.change is Change.REPLACE]
    if replace:
        raise ReplacementRequired(
            "; ".join(f"{a.target}: {a.reason}" for a in replace),
            hint="pvestack never replaces a container by itself",
        )
    api = ApiExecutor(client)
    results: list[ActionResult] = []
    blocked: set[str] = set()  # stacks with a pending or failed root step
    failed_stacks: set[str] = set()

    def note(a: Action, outcome: Outcome, detail: str, t0: float) -> None:
        results.append(ActionResult(a, outcome, detail, time.monotonic() - t0))
        if on_progress is not None:
            on_progress(a, outcome.value, detail)

    def relay(a: Action) -> Callable[[str], None] | None:
        if on_progress is None:
            return None
        hook = on_progress
        return lambda msg: hook(a, "progress", msg)

    for a in p.actions:
        t0 = time.monotonic()
        if a.stack in failed_stacks:
            note(a, Outcome.PENDING, "an earlier step of this stack failed", t0)
            continue
        if on_progress is not None:
            on_progress(a, "start", "")
        try:
            if a.actor is Actor.API:
                pre = api.check(a, _node_of(a), _vmid_of(a))
                if not pre.run:
                    note(a, Outcome.SKIPPED, pre.detail, t0)
                    continue
                api.run(a, on_progress=relay(a))
                note(a, Outcome.DONE, "", t0)
                continue
            # root / guest
            if a.actor is Actor.GUEST and a.stack in blocked:
                note(a, Outcome.PENDING, "waits for this stack's root steps", t0)
                continue
            if root.transport is None:
                blocked.add(a.stack)
                note(a, Outcome.PENDING, root.reason, t0)
                continue
            if not a.steps:
                blocked.add(a.stack)
                note(a, Outcome.PENDING, "no commands for this step (builder not available)", t0)
                continue
            if a.precondition.startswith(("owned:", "adopt:")):
                api.check(a, _node_of(a), _vmid_of(a))
            ran = False
            for step in a.steps:
                ran = root.transport.run_step(step, on_output=relay(a)) or ran
            note(a, Outcome.DONE if ran else Outcome.SKIPPED, "" if ran else "already done", t0)
        except (OwnershipError, PveError, PvestackError) as e:
            failed_stacks.add(a.stack)
            detail = str(e) + (f"\nhint: {e.hint}" if e.hint else "")
            note(a, Outcome.FAILED, detail, t0)
    pending_reason = root.reason if any(r.outcome is Outcome.PENDING for r in results) else ""
    return ApplyResult(tuple(results), p, pending_reason=pending_reason)


def console_actions(p: Plan) -> tuple[tuple[Action, ...], tuple[Action, ...]]:
    """The actions a printed console script can carry, and those it cannot.

    Root actions always (they never hold a secret); guest actions in order until the
    first one whose steps carry a secret (a printed script never holds one): that
    one and the rest of its stack's guest actions need the SSH transport.
    """
    script: list[Action] = []
    left: list[Action] = []
    stopped: set[str] = set()
    for a in p.actions:
        if a.actor is Actor.API:
            continue
        if not a.steps:
            left.append(a)
            continue
        if a.actor is Actor.GUEST and (a.stack in stopped or any(s.has_secret for s in a.steps)):
            stopped.add(a.stack)
            left.append(a)
            continue
        script.append(a)
    return tuple(script), tuple(left)


def root_steps(p: Plan) -> tuple[Step, ...]:
    """The steps of the console script, in order."""
    return tuple(s for a in console_actions(p)[0] for s in a.steps)


def root_effects_missing(client: PveClient, p: Plan) -> Callable[[], list[str]]:
    """A poll for the console hand-off: what the plan's root steps should have changed
    that the API does not show yet (an empty list: all there).

    It reads each affected container's config and status (2 calls per container).
    Host directories and probes are invisible to the API and are not listed.
    """
    wanted: dict[tuple[str, int], dict[str, str]] = {}
    running: set[tuple[str, int]] = set()
    for a in p.actions:
        if a.actor is not Actor.ROOT or not a.target.startswith("lxc/"):
            continue
        key = (_node_of(a), _vmid_of(a))
        if a.id.endswith(":root:pct-set"):
            for k, v in a.after.items():
                if v is not None:
                    wanted.setdefault(key, {})[k] = v
        if a.id.endswith(":ct:reboot"):
            running.add(key)
        wanted.setdefault(key, {})

    def missing() -> list[str]:
        out: list[str] = []
        for (node, vmid), keys in wanted.items():
            cfg = client.get(f"/nodes/{node}/lxc/{vmid}/config")
            cfg = {str(k): str(v) for k, v in (cfg or {}).items()}
            for k, v in keys.items():
                if split_props(cfg.get(k, ""), first_key="volume") != split_props(
                    v, first_key="volume"
                ):
                    out.append(f"lxc/{vmid}: {k} is {cfg.get(k)!r}, want {v!r}")
            if (node, vmid) in running:
                st = client.get(f"/nodes/{node}/lxc/{vmid}/status/current")
                if not isinstance(st, dict) or st.get("status") != "running":
                    out.append(f"lxc/{vmid}: not running")
        return out

    return missing


# ---------------------------------------------------------------- destroy


@dataclass(frozen=True)
class DestroyTarget:
    stack: str
    vmid: int
    node: str
    hostname: str
    status: str
    volumes: tuple[str, ...]  # "mp0: local-lvm:vm-118-disk-1 at /data" (deleted with the CT)
    bind_mounts: tuple[str, ...]  # host dirs kept
    protected: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "vmid": self.vmid,
            "node": self.node,
            "hostname": self.hostname,
            "status": self.status,
            "volumes_deleted": list(self.volumes),
            "host_dirs_kept": list(self.bind_mounts),
            "protected": self.protected,
        }


@dataclass(frozen=True)
class DestroyPlan:
    targets: tuple[DestroyTarget, ...]
    refused: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": 1,
            "targets": [t.to_json() for t in self.targets],
            "refused": list(self.refused),
            "absent": list(self.absent),
        }


def destroy_plan(cfg: StackFile, client: PveClient) -> DestroyPlan:
    desired = build_desired(cfg, source=cfg.source_file, with_apps=False)
    observed = observe(client, desired)
    targets: list[DestroyTarget] = []
    refused: list[str] = []
    absent: list[str] = []
    for spec in desired.stacks:
        obs = observed.stack(spec.name)
        c = obs.container
        if obs.foreign is not None:
            f = obs.foreign
            refused.append(
                f"{spec.name}: {f.type}/{f.vmid} on {f.node} does not carry this stack's mark; "
                "pvestack never deletes it"
            )
            continue
        if c is None:
            absent.append(spec.name)
            continue
        vols, binds = [], []
        for key in sorted(c.config):
            if key == "rootfs" or (key.startswith("mp") and key[2:].isdigit()):
                props = split_props(c.config[key], first_key="volume")
                vol = props.get("volume", "")
                where = props.get("mp", "/")
                if vol.startswith("/"):
                    binds.append(f"{key}: {vol} (host directory, kept) at {where}")
                else:
                    vols.append(f"{key}: {vol} at {where}")
        targets.append(
            DestroyTarget(
                stack=spec.name,
                vmid=c.vmid,
                node=c.node,
                hostname=c.config.get("hostname", ""),
                status=c.status,
                volumes=tuple(vols),
                bind_mounts=tuple(binds),
                protected=c.config.get("protection") == "1",
            )
        )
    return DestroyPlan(tuple(targets), tuple(refused), tuple(absent))


@dataclass(frozen=True)
class DestroyResult:
    done: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    skipped: tuple[str, ...] = field(default_factory=tuple)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": 1,
            "exit_code": self.exit_code,
            "destroyed": list(self.done),
            "failed": list(self.failed),
            "skipped": list(self.skipped),
        }


def destroy(
    dp: DestroyPlan,
    client: PveClient,
    *,
    on_progress: Callable[[str], None] | None = None,
) -> DestroyResult:
    api = ApiExecutor(client)
    done: list[str] = []
    failed: list[str] = []
    skipped: list[str] = []
    say = on_progress or (lambda _m: None)
    for t in dp.targets:
        label = f"lxc/{t.vmid} on {t.node} ({t.stack})"
        if t.protected:
            skipped.append(
                f"{label}: protection=1 is set, PVE refuses to delete it "
                f"(pct set {t.vmid} -protection 0, or protection = false in the stack file "
                "and apply, if you really mean to)"
            )
            continue
        check = Action(
            id=f"{t.stack}:ct:destroy",
            change=Change.DELETE,
            target=f"lxc/{t.vmid} on {t.node}",
            actor=Actor.API,
            reason="destroy",
            stack=t.stack,
            precondition=f"owned:{t.stack}",
        )
        try:
            api.check(check, t.node, t.vmid)
            base = f"/nodes/{t.node}/lxc/{t.vmid}"
            st = client.get(f"{base}/status/current")
            if isinstance(st, dict) and st.get("status") == "running":
                say(f"stopping {label}")
                client.run(ApiCall("POST", f"{base}/status/stop", {}))
            say(f"deleting {label}")
            client.run(ApiCall("DELETE", base, {"purge": 1}))
            done.append(label)
        except PvestackError as e:
            failed.append(f"{label}: {e}" + (f" (hint: {e.hint})" if e.hint else ""))
    return DestroyResult(tuple(done), tuple(failed), tuple(skipped))


# ---------------------------------------------------------------- verify


def run_verify(cfg: StackFile, client: PveClient, *, root: RootAccess) -> VerifyReport:
    """Observe, then run the verify checks on the containers carrying this file's marks."""
    check_apps(cfg)
    desired = build_desired(cfg, source=cfg.source_file)
    observed = observe(client, desired)
    vmids: dict[str, int | None] = {}
    for s in observed.stacks:
        c = s.container
        vmids[s.name] = c.vmid if c is not None and c.owner_stack == s.name else None
    return verify(desired, vmids, client.get, root.transport)
