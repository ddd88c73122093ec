"""Day two through the PVE API: snapshots (take, list, roll back, prune), backups (vzdump,
list, PVE's restore command) and a status per stack.

Narrow on purpose: every function takes a ``PveClient``, a ``Guest`` and typed arguments and
returns a frozen value; nothing here prints or reads the stack file. The CLI and, later, the
engine's ``upgrade`` action (DEVELOPERS.md, "Upgrades") call these.

PVE facts this module relies on (pve-container / pve-guest-common / pve-manager):

- A CT snapshot needs every mount point on a snapshot-capable storage; a bind or device
  mount point (a host path) has none, so PVE refuses the whole snapshot with ``snapshot
  feature is not available``. pvestack checks first and says which mount point and why.
- ``protection=1`` guards removal (destroy, disk removal) only: PVE takes snapshots and
  rolls back a protected CT. The rollback result says so.
- Rollback stops the CT (hard stop) and starts it only with ``start=1``.
- vzdump leaves bind mount points out of the archive (``not a volume``); mode ``snapshot``
  on a storage that cannot snapshot falls back to ``suspend``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pvestack._client import PveClient
from pvestack._errors import (
    OwnershipError,
    PveError,
    PvestackError,
    PveTaskError,
    RollbackFailed,
    SnapshotUnavailable,
)
from pvestack._model import mark_owner
from pvestack._plan import snapshot_blockers as plan_snapshot_blockers
from pvestack._pvevalues import mount_points, parse_tags

SNAPSHOT_PREFIX = "pvestack-"
_OURS = re.compile(r"^pvestack-(\d{8}T\d{6}Z)$")
#: what an API token needs for day two, for `doctor`: (ACL path, privilege, what for)
PRIVILEGES = (
    ("/vms/{vmid}", "VM.Audit", "snapshots, status, interfaces"),
    ("/vms/{vmid}", "VM.Snapshot", "snapshot, prune (delete a snapshot)"),
    ("/vms/{vmid}", "VM.Snapshot.Rollback", "rollback (VM.Snapshot also allows it)"),
    ("/vms/{vmid}", "VM.Backup", "backup; seeing the CT's archives in backups"),
    ("/storage/{backup_storage}", "Datastore.AllocateSpace", "backup, backups"),
)
BackupMode = Literal["snapshot", "suspend", "stop"]
Compression = Literal["zstd", "gzip", "0"]


@dataclass(frozen=True)
class Guest:
    stack: str
    node: str
    vmid: int

    @property
    def base(self) -> str:
        return f"/nodes/{self.node}/lxc/{self.vmid}"


@dataclass(frozen=True)
class Snapshot:
    name: str
    taken: datetime | None
    description: str
    parent: str | None
    ours: bool  # named pvestack-<UTC timestamp>: pvestack may prune it


@dataclass(frozen=True)
class Snapshots:
    guest: Guest
    snapshots: tuple[Snapshot, ...]  # oldest first
    current_parent: str | None
    running: bool


@dataclass(frozen=True)
class RollbackResult:
    guest: Guest
    name: str
    started: bool
    protected: bool  # protection=1 did not stop it (PVE: protection guards removal only)


@dataclass(frozen=True)
class PruneResult:
    deleted: tuple[str, ...]
    kept: tuple[str, ...]
    foreign: tuple[str, ...]  # snapshots pvestack did not make: never touched


@dataclass(frozen=True)
class Backup:
    volid: str
    vmid: int
    size: int
    created: datetime
    notes: str
    protected: bool


@dataclass(frozen=True)
class BackupResult:
    backup: Backup
    excluded: tuple[str, ...]  # mount points the archive does not hold, and why
    mode_used: str


def snapshot_name(now: datetime) -> str:
    return SNAPSHOT_PREFIX + now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def find_guest(
    client: PveClient, stack: str, node: str, vmid: int | None, *, require_mark: bool = True
) -> Guest:
    """The stack's CT: the given vmid, or the CT carrying the stack's pvestack mark. With
    ``require_mark`` a given vmid must carry this stack's mark (pvestack never touches a
    guest it did not make)."""
    rows = client.get("/cluster/resources", type="vm")
    for r in rows or []:
        if not isinstance(r, dict) or r.get("type") != "lxc":
            continue
        if vmid is not None and int(r["vmid"]) == vmid:
            guest = Guest(stack, str(r.get("node", node)), vmid)
            if require_mark and _owner(client, guest) != stack:
                raise OwnershipError(
                    f"CT {vmid} does not carry the mark of stack {stack} (tag pvestack and "
                    f"the description line 'pvestack-stack: {stack}'): pvestack leaves it alone",
                    hint="check the vmid in the stack file; `pvestack apply --adopt` marks it",
                )
            return guest
        if vmid is None and "pvestack" in parse_tags(r.get("tags")):
            guest = Guest(stack, str(r["node"]), int(r["vmid"]))
            if _owner(client, guest) == stack:
                return guest
    where = f"CT {vmid}" if vmid is not None else f"a CT marked 'pvestack-stack: {stack}'"
    raise PvestackError(f"stack {stack}: {where} does not exist", hint="run `pvestack apply`")


def _owner(client: PveClient, guest: Guest) -> str | None:
    cfg = client.get(f"{guest.base}/config") or {}
    return mark_owner({k: str(v) for k, v in cfg.items()})


# ---------------------------------------------------------------- snapshots


def snapshot_blockers(client: PveClient, guest: Guest, config: Mapping[str, Any]) -> list[str]:
    """Why PVE would refuse a snapshot of this CT (empty: it can); the rule is the plan's
    (``pvestack._plan.snapshot_blockers``), the storage types are read here."""
    return plan_snapshot_blockers(config, storage_types(client, guest.node))


def storage_types(client: PveClient, node: str) -> dict[str, str]:
    """Storage id -> type, as the node lists them."""
    rows = client.get(f"/nodes/{node}/storage") or []
    return {str(s.get("storage")): str(s.get("type")) for s in rows if isinstance(s, dict)}


def take_snapshot(
    client: PveClient, guest: Guest, *, now: datetime, description: str = ""
) -> Snapshot:
    """A ``pvestack-<UTC timestamp>`` snapshot (checked first: no half-made attempt)."""
    config = client.get(f"{guest.base}/config") or {}
    blockers = snapshot_blockers(client, guest, config)
    if blockers:
        raise SnapshotUnavailable(guest.vmid, blockers)
    name = snapshot_name(now)
    params: dict[str, str | int] = {"snapname": name}
    if description:
        params["description"] = description
    upid = client.post(f"{guest.base}/snapshot", **params)
    try:
        client.wait_task(str(upid))
    except PveTaskError as e:
        if "snapshot feature is not available" in e.exitstatus:
            raise SnapshotUnavailable(guest.vmid, ["PVE refused it"]) from e
        raise
    return Snapshot(name, now.astimezone(UTC).replace(microsecond=0), description, None, True)


def list_snapshots(client: PveClient, guest: Guest) -> Snapshots:
    rows = [r for r in client.get(f"{guest.base}/snapshot") or [] if isinstance(r, dict)]
    snaps, parent, running = [], None, False
    for r in rows:
        if r.get("name") == "current":
            parent = str(r["parent"]) if r.get("parent") else None
            running = bool(int(r.get("running", 0) or 0))
            continue
        t = int(r.get("snaptime", 0) or 0)
        name = str(r["name"])
        snaps.append(Snapshot(
            name, datetime.fromtimestamp(t, UTC) if t else None, str(r.get("description", "")),
            str(r["parent"]) if r.get("parent") else None, _OURS.match(name) is not None,
        ))  # fmt: skip
    snaps.sort(key=lambda s: (s.taken or datetime.min.replace(tzinfo=UTC), s.name))
    return Snapshots(guest, tuple(snaps), parent, running)


def rollback(client: PveClient, guest: Guest, name: str, *, start: bool = True) -> RollbackResult:
    """Roll back to ``name`` (PVE stops the CT first) and start it again."""
    have = list_snapshots(client, guest)
    if name not in {s.name for s in have.snapshots}:
        known = ", ".join(s.name for s in have.snapshots) or "none"
        raise PvestackError(f"CT {guest.vmid} has no snapshot '{name}' (it has: {known})")
    config = client.get(f"{guest.base}/config") or {}
    params: dict[str, str | int] = {"start": 1} if start else {}
    upid = client.post(f"{guest.base}/snapshot/{name}/rollback", **params)
    protected = str(config.get("protection", "0")) in ("1", "true")
    try:
        client.wait_task(str(upid))
    except PveTaskError as e:
        msg = _rollback_failure(client, guest, name, e)
        if protected:
            msg += (
                f"\nthe CT has protection=1 (pve-container checks it for destroy and disk "
                f"removal, not for a rollback); if your PVE refused for it: pct set "
                f"{guest.vmid} --protection 0, roll back, then pct set {guest.vmid} "
                "--protection 1"
            )
        raise RollbackFailed(msg) from e
    return RollbackResult(guest, name, start, protected)


def _rollback_failure(client: PveClient, guest: Guest, name: str, e: PveTaskError) -> str:
    """What state the CT is in after a failed rollback, and what to run."""
    try:
        st = client.get(f"{guest.base}/status/current") or {}
        state, lock = str(st.get("status", "unknown")), str(st.get("lock", ""))
    except PveError:
        state, lock = "unknown (the API did not answer)", ""
    steps = []
    if lock:
        steps.append(f"pct unlock {guest.vmid}")
    if lock in ("", "rollback"):
        steps.append(f"pct rollback {guest.vmid} {name}")
    steps.append(f"pct start {guest.vmid}")
    return (
        f"rollback of CT {guest.vmid} to '{name}' failed: {e.exitstatus}\n"
        f"the CT is {state}" + (f", locked ({lock})" if lock else "") + "\n"
        "on the node, as root: " + " && ".join(steps)
    )


def prune(client: PveClient, guest: Guest, keep: int) -> PruneResult:
    """Delete the oldest pvestack snapshots beyond ``keep``; never anyone else's."""
    if keep < 1:
        raise PvestackError(f"snapshots keep must be at least 1, got {keep}")
    have = list_snapshots(client, guest)
    ours = [s for s in have.snapshots if s.ours]
    ours.sort(key=lambda s: s.name)  # the name is the UTC time
    drop, stay = ours[: max(0, len(ours) - keep)], ours[max(0, len(ours) - keep) :]
    for s in drop:
        client.wait_task(str(client.delete(f"{guest.base}/snapshot/{s.name}")))
    return PruneResult(
        tuple(s.name for s in drop),
        tuple(s.name for s in stay),
        tuple(s.name for s in have.snapshots if not s.ours),
    )


