# ruff: noqa: E501  (the shell program below is data; its lines stay whole)
"""Guest facts: what observe reads inside a running container, as typed values.

One read-only shell program (``FACTS``, run as root through ``pct exec`` or the guest's
own SSH) prints one ``KIND[:NAME]<TAB>VALUE`` line per fact. Each fact has one reader
(its part of the program's arguments, from a ``FactQuery``, and its part of the output)
and one parser (``parse_*`` below, registered in ``_PARSERS``); ``parse_guest_facts``
gathers them into one frozen ``GuestFacts``. Nothing after this module sees a line or a
key string.

Defaults, in one place (``GuestFacts``' fields):

- a fact that was not read (not asked, not printed, or printed in a form the parser does
  not know) is *unknown*: ``None`` for ``docker``/``compose``, missing from its map for
  the others;
- ``ABSENT`` is a fact that was read and says the file is not there;
- ``UNREADABLE`` (YAML files only) was read but could not be digested (no python3-yaml
  in the guest yet): as unknown for the planner, but kept apart from it;
- ``ObservedStack.guest_facts is None``: the guest was not observed at all (not
  running, no route, or the program printed no fact).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

# ---------------------------------------------------------------- values

#: an unfinished upgrade's marker in the CT (``pvestack._steps.upgrade`` writes it)
UPGRADE_MARKER = "/var/lib/pvestack/upgrade.json"


class DockerFact(StrEnum):
    OK = "ok"  # ``docker info`` answers
    MISSING = "missing"


class ComposeFact(StrEnum):
    PLUGIN = "plugin"  # ``docker compose``
    V1 = "v1"  # ``docker-compose``
    MISSING = "missing"


class ImageFact(StrEnum):
    PRESENT = "present"
    MISSING = "missing"


@dataclass(frozen=True)
class Absent:
    """Read, and not there."""


@dataclass(frozen=True)
class Unreadable:
    """Read, but the guest could not digest it (not observed)."""


ABSENT = Absent()
UNREADABLE = Unreadable()


@dataclass(frozen=True)
class FileFact:
    """A whole file: its bytes' SHA-256, mode as ``stat -c %a`` prints it, owner."""

    sha256: str
    mode: str
    uid: int
    gid: int


@dataclass(frozen=True)
class ManagedFact:
    """A merged ``.env``: SHA-256 of its managed ``KEY=value`` lines, sorted, one per line."""

    sha256: str


@dataclass(frozen=True)
class YamlFact:
    """A merged YAML file: mode, owner and the digests of its managed keys (one line,
    as ``recipes.managed_yaml_digest`` prints them)."""

    mode: str
    uid: int
    gid: int
    digest: str


@dataclass(frozen=True)
class ServiceFact:
    """One compose service's container: its state (``running``, ``exited``, ...) and the
    image it runs (as ``docker ps`` shows it: the reference it was created from)."""

    state: str
    image: str


@dataclass(frozen=True)
class ServiceUpgrade:
    """One compose service moving from the image it runs to the pinned one."""

    service: str
    from_image: str
    to_image: str


@dataclass(frozen=True)
class UpgradeMarker:
    """``/var/lib/pvestack/upgrade.json`` in the CT: an upgrade that did not finish."""

    services: tuple[ServiceUpgrade, ...]
    snapshot: str | None  # the snapshot to roll back to (None: none was taken)
    backup: str | None  # the backup volid taken before it
    phase: str  # "upgrade" (more phases may come; unknown ones are kept as text)


def _frozen(m: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(m or {}))


@dataclass(frozen=True)
class GuestFacts:
    """Every fact read in one guest. Defaults: unknown (see the module's docstring)."""

    docker: DockerFact | None = None
    compose: ComposeFact | None = None
    images: Mapping[str, ImageFact] = field(default_factory=_frozen)
    files: Mapping[str, FileFact | Absent] = field(default_factory=_frozen)
    managed: Mapping[str, ManagedFact | Absent] = field(default_factory=_frozen)
    yaml: Mapping[str, YamlFact | Absent | Unreadable] = field(default_factory=_frozen)
    services: Mapping[str, ServiceFact] = field(default_factory=_frozen)
    upgrade: UpgradeMarker | None = None  # an unfinished upgrade (None: no marker)

    @property
    def docker_ready(self) -> bool:
        """The engine answers and a compose is installed (unknown counts as not)."""
        return self.docker is DockerFact.OK and self.compose in (ComposeFact.PLUGIN, ComposeFact.V1)


# ---------------------------------------------------------------- readers


@dataclass(frozen=True)
class ManagedRead:
    """Read a merged ``.env``'s managed keys."""

    path: str
    keys: tuple[str, ...]


