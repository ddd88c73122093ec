"""Read the live state with as few API calls as possible, in a time independent of the
cluster's size.

A stack that names its node and vmid costs two calls (three with a custom id map: its
raw ``lxc.idmap`` lines are only in ``GET .../config``): ``GET /nodes/{node}/lxc/{vmid}/pending``
(the config, its pending changes, the description and tags that carry our mark; needs
``VM.Audit`` on ``/vms/{vmid}``, as ``status/current``) and ``GET .../status/current``
(the run state). ``/cluster/resources`` (every guest of the cluster) is read only for
``vmid = "auto"``, or when the CT is not on its node (PVE answers 500 "Configuration file
... does not exist", also when a VM holds the vmid). A CT that does not exist yet costs the
template storage's content (once per node and storage); ``/cluster/nextid`` only for
``"auto"``.

A config with a ``lock`` (``create`` after a lost create, or a task of ours) is busy: the
vmid's running tasks (``GET /nodes/{node}/tasks?vmid=N&source=active``) are waited for,
then the guest is read again; a lock with no task running is an error saying what to run
(``pct unlock``), never a foreign guest.

Facts the API cannot give (host directories, files in the guest) come from an optional
``FactReader`` (the engine's: root transport or the guest route), the stacks read
concurrently (one thread each; each reader call opens its own channel).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Protocol

from pvestack._appliances import resolve_appliance
from pvestack._client import PveClient
from pvestack._errors import (
    GuestLockedError,
    PveError,
    PveNotFoundError,
    PvePermissionError,
    PveTaskError,
    WaitTimeout,
)
from pvestack._guestfacts import GuestFacts
from pvestack._model import (
    MARK_TAG,
    DesiredState,
    GuestSummary,
    HostPathFact,
    ObservedContainer,
    ObservedStack,
    ObservedState,
    StackSpec,
    TemplateSpec,
    mark_owner,
)
from pvestack._pvevalues import parse_tags

log = logging.getLogger(__name__)

MAX_FACT_THREADS = 8
LOCK_WAIT = 600.0  # seconds a busy guest's tasks are waited for, in all
LOCK_ROUNDS = 3  # re-reads of a busy guest


class FactReader(Protocol):
    """Reads what only root on the node (or the guest) can see; safe from several threads."""

    def host_paths(self, paths: Sequence[str]) -> tuple[HostPathFact, ...]: ...

    def guest_facts(self, stack: StackSpec, vmid: int) -> GuestFacts | None:
        """What the app's recipe needs to see inside the running guest (files, images,
        services), typed (``pvestack._guestfacts``); None: not observed."""
        ...


def guest_summaries(rows: Any) -> tuple[GuestSummary, ...]:
    out = []
    for r in rows or []:
        if not isinstance(r, dict) or r.get("type") not in ("lxc", "qemu") or "vmid" not in r:
            continue
        out.append(
            GuestSummary(
                vmid=int(r["vmid"]),
                node=str(r.get("node", "")),
                type=str(r["type"]),
                name=str(r.get("name", "")),
                status=str(r.get("status", "")),
                tags=parse_tags(r.get("tags")),
            )
        )
    return tuple(sorted(out, key=lambda g: g.vmid))


@dataclass(frozen=True)
class _CtRead:
    """One CT read through ``pending`` + ``status/current``."""

    summary: GuestSummary
    config: Mapping[str, str]  # with pending values, as GET .../config gives it
    pending: tuple[str, ...]  # keys with a pending value or delete


def config_from_pending(rows: Any) -> tuple[dict[str, str], tuple[str, ...]]:
    """``GET .../pending`` rows -> (the config as ``GET .../config`` shows it: pending
    values win, pending deletes are gone; the keys that are pending)."""
    config: dict[str, str] = {}
    pending: list[str] = []
    for r in rows or []:
        if not isinstance(r, dict) or "key" not in r:
            continue
        key = str(r["key"])
        if "pending" in r or r.get("delete"):
            pending.append(key)
        if "pending" in r and r["pending"] is not None:
            config[key] = str(r["pending"])
        elif r.get("delete"):
            continue
        elif "value" in r and r["value"] is not None:
            config[key] = str(r["value"])
    return config, tuple(sorted(pending))


def _read_ct(client: PveClient, node: str, vmid: int, *, raw_lxc: bool = False) -> _CtRead | None:
    """The CT ``vmid`` on ``node``, or None when PVE has no such CT there.

    ``raw_lxc``: also ``GET .../config`` for the raw ``lxc.*`` lines (a custom id map):
    PVE's ``pending`` leaves them out (``config_with_pending_array`` skips list values).
    """
    base = f"/nodes/{node}/lxc/{vmid}"
    try:
        rows = client.get(f"{base}/pending")
        status = client.get(f"{base}/status/current")
        full = client.get(f"{base}/config") if raw_lxc else None
    except (PveNotFoundError, PvePermissionError):
        # not there (or a VM at that vmid, or not visible to the token): ask the cluster
        return None
    config, pending = config_from_pending(rows)
    if isinstance(full, dict) and full.get("lxc") is not None:
        config["lxc"] = str(full["lxc"])
    st = status if isinstance(status, dict) else {}
    summary = GuestSummary(
        vmid=vmid,
        node=node,
        type="lxc",
        name=config.get("hostname", str(st.get("name", ""))),
        status=str(st.get("status", "")),
        tags=parse_tags(config.get("tags")),
    )
    return _CtRead(summary, config, pending)


class _Session:
    """One observe run: the cluster's guest list read at most once, on demand."""

    def __init__(self, client: PveClient, lock_wait: float) -> None:
        self.client = client
        self.lock_wait = lock_wait
        self._guests: tuple[GuestSummary, ...] | None = None
        self.reserved: set[int] = set()
        self.content: dict[tuple[str, str], frozenset[str]] = {}
        self.seen: dict[int, GuestSummary] = {}
        self.aplinfo: dict[str, Any] = {}

    def guests(self) -> tuple[GuestSummary, ...]:
        if self._guests is None:
            self._guests = guest_summaries(self.client.get("/cluster/resources", type="vm"))
        return self._guests

    def find(self, spec: StackSpec) -> tuple[GuestSummary | None, _CtRead | None]:
        """The guest this stack resolves to: direct for a named vmid, else by the list."""
        ct = spec.container
        if ct.vmid is not None:
            direct = _read_ct(self.client, ct.node, ct.vmid, raw_lxc=ct.idmap.custom)
            if direct is not None:
                return direct.summary, direct
            by_vmid = {g.vmid: g for g in self.guests()}
            summary = by_vmid.get(ct.vmid)
        else:
            # "next free id": our container is the marked one with this stack's hostname
            summary = next(
                (
                    g
                    for g in self.guests()
                    if g.type == "lxc" and MARK_TAG in g.tags and g.name == ct.hostname
                ),
                None,
            )
        if summary is None or summary.type != "lxc":
            return summary, None
        read = _read_ct(self.client, summary.node, summary.vmid, raw_lxc=ct.idmap.custom)
        return (read.summary if read else summary), read

    def template(self, spec: StackSpec) -> tuple[TemplateSpec | None, bool]:
        """(the appliance resolved through aplinfo, or None; the template is on its storage)."""
        t = spec.container.template
        resolved: TemplateSpec | None = None
        if t.appliance:
            node = spec.container.node
            if node not in self.aplinfo:  # the node's appliance index, read once
                self.aplinfo[node] = self.client.get(f"/nodes/{node}/aplinfo")
            resolved = resolve_appliance(self.aplinfo[node], t)
            t = resolved
        key = (spec.container.node, t.storage)
        if key not in self.content:
            try:
                rows = self.client.get(
                    f"/nodes/{key[0]}/storage/{t.storage}/content", content="vztmpl"
                )
            except PveError:
                rows = []
            self.content[key] = frozenset(
                str(r.get("volid")) for r in rows or [] if isinstance(r, dict)
            )
        return resolved, t.volid in self.content[key]

    def next_free(self) -> int:
        vmid = int(self.client.get("/cluster/nextid"))
        while vmid in self.reserved:  # two "auto" stacks in one file
            vmid += 1
        return vmid


