"""The frozen values handed from stage to stage.

config -> DesiredState -> ObservedState -> Plan -> executors -> verify.

Every type here is an immutable dataclass; no stage mutates what it was given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from pvestack._commands import Secret, Step

MARK_TAG = "pvestack"
MARK_LINE_PREFIX = "pvestack-stack: "


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
    url: str
    filename: str
    checksum: str | None = None  # hex digest
    checksum_algorithm: str | None = None  # md5|sha1|sha224|sha256|sha384|sha512

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
    # What verify needs to know of the app, by recipe: e.g. for hermes
    # {"data_dir": "/opt/hermes", "container": "hermes", "gateway_url": ..., "default_model": ...,
    #  "key_env": "LITELLM_API_KEY", "platforms": "telegram,discord", "uid": "10000",
    #  "gid": "10000"}; for litellm {"port": "4000", "models": "m1,m2",
    #  "key_env": "LITELLM_MASTER_KEY", "container": ..., "master_key": <secret name>}.
    verify: Mapping[str, str] = field(default_factory=frozen_map)


@dataclass(frozen=True)
class AppFile:
    path: str  # absolute path in the container
    content: tuple[str | Secret, ...]
    mode: str = "0644"
    uid: int = 0
    gid: int = 0
    services: tuple[str, ...] = ()  # services to restart when this file changes
    merge_env: bool = False  # .env: keep keys the stack file does not set


@dataclass(frozen=True)
class ImageSource:
    ref: str  # e.g. nousresearch/hermes-agent:v2026.7.1
    tarball: str | None = None  # on the operator's machine: pushed and `docker load`ed


@dataclass(frozen=True)
class StackSpec:
    name: str
    container: ContainerSpec
    app: AppSpec | None = None
    depends_on: tuple[str, ...] = ()


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
class GuestFile:
    """A file in the guest as the guest fact reader saw it."""

    sha256: str
    mode: str  # octal, no leading zeros (``stat -c %a``)
    owner: str  # uid:gid


@dataclass(frozen=True)
class GuestFacts:
    """What the guest fact reader (``pvestack._facts``) saw inside a running guest.

    The defaults are the one place that says what "not observed" means: ``observed``
    False, ``unknown`` states, and no entries (a missing entry reads as not observed)."""

    observed: bool = False
    docker: str = "unknown"  # ok | missing | unknown
    compose: str = "unknown"  # plugin | v1 | missing | unknown
    images: Mapping[str, bool] = field(default_factory=frozen_map)  # ref -> present
    files: Mapping[str, GuestFile | None] = field(default_factory=frozen_map)  # None: absent
    # merged .env files: sha256 of the managed KEY=value lines (sorted), None: absent
    managed: Mapping[str, str | None] = field(default_factory=frozen_map)
    services: Mapping[str, str] = field(default_factory=frozen_map)  # compose service -> state


@dataclass(frozen=True)
class ObservedStack:
    name: str
    vmid: int | None  # the vmid this stack resolves to (existing, requested or next free)
    container: ObservedContainer | None
    template_present: bool
    foreign: GuestSummary | None = None  # a guest at the vmid without our mark
    host_paths: tuple[HostPathFact, ...] = ()  # only when root can read the node
    guest_files: Mapping[str, str | None] = field(default_factory=frozen_map)  # path -> sha256
    guest_facts: GuestFacts = field(default_factory=GuestFacts)


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


@dataclass(frozen=True)
class Action:
    id: str  # stable, e.g. "hermes:ct:create"
    change: Change
    target: str  # e.g. "lxc/118 on gihyeon"
    actor: Actor
    reason: str
    stack: str = ""
    before: Mapping[str, str | None] = field(default_factory=frozen_map)
    after: Mapping[str, str | None] = field(default_factory=frozen_map)
    api: tuple[ApiCall, ...] = ()  # actor api: the calls, in order
    steps: tuple[Step, ...] = ()  # actor root/guest: commands as data
    precondition: str = ""  # what the executor re-checks just before running

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "stack": self.stack,
            "action": self.change.value,
            "target": self.target,
            "actor": self.actor.value,
            "reason": self.reason,
            "before": dict(self.before),
            "after": dict(self.after),
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
