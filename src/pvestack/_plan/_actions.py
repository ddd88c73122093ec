"""Builders of one ``Action`` each, for one stack (pure: values in, an Action out)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pvestack._commands import Step
from pvestack._model import (
    Action,
    ActionKind,
    Actor,
    Adopt,
    ApiCall,
    BindMount,
    Change,
    ContainerSpec,
    HostDirState,
    HostPathFact,
    ObservedStack,
    Owned,
    Running,
    StackSpec,
    Stopped,
    Target,
    TargetKind,
)
from pvestack._plan._values import TOKEN_FEATURES, host_dir_need, host_owner
from pvestack._pvevalues import parse_features
from pvestack._steps import root as root_steps


@dataclass(frozen=True)
class StackCtx:
    """Where one stack's actions go: its spec, what was seen, the CT's node and vmid."""

    spec: StackSpec
    obs: ObservedStack
    node: str
    vmid: int
    adopt: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def ct(self) -> ContainerSpec:
        return self.spec.container

    @property
    def target(self) -> Target:
        return Target.lxc(self.node, self.vmid)

    @property
    def ct_path(self) -> str:
        return f"/nodes/{self.node}/lxc/{self.vmid}"

    @property
    def ours(self) -> Owned | Adopt:
        """The ownership precondition of every change to an existing CT."""
        return Adopt(self.name) if self.adopt else Owned(self.name)


def root_reason(keys: Mapping[str, str], before: Mapping[str, str | None] | None = None) -> str:
    parts = []
    if "features" in keys:
        want = parse_features(keys["features"])
        have = parse_features((before or {}).get("features"))
        extra = sorted(
            k
            for k in set(want) | set(have)
            if k not in TOKEN_FEATURES and want.get(k) != have.get(k)
        )
        if extra:
            parts.append(
                f"feature flags {', '.join(extra)} (PVE: changing feature flags "
                "(except nesting) is only allowed for root@pam)"
            )
        else:
            parts.append("features of a privileged container are root-only")
    mps = sorted(k for k in keys if k.startswith("mp"))
    if mps:
        parts.append(
            f"bind mounts {', '.join(mps)} (PVE: mount point type bind is only allowed "
            "for root@pam)"
        )
    return "; ".join(parts)


def root_set(c: StackCtx, set_keys: Mapping[str, str], before: Mapping[str, str | None]) -> Action:
    return Action(
        id=f"{c.name}:root:pct-set",
        kind=ActionKind.ROOT_SET,
        change=Change.UPDATE if before else Change.CREATE,
        target=c.target,
        actor=Actor.ROOT,
        reason=root_reason(set_keys, before or None),
        precondition=c.ours,
        stack=c.name,
        before=dict(before),
        after=dict(set_keys),
        steps=(root_steps.pct_set_step(c.vmid, dict(set_keys)),),
    )


def host_dir(
    c: StackCtx, bm: BindMount, fact: HostPathFact | None, *, configure: bool
) -> Action | None:
    """The host directory of ``bm``, when it needs work. Without a root reader (``fact``
    None) it is prepared whenever the mount is (re)configured; the guard makes it a
    no-op when done."""
    idmap = c.ct.idmap
    need, reason, before = host_dir_need(bm, idmap, fact)
    if fact is None:
        need = configure
        reason = "host directory for the bind mount (checked by the step's guard)"
    if not need:
        return None
    state = (
        HostDirState(bm.host_path)
        if fact is None
        else HostDirState(bm.host_path, fact.exists, fact.uid, fact.gid)
    )
    return Action(
        id=f"{c.name}:host:{bm.key}",
        kind=ActionKind.HOST_DIR,
        change=Change.CREATE if fact is None or not fact.exists else Change.UPDATE,
        target=Target(TargetKind.HOST_PATH, c.node, c.vmid, bm.host_path),
        actor=Actor.ROOT,
        reason=reason,
        precondition=state,
        stack=c.name,
        before=before,
        after={
            "path": bm.host_path,
            "owner": host_owner(bm, idmap),
            "mode": bm.mode,
            **({"take_ownership": "true"} if bm.take_ownership else {}),
        },
        steps=(root_steps.host_dir_step(bm, idmap),),
    )


IDMAP_REASON = (
    "lxc.idmap is not an API parameter (PVE answers 400: property is not defined in "
    "schema); it is written to /etc/pve/lxc/VMID.conf on the node, with matching "
    "/etc/subuid and /etc/subgid lines"
)


def idmap(c: StackCtx, have: Sequence[str], want: Sequence[str], *, exists: bool) -> Action:
    return Action(
        id=f"{c.name}:root:idmap",
        kind=ActionKind.IDMAP,
        change=Change.UPDATE if exists else Change.CREATE,
        target=c.target,
        actor=Actor.ROOT,
        reason=IDMAP_REASON,
        precondition=c.ours,
        stack=c.name,
        before={"lxc.idmap": "; ".join(have) or None},
        after={"lxc.idmap": "; ".join(want) or None},
        steps=(root_steps.idmap_step(c.vmid, c.ct.idmap),),
    )


def start(c: StackCtx) -> Action:
    return Action(
        id=f"{c.name}:ct:start",
        kind=ActionKind.START,
        change=Change.RUN,
        target=c.target,
        actor=Actor.API,
        reason="the container should be running",
        precondition=Stopped(c.name),
        stack=c.name,
        before={"status": "stopped"},
        after={"status": "running"},
        api=(ApiCall("POST", f"{c.ct_path}/status/start", {}),),
    )


def reboot(c: StackCtx, *, root: bool, pending: Sequence[str] = ()) -> Action:
    reason = (
        "features, mounts or the id map changed on a running container: "
        "they take effect at the next start"
    )
    if pending:
        reason += f" (pending now: {', '.join(pending)})"
    return Action(
        id=f"{c.name}:ct:reboot",
        kind=ActionKind.REBOOT,
        change=Change.RUN,
        target=c.target,
        actor=Actor.ROOT if root else Actor.API,
        reason=reason,
        # the root step starts a stopped CT itself; the API's reboot needs it running
        precondition=c.ours if root else Running(c.name),
        stack=c.name,
        before={"status": "running"},
        after={"status": "running (rebooted)"},
        api=() if root else (ApiCall("POST", f"{c.ct_path}/status/reboot", {}),),
        steps=(root_steps.reboot_step(c.vmid),) if root else (),
    )


def probe(c: StackCtx, bm: BindMount) -> Action:
    return Action(
        id=f"{c.name}:probe:{bm.key}",
        kind=ActionKind.MOUNT_PROBE,
        change=Change.RUN,
        target=c.target,
        actor=Actor.ROOT,
        reason=f"prove {bm.ct_path} is writable by uid {bm.owner_uid} in the container",
        precondition=Running(c.name),
        stack=c.name,
        after={"writable": bm.ct_path},
        steps=(root_steps.mount_probe_step(c.vmid, bm, c.ct.idmap),),
    )


def guest_access(c: StackCtx, steps: Sequence[Step], *, key_refused: bool) -> Action:
    """Root steps for the SSH guest route (``pvestack._steps.guest_access``): no secret."""
    why = (
        "the container refused the stack's key: authorize it"
        if key_refused
        else "the guest route is SSH and the description has no host-key record"
    )
    return Action(
        id=f"{c.name}:guest-access",
        kind=ActionKind.GUEST_ACCESS,
        change=Change.RUN,
        target=c.target,
        actor=Actor.ROOT,
        reason=why,
        precondition=Running(c.name),
        stack=c.name,
        after={"pvestack-hostkey": "SHA256:... (read on the node)"},
        steps=tuple(steps),
    )