@dataclass(frozen=True)
class YamlRead:
    """Read a merged YAML file's managed key paths with ``program`` (``recipes``'
    ``_yamlkeys``: ``python3 -c PROGRAM digest FILE PATHS_JSON``)."""

    path: str
    key_paths: tuple[tuple[str, ...], ...]
    program: str


@dataclass(frozen=True)
class FactQuery:
    """What to read in one guest: the compose project, images, whole files, merged files."""

    project: str
    images: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    managed: tuple[ManagedRead, ...] = ()
    yaml: tuple[YamlRead, ...] = ()


def read_args(q: FactQuery) -> tuple[str, ...]:
    """``FACTS``' positional arguments for ``q`` (``sh -c FACTS sh ARGS...``)."""
    args: list[str] = [q.project, "--images", *q.images, "--files", *q.files]
    for m in q.managed:
        args += ["--managed", m.path, *m.keys, "--"]
    for y in q.yaml:
        args += ["--yaml", y.path, json.dumps([list(p) for p in y.key_paths]), y.program]
    return tuple(args)


# Read-only. Args: project name, then groups "--images REF...", "--files PATH...",
# "--managed PATH KEY... --", "--yaml PATH PATHS_JSON PROGRAM". Prints "kind[:name]<TAB>value"
# lines, read by the parsers below: docker ok|missing; compose plugin|v1|missing;
# image:REF present|missing; file:PATH "SHA256 MODE UID:GID" or -; managed:PATH SHA256 or -;
# yaml:PATH "MODE UID:GID DIGESTS" or - or ? (cannot digest: no python3-yaml yet);
# service:NAME "STATE IMAGE"; upgrade JSON (the marker of an unfinished upgrade).
FACTS = """\
project=$1
shift
if docker info >/dev/null 2>&1; then printf 'docker\\tok\\n'; else printf 'docker\\tmissing\\n'; fi
if docker compose version >/dev/null 2>&1; then printf 'compose\\tplugin\\n'
elif docker-compose version >/dev/null 2>&1; then printf 'compose\\tv1\\n'
else printf 'compose\\tmissing\\n'; fi
mode=
while [ "$#" -gt 0 ]; do
  case "$1" in
    --images|--files) mode=$1; shift; continue ;;
    --yaml)
      f=$2 paths=$3 prog=$4
      shift 4
      if [ ! -f "$f" ]; then v=-
      elif h=$(python3 -c "$prog" digest "$f" "$paths" 2>/dev/null); then v="$(stat -c '%a %u:%g' "$f") $h"
      else v='?'; fi
      printf 'yaml:%s\t%s\n' "$f" "$v"
      continue ;;
    --managed)
      f=$2
      shift 2
      keys=
      while [ "$#" -gt 0 ] && [ "$1" != -- ]; do keys="$keys $1"; shift; done
      shift
      if [ -f "$f" ]; then
        h=$(awk -v keys="$keys" 'BEGIN { n = split(keys, a, " "); for (i = 1; i <= n; i++) want[a[i]] = 1 }
              $0 !~ /^[ \\t]*#/ && index($0, "=") > 0 { k = substr($0, 1, index($0, "=") - 1); if ((k in want) && !(k in seen)) { seen[k] = 1; print } }' "$f" \\
            | LC_ALL=C sort | sha256sum | cut -d' ' -f1)
        printf 'managed:%s\\t%s\\n' "$f" "$h"
      else
        printf 'managed:%s\\t-\\n' "$f"
      fi
      continue ;;
  esac
  case "$mode" in
    --images)
      if docker image inspect "$1" >/dev/null 2>&1; then v=present; else v=missing; fi
      printf 'image:%s\\t%s\\n' "$1" "$v" ;;
    --files)
      if [ -f "$1" ]; then
        printf 'file:%s\\t%s %s\\n' "$1" "$(sha256sum <"$1" | cut -d' ' -f1)" "$(stat -c '%a %u:%g' "$1")"
      else
        printf 'file:%s\\t-\\n' "$1"
      fi ;;
  esac
  shift
done
if docker info >/dev/null 2>&1; then
  docker ps -a --filter "label=com.docker.compose.project=$project" \\
    --format '{{.Label "com.docker.compose.service"}} {{.State}} {{.Image}}' 2>/dev/null \\
    | while read -r s st img; do printf 'service:%s\\t%s %s\\n' "$s" "$st" "$img"; done
fi
if [ -f /var/lib/pvestack/upgrade.json ]; then
  printf 'upgrade\\t%s\\n' "$(tr -d '\\n\\t' </var/lib/pvestack/upgrade.json)"
fi
exit 0
"""

# ---------------------------------------------------------------- parsers


