"""The guest route's pin on a real SSH handshake (a paramiko server on loopback): a
container whose host key differs from the recorded fingerprint is refused before any
authentication, with both fingerprints and what to do; a closed port names the
address, the reason and ``[guest] via = "pct"``."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from pvestack._errors import HostKeyError, TransportError
from pvestack._guest_settings import ensure_stack_key
from pvestack.executors._guest_ssh import GuestSshTransport, GuestTarget, fingerprint_of


class _Server(paramiko.ServerInterface):
    def get_allowed_auths(self, username: str) -> str:
        return "publickey"


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[tuple[int, paramiko.PKey]]:
    """One SSH server connection on loopback, with an ed25519 host key."""
    host_key = paramiko.Ed25519Key(
        filename=str(ensure_stack_key("host", {"XDG_CONFIG_HOME": str(tmp_path)}).private_path)
    )
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = int(listener.getsockname()[1])
    transports: list[paramiko.Transport] = []

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        t = paramiko.Transport(conn)
        t.add_server_key(host_key)
        transports.append(t)
        with contextlib.suppress(paramiko.SSHException, EOFError, OSError):
            t.start_server(server=_Server())

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        yield port, host_key
    finally:
        listener.close()
        for t in transports:
            t.close()
        th.join(timeout=5)


def _target(tmp_path: Path, port: int, pinned: str) -> GuestTarget:
    key = ensure_stack_key("op", {"XDG_CONFIG_HOME": str(tmp_path / "op")})
    return GuestTarget(
        vmid=218, host="127.0.0.1", pinned=pinned, key_file=key.private_path, port=port,
        connect_timeout=10,
    )  # fmt: skip


def test_a_different_host_key_is_refused_with_both_fingerprints(
    sshd: tuple[int, paramiko.PKey], tmp_path: Path
) -> None:
    port, host_key = sshd
    recorded = "SHA256:" + "A" * 43
    with pytest.raises(HostKeyError) as e:
        GuestSshTransport(_target(tmp_path, port, recorded))
    text = str(e.value)
    assert recorded in text and fingerprint_of(host_key) in text
    assert "record" in (e.value.hint or "") and "root steps" in (e.value.hint or "")


def test_a_closed_port_names_the_address_and_the_pct_route(tmp_path: Path) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    with pytest.raises(TransportError) as e:
        GuestSshTransport(_target(tmp_path, port, "SHA256:" + "A" * 43))
    assert f"127.0.0.1:{port}" in str(e.value) and "refused" in str(e.value)
    assert '[guest] via = "pct"' in (e.value.hint or "")
