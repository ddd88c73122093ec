"""Facts for observe: what a stack's guest is read for (``fact_query``, one command per
guest: ``guest_fact_commands``), and the reader that runs them as root on the node."""

from __future__ import annotations

from collections.abc import Sequence

from pvestack._commands import Command, cmd
from pvestack._guestfacts import (
    FACTS,
    FactQuery,
    GuestFacts,
    ManagedRead,
    YamlRead,
    parse_guest_facts,
    read_args,
)
from pvestack._model import AppFile, HostPathFact, StackSpec
from pvestack._steps.guest import (
    managed_keys,
    pct_sh,
    project_name,
    yaml_paths,
)
from pvestack.executors import RootTransport
from pvestack.recipes import yaml_merge_program


def yaml_read(f: AppFile) -> YamlRead:
    """How ``FACTS`` reads a merged YAML file: its managed key paths, ``recipes``' program."""
    return YamlRead(f.path, yaml_paths(f), yaml_merge_program())


def fact_query(stack: StackSpec) -> FactQuery | None:
    """What observe reads in the stack's guest (``pvestack._guestfacts``); None: no app."""
    app = stack.app
    if app is None:
        return None
    return FactQuery(
        project=project_name(stack),
        images=tuple(i.ref for i in app.images),
        files=tuple(f.path for f in app.files if not (f.merge_env or f.merge_yaml)),
        managed=tuple(ManagedRead(f.path, managed_keys(f)) for f in app.files if f.merge_env),
        yaml=tuple(yaml_read(f) for f in app.files if f.merge_yaml),
    )


def guest_fact_commands(stack: StackSpec, vmid: int) -> tuple[Command, ...]:
    """Read-only commands (run as root on the node) whose output ``parse_guest_facts`` reads."""
    q = fact_query(stack)
    return () if q is None else (pct_sh(vmid, FACTS, *read_args(q)),)


class TransportFactReader:
    """Read-only commands run as root through the transport."""

    def __init__(self, transport: RootTransport) -> None:
        self.transport = transport

    def host_paths(self, paths: Sequence[str]) -> tuple[HostPathFact, ...]:
        out = []
        for p in paths:
            r = self.transport.capture(cmd("stat", "-c", "%u %g %a", "--", p))
            if r.returncode != 0:
                out.append(HostPathFact(path=p, exists=False))
                continue
            uid, gid, mode = r.stdout.split()
            out.append(HostPathFact(path=p, exists=True, uid=int(uid), gid=int(gid), mode=mode))
        return tuple(out)

    def guest_facts(self, stack: StackSpec, vmid: int) -> GuestFacts | None:
        """The stack's one read-only fact command (``guest_fact_commands``), run as root."""
        commands = guest_fact_commands(stack, vmid)
        outputs = [self.transport.capture(c).stdout for c in commands]
        return parse_guest_facts(outputs)
