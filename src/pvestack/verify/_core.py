"""The values and the context every check shares.

Reads go through three doors only: ``api_get`` (the token, read-only), a transport's
``capture`` (``pct exec`` on the node, or straight into the container) and, from the
operator's machine, ``http`` (plain HTTP to a container's address). Every text that
leaves here is masked with the stack's secrets.

A check that cannot run (no transport, the container unreachable) is ``unverified``
with the reason, never a pass: the report is not ok. Only optional checks (a
platform without a token, a read-only mount) are ``skip``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from pvestack._commands import Command, Secret, cmd, mask
from pvestack._errors import CannotRun, PvestackError
from pvestack._model import StackSpec
from pvestack.executors._base import CommandOutput, RootTransport

ApiGet = Callable[[str], Any]

# How long a check waits for an app that is still starting (just applied or restarted)
STARTUP_WAIT = 90.0

NO_ROOT = (
    "no transport into the container: this check runs a command inside it; configure "
    "[root.ssh] (or PVESTACK_SSH_*) or a guest transport to run it"
)


class Status(StrEnum):
    PASS = "pass"  # noqa: S105 (a status, not a password)
    FAIL = "fail"
    SKIP = "skip"  # optional, or not run because a check it needs failed
    UNVERIFIED = "unverified"  # required, but it could not run (the reason says why)


@dataclass(frozen=True)
class CheckResult:
    stack: str
    id: str
    title: str
    status: Status
    evidence: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return {
            "stack": self.stack,
            "id": self.id,
            "title": self.title,
            "status": self.status.value,
            "evidence": self.evidence,
            "fix": self.fix,
        }


@dataclass(frozen=True)
class VerifyReport:
    results: tuple[CheckResult, ...]

    @property
    def ok(self) -> bool:
        bad = (Status.FAIL, Status.UNVERIFIED)
        return all(r.status not in bad for r in self.results)

    def failed(self) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if r.status is Status.FAIL)

    def unverified(self) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if r.status is Status.UNVERIFIED)

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": 1,
            "ok": self.ok,
            "checks": [r.to_json() for r in self.results],
        }


@dataclass(frozen=True)
class HttpAnswer:
    status: int  # 0: no HTTP answer (see error)
    body: str
    error: str = ""  # why there is no answer
    refused: bool = False  # the address answered, nothing listens on the port


class Http(Protocol):
    def __call__(
        self, method: str, url: str, *, key: Secret | None = None, body: Any = None
    ) -> HttpAnswer: ...


def http_request(
    method: str, url: str, *, key: Secret | None = None, body: Any = None, timeout: float = 120
) -> HttpAnswer:
    """Plain HTTP from the operator's machine (the key only in a header)."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if key is not None:
        headers["Authorization"] = "Bearer " + key.value
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 (http(s) only)
            return HttpAnswer(r.status, r.read(200_000).decode(errors="replace"))
    except urllib.error.HTTPError as e:
        return HttpAnswer(e.code, e.read(2000).decode(errors="replace"))
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        refused = isinstance(reason, ConnectionRefusedError)
        return HttpAnswer(0, "", str(reason), refused=refused)


class Ctx:
    def __init__(
        self,
        stack: StackSpec,
        vmid: int,
        api_get: ApiGet,
        transport: RootTransport | None,
        secrets: Sequence[Secret],
        *,
        http: Http = http_request,
        node_root: bool = True,
    ) -> None:
        self.stack = stack
        self.node_root = node_root and transport is not None  # node commands can run
        self.vmid = vmid
        self.api_get = api_get
        self.transport = transport
        self.secrets = tuple(secrets)
        self.http = http
        self.base = f"/nodes/{stack.container.node}/lxc/{vmid}"
        self.startup_wait = STARTUP_WAIT

    def result(
        self, cid: str, title: str, status: Status, evidence: str, fix: str = ""
    ) -> CheckResult:
        return CheckResult(
            self.stack.name,
            cid,
            title,
            status,
            mask(evidence.strip(), self.secrets),
            mask(fix, self.secrets),
        )

    def pct(self, *argv: str) -> Command:
        return cmd("pct", "exec", str(self.vmid), "--", *argv)

    def capture(self, command: Command) -> CommandOutput:
        """Run a read-only command; ``CannotRun`` when there is no way in. Unmasked."""
        if self.transport is None:
            raise CannotRun(NO_ROOT)
        try:
            return self.transport.capture(command)
        except PvestackError as e:
            raise CannotRun(f"could not reach CT {self.vmid}: {e}") from None

    def run(self, command: Command) -> CommandOutput:
        out = self.capture(command)
        return CommandOutput(
            out.returncode, mask(out.stdout, self.secrets), mask(out.stderr, self.secrets)
        )


def json_line(text: str) -> dict[str, Any]:
    """The last line of ``text`` as a JSON object ({} when it is not one)."""
    lines = text.strip().splitlines()
    try:
        got = json.loads(lines[-1]) if lines else {}
    except ValueError:
        return {}
    return got if isinstance(got, dict) else {}


def address(ctx: Ctx) -> str:
    """The container's IPv4 address: the stack file's static one, else the API's
    ``interfaces``, else ``ip`` inside. ``CannotRun`` when none is known."""
    net0 = str(ctx.stack.container.api_config.get("net0", ""))
    for part in net0.split(","):
        if part.startswith("ip=") and part[3:] not in ("dhcp", "manual"):
            return part[3:].split("/")[0]
    try:
        ifaces = ctx.api_get(f"{ctx.base}/interfaces")
    except PvestackError:
        ifaces = None
    for i in ifaces if isinstance(ifaces, list) else []:
        inet = str(i.get("inet", "")) if isinstance(i, Mapping) else ""
        if i.get("name") != "lo" and inet:
            return inet.split("/")[0]
    out = ctx.run(ctx.pct("ip", "-4", "-o", "addr", "show", "scope", "global"))
    for line in out.stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            return fields[fields.index("inet") + 1].split("/")[0]
    raise CannotRun(f"no IPv4 address known for CT {ctx.vmid} (static ip, API, or inside)")
