"""What `pvestack logs` and `pvestack shell` run in a container, as data (pure builders).

``logs_command`` is one guest ``Command`` (``pct exec VMID -- sh -c LOGS sh ARGS...``,
the form every guest command has; the SSH route takes the wrapper off): the program is
fixed text and every user value (project dir and name, ``--since``, ``--tail``, the
service) travels as its own argument, validated here first, never spliced into shell
text. No secret is in it: logs read only.

The program uses ``docker compose logs`` (the v2 plugin, or Debian's ``docker-compose``
v1) for the plain text form. The tagged form (``--json``, and ``--since`` on v1, which
has no ``--since``) reads each service's containers with ``docker logs`` (the compose
labels name them) and prints ``SERVICE<TAB>LINE``; ``parse_tagged`` turns such a line into
a ``LogLine``. ``--follow`` also starts a watcher that ends everything when its stdin
closes (the operator's Ctrl-C closes the channel): it stops exactly the processes the
program started (their pids; never a process group), nothing is left running in the CT.

``shell_command`` is the one command of ``pvestack shell STACK -- CMD...`` (argv as
given, each word quoted when the route renders it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pvestack._commands import Command, cmd
from pvestack._errors import PvestackError

#: a compose service name (compose-spec: ``[a-zA-Z0-9._-]+``, first character alnum)
SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
#: what ``docker logs --since`` accepts: a Go duration (``10m``, ``1h30m``), a Unix time,
#: or an RFC 3339 date/time (``2026-12-02``, ``2026-12-02T07:00:00Z``, offsets)
_DURATION = re.compile(r"(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+")
_UNIX = re.compile(r"\d{1,12}(\.\d{1,9})?")
_DATE = re.compile(
    r"\d{4}-\d{2}-\d{2}"
    r"(T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})?)?"
)
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")

# $1 project dir, $2 project name, $3 text|tagged, $4 follow (1/0), $5 since ("" none),
# $6 tail ("all" or N), $7 the service ("" or none: all of them).
LOGS = """\
set -u
dir=$1 project=$2 form=$3 follow=$4 since=$5 tail=$6 svc=${7:-}
if docker compose version >/dev/null 2>&1; then v=2
elif docker-compose version >/dev/null 2>&1; then v=1; [ -z "$since" ] || form=tagged
else
  echo "pvestack: no docker compose (plugin) and no docker-compose in the container" >&2
  exit 127
fi
compose() {
  [ "$v" = 1 ] || exec docker compose -p "$project" -f "$dir/compose.yml" "$@"
  exec docker-compose -p "$project" -f "$dir/compose.yml" "$@"
}
pids='' w=''
watch() {  # follow: when stdin ends (the operator left), stop what reads the logs
  [ "$follow" = 1 ] || return 0
  exec 3<&0
  # shellcheck disable=SC2086
  (cat <&3 >/dev/null; kill $pids 2>/dev/null) &
  w=$!
}
if [ "$form" = text ]; then
  set -- --no-color --tail "$tail"
  [ "$follow" = 0 ] || set -- "$@" --follow
  [ -z "$since" ] || set -- "$@" --since "$since"
  [ -z "$svc" ] || set -- "$@" "$svc"
  compose logs "$@" &
  pids=$!
  watch
  wait "$pids"
  rc=$?
  [ -z "$w" ] || kill "$w" 2>/dev/null
  exit "$rc"
fi
set -- --timestamps --tail "$tail"
[ "$follow" = 0 ] || set -- "$@" --follow
[ -z "$since" ] || set -- "$@" --since "$since"
echo '#pvestack-logs: tagged'
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
n=0 readers=
for pair in $(docker ps -a --filter "label=com.docker.compose.project=$project" \\
    --format '{{.Label "com.docker.compose.service"}}/{{.Names}}'); do
  s=${pair%%/*} c=${pair#*/}
  [ -z "$svc" ] || [ "$s" = "$svc" ] || continue
  n=$((n + 1))
  mkfifo "$tmp/$n"
  while IFS= read -r l || [ -n "$l" ]; do printf '%s\\t%s\\n' "$s" "$l"; done <"$tmp/$n" &
  readers="$readers $!"
  docker logs "$@" "$c" >"$tmp/$n" 2>&1 &
  pids="$pids $!"
