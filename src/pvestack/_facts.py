# ruff: noqa: E501  (the shell programs below are data; their lines stay whole)
"""Facts only root on the node can read: host directories and what runs inside a guest.

As pyinfra has them: one small reader (shell, given its data as arguments, never spliced)
and one parser per fact, each fact a frozen value. All the facts of one stack are read in
ONE exec on the node: a node-side program prints the host-path facts, then ``exec``s
``pct exec VMID -- sh -c GUEST_FACTS ...`` for the guest's; each fact's output is framed
by a line ``\\x1epvestack-fact N`` so the parsers never guess where one ends. A fact whose
frame is missing (the guest stopped half-way) keeps its default (``GuestFacts``: not
observed).

``ShellFactReader`` runs that command through a root transport (one channel per call, so
``pvestack._observe`` reads the stacks concurrently, one thread each).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pvestack._commands import Command, Payload, Secret, cmd
from pvestack._model import AppFile, GuestFacts, GuestFile, HostPathFact, StackSpec, frozen_map

FRAME = "\x1epvestack-fact "

# Node side. Args: host paths, then "--", then (optional) the guest command to exec.
NODE_FACTS = """\
i=0
while [ "$#" -gt 0 ] && [ "$1" != -- ]; do
  printf '\\036pvestack-fact %s\\n' "$i"
  stat -c '%u %g %a' -- "$1" 2>/dev/null || echo -
  i=$((i + 1))
  shift
done
[ "$#" -gt 0 ] && shift
[ "$#" -gt 0 ] || exit 0
exec "$@"
"""

# Guest side. Args: the first frame number, then triples "KIND ARG1 ARG2".
GUEST_FACTS = """\
i=$1
shift
while [ "$#" -ge 3 ]; do
  kind=$1 a=$2 b=$3
  shift 3
  printf '\\036pvestack-fact %s\\n' "$i"
  i=$((i + 1))
  case "$kind" in
    docker)
      if docker info >/dev/null 2>&1; then echo ok; else echo missing; fi ;;
    compose)
      if docker compose version >/dev/null 2>&1; then echo plugin
      elif command -v docker-compose >/dev/null 2>&1; then echo v1  # not run: a slow Python start
      else echo missing; fi ;;
    image)
      if docker image inspect "$a" >/dev/null 2>&1; then echo present; else echo missing; fi ;;
    file)
      if [ -f "$a" ]; then
        printf '%s %s\\n' "$(sha256sum <"$a" | cut -d' ' -f1)" "$(stat -c '%a %u:%g' "$a")"
      else
        echo -
      fi ;;
    managed)
      if [ -f "$a" ]; then
        awk -v keys="$b" 'BEGIN { n = split(keys, k, " "); for (j = 1; j <= n; j++) want[k[j]] = 1 }
          $0 !~ /^[ \\t]*#/ && index($0, "=") > 0 { x = substr($0, 1, index($0, "=") - 1); if ((x in want) && !(x in seen)) { seen[x] = 1; print } }' "$a" \\
          | LC_ALL=C sort | sha256sum | cut -d' ' -f1
      else
        echo -
      fi ;;
    services)
      docker ps -a --filter "label=com.docker.compose.project=$a" \\
        --format '{{.Label "com.docker.compose.service"}} {{.State}}' 2>/dev/null || true ;;
  esac
