"""`logs`/`shell`'s sessions against a real OpenSSH sshd on loopback (the fixture of
test_ssh_transport: own keys and config in a temp dir, stopped by pid):

* ``stream``: stdout and stderr handed on apart, the exit status passed through;
  Ctrl-C in a ``logs --follow`` (the real LOGS program, a stand-in ``docker`` on its
  PATH) closes the channel and the follower in the remote session ends with it.
* ``interactive``: a PTY of the local terminal's size (a local pty pair plays the
  operator's terminal), raw mode, a resize on SIGWINCH, typed input, the exit status;
  the terminal's settings restored afterwards. Over the root transport (known_hosts) and,
  as root, over the guest transport (the host key pinned by fingerprint).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import pty
import re
import shlex
import signal
import struct
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_ssh_transport import Server, sshd  # noqa: F401  (the sshd fixture)

from pvestack._steps.logs import logs_command, logs_query
from pvestack.executors._guest_ssh import GuestSshTransport, GuestTarget
from pvestack.executors._ssh import SshTransport
from pvestack.executors._stream import Terminal, interactive, stream

pytestmark = pytest.mark.contract

FAKE_DOCKER = """#!/bin/sh
case "$1 $2" in
  "compose version") exit 0 ;;
  "compose -p") echo $$ > "$PIDFILE"; while :; do echo "hermes-1  | tick"; sleep 0.2; done ;;
esac
exit 9
"""


@pytest.fixture
def root(sshd: Server) -> Iterator[SshTransport]:  # noqa: F811
    t = SshTransport(sshd.settings())
    try:
        yield t
    finally:
        t.close()


def test_stream_hands_on_both_streams_and_the_exit_status(root: SshTransport) -> None:
    out, err = bytearray(), bytearray()
    code = stream(
        root.ssh_client, "sh -c 'echo out; echo err >&2; exit 5'",
        on_stdout=out.extend, on_stderr=err.extend,
    )  # fmt: skip
    assert (code, bytes(out), bytes(err)) == (5, b"out\n", b"err\n")


def test_piped_stdin_reaches_the_command_then_eof(root: SshTransport) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB, every byte value
    out = bytearray()
    code = stream(
        root.ssh_client, "sha256sum", on_stdout=out.extend, on_stderr=out.extend,
        stdin=io.BytesIO(data),
    )  # fmt: skip
    digest = hashlib.sha256(data).hexdigest()
    assert code == 0 and out.decode().split() == [digest, "-"], out  # all of it, then EOF


def test_ctrl_c_in_a_follow_ends_the_remote_follower(root: SshTransport, tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "docker").write_text(FAKE_DOCKER)
    (bindir / "docker").chmod(0o755)
    tmp_path.chmod(0o755)
    pidfile = tmp_path / "follower.pid"
    q = logs_query("hermes", ("hermes",), follow=True)
    argv = logs_command(1, "/opt/hermes-stack", "hermes", q).argv[4:]  # in the container
    line = f"PATH={bindir}:/usr/bin:/bin PIDFILE={pidfile} " + shlex.join(argv)
    seen: list[bytes] = []

    def on_out(data: bytes) -> None:
        seen.append(data)
        if b"tick" in b"".join(seen):
            raise KeyboardInterrupt  # as Ctrl-C arrives in the CLI's loop

    with pytest.raises(KeyboardInterrupt):
        stream(root.ssh_client, line, on_stdout=on_out, on_stderr=seen.append, hold_stdin=True)
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists(), "the follower outlived the session"
    # the connection stays usable
    assert stream(root.ssh_client, "true", on_stdout=seen.append, on_stderr=seen.append) == 0


def _shown(text: str) -> list[str]:
    """The lines a terminal shows (escape sequences and carriage returns resolved)."""
    plain = re.sub(r"\x1b\[[?0-9;]*[A-Za-z]", "", text)
    return [ln.rstrip("\r").rsplit("\r", 1)[-1] for ln in plain.split("\n")]


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _drive(transport_client: object, line: str | None, keys: list[bytes]) -> tuple[int, str]:
    """Run ``interactive`` on a local pty pair; type ``keys`` (a resize before the last)."""
    master, slave = pty.openpty()
    _set_size(slave, 33, 111)
    before = termios.tcgetattr(slave)
    got = bytearray()

    def reader() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            got.extend(data)

    def typist() -> None:
        for i, k in enumerate(keys):
            time.sleep(1.0)
            if i == len(keys) - 1:
                _set_size(slave, 40, 120)
                os.kill(os.getpid(), signal.SIGWINCH)
                time.sleep(0.5)
            os.write(master, k)

    threads = [threading.Thread(target=f, daemon=True) for f in (reader, typist)]
    for t in threads:
        t.start()
    try:
        code = interactive(transport_client, line, Terminal(slave, slave, "xterm"))  # type: ignore[arg-type]
        time.sleep(0.3)
        assert termios.tcgetattr(slave) == before  # the terminal's settings restored
    finally:
        os.close(slave)
        threads[1].join(timeout=10)
        os.close(master)
        threads[0].join(timeout=5)
    return code, got.decode(errors="replace")


def test_a_pty_session_types_resizes_and_passes_the_exit_status(root: SshTransport) -> None:
    code, text = _drive(
        root.ssh_client, None, [b"stty size\r", b"echo $((6*7))\r", b"stty size; exit 3\r"]
    )
    assert code == 3, text
    shown = _shown(text)
    assert "33 111" in shown, text
    assert "42" in shown, text
    assert "40 120" in shown, text  # SIGWINCH -> window-change


def test_a_command_on_a_pty(root: SshTransport) -> None:
    code, text = _drive(root.ssh_client, "tty; read x; exit 7", [b"go\r"])
    assert code == 7 and "/dev/pts/" in text, text


def test_the_guest_transport_lends_its_pinned_connection(sshd: Server) -> None:  # noqa: F811
    if os.geteuid() != 0 or sshd.user != "root":
        pytest.skip("the guest transport logs in as root")
    import paramiko  # noqa: PLC0415

    from pvestack.executors._guest_ssh import fingerprint_of  # noqa: PLC0415

    host = paramiko.Ed25519Key(filename=str(sshd.dir / "host_ed25519"))
    target = GuestTarget(
        vmid=118, host="127.0.0.1", pinned=fingerprint_of(host), key_file=sshd.client_key,
        port=sshd.port, connect_timeout=10,
    )  # fmt: skip
    with GuestSshTransport(target) as g:
        code, text = _drive(g.ssh_client, None, [b"echo $((6*7)); exit 3\r"])
    assert code == 3 and "42" in _shown(text), text
