"""Straight into the container over SSH, as its (unprivileged) root: the guest transport
for ``guest.via = "ssh"``. Nothing passes through the node.

* The same guest ``Step``s as the ``pct`` route: ``pvestack._steps.guest_route`` takes
  the ``pct exec VMID --`` wrapper off each command, so both routes run the same
  in-container argv with the same stdin (secrets only there, revealed only when written
  to the channel). A ``pct push`` becomes a copy of the operator's local file over the
  channel (a temporary name, then ``mv``); an image step (push + ``docker load``) streams
  the tarball straight into ``docker load``'s stdin, with progress.
* Trust: the container's ed25519 host key must have exactly the fingerprint recorded in
  its description (``pvestack-hostkey: SHA256:...``, written by a root step; see
  ``pvestack._steps.guest_access``). Only ed25519 host keys are negotiated; any other
  key, or a different one, is refused with both fingerprints. There is no known_hosts
  and no "accept new".
* Time limits: connect (TCP, banner, auth) and every command (a whole-command deadline).
* paramiko is imported when a connection is opened, not when this module is.
* Errors: unreachable address -> ``TransportError`` naming the address, the reason and
  ``guest.via = "pct"``; authentication -> how to authorize the key; a failing command
  -> ``RootStepError`` (masked).

Integration: the engine opens one transport per container with ``open_guest_transport``
(key, pin, address, connection) and hands it the guest actions' steps where it now hands
them to the root transport (``run_step``/``capture`` have the ``RootTransport``
signatures).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import select
import shlex
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvestack._commands import Command, Secret, Step, mask
from pvestack._errors import GuestKeyRefused, HostKeyError, RootStepError, TransportError
from pvestack._guest_settings import GuestSettings, stack_key
from pvestack._steps.guest import DOCKER_LOAD
from pvestack._steps.guest_access import require_hostkey_record
from pvestack._steps.guest_route import GuestPush, GuestRun, guest_step
from pvestack.executors._base import CommandOutput

if TYPE_CHECKING:
    import paramiko

    from pvestack._client import PveClient

_CHUNK = 256 * 1024
_KEEP = 64 * 1024  # bytes of stdout/stderr kept
Progress = Callable[[int, int], None]  # (bytes sent, total)

# a file copy: temporary name beside the target, then rename (never half-written)
PUT_FILE = """\
set -eu
umask 077
tmp=$(mktemp "$1.pvestack.XXXXXX")
trap 'rm -f "$tmp"' EXIT
cat >"$tmp"
mv -f "$tmp" "$1"
trap - EXIT
"""


@dataclass(frozen=True)
class GuestTarget:
    """One container reached over SSH."""

    vmid: int
    host: str  # the container's address
    pinned: str  # "SHA256:..." from the host-key record
    key_file: Path  # checked private key (pvestack._guest_settings)
    port: int = 22
    connect_timeout: float = 15.0
    command_timeout: float = 1800.0

    @property
    def where(self) -> str:
        return f"CT {self.vmid} at {self.host}:{self.port}"


def fingerprint_of(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def address_from_interfaces(interfaces: Sequence[dict[str, Any]] | None) -> str | None:
    """The container's IPv4 address from ``GET /nodes/{node}/lxc/{vmid}/interfaces``.

    PVE (``PVE::LXC::get_interfaces``) answers null for a stopped CT, else one item per
    interface with ``ip-addresses`` (``ip-address-type`` inet/inet6, ``ip-address``,
    ``prefix``) and the older ``inet`` (CIDR). eth0 first; loopback and link-local never.
    """
    if not interfaces:
        return None
    ordered = sorted(interfaces, key=lambda i: (i.get("name") != "eth0", str(i.get("name"))))
    for iface in ordered:
        if iface.get("name") == "lo":
            continue
        candidates = [
            str(a.get("ip-address", ""))
            for a in iface.get("ip-addresses") or []
            if a.get("ip-address-type") == "inet"
        ]
        if not candidates and iface.get("inet"):
            candidates = [str(iface["inet"]).split("/", 1)[0]]
        for addr in candidates:
            try:
                ip = ipaddress.IPv4Address(addr)
            except ValueError:
                continue
            if not (ip.is_loopback or ip.is_link_local or ip.is_unspecified):
                return addr
    return None


def resolve_address(client: PveClient, node: str, vmid: int, ipv4: str) -> str:
    """Where to reach CT ``vmid``: the stack file's static address, else what the API
    reports for the running CT. ``TransportError`` naming the alternative otherwise."""
    static = static_address(ipv4)
    if static is not None:
        return static
    data = client.get(f"/nodes/{node}/lxc/{vmid}/interfaces")
    addr = address_from_interfaces(data)
    if addr is None:
        raise TransportError(
            f"CT {vmid} on {node} reports no IPv4 address (GET /nodes/{node}/lxc/{vmid}/"
            "interfaces: " + ("the CT is not running" if not data else "no usable address") + ")",
            hint='give the stack a static ipv4 address, or set [guest] via = "pct"',
        )
    return addr


def static_address(ipv4: str) -> str | None:
    """The address of a static ``ipv4`` setting (CIDR); None for dhcp/manual."""
    if ipv4 in ("dhcp", "manual", ""):
        return None
    return ipv4.split("/", 1)[0]


def _unreachable(t: GuestTarget, reason: str) -> TransportError:
    return TransportError(
        f"cannot reach {t.where} over SSH: {reason}",
        hint=(
            f"the operator's machine must reach {t.host} port {t.port} (routing, firewall, "
            'the container running with sshd); or set [guest] via = "pct" to go through '
            "the node's root transport instead"
        ),
    )


def _connect(t: GuestTarget) -> paramiko.SSHClient:
    import paramiko  # noqa: PLC0415  (lazy: start-up time)

    class _Pinned(paramiko.MissingHostKeyPolicy):
        def missing_host_key(
            self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
        ) -> None:
            got = fingerprint_of(key)
            if key.get_name() != "ssh-ed25519" or got != t.pinned:
                raise HostKeyError(
                    f"the SSH host key of {t.where} does not match the recorded one: "
                    f"the container offered {key.get_name()} {got}, the record "
                    f"(pvestack-hostkey in CT {t.vmid}'s description) says {t.pinned}; "
                    "refusing to connect",
                    hint=(
                        "if the container's key really changed (re-created, keys "
                        "regenerated), run the root steps again (the console script in "
                        'the node\'s shell, or root.via = "ssh") to record the new one; '
                        "if not, someone may be answering in the container's place"
                    ),
                )

    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(_Pinned())
    others = ["ssh-rsa", "rsa-sha2-256", "rsa-sha2-512", "ecdsa-sha2-nistp256",
              "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-dss"]  # fmt: skip
    try:
        client.connect(
            t.host,
            port=t.port,
            username="root",
            key_filename=str(t.key_file),
            allow_agent=False,
            look_for_keys=False,
            timeout=t.connect_timeout,
            banner_timeout=t.connect_timeout,
            auth_timeout=t.connect_timeout,
            disabled_algorithms={"keys": others},
        )
    except HostKeyError:
        client.close()
        raise
    except paramiko.AuthenticationException as e:
        client.close()
        raise GuestKeyRefused(
            f"{t.where} refused pvestack's key {t.key_file} for root: {e}",
            hint=(
                "the container's /root/.ssh/authorized_keys lacks the key: run the root "
                "steps (the console script authorizes it for containers created without "
                "ssh-public-keys), or set [guest] key_file to a key the container accepts"
            ),
        ) from e
    except TimeoutError as e:
        client.close()
        raise _unreachable(t, f"no answer within {t.connect_timeout:g}s") from e
    except paramiko.ssh_exception.NoValidConnectionsError as e:
        client.close()
        raise _unreachable(t, f"connection refused ({e})") from e
    except (paramiko.SSHException, OSError, EOFError) as e:
        client.close()
        raise _unreachable(t, str(e) or type(e).__name__) from e
    return client


class GuestSshTransport:
    """Runs guest ``Step``s (built for the pct route) directly in one container."""

    def __init__(self, target: GuestTarget) -> None:
        self.target = target
        self._client = _connect(target)

    def close(self) -> None:
        self._client.close()

    @property
    def ssh_client(self) -> paramiko.SSHClient:
        """The pinned connection (for an interactive session: ``executors._stream``)."""
        return self._client

    def __enter__(self) -> GuestSshTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ the engine's interface

    def run_step(self, step: Step, *, on_output: Callable[[str], None] | None = None) -> bool:
        """Guard first (exit 0: already done, False); then each operation (True)."""
        gs = guest_step(step, self.target.vmid)
        if gs.guard is not None and self._exec(gs.guard.argv, gs.guard.stdin).returncode == 0:
            return False
        ops = gs.ops
        if (
            len(ops) == 2
            and isinstance(ops[0], GuestPush)
            and isinstance(ops[1], GuestRun)
            and ops[1].argv[:3] == ("sh", "-c", DOCKER_LOAD)
        ):  # an image step: the tarball goes straight into docker load
            self.load_image(ops[0].source, on_output=on_output)
            return True
        secrets = tuple(s for c in step.commands if c.stdin for s in c.stdin.secrets)
        for op in ops:
            if isinstance(op, GuestPush):
                self.push(op.source, op.dest)
                continue
            line = mask(shlex.join(op.argv), secrets)
            if on_output is not None:
                on_output("$ " + line.split("\n", 1)[0][:160])
            out = self._exec(op.argv, op.stdin, on_line=on_output, secrets=secrets)
            if out.returncode != 0:
                raise RootStepError(
                    line, out.returncode, out.stderr, hint=f"step {step.id}: {step.description}"
                )
        return True

    def capture(self, command: Command) -> CommandOutput:
        """A read-only guest command (``pct exec VMID -- ...``) run directly; any exit code."""
        op = guest_step(Step("capture", "", (command,)), self.target.vmid).ops[0]
        if not isinstance(op, GuestRun):
            raise ValueError("capture takes a command, not a file copy")
        return self._exec(op.argv, op.stdin)

    # ------------------------------------------------------------ files and images

    def run(self, argv: Sequence[str], stdin: bytes | None = None) -> CommandOutput:
        """Run ``argv`` in the container (data on stdin); raise unless it exits 0."""
        out = self._exec(tuple(argv), None, raw=stdin)
        if out.returncode != 0:
            raise RootStepError(shlex.join(argv), out.returncode, out.stderr)
        return out

    def push(self, source: str, dest: str, on_progress: Progress | None = None) -> None:
        """Copy the local file ``source`` to ``dest`` in the container (temp name + rename)."""
        argv = ("sh", "-c", PUT_FILE, "sh", dest)
        out = self._exec(argv, None, path=Path(source), on_progress=on_progress)
        if out.returncode != 0:
            raise RootStepError(
                f"copy {source} to {dest} in {self.target.where}", out.returncode, out.stderr
            )

    def load_image(
        self,
        tarball: str,
        *,
        on_output: Callable[[str], None] | None = None,
        on_progress: Progress | None = None,
    ) -> None:
        """Stream a local image tarball into the container's ``docker load``."""
        path = Path(tarball)
        if not path.is_file():
            raise TransportError(f"the image tarball {tarball} is not a file on this machine")
        if on_output is not None:
            on_output(f"$ docker load < {tarball} ({path.stat().st_size} bytes over SSH)")
        out = self._exec(
            ("docker", "load"), None, path=path, on_line=on_output, on_progress=on_progress
        )
        if out.returncode != 0:
            raise RootStepError(f"docker load < {tarball}", out.returncode, out.stderr)

    # ------------------------------------------------------------ one command

    def _exec(
        self,
        argv: tuple[str, ...],
        payload: Any,
        *,
        raw: bytes | None = None,
        path: Path | None = None,
        on_line: Callable[[str], None] | None = None,
        on_progress: Progress | None = None,
        secrets: Iterable[Secret] = (),
    ) -> CommandOutput:
        import paramiko  # noqa: PLC0415  (lazy: start-up time)

        secrets = tuple(secrets) + (tuple(payload.secrets) if payload is not None else ())
        t = self.target
        line = mask(shlex.join(argv), secrets)
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise TransportError(f"the SSH connection to {t.where} is closed")
        try:
            chan = transport.open_session(timeout=t.connect_timeout)
            chan.settimeout(t.command_timeout)
            chan.exec_command(shlex.join(argv))
            data = payload.reveal() if payload is not None else (raw or b"")
            feeder = _Feeder(chan, data, path, on_progress)
            feeder.start()
            result = _collect(chan, on_line, secrets, time.monotonic() + t.command_timeout, line)
            feeder.join(timeout=5)
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise TransportError(f"SSH to {t.where} failed while running {line[:160]}: {e}") from e
        if feeder.error is not None and result.returncode == 0:
            raise TransportError(f"sending input to {line[:160]} failed: {feeder.error}")
        return result


