"""Sessions a user watches or types into, over an SSH connection pvestack already opened
(the node's root transport, or a container's pinned guest transport):

* ``stream``: one command, its output handed on as it comes, no time limit (``logs
  --follow`` runs until Ctrl-C); stdin is closed at once, or held open (``hold_stdin``)
  so the command can tell when the operator left (its stdin reaches EOF when the channel
  closes). Ctrl-C (``KeyboardInterrupt``) closes the channel and is raised again.
* ``interactive``: a terminal session as ``ssh -t``/``pct enter`` give it: a PTY of the
  local terminal's type and size (kept in step on SIGWINCH), the local terminal in raw
  mode (Ctrl-C, Ctrl-D, arrows go to the remote side), restored on every way out; the
  remote exit status is returned.
* ``stream(..., stdin=FILE)``: the operator's piped stdin copied to the command
  (``pvestack shell STACK -- CMD < file``), then EOF.

The connection's trust (known_hosts or the pinned host key) was settled when it was
opened; these functions only open channels on it. paramiko errors become
``TransportError`` here.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, runtime_checkable

from pvestack._errors import TransportError

if TYPE_CHECKING:
    import paramiko

_CHUNK = 32768
Sink = Callable[[bytes], None]


@runtime_checkable
class HasSshClient(Protocol):
    """A transport that can lend its SSH connection (``SshTransport``,
    ``GuestSshTransport``)."""

    @property
    def ssh_client(self) -> paramiko.SSHClient: ...


@dataclass(frozen=True)
class Terminal:
    """The operator's terminal: its file descriptors and ``TERM``."""

    stdin_fd: int
    stdout_fd: int
    term: str = "xterm"


def _channel(client: paramiko.SSHClient, env: Mapping[str, str], where: str) -> paramiko.Channel:
    transport = client.get_transport()
    if transport is None or not transport.is_active():
        raise TransportError(f"the SSH connection to {where} is closed")
    chan = transport.open_session()
    for k, v in env.items():
        chan.set_environment_variable(k, v)
    return chan


def _status(chan: paramiko.Channel) -> int:
    code = chan.recv_exit_status()
    return code if code >= 0 else 255


def _feed(chan: paramiko.Channel, source: BinaryIO) -> None:
    """Copy ``source`` to the channel's stdin, then EOF (a thread: output is read meanwhile)."""
    try:
        while chunk := source.read1(_CHUNK) if hasattr(source, "read1") else source.read(_CHUNK):
            chan.sendall(chunk)
        chan.shutdown_write()
    except (OSError, EOFError):
        pass  # the command ended first; its exit status tells


def stream(
    client: paramiko.SSHClient,
    line: str,
    *,
    on_stdout: Sink,
    on_stderr: Sink,
    hold_stdin: bool = False,
    stdin: BinaryIO | None = None,
    env: Mapping[str, str] | None = None,
    where: str = "the node",
) -> int:
    """Run the shell command ``line``; hand its output on as it comes; its exit status.
    ``stdin``: copied to the command's stdin (then EOF); else it is closed at once, or
    held open (``hold_stdin``) until the channel closes."""
    import paramiko  # noqa: PLC0415  (lazy: start-up time)

    try:
        chan = _channel(client, env or {}, where)
        chan.exec_command(line)
        if stdin is not None:
            threading.Thread(target=_feed, args=(chan, stdin), daemon=True).start()
        elif not hold_stdin:
            chan.shutdown_write()
        try:
            while True:
                while chan.recv_ready():
                    on_stdout(chan.recv(_CHUNK))
                while chan.recv_stderr_ready():
                    on_stderr(chan.recv_stderr(_CHUNK))
                if chan.exit_status_ready() and not (chan.recv_ready() or chan.recv_stderr_ready()):
                    break
                select.select([chan], [], [], 0.5)
            return _status(chan)
        finally:
            chan.close()  # on Ctrl-C too: the remote side sees its stdin end
    except (paramiko.SSHException, OSError, EOFError) as e:
        raise TransportError(f"SSH to {where} failed while running {line[:120]}: {e}") from e


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def interactive(
    client: paramiko.SSHClient,
    line: str | None,
    terminal: Terminal,
    *,
    env: Mapping[str, str] | None = None,
    where: str = "the node",
) -> int:
    """A PTY session: the login shell (``line`` None) or ``line``; its exit status."""
    import signal  # noqa: PLC0415
    import termios  # noqa: PLC0415
    import tty  # noqa: PLC0415

    import paramiko  # noqa: PLC0415  (lazy: start-up time)

    size = os.get_terminal_size(terminal.stdout_fd)
    try:
        chan = _channel(client, env or {}, where)
        chan.get_pty(term=terminal.term, width=size.columns, height=size.lines)
        if line is None:
            chan.invoke_shell()
        else:
            chan.exec_command(line)
    except (paramiko.SSHException, OSError, EOFError) as e:
        raise TransportError(f"SSH to {where}: no terminal session: {e}") from e

    def resize(_sig: int, _frame: object) -> None:
        s = os.get_terminal_size(terminal.stdout_fd)
        with contextlib.suppress(paramiko.SSHException):  # the session is ending
            chan.resize_pty(width=s.columns, height=s.lines)

    saved = termios.tcgetattr(terminal.stdin_fd)
    previous = signal.signal(signal.SIGWINCH, resize)
    try:
        tty.setraw(terminal.stdin_fd)
        _pump(chan, terminal)
        return _status(chan)
    except (paramiko.SSHException, OSError, EOFError) as e:
        raise TransportError(f"the terminal session with {where} broke: {e}") from e
    finally:
        termios.tcsetattr(terminal.stdin_fd, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, previous)
        chan.close()


def _pump(chan: paramiko.Channel, terminal: Terminal) -> None:
    """Keystrokes to the channel, its output to the terminal, until the remote side ends."""
    reading: list[Any] = [chan, terminal.stdin_fd]
    while True:
        ready, _, _ = select.select(reading, [], [])
        if chan in ready:
            data = chan.recv(_CHUNK)
            if not data:
                return
            _write_all(terminal.stdout_fd, data)
        if terminal.stdin_fd in ready:
            keys = os.read(terminal.stdin_fd, 4096)
            if keys:
                chan.sendall(keys)
            else:  # the local side closed: no more input
                chan.shutdown_write()
                reading = [chan]
