"""Messages that name what was really used (hardening finding 7)."""

from __future__ import annotations

import socket

import pytest

from pvestack._client import ClientSettings, PveClient
from pvestack._commands import Secret
from pvestack._errors import TransportError


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_api_hint_names_the_url_port_not_8006() -> None:
    port = _closed_port()
    c = PveClient(
        ClientSettings(f"https://127.0.0.1:{port}", "u@pve!t", Secret("t", "x"), insecure=True),
        read_retries=0,
    )
    with pytest.raises(TransportError) as ei:
        c.get("/version")
    assert ei.value.hint is not None
    assert f"127.0.0.1:{port}" in ei.value.hint and "8006" not in ei.value.hint
