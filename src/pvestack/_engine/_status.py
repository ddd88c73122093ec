"""`pvestack status`'s app side, read over the guest route, and the last verify result,
kept IN the container (the live cluster stays the state; nothing on the operator's machine).

* ``record_verify``: after ``pvestack verify`` and apply's verify, each stack's result
  (ok, counts, when) is written to ``/var/lib/pvestack/last-verify.json`` in its running
  CT (a guest step: temp file, then rename). A CT that cannot be reached is skipped, with
  a note.
* ``app_probe``: the ``_daytwo.AppProbe`` for ``stack_status``: one read-only guest command
  lists the compose project's containers (service, state, running image, health) and prints
  that file; the wanted image is the stack file's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from pvestack._commands import Payload, Step
from pvestack._daytwo import (
    AppProbe,
    AppService,
    AppStatus,
    Guest,
    StackStatus,
    find_guest,
    stack_status,
)
from pvestack._engine._guest import GuestPlace, ipv4_of
from pvestack._engine._session import Session
from pvestack._errors import PvestackError, SecretError
from pvestack._model import StackSpec
from pvestack._steps.guest import pct_sh, project_name
from pvestack.executors import GuestTransport
from pvestack.verify import VerifyReport

LAST_VERIFY = "/var/lib/pvestack/last-verify.json"

# $1 the compose project, $2 the last-verify file: one line a container
# (service TAB state TAB image TAB docker's status text), then the file after a marker.
APP_STATUS = """\
docker ps -a --filter "label=com.docker.compose.project=$1" \\
  --format '{{.Label "com.docker.compose.service"}}\t{{.State}}\t{{.Image}}\t{{.Status}}' \\
  2>/dev/null || echo '#no-docker'
echo '#last-verify'
cat "$2" 2>/dev/null
exit 0
"""

# $1 the file: stdin written to a temp name beside it, then renamed
PUT = """\
set -eu
mkdir -p "${1%/*}"
cat >"$1.tmp"
mv -f "$1.tmp" "$1"
"""


@dataclass(frozen=True)
class LastVerify:
    ok: bool
    at: str  # ISO 8601, UTC
    passed: int
    failed: int
    unverified: int

    def text(self) -> str:
        word = "ok" if self.ok else "failed"
        return f"{word} at {self.at} ({self.passed} pass, {self.failed} fail, " \
            f"{self.unverified} unverified)"  # fmt: skip


def _health(status_text: str) -> str:
    for h in ("unhealthy", "healthy", "health: starting"):
        if f"({h})" in status_text:
            return h.removeprefix("health: ")
    return ""


def parse_app_status(out: str, wanted: Mapping[str, str]) -> AppStatus:
    """``APP_STATUS``'s output -> ``AppStatus`` (services sorted by name)."""
    services: list[AppService] = []
    head, _, tail = out.partition("#last-verify\n")
    if "#no-docker" in head:
        return AppStatus(error="docker does not answer in the container")
    for line in head.splitlines():
        parts = line.split("\t")
        if len(parts) != 4 or not parts[0]:
            continue
        name, state, image, text = parts
        services.append(AppService(name, image, wanted.get(name, ""), state, _health(text)))
    last = ""
    try:
        data = json.loads(tail) if tail.strip() else None
        if isinstance(data, dict):
            last = LastVerify(**data).text()
    except (ValueError, TypeError):
        last = "unreadable"
    return AppStatus(tuple(sorted(services, key=lambda x: x.name)), last_verify=last)


def _wanted(spec: StackSpec) -> dict[str, str]:
    """service -> the image the stack file wants (the recipe's first image for each
    service: the recipes run one image per app)."""
    app = spec.app
    if app is None or not app.images:
        return {}
    return {svc: app.images[0].ref for svc in app.services}