# ---------------------------------------------------------------- backups


def _backup(row: Mapping[str, Any]) -> Backup:
    return Backup(
        volid=str(row["volid"]), vmid=int(row.get("vmid", 0) or 0), size=int(row.get("size", 0)),
        created=datetime.fromtimestamp(int(row.get("ctime", 0) or 0), UTC),
        notes=str(row.get("notes", "")), protected=bool(row.get("protected")),
    )  # fmt: skip


def list_backups(client: PveClient, guest: Guest, storage: str) -> tuple[Backup, ...]:
    rows = client.get(
        f"/nodes/{guest.node}/storage/{storage}/content", content="backup", vmid=guest.vmid
    )
    out = [_backup(r) for r in rows or [] if isinstance(r, dict) and r.get("content") == "backup"]
    return tuple(sorted(out, key=lambda b: (b.created, b.volid)))


def backup(
    client: PveClient,
    guest: Guest,
    *,
    storage: str,
    mode: BackupMode = "snapshot",
    compress: Compression = "zstd",
) -> BackupResult:
    """vzdump through the API; the notes name the stack (``pvestack-stack: NAME``)."""
    config = client.get(f"{guest.base}/config") or {}
    excluded = tuple(
        f"{key} ({vol} at {where}): not a volume, not in the backup"
        for key, vol, where in mount_points(config) if vol.startswith("/")
    )  # fmt: skip
    before = {b.volid for b in list_backups(client, guest, storage)}
    upid = client.post(
        f"/nodes/{guest.node}/vzdump", vmid=guest.vmid, storage=storage, mode=mode,
        compress=compress, **{"notes-template": f"{{{{guestname}}}} pvestack-stack: {guest.stack}"},
    )  # fmt: skip
    client.wait_task(str(upid), timeout=3600)
    log = client.get(f"/nodes/{guest.node}/tasks/{upid}/log", start=0, limit=500) or []
    texts = [str(e.get("t", "")) for e in log if isinstance(e, dict)]
    used = next((t.rsplit(" ", 1)[1] for t in texts if t.startswith("INFO: backup mode: ")), mode)
    new = [b for b in list_backups(client, guest, storage) if b.volid not in before]
    if not new:
        raise PvestackError(f"vzdump of CT {guest.vmid} ended OK but no new archive is listed")
    return BackupResult(new[-1], excluded, used)


