# ruff: noqa: E501  (the shell programs below are data; their lines stay whole)
"""Guest actions: inside the container, as root on the node through ``pct exec``/``pct push``.

Every change is a ``Step`` of ``Command``s (argv data; file contents and secrets only in
stdin ``Payload``s). The shell programs run inside the container are constants of this
module, given their arguments positionally (``sh -c PROGRAM sh ARG...``), so they are
shellchecked once (tests) and never interpolate data.

Actions of one stack, in order:

1. ``<stack>:guest:docker``: install Docker (``docker-ce``: Docker's apt repository with
   the key's fingerprint checked as Docker documents, and the compose plugin;
   ``debian``: Debian's ``docker.io`` + ``docker-compose`` (bookworm: compose v1.29, the
   only compose Debian 12 ships; trixie: compose v2 and ``docker-cli``); ``preinstalled``:
   only checked), then prove the engine runs a container from a locally made image (no
   registry).
2. ``<stack>:guest:file:<path>``: write one rendered file atomically (temp file in the
   same dir, mode and owner set before the rename). The write happens only if the bytes
   (or mode/owner) differ; then a restart mark is left for the services reading it.
   ``.env`` files are merged: keys the stack file does not set are kept.
3. ``<stack>:guest:image:<ref>``: ``docker load`` of the operator's tarball (pushed with
   ``pct push``), or ``docker pull``; guarded by ``docker image inspect``.
4. ``<stack>:guest:up``: ``compose up -d`` (recreates only services whose compose
   config changed), then ``compose restart`` of exactly the services marked in step 2.

So apply restarts only what changed even when observe could not look inside (console
mode, container just created): the guest decides "changed" by comparing bytes.

Secrets in console mode: a printed script never holds a secret (``render_script``
refuses). The file steps carrying secrets (``.env``, LiteLLM's config) need the SSH
root transport; in console mode they stay pending, the rest of the script is printed.

This module only builds steps and the values facts are compared with (``file_want``,
``managed_sha256``, ``yaml_want``). What a guest is read for and the one read-only
command: ``pvestack._engine._facts`` (program, typed facts and parsers:
``pvestack._guestfacts``); the guest planner: ``pvestack._plan._guest``.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Sequence

from pvestack._commands import Command, Payload, Secret, Step, cmd
from pvestack._guestfacts import (
    FileFact,
    YamlFact,
)
from pvestack._model import (
    AppFile,
    AppSpec,
    StackSpec,
)
from pvestack.recipes import (
    changed_yaml_keys,
    managed_yaml_digest,
    managed_yaml_paths,
    yaml_merge_program,
)

DOCKER_KEY_URL = "https://download.docker.com/linux/debian/gpg"
DOCKER_KEY_FINGERPRINT = "9DC858229FC7DD38854AE2D88D81803C0EBFCD88"
LONG_STEP_TIMEOUT = 1800.0  # seconds: apt installs, image loads and pulls
PROBE_IMAGE = "pvestack/probe:1"
STATE_DIR = ".pvestack"  # under the project dir: restart marks

# ---------------------------------------------------------------- shell programs

# Exit 0 when the engine answers and a compose is installed.
DOCKER_READY = """\
docker info >/dev/null 2>&1 || exit 1
docker compose version >/dev/null 2>&1 || docker-compose version >/dev/null 2>&1
"""

INSTALL_DOCKER_CE = f"""\
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get -o Acquire::http::Timeout=30 -o Acquire::Retries=3 update -q
apt-get -o Acquire::http::Timeout=30 -o Acquire::Retries=3 install -y -q ca-certificates curl gnupg
install -m 0755 -d /etc/apt/keyrings
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
curl -fsSL {DOCKER_KEY_URL} -o "$tmp/docker.asc"
fpr=$(gpg --batch --show-keys --with-colons "$tmp/docker.asc" | awk -F: '$1 == "fpr" {{ print $10; exit }}')
if [ "$fpr" != "{DOCKER_KEY_FINGERPRINT}" ]; then
  echo "Docker's apt key has fingerprint '$fpr', expected {DOCKER_KEY_FINGERPRINT}" >&2
  exit 1
