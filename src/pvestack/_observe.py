"""Read the live state with as few API calls as possible.

One ``GET /cluster/resources?type=vm`` for the whole cluster; then, per stack,
its container's config and, when it runs, its pending changes (what waits for the
next start); or, when it does not exist yet, the template storage's content (once
per node and storage). ``/cluster/nextid`` only when a
stack asks for the next free id and has no container yet.

Facts the API cannot give (host directories, files in the guest) come from an
optional ``FactReader`` the engine wires to the root transport; this module
never imports an executor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

from pvestack._appliances import resolve_appliance
from pvestack._client import PveClient
from pvestack._errors import PveError
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


class FactReader(Protocol):
    """Reads what only root on the node (or the guest) can see."""

    def host_paths(self, paths: Sequence[str]) -> tuple[HostPathFact, ...]: ...

    def guest_facts(self, stack: StackSpec, vmid: int) -> Mapping[str, str]:
        """What the app's recipe needs to see inside the running guest (files, images,
        services), as ``key -> value`` facts."""
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


def _strings(cfg: Any) -> dict[str, str]:
    if not isinstance(cfg, dict):
        return {}
    return {str(k): str(v) for k, v in cfg.items() if v is not None}


def observe(
    client: PveClient,
    desired: DesiredState,
    *,
    reader: FactReader | None = None,
) -> ObservedState:
    start_calls = client.calls
    guests = guest_summaries(client.get("/cluster/resources", type="vm"))
    by_vmid = {g.vmid: g for g in guests}
    nodes = tuple(sorted({g.node for g in guests if g.node}))
    content_cache: dict[tuple[str, str], frozenset[str]] = {}
    stacks: list[ObservedStack] = []
    reserved: set[int] = set()
    aplinfo: dict[str, Any] = {}  # node -> its appliance index, read once when needed
    for spec in desired.stacks:
        obs = _observe_stack(client, spec, guests, by_vmid, content_cache, reserved, aplinfo)
        if obs.vmid is not None:
            reserved.add(obs.vmid)
        if reader is not None:
            obs = _read_facts(reader, spec, obs)
        stacks.append(obs)
    return ObservedState(
        nodes=nodes,
        guests=guests,
        stacks=tuple(stacks),
        api_calls=client.calls - start_calls,
    )


def _observe_stack(  # noqa: PLR0917
    client: PveClient,
    spec: StackSpec,
    guests: tuple[GuestSummary, ...],
    by_vmid: Mapping[int, GuestSummary],
    content_cache: dict[tuple[str, str], frozenset[str]],
    reserved: set[int],
    aplinfo: dict[str, Any] | None = None,
) -> ObservedStack:
    ct = spec.container
    vmid = ct.vmid
    summary: GuestSummary | None = None
    if vmid is not None:
        summary = by_vmid.get(vmid)
    else:
        # "next free id": our container is the marked one with this stack's hostname
        for g in guests:
            if g.type == "lxc" and MARK_TAG in g.tags and g.name == ct.hostname:
                summary = g
                break
    container: ObservedContainer | None = None
    foreign: GuestSummary | None = None
    if summary is not None:
        if summary.type != "lxc":
            foreign = summary
        else:
            base = f"/nodes/{summary.node}/lxc/{summary.vmid}"
            cfg = _strings(client.get(f"{base}/config"))
            owner = mark_owner(cfg)
            pending: tuple[str, ...] = ()
            if summary.status == "running" and owner == spec.name:
                pending = _pending_keys(client.get(f"{base}/pending"))
            container = ObservedContainer(
                vmid=summary.vmid,
                node=summary.node,
                status=summary.status,
                config=cfg,
                owner_stack=owner,
                pending=pending,
            )
            if owner != spec.name:
                foreign = summary
        vmid = summary.vmid
    elif vmid is None:
        vmid = _next_free(client, reserved)
    t = ct.template
    if container is not None:
        # the template only matters for creating the container: not read when it exists
        return ObservedStack(
            name=spec.name,
            vmid=vmid,
            container=container,
            template_present=True,
            foreign=foreign,
        )
    resolved = _resolve_template(client, ct.node, t, aplinfo) if t.appliance else None
    t = resolved or t
    key = (ct.node, t.storage)
    if key not in content_cache:
        try:
            rows = client.get(f"/nodes/{ct.node}/storage/{t.storage}/content", content="vztmpl")
        except PveError:
            rows = []
        content_cache[key] = frozenset(
            str(r.get("volid")) for r in rows or [] if isinstance(r, dict)
        )
    return ObservedStack(
        name=spec.name,
        vmid=vmid,
        container=container,
        template_present=t.volid in content_cache[key],
        foreign=foreign,
        template=resolved,
    )


def _resolve_template(
    client: PveClient, node: str, t: TemplateSpec, cache: dict[str, Any] | None
) -> TemplateSpec:
    """An appliance name -> the node's newest indexed template (aplinfo read once per node)."""
    cache = {} if cache is None else cache
    if node not in cache:
        cache[node] = client.get(f"/nodes/{node}/aplinfo")
    return resolve_appliance(cache[node], t)


def _pending_keys(rows: Any) -> tuple[str, ...]:
    """Keys of ``GET .../pending`` with a pending value or delete (not yet in effect)."""
    out = []
    for r in rows or []:
        if isinstance(r, dict) and ("pending" in r or r.get("delete")):
            out.append(str(r.get("key")))
    return tuple(sorted(out))


def _next_free(client: PveClient, reserved: set[int]) -> int:
    vmid = int(client.get("/cluster/nextid"))
    while vmid in reserved:  # two "auto" stacks in one file
        vmid += 1
    return vmid


def _read_facts(reader: FactReader, spec: StackSpec, obs: ObservedStack) -> ObservedStack:
    paths = [m.host_path for m in spec.container.bind_mounts]
    facts = reader.host_paths(paths) if paths else ()
    guest_facts: Mapping[str, str] = {}
    c = obs.container
    if spec.app is not None and c is not None and c.status == "running" and c.marked:
        guest_facts = reader.guest_facts(spec, c.vmid)
    return replace(obs, host_paths=tuple(facts), guest_facts=dict(guest_facts))