done
exit 0
"""


# ---------------------------------------------------------------- one fact each


def _first(lines: Sequence[str]) -> str:
    return lines[0].strip() if lines else ""


@dataclass(frozen=True)
class HostPath:
    """``stat`` of a host path on the node."""

    path: str

    def parse(self, lines: Sequence[str]) -> HostPathFact:
        parts = _first(lines).split()
        if len(parts) != 3 or not (parts[0].isdigit() and parts[1].isdigit()):
            return HostPathFact(path=self.path, exists=False)
        return HostPathFact(
            path=self.path, exists=True, uid=int(parts[0]), gid=int(parts[1]), mode=parts[2]
        )


@dataclass(frozen=True)
class Docker:
    """Does the Docker engine answer (``ok`` | ``missing``)."""

    kind = "docker"

    def args(self) -> tuple[str, str]:
        return ("", "")

    def parse(self, lines: Sequence[str]) -> str:
        v = _first(lines)
        return v if v in ("ok", "missing") else "unknown"


@dataclass(frozen=True)
class Compose:
    """Which compose is installed (``plugin`` | ``v1`` | ``missing``)."""

    kind = "compose"

    def args(self) -> tuple[str, str]:
        return ("", "")

    def parse(self, lines: Sequence[str]) -> str:
        v = _first(lines)
        return v if v in ("plugin", "v1", "missing") else "unknown"


@dataclass(frozen=True)
class Image:
    """Is an image present in the guest's engine."""

    ref: str
    kind = "image"

    def args(self) -> tuple[str, str]:
        return (self.ref, "")

    def parse(self, lines: Sequence[str]) -> bool | None:
        v = _first(lines)
        return True if v == "present" else False if v == "missing" else None


@dataclass(frozen=True)
class File:
    """A whole file: sha256, mode, owner; None when absent."""

    path: str
    kind = "file"

    def args(self) -> tuple[str, str]:
        return (self.path, "")

    def parse(self, lines: Sequence[str]) -> GuestFile | str | None:
        parts = _first(lines).split()
        if parts == ["-"]:
            return None
        if len(parts) != 3:
            return "unknown"
        return GuestFile(sha256=parts[0], mode=parts[1], owner=parts[2])


@dataclass(frozen=True)
class ManagedEnv:
    """A merged ``.env``: sha256 of the sorted lines of the keys the stack manages."""

    path: str
    keys: tuple[str, ...]
    kind = "managed"

    def args(self) -> tuple[str, str]:
        return (self.path, " ".join(self.keys))

    def parse(self, lines: Sequence[str]) -> str | None:
        v = _first(lines)
        return None if v == "-" else v or "unknown"