def restore_command(b: Backup, vmid: int, storage: str) -> str:
    """PVE's own restore command (run as root on the node): a new CT, new MAC addresses."""
    return f"pct restore {vmid} {b.volid} --storage {storage} --unique"


# ---------------------------------------------------------------- status


@dataclass(frozen=True)
class AppService:
    name: str
    running_image: str
    wanted_image: str
    state: str  # "running", "exited", ...
    health: str  # "healthy", "unhealthy", "" (no healthcheck)


@dataclass(frozen=True)
class AppStatus:
    services: tuple[AppService, ...] = ()
    last_verify: str = ""  # "ok"/"failed" and when, kept in the CT (not on this machine)
    pending_root_steps: tuple[str, ...] = ()
    error: str = ""  # why the guest could not be read


#: the seam for the guest transport: reads the app side of a running CT
AppProbe = Callable[[Guest], AppStatus]


@dataclass(frozen=True)
class StackStatus:
    stack: str
    node: str
    vmid: int | None
    exists: bool
    state: str = "missing"
    uptime_s: int = 0
    addresses: tuple[str, ...] = ()
    lock: str = ""
    snapshots: tuple[str, ...] = ()  # pvestack's, oldest first
    apps: AppStatus | None = None  # None: no guest transport given
    problems: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "stack": self.stack, "node": self.node, "vmid": self.vmid, "exists": self.exists,
            "state": self.state, "uptime_s": self.uptime_s, "addresses": list(self.addresses),
            "lock": self.lock or None, "snapshots": list(self.snapshots),
            "problems": list(self.problems), "apps": None,
        }  # fmt: skip
        if self.apps is not None:
            out["apps"] = {
                "services": [s.__dict__ for s in self.apps.services],
                "last_verify": self.apps.last_verify or None,
                "pending_root_steps": list(self.apps.pending_root_steps),
                "error": self.apps.error or None,
            }
        return out


