"""Facts for observe that only root on the node can read, through the root transport."""

from __future__ import annotations

from collections.abc import Sequence

from pvestack._commands import cmd
from pvestack._guestfacts import GuestFacts, parse_guest_facts
from pvestack._model import HostPathFact, StackSpec
from pvestack._steps.guest import guest_fact_commands
from pvestack.executors import RootTransport


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
        """The recipe's read-only fact commands (``pvestack._steps.guest``), run as root."""
        commands = guest_fact_commands(stack, vmid)
        outputs = [self.transport.capture(c).stdout for c in commands]
        return parse_guest_facts(outputs)
