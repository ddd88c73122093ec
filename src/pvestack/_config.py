"""The stack file: TOML -> pydantic models, with one ``Problem`` per mistake.

``load_config(path)`` reads the file with ``tomllib``, applies the environment
(``PVESTACK_*``) and command-line overrides to the connection settings, and
validates everything. Every problem is reported with the file, the TOML key
(``stack[0].mount[1].path``) and, where it can be found, the line. No
traceback ever leaves this module: pydantic and TOML errors become
``ConfigError([Problem, ...])``.

The ``[stack.app]`` table is kept raw here; ``pvestack.recipes`` validates it.
"""

from __future__ import annotations

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

DEFAULT_FILE = "pvestack.toml"

_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
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
        if not re.match(r"^https://[^/\s]+(:\d+)?/?$", v):
            raise ValueError("must look like https://HOST:8006 (https, no path)")
        return v.rstrip("/")

    @field_validator("token_id")
    @classmethod
    def _token_id(cls, v: str) -> str:
        if not re.match(r"^[^@!\s]+@[^@!\s]+![A-Za-z][A-Za-z0-9._-]*$", v):
            raise ValueError("must be USER@REALM!TOKENID, e.g. root@pam!pvestack")
        return v

    @field_validator("fingerprint")
    @classmethod
    def _fp(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not _FINGERPRINT_RE.match(v):
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

    @model_validator(mode="after")
    def _check(self) -> NetworkSection:
        if self.ipv4 not in ("dhcp", "manual") and not re.match(
            r"^\d{1,3}(\.\d{1,3}){3}/\d{1,2}$", self.ipv4
        ):
            raise ValueError('ipv4 must be "dhcp", "manual" or an address in CIDR form')
        if self.gateway is not None and self.ipv4 in ("dhcp", "manual"):
            raise ValueError("gateway needs a static ipv4 address in CIDR form")
        return self


class TemplateSection(_Strict):
    storage: str = "local"
    url: str
    filename: str | None = None
    checksum: str | None = None
    checksum_algorithm: Literal["md5", "sha1", "sha224", "sha256", "sha384", "sha512"] | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://\S+$", v):
            raise ValueError("must be an http(s) URL")
        return v

    @model_validator(mode="after")
    def _check(self) -> TemplateSection:
        name = self.filename or self.url.rsplit("/", 1)[-1].split("?", 1)[0]
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
        return self.filename or self.url.rsplit("/", 1)[-1].split("?", 1)[0]


class VolumeSection(_Strict):
    storage: str
    size_gb: int = Field(ge=1)


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

    @model_validator(mode="after")
    def _check(self) -> MountSection:
        if (self.host_path is None) == (self.volume is None):
            raise ValueError("give exactly one of host_path or volume")
        if self.host_path is not None:
            _check_abs(self.host_path, "host_path")
            if self.host_path.startswith("/dev/"):
                raise ValueError("host_path under /dev/ is a device, not a bind mount")
        _check_abs(self.path, "path")
        if PurePosixPath(self.path) == PurePosixPath("/"):
            raise ValueError("path must not be /")
        if not re.match(r"^0?[0-7]{3}$", self.mode):
            raise ValueError("mode must be octal, e.g. 0755")
        return self


def _check_abs(p: str, what: str) -> None:
    if not p.startswith("/"):
        raise ValueError(f"{what} must be absolute: {p!r}")
    if ".." in PurePosixPath(p).parts:
        raise ValueError(f"{what} must not contain '..': {p!r}")
    if "," in p or "=" in p or any(c.isspace() for c in p):
        raise ValueError(f"{what} must not contain ',', '=' or spaces: {p!r}")


class FeaturesSection(_Strict):
    nesting: bool = False
    keyctl: bool = False
    fuse: bool = False
    mknod: bool = False
    mount: list[str] = Field(default_factory=list)
    force_rw_sys: bool = False


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
    app: dict[str, Any] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("must be lowercase letters, digits and '-', starting with a letter")
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
        if v is not None and not _HOSTNAME_RE.match(v):
            raise ValueError("must be a valid DNS host name")
        return v

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: list[str]) -> list[str]:
        for t in v:
            if not _TAG_RE.match(t.lower()):
                raise ValueError(f"tag {t!r} must match [a-z0-9_][a-z0-9_-+.]*")
        return v

    @field_validator("datastore")
    @classmethod
    def _datastore(cls, v: str) -> str:
        if not _STORAGE_RE.match(v):
            raise ValueError("not a storage id")
        return v

    @field_validator("idmap")
    @classmethod
    def _idmap(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        for line in v:
            if not _IDMAP_RE.match(line.strip()):
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

    @model_validator(mode="after")
    def _check(self) -> StackFile:
        names = [s.name for s in self.stack]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"stack names must be unique: {', '.join(sorted(dup))}")
        vmids = [s.vmid for s in self.stack if isinstance(s.vmid, int)]
        dupv = {v for v in vmids if vmids.count(v) > 1}
        if dupv:
            raise ValueError(f"two stacks with the same vmid: {sorted(dupv)}")
        for s in self.stack:
            for d in s.depends_on:
                if d not in names:
                    raise ValueError(f"stack {s.name!r} depends on unknown stack {d!r}")
        if self.pve.fingerprint and self.pve.ca_file:
            raise ValueError("give pve.fingerprint or pve.ca_file, not both")
        if self.root.via == "ssh" and not self.root.ssh.host:
            raise ValueError('root.via = "ssh" needs root.ssh.host (or PVESTACK_SSH_HOST)')
        return self


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
    data: dict[str, Any] = json.loads(json.dumps(raw))  # deep copy of plain TOML data
    for name, value in overrides.items():
        if name in _CONNECTION_OVERRIDES:
            path, key = _CONNECTION_OVERRIDES[name]
            table = data
            for part in path:
                nxt = table.setdefault(part, {})
                if not isinstance(nxt, dict):
                    nxt = {}
                    table[part] = nxt
                table = nxt
            table[key] = int(value) if key == "port" and value.isdigit() else value
            if name == "FINGERPRINT":
                data.setdefault("pve", {}).pop("ca_file", None)
            elif name == "CA_FILE":
                data.setdefault("pve", {}).pop("fingerprint", None)
        elif name == "TOKEN_SECRET":
            data.setdefault("pve", {})["token_secret"] = {"env": "PVESTACK_TOKEN_SECRET"}
        elif name == "INSECURE":
            data.setdefault("pve", {})["insecure"] = value.lower() in ("1", "true", "yes")
        elif name == "NODE":
            for st in data.get("stack", []) or []:
                if isinstance(st, dict):
                    st["node"] = value
    return data


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
        raise ConfigError([Problem(fname, "", "no such file (give one with -c FILE)")]) from None
    except OSError as e:
        raise ConfigError([Problem(fname, "", f"cannot read: {e.strerror}")]) from None
    try:
        text = text_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError([Problem(fname, "", "not UTF-8 text")]) from None
    return parse_config(text, fname, env=env, overrides=overrides)


def parse_config(
    text: str,
    fname: str = DEFAULT_FILE,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> StackFile:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column \d+\)", str(e))
        line = int(m.group(1)) if m else None
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e))
        raise ConfigError([Problem(fname, "", f"TOML syntax: {msg}", line)]) from None
    environ = os.environ if env is None else env
    problems: list[Problem] = []
    raw = _interpolate(raw, environ, (), problems, text, fname)
    if problems:
        raise ConfigError(problems)
    merged: dict[str, str] = overrides_from_env(environ)
    merged.update(overrides or {})
    data = apply_overrides(raw, merged)
    try:
        cfg = StackFile.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_problems(e, text, fname)) from None
    cfg._source_file = fname
    cfg._source_text = text
    return cfg


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
                find_line(text, loc),
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
            out += ("." if out else "") + str(part)
    return out


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
        problems.append(Problem(fname, key, msg, find_line(text, loc)))
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
