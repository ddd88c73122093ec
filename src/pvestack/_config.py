"""The stack file: TOML -> pydantic models, with one ``Problem`` per mistake.

``load_config(path)`` reads the file with ``tomllib``, applies the environment
(``PVESTACK_*``) and command-line overrides to the connection settings, and
validates everything. Every problem is reported with the file, the TOML key
(``stack[0].mount[1].path``) and, where it can be found, the line. No
traceback ever leaves this module: pydantic and TOML errors become
``ConfigError([Problem, ...])``.

The ``[stack.app]`` table is kept raw here; ``pvestack.recipes`` validates it.

Hardening (every rule applies AFTER ``${VAR}`` interpolation):

* no string value anywhere holds a control or non-printable character (a
  description may hold newlines and tabs); path-like values and list items
  hold no whitespace either (``check_path``); names that reach ``net0`` or URL
  paths (``node``, ``network.bridge``, addresses, gateways) follow PVE's own
  formats, so a comma cannot smuggle an extra ``net0`` property;
* a bind mount's ``host_path`` is never a node system directory nor an ancestor
  of one (``SYSTEM_PATHS``, ``SYSTEM_TREES``, ``system_path_reason``);
* a description never holds the ownership mark prefix (``pvestack-stack:``);
* file-level checks (unique names and vmids, ``depends_on``, the id map and the
  mounts it must map) report the exact key, e.g. ``stack[1].mount[0].gid``.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from pvestack._errors import ConfigError, Problem
from pvestack._model import MARK_LINE_PREFIX, IdMap, IdMapEntry

DEFAULT_FILE = "pvestack.toml"

_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
# PVE's formats (pve-common JSONSchema: pve-node; pve-container net[n] bridge pattern)
_NODE_RE = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?")
_BRIDGE_RE = re.compile(r"[A-Za-z0-9_][-_.A-Za-z0-9]{0,14}")  # a Linux interface name
_FS_TYPE_RE = re.compile(r"[A-Za-z0-9_]+")  # features: mount=fstype;fstype
_HEX_RE = re.compile(r"[0-9A-Fa-f]+")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")  # PVE's dns-name
_TAG_RE = re.compile(r"^[a-z0-9_][a-z0-9_\-+.]*$")
_FINGERPRINT_RE = re.compile(r"^([0-9A-Fa-f]{2}:){31}[0-9A-Fa-f]{2}$")
_IDMAP_RE = re.compile(r"^([ug])\s+(\d+)\s+(\d+)\s+(\d+)$")
_STORAGE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9\-_.]*[A-Za-z0-9]$")
_TEMPLATE_EXT = (".tar", ".tar.gz", ".tar.xz", ".tar.zst", ".tar.bz2")
CHECKSUM_ALGORITHMS = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- secrets


class SecretSource(_Strict):
    """Where a secret comes from: an environment variable, a file, or a command's stdout."""

    env: str | None = None
    file: str | None = None
    command: list[str] | None = None
    optional: bool = False

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretSource:
        given = [k for k in ("env", "file", "command") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of env, file or command")
        if self.command is not None and not self.command:
            raise ValueError("command must be a non-empty list of arguments")
        return self

    @property
    def describe(self) -> str:
        if self.env is not None:
            return f"environment variable {self.env}"
        if self.file is not None:
            return f"file {self.file}"
        return "command " + " ".join(self.command or [])


def _no_inline_secret(v: Any) -> Any:
    if isinstance(v, str):
        raise ValueError(
            'secrets are never written inline: use { env = "VAR" } or { file = "/path" }'
        )
    return v


# ---------------------------------------------------------------- pve / root


class PveSection(_Strict):
    api_url: str = Field(description="https://HOST:8006")
    token_id: str = Field(description="USER@REALM!TOKENID")
    token_secret: SecretSource = Field(
        default_factory=lambda: SecretSource(env="PVESTACK_TOKEN_SECRET")
    )
    fingerprint: str | None = Field(default=None, description="SHA-256 of the node certificate")
    ca_file: str | None = None
    insecure: bool = False
    timeout: float = 30.0

    @field_validator("token_secret", mode="before")
    @classmethod
    def _secret_not_inline(cls, v: Any) -> Any:
        return _no_inline_secret(v)

    @field_validator("api_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.fullmatch(r"https://[^/\s]+(:\d+)?/?", v):
            raise ValueError("must look like https://HOST:8006 (https, no path)")
        return v.rstrip("/")

    @field_validator("token_id")
    @classmethod
    def _token_id(cls, v: str) -> str:
        if not re.fullmatch(r"[^@!\s]+@[^@!\s]+![A-Za-z][A-Za-z0-9._-]*", v):
            raise ValueError("must be USER@REALM!TOKENID, e.g. root@pam!pvestack")
        return v

    @field_validator("fingerprint")
    @classmethod
    def _fp(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not _FINGERPRINT_RE.fullmatch(v):
            raise ValueError("must be 32 colon-separated hex bytes (SHA-256)")
        return v.upper()


class SshSection(_Strict):
    host: str | None = None
    port: int = Field(default=22, ge=1, le=65535)
    user: str = "root"
    key_file: str | None = None
    known_hosts: str = "~/.ssh/known_hosts"


class RootSection(_Strict):
    via: Literal["ssh", "console", "none"] = "console"
    ssh: SshSection = Field(default_factory=SshSection)


class GuestSection(_Strict):
    """How pvestack reaches inside the containers (``pvestack._guest_settings``)."""

    via: Literal["ssh", "pct"] | None = Field(
        default=None,
        description='"ssh": straight into the container as its root; "pct": through the '
        'root transport. Default: ssh when root.via = "console", else pct',
    )
    key_file: str | None = Field(
        default=None, description="your own private key (default: a per-stack ed25519 key)"
    )
    port: int = Field(default=22, ge=1, le=65535)
    connect_timeout: float = Field(default=15.0, gt=0)
    command_timeout: float = Field(
        default=1800.0, gt=0, description="seconds one guest command may run"
    )


# ---------------------------------------------------------------- stack


class NetworkSection(_Strict):
    bridge: str = "vmbr0"
    ipv4: str = "dhcp"
    gateway: str | None = None
    ipv6: str | None = None
    gateway6: str | None = None
    vlan: int | None = Field(default=None, ge=1, le=4094)
    firewall: bool | None = None
    mtu: int | None = Field(default=None, ge=576, le=65535)

    @field_validator("bridge")
    @classmethod
    def _bridge(cls, v: str) -> str:
        if not _BRIDGE_RE.fullmatch(v):
            raise ValueError(
                "must be a bridge (interface) name: letters, digits, '-', '_', '.', at most 15"
            )
        return v

    @field_validator("gateway")
    @classmethod
    def _gw(cls, v: str | None) -> str | None:
        if v is not None:
            _address(v, ipaddress.IPv4Address, "an IPv4 address, e.g. 192.168.1.1")
        return v

    @field_validator("gateway6")
    @classmethod
    def _gw6(cls, v: str | None) -> str | None:
        if v is not None:
            _address(v, ipaddress.IPv6Address, "an IPv6 address, e.g. fd00::1")
        return v

    @field_validator("ipv6")
    @classmethod
    def _ip6(cls, v: str | None) -> str | None:
        if v is not None and v not in ("auto", "dhcp", "manual"):
            if "/" not in v:
                raise ValueError('must be "auto", "dhcp", "manual" or an address in CIDR form')
            _address(v, ipaddress.IPv6Interface, "an IPv6 address in CIDR form, e.g. fd00::5/64")
        return v

    @model_validator(mode="after")
    def _check(self) -> NetworkSection:
        if self.ipv4 not in ("dhcp", "manual") and not re.fullmatch(
            r"\d{1,3}(\.\d{1,3}){3}/\d{1,2}", self.ipv4
        ):
            raise ValueError('ipv4 must be "dhcp", "manual" or an address in CIDR form')
        if self.ipv4 not in ("dhcp", "manual"):
            _address(self.ipv4, ipaddress.IPv4Interface, "ipv4: an IPv4 address in CIDR form")
        if self.gateway is not None and self.ipv4 in ("dhcp", "manual"):
            raise ValueError("gateway needs a static ipv4 address in CIDR form")
        return self


class TemplateSection(_Strict):
    """The OS template: by ``url`` (with a ``checksum``, or the plan warns) or by
    ``appliance`` name from the node's index (``pveam available``; e.g.
    ``debian-13-standard``: the newest version, downloaded with PVE's aplinfo, sha512
    verified by the node)."""

    storage: str = "local"
    url: str | None = None
    appliance: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9.+-]*$")
    filename: str | None = None
    checksum: str | None = None
    checksum_algorithm: Literal["md5", "sha1", "sha224", "sha256", "sha384", "sha512"] | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and (not re.fullmatch(r"https?://[^\s,]+", v) or not _plain(v)):
            raise ValueError("must be an http(s) URL")
        return v

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str) -> str:
        if not _STORAGE_RE.fullmatch(v):
            raise ValueError("not a storage id")
        return v

    @field_validator("checksum")
    @classmethod
    def _checksum(cls, v: str | None) -> str | None:
        if v is not None and not _HEX_RE.fullmatch(v):
            raise ValueError("a hex digest")
        return v

    @model_validator(mode="after")
    def _check(self) -> TemplateSection:
        if (self.url is None) == (self.appliance is None):
            raise ValueError("give either url or appliance")
        if self.appliance is not None:
            if self.filename or self.checksum:
                raise ValueError("appliance takes no filename/checksum (the index has them)")
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", self.appliance):
                raise ValueError("appliance: letters, digits, '.', '_', '+', '-' only")
            return self
        name = self.resolved_filename
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", name):
            raise ValueError(
                f"template file name {name!r}: letters, digits, '.', '_', '+', '-' only"
            )
        if not name.endswith(_TEMPLATE_EXT):
            raise ValueError(
                f"template file name {name!r} must end in .tar or .tar.(gz|xz|zst|bz2)"
                " (set filename when the URL does not end in one)"
            )
        if self.checksum is not None and self.checksum_algorithm is None:
            raise ValueError("checksum needs checksum_algorithm (e.g. sha512)")
        return self

    @property
    def resolved_filename(self) -> str:
        """The file name ("" for an appliance: the node's index names it)."""
        if self.url is None:
            return ""
        return self.filename or self.url.rsplit("/", 1)[-1].split("?", 1)[0]


class VolumeSection(_Strict):
    storage: str
    size_gb: int = Field(ge=1)

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str) -> str:
        if not _STORAGE_RE.fullmatch(v):
            raise ValueError("not a storage id")
        return v


