"""The client's boundary: PVE errors translated once (message verbatim, hints), settings."""

from __future__ import annotations

import socket
import time

import pytest
from proxmoxer import ResourceException

from pvestack._client import (
    ClientSettings,
    PveClient,
    translate_resource_error,
    upid_node,
    upid_type,
)
from pvestack._commands import Secret
from pvestack._errors import (
    PveAuthError,
    PveError,
    PveNotFoundError,
    PveParamError,
    PvePermissionError,
    TransportError,
)

UPID = "UPID:gihyeon:000003EA:00001B66:6B04B3CB:vzcreate:118:pvestack@pve!deploy:"


def settings(**kw: object) -> ClientSettings:
    base: dict[str, object] = {
        "api_url": "https://127.0.0.1:8006",
        "token_id": "pvestack@pve!deploy",
        "token_secret": Secret("t", "s3cr3t-value"),
    }
    return ClientSettings(**(base | kw))  # type: ignore[arg-type]


def test_403_root_only_keeps_message_and_names_the_root_step() -> None:
    msg = "Permission check failed (mount point type bind is only allowed for root@pam)"
    e = translate_resource_error(
        ResourceException(403, "Forbidden", msg),
        "PUT",
        "/nodes/n/lxc/118/config",
        {"mp0": "/x,mp=/y"},
    )
    assert isinstance(e, PvePermissionError)
    assert e.pve_message == msg
    assert str(e) == f"PUT /nodes/n/lxc/118/config: 403 {msg}"
    assert e.hint is not None and "root@pam" in e.hint and "root.via" in e.hint and "mp0" in e.hint


def test_403_missing_privilege_hint() -> None:
    e = translate_resource_error(
        ResourceException(403, "Forbidden", "Permission check failed (/vms/118, VM.Allocate)"),
        "POST",
        "/nodes/n/lxc",
        {},
    )
    assert isinstance(e, PvePermissionError)
    assert e.hint is not None and "privilege" in e.hint


def test_400_keeps_per_parameter_errors() -> None:
    e = translate_resource_error(
        ResourceException(
            400,
            "Bad Request",
            "Parameter verification failed.",
            errors={"lxc.idmap": "property is not defined in schema"},
        ),
        "PUT",
        "/p",
        {},
    )
    assert isinstance(e, PveParamError)
    assert e.errors == {"lxc.idmap": "property is not defined in schema"}
    assert "lxc.idmap: property is not defined in schema" in str(e)
    assert e.hint and "root steps" in e.hint


@pytest.mark.parametrize(
    ("status", "message", "cls", "hint"),
    [
        (401, "authentication failure", PveAuthError, "PVESTACK_TOKEN_SECRET"),
        (500, "Configuration file 'nodes/n/lxc/9.conf' does not exist", PveNotFoundError, None),
        (500, "unable to modify read-only option: 'unprivileged'", PveError, "replaced"),
        (500, "can't remove CT 118 - protection mode enabled", PveError, "protection"),
    ],
)
def test_status_mapping(status: int, message: str, cls: type, hint: str | None) -> None:
    e = translate_resource_error(ResourceException(status, "x", message), "GET", "/p", {})
    assert type(e) is cls
    assert e.pve_message == message
    if hint:
        assert e.hint is not None and hint in e.hint


def test_upid_parts() -> None:
    assert upid_node(UPID) == "gihyeon"
    assert upid_type(UPID) == "vzcreate"
    with pytest.raises(ValueError):
        upid_node("nope")


def test_settings_checked_and_secret_not_exposed() -> None:
    with pytest.raises(TransportError):
        PveClient(settings(api_url="http://127.0.0.1:8006"))
    with pytest.raises(TransportError):
        PveClient(settings(token_id="root@pam"))
    c = PveClient(settings(insecure=True))
    assert c.warnings and "NOT verified" in c.warnings[0]
    assert "s3cr3t" not in repr(c.settings)
    assert PveClient(settings(fingerprint="AB:" * 31 + "CD")).warnings == []
    assert settings(ca_file="/ca.pem").tls_mode == "CA file /ca.pem"


def test_unreachable_api_is_transport_error_and_reads_retry() -> None:
    sleeps: list[float] = []
    # port 9 on loopback: nothing listens, the connection is refused at once
    c = PveClient(settings(api_url="https://127.0.0.1:9"), sleep=sleeps.append, read_retries=3)
    with pytest.raises(TransportError) as ei:
        c.get("/version")
    assert "cannot reach" in str(ei.value)
    assert c.calls == 4 and sleeps == [0.5, 1.0, 2.0]
    sleeps.clear()
    with pytest.raises(TransportError):
        c.post("/nodes/n/lxc/1/status/start")
    assert sleeps == []  # writes are never retried


def test_a_hanging_read_is_retried_within_a_bounded_total_wait() -> None:

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)  # connections queue, nobody ever answers: a hang
    port = srv.getsockname()[1]
    said: list[str] = []
    c = PveClient(
        settings(api_url=f"https://127.0.0.1:{port}", timeout=30.0),
        read_budget=4.0,
        on_retry=said.append,
    )
    t0 = time.monotonic()
    try:
        with pytest.raises(TransportError) as ei:
            c.get("/cluster/resources", type="vm")
    finally:
        srv.close()
    took = time.monotonic() - t0
    assert took < 6.0  # bounded by the budget, not 4 x 30 s
    assert "GET /cluster/resources: gave up after" in str(ei.value)
    assert 1 <= len(said) <= 3 and all("GET /cluster/resources" in m for m in said)
    assert "retry 1 of 3" in said[0]


class _Flaky(PveClient):
    """A client whose first answers are PVE 500s (what a busy pvedaemon gives)."""

    def __init__(self, fails: int) -> None:
        super().__init__(settings(), sleep=lambda _: None)
        self.fails = fails

    def _once(self, method: str, path: str, params: dict[str, str | int], timeout: float) -> object:
        self.stats.calls += 1
        if self.fails:
            self.fails -= 1
            raise PveError(500, "got timeout", method=method, path=path)
        return {"status": "stopped", "exitstatus": "OK"}


def test_task_polls_retry_on_500_other_reads_do_not() -> None:
    c = _Flaky(2)
    assert c.wait_task("UPID:pve:00000001:00000001:00000001:vzcreate:100:root@pam:") == "OK"
    assert c.calls == 3
    c = _Flaky(1)
    with pytest.raises(PveError):
        c.get("/nodes/pve/lxc/100/pending")
    assert c.calls == 1
