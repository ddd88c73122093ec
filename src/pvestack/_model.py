"""The frozen values handed from stage to stage.

config -> DesiredState -> ObservedState -> Plan -> executors -> verify.

Every type here is an immutable dataclass; no stage mutates what it was given.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from pvestack._commands import Secret, Step
from pvestack._guestfacts import GuestFacts, ServiceUpgrade, UpgradeMarker
from pvestack._pvevalues import parse_tags
from pvestack._verifyspec import AppFacts

MARK_TAG = "pvestack"
MARK_LINE_PREFIX = "pvestack-stack: "


_MARK_RE = re.compile(re.escape(MARK_LINE_PREFIX) + r"([a-z][a-z0-9-]{0,62})")


def mark_owner(config: Mapping[str, str]) -> str | None:
    """The stack named by our mark (tag ``pvestack`` and the description line), or None.

    Exact: exactly one description line starts with the mark prefix (any case), and
    that whole line is ``pvestack-stack: NAME`` with a valid stack name. Two mark
    lines, or a malformed one, are no mark (the guest is then refused, never taken).
    """
    if MARK_TAG not in parse_tags(config.get("tags")):
        return None
    prefix = MARK_LINE_PREFIX.strip().lower()
    marks = [
        line.strip()
        for line in str(config.get("description", "")).splitlines()
        if line.strip().lower().startswith(prefix)
    ]
    if len(marks) != 1:
        return None
    m = _MARK_RE.fullmatch(marks[0])
    return m.group(1) if m else None


def frozen_map(m: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(m or {}))


class Actor(StrEnum):
    API = "api"  # the API token
    ROOT = "root"  # root@pam on the node: SSH, or the console script
    GUEST = "guest"  # inside the container, through the root transport (pct exec/push)


class Change(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    REPLACE = "replace"  # reported, never done silently
    RUN = "run"  # an action with no persistent before/after (reboot, start, probe)

    @property
    def symbol(self) -> str:
        return {"create": "+", "update": "~", "delete": "-", "replace": "-/+", "run": ">"}[
            self.value
        ]


# ---------------------------------------------------------------- desired


@dataclass(frozen=True)
class IdMapEntry:
    kind: str  # "u" or "g"
    ct_start: int
    host_start: int
    count: int

    @property
    def lxc_line(self) -> str:
        return f"{self.kind} {self.ct_start} {self.host_start} {self.count}"


DEFAULT_IDMAP: tuple[IdMapEntry, ...] = (
    IdMapEntry("u", 0, 100000, 65536),
    IdMapEntry("g", 0, 100000, 65536),
)


@dataclass(frozen=True)
class IdMap:
    """A container's uid/gid map. ``custom`` False means PVE's hard-coded default."""

    entries: tuple[IdMapEntry, ...] = DEFAULT_IDMAP
    custom: bool = False

    def host_id(self, kind: str, ct_id: int) -> int:
        for e in self.entries:
            if e.kind == kind and e.ct_start <= ct_id < e.ct_start + e.count:
                return e.host_start + (ct_id - e.ct_start)
        raise ValueError(f"{kind}id {ct_id} is not mapped by the container's id map")

    def host_uid(self, ct_uid: int) -> int:
        return self.host_id("u", ct_uid)

    def host_gid(self, ct_gid: int) -> int:
        return self.host_id("g", ct_gid)


@dataclass(frozen=True)
class BindMount:
    key: str  # "mp0"
    host_path: str
    ct_path: str
    read_only: bool = False
    owner_uid: int = 0  # owner inside the container
    owner_gid: int = 0
    mode: str = "0755"
    backup: bool | None = None
    shared: bool | None = None
    take_ownership: bool = False  # chown an existing non-empty dir owned by someone else

    @property
    def pve_value(self) -> str:
        v = f"{self.host_path},mp={self.ct_path}"
        if self.backup is not None:
            v += f",backup={int(self.backup)}"
        if self.read_only:
            v += ",ro=1"
        if self.shared is not None:
            v += f",shared={int(self.shared)}"
        return v


@dataclass(frozen=True)
class VolumeMount:
    key: str
    storage: str
    size_gb: int
    ct_path: str
    backup: bool | None = None

    @property
    def pve_value(self) -> str:
        v = f"{self.storage}:{self.size_gb},mp={self.ct_path}"
        if self.backup is not None:
            v += f",backup={int(self.backup)}"
        return v


@dataclass(frozen=True)
class TemplateSpec:
    storage: str
    url: str  # "" for an appliance not resolved yet
    filename: str  # "" for an appliance not resolved yet
    checksum: str | None = None  # hex digest
    checksum_algorithm: str | None = None  # md5|sha1|sha224|sha256|sha384|sha512
    appliance: str | None = None  # e.g. debian-13-standard: from the node's aplinfo index

    @property
    def volid(self) -> str:
        return f"{self.storage}:vztmpl/{self.filename}"


@dataclass(frozen=True)
class ContainerSpec:
    """What one stack wants of its container.

    ``api_config`` holds the token-safe PVE parameters exactly as sent to
    ``POST /nodes/{node}/lxc`` (minus vmid/ostemplate) and compared with
    ``GET .../config``. ``features`` is the full desired features value; the
    planner splits it into the token's part (``nesting`` alone) and root's.
    """

    stack: str
    node: str
    vmid: int | None  # None: next free id
    hostname: str
    api_config: Mapping[str, str | int]
    features: Mapping[str, str]  # e.g. {"nesting": "1", "keyctl": "1"}
    template: TemplateSpec
    bind_mounts: tuple[BindMount, ...] = ()
    volume_mounts: tuple[VolumeMount, ...] = ()
    idmap: IdMap = IdMap()
    unprivileged: bool = True
    start: bool = True
    protection: bool = False


@dataclass(frozen=True)
class AppSpec:
    """A rendered app: the files and compose project a recipe produced."""

    recipe: str
    project_dir: str  # in the container, e.g. /opt/hermes-stack
    files: tuple[AppFile, ...]
    images: tuple[ImageSource, ...] = ()
    docker_source: str = "debian"  # "docker-ce" | "debian" | "preinstalled"
    services: tuple[str, ...] = ()
    secrets: tuple[Secret, ...] = ()
    # What verify needs to know of the app (a frozen value per recipe: _verifyspec).
    verify: AppFacts | None = None


@dataclass(frozen=True)
class AppFile:
    path: str  # absolute path in the container
    content: tuple[str | Secret, ...]
    mode: str = "0644"
    uid: int = 0
    gid: int = 0
    services: tuple[str, ...] = ()  # services to restart when this file changes
    merge_env: bool = False  # .env: keep keys the stack file does not set
    merge_yaml: bool = False  # YAML: own only the keys in content, keep the others


@dataclass(frozen=True)
class ImageSource:
    ref: str  # e.g. nousresearch/hermes-agent:v2026.7.1
    tarball: str | None = None  # on the operator's machine: pushed and `docker load`ed


@dataclass(frozen=True)
class UpgradePolicy:
    """``[stack.snapshots]`` and ``[stack.backup]``: the safety net of an upgrade."""

    keep: int = 3  # pvestack's own snapshots kept after a successful upgrade
    backup_before: bool = False  # vzdump before each upgrade
    backup_storage: str = "local"


@dataclass(frozen=True)
class StackSpec:
    name: str
    container: ContainerSpec
    app: AppSpec | None = None
    depends_on: tuple[str, ...] = ()
    upgrade: UpgradePolicy = UpgradePolicy()


@dataclass(frozen=True)
class GuestAccess:
    """How one stack's guest steps reach its container (``[guest]``).

    ``via = "ssh"``: straight into the CT; ``public_key`` the stack's key line (None
    when it does not exist yet: apply generates it, plan never writes files);
    ``key_refused``: the CT refused that key (apply saw it), so the root steps must
    authorize it.
    """

    via: str  # "ssh" | "pct"
    public_key: str | None = None
    key_refused: bool = False


@dataclass(frozen=True)
class DesiredState:
    stacks: tuple[StackSpec, ...]
    source: str = ""  # the stack file's path

    def stack(self, name: str) -> StackSpec:
        for s in self.stacks:
            if s.name == name:
                return s
        raise KeyError(name)


# ---------------------------------------------------------------- observed


@dataclass(frozen=True)
class GuestSummary:
    """One row of ``/cluster/resources?type=vm``."""

    vmid: int
    node: str
    type: str  # "lxc" | "qemu"
    name: str
    status: str
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class ObservedContainer:
    vmid: int
    node: str
    status: str  # running | stopped
    config: Mapping[str, str]  # GET .../config, values as strings
    owner_stack: str | None  # the stack named by our mark, None if unmarked
    pending: tuple[str, ...] = ()  # keys changed but not in effect until the next start

    @property
    def marked(self) -> bool:
        return self.owner_stack is not None


@dataclass(frozen=True)
class HostPathFact:
    path: str
    exists: bool
    uid: int | None = None
    gid: int | None = None
    mode: str | None = None
    empty: bool | None = None


@dataclass(frozen=True)
class ObservedStack:
    name: str
    vmid: int | None  # the vmid this stack resolves to (existing, requested or next free)
    container: ObservedContainer | None
    template_present: bool
    foreign: GuestSummary | None = None  # a guest at the vmid without our mark
    host_paths: tuple[HostPathFact, ...] = ()  # only when root can read the node
    guest_facts: GuestFacts | None = None  # None: the guest was not observed
    template: TemplateSpec | None = None  # an appliance resolved through aplinfo


@dataclass(frozen=True)
class ObservedState:
    nodes: tuple[str, ...]
    guests: tuple[GuestSummary, ...]
    stacks: tuple[ObservedStack, ...]
    api_calls: int = 0

    def stack(self, name: str) -> ObservedStack:
        for s in self.stacks:
            if s.name == name:
                return s
        raise KeyError(name)


# ---------------------------------------------------------------- plan


@dataclass(frozen=True)
class ApiCall:
    method: str  # GET | POST | PUT | DELETE
    path: str  # e.g. /nodes/gihyeon/lxc
    params: Mapping[str, str | int] = field(default_factory=frozen_map)
    waits_task: bool = True


class TargetKind(StrEnum):
    LXC = "lxc"  # a container
    TEMPLATE = "template"  # an OS template volume on a storage
    HOST_PATH = "host-path"  # a directory on the node
    GUEST_PATH = "guest-path"  # a file inside a container


@dataclass(frozen=True)
class Target:
    """What an action changes. ``path``: the template's volid, the host path, or the
    file in the guest, by ``kind``."""

    kind: TargetKind
    node: str
    vmid: int | None = None
    path: str = ""

    @classmethod
    def lxc(cls, node: str, vmid: int) -> Target:
        return cls(TargetKind.LXC, node, vmid)

    @property
    def ct(self) -> str:
        return f"lxc/{self.vmid} on {self.node}"

    def __str__(self) -> str:
        if self.kind is TargetKind.LXC:
            return self.ct
        if self.kind is TargetKind.TEMPLATE:
            return f"{self.path} on {self.node}"
        if self.kind is TargetKind.HOST_PATH:
            return f"{self.node}:{self.path}"
        return f"{self.path} in {self.ct}"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "node": self.node, "vmid": self.vmid, "path": self.path}


class ActionKind(StrEnum):
    """What an action does (the executor and the console hand-off choose by it)."""

    TEMPLATE_DOWNLOAD = "template-download"
    CREATE = "create"
    CONFIG_UPDATE = "config-update"
    RESIZE = "resize"
    REPLACE = "replace"  # reported, never done
    START = "start"
    REBOOT = "reboot"
    ROOT_SET = "root-pct-set"
    HOST_DIR = "host-dir"
    IDMAP = "idmap"
    MOUNT_PROBE = "mount-probe"
    GUEST_ACCESS = "guest-access"  # root: sshd, authorized key, host-key record
    GUEST_DOCKER = "guest-docker"
    GUEST_FILE = "guest-file"
    GUEST_IMAGE = "guest-image"
    GUEST_UP = "guest-up"
    UPGRADE = "upgrade"  # snapshot, new images, compose up, verify; rollback on red
    DESTROY = "destroy"


@dataclass(frozen=True)
class UpgradeSpec:
    """What an ``upgrade`` action does; ``snapshot`` False says why in ``blockers``."""

    services: tuple[ServiceUpgrade, ...]
    snapshot: bool
    blockers: tuple[str, ...]  # why PVE cannot snapshot this CT (empty: it can)
    backup: bool  # vzdump first ([stack.backup] before_upgrade)
    backup_storage: str
    keep: int
    protected: bool = False  # protection=1 on the CT
    not_in_backup: tuple[str, ...] = ()  # bind mounts: in neither a snapshot nor a backup
    resume: UpgradeMarker | None = None  # an interrupted upgrade found in the CT

    def to_json(self) -> dict[str, Any]:
        return {
            "from": {s.service: s.from_image for s in self.services},
            "to": {s.service: s.to_image for s in self.services},
            "snapshot": self.snapshot,
            "snapshot_blockers": list(self.blockers),
            "backup": self.backup,
            "backup_storage": self.backup_storage if self.backup else None,
            "keep": self.keep,
            "protected": self.protected,
            "not_in_backup": list(self.not_in_backup),
            "resume": None
            if self.resume is None
            else {"snapshot": self.resume.snapshot, "phase": self.resume.phase},
        }


# ---------------------------------------------------------------- preconditions
# What the executor re-checks just before acting (the plan may be stale). A check
# either lets the action run, skips it (already done), or refuses (the world changed).


@dataclass(frozen=True)
class TemplateAbsent:
    """The template is not on the storage yet (present: skipped, already there)."""

    storage: str
    volid: str

    def __str__(self) -> str:
        return f"{self.volid} absent"


@dataclass(frozen=True)
class Absent:
    """No guest at ``vmid`` (ours already there: skipped, resumed; any other: refused),
    and the template to create it from on its storage (``volid``; gone: refused)."""

    vmid: int
    stack: str
    storage: str = ""
    volid: str = ""

    def __str__(self) -> str:
        return f"vmid {self.vmid} free" + (f", {self.volid} present" if self.volid else "")


@dataclass(frozen=True)
class Owned:
    """The container carries the mark of ``stack``."""

    stack: str

    def __str__(self) -> str:
        return f"marked by stack {self.stack}"


@dataclass(frozen=True)
class Adopt:
    """The container carries no mark or the mark of ``stack`` (``--adopt``)."""

    stack: str

    def __str__(self) -> str:
        return f"unmarked or marked by stack {self.stack} (--adopt)"


@dataclass(frozen=True)
class Stopped:
    """Ours and stopped (running: skipped, already started)."""

    stack: str

    def __str__(self) -> str:
        return f"marked by stack {self.stack}, stopped"


@dataclass(frozen=True)
class Running:
    """Ours and running (guest work and probes need it)."""

    stack: str

    def __str__(self) -> str:
        return f"marked by stack {self.stack}, running"


@dataclass(frozen=True)
class HostDirState:
    """The host path as observed at plan time: no symlink in any component, and (when
    observed, ``exists`` not None) still absent, or still a directory with that owner."""

    path: str
    exists: bool | None = None  # None: not observed (no root reader at plan time)
    uid: int | None = None
    gid: int | None = None

    def __str__(self) -> str:
        if self.exists is None:
            return f"{self.path}: no symlink in the path"
        if not self.exists:
            return f"{self.path} absent, no symlink in the path"
        return f"{self.path} a directory owned by {self.uid}:{self.gid}, no symlink"


Precondition = TemplateAbsent | Absent | Owned | Adopt | Stopped | Running | HostDirState


@dataclass(frozen=True)
class Action:
    id: str  # stable, e.g. "hermes:ct:create" (display only: nothing parses it)
    kind: ActionKind
    change: Change
    target: Target
    actor: Actor
    reason: str
    precondition: Precondition  # what the executor re-checks just before running
    stack: str = ""
    before: Mapping[str, str | None] = field(default_factory=frozen_map)
    after: Mapping[str, str | None] = field(default_factory=frozen_map)
    api: tuple[ApiCall, ...] = ()  # actor api: the calls, in order
    steps: tuple[Step, ...] = ()  # actor root/guest: commands as data
    upgrade: UpgradeSpec | None = None  # kind upgrade: what it does

    def to_json(self) -> dict[str, Any]:
        extra = {} if self.upgrade is None else {"upgrade": self.upgrade.to_json()}
        return {
            "id": self.id,
            "stack": self.stack,
            "action": self.change.value,
            "kind": self.kind.value,
            "target": str(self.target),
            "target_ref": self.target.to_json(),
            "actor": self.actor.value,
            "reason": self.reason,
            "precondition": str(self.precondition),
            "before": dict(self.before),
            "after": dict(self.after),
            **extra,
        }


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    refused: tuple[str, ...] = ()  # guests we will not touch, with why
    warnings: tuple[str, ...] = ()

    @property
    def changes(self) -> bool:
        return bool(self.actions)

    def by_actor(self, actor: Actor) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.actor is actor)

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": 1,
            "changes": self.changes,
            "actions": [a.to_json() for a in self.actions],
            "refused": list(self.refused),
            "warnings": list(self.warnings),
        }