fi
install -m 0644 "$tmp/docker.asc" /etc/apt/keyrings/docker.asc
# shellcheck source=/dev/null
. /etc/os-release
echo "deb [arch=$(dpkg --print-architecture) signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/debian $VERSION_CODENAME stable" >/etc/apt/sources.list.d/docker.list
apt-get -o Acquire::http::Timeout=30 -o Acquire::Retries=3 update -q
apt-get -o Acquire::http::Timeout=30 -o Acquire::Retries=3 install -y -q docker-ce docker-ce-cli containerd.io docker-buildx-plugin docker-compose-plugin
systemctl enable --now docker
"""

# runc >= 1.3.3 (containerd.io >= 1.7.28-2) fails in unprivileged CTs on nodes whose
# lxc-pve is older than 6.0.5-2 (``_nodepkgs``). The upstream workaround: install the
# newest containerd.io below that release and hold it. Docker's versions carry a
# suffix (1.7.28-2~debian.13~trixie sorts below 1.7.28-2): compared with 1.7.28-2~.
CONTAINERD_BREAKING = "1.7.28-2"
INSTALL_HELD_CONTAINERD = f"""\
best=""
for v in $(apt-cache madison containerd.io | awk -F'|' '{{ gsub(/ /, "", $2); print $2 }}'); do
  dpkg --compare-versions "$v" lt {CONTAINERD_BREAKING}~ || continue
  if [ -z "$best" ] || dpkg --compare-versions "$v" gt "$best"; then best=$v; fi
done
if [ -z "$best" ]; then
  echo "no containerd.io older than {CONTAINERD_BREAKING} in Docker's repository" >&2
  exit 1
fi
apt-get -o Acquire::http::Timeout=30 -o Acquire::Retries=3 install -y -q --allow-downgrades docker-ce docker-ce-cli "containerd.io=$best" docker-buildx-plugin docker-compose-plugin
apt-mark hold containerd.io
echo "containerd.io $best held (runc < 1.3.3: the node's lxc-pve predates 6.0.5-2)"
"""
_CE_INSTALL_LINE = (
    "apt-get -o Acquire::http::Timeout=30 -o Acquire::Retries=3 install -y -q docker-ce "
    "docker-ce-cli containerd.io docker-buildx-plugin docker-compose-plugin\n"
)
INSTALL_DOCKER_CE_HELD = INSTALL_DOCKER_CE.replace(_CE_INSTALL_LINE, INSTALL_HELD_CONTAINERD)

# Debian's packages. bookworm: docker.io holds the docker command, docker-compose is
# compose v1 (1.29, Python). trixie: the command is its own package, docker-cli (only a
# Recommends of docker.io, so named here), and docker-compose is compose v2 (the
# ``docker compose`` plugin). Whichever the release has is installed. Of docker.io's
# Recommends only what the engine uses: apparmor (dockerd loads its profile with
# apparmor_parser when the kernel has AppArmor, as every PVE node's has), xz-utils
# (``docker load`` of a .tar.xz), ca-certificates (``docker pull``); not git,
# needrestart, cgroupfs-mount (fewer downloads).
INSTALL_DOCKER_DEBIAN = """\
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get -o Acquire::http::Timeout=30 -o Acquire::Retries=3 update -q
cli=
if apt-cache show docker-cli >/dev/null 2>&1; then cli=docker-cli; fi
# shellcheck disable=SC2086
apt-get -o Acquire::http::Timeout=30 -o Acquire::Retries=3 install -y -q --no-install-recommends docker.io $cli docker-compose apparmor xz-utils ca-certificates
systemctl enable --now docker
"""

CHECK_PREINSTALLED = """\
if ! command -v docker >/dev/null 2>&1; then
  echo "docker is not installed in the container (app.docker = \\"preinstalled\\")" >&2
  exit 1
fi
systemctl start docker 2>/dev/null || true
i=0
until docker info >/dev/null 2>&1; do
  i=$((i + 1))
  if [ "$i" -gt 30 ]; then echo "the Docker engine does not answer" >&2; exit 1; fi
  sleep 1
done
if ! docker compose version >/dev/null 2>&1 && ! docker-compose version >/dev/null 2>&1; then
  echo "no compose: install the compose plugin or docker-compose" >&2
  exit 1
