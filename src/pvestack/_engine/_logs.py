"""`pvestack logs` and `pvestack shell`: a stack's app logs and a shell in its container,
over the guest route the stack file chooses.

* ``guest.via = "ssh"``: the container's own SSH (the pinned transport the router opens);
  the in-container argv is run directly (``shell`` without a command: the CT root's login
  shell on a PTY).
* ``guest.via = "pct"``: the node's root SSH transport: ``pct exec VMID -- ...`` (``shell``:
  ``pct enter VMID`` on a PTY, as users know it from the node's shell).

Before anything runs: the stack exists in the file, its CT carries the stack's mark and
is running, the app (for ``logs``) and the service exist. The commands are data
(``_steps.logs``); no secret is in them, and the app's secrets are masked in what the
logs print.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from pvestack._commands import Command, Secret, mask
from pvestack._daytwo import Guest, find_guest
from pvestack._engine._guest import GuestPlace, ipv4_of
from pvestack._errors import PvestackError
from pvestack._model import StackSpec
from pvestack._steps.guest import project_name
from pvestack._steps.guest_route import GuestRun, in_container
from pvestack._steps.logs import (
    NO_CONTAINER,
    TAGGED,
    LogLine,
    LogsQuery,
    logs_command,
    logs_query,
    parse_tagged,
    shell_command,
)

if TYPE_CHECKING:
    import paramiko

    from pvestack._engine._session import Session
    from pvestack.executors._stream import Terminal

#: what the CLI gets: a text line of ``docker compose logs`` (str) or a tagged ``LogLine``
LogSink = Callable[[str | LogLine], None]
TextSink = Callable[[str], None]


@dataclass(frozen=True)
class Route:
    """How one command reaches the container: over which connection, as which line."""

    client: paramiko.SSHClient
    via: str  # "ssh" (the CT's own) | "pct" (the node's root)
    where: str
    env: Mapping[str, str]

    def line(self, command: Command, vmid: int) -> str:
        """The shell line for ``command`` (a ``pct exec VMID --`` guest command)."""
        if self.via == "pct":
            return command.line
        op = in_container(command, vmid)
        if not isinstance(op, GuestRun) or op.stdin is not None:
            raise ValueError("only a plain command runs in an interactive session")
        return Command(op.argv).line  # each word through _commands.quote


def stack_spec(s: Session, name: str, *, with_app: bool) -> StackSpec:
    state = s.desired if with_app else s.containers
    for spec in state.stacks:
        if spec.name == name:
            return spec
    known = ", ".join(x.name for x in state.stacks) or "none"
    raise PvestackError(f"no stack '{name}' in {s.cfg.source_file} (stacks: {known})")


def running_guest(s: Session, spec: StackSpec) -> Guest:
    """The stack's CT (carrying its mark), running; else a clear error."""
    ct = spec.container
    guest = find_guest(s.client, spec.name, ct.node, ct.vmid)
    st = s.client.get(f"{guest.base}/status/current") or {}
    state = str(st.get("status", "unknown"))
    if state != "running":
        raise PvestackError(
            f"stack {spec.name}: CT {guest.vmid} on {guest.node} is {state}, not running",
            hint=f"start it: `pvestack apply` (or `pct start {guest.vmid}` on the node)",
        )
    return guest


def route(s: Session, spec: StackSpec, guest: Guest) -> Route:
    """The guest route of the stack file, opened (the pin checked on the SSH route)."""
    from pvestack.executors._stream import HasSshClient  # noqa: PLC0415

    if s.guest_settings.via == "ssh":
        router = s.router
        if router is None:  # (guest.via = "ssh" always makes one)
            raise PvestackError("no guest router")
        place = GuestPlace(spec.name, guest.node, guest.vmid, ipv4_of(spec))
        router.learn({guest.vmid: place})
        t = router.transport(guest.vmid)
        if not isinstance(t, HasSshClient):
            raise PvestackError(f"the guest transport of CT {guest.vmid} has no SSH session")
        return Route(t.ssh_client, "ssh", f"CT {guest.vmid} (its own SSH)", {})
    root = s.root
    if root.transport is None:
        raise PvestackError(
            f'stack {spec.name}: guest.via = "pct" needs root on the node: {root.reason}',
            hint='set [guest] via = "ssh" (straight into the container), or root.via = "ssh"',
        )
    if not isinstance(root.transport, HasSshClient):
        raise PvestackError("the root transport has no SSH session")
    env = dict(getattr(root.transport, "env", {}) or {})
    return Route(root.transport.ssh_client, "pct", "the node (root SSH, pct)", env)


