"""The guest route ``ssh``: guest steps and guest facts go straight into each container
(``pvestack.executors._guest_ssh``), never through the node.

``GuestRouter`` is the engine's ``GuestTransport`` for ``guest.via = "ssh"``: it reads
the CT's vmid from a guest step (``pct exec VMID --``/``pct push VMID``, the form every
guest step is built in) and runs it over that CT's own SSH transport, opened on first
use (one per container: by then the CT runs and the host-key record exists, or the
opening says which root steps to run). A node command (verify's host-side probes) goes
to the root transport when there is one, else it answers "no root transport".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pvestack._client import PveClient
from pvestack._commands import Command, Step
from pvestack._engine._facts import guest_fact_commands
from pvestack._errors import GuestKeyRefused
from pvestack._guest_settings import GuestSettings
from pvestack._guestfacts import GuestFacts, parse_guest_facts
from pvestack._model import GuestAccess, HostPathFact, ObservedState, StackSpec
from pvestack._pvevalues import split_props
from pvestack._steps.guest_access import parse_hostkey_record
from pvestack.executors import CommandOutput, GuestTransport, RootTransport

NO_ROOT = "no root transport on the node (this check runs a node command)"


@dataclass(frozen=True)
class GuestPlace:
    """Where the guest route finds one stack's container."""

    stack: str
    node: str
    vmid: int
    ipv4: str  # the stack file's setting: a static address/CIDR, or dhcp


Opener = Callable[[GuestPlace], GuestTransport]


def vmid_of(command: Command) -> int | None:
    """The CT of a guest command (``pct exec VMID ...``/``pct push VMID ...``), else None."""
    a = command.argv
    if len(a) >= 3 and a[0] == "pct" and a[1] in ("exec", "push") and a[2].isdigit():
        return int(a[2])
    return None


def ipv4_of(spec: StackSpec) -> str:
    net0 = str(spec.container.api_config.get("net0", ""))
    return split_props(net0).get("ip", "dhcp") if net0 else "dhcp"


def places(desired: Sequence[StackSpec], observed: ObservedState) -> dict[int, GuestPlace]:
    out: dict[int, GuestPlace] = {}
    for spec in desired:
        o = observed.stack(spec.name)
        if o.vmid is None:
            continue
        node = o.container.node if o.container is not None else spec.container.node
        out[o.vmid] = GuestPlace(spec.name, node, o.vmid, ipv4_of(spec))
    return out


class GuestRouter:
    """``GuestTransport`` (and ``capture``) for ``guest.via = "ssh"``."""

    def __init__(self, opener: Opener, root: RootTransport | None = None) -> None:
        self._opener = opener
        self._root = root
        self._places: dict[int, GuestPlace] = {}
        self._open: dict[int, GuestTransport] = {}
        self.refused: set[str] = set()  # stacks whose CT refused the key

    def learn(self, found: Mapping[int, GuestPlace]) -> None:
        self._places.update(found)

    def knows(self, vmid: int) -> bool:
        return vmid in self._places

    def place(self, vmid: int) -> GuestPlace:
        if vmid not in self._places:
            raise KeyError(f"CT {vmid} is not a container of this stack file")
        return self._places[vmid]

    def transport(self, vmid: int) -> GuestTransport:
        t = self._open.get(vmid)
        if t is None:
            p = self.place(vmid)
            try:
                t = self._opener(p)
            except GuestKeyRefused:
                self.refused.add(p.stack)
                raise
            self._open[vmid] = t
        return t

    def run_step(self, step: Step, *, on_output: Callable[[str], None] | None = None) -> bool:
        vmid = vmid_of(step.commands[0]) if step.commands else None
        if vmid is None:
            raise ValueError(f"step {step.id} is not a guest step (no pct exec/push VMID)")
        return self.transport(vmid).run_step(step, on_output=on_output)

    def capture(self, command: Command) -> CommandOutput:
        vmid = vmid_of(command)
        if vmid is not None:
            t = self.transport(vmid)
            capture = getattr(t, "capture", None)
            if capture is not None:
                out: CommandOutput = capture(command)
                return out
        if self._root is not None:
            return self._root.capture(command)
        return CommandOutput(1, "", NO_ROOT)

    def close(self) -> None:
        for t in self._open.values():
            close = getattr(t, "close", None)
            if close is not None:
                close()
        self._open.clear()


def ssh_opener(
    settings: GuestSettings, client: PveClient, env: Mapping[str, str] | None = None
) -> Opener:
    def open_one(p: GuestPlace) -> GuestTransport:
        from pvestack.executors._guest_ssh import open_guest_transport  # noqa: PLC0415

        return open_guest_transport(
            settings, client, stack=p.stack, node=p.node, vmid=p.vmid, ipv4=p.ipv4, env=env
        )

    return open_one


class GuestFactReader:
    """Observe's ``FactReader`` for the SSH route: host paths through the root transport
    (none without one), guest facts over the CT's own SSH once its host key is recorded
    (before that: none, so the plan keeps the guarded guest steps)."""

    def __init__(self, router: GuestRouter, root: RootTransport | None, client: PveClient):
        self.router = router
        self.root = root
        self.client = client

    def host_paths(self, paths: Sequence[str]) -> tuple[HostPathFact, ...]:
        if self.root is None:
            return ()
        from pvestack._engine._facts import TransportFactReader  # noqa: PLC0415

        return TransportFactReader(self.root).host_paths(paths)

    def guest_facts(self, stack: StackSpec, vmid: int) -> GuestFacts | None:
        if not self.router.knows(vmid):
            self.router.learn(
                {vmid: GuestPlace(stack.name, stack.container.node, vmid, ipv4_of(stack))}
            )
        p = self.router.place(vmid)
        cfg = self.client.get(f"/nodes/{p.node}/lxc/{vmid}/config") or {}
        if parse_hostkey_record(str(cfg.get("description", ""))) is None:
            return None
        outputs = [self.router.capture(c).stdout for c in guest_fact_commands(stack, vmid)]
        return parse_guest_facts(outputs)


def guest_access_map(
    stacks: Sequence[StackSpec],
    via: str,
    public_keys: Mapping[str, str | None],
    refused: set[str] | frozenset[str] = frozenset(),
) -> dict[str, GuestAccess]:
    return {s.name: GuestAccess(via, public_keys.get(s.name), s.name in refused) for s in stacks}