def observe(
    client: PveClient,
    desired: DesiredState,
    *,
    reader: FactReader | None = None,
    lock_wait: float = LOCK_WAIT,
) -> ObservedState:
    start_calls = client.calls
    session = _Session(client, lock_wait)
    stacks: list[ObservedStack] = []
    for spec in desired.stacks:
        obs = _observe_stack(session, spec)
        if obs.vmid is not None:
            session.reserved.add(obs.vmid)
        stacks.append(obs)
    if reader is not None:
        stacks = _read_all_facts(reader, desired.stacks, stacks)
    guests = session._guests if session._guests is not None else ()
    all_guests = {g.vmid: g for g in guests} | session.seen
    return ObservedState(
        nodes=tuple(sorted({g.node for g in all_guests.values() if g.node})),
        guests=tuple(sorted(all_guests.values(), key=lambda g: g.vmid)),
        stacks=tuple(stacks),
        api_calls=client.calls - start_calls,
    )


def _observe_stack(session: _Session, spec: StackSpec) -> ObservedStack:
    summary, read = session.find(spec)
    if read is not None and read.config.get("lock"):
        summary, read = _wait_unlocked(session, spec, read)
    if summary is not None:
        session.seen[summary.vmid] = summary
    if read is None:
        foreign = summary  # a VM at that vmid (or a CT the token cannot read)
        if summary is not None:
            return ObservedStack(spec.name, summary.vmid, None, True, foreign=foreign)
        vmid = spec.container.vmid if spec.container.vmid is not None else session.next_free()
        resolved, present = session.template(spec)
        return ObservedStack(spec.name, vmid, None, present, template=resolved)
    owner = mark_owner(read.config)
    running = read.summary.status == "running"
    container = ObservedContainer(
        vmid=read.summary.vmid,
        node=read.summary.node,
        status=read.summary.status,
        config=dict(read.config),
        owner_stack=owner,
        pending=read.pending if running and owner == spec.name else (),
    )
    foreign = None if owner == spec.name else read.summary
    # the template only matters for creating the container: not read when it exists
    return ObservedStack(spec.name, read.summary.vmid, container, True, foreign=foreign)