class _Lines:
    """Bytes in, masked text lines out (the last partial line on ``flush``)."""

    def __init__(self, emit: TextSink, secrets: Sequence[Secret]) -> None:
        self.emit, self.secrets, self.buf = emit, tuple(secrets), b""

    def feed(self, data: bytes) -> None:
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        for one in lines:
            self.emit(mask(one.decode(errors="replace").rstrip("\r"), self.secrets))

    def flush(self) -> None:
        if self.buf:
            self.feed(b"\n")


def logs_run(
    s: Session,
    stack: str,
    *,
    service: str | None,
    follow: bool = False,
    since: str | None = None,
    tail: int | None = None,
    json: bool = False,
    on_line: LogSink,
    on_error: TextSink,
) -> None:
    """Stream the app's compose logs; raise ``PvestackError`` when the command fails.
    Ctrl-C (``KeyboardInterrupt``) ends a ``follow`` cleanly (the channel closes)."""
    from pvestack.executors._stream import stream  # noqa: PLC0415

    spec = stack_spec(s, stack, with_app=True)
    app = spec.app
    if app is None:
        raise PvestackError(
            f"stack {stack} has no app ([stack.app]): no compose project to read logs of",
            hint=f"`pvestack shell {stack}` opens a shell in its container",
        )
    q: LogsQuery = logs_query(
        service, app.services, follow=follow, since=since, tail=tail, json=json
    )
    guest = running_guest(s, spec)
    r = route(s, spec, guest)
    command = logs_command(guest.vmid, app.project_dir, project_name(spec), q)
    tagged = [q.json]

    def out_line(text: str) -> None:
        if text == TAGGED:
            tagged[0] = True
            return
        found = parse_tagged(text) if tagged[0] else None
        on_line(found if found is not None else text)

    out, err = _Lines(out_line, app.secrets), _Lines(on_error, app.secrets)
    code = stream(
        r.client, r.line(command, guest.vmid), on_stdout=out.feed, on_stderr=err.feed,
        hold_stdin=q.follow, env=r.env, where=r.where,
    )  # fmt: skip
    out.flush()
    err.flush()
    if code != 0:
        raise PvestackError(_logs_failure(stack, guest, code), hint=_logs_hint(stack, code))


def _logs_failure(stack: str, guest: Guest, code: int) -> str:
    if code == NO_CONTAINER:
        return f"stack {stack}: no container of the service runs in CT {guest.vmid}"
    if code == 127:
        return f"stack {stack}: CT {guest.vmid} has no docker compose (nor docker-compose)"
    return f"stack {stack}: reading the logs in CT {guest.vmid} failed (exit {code})"


def _logs_hint(stack: str, code: int) -> str | None:
    if code in (NO_CONTAINER, 127):
        return f"`pvestack apply` brings the app up; `pvestack status` shows {stack}'s services"
    return None


def shell_run(
    s: Session,
    stack: str,
    argv: Sequence[str],
    terminal: Terminal | None,
    *,
    on_stdout: Callable[[bytes], None],
    on_stderr: Callable[[bytes], None],
    stdin: BinaryIO | None = None,
) -> int:
    """A shell in the stack's CT: ``argv`` run without a terminal (its output handed on
    as it comes; ``stdin``, the operator's piped input, copied to it), or, with no
    ``argv``, an interactive session on ``terminal`` (refused without one). Returns the
    remote exit status."""
    from pvestack.executors._stream import interactive, stream  # noqa: PLC0415

    if not argv and terminal is None:
        raise PvestackError(
            "pvestack shell needs a terminal (stdin and stdout are not one)",
            hint=f"run one command without a terminal: pvestack shell {stack} -- CMD ARGS...",
        )
    spec = stack_spec(s, stack, with_app=False)
    guest = running_guest(s, spec)
    r = route(s, spec, guest)
    if argv:
        line = r.line(shell_command(guest.vmid, argv), guest.vmid)
        return stream(
            r.client, line, on_stdout=on_stdout, on_stderr=on_stderr, stdin=stdin, env=r.env,
            where=r.where,
        )  # fmt: skip
    if terminal is None:  # (checked above; for mypy)
        raise PvestackError("pvestack shell needs a terminal")
    enter = None if r.via == "ssh" else f"pct enter {guest.vmid}"
    return interactive(r.client, enter, terminal, env=r.env, where=r.where)