fi
"""

# $1: the probe image. Made from the container's own /usr/bin/true and its libraries
# (docker import, no registry), then run: proves the engine runs a container.
DOCKER_PROBE = """\
set -eu
image=$1
if ! docker image inspect "$image" >/dev/null 2>&1; then
  files=$(ldd /usr/bin/true | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\\//) print $i }')
  # shellcheck disable=SC2086
  tar -chf - /usr/bin/true $files 2>/dev/null | docker import - "$image" >/dev/null
fi
docker run --rm --network none "$image" /usr/bin/true
echo "docker runs containers"
"""

# $1 file, $2 mode, $3 uid:gid, $4 merge (1: keep keys stdin does not set),
# $5 restart-mark dir, $6... services to mark when the file changes. Content on stdin.
WRITE_FILE = """\
set -eu
f=$1 mode=$2 owner=$3 merge=$4 marks=$5
shift 5
d=$(dirname "$f")
if [ ! -d "$d" ]; then
  (umask 022 && mkdir -p "$d")
  chown "$owner" "$d"
fi
umask 077
tmp=$(mktemp "$f.pvestack.XXXXXX")
trap 'rm -f "$tmp" "$tmp.in"' EXIT
if [ "$merge" = 1 ] && [ -f "$f" ]; then
  cat >"$tmp.in"
  awk 'NR == FNR {
         if (index($0, "=") > 0) { k = substr($0, 1, index($0, "=") - 1); want[k] = $0; order[++n] = k }
         next
       }
       $0 !~ /^[ \\t]*#/ && index($0, "=") > 0 {
         k = substr($0, 1, index($0, "=") - 1)
         if (k in want) { if (!(k in done)) { print want[k]; done[k] = 1 }; next }
       }
       { print }
       END { for (i = 1; i <= n; i++) if (!(order[i] in done)) print want[order[i]] }' "$tmp.in" "$f" >"$tmp"
else
  cat >"$tmp"
fi
chown "$owner" "$tmp"
chmod "$mode" "$tmp"
if [ -f "$f" ] && cmp -s "$tmp" "$f" && [ "$(stat -c '%a %u:%g' "$f")" = "$(stat -c '%a %u:%g' "$tmp")" ]; then
  echo "unchanged: $f"
  exit 0
fi
mv -f "$tmp" "$f"
echo "written: $f"
if [ "$#" -gt 0 ]; then
  mkdir -p "$marks"
  for s in "$@"; do : >"$marks/restart-$s"; done
fi
"""

# $1 file, $2 mode, $3 uid:gid, $4 restart-mark dir, $5 the merge program (recipes'
# _yamlkeys, stdlib + PyYAML), $6... services to mark when a managed key changes. The
# desired YAML on stdin: only its keys are written, every other key in the file is kept;
# an unchanged file is never rewritten (mode/owner are fixed in place).
WRITE_YAML = """\
set -eu
f=$1 mode=$2 owner=$3 marks=$4 prog=$5
shift 5
if ! python3 -c 'import yaml' >/dev/null 2>&1; then
  echo "installing python3-yaml (pvestack merges $f with it)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o Acquire::http::Timeout=30 -o Acquire::Retries=3 update -q >/dev/null
  apt-get -o Acquire::http::Timeout=30 -o Acquire::Retries=3 install -y -q python3-yaml >/dev/null
fi
d=$(dirname "$f")
if [ ! -d "$d" ]; then
  (umask 022 && mkdir -p "$d")
  chown "$owner" "$d"
fi
umask 077
tmp=$(mktemp "$f.pvestack.XXXXXX")
trap 'rm -f "$tmp" "$tmp.in"' EXIT
cat >"$tmp.in"
r=$(python3 -c "$prog" merge "$f" "$tmp.in" "$tmp")
if [ "$r" = same ]; then
  if [ "$(stat -c '%a %u:%g' "$f")" != "$(printf '%o' "0$mode") $owner" ]; then
    chown "$owner" "$f"
    chmod "$mode" "$f"
    echo "unchanged: $f (mode/owner fixed)"
  else
    echo "unchanged: $f"
  fi
  exit 0
