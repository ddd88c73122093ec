"""Root on the PVE node over SSH (paramiko): the ``RootTransport`` for ``root.via = "ssh"``.

* Authentication: a key file (``key_file``) and/or the SSH agent; no passwords.
* Host key: verified against a known_hosts file or a pinned key (``ssh-ed25519 AAAA...``
  or ``SHA256:...``). Unknown hosts are refused (``RejectPolicy``) unless the user said
  ``accept_new`` (then the key is added to known_hosts, like OpenSSH's
  ``StrictHostKeyChecking=accept-new``); a changed key is always refused
  (``HostKeyError`` with how to fix it).
* A ``Step`` runs as its renderings say: the guard first (exit 0: already done, nothing
  runs), then each ``Command``; a ``Payload`` is revealed only when written to the
  channel's stdin. Output lines go to ``on_output`` as they come, masked.
* Every command has a time limit (``command_timeout``, 600 s; a ``Step`` may carry a
  longer one: apt installs, image loads) and an idle limit (``idle_timeout``: no output
  for 300 s); past either, the channel is closed and ``TransportError`` says which
  limit and which command. A long command with no output prints "still running"
  progress lines (``on_output``) every ``progress_every`` seconds.
* Failures raise ``RootStepError(command line, exit code, stderr)``, masked with
  ``_commands.mask``. Every paramiko/socket error is translated here (the one
  boundary for SSH errors).

Settings: the stack file's ``[root.ssh]`` (``open_transport(cfg)``), overridden by
``PVESTACK_SSH_HOST``, ``PVESTACK_SSH_PORT``, ``PVESTACK_SSH_USER``, ``PVESTACK_SSH_KEY``,
``PVESTACK_SSH_KNOWN_HOSTS`` (``SshSettings.with_env``); or plain values
(``SshTransport(SshSettings(host=...))``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import select
import shlex
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paramiko

from pvestack._commands import Command, Secret, Step, mask
from pvestack._errors import HostKeyError, RootStepError, TransportError
from pvestack.executors._base import CommandOutput

if TYPE_CHECKING:
    from pvestack._config import StackFile

_STDERR_KEEP = 64 * 1024  # bytes of stderr kept for an error report


@dataclass(frozen=True)
class SshSettings:
    """Where and how to reach root on the node."""

    host: str
    port: int = 22
    user: str = "root"
    key_file: str | None = None
    known_hosts: str | None = "~/.ssh/known_hosts"
    pinned_key: str | None = None  # "ssh-ed25519 AAAA..." or "SHA256:base64"
    accept_new: bool = False  # add unknown host keys to known_hosts (explicit opt-in)
    use_agent: bool = True
    connect_timeout: float = 15.0
    command_timeout: float | None = 600.0  # seconds per command, output or not
    idle_timeout: float | None = 300.0  # seconds without any output
    progress_every: float = 30.0  # "still running" lines for a silent command

    @property
    def host_key_name(self) -> str:
        """The name known_hosts uses: ``host`` on port 22, else ``[host]:port``."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def with_env(self, env: Mapping[str, str] | None = None) -> SshSettings:
        """These settings overridden by the ``PVESTACK_SSH_*`` variables that are set."""
        e = os.environ if env is None else env
        changes: dict[str, Any] = {}
        if e.get("PVESTACK_SSH_HOST"):
            changes["host"] = e["PVESTACK_SSH_HOST"]
        if e.get("PVESTACK_SSH_PORT"):
            try:
                changes["port"] = int(e["PVESTACK_SSH_PORT"])
            except ValueError as err:
                raise TransportError(
                    f"PVESTACK_SSH_PORT={e['PVESTACK_SSH_PORT']!r} is not a port number"
                ) from err
        if e.get("PVESTACK_SSH_USER"):
            changes["user"] = e["PVESTACK_SSH_USER"]
        if e.get("PVESTACK_SSH_KEY"):
            changes["key_file"] = e["PVESTACK_SSH_KEY"]
        if e.get("PVESTACK_SSH_KNOWN_HOSTS"):
            changes["known_hosts"] = e["PVESTACK_SSH_KNOWN_HOSTS"]
        return replace(self, **changes)


