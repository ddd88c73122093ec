"""What the engine asks of the node before acting: doctor's checks before ``apply``, and
the runc/lxc-pve breakage for a plan that installs Docker.

``preflight``: doctor's read-only checks (GETs and one TCP connect), run by ``apply``
before anything changes. ``runc_guard``: only when the plan holds a Docker install
step, the nodes' package versions (``GET /nodes/{node}/apt/versions``, one call per
node, Sys.Audit): with lxc-pve older than 6.0.5-2 the plan warns with the fix, and a
``docker-ce`` install holds containerd.io below the breaking release.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from pvestack._client import PveClient
from pvestack._doctor import DoctorReport, RootSettings, doctor
from pvestack._errors import PveError
from pvestack._model import Action, ActionKind, AppSpec, DesiredState, Plan, frozen_map
from pvestack._nodepkgs import LXC_PVE_FIXED, node_versions, runc_breakage_warning
from pvestack._steps.guest import CONTAINERD_BREAKING, docker_steps


def preflight(
    client: PveClient, desired: DesiredState, root: RootSettings, *, token_id: str, adopt: bool
) -> DoctorReport:
    """Doctor's checks, as ``apply`` runs them first."""
    return doctor(client, desired, root, token_id=token_id, adopt=adopt)


@dataclass(frozen=True)
class RuncGuard:
    plan: Plan  # with the warning, and docker-ce installs holding containerd.io
    notes: tuple[str, ...] = ()  # versions that could not be read
    api_calls: int = 0


def runc_guard(p: Plan, desired: DesiredState, client: PveClient) -> RuncGuard:
    """``p`` checked against the runc 1.3.3 breakage, when it installs Docker."""
    docker = [a for a in p.actions if a.kind is ActionKind.GUEST_DOCKER]
    if not docker:
        return RuncGuard(p)
    before = client.calls
    apps = {s.name: s.app for s in desired.stacks}
    warnings: list[str] = []
    notes: list[str] = []
    old: set[str] = set()  # nodes whose lxc-pve predates the fix
    for node in sorted({a.target.node for a in docker}):
        try:
            versions = node_versions(client, node)
        except PveError:
            notes.append(
                f"could not read the node's package versions (Sys.Audit on /nodes/{node}): "
                "the runc/lxc-pve check was skipped"
            )
            continue
        warning = runc_breakage_warning(versions)
        if warning:
            warnings.append(f"{node}: {warning}")
            old.add(node)
    actions = tuple(
        _held(a, apps.get(a.stack), LXC_PVE_FIXED)
        if a.kind is ActionKind.GUEST_DOCKER and a.target.node in old
        else a
        for a in p.actions
    )
    guarded = replace(p, actions=actions, warnings=(*p.warnings, *warnings))
    return RuncGuard(guarded, tuple(notes), client.calls - before)


def _held(a: Action, app: AppSpec | None, fixed: str) -> Action:
    """The docker-ce install of ``a`` with containerd.io held (other sources unchanged)."""
    if app is None or app.docker_source != "docker-ce" or a.target.vmid is None:
        return a
    after: Mapping[str, str | None] = frozen_map(
        {**a.after, "containerd.io": f"< {CONTAINERD_BREAKING} (held: lxc-pve < {fixed})"}
    )
    return replace(
        a,
        steps=docker_steps(app, a.target.vmid, hold_containerd=True),
        reason=a.reason + f"; containerd.io held below {CONTAINERD_BREAKING} "
        f"(the node's lxc-pve predates {fixed}: runc 1.3.3 breakage)",
        after=after,
    )