class MountSection(_Strict):
    host_path: str | None = None
    volume: VolumeSection | None = None
    path: str
    uid: int = Field(default=0, ge=0, le=65535, description="owner uid inside the container")
    gid: int | None = Field(default=None, ge=0, le=65535, description="owner gid inside (= uid)")
    mode: str = "0755"
    read_only: bool = False
    backup: bool | None = None
    shared: bool | None = None
    take_ownership: bool = Field(
        default=False,
        description="chown the host directory even when it exists, is not empty and belongs "
        "to someone else (never recursively); without it such a directory is refused",
    )

    @field_validator("host_path")
    @classmethod
    def _host_path(cls, v: str | None) -> str | None:
        if v is not None:
            _check_abs(v, "host_path")
            why = system_path_reason(v)
            if why:
                raise ValueError(why)
        return v

    @field_validator("path")
    @classmethod
    def _ct_path(cls, v: str) -> str:
        _check_abs(v, "path")
        if _normal(v) == "/":
            raise ValueError("path must not be /")
        return v

    @field_validator("mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        if not re.fullmatch(r"0?[0-7]{3}", v):
            raise ValueError("mode must be octal, e.g. 0755")
        return v

    @model_validator(mode="after")
    def _check(self) -> MountSection:
        if (self.host_path is None) == (self.volume is None):
            raise ValueError("give exactly one of host_path or volume")
        return self


def _plain(v: str, allowed: str = "") -> bool:
    return all(c.isprintable() or c in allowed for c in v)


def check_path(p: str, what: str, *, absolute: bool = True, pve: bool = True) -> None:
    """A path-like value: printable, no whitespace, no '..', absolute unless told, and
    (``pve``: it can reach a PVE property string) no ',' or '='. ``ValueError`` names
    ``what``."""
    if not p:
        raise ValueError(f"{what} is empty")
    if not _plain(p):
        raise ValueError(f"{what} must not contain control characters: {p!r}")
    if any(c.isspace() for c in p):
        raise ValueError(f"{what} must not contain whitespace: {p!r}")
    if absolute and not p.startswith("/"):
        raise ValueError(f"{what} must be absolute: {p!r}")
    if ".." in PurePosixPath(p).parts:
        raise ValueError(f"{what} must not contain '..': {p!r}")
    if pve and ("," in p or "=" in p):
        raise ValueError(f"{what} must not contain ',' or '=': {p!r}")


def _check_abs(p: str, what: str) -> None:
    check_path(p, what)


def _address(v: str, kind: Any, what: str) -> None:
    try:
        kind(v)
    except ValueError:
        raise ValueError(f"{v!r} is not {what}") from None


# ---------------------------------------------------------------- system paths

#: Node directories never handed to a container as a bind mount: the directory itself
#: and every ancestor of it (``/`` and ``/var`` are ancestors of ``/var/lib/vz``).
#: Their other subdirectories stay allowed (``/mnt/pve/hdd/hermes``,
#: ``/opt/hermes-data``, ``/var/lib/myapp``: an application's own state directory).
SYSTEM_PATHS: tuple[str, ...] = (
    "/home", "/media", "/mnt", "/mnt/pve", "/opt", "/srv", "/tmp",
    "/var", "/var/lib", "/var/local", "/var/opt", "/var/tmp",
)  # fmt: skip
#: Trees refused whole: the directory, everything below it, and its ancestors: the OS,
#: the kernel's views, PVE's and LXC's state (guest disks, the cluster file system).
SYSTEM_TREES: tuple[str, ...] = (
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/lost+found",
    "/proc", "/root", "/run", "/sbin", "/sys", "/usr",
    "/var/backups", "/var/cache", "/var/lock", "/var/log", "/var/mail", "/var/run",
    "/var/spool",
    "/var/lib/apt", "/var/lib/ceph", "/var/lib/containerd", "/var/lib/dpkg",
    "/var/lib/docker", "/var/lib/lxc", "/var/lib/lxcfs", "/var/lib/misc", "/var/lib/nfs",
    "/var/lib/private", "/var/lib/pve", "/var/lib/pve-cluster", "/var/lib/pve-firewall",
    "/var/lib/pve-manager", "/var/lib/rrdcached", "/var/lib/systemd", "/var/lib/vz",
)  # fmt: skip
#: A directory right below one of these is a storage's mount point (other guests' disks,
#: backups, templates): refused; deeper directories are allowed.
STORAGE_PARENTS: tuple[str, ...] = ("/mnt/pve",)


def _normal(p: str) -> str:
    """``//var/./lib/`` -> ``/var/lib`` (no symlink or '..' resolution)."""
    parts = [x for x in p.split("/") if x not in ("", ".")]
    return "/" + "/".join(parts)


def system_path_reason(host_path: str) -> str | None:
    """Why ``host_path`` may not be bind-mounted (a system path), or None when it may."""
    p = _normal(host_path)
    if p == "/":
        return "host_path is '/': the node's root filesystem is never bind-mounted"
    for tree in SYSTEM_TREES:
        if p == tree or p.startswith(tree + "/"):
            return f"host_path {p} is in the node's system directory {tree}: never bind-mounted"
    for sysp in (*SYSTEM_PATHS, *SYSTEM_TREES):
        if p == sysp or sysp.startswith(p + "/"):
            return (
                f"host_path {p} is (or contains) the node's system directory {sysp}: use a "
                f"directory of its own below it (e.g. /mnt/pve/STORAGE/NAME, /opt/NAME-data)"
            )
    for parent in STORAGE_PARENTS:
        if p.startswith(parent + "/") and "/" not in p[len(parent) + 1 :]:
            return (
                f"host_path {p} is a storage's mount point (it holds other guests' disks and "
                f"backups): use a directory below it, e.g. {p}/NAME"
            )
    return None


class FeaturesSection(_Strict):
    nesting: bool = False
    keyctl: bool = False
    fuse: bool = False
    mknod: bool = False
    mount: list[str] = Field(default_factory=list)
    force_rw_sys: bool = False

    @field_validator("mount")
    @classmethod
    def _fs_types(cls, v: list[str]) -> list[str]:
        for fs in v:
            if not _FS_TYPE_RE.fullmatch(fs):
                raise ValueError(f"{fs!r} is not a file system type (letters, digits, '_')")
        return v


class SnapshotsSection(_Strict):
    """``[stack.snapshots]``: pvestack's own snapshots (``pvestack-<UTC time>``)."""

    keep: int = Field(
        default=3,
        ge=1,
        le=100,
        description="pvestack snapshots kept after a successful upgrade (the oldest go; "
        "snapshots pvestack did not make are never deleted)",
    )


class BackupSection(_Strict):
    """``[stack.backup]``: vzdump through the API."""

    before_upgrade: bool = Field(
        default=False,
        description="take a vzdump backup before each upgrade (also the safety net of a "
        "CT PVE cannot snapshot; bind-mounted host directories are in no backup)",
    )
    storage: str = Field(default="local", description="the backup storage (content backup)")

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str) -> str:
        if not _STORAGE_RE.fullmatch(v):
            raise ValueError("not a storage id")
        return v


