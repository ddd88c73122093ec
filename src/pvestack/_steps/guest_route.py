"""One guest command, two routes: through the node (``pct``) or straight into the container.

The guest steps of ``pvestack._steps.guest`` are built for the ``pct`` route: each
``Command`` is ``pct exec VMID -- ARGV...`` (or ``pct push VMID SRC DST`` for a file from
the node's disk). The in-container command is the data; the ``pct`` wrapper is only how
the root transport reaches it. ``in_container`` takes the wrapper off, giving what the
guest transport (SSH into the container as its root) runs; ``via_pct`` puts it back,
so both routes run exactly the same in-container argv and stdin:

    via_pct(in_container(c, vmid), vmid) == c       for every guest command c

``GuestRun``: run ``argv`` in the container, ``stdin`` as the payload (secrets only there).
``GuestPush``: copy the local file ``source`` to ``dest`` in the container. For the pct
route ``source`` is a path on the node; for the guest route a path on the operator's
machine (the tarball is streamed over the SSH channel; nothing has to be on the node).
"""

from __future__ import annotations

from dataclasses import dataclass

from pvestack._commands import Command, Payload, Step, cmd


@dataclass(frozen=True)
class GuestRun:
    argv: tuple[str, ...]
    stdin: Payload | None = None


@dataclass(frozen=True)
class GuestPush:
    source: str
    dest: str


GuestOp = GuestRun | GuestPush


def in_container(command: Command, vmid: int) -> GuestOp:
    """The in-container operation of a ``pct exec``/``pct push`` command for ``vmid``.

    Raises ``ValueError`` for anything else (a guest step is never a plain node command).
    """
    a = command.argv
    if len(a) >= 5 and a[:4] == ("pct", "exec", str(vmid), "--"):
        return GuestRun(a[4:], command.stdin)
    if len(a) == 5 and a[:3] == ("pct", "push", str(vmid)) and command.stdin is None:
        return GuestPush(a[3], a[4])
    raise ValueError(f"not a guest command of CT {vmid}: {command.line[:120]}")


def via_pct(op: GuestOp, vmid: int) -> Command:
    """``op`` as the root transport runs it (``pct exec``/``pct push``)."""
    if isinstance(op, GuestPush):
        return cmd("pct", "push", str(vmid), op.source, op.dest)
    return cmd("pct", "exec", str(vmid), "--", *op.argv, stdin=op.stdin)


@dataclass(frozen=True)
class GuestStep:
    """A ``Step`` seen from inside the container."""

    id: str
    description: str
    ops: tuple[GuestOp, ...]
    guard: GuestRun | None = None


def guest_step(step: Step, vmid: int) -> GuestStep:
    """``step`` (built for the pct route) as in-container operations."""
    guard = None
    if step.guard is not None:
        g = in_container(step.guard, vmid)
        if not isinstance(g, GuestRun):
            raise ValueError(f"step {step.id}: a guard cannot be a file copy")
        guard = g
    return GuestStep(
        step.id, step.description, tuple(in_container(c, vmid) for c in step.commands), guard
    )