def key_fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _fix_hint(s: SshSettings) -> str:
    kh = s.known_hosts or "~/.ssh/known_hosts"
    port = f"-p {s.port} " if s.port != 22 else ""
    return (
        "check the node's key on the node itself "
        "(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub "
        f"in its console); if it really changed, remove the old entry with "
        f"ssh-keygen -R {shlex.quote(s.host_key_name)} -f {shlex.quote(kh)} and add the new one "
        f"(ssh-keyscan {port}{shlex.quote(s.host)} >> {shlex.quote(kh)}, after comparing the "
        f"fingerprint), or pin it"
    )


class _PinnedKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Accept exactly the pinned key (given as a fingerprint)."""

    def __init__(self, settings: SshSettings) -> None:
        self.settings = settings

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        want = (self.settings.pinned_key or "").strip()
        got = key_fingerprint(key)
        if want.rstrip("=") != got:
            raise HostKeyError(
                f"SSH host key of {self.settings.host_key_name} does not match the pinned key: "
                f"the server offered {key.get_name()} {got}, pinned {want}",
                hint=_fix_hint(self.settings),
            )


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):
    def __init__(self, settings: SshSettings) -> None:
        self.settings = settings

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        s = self.settings
        raise HostKeyError(
            f"SSH host key of {s.host_key_name} is unknown "
            f"(not in {s.known_hosts or 'any known_hosts file'}; the server offered "
            f"{key.get_name()} {key_fingerprint(key)}); refusing to connect",
            hint=(
                "compare that fingerprint with the node's own (ssh-keygen -lf "
                "/etc/ssh/ssh_host_ed25519_key.pub in its console), then add it: "
                f"ssh-keyscan {'-p ' + str(s.port) + ' ' if s.port != 22 else ''}"
                f"{shlex.quote(s.host)} >> {shlex.quote(s.known_hosts or '~/.ssh/known_hosts')}"
                " — or pin it, or allow adding new keys explicitly"
            ),
        )


class _AcceptNew(paramiko.MissingHostKeyPolicy):
    """Add an unknown key to known_hosts (the user asked for it); a changed key is still
    refused by paramiko's ``BadHostKeyException`` before this is asked."""

    def __init__(self, settings: SshSettings, path: Path) -> None:
        self.settings = settings
        self.path = path

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = f"{self.settings.host_key_name} {key.get_name()} {key.get_base64()}\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write(line)
        client.get_host_keys().add(hostname, key.get_name(), key)


def _pinned_openssh_key(pin: str) -> tuple[str, paramiko.PKey] | None:
    """``ssh-ed25519 AAAA...`` -> (type, key); a ``SHA256:`` pin -> None."""
    parts = pin.split()
    if len(parts) < 2 or pin.startswith("SHA256:"):
        return None
    try:
        key = paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1]))
    except Exception as e:  # paramiko raises several types here
        raise TransportError(f"the pinned SSH host key is not a public key: {e}") from e
    return parts[0], key


