"""The lab's HTTPS API on loopback: auth (tokens, tickets, CSRF), PVE's error shapes,
501 for what it does not serve, the control endpoint (reset, faults), download-url over
real HTTP with checksums, task logs, and proxmoxer as a client.

No containers are created here (that is test_lab_contract.py), so the node gets the real
LXC runtime object but never asks it to start anything; no root needed."""

from __future__ import annotations

import functools
import hashlib
import http.client
import http.server
import json
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from proxmoxer import ProxmoxAPI
from proxmoxer.core import ResourceException

from pvelab.api.routes import ROUTES, resolve
from pvelab.api.server import LabApiServer, fingerprint
from pvelab.backend.node import Node
from pvelab.backend.schema import api_schema
from pvelab.runtime.lxc import LxcRuntime

pytestmark = pytest.mark.contract

TOKEN_ID = "pvestack@pve!deploy"
SECRET = "0c8f-api-test"
NODE = "pve"


class Lab:
    def __init__(self, server: LabApiServer) -> None:
        self.server = server
        self.ctx = ssl.create_default_context(cafile=str(server.certfile))
        self.ticket: tuple[str, str] | None = None

    def call(
        self,
        method: str,
        path: str,
        data: Mapping[str, Any] | None = None,
        *,
        auth: str = "token",
        json_body: bool = False,
        csrf: bool = True,
    ) -> tuple[int, str, dict[str, Any]]:
        body = None
        headers = {}
        if data is not None:
            if json_body:
                body = json.dumps(data).encode()
                headers["Content-Type"] = "application/json"
            else:
                body = urllib.parse.urlencode(data).encode()
                headers["Content-Type"] = "application/x-www-form-urlencoded"
        url = path if path.startswith("/_lab") else "/api2/json" + path
        req = urllib.request.Request(
            self.server.url + url, data=body, method=method, headers=headers
        )
        if auth == "token":
            req.add_header("Authorization", f"PVEAPIToken={TOKEN_ID}={SECRET}")
        elif auth == "root":
            if self.ticket is None:
                pw = self.server.node.auth.root_password()
                _, _, t = self.call(
                    "POST", "/access/ticket", {"username": "root@pam", "password": pw}, auth="none"
                )
                self.ticket = (t["data"]["ticket"], t["data"]["CSRFPreventionToken"])
            req.add_header("Cookie", f"PVEAuthCookie={self.ticket[0]}")
            if csrf:
                req.add_header("CSRFPreventionToken", self.ticket[1])
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=60) as r:
                return r.status, r.reason, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, e.reason, json.loads(e.read() or b"{}")

    def wait(self, upid: str) -> str:
        for _ in range(300):
            _, _, st = self.call("GET", f"/nodes/{NODE}/tasks/{urllib.parse.quote(upid)}/status")
            if st["data"]["status"] == "stopped":
                return str(st["data"]["exitstatus"])
            time.sleep(0.1)
        raise AssertionError("task still running")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    node = Node(tmp_path / "lab", LxcRuntime(tmp_path / "lab"), NODE)
    node.auth.add_token(TOKEN_ID, SECRET)
    node.auth.grant(
        "pvestack@pve",
        "/",
        [
            "VM.Audit",
            "VM.Allocate",
            "Datastore.Audit",
            "Datastore.Allocate",
            "Datastore.AllocateSpace",
            "Datastore.AllocateTemplate",
            "Sys.Audit",
            "Sys.Modify",
        ],
    )
    server = LabApiServer(node, "127.0.0.1", 0)
    server.start()
    try:
        yield Lab(server)
    finally:
        server.stop()