done
if [ "$n" = 0 ]; then
  echo "pvestack: no container of ${svc:-any service} in compose project $project (not up?)" >&2
  exit 3
fi
watch
# shellcheck disable=SC2086
wait $readers
[ -z "$w" ] || kill "$w" 2>/dev/null
exit 0
"""

#: the first stdout line of the tagged form
TAGGED = "#pvestack-logs: tagged"
#: exit status of LOGS when no container matched (the service is declared but not up)
NO_CONTAINER = 3


@dataclass(frozen=True)
class LogsQuery:
    """``pvestack logs``'s options, validated (``logs_query``)."""

    service: str | None = None
    follow: bool = False
    since: str | None = None
    tail: int | None = None  # None: all lines
    json: bool = False


@dataclass(frozen=True)
class LogLine:
    """One line of the tagged form."""

    service: str
    message: str
    time: str | None = None  # RFC 3339, as docker prints it with --timestamps

    def to_json(self) -> dict[str, str | None]:
        return {"service": self.service, "time": self.time, "message": self.message}


def check_service(name: str, known: Sequence[str]) -> str:
    """``name`` when it is a service of the app; ``PvestackError`` listing them otherwise."""
    listed = ", ".join(known) or "none"
    if not SERVICE_NAME.fullmatch(name):
        raise PvestackError(
            f"{name!r} is not a compose service name (letters, digits, '.', '_', '-')",
            hint=f"the app's services: {listed}",
        )
    if name not in known:
        raise PvestackError(f"the app has no service '{name}' (its services: {listed})")
    return name


def check_since(value: str) -> str:
    """``value`` when docker's ``--since`` takes it (duration, Unix time, RFC 3339)."""
    if _DURATION.fullmatch(value) or _UNIX.fullmatch(value) or _DATE.fullmatch(value):
        return value
    raise PvestackError(
        f"--since {value!r}: not a time docker understands",
        hint="a duration (10m, 1h30m), a Unix time (1764662400) or an RFC 3339 date/time "
        "(2026-12-02, 2026-12-02T07:00:00Z)",
    )


def logs_query(
    service: str | None,
    known: Sequence[str],
    *,
    follow: bool = False,
    since: str | None = None,
    tail: int | None = None,
    json: bool = False,
) -> LogsQuery:
    """The options checked (service name and existence, ``--since``, ``--tail``)."""
    if tail is not None and tail < 0:
        raise PvestackError(f"--tail {tail}: give 0 or more lines")
    return LogsQuery(
        service=check_service(service, known) if service is not None else None,
        follow=follow,
        since=check_since(since) if since else None,
        tail=tail,
        json=json,
    )


def logs_command(vmid: int, project_dir: str, project: str, q: LogsQuery) -> Command:
    """The guest command of ``q`` for the compose project ``project`` in ``project_dir``."""
    return cmd(
        "pct", "exec", str(vmid), "--", "sh", "-c", LOGS, "sh", project_dir, project,
        "tagged" if q.json else "text", "1" if q.follow else "0", q.since or "",
        "all" if q.tail is None else str(q.tail), q.service or "",
    )  # fmt: skip


def parse_tagged(line: str) -> LogLine | None:
    """``SERVICE<TAB>[TIME ]MESSAGE`` -> ``LogLine`` (None: not a tagged line)."""
    service, tab, rest = line.partition("\t")
    if not tab or not SERVICE_NAME.fullmatch(service):
        return None
    stamp, _, message = rest.partition(" ")
    if _TIME.fullmatch(stamp):
        return LogLine(service, message, stamp)
    return LogLine(service, rest)


def shell_command(vmid: int, argv: Sequence[str]) -> Command:
    """``pvestack shell STACK -- CMD...``: ``CMD`` run as the CT's root (no terminal)."""
    if not argv:
        raise PvestackError("shell: an empty command after --")
    return cmd("pct", "exec", str(vmid), "--", *argv)