def _transport_for(s: Session, spec: StackSpec, guest: Guest) -> GuestTransport:
    t = s.root.guest_transport
    if t is None:
        raise PvestackError(f"no route into CT {guest.vmid}: {s.root.reason}")
    router = s.router
    if router is not None:
        router.learn({guest.vmid: GuestPlace(spec.name, guest.node, guest.vmid, ipv4_of(spec))})
    return t


def app_probe(s: Session, specs: Mapping[str, StackSpec]) -> AppProbe:
    def probe(guest: Guest) -> AppStatus:
        spec = specs[guest.stack]
        try:
            t = _transport_for(s, spec, guest)
            capture = getattr(t, "capture", None)
            if capture is None:
                return AppStatus(error="the guest route cannot read")
            c = pct_sh(guest.vmid, APP_STATUS, project_name(spec), LAST_VERIFY)
            out = capture(c)
        except PvestackError as e:
            return AppStatus(error=str(e))
        if out.returncode != 0:
            return AppStatus(error=f"exit {out.returncode}: {out.stderr.strip()[:200]}")
        return parse_app_status(out.stdout, _wanted(spec))

    return probe


def verify_record(ok: bool, passed: int, failed: int, unverified: int, at: datetime) -> str:
    at_text = at.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    return json.dumps(LastVerify(ok, at_text, passed, failed, unverified).__dict__) + "\n"


def record_step(vmid: int, record: str) -> Step:
    return Step(
        f"ct{vmid}:last-verify",
        f"record the verify result in {LAST_VERIFY}",
        (pct_sh(vmid, PUT, LAST_VERIFY, stdin=Payload.text(record)),),
    )


def record_verify(
    s: Session, counts: Mapping[str, tuple[int, int, int]], at: datetime
) -> tuple[str, ...]:
    """Write each stack's (pass, fail, unverified) counts into its running CT; notes for
    those that could not be written."""
    notes = []
    for spec in s.containers.stacks:
        if spec.name not in counts:
            continue
        passed, failed, unverified = counts[spec.name]
        ok = failed == 0 and unverified == 0
        try:
            guest = find_guest(s.client, spec.name, spec.container.node, spec.container.vmid)
            st = s.client.get(f"{guest.base}/status/current") or {}
            if st.get("status") != "running":
                continue
            t = _transport_for(s, spec, guest)
            rec = verify_record(ok, passed, failed, unverified, at)
            t.run_step(record_step(guest.vmid, rec))
        except PvestackError as e:
            notes.append(f"{spec.name}: the verify result is not recorded in the CT: {e}")
    return tuple(notes)


def verify_counts(report: VerifyReport) -> dict[str, tuple[int, int, int]]:
    """stack -> (pass, fail, unverified) of a verify report."""
    out: dict[str, list[int]] = {}
    index = {"pass": 0, "fail": 1, "unverified": 2}
    for r in report.results:
        counts = out.setdefault(r.stack, [0, 0, 0])
        if r.status.value in index:
            counts[index[r.status.value]] += 1
    return {k: (v[0], v[1], v[2]) for k, v in out.items()}


def record_report(s: Session, report: VerifyReport) -> tuple[str, ...]:
    """Each stack's result of ``report`` kept in its CT (after ``verify`` and ``apply``)."""
    return record_verify(s, verify_counts(report), datetime.now(UTC))


def verify_and_record_run(s: Session) -> tuple[VerifyReport, tuple[str, ...]]:
    """``pvestack verify``: the checks, then each stack's result kept in its CT."""
    from pvestack._engine._workflows import verify_run  # noqa: PLC0415  (it imports us)

    report = verify_run(s)
    return report, record_report(s, report)


def status_run(s: Session) -> list[StackStatus]:
    """``pvestack status``: every stack of the file, its app read over the guest route
    (without the app's secrets at hand, the wanted images stay unknown)."""
    try:
        stacks = s.desired.stacks
    except SecretError:
        stacks = s.containers.stacks
    specs = {x.name: x for x in stacks}
    probe = app_probe(s, specs)
    return [
        stack_status(s.client, x.name, x.container.node, x.container.vmid, probe) for x in stacks
    ]
