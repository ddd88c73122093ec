"""The ``upgrade`` action: a running app whose compose services run another image than
the stack file pins (or an unfinished upgrade's marker in the CT) becomes ONE action.

It takes over the stack's file, image and compose-up actions (their steps, images
first: a missing or unloadable image fails before a file changes or a service
restarts) and carries an ``UpgradeSpec``: from/to per service, whether PVE can snapshot
the CT (else why), whether a vzdump backup comes first, how many pvestack snapshots
stay. The engine (``_engine._upgrade``) runs it: marker, snapshot/backup, the steps,
verify, rollback on red.

PVE's rule (pve-container ``has_feature('snapshot')``): every mount point must be a
volume on a storage that can snapshot; a bind or device mount point (a host path)
makes PVE refuse the whole snapshot. A vzdump backup leaves bind mounts out too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pvestack._guestfacts import GuestFacts, ServiceUpgrade
from pvestack._model import (
    Action,
    ActionKind,
    Actor,
    AppSpec,
    Change,
    ObservedStack,
    Running,
    StackSpec,
    Target,
    UpgradeSpec,
)
from pvestack._pvevalues import mount_points

#: storage types whose container volumes PVE can snapshot (Plugin::volume_has_feature)
SNAPSHOT_STORAGE_TYPES = frozenset({"lvmthin", "zfspool", "rbd", "btrfs"})
_FOLDED = (ActionKind.GUEST_IMAGE, ActionKind.GUEST_FILE, ActionKind.GUEST_UP)


@dataclass(frozen=True)
class UpgradeInputs:
    """What the plan needs beyond desired/observed to plan an upgrade."""

    storage_types: Mapping[str, str] | None = None  # storage id -> type; None: not read
    backup: bool = False  # ``apply --backup``: a vzdump before every upgrade


def snapshot_blockers(
    config: Mapping[str, object], storage_types: Mapping[str, str] | None
) -> list[str]:
    """Why PVE would refuse a snapshot of a CT with this config (empty: it can).
    ``storage_types`` (storage id -> type) None: storage types not checked."""
    out = []
    for key, vol, where in mount_points(config):
        if vol.startswith("/"):
            kind = "device" if vol.startswith("/dev/") else "bind mount"
            out.append(f"{key} is a {kind} of the host path {vol} at {where} "
                       "(a host path has no storage snapshot)")  # fmt: skip
            continue
        sid = vol.partition(":")[0]
        stype = (storage_types or {}).get(sid)
        if stype is not None and stype not in SNAPSHOT_STORAGE_TYPES:
            out.append(f"{key} ({vol}) is on storage '{sid}' of type {stype}, which cannot "
                       "snapshot container volumes")  # fmt: skip
    return out


def not_in_backup(config: Mapping[str, object]) -> tuple[str, ...]:
    """Bind mounts: vzdump leaves them out (``not a volume``), a snapshot cannot hold them."""
    return tuple(f"{key} ({vol} at {where})" for key, vol, where in mount_points(config)
                 if vol.startswith("/"))  # fmt: skip


def wanted_image(app: AppSpec, service: str) -> str | None:
    """The pinned image of a compose service: the app's one image (every recipe pins one)."""
    refs = [i.ref for i in app.images]
    return refs[0] if len(refs) == 1 else None


def service_upgrades(app: AppSpec, facts: GuestFacts | None) -> tuple[ServiceUpgrade, ...]:
    """Services whose running image (``GuestFacts.services``) is not the pinned one."""
    out = []
    for svc in app.services:
        fact = facts.services.get(svc) if facts is not None else None
        have = fact.image if fact is not None else None
        want = wanted_image(app, svc)
        if have and want and have != want:
            out.append(ServiceUpgrade(svc, have, want))
    return tuple(out)


def upgrade_spec(
    spec: StackSpec,
    obs: ObservedStack,
    services: tuple[ServiceUpgrade, ...],
    storage_types: Mapping[str, str] | None,
    *,
    force_backup: bool = False,
) -> UpgradeSpec:
    cfg = obs.container.config if obs.container is not None else {}
    blockers = tuple(snapshot_blockers(cfg, storage_types))
    policy = spec.upgrade
    return UpgradeSpec(
        services=services,
        snapshot=not blockers,
        blockers=blockers,
        backup=policy.backup_before or force_backup,
        backup_storage=policy.backup_storage,
        keep=policy.keep,
        protected=str(cfg.get("protection", "0")) in ("1", "true"),
        not_in_backup=not_in_backup(cfg),
        resume=obs.guest_facts.upgrade if obs.guest_facts is not None else None,
    )


def _reason(u: UpgradeSpec) -> str:
    if u.resume is not None:
        where = f"snapshot {u.resume.snapshot}" if u.resume.snapshot else "no snapshot"
        return (f"an upgrade was interrupted (phase {u.resume.phase}, {where}): apply "
                "finishes it (verify green) or rolls it back (red)")  # fmt: skip
    parts = ["the pinned image differs from the running one"]
    if u.snapshot:
        parts.append(f"snapshot first, rolled back if verify fails; keep {u.keep}")
    else:
        parts.append("PVE cannot snapshot this CT: " + "; ".join(u.blockers))
        parts.append(
            "a vzdump backup comes first (no automatic rollback)"
            if u.backup
            else "apply refuses it: set [stack.backup] before_upgrade = true (or --backup), "
            "or pass --no-rollback"
        )
    if u.not_in_backup:
        parts.append("not in any snapshot or backup: " + ", ".join(u.not_in_backup))
    if u.protected:
        parts.append("protection=1: PVE still snapshots and rolls back (it guards removal)")
    return "; ".join(parts)


def fold_upgrade(
    spec: StackSpec,
    obs: ObservedStack,
    vmid: int,
    guest: Sequence[Action],
    storage_types: Mapping[str, str] | None,
    *,
    force_backup: bool = False,
) -> tuple[Action, ...]:
    """The stack's guest actions, with the image/file/up ones folded into one ``upgrade``
    action when the running images differ from the pinned ones (or a marker says an
    upgrade did not finish); unchanged otherwise."""
    app, ct = spec.app, obs.container
    if app is None or ct is None or ct.status != "running":
        return tuple(guest)
    services = service_upgrades(app, obs.guest_facts)
    marker = obs.guest_facts.upgrade if obs.guest_facts is not None else None
    if not services and marker is None:
        return tuple(guest)
    if not services and marker is not None:
        services = marker.services
    u = upgrade_spec(spec, obs, services, storage_types, force_backup=force_backup)
    folded = [a for a in guest if a.kind in _FOLDED]
    order = {ActionKind.GUEST_IMAGE: 0, ActionKind.GUEST_FILE: 1, ActionKind.GUEST_UP: 2}
    folded.sort(key=lambda a: order[a.kind])  # stable: images, then files, then up
    action = Action(
        id=f"{spec.name}:upgrade" + (":resume" if u.resume is not None else ""),
        kind=ActionKind.UPGRADE,
        change=Change.UPDATE,
        target=Target.lxc(ct.node, vmid),
        actor=Actor.GUEST,
        reason=_reason(u),
        precondition=Running(spec.name),
        stack=spec.name,
        before={s.service: s.from_image for s in services},
        after={s.service: s.to_image for s in services},
        steps=tuple(step for a in folded for step in a.steps),
        upgrade=u,
    )
    rest = [a for a in guest if a.kind not in _FOLDED]
    return (*rest, action)