def _wait_unlocked(
    session: _Session, spec: StackSpec, read: _CtRead
) -> tuple[GuestSummary | None, _CtRead | None]:
    """A locked config: wait for the vmid's running tasks, then read it again."""
    client = session.client
    summary: GuestSummary | None = read.summary
    current: _CtRead | None = read
    for _ in range(LOCK_ROUNDS):
        if current is None or not current.config.get("lock"):
            return summary, current
        lock = current.config["lock"]
        owner = mark_owner(current.config)
        if lock != "create" and owner != spec.name:
            return summary, current  # someone else's guest, busy: refused as foreign anyway
        node, vmid = current.summary.node, current.summary.vmid
        tasks = client.get(f"/nodes/{node}/tasks", vmid=vmid, source="active")
        upids = [
            str(t["upid"])
            for t in tasks or []
            if isinstance(t, dict) and str(t.get("upid", "")).startswith("UPID:")
        ]
        if not upids:
            raise _locked_error(spec, node, vmid, lock)
        for upid in upids:
            log.info("lxc/%s is locked (%s): waiting for task %s", vmid, lock, upid)
            try:
                client.wait_task(upid, timeout=session.lock_wait)
            except PveTaskError:
                pass  # its failure is not ours to report: the guest is read again
            except WaitTimeout as e:
                raise GuestLockedError(
                    f"{spec.name}: lxc/{vmid} on {node} is locked ({lock}) by task {upid}, "
                    f"still running after {session.lock_wait:.0f}s",
                    hint="wait for the task to end (or stop it in the GUI), then re-run",
                ) from e
        summary, current = session.find(spec)
    if current is not None and current.config.get("lock"):
        c = current.summary
        raise _locked_error(spec, c.node, c.vmid, current.config["lock"])
    return summary, current


def _locked_error(spec: StackSpec, node: str, vmid: int, lock: str) -> GuestLockedError:
    what = (
        "a create that did not finish (its task is gone)"
        if lock == "create"
        else f"a {lock} that did not finish (no task of it runs)"
    )
    then = (
        f"; with only the lock left in its config (pct config {vmid}), remove the half-made "
        f"CT with pct destroy {vmid}, then re-run apply"
        if lock == "create"
        else ", then re-run"
    )
    return GuestLockedError(
        f"{spec.name}: lxc/{vmid} on {node} is locked ({lock}) and no task of it runs: {what}",
        hint=f"on the node, as root: pct unlock {vmid}{then}",
    )


def _read_all_facts(
    reader: FactReader, specs: tuple[StackSpec, ...], stacks: list[ObservedStack]
) -> list[ObservedStack]:
    """Each stack's facts (host paths, the running guest's facts), the stacks concurrently."""
    out = list(stacks)
    if not specs:
        return out
    with ThreadPoolExecutor(max_workers=min(MAX_FACT_THREADS, len(specs))) as pool:
        for i, obs in enumerate(pool.map(_read_facts, [reader] * len(specs), specs, out)):
            out[i] = obs
    return out


def _read_facts(reader: FactReader, spec: StackSpec, obs: ObservedStack) -> ObservedStack:
    paths = [m.host_path for m in spec.container.bind_mounts]
    facts = reader.host_paths(paths) if paths else ()
    guest_facts: GuestFacts | None = None
    c = obs.container
    if spec.app is not None and c is not None and c.status == "running" and c.marked:
        guest_facts = reader.guest_facts(spec, c.vmid)
    return replace(obs, host_paths=tuple(facts), guest_facts=guest_facts)
