"""Desired vs observed -> an ordered ``Plan`` of ``Action``s, each tagged with its actor.

Routing follows PVE's real permission rules (pve-container
``check_ct_modify_config_perm``): an API token is never root@pam, so

* token (``api``): template download, create with the token-safe keys
  (``features: nesting=1`` alone included), config updates of those keys,
  volume mount points, resize, start/reboot;
* ``root``: any other feature flag (keyctl, fuse, mknod, mount), bind mounts,
  the id map (``lxc.idmap`` is not an API key), host directories and their
  ownership, and the reboot that makes those take effect on a running CT;
* ``guest``: inside the container (``pvestack._steps.guest``).

``unprivileged`` cannot change after creation: a difference is reported as a
``replace`` action that is never carried out. Guests without the pvestack mark
are refused unless ``adopt``.

Every action carries a typed ``Target``, an ``ActionKind`` and a typed
``Precondition`` (``pvestack._model``); display strings are made from them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pvestack._model import DesiredState, GuestAccess, ObservedState, Plan, StackSpec
from pvestack._plan._stack import StackPlanner
from pvestack._plan._upgrade import (
    UpgradeInputs,
    not_in_backup,
    snapshot_blockers,
)
from pvestack._plan._values import TOKEN_FEATURES, same_value


def plan(
    desired: DesiredState,
    observed: ObservedState,
    *,
    adopt: bool = False,
    guest: Mapping[str, GuestAccess] | None = None,
    upgrade: UpgradeInputs | None = None,
) -> Plan:
    """``guest``: each stack's guest route (absent: ``pct``, no guest-access steps);
    ``upgrade``: the node's storage types and ``--backup`` (``_plan._upgrade``)."""
    actions, refused, warnings = [], [], []
    for spec in _ordered(desired.stacks):
        p = StackPlanner(
            spec,
            observed.stack(spec.name),
            adopt=adopt,
            guest=(guest or {}).get(spec.name),
            upgrade=upgrade,
        )
        p.run()
        actions.extend(p.actions)
        refused.extend(p.refused)
        warnings.extend(p.warnings)
    return Plan(actions=tuple(actions), refused=tuple(refused), warnings=tuple(warnings))


def _ordered(stacks: Sequence[StackSpec]) -> list[StackSpec]:
    """Stacks in dependency order (``depends_on`` first), else file order."""
    done: list[StackSpec] = []
    names = {s.name: s for s in stacks}
    seen: set[str] = set()

    def visit(s: StackSpec, path: tuple[str, ...]) -> None:
        if s.name in seen or s.name in path:
            return
        for d in s.depends_on:
            if d in names:
                visit(names[d], (*path, s.name))
        seen.add(s.name)
        done.append(s)

    for s in stacks:
        visit(s, ())
    return done


__all__ = [
    "TOKEN_FEATURES",
    "UpgradeInputs",
    "not_in_backup",
    "plan",
    "same_value",
    "snapshot_blockers",
]
