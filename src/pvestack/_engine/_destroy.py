"""Destroy: only containers carrying this file's marks; host directories are kept."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pvestack._client import PveClient
from pvestack._errors import PvestackError
from pvestack._model import (
    Action,
    ActionKind,
    Actor,
    ApiCall,
    Change,
    DesiredState,
    ObservedContainer,
    Owned,
    Target,
)
from pvestack._observe import observe
from pvestack._pvevalues import mount_props
from pvestack.executors import PreconditionChecker


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

    @property
    def target(self) -> Target:
        return Target.lxc(self.node, self.vmid)

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


def _target(stack: str, c: ObservedContainer) -> DestroyTarget:
    vols, binds = [], []
    for key in sorted(c.config):
        if key == "rootfs" or (key.startswith("mp") and key[2:].isdigit()):
            props = mount_props(c.config[key])
            vol = props.get("volume", "")
            where = props.get("mp", "/")
            if vol.startswith("/"):
                binds.append(f"{key}: {vol} (host directory, kept) at {where}")
            else:
                vols.append(f"{key}: {vol} at {where}")
    return DestroyTarget(
        stack=stack,
        vmid=c.vmid,
        node=c.node,
        hostname=c.config.get("hostname", ""),
        status=c.status,
        volumes=tuple(vols),
        bind_mounts=tuple(binds),
        protected=c.config.get("protection") == "1",
    )


def destroy_plan(desired: DesiredState, client: PveClient) -> DestroyPlan:
    observed = observe(client, desired)
    targets: list[DestroyTarget] = []
    refused: list[str] = []
    absent: list[str] = []
    for spec in desired.stacks:
        obs = observed.stack(spec.name)
        if obs.foreign is not None:
            f = obs.foreign
            refused.append(
                f"{spec.name}: {f.type}/{f.vmid} on {f.node} does not carry this stack's mark; "
                "pvestack never deletes it"
            )
        elif obs.container is None:
            absent.append(spec.name)
        else:
            targets.append(_target(spec.name, obs.container))
    return DestroyPlan(tuple(targets), tuple(refused), tuple(absent))


@dataclass(frozen=True)
class DestroyResult:
    done: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()  # guests the destroy plan refused (not ours)

    @property
    def exit_code(self) -> int:
        """1 when anything failed or a guest was refused (as plan and apply do)."""
        return 1 if self.failed or self.refused else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": 1,
            "exit_code": self.exit_code,
            "destroyed": list(self.done),
            "failed": list(self.failed),
            "skipped": list(self.skipped),
            "refused": list(self.refused),
        }


def _destroy_action(t: DestroyTarget) -> Action:
    return Action(
        id=f"{t.stack}:ct:destroy",
        kind=ActionKind.DESTROY,
        change=Change.DELETE,
        target=t.target,
        actor=Actor.API,
        reason="destroy",
        precondition=Owned(t.stack),
        stack=t.stack,
    )


def destroy(
    dp: DestroyPlan,
    client: PveClient,
    *,
    on_progress: Callable[[str], None] | None = None,
) -> DestroyResult:
    checker = PreconditionChecker(client)
    done: list[str] = []
    failed: list[str] = []
    skipped: list[str] = []
    say = on_progress or (lambda _m: None)
    for t in dp.targets:
        label = f"{t.target} ({t.stack})"
        if t.protected:
            skipped.append(
                f"{label}: protection=1 is set, PVE refuses to delete it "
                f"(pct set {t.vmid} -protection 0, or protection = false in the stack file "
                "and apply, if you really mean to)"
            )
            continue
        try:
            checker.check(_destroy_action(t))
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
    return DestroyResult(tuple(done), tuple(failed), tuple(skipped), dp.refused)