@pytest.fixture
def files(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loopback HTTP server for a directory (as the lab's template server)."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return None

    handler = functools.partial(Quiet, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_certificate_fingerprint_is_pinned(lab: Lab) -> None:
    fp = lab.server.fingerprint
    assert len(fp.split(":")) == 32 and fp == fingerprint(lab.server.certfile)
    pem = ssl.get_server_certificate(("127.0.0.1", lab.server.port))
    der = ssl.PEM_cert_to_DER_cert(pem)
    assert ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest()) == fp


def test_auth_failures(lab: Lab) -> None:
    assert lab.call("GET", "/version", auth="none")[:2] == (401, "No ticket")
    status, reason, body = lab.call(
        "POST", "/access/ticket", {"username": "root@pam", "password": "nope"}, auth="none"
    )
    assert (status, reason, body) == (
        401,
        "authentication failure",
        {"data": None, "message": "authentication failure\n"},
    )
    assert lab.call("GET", "/version", auth="root")[0] == 200
    status, reason, _ = lab.call(
        "POST", f"/nodes/{NODE}/lxc", {"vmid": 100}, auth="root", csrf=False
    )
    assert (status, reason) == (401, "Permission denied - invalid csrf token")


def test_not_implemented_and_unknown_parameters(lab: Lab) -> None:
    status, reason, body = lab.call("GET", f"/nodes/{NODE}/qemu")
    assert (status, reason) == (501, f"Method 'GET /nodes/{NODE}/qemu' not implemented")
    status, _, body = lab.call("GET", "/version?verbose=1")
    assert status == 400 and body["errors"] == {
        "verbose": "property is not defined in schema and the schema does not allow additional "
        "properties"
    }


def test_permissions_come_before_parameter_checks(lab: Lab) -> None:
    """pve-http-server checks the method's permissions, then the method checks parameters."""
    status, reason, _ = lab.call("POST", f"/nodes/{NODE}/lxc/100/status/start", {"bogus": 1})
    assert (status, reason) == (403, "Permission check failed (/vms/100, VM.PowerMgmt)")


def test_json_bodies_and_permissions_listing(lab: Lab) -> None:
    status, _, body = lab.call("GET", "/access/permissions")
    assert status == 200 and body["data"]["/"]["VM.Allocate"] == 1
    assert "VM.PowerMgmt" not in body["data"]["/"]
    status, _, body = lab.call(
        "POST",
        f"/nodes/{NODE}/lxc",
        {"vmid": 100, "ostemplate": "local:vztmpl/x.tar.zst", "cores": "x"},
        json_body=True,
    )
    assert status == 400 and body["errors"] == {"cores": "type check ('integer') failed - got 'x'"}


def test_faults_and_reset(lab: Lab) -> None:
    assert lab.call("POST", "/_lab/faults", {"path": "/version$"}, json_body=True)[0] == 403
    ok = lab.call(
        "POST",
        "/_lab/faults",
        {
            "method": "GET",
            "path": "/version$",
            "status": 500,
            "message": "got a hiccup",
            "times": 1,
        },
        auth="root",
        json_body=True,
    )
    assert ok[0] == 200
    assert lab.call("GET", "/version") == (
        500,
        "got a hiccup",
        {"data": None, "message": "got a hiccup\n"},
    )
    assert lab.call("GET", "/version")[0] == 200
    lab.call(
        "POST",
        "/_lab/faults",
        {"method": "GET", "path": "/cluster/nextid", "hang": 1.0},
        auth="root",
        json_body=True,
    )
    started = time.monotonic()
    assert lab.call("GET", "/cluster/nextid")[2] == {"data": "100"}
    assert time.monotonic() - started >= 1.0
    assert lab.call("GET", "/_lab/faults", auth="root")[2]["data"][0]["hang"] == 1.0
    lab.call("POST", "/_lab/reset", {}, auth="root", json_body=True)
    assert lab.call("GET", "/_lab/faults", auth="root")[2]["data"] == []


def test_download_url_really_downloads(lab: Lab, files: tuple[str, Path]) -> None:
    base, root = files
    payload = b"not really a tarball, but bytes\n" * 1000
    (root / "t.tar.zst").write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    path = f"/nodes/{NODE}/storage/local/download-url"
    _, _, body = lab.call(
        "POST",
        path,
        {
            "content": "vztmpl",
            "filename": "t.tar.zst",
            "url": f"{base}/t.tar.zst",
            "checksum": digest,
            "checksum-algorithm": "sha256",
        },
    )
    upid = body["data"]
    assert ":download:t.tar.zst:pvestack@pve!deploy:" in upid
    assert lab.wait(upid) == "OK"
    stored = lab.server.node.lab_dir / "storage/local/template/cache/t.tar.zst"
    assert stored.read_bytes() == payload
    _, _, content = lab.call("GET", f"/nodes/{NODE}/storage/local/content?content=vztmpl")
    assert content["data"][0]["volid"] == "local:vztmpl/t.tar.zst"
    assert content["data"][0]["format"] == "tzst" and content["data"][0]["size"] == len(payload)
    _, _, log = lab.call("GET", f"/nodes/{NODE}/tasks/{urllib.parse.quote(upid)}/log")
    assert log["data"][-1] == {"n": log["total"], "t": "TASK OK"}
    volume = urllib.parse.quote("local:vztmpl/t.tar.zst", safe="")
    status, _, body = lab.call("DELETE", f"/nodes/{NODE}/storage/local/content/{volume}")
    assert status == 200 and lab.wait(body["data"]) == "OK"
    assert not stored.exists()
    status, reason, _ = lab.call("DELETE", f"/nodes/{NODE}/storage/local/content/{volume}")
    assert (status, reason) == (500, "volume 'local:vztmpl/t.tar.zst' does not exist")
    stored.write_bytes(payload)

    _, _, body = lab.call(
        "POST",
        path,
        {
            "content": "vztmpl",
            "filename": "u.tar.zst",
            "url": f"{base}/t.tar.zst",
            "checksum": "0" * 64,
            "checksum-algorithm": "sha256",
        },
    )
    assert lab.wait(body["data"]).startswith("checksum mismatch")
    assert not (stored.parent / "u.tar.zst").exists()

    status, reason, _ = lab.call(
        "POST",
        path,
        {"content": "vztmpl", "filename": "v.tar.zst", "url": "http://192.0.2.1/v.tar.zst"},
    )
    assert status == 500 and "loopback" in reason

    lab.call(
        "POST",
        "/_lab/faults",
        {"task": "download", "message": "mirror on fire"},
        auth="root",
        json_body=True,
    )
    _, _, body = lab.call(
        "POST", path, {"content": "vztmpl", "filename": "w.tar.zst", "url": f"{base}/t.tar.zst"}
    )
    assert lab.wait(body["data"]) == "mirror on fire"


def test_bad_upid_is_400(lab: Lab) -> None:
    status, _, _ = lab.call("GET", f"/nodes/{NODE}/tasks/UPID:nonsense/status")
    assert status == 400


def test_proxmoxer_sees_pve_errors(lab: Lab) -> None:
    user, _, name = TOKEN_ID.partition("!")
    api = ProxmoxAPI(
        "127.0.0.1",
        port=lab.server.port,
        user=user,
        token_name=name,
        token_value=SECRET,
        verify_ssl=str(lab.server.certfile),
    )
    assert api.version.get()["release"] == "9.1"
    assert api.nodes(NODE).lxc.get() == []
    with pytest.raises(ResourceException) as e:
        api.nodes(NODE).lxc(100).status.start.post()
    assert str(e.value).startswith(
        "403 Forbidden: Permission check failed (/vms/100, VM.PowerMgmt)"
    )
    with pytest.raises(ResourceException) as e:
        api.nodes(NODE).lxc.post(
            vmid=100, ostemplate="local:vztmpl/x.tar.zst", **{"lxc.idmap": "x"}
        )
    assert e.value.status_code == 400 and "lxc.idmap" in e.value.errors


def test_keep_alive_survives_errors_with_bodies(lab: Lab) -> None:
    """proxmoxer keeps its connection: an error answer must not leave the body unread."""

    lab.call(
        "POST",
        "/_lab/faults",
        {"method": "POST", "path": "/lxc$", "status": 500, "message": "nope", "times": 1},
        auth="root",
        json_body=True,
    )
    conn = http.client.HTTPSConnection("127.0.0.1", lab.server.port, context=lab.ctx)
    auth = {
        "Authorization": f"PVEAPIToken={TOKEN_ID}={SECRET}",
        "Content-Type": "application/x-www-form-urlencoded",
    }
    try:
        for path, body, expect in [
            (f"/api2/json/nodes/{NODE}/lxc", "vmid=100&ostemplate=x", 500),
            ("/elsewhere", "a=1", 501),
            (f"/api2/json/nodes/{NODE}/lxc", "vmid=1&ostemplate=x", 400),
        ]:
            conn.request("POST", path, body=body, headers=auth)
            r = conn.getresponse()
            r.read()
            assert r.status == expect
            conn.request("GET", "/api2/json/version", headers=auth)
            r = conn.getresponse()
            assert r.status == 200 and json.loads(r.read())["data"]["release"] == "9.1"
    finally:
        conn.close()


def test_every_route_is_a_schema_method_and_resolves() -> None:
    for method, template in ROUTES:
        assert method in api_schema()[template]["info"], (method, template)
        concrete = template.replace("{node}", NODE).replace("{vmid}", "100")
        concrete = concrete.replace("{storage}", "local").replace("{snapname}", "s1")
        concrete = concrete.replace("{upid}", "UPID:x").replace("{volume}", "local%3Aiso%2Fa.iso")
        match = resolve(concrete)
        assert match is not None and match.template == template, concrete
    assert resolve(f"/nodes/{NODE}/lxc/100/status/current").template.endswith("/current")
    assert resolve("/nowhere") is None
