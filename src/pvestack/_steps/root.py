"""Root-only steps on the PVE node, as data (pure builders, nothing runs here).

What an API token cannot do (pve-container ``check_ct_modify_config_perm``):
create and chown the bind-mount directories, set features other than
``nesting``, add bind mount points, write ``lxc.idmap``, and the reboot that
makes those take effect. Each builder returns one ``Step`` whose guard exits 0
when the work is already done, so the same step is idempotent over SSH and in
the console script (``_commands.render_script``).

Where a step needs shell logic (a test, a loop, a wait) it is one ``sh -c SCRIPT
sh ARG...`` command: the script is a constant and every value travels as a
positional argument, quoted once by ``shlex`` when rendered.

The container config directory is ``/etc/pve/lxc`` on a real node. The scripts
look it up at run time as ``${PVESTACK_PVE_LXC_DIR:-${PVESTACK_LAB_DIR:-}/etc/pve/lxc}``
so the same text works on the lab node (whose shell sets ``PVESTACK_LAB_DIR``);
``conf_dir=`` pins it instead.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence

from pvestack._commands import Command, Step, cmd
from pvestack._config import system_path_reason
from pvestack._errors import ConfigError, Problem
from pvestack._model import BindMount, IdMap

CONF_DIR_EXPR = '"${PVESTACK_PVE_LXC_DIR:-${PVESTACK_LAB_DIR:-}/etc/pve/lxc}"'
PROBE_PREFIX = ".pvestack-probe-"
_MP_KEY = re.compile(r"^mp([0-9]|[1-9][0-9]|[1-2][0-9]{2})$")  # PVE: mp0 .. mp255
_PCT_KEY = re.compile(r"^[a-z][a-z0-9_-]*$")


# ---------------------------------------------------------------- validation (pure)


def _path_problems(path: str, what: str, *, allow_root: bool) -> list[str]:
    out: list[str] = []
    if not path:
        return [f"{what} is empty"]
    if not all(c.isprintable() or c == " " for c in path):
        out.append(f"{what} {path!r} contains a control character")
    if not path.startswith("/"):
        out.append(f"{what} {path!r} is relative: use an absolute path starting with /")
    if ".." in path.split("/"):
        out.append(f"{what} {path!r} contains '..': write the resolved path")
    if "," in path or "=" in path:
        out.append(f"{what} {path!r} contains ',' or '=' (PVE mount point values cannot)")
    if not allow_root and path.rstrip("/") == "" and path.startswith("/"):
        out.append(f"{what} is '/': a mount point over the root filesystem is not allowed")
    return out


def bind_mount_problems(
    mount: BindMount, idmap: IdMap | None = None, *, file: str = "", key: str = ""
) -> tuple[Problem, ...]:
    """Everything wrong with one bind mount, as ``Problem``s (empty when fine).

    ``key`` names where it came from in the stack file (e.g. ``stack.hermes.mounts[0]``).
    """
    where = key or mount.key
    msgs: list[str] = []
    if not _MP_KEY.match(mount.key):
        msgs.append(f"mount key {mount.key!r} is not mp0 .. mp255")
    msgs += _path_problems(mount.host_path, "host path", allow_root=True)
    if mount.host_path.rstrip("/") == "" and mount.host_path.startswith("/"):
        msgs.append("host path is '/': bind-mounting the node's root filesystem is not allowed")
    elif mount.host_path.startswith("/") and (why := system_path_reason(mount.host_path)):
        msgs.append(why)
    msgs += _path_problems(mount.ct_path, "container path", allow_root=False)
    if not re.fullmatch(r"0?[0-7]{3,4}", mount.mode):
        msgs.append(f"mode {mount.mode!r} is not an octal mode like 0750")
    for what, v in (("owner uid", mount.owner_uid), ("owner gid", mount.owner_gid)):
        if v < 0:
            msgs.append(f"{what} {v} is negative")
    if idmap is not None and mount.owner_uid >= 0 and mount.owner_gid >= 0:
        try:
            idmap.host_uid(mount.owner_uid)
        except ValueError:
            msgs.append(f"owner uid {mount.owner_uid} is not mapped by the container's id map")
        try:
            idmap.host_gid(mount.owner_gid)
        except ValueError:
            msgs.append(f"owner gid {mount.owner_gid} is not mapped by the container's id map")
    return tuple(Problem(file=file, key=where, message=m) for m in msgs)


def idmap_problems(idmap: IdMap, *, file: str = "", key: str = "idmap") -> tuple[Problem, ...]:
    """Overlapping or malformed id map ranges (LXC refuses to start such a container)."""
    msgs: list[str] = []
    for kind in ("u", "g"):
        entries = sorted((e for e in idmap.entries if e.kind == kind), key=lambda e: e.ct_start)
        if idmap.custom and not entries:
            msgs.append(f"no {kind}id ranges: a custom id map needs both u and g lines")
        for e in entries:
            if e.count <= 0 or e.ct_start < 0 or e.host_start < 0:
                msgs.append(f"bad range {e.lxc_line!r}: ids and count must be >= 0, count > 0")
        for a, b in itertools.pairwise(entries):
            if a.ct_start + a.count > b.ct_start:
                msgs.append(f"container ranges overlap: {a.lxc_line!r} and {b.lxc_line!r}")
        by_host = sorted(entries, key=lambda e: e.host_start)
        for a, b in itertools.pairwise(by_host):
            if a.host_start + a.count > b.host_start:
                msgs.append(f"host ranges overlap: {a.lxc_line!r} and {b.lxc_line!r}")
    for e in idmap.entries:
        if e.kind not in ("u", "g"):
            msgs.append(f"bad kind {e.kind!r} in {e.lxc_line!r}: use u or g")
    return tuple(Problem(file=file, key=key, message=m) for m in msgs)


def validate_bind_mount(mount: BindMount, idmap: IdMap | None = None) -> None:
    """Raise ``ConfigError`` listing every problem of ``mount`` (nothing when fine)."""
    problems = bind_mount_problems(mount, idmap)
    if problems:
        raise ConfigError(problems)


# ---------------------------------------------------------------- ownership


def normal_mode(mode: str) -> str:
    """``"0755"`` -> ``"755"``, as ``stat -c %a`` prints it."""
    return f"{int(mode, 8):o}"


def host_owner(mount: BindMount, idmap: IdMap) -> tuple[int, int]:
    """The host uid:gid that the owner inside the container maps to."""
    try:
        return idmap.host_uid(mount.owner_uid), idmap.host_gid(mount.owner_gid)
    except ValueError as e:
        raise ConfigError([Problem(file="", key=mount.key, message=str(e))]) from e


# ---------------------------------------------------------------- builders


def _sh(script: str, *args: str) -> Command:
    return cmd("sh", "-c", script, "sh", *args)


# Host paths never follow a symbolic link, in ANY component: checked on the node, as
# root, when the step runs (the guard and the command), not only in the stack file.
_NO_SYMLINK = r"""no_symlink() { # PATH: fails when a component of PATH is a symlink or no dir
  cur=; rest=${1#/}
  while [ -n "$rest" ]; do
    comp=${rest%%/*}
    case $rest in */*) rest=${rest#*/} ;; *) rest= ;; esac
    [ -n "$comp" ] || continue
    cur=$cur/$comp
    if [ -L "$cur" ]; then
      echo "refused: $cur is a symbolic link (pvestack never follows one in a host path)" >&2
      return 3
    fi
    [ -e "$cur" ] || return 0
    if [ ! -d "$cur" ]; then echo "refused: $cur is not a directory" >&2; return 3; fi
  done
}
"""

_DIR_GUARD = (
    "set -u\n"
    + _NO_SYMLINK
    + 'no_symlink "$1" 2>/dev/null || exit 1\n'
    + 'test -d "$1" && test "$(stat -c %u:%g:%a -- "$1")" = "$2"'
)

_DIR_MAKE = (
    "set -eu\npath=$1; want=$2; mode=$3; take=$4\n"
    + _NO_SYMLINK
    + r"""no_symlink "$path" || exit 3
if [ -d "$path" ]; then
  have=$(stat -c %u:%g -- "$path")
  if [ "$have" != "$want" ] && [ "$take" != 1 ] \
    && [ -n "$(find "$path" -mindepth 1 -maxdepth 1 -print -quit)" ]; then
    echo "refused: $path is not empty and belongs to $have, not $want: pvestack does not" \
      "take it over (set take_ownership = true on this mount to chown the directory" \
      "itself, never its content)" >&2
    exit 3
  fi
else
  mkdir -p -- "$path"
fi
no_symlink "$path" || exit 3
chown -h -- "$want" "$path"
chmod -- "$mode" "$path"
"""
)


def host_dir_step(mount: BindMount, idmap: IdMap) -> Step:
    """The host directory of a bind mount: made, owned by the mapped owner, with its mode.

    Only the directory itself is ever chowned, never its content. An existing,
    non-empty directory owned by someone else is refused unless the mount says
    ``take_ownership``. A symlink in any component of the path is refused.
    """
    validate_bind_mount(mount, idmap)
    uid, gid = host_owner(mount, idmap)
    mode = normal_mode(mount.mode)
    path = mount.host_path
    owner = f"{uid}:{gid}"
    take = ", taking ownership of the existing directory" if mount.take_ownership else ""
    return Step(
        id=f"host-dir:{mount.key}:{path}",
        description=(
            f"{path} owned by {owner} (uid {mount.owner_uid} in the container), mode {mode}{take}"
        ),
        guard=_sh(_DIR_GUARD, path, f"{owner}:{mode}"),
        commands=(_sh(_DIR_MAKE, path, owner, mode, "1" if mount.take_ownership else "0"),),
    )


# ``pct config`` prints "key: value"; a value is a comma-separated property string
# whose item order PVE may change, so the guard compares the sorted items.
_PCT_SET_GUARD = r"""set -u
vmid=$1; shift
cfg=$(pct config "$vmid") || exit 1
norm() { printf "%s\n" "$1" | tr , "\n" | sed "/^\$/d" | LC_ALL=C sort; }
for arg in "$@"; do
  case $arg in
    +*) kv=${arg#+}; k=${kv%%=*}; v=${kv#*=}
        have=$(printf "%s\n" "$cfg" | sed -n "s/^$k: //p" | head -n 1)
        [ "$(norm "$have")" = "$(norm "$v")" ] || exit 1 ;;
    -*) k=${arg#-}
        if printf "%s\n" "$cfg" | grep -q "^$k: "; then exit 1; fi ;;
  esac
done
exit 0"""


def pct_set_step(vmid: int, set_keys: Mapping[str, str], delete_keys: Sequence[str] = ()) -> Step:
    """``pct set VMID -key value ... [-delete k1,k2]``; done when ``pct config`` shows it."""
    for k in [*set_keys, *delete_keys]:
        if not _PCT_KEY.match(k):
            raise ValueError(f"not a container config key: {k!r}")
    argv: list[str] = ["pct", "set", str(vmid)]
    for k in sorted(set_keys):
        argv += [f"-{k}", set_keys[k]]
    if delete_keys:
        argv += ["-delete", ",".join(delete_keys)]
    what = [f"{k}={set_keys[k]}" for k in sorted(set_keys)] + [f"delete {k}" for k in delete_keys]
    return Step(
        id=f"pct-set:{vmid}:{','.join([*sorted(set_keys), *delete_keys])}",
        description=f"CT {vmid}: " + "; ".join(what),
        guard=_sh(
            _PCT_SET_GUARD,
            str(vmid),
            *(f"+{k}={set_keys[k]}" for k in sorted(set_keys)),
            *(f"-{k}" for k in delete_keys),
        ),
        commands=(cmd(*argv),),
    )


# The lxc.idmap lines of the main section (before the first [snapshot]/[pve:pending]).
_IDMAP_READ = (
    r"""awk "/^\[/{exit} /^lxc\.idmap[:=]/{sub(/^lxc\.idmap[:=][ \t]*/, \"\"); print}" "$conf" """
    + '| paste -sd ";" -'
)

_IDMAP_COMMON = r"""set -u
vmid=$1; want=$2; ranges=$3; subid=$5
dir=$4
[ -n "$dir" ] || dir=__DIR__
conf="$dir/$vmid.conf"
test -f "$conf" || { echo "no config file $conf" >&2; exit 2; }
covered() { # file kind host_start count: some root:start:count line covers the range
  awk -F: -v s="$3" -v c="$4" \
    "\$1 == \"root\" && \$2 <= s && s + c <= \$2 + \$3 {f = 1} END {exit !f}" "$1"
}
""".replace("__DIR__", CONF_DIR_EXPR)

_IDMAP_GUARD = (
    _IDMAP_COMMON
    + r"""[ "$("""
    + _IDMAP_READ
    + r""")" = "$want" ] || exit 1
for r in $ranges; do
  kind=${r%%:*}; rest=${r#*:}; s=${rest%%:*}; c=${rest#*:}
  f=$subid/subuid; [ "$kind" = g ] && f=$subid/subgid
  test -f "$f" && covered "$f" "$kind" "$s" "$c" || exit 1
done
exit 0"""
)

_IDMAP_WRITE = (
    _IDMAP_COMMON
    + r"""tmp=$(mktemp)
cleanup() { rm -f -- "$tmp"; }
trap cleanup EXIT
awk -v want="$want" "
  BEGIN { main = 1 }
  main && /^\[/ { flush(); main = 0 }
  main && /^lxc\.idmap[:=]/ { next }
  { print }
  END { if (main) flush() }
  function flush(  n, i, l) {
    n = split(want, l, \";\")
    for (i = 1; i <= n; i++) if (l[i] != \"\") print \"lxc.idmap: \" l[i]
  }" "$conf" > "$tmp"
cat "$tmp" > "$conf"
for r in $ranges; do
  kind=${r%%:*}; rest=${r#*:}; s=${rest%%:*}; c=${rest#*:}
  f=$subid/subuid; [ "$kind" = g ] && f=$subid/subgid
  touch "$f"
  covered "$f" "$kind" "$s" "$c" || printf "root:%s:%s\n" "$s" "$c" >> "$f"
done"""
)


def idmap_step(
    vmid: int, idmap: IdMap, *, conf_dir: str | None = None, subid_dir: str = "/etc"
) -> Step:
    """``lxc.idmap`` lines in the CT's config file (main section) plus the root ranges
    in /etc/subuid and /etc/subgid that allow them. A default map removes the lines.

    ``conf_dir`` pins the config directory (else looked up at run time, see the module
    doc); ``subid_dir`` is where subuid/subgid live (``/etc``)."""
    problems = idmap_problems(idmap)
    if problems:
        raise ConfigError(problems)
    lines = [e.lxc_line for e in idmap.entries] if idmap.custom else []
    want = ";".join(lines)
    ranges = " ".join(f"{e.kind}:{e.host_start}:{e.count}" for e in idmap.entries)
    args = (str(vmid), want, ranges, conf_dir or "", subid_dir)
    return Step(
        id=f"idmap:{vmid}",
        description=f"CT {vmid}: lxc.idmap "
        + ("; ".join(lines) if lines else "default (no lxc.idmap lines)")
        + ", root ranges in /etc/subuid and /etc/subgid",
        guard=_sh(_IDMAP_GUARD, *args),
        commands=(_sh(_IDMAP_WRITE, *args),),
    )


# Done when running, nothing pending, and the config file was last written no later
# than the container started (so whatever changed is in effect).
_REBOOT_GUARD = r"""set -u
vmid=$1
pct status "$vmid" | grep -qx "status: running" || exit 1
[ "$(pct config "$vmid")" = "$(pct config "$vmid" --current)" ] || exit 1
conf=__DIR__/$vmid.conf
up=$(pct status "$vmid" --verbose | sed -n "s/^uptime: //p")
[ -n "$up" ] || exit 1
[ "$(stat -c %Y "$conf")" -le "$(( $(date +%s) - up ))" ]""".replace("__DIR__", CONF_DIR_EXPR)

_REBOOT = r"""set -u
vmid=$1; timeout=$2
if pct status "$vmid" | grep -qx "status: running"; then
  pct reboot "$vmid"
else
  pct start "$vmid"
fi
i=0
until pct status "$vmid" | grep -qx "status: running"; do
  i=$((i + 1))
  if [ "$i" -gt "$timeout" ]; then echo "CT $vmid is not running after ${timeout}s" >&2; exit 1; fi
  sleep 1
done"""


def reboot_step(vmid: int, *, timeout: int = 120) -> Step:
    """Reboot a running CT (start a stopped one) so its new config takes effect; wait running."""
    return Step(
        id=f"reboot:{vmid}",
        description=f"CT {vmid}: reboot (or start) so features, mounts and id map take effect",
        guard=_sh(_REBOOT_GUARD, str(vmid)),
        commands=(_sh(_REBOOT, str(vmid), str(timeout)),),
    )


_PROBE = r"""set -u
vmid=$1; ct=$2; host=$3; uid=$4; gid=$5; want=$6; ro=$7
name=__PREFIX__$(date +%s)-$$
if [ "$ro" = 1 ]; then
  pct exec "$vmid" -- setpriv --reuid "$uid" --regid "$gid" --clear-groups test -r "$ct" || {
    echo "$ct is not readable by $uid:$gid in CT $vmid" >&2; exit 1; }
  exit 0
fi
cleanup() { rm -f -- "$host/$name"; }
trap cleanup EXIT
pct exec "$vmid" -- setpriv --reuid "$uid" --regid "$gid" --clear-groups \
  sh -c "umask 022 && : > \"\$1\"" sh "$ct/$name" || {
  echo "uid $uid cannot write to $ct in CT $vmid" >&2; exit 1; }
test -e "$host/$name" || {
  echo "the probe written to $ct in CT $vmid is not in $host on the node" >&2; exit 1; }
have=$(stat -c %u:%g -- "$host/$name")
[ "$have" = "$want" ] || {
  echo "the probe is owned by $have on the node, expected $want" >&2; exit 1; }
pct exec "$vmid" -- rm -f -- "$ct/$name"
echo "probe ok: $ct in CT $vmid -> $host as $want"
""".replace("__PREFIX__", PROBE_PREFIX)


def mount_probe_step(vmid: int, mount: BindMount, idmap: IdMap) -> Step:
    """Prove the mount works: a file written in the CT as the owner appears on the host
    path with the computed host owner, then is removed (read-only: readable by the owner)."""
    validate_bind_mount(mount, idmap)
    uid, gid = host_owner(mount, idmap)
    return Step(
        id=f"probe:{vmid}:{mount.key}",
        description=(
            f"CT {vmid}: {mount.ct_path} "
            + ("readable" if mount.read_only else "writable")
            + f" by {mount.owner_uid}:{mount.owner_gid}, seen on {mount.host_path} as {uid}:{gid}"
        ),
        guard=None,  # a check: always runs, leaves nothing behind
        commands=(
            _sh(
                _PROBE,
                str(vmid),
                mount.ct_path,
                mount.host_path,
                str(mount.owner_uid),
                str(mount.owner_gid),
                f"{uid}:{gid}",
                "1" if mount.read_only else "0",
            ),
        ),
    )