class StackSection(_Strict):
    name: str
    node: str
    vmid: int | Literal["auto"] = "auto"
    hostname: str | None = None
    description: str = ""
    cores: int = Field(default=1, ge=1, le=8192)
    memory: int = Field(default=512, ge=16)
    swap: int = Field(default=512, ge=0)
    disk_gb: int = Field(default=8, ge=1)
    datastore: str = "local-lvm"
    onboot: bool = False
    start: bool = True
    unprivileged: bool = True
    protection: bool = False
    tags: list[str] = Field(default_factory=list)
    dns: list[str] = Field(default_factory=list)
    searchdomain: str | None = None
    features: FeaturesSection = Field(default_factory=FeaturesSection)
    network: NetworkSection = Field(default_factory=NetworkSection)
    template: TemplateSection
    mount: list[MountSection] = Field(default_factory=list)
    idmap: list[str] | None = None
    depends_on: list[str] = Field(default_factory=list)
    snapshots: SnapshotsSection = Field(default_factory=SnapshotsSection)
    backup: BackupSection = Field(default_factory=BackupSection)
    app: dict[str, Any] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.fullmatch(v):
            raise ValueError("must be lowercase letters, digits and '-', starting with a letter")
        return v

    @field_validator("node")
    @classmethod
    def _node(cls, v: str) -> str:
        if not _NODE_RE.fullmatch(v):
            raise ValueError("must be a PVE node name (letters, digits and '-')")
        return v

    @field_validator("description")
    @classmethod
    def _description(cls, v: str) -> str:
        if not _plain(v, "\n\t"):
            raise ValueError("must not contain control characters (newlines and tabs are fine)")
        mark = MARK_LINE_PREFIX.strip().lower()
        for line in v.splitlines():
            if line.strip().lower().startswith(mark):
                raise ValueError(
                    f"a line starting with {mark!r} is pvestack's ownership mark; "
                    "pvestack writes it itself"
                )
        return v

    @field_validator("dns")
    @classmethod
    def _dns(cls, v: list[str]) -> list[str]:
        for a in v:
            _address(a, ipaddress.ip_address, "an IP address")
        return v

    @field_validator("searchdomain")
    @classmethod
    def _searchdomain(cls, v: str | None) -> str | None:
        if v is not None and not all(_HOSTNAME_RE.fullmatch(d) for d in v.split(" ")):
            raise ValueError("must be DNS domain names separated by single spaces")
        return v

    @field_validator("vmid")
    @classmethod
    def _vmid(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 100 <= v <= 999_999_999:
            raise ValueError('must be between 100 and 999999999, or "auto"')
        return v

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, v: str | None) -> str | None:
        if v is not None and not _HOSTNAME_RE.fullmatch(v):
            raise ValueError("must be a valid DNS host name")
        return v

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: list[str]) -> list[str]:
        for t in v:
            if not _TAG_RE.fullmatch(t.lower()):
                raise ValueError(f"tag {t!r} must match [a-z0-9_][a-z0-9_-+.]*")
        return v

    @field_validator("datastore")
    @classmethod
    def _datastore(cls, v: str) -> str:
        if not _STORAGE_RE.fullmatch(v):
            raise ValueError("not a storage id")
        return v

    @field_validator("idmap")
    @classmethod
    def _idmap(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        for line in v:
            if not _IDMAP_RE.fullmatch(line.strip()):
                raise ValueError(f"{line!r} is not 'u|g CT_START HOST_START COUNT'")
        kinds = {line.split()[0] for line in v}
        if kinds != {"u", "g"}:
            raise ValueError("an idmap needs both u and g lines")
        return v

    @model_validator(mode="after")
    def _check(self) -> StackSection:
        paths = [m.path for m in self.mount]
        dup = {p for p in paths if paths.count(p) > 1}
        if dup:
            raise ValueError(f"two mounts at the same path: {', '.join(sorted(dup))}")
        return self

    @property
    def resolved_hostname(self) -> str:
        return self.hostname or self.name


class StackFile(_Strict):
    """The whole stack file."""

    pve: PveSection
    root: RootSection = Field(default_factory=RootSection)
    guest: GuestSection = Field(default_factory=GuestSection)
    secrets: dict[str, SecretSource] = Field(default_factory=dict)
    stack: Annotated[list[StackSection], Field(min_length=1)]
    _source_file: str = PrivateAttr(default="")
    _source_text: str = PrivateAttr(default="")

    def line_of(self, loc: Sequence[str | int]) -> int | None:
        """The line of ``loc`` in the file this was read from (None when unknown)."""
        return find_line(self._source_text, loc) if self._source_text else None

    @property
    def source_file(self) -> str:
        return self._source_file

    @field_validator("secrets", mode="before")
    @classmethod
    def _secrets(cls, v: Any) -> Any:
        if isinstance(v, dict):
            for val in v.values():
                _no_inline_secret(val)
        return v


# ---------------------------------------------------------------- file-level checks


def _file_checks(cfg: StackFile) -> list[tuple[tuple[str | int, ...], str]]:
    """Checks across sections, each with the exact key it is about."""
    out: list[tuple[tuple[str | int, ...], str]] = []
    names = [s.name for s in cfg.stack]
    vmids: dict[int, int] = {}
    for i, s in enumerate(cfg.stack):
        if s.name in names[:i]:
            out.append((("stack", i, "name"), f"stack names must be unique: {s.name!r} again"))
        if isinstance(s.vmid, int):
            if s.vmid in vmids:
                out.append(
                    (("stack", i, "vmid"), f"vmid {s.vmid} is already stack[{vmids[s.vmid]}]'s")
                )
            vmids.setdefault(s.vmid, i)
        for j, d in enumerate(s.depends_on):
            if d not in names:
                out.append((("stack", i, "depends_on", j), f"unknown stack {d!r}"))
            elif d == s.name:
                out.append((("stack", i, "depends_on", j), "a stack cannot depend on itself"))
        out += _idmap_checks(i, s)
    if cfg.pve.fingerprint and cfg.pve.ca_file:
        out.append((("pve", "ca_file"), "give pve.fingerprint or pve.ca_file, not both"))
    if cfg.root.via == "ssh" and not cfg.root.ssh.host:
        out.append((("root", "via"), 'root.via = "ssh" needs root.ssh.host (or PVESTACK_SSH_HOST)'))
    return out


def stack_idmap(st: StackSection) -> IdMap:
    """The stack's id map (PVE's default when the stack file sets none)."""
    if not st.idmap:
        return IdMap()
    entries = []
    for line in st.idmap:
        k, a, b, c = line.split()
        entries.append(IdMapEntry(k, int(a), int(b), int(c)))
    return IdMap(tuple(entries), custom=True)


def _idmap_checks(i: int, st: StackSection) -> list[tuple[tuple[str | int, ...], str]]:
    out: list[tuple[tuple[str | int, ...], str]] = []
    idmap = stack_idmap(st)
    if st.idmap:
        lines = [" ".join(x.split()) for x in st.idmap]
        for j, e in enumerate(idmap.entries):
            key: tuple[str | int, ...] = ("stack", i, "idmap", j)
            if e.count <= 0:
                out.append((key, f"{lines[j]!r}: the count must be > 0"))
            if e.ct_start + e.count > 2**32 or e.host_start + e.count > 2**32:
                out.append((key, f"{lines[j]!r}: ids end above 2^32"))
            for k, o in enumerate(idmap.entries[:j]):
                if o.kind != e.kind:
                    continue
                if o.ct_start < e.ct_start + e.count and e.ct_start < o.ct_start + o.count:
                    out.append((key, f"container ids overlap idmap[{k}] ({lines[k]!r})"))
                if o.host_start < e.host_start + e.count and e.host_start < o.host_start + o.count:
                    out.append((key, f"host ids overlap idmap[{k}] ({lines[k]!r})"))
    for j, m in enumerate(st.mount):
        if m.host_path is None:
            continue
        gid = m.uid if m.gid is None else m.gid
        for field_name, kind, value in (("uid", "u", m.uid), ("gid", "g", gid)):
            try:
                idmap.host_id(kind, value)
            except ValueError:
                name = field_name if field_name == "uid" or m.gid is not None else "uid"
                out.append(
                    (
                        ("stack", i, "mount", j, name),
                        f"{kind}id {value} is not mapped by the container's id map "
                        f"(stack[{i}].idmap): its files would belong to nobody",
                    )
                )
    return out


# ---------------------------------------------------------------- overrides

#: override name -> (section path, key); the env var is ``PVESTACK_`` + name.
_CONNECTION_OVERRIDES: dict[str, tuple[tuple[str, ...], str]] = {
    "API_URL": (("pve",), "api_url"),
    "TOKEN_ID": (("pve",), "token_id"),
    "FINGERPRINT": (("pve",), "fingerprint"),
    "CA_FILE": (("pve",), "ca_file"),
    "ROOT_VIA": (("root",), "via"),
    "SSH_HOST": (("root", "ssh"), "host"),
    "SSH_PORT": (("root", "ssh"), "port"),
    "SSH_USER": (("root", "ssh"), "user"),
    "SSH_KEY": (("root", "ssh"), "key_file"),
    "SSH_KNOWN_HOSTS": (("root", "ssh"), "known_hosts"),
}
OVERRIDE_NAMES = (*_CONNECTION_OVERRIDES, "TOKEN_SECRET", "NODE", "INSECURE")


def apply_overrides(raw: dict[str, Any], overrides: Mapping[str, str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with connection settings replaced by ``overrides``.

    ``overrides`` uses the names of ``OVERRIDE_NAMES`` (the env var without
    ``PVESTACK_``). ``TOKEN_SECRET`` makes the token secret come from the
    ``PVESTACK_TOKEN_SECRET`` environment variable; ``NODE`` replaces every
    stack's node.
    """
    data: dict[str, Any] = copy.deepcopy(raw)
    for name, value in overrides.items():
        if name in _CONNECTION_OVERRIDES:
            path, key = _CONNECTION_OVERRIDES[name]
            table = _section(data, path)
            if table is None:  # not a table in the file: validation names it
                continue
            table[key] = int(value) if key == "port" and value.isdigit() else value
            pve = _section(data, ("pve",))
            if name == "FINGERPRINT" and pve is not None:
                pve.pop("ca_file", None)
            elif name == "CA_FILE" and pve is not None:
                pve.pop("fingerprint", None)
        elif name in ("TOKEN_SECRET", "INSECURE"):
            pve = _section(data, ("pve",))
            if pve is None:
                continue
            if name == "TOKEN_SECRET":
                pve["token_secret"] = {"env": "PVESTACK_TOKEN_SECRET"}
            else:
                pve["insecure"] = value.lower() in ("1", "true", "yes")
        elif name == "NODE":
            stacks = data.get("stack")
            for st in stacks if isinstance(stacks, list) else []:
                if isinstance(st, dict):
                    st["node"] = value
    return data


def _section(data: dict[str, Any], path: Sequence[str]) -> dict[str, Any] | None:
    """The table at ``path`` (made when missing); None when something there is no table."""
    table = data
    for part in path:
        nxt = table.setdefault(part, {})
        if not isinstance(nxt, dict):
            return None
        table = nxt
    return table


def overrides_from_env(env: Mapping[str, str]) -> dict[str, str]:
    return {n: env["PVESTACK_" + n] for n in OVERRIDE_NAMES if env.get("PVESTACK_" + n)}


# ---------------------------------------------------------------- loading


def load_config(
    path: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> StackFile:
    """Read, override and validate a stack file. Raises ``ConfigError``."""
    fname = os.fspath(path)
    try:
        with open(fname, "rb") as fh:
            text_bytes = fh.read()
    except FileNotFoundError:
        raise ConfigError(
            [Problem(fname, "(file)", "no such file (give one with -c FILE)")]
        ) from None
    except OSError as e:
        raise ConfigError([Problem(fname, "(file)", f"cannot read: {e.strerror}")]) from None
    try:
        text = text_bytes.decode("utf-8")
    except UnicodeDecodeError as e:
        line = text_bytes[: e.start].count(b"\n") + 1
        raise ConfigError([Problem(fname, "(document)", "not UTF-8 text", line)]) from None
    return parse_config(text, fname, env=env, overrides=overrides)


def parse_config(
    text: str,
    fname: str = DEFAULT_FILE,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> StackFile:
    try:
        return _parse(text, fname, env=env, overrides=overrides)
    except RecursionError:  # tomllib (or a later pass) on deeply nested arrays/tables
        raise ConfigError(
            [Problem(fname, "(document)", "nested too deeply (arrays or tables)", 1)]
        ) from None


def _parse(
    text: str,
    fname: str,
    *,
    env: Mapping[str, str] | None,
    overrides: Mapping[str, str] | None,
) -> StackFile:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([_toml_problem(str(e), text, fname)]) from None
    environ = os.environ if env is None else env
    problems: list[Problem] = []
    raw = _interpolate(raw, environ, (), problems, text, fname)
    if problems:
        raise ConfigError(problems)
    merged: dict[str, str] = overrides_from_env(environ)
    merged.update(overrides or {})
    data = apply_overrides(raw, merged)
    problems = _control_problems(data, (), text, fname)
    try:
        cfg = StackFile.model_validate(data)
    except ValidationError as e:
        seen = {p.key for p in problems}
        problems += [p for p in _problems(e, text, fname) if p.key not in seen]
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    checks = _file_checks(cfg)
    if checks:
        raise ConfigError(
            [Problem(fname, format_loc(loc), msg, line_of(text, loc)) for loc, msg in checks]
        )
    cfg._source_file = fname
    cfg._source_text = text
    return cfg


def _toml_problem(msg: str, text: str, fname: str) -> Problem:
    m = re.search(r"\(at line (\d+), column \d+\)", msg)
    # "(at end of document)": the last line
    line = int(m.group(1)) if m else max(1, len(text.splitlines()))
    msg = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", msg)
    return Problem(fname, key_at_line(text, line), f"TOML syntax: {msg}", line)


def key_at_line(text: str, line: int) -> str:
    """The table (or key) a line belongs to, e.g. ``stack[0].network``; ``(top level)``."""
    path: tuple[str | int, ...] = ()
    counters: dict[tuple[str | int, ...], int] = {}
    for n, raw in enumerate(text.splitlines()[:line], start=1):
        h = _HEADER_RE.match(raw)
        if h and not _KEY_RE.match(raw):
            path = _resolve_table(_split_dotted(h.group(2)), counters, h.group(1) == "[[")
        elif n == line and (k := _KEY_RE.match(raw)):
            return format_loc(path + tuple(_split_dotted(k.group(1))))
    return format_loc(path) or "(top level)"


def _control_problems(
    node: Any, loc: tuple[str | int, ...], text: str, fname: str
) -> list[Problem]:
    """Every string (and key) with a control or non-printable character, after interpolation.

    Only a stack's ``description`` may hold newlines and tabs.
    """
    out: list[Problem] = []
    if isinstance(node, dict):
        for k, v in node.items():
            here = (*loc, str(k))
            if not _plain(str(k)):
                out.append(Problem(fname, format_loc(here), "control character in a key", 1))
                continue
            out += _control_problems(v, here, text, fname)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _control_problems(v, (*loc, i), text, fname)
    elif isinstance(node, str):
        allowed = "\n\t" if loc[-1:] == ("description",) and loc[:1] == ("stack",) else ""
        if not _plain(node, allowed):
            out.append(
                Problem(
                    fname,
                    format_loc(loc),
                    f"must not contain control characters: {node!r}",
                    line_of(text, loc),
                )
            )
    return out


def line_of(text: str, loc: Sequence[str | int]) -> int:
    """The line of ``loc`` (or of its nearest enclosing key); 1 when nothing encloses it."""
    return find_line(text, loc) or 1


_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\$")


def _interpolate(  # noqa: PLR0917
    node: Any,
    env: Mapping[str, str],
    loc: tuple[str | int, ...],
    problems: list[Problem],
    text: str,
    fname: str,
) -> Any:
    """Expand ``${VAR}`` / ``${VAR:-default}`` in string values (``$$`` is a literal ``$``).

    This lets one file serve several nodes (e.g. the lab's bridge and storage
    from ``PVESTACK_LAB_*``). Secrets are never written inline, so never expanded here.
    """
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            value = _interpolate(v, env, (*loc, k), problems, text, fname)
            if value == "" and isinstance(v, str) and _VAR_RE.fullmatch(v):
                continue  # key = "${VAR:-}" with VAR unset: as if the key were absent
            out[k] = value
        return out
    if isinstance(node, list):
        return [_interpolate(v, env, (*loc, i), problems, text, fname) for i, v in enumerate(node)]
    if not isinstance(node, str) or "$" not in node:
        return node

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        value = env.get(name)
        if value:
            return value
        if default is not None:
            return default
        problems.append(
            Problem(
                fname,
                format_loc(loc),
                f"${{{name}}} is not set in the environment (give a default: ${{{name}:-...}})",
                line_of(text, loc),
            )
        )
        return ""

    return _VAR_RE.sub(sub, node)


def _parse_key(key: str) -> tuple[str | int, ...]:
    out: list[str | int] = []
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", key):
        out.append(int(part[1:-1]) if part.startswith("[") else part)
    return tuple(out)


def format_loc(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            # a bare TOML key as is; any other (empty, dotted, spaced) quoted as TOML does
            name = part if _BARE_KEY.fullmatch(part) else json.dumps(part)
            out += ("." if out else "") + name
    return out


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _clean_loc(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    # pydantic adds union member names ("int", "literal['auto']") and validator tags
    return tuple(
        p
        for p in loc
        if not (
            isinstance(p, str)
            and (p in ("int", "str", "bool") or p.startswith(("literal[", "function-")))
        )
    )


def _problems(err: ValidationError, text: str, fname: str) -> list[Problem]:
    seen: set[tuple[str, str]] = set()
    problems: list[Problem] = []
    for e in err.errors(include_url=False):
        loc = _clean_loc(tuple(e["loc"]))
        msg = str(e["msg"])
        msg = re.sub(r"^(Value error|Assertion failed), ", "", msg)
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not part of the stack file format; see `pvestack schema`)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        key = format_loc(loc)
        if (key, msg) in seen:
            continue
        seen.add((key, msg))
        problems.append(Problem(fname, key or "(top level)", msg, line_of(text, loc)))
    return problems


# ---------------------------------------------------------------- line numbers

_HEADER_RE = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*(\]\]?)\s*(#.*)?$")
_KEY_RE = re.compile(r"^\s*([A-Za-z0-9_\-\"'. ]+?)\s*=")


def _split_dotted(key: str) -> list[str]:
    parts = re.findall(r'"([^"]*)"|\'([^\']*)\'|([A-Za-z0-9_\-]+)', key)
    return [a or b or c for a, b, c in parts]


def find_line(text: str, loc: Sequence[str | int]) -> int | None:
    """The 1-based line where ``loc`` (e.g. ("stack", 0, "mount", 1, "path")) is defined.

    Falls back to the nearest enclosing key or table header. Good enough for
    the TOML people write by hand (no multi-line strings spanning keys).
    """
    target = tuple(loc)
    counters: dict[tuple[str | int, ...], int] = {}
    current: tuple[str | int, ...] = ()
    best_line: int | None = None
    best_len = 0
    in_multiline = False
    for n, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if in_multiline:
            if stripped.count('"""') % 2 == 1 or stripped.count("'''") % 2 == 1:
                in_multiline = False
            continue
        if not stripped or stripped.startswith("#"):
            continue
        h = _HEADER_RE.match(line)
        if h and not _KEY_RE.match(line):
            names = _split_dotted(h.group(2))
            path = _resolve_table(names, counters, h.group(1) == "[[")
            current = path
            cand = path
        else:
            k = _KEY_RE.match(line)
            if not k:
                continue
            cand = current + tuple(_split_dotted(k.group(1)))
            if stripped.count('"""') % 2 == 1 or stripped.count("'''") % 2 == 1:
                in_multiline = True
        m = _common_prefix(cand, target)
        if m == len(cand) and m > best_len:
            best_len = m
            best_line = n
    return best_line


def _resolve_table(
    names: list[str], counters: dict[tuple[str | int, ...], int], array: bool
) -> tuple[str | int, ...]:
    path: tuple[str | int, ...] = ()
    for i, name in enumerate(names):
        path = (*path, name)
        last = i == len(names) - 1
        if last and array:
            idx = counters.get(path, -1) + 1
            counters[path] = idx
            # a new array element resets counters of its children
            for k in [k for k in counters if len(k) > len(path) and k[: len(path)] == path]:
                del counters[k]
            path = (*path, idx)
        elif path in counters:
            path = (*path, counters[path])
    return path


def _common_prefix(a: tuple[str | int, ...], b: tuple[str | int, ...]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


# ---------------------------------------------------------------- schema


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the stack file (for editors: taplo, even-better-toml)."""
    schema = StackFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "pvestack stack file"
    return schema