@dataclass(frozen=True)
class Services:
    """The compose project's services and their states."""

    project: str
    kind = "services"

    def args(self) -> tuple[str, str]:
        return (self.project, "")

    def parse(self, lines: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for ln in lines:
            name, _, state = ln.strip().partition(" ")
            if name and state:
                out[name] = state.strip()
        return out


GuestFact = Docker | Compose | Image | File | ManagedEnv | Services


# ---------------------------------------------------------------- which facts a stack needs


def _reveal_text(parts: Sequence[str | Secret]) -> str:
    return "".join(p if isinstance(p, str) else "" for p in parts)


def managed_keys(f: AppFile) -> tuple[str, ...]:
    """The keys a merged ``.env`` sets (names only: secrets are never read here)."""
    keys: list[str] = []
    for line in _reveal_text(f.content).splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            keys.append(line.split("=", 1)[0])
    return tuple(keys)


def managed_lines(f: AppFile) -> tuple[str, ...]:
    """The ``KEY=value`` lines of a merged ``.env`` (revealed: never shown)."""
    text = Payload(tuple(f.content)).reveal().decode()
    return tuple(ln for ln in text.splitlines() if "=" in ln and not ln.lstrip().startswith("#"))


def project_name(stack: StackSpec) -> str:
    app = stack.app
    if app is not None and app.verify.get("project"):
        return app.verify["project"]
    return stack.name.lower()


def guest_fact_set(stack: StackSpec) -> tuple[GuestFact, ...]:
    """The facts the stack's recipe needs to plan its guest actions."""
    app = stack.app
    if app is None:
        return ()
    facts: list[GuestFact] = [Docker(), Compose()]
    facts += [Image(i.ref) for i in app.images]
    for f in app.files:
        facts.append(ManagedEnv(f.path, managed_keys(f)) if f.merge_env else File(f.path))
    facts.append(Services(project_name(stack)))
    return tuple(facts)


def facts_command(
    host_paths: Sequence[str], vmid: int | None, guest: Sequence[GuestFact]
) -> Command:
    """The one command (as root on the node) that prints every fact, framed."""
    argv: list[str] = ["sh", "-c", NODE_FACTS, "sh", *host_paths, "--"]
    if vmid is not None and guest:
        argv += ["pct", "exec", str(vmid), "--", "sh", "-c", GUEST_FACTS, "sh"]
        argv.append(str(len(host_paths)))
        for g in guest:
            argv += [g.kind, *g.args()]
    return cmd(*argv)


def split_frames(stdout: str) -> dict[int, list[str]]:
    frames: dict[int, list[str]] = {}
    current: list[str] | None = None
    for line in stdout.split("\n"):  # not splitlines(): it splits at \x1e too
        if line.startswith(FRAME):
            num = line[len(FRAME) :].strip()
            current = frames.setdefault(int(num), []) if num.isdigit() else None
        elif current is not None:
            current.append(line)
    return frames


def parse_guest(
    facts: Sequence[GuestFact], frames: Mapping[int, Sequence[str]], first: int
) -> GuestFacts:
    """The framed output of ``facts`` (frame numbers from ``first``) -> ``GuestFacts``."""
    seen = False
    docker = compose = "unknown"
    images: dict[str, bool] = {}
    files: dict[str, GuestFile | None] = {}
    managed: dict[str, str | None] = {}
    services: dict[str, str] = {}
    for n, fact in enumerate(facts, start=first):
        if n not in frames:
            continue  # not read: the default stays
        seen = True
        lines = frames[n]
        if isinstance(fact, Docker):
            docker = fact.parse(lines)
        elif isinstance(fact, Compose):
            compose = fact.parse(lines)
        elif isinstance(fact, Image):
            present = fact.parse(lines)
            if present is not None:
                images[fact.ref] = present
        elif isinstance(fact, File):
            value = fact.parse(lines)
            if not isinstance(value, str):
                files[fact.path] = value
        elif isinstance(fact, ManagedEnv):
            sha = fact.parse(lines)
            if sha != "unknown":
                managed[fact.path] = sha
        else:
            services.update(fact.parse(lines))
    if not seen:
        return GuestFacts()
    return GuestFacts(
        observed=True,
        docker=docker,
        compose=compose,
        images=frozen_map(images),
        files=frozen_map(files),
        managed=frozen_map(managed),
        services=frozen_map(services),
    )


# ---------------------------------------------------------------- the reader


class _Output(Protocol):
    @property
    def stdout(self) -> str: ...


class Shell(Protocol):
    """A root transport's read-only side; ``capture`` must be safe from several threads."""

    def capture(self, command: Command) -> _Output: ...


@dataclass(frozen=True)
class StackFacts:
    host_paths: tuple[HostPathFact, ...] = ()
    guest: GuestFacts = field(default_factory=GuestFacts)


class ShellFactReader:
    """Reads a stack's facts as root on the node: one exec per stack."""

    def __init__(self, transport: Shell) -> None:
        self.transport = transport

    def read(self, stack: StackSpec, vmid: int | None) -> StackFacts:
        """Host paths of the stack's bind mounts, and (``vmid`` given: the guest runs and
        carries our mark) the recipe's guest facts."""
        paths = [m.host_path for m in stack.container.bind_mounts]
        guest = guest_fact_set(stack) if vmid is not None else ()
        if not paths and not guest:
            return StackFacts()
        out = self.transport.capture(facts_command(paths, vmid, guest))
        frames = split_frames(out.stdout)
        hosts = tuple(HostPath(p).parse(frames.get(i, [])) for i, p in enumerate(paths))
        return StackFacts(hosts, parse_guest(guest, frames, len(paths)) if guest else GuestFacts())