def _owner(text: str) -> tuple[int, int] | None:
    uid, sep, gid = text.partition(":")
    if not (sep and uid.isdigit() and gid.isdigit()):
        return None
    return int(uid), int(gid)


def _mode(text: str) -> str | None:
    return text if text and all(c in "01234567" for c in text) else None


def parse_docker(value: str) -> DockerFact | None:
    return DockerFact(value) if value in DockerFact.__members__.values() else None


def parse_compose(value: str) -> ComposeFact | None:
    return ComposeFact(value) if value in ComposeFact.__members__.values() else None


def parse_image(value: str) -> ImageFact | None:
    return ImageFact(value) if value in ImageFact.__members__.values() else None


def parse_file(value: str) -> FileFact | Absent | None:
    """``SHA256 MODE UID:GID`` or ``-``."""
    if value == "-":
        return ABSENT
    parts = value.split()
    if len(parts) != 3:
        return None
    sha, mode, owner = parts
    ids, m = _owner(owner), _mode(mode)
    if ids is None or m is None or not sha:
        return None
    return FileFact(sha, m, *ids)


def parse_managed(value: str) -> ManagedFact | Absent | None:
    """``SHA256`` or ``-``."""
    if value == "-":
        return ABSENT
    return ManagedFact(value) if value and " " not in value else None


def parse_yaml(value: str) -> YamlFact | Absent | Unreadable | None:
    """``MODE UID:GID DIGESTS`` (the digests may be empty), ``-`` or ``?``."""
    if value == "-":
        return ABSENT
    if value == "?":
        return UNREADABLE
    mode, _, rest = value.partition(" ")
    owner, _, digest = rest.partition(" ")
    ids, m = _owner(owner), _mode(mode)
    if ids is None or m is None:
        return None
    return YamlFact(m, *ids, digest.strip())


def parse_service(value: str) -> ServiceFact | None:
    """``STATE IMAGE`` (the image may be missing: an older ``docker ps``)."""
    state, _, image = value.partition(" ")
    return ServiceFact(state, image.strip()) if state else None


def parse_upgrade(value: str) -> UpgradeMarker | None:
    """The marker's JSON ``{stack, from, to, snapshot, backup, phase}``; None when it
    names no service or cannot be read."""
    try:
        raw = json.loads(value)
        frm, to = dict(raw.get("from") or {}), dict(raw.get("to") or {})
        services = tuple(
            ServiceUpgrade(str(s), str(frm.get(s, "?")), str(to[s])) for s in sorted(to)
        )
        snap, backup = raw.get("snapshot"), raw.get("backup")
    except (ValueError, TypeError, AttributeError, KeyError):
        return None
    if not services:
        return None
    return UpgradeMarker(
        services, str(snap) if snap else None, str(backup) if backup else None,
        str(raw.get("phase", "?")),
    )  # fmt: skip


# kind -> (parser, the GuestFacts map it fills); docker and compose have no name.
_NAMED: dict[str, tuple[Callable[[str], Any], str]] = {
    "image": (parse_image, "images"),
    "file": (parse_file, "files"),
    "managed": (parse_managed, "managed"),
    "yaml": (parse_yaml, "yaml"),
    "service": (parse_service, "services"),
}


def parse_guest_facts(outputs: Sequence[str]) -> GuestFacts | None:
    """The outputs of ``FACTS`` -> one ``GuestFacts``; None when no fact line is in them.
    Lines it does not know and values its parsers refuse are left unknown."""
    seen = False
    docker: DockerFact | None = None
    compose: ComposeFact | None = None
    upgrade: UpgradeMarker | None = None
    maps: dict[str, dict[str, Any]] = {attr: {} for _, attr in _NAMED.values()}
    for out in outputs:
        for line in out.splitlines():
            key, sep, raw = line.partition("\t")
            if not (sep and key):
                continue
            value = raw.strip()
            kind, colon, name = key.partition(":")
            if not colon and kind == "docker":
                docker, seen = parse_docker(value) or docker, True
            elif not colon and kind == "compose":
                compose, seen = parse_compose(value) or compose, True
            elif not colon and kind == "upgrade":
                upgrade, seen = parse_upgrade(value), True
            elif colon and name and kind in _NAMED:
                parse, attr = _NAMED[kind]
                fact = parse(value)
                seen = True
                if fact is not None:
                    maps[attr][name] = fact
    if not seen:
        return None
    return GuestFacts(
        docker=docker,
        compose=compose,
        images=_frozen(maps["images"]),
        files=_frozen(maps["files"]),
        managed=_frozen(maps["managed"]),
        yaml=_frozen(maps["yaml"]),
        services=_frozen(maps["services"]),
        upgrade=upgrade,
    )