fi
chown "$owner" "$tmp"
chmod "$mode" "$tmp"
mv -f "$tmp" "$f"
echo "written: $f (managed keys)"
if [ "$#" -gt 0 ]; then
  mkdir -p "$marks"
  for s in "$@"; do : >"$marks/restart-$s"; done
fi
"""

# $1 project dir, $2 project name, $3 marks dir. compose up -d, then restart the marked.
COMPOSE_UP = """\
set -eu
dir=$1 project=$2 marks=$3
if docker compose version >/dev/null 2>&1; then
  compose() { docker compose -p "$project" -f "$dir/compose.yml" "$@"; }
else
  compose() { docker-compose -p "$project" -f "$dir/compose.yml" "$@"; }
fi
compose up -d --remove-orphans
if [ -d "$marks" ]; then
  for m in "$marks"/restart-*; do
    [ -e "$m" ] || continue
    s=${m##*/restart-}
    echo "restarting $s (its files changed)"
    compose restart "$s"
    rm -f "$m"
  done
fi
"""

# $1 tarball path in the container: load it, then remove it.
DOCKER_LOAD = """\
set -eu
docker load -i "$1"
rm -f "$1"
"""

# ---------------------------------------------------------------- helpers


def pct_sh(vmid: int, program: str, *args: str, stdin: Payload | None = None) -> Command:
    """``pct exec VMID -- sh -c PROGRAM sh ARGS...`` (data as arguments, never spliced)."""
    return cmd("pct", "exec", str(vmid), "--", "sh", "-c", program, "sh", *args, stdin=stdin)


def _reveal(parts: Sequence[str | Secret]) -> bytes:
    return Payload(tuple(parts)).reveal()


def content_sha256(f: AppFile) -> str:
    """SHA-256 of the exact bytes a file step writes (compared with the guest's file)."""
    return hashlib.sha256(_reveal(f.content)).hexdigest()


def managed_lines(f: AppFile) -> tuple[str, ...]:
    """The ``KEY=value`` lines of a merged ``.env`` (revealed: never shown)."""
    text = _reveal(f.content).decode()
    return tuple(ln for ln in text.splitlines() if "=" in ln and not ln.lstrip().startswith("#"))


def managed_keys(f: AppFile) -> tuple[str, ...]:
    keys: list[str] = []
    for p in "".join(p if isinstance(p, str) else "" for p in f.content).splitlines():
        if "=" in p and not p.lstrip().startswith("#"):
            keys.append(p.split("=", 1)[0])
    return tuple(keys)


def managed_sha256(f: AppFile) -> str:
    """What ``FACTS`` prints for a merged file whose managed keys are as desired."""
    lines = sorted(managed_lines(f), key=lambda s: s.encode())
    return hashlib.sha256(("\n".join(lines) + "\n").encode()).hexdigest()


def file_want(f: AppFile) -> FileFact:
    """The fact of a whole file as the file step writes it."""
    return FileFact(content_sha256(f), _mode(f.mode), f.uid, f.gid)


def yaml_paths(f: AppFile) -> tuple[tuple[str, ...], ...]:
    """The key paths a merged YAML file's content owns (no secrets in it)."""
    return managed_yaml_paths(_reveal(f.content).decode())


def yaml_want(f: AppFile) -> YamlFact:
    """The fact of a merged YAML file whose managed keys, mode and owner are as desired."""
    text = _reveal(f.content).decode()
    digest = managed_yaml_digest(text, managed_yaml_paths(text))
    return YamlFact(_mode(f.mode), f.uid, f.gid, digest)


def yaml_changes(f: AppFile, fact: YamlFact) -> tuple[str, ...]:
    """What differs in the guest's YAML file: the managed keys (dotted), ``mode``, ``owner``."""
    out = list(changed_yaml_keys(_reveal(f.content).decode(), fact.digest or "[]"))
    if fact.mode != _mode(f.mode):
        out.append(f"mode {fact.mode}")
    if (fact.uid, fact.gid) != (f.uid, f.gid):
        out.append(f"owner {fact.uid}:{fact.gid}")
    return tuple(out)


def project_name(stack: StackSpec) -> str:
    app = stack.app
    if app is not None and app.verify is not None:
        return app.verify.project
    return stack.name.lower()


def marks_dir(app: AppSpec) -> str:
    return posixpath.join(app.project_dir, STATE_DIR)


def _mode(m: str) -> str:
    return m.lstrip("0") or "0"


# ---------------------------------------------------------------- steps


def docker_steps(app: AppSpec, vmid: int, *, hold_containerd: bool = False) -> tuple[Step, ...]:
    """``hold_containerd`` (docker-ce only): containerd.io is held below the runc 1.3.3
    release (the node's lxc-pve predates the fix)."""
    ready = pct_sh(vmid, DOCKER_READY)
    held = hold_containerd and app.docker_source == "docker-ce"
    install = {
        "docker-ce": INSTALL_DOCKER_CE_HELD if held else INSTALL_DOCKER_CE,
        "debian": INSTALL_DOCKER_DEBIAN,
        "preinstalled": CHECK_PREINSTALLED,
    }[app.docker_source]
    what = {
        "docker-ce": "install Docker from Docker's apt repository (key fingerprint checked)",
        "debian": "install Debian's docker.io and docker-compose",
        "preinstalled": "check the preinstalled Docker engine and compose",
    }[app.docker_source]
    if held:
        what += f", containerd.io held below {CONTAINERD_BREAKING} (runc 1.3.3 breakage)"
    return (
        Step(
            f"ct{vmid}:docker:{app.docker_source}",
            what,
            (pct_sh(vmid, install),),
            guard=ready,
            timeout=LONG_STEP_TIMEOUT,
        ),
        Step(
            f"ct{vmid}:docker:probe",
            "prove the engine runs a container (a local image, no registry)",
            (pct_sh(vmid, DOCKER_PROBE, PROBE_IMAGE),),
        ),
    )


def yaml_file_step(app: AppSpec, f: AppFile, vmid: int) -> Step:
    """Write only the managed keys of a YAML file (``AppFile.merge_yaml``), keep the rest."""
    argv = (f.path, f.mode, f"{f.uid}:{f.gid}", marks_dir(app), yaml_merge_program(), *f.services)
    what = (
        f"set the managed keys of {f.path} (mode {f.mode}, owner {f.uid}:{f.gid}, keep other keys)"
    )
    command = pct_sh(vmid, WRITE_YAML, *argv, stdin=Payload(tuple(f.content)))
    return Step(f"ct{vmid}:file:{f.path}", what, (command,))


def file_step(app: AppSpec, f: AppFile, vmid: int) -> Step:
    if f.merge_yaml:
        return yaml_file_step(app, f, vmid)
    payload = Payload(tuple(f.content))
    argv = (
        f.path,
        f.mode,
        f"{f.uid}:{f.gid}",
        "1" if f.merge_env else "0",
        marks_dir(app),
        *f.services,
    )
    what = f"write {f.path} (mode {f.mode}, owner {f.uid}:{f.gid}"
    what += ", keep other keys)" if f.merge_env else ")"
    return Step(f"ct{vmid}:file:{f.path}", what, (pct_sh(vmid, WRITE_FILE, *argv, stdin=payload),))


def image_step(ref: str, tarball: str | None, vmid: int) -> Step:
    guard = cmd("pct", "exec", str(vmid), "--", "docker", "image", "inspect", ref)
    if tarball:
        inside = "/var/tmp/pvestack-image.tar"
        return Step(
            f"ct{vmid}:image:{ref}",
            f"docker load {ref} from {tarball}",
            (
                cmd("pct", "push", str(vmid), tarball, inside),
                pct_sh(vmid, DOCKER_LOAD, inside),
            ),
            guard=guard,
            timeout=LONG_STEP_TIMEOUT,
        )
    return Step(
        f"ct{vmid}:image:{ref}",
        f"docker pull {ref}",
        (cmd("pct", "exec", str(vmid), "--", "docker", "pull", ref),),
        guard=guard,
        timeout=LONG_STEP_TIMEOUT,
    )


def up_step(stack: StackSpec, app: AppSpec, vmid: int) -> Step:
    return Step(
        f"ct{vmid}:compose:up",
        f"compose up -d in {app.project_dir}; restart the services whose files changed",
        (pct_sh(vmid, COMPOSE_UP, app.project_dir, project_name(stack), marks_dir(app)),),
    )