class _Feeder(threading.Thread):
    """Writes stdin (bytes, or a local file in chunks with progress), then EOF."""

    def __init__(
        self, chan: Any, data: bytes, path: Path | None, on_progress: Progress | None
    ) -> None:
        super().__init__(daemon=True)
        self.chan, self.data, self.path, self.on_progress = chan, data, path, on_progress
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            if self.path is not None:
                total = os.path.getsize(self.path)
                sent = 0
                with open(self.path, "rb") as f:
                    while chunk := f.read(_CHUNK):
                        self.chan.sendall(chunk)
                        sent += len(chunk)
                        if self.on_progress is not None:
                            self.on_progress(sent, total)
            elif self.data:
                self.chan.sendall(self.data)
            self.chan.shutdown_write()
        except Exception as e:  # (reported by the caller; the command may exit early)
            self.error = e


def _collect(
    chan: Any,
    on_line: Callable[[str], None] | None,
    secrets: tuple[Secret, ...],
    deadline: float,
    line: str,
) -> CommandOutput:
    bufs = {1: bytearray(), 2: bytearray()}
    partial = {1: bytearray(), 2: bytearray()}

    def take(stream: int, data: bytes) -> None:
        buf = bufs[stream]
        buf += data
        if len(buf) > _KEEP:
            del buf[: len(buf) - _KEEP]
        p = partial[stream]
        p += data
        while b"\n" in p:
            one, _, rest = bytes(p).partition(b"\n")
            p[:] = rest
            if on_line is not None:
                on_line(mask(one.decode(errors="replace"), secrets))

    while True:
        while chan.recv_ready():
            take(1, chan.recv(32768))
        while chan.recv_stderr_ready():
            take(2, chan.recv_stderr(32768))
        if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
            break
        if time.monotonic() > deadline:
            chan.close()
            raise TransportError(f"timed out (the command's time limit): {line[:160]}")
        select.select([chan], [], [], 0.2)
    for stream in (1, 2):
        if partial[stream] and on_line is not None:
            on_line(mask(partial[stream].decode(errors="replace"), secrets))
    code = chan.recv_exit_status()
    chan.close()
    return CommandOutput(
        returncode=code if code >= 0 else 255,
        stdout=mask(bufs[1].decode(errors="replace"), secrets),
        stderr=mask(bufs[2].decode(errors="replace"), secrets),
    )


def open_guest_transport(
    settings: GuestSettings,
    client: PveClient,
    *,
    stack: str,
    node: str,
    vmid: int,
    ipv4: str,
    env: Mapping[str, str] | None = None,
) -> GuestSshTransport:
    """Everything the engine needs to reach CT ``vmid`` of ``stack``: the key (checked),
    the pin (the host-key record in the CT's description, read with the token), the
    address (the static ``ipv4`` or the API), then the pinned connection."""
    key = stack_key(settings, stack, env)
    config = client.get(f"/nodes/{node}/lxc/{vmid}/config")
    pinned = require_hostkey_record(str(config.get("description", "")), vmid)
    host = resolve_address(client, node, vmid, ipv4)
    return GuestSshTransport(
        GuestTarget(
            vmid=vmid,
            host=host,
            pinned=pinned,
            key_file=key.private_path,
            port=settings.port,
            connect_timeout=settings.connect_timeout,
            command_timeout=settings.command_timeout,
        )
    )