def interface_addresses(rows: Any) -> tuple[str, ...]:
    """Addresses of ``GET .../interfaces`` without loopback and link-local
    (``10.0.0.5/24``...); ``None`` (a stopped CT) has none."""
    out = []
    for r in rows or []:
        if not isinstance(r, dict) or r.get("name") == "lo":
            continue
        listed = r.get("ip-addresses")
        if isinstance(listed, list):
            addrs = [f"{a.get('ip-address')}/{a.get('prefix')}" for a in listed
                     if isinstance(a, dict) and a.get("ip-address")]  # fmt: skip
        else:
            addrs = [str(r[k]) for k in ("inet", "inet6") if r.get(k)]
        out += [a for a in addrs if not a.lower().startswith("fe80:")]
    return tuple(out)


def stack_status(
    client: PveClient, stack: str, node: str, vmid: int | None, probe: AppProbe | None = None
) -> StackStatus:
    try:
        guest = find_guest(client, stack, node, vmid, require_mark=False)
    except PvestackError:
        return StackStatus(stack, node, vmid, False)
    st = client.get(f"{guest.base}/status/current") or {}
    state = str(st.get("status", "unknown"))
    problems: list[str] = []
    if _owner(client, guest) != stack:
        problems.append(f"CT {guest.vmid} does not carry the mark of stack {stack}")
    addresses: tuple[str, ...] = ()
    if state == "running":
        try:
            addresses = interface_addresses(client.get(f"{guest.base}/interfaces"))
        except PveError as e:
            problems.append(f"interfaces: {e.pve_message}")
    snaps = tuple(s.name for s in list_snapshots(client, guest).snapshots if s.ours)
    apps = probe(guest) if probe is not None and state == "running" else None
    return StackStatus(
        stack, guest.node, guest.vmid, True, state, int(st.get("uptime", 0) or 0), addresses,
        str(st.get("lock", "")), snaps, apps, tuple(problems),
    )  # fmt: skip