class SshTransport:
    """Runs ``Step``s and commands as root on the node over one SSH connection."""

    def __init__(self, settings: SshSettings, *, env: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.env = dict(env or {})
        self._client = self._connect(settings)

    # ------------------------------------------------------------ connection

    @staticmethod
    def _connect(s: SshSettings) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        kh_path = Path(os.path.expanduser(s.known_hosts)) if s.known_hosts else None
        try:
            if s.pinned_key:
                pinned = _pinned_openssh_key(s.pinned_key)
                if pinned is not None:
                    client.get_host_keys().add(s.host_key_name, pinned[0], pinned[1])
                    client.set_missing_host_key_policy(_RefuseUnknown(s))
                else:
                    client.set_missing_host_key_policy(_PinnedKeyPolicy(s))
            else:
                if kh_path is not None and kh_path.exists():
                    client.load_host_keys(str(kh_path))
                if s.accept_new and kh_path is not None:
                    client.set_missing_host_key_policy(_AcceptNew(s, kh_path))
                else:
                    client.set_missing_host_key_policy(_RefuseUnknown(s))
        except (OSError, paramiko.SSHException) as e:
            raise TransportError(f"cannot read known_hosts {kh_path}: {e}") from e
        key_file = os.path.expanduser(s.key_file) if s.key_file else None
        if key_file is not None and not os.path.exists(key_file):
            raise TransportError(f"SSH key file {key_file} does not exist")
        try:
            client.connect(
                s.host,
                port=s.port,
                username=s.user,
                key_filename=key_file,
                allow_agent=s.use_agent,
                look_for_keys=key_file is None,
                timeout=s.connect_timeout,
                banner_timeout=s.connect_timeout,
                auth_timeout=s.connect_timeout,
            )
        except HostKeyError:
            client.close()
            raise
        except paramiko.BadHostKeyException as e:
            client.close()
            raise HostKeyError(
                f"SSH host key of {s.host_key_name} CHANGED: the server offered "
                f"{e.key.get_name()} {key_fingerprint(e.key)}, "
                f"expected {e.expected_key.get_name()} {key_fingerprint(e.expected_key)} "
                f"(from {s.known_hosts if not s.pinned_key else 'the pinned key'}); refusing "
                "to connect (someone may be intercepting the connection)",
                hint=_fix_hint(s),
            ) from e
        except paramiko.AuthenticationException as e:
            client.close()
            how = f"key {key_file}" if key_file else "the SSH agent"
            raise TransportError(
                f"SSH authentication as {s.user}@{s.host_key_name} failed with {how}: {e}",
                hint="set root.ssh.key_file / PVESTACK_SSH_KEY to a key authorized for root "
                "on the node, or load it into ssh-agent",
            ) from e
        except (paramiko.SSHException, OSError, EOFError) as e:
            client.close()
            raise TransportError(f"SSH to {s.user}@{s.host_key_name} failed: {e}") from e
        return client

    def close(self) -> None:
        self._client.close()

    @property
    def ssh_client(self) -> paramiko.SSHClient:
        """The connection (for an interactive session: ``executors._stream``)."""
        return self._client

    def __enter__(self) -> SshTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ running

    def _exec(
        self,
        command: Command,
        *,
        on_line: Callable[[str], None] | None,
        secrets: Iterable[Secret],
        timeout: float | None = None,
    ) -> CommandOutput:
        secrets = tuple(secrets)
        limits = _Limits(
            total=timeout if timeout is not None else self.settings.command_timeout,
            idle=self.settings.idle_timeout,
            progress=self.settings.progress_every,
        )
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise TransportError(f"SSH connection to {self.settings.host_key_name} is closed")
        try:
            chan = transport.open_session()
            for k, v in self.env.items():
                chan.set_environment_variable(k, v)
            chan.exec_command(command.line)
            # stdin is fed from a thread while the output is read, so a command that
            # writes a lot before it reads all its input cannot deadlock us
            feeder = _Feeder(chan, command.stdin.reveal() if command.stdin is not None else b"")
            feeder.start()
            result = _collect(chan, on_line, secrets, limits, command)
            feeder.join(timeout=5)
            if feeder.error is not None and result.returncode == 0:
                raise feeder.error
            return result
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise TransportError(
                f"SSH to {self.settings.host_key_name} failed while running "
                f"{mask(command.line, secrets)}: {e}"
            ) from e

    def run(
        self, command: Command, *, on_output: Callable[[str], None] | None = None
    ) -> CommandOutput:
        """Run one command; raise ``RootStepError`` (masked) unless it exits 0."""
        secrets = command.stdin.secrets if command.stdin else ()
        out = self._exec(command, on_line=on_output, secrets=secrets)
        if out.returncode != 0:
            raise RootStepError(mask(command.line, secrets), out.returncode, out.stderr)
        return out

    def run_step(self, step: Step, *, on_output: Callable[[str], None] | None = None) -> bool:
        """The guard first (exit 0: done, return False); then each command (return True)."""
        if step.guard is not None:
            g = self._exec(step.guard, on_line=None, secrets=(), timeout=step.timeout)
            if g.returncode == 0:
                return False
        secrets = tuple(s for c in step.commands if c.stdin for s in c.stdin.secrets)
        for c in step.commands:
            if on_output is not None:
                on_output("$ " + _short(mask(c.line, secrets)))
            out = self._exec(c, on_line=on_output, secrets=secrets, timeout=step.timeout)
            if out.returncode != 0:
                raise RootStepError(
                    mask(c.line, secrets),
                    out.returncode,
                    out.stderr,
                    hint=f"step {step.id}: {step.description}",
                )
        return True

    def capture(self, command: Command) -> CommandOutput:
        """Run a read-only command; its output whatever the exit code."""
        secrets = command.stdin.secrets if command.stdin else ()
        return self._exec(command, on_line=None, secrets=secrets)


def _short(line: str, width: int = 160) -> str:
    """A command line for the progress display: its first line, at most ``width`` chars."""
    first, _, rest = line.partition("\n")
    if rest or len(first) > width:
        return first[:width] + " …"
    return first


class _Feeder(threading.Thread):
    def __init__(self, chan: paramiko.Channel, data: bytes) -> None:
        super().__init__(daemon=True)
        self.chan = chan
        self.data = data
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            if self.data:
                self.chan.sendall(self.data)
            self.chan.shutdown_write()
        except (paramiko.SSHException, OSError, EOFError) as e:  # the command may exit early
            self.error = e


@dataclass(frozen=True)
class _Limits:
    total: float | None  # seconds for the whole command
    idle: float | None  # seconds without output
    progress: float  # seconds between "still running" lines


def _collect(
    chan: paramiko.Channel,
    on_line: Callable[[str], None] | None,
    secrets: tuple[Secret, ...],
    limits: _Limits,
    command: Command,
) -> CommandOutput:
    out = bytearray()
    err = bytearray()
    pending = {1: bytearray(), 2: bytearray()}

    def emit(stream: int, data: bytes, final: bool = False) -> None:
        buf = pending[stream]
        buf += data
        while b"\n" in buf:
            line, _, rest = bytes(buf).partition(b"\n")
            buf[:] = rest
            if on_line is not None:
                on_line(mask(line.decode(errors="replace"), secrets))
        if final and buf:
            if on_line is not None:
                on_line(mask(buf.decode(errors="replace"), secrets))
            buf.clear()

    start = last = said = time.monotonic()
    while True:
        got = _drain(chan, out, err, emit)
        if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
            break
        now = time.monotonic()
        if got:
            last = said = now
            continue
        _check_limits(chan, limits, start, last, now, command, secrets)
        if on_line is not None and now - said >= limits.progress:
            on_line(
                f"… still running ({now - start:.0f}s): {_short(mask(command.line, secrets), 80)}"
            )
            said = now
        select.select([chan], [], [], 0.2)
    emit(1, b"", final=True)
    emit(2, b"", final=True)
    code = chan.recv_exit_status()
    chan.close()
    return CommandOutput(
        returncode=code if code >= 0 else 255,
        stdout=mask(out.decode(errors="replace"), secrets),
        stderr=mask(err.decode(errors="replace"), secrets),
    )


def _drain(
    chan: paramiko.Channel,
    out: bytearray,
    err: bytearray,
    emit: Callable[[int, bytes], None],
) -> bool:
    got = False
    while chan.recv_ready():
        data = chan.recv(32768)
        if not data:
            break
        out += data
        emit(1, data)
        got = True
    while chan.recv_stderr_ready():
        data = chan.recv_stderr(32768)
        if not data:
            break
        err += data
        if len(err) > _STDERR_KEEP:
            del err[: len(err) - _STDERR_KEEP]
        emit(2, data)
        got = True
    return got


def _check_limits(  # noqa: PLR0917
    chan: paramiko.Channel,
    limits: _Limits,
    start: float,
    last: float,
    now: float,
    command: Command,
    secrets: tuple[Secret, ...],
) -> None:
    what = None
    if limits.total is not None and now - start > limits.total:
        what = f"still running after {limits.total:g}s (its time limit)"
    elif limits.idle is not None and now - last > limits.idle:
        what = f"no output and no exit for {limits.idle:g}s"
    if what is None:
        return
    chan.close()
    raise TransportError(
        f"remote command stopped waiting: {what}: {_short(mask(command.line, secrets))}",
        hint="the command may still run on the node; check it there (ps), then re-run apply",
    )


def settings_from_config(cfg: StackFile, env: Mapping[str, str] | None = None) -> SshSettings:
    """``[root.ssh]`` of a stack file, overridden by the ``PVESTACK_SSH_*`` variables."""
    ssh = cfg.root.ssh
    base = SshSettings(
        host=ssh.host or "",
        port=ssh.port,
        user=ssh.user,
        key_file=ssh.key_file,
        known_hosts=ssh.known_hosts,
        pinned_key=getattr(ssh, "host_key", None) or getattr(ssh, "pinned_key", None),
        accept_new=bool(getattr(ssh, "accept_new", False)),
    )
    s = base.with_env(env)
    if not s.host:
        raise TransportError(
            'root.via = "ssh" needs a host: root.ssh.host in the stack file or PVESTACK_SSH_HOST'
        )
    return s


def open_transport(cfg: StackFile) -> SshTransport:
    """The engine's entry point: connect as configured (raises ``TransportError``)."""
    return SshTransport(settings_from_config(cfg))
