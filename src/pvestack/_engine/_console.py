"""The console hand-off's engine side: which actions a printed script carries, the
script itself, and the poll that sees the script's effects through the API."""

from __future__ import annotations

from collections.abc import Callable

from pvestack._client import PveClient
from pvestack._commands import Step
from pvestack._errors import HostKeyError
from pvestack._model import Action, ActionKind, Actor, Plan, TargetKind
from pvestack._pvevalues import mount_props
from pvestack._steps.guest_access import parse_hostkey_record
from pvestack.executors._console import SUCCESS_MARKER, console_script

CONSOLE_SUCCESS_MARKER = SUCCESS_MARKER


def console_actions(
    p: Plan, *, root_only: bool = False
) -> tuple[tuple[Action, ...], tuple[Action, ...]]:
    """The actions a printed console script can carry, and those it cannot.

    Root actions always (they never hold a secret). ``root_only`` (``guest.via =
    "ssh"``): no guest action at all, they go over the CT's own SSH. Else guest
    actions in order until the first one whose steps carry a secret (a printed script
    never holds one): that one and the rest of its stack's guest actions need a
    transport.
    """
    script: list[Action] = []
    left: list[Action] = []
    stopped: set[str] = set()
    for a in p.actions:
        if a.actor is Actor.API:
            continue
        secret = any(s.has_secret for s in a.steps)
        if a.actor is Actor.GUEST and (root_only or a.stack in stopped or secret):
            stopped.add(a.stack)
            left.append(a)
            continue
        script.append(a)
    return tuple(script), tuple(left)


def root_steps(p: Plan, *, root_only: bool = False) -> tuple[Step, ...]:
    """The steps of the console script, in order."""
    return tuple(s for a in console_actions(p, root_only=root_only)[0] for s in a.steps)


def render_console_script(p: Plan, *, source: str, root_only: bool = False) -> str | None:
    """The script for ``p``'s root (and, unless ``root_only``, secret-free guest) steps;
    None when it has none."""
    steps = root_steps(p, root_only=root_only)
    if not steps:
        return None
    return console_script(
        steps, title=f"pvestack root steps for {source}", success_marker=SUCCESS_MARKER
    )


def root_effects_missing(client: PveClient, p: Plan) -> Callable[[], list[str]]:
    """A poll for the console hand-off: what the plan's root steps should have changed
    that the API does not show yet (an empty list: all there).

    It reads each affected container's config and status (2 calls per container).
    Host directories and probes are invisible to the API and are not listed.
    """
    wanted: dict[tuple[str, int], dict[str, str]] = {}
    running: set[tuple[str, int]] = set()
    record: set[tuple[str, int]] = set()  # guest access: the host-key record must show
    for a in p.actions:
        t = a.target
        if a.actor is not Actor.ROOT or t.kind is not TargetKind.LXC or t.vmid is None:
            continue
        key = (t.node, t.vmid)
        keys = wanted.setdefault(key, {})
        if a.kind is ActionKind.ROOT_SET:
            keys.update({k: v for k, v in a.after.items() if v is not None})
        elif a.kind is ActionKind.REBOOT:
            running.add(key)
        elif a.kind is ActionKind.GUEST_ACCESS:
            record.add(key)

    def missing() -> list[str]:
        out: list[str] = []
        for (node, vmid), keys in wanted.items():
            cfg = client.get(f"/nodes/{node}/lxc/{vmid}/config")
            cfg = {str(k): str(v) for k, v in (cfg or {}).items()}
            for k, v in keys.items():
                if mount_props(cfg.get(k, "")) != mount_props(v):
                    out.append(f"lxc/{vmid}: {k} is {cfg.get(k)!r}, want {v!r}")
            if (node, vmid) in record and not _has_record(cfg.get("description", "")):
                out.append(f"lxc/{vmid}: no pvestack-hostkey record in the description yet")
            if (node, vmid) in running:
                st = client.get(f"/nodes/{node}/lxc/{vmid}/status/current")
                if not isinstance(st, dict) or st.get("status") != "running":
                    out.append(f"lxc/{vmid}: not running")
        return out

    return missing


def _has_record(description: str) -> bool:
    try:
        return parse_hostkey_record(description) is not None
    except HostKeyError:
        return False
