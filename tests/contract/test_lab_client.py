"""pvestack's own API client (proxmoxer, fingerprint pinning, task waiting, error
translation) against the lab API: what ``pvestack apply`` will meet on a lab node.

Containers are real (LxcRuntime), so the part that creates one needs root; the busybox
root file system of test_lab_contract stands in when the lab's Debian template is absent."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_lab_contract import place_template

from pvelab.api.server import LabApiServer
from pvelab.backend.node import Node
from pvelab.runtime.lxc import LxcRuntime, remove_recorded_subids
from pvestack._client import ClientSettings, PveClient
from pvestack._commands import Secret
from pvestack._errors import PveParamError, PvePermissionError, PveTaskError

pytestmark = pytest.mark.contract

NODE = "pve"
TOKEN_ID = "pvestack@pve!client"
SECRET = "client-contract-secret"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[LabApiServer, Node]]:
    base = Path("/var/tmp") if os.geteuid() == 0 else tmp_path
    labdir = base / f"pvestack-lab-client-{os.getpid()}"
    labdir.mkdir(mode=0o755)
    runtime = LxcRuntime(labdir)
    node = Node(labdir, runtime, NODE)
    node.auth.add_token(TOKEN_ID, SECRET)
    node.auth.grant(
        "pvestack@pve",
        "/",
        [
            "VM.Allocate",
            "VM.Audit",
            "VM.PowerMgmt",
            "VM.Config.Disk",
            "VM.Config.Options",
            "VM.Config.Memory",
            "VM.Config.Network",
            "Datastore.AllocateSpace",
            "Datastore.Audit",
            "Sys.Audit",
        ],
    )
    server = LabApiServer(node, "127.0.0.1", 0)
    server.start()
    try:
        yield server, node
    finally:
        server.stop()
        node.reset()
        remove_recorded_subids(runtime.subid_record)
        shutil.rmtree(labdir, ignore_errors=True)


def client(server: LabApiServer, **kw: str) -> PveClient:
    settings = ClientSettings(
        api_url=server.url,
        token_id=TOKEN_ID,
        token_secret=Secret("token", SECRET),
        fingerprint=kw.get("fingerprint", server.fingerprint),
    )
    return PveClient(settings)


def test_pinned_fingerprint_and_errors(served: tuple[LabApiServer, Node]) -> None:
    server, _ = served
    c = client(server)
    assert c.get("/version")["release"] == "9.1"
    assert c.get("/cluster/nextid") == "100"
    with pytest.raises(PveParamError) as e:
        c.put(f"/nodes/{NODE}/lxc/100/config", **{"lxc.idmap": "u 0 100000 65536"})
    assert "lxc.idmap" in e.value.errors
    with pytest.raises(PvePermissionError) as p:
        c.post(
            f"/nodes/{NODE}/storage/local/download-url",
            content="vztmpl",
            filename="a.tar.zst",
            url="http://127.0.0.1:9/a.tar.zst",
        )
    assert "Permission check failed" in str(p.value)
    wrong = client(server, fingerprint=":".join(["AB"] * 32))
    with pytest.raises(Exception, match=r"(?i)fingerprint"):
        wrong.get("/version")


@pytest.mark.skipif(os.geteuid() != 0, reason="creates a real LXC container: needs root")
def test_create_start_and_a_failing_task(served: tuple[LabApiServer, Node]) -> None:
    server, node = served
    cache = node.lab_dir / "storage/local/template/cache"
    name = place_template(cache)
    c = client(server)
    upid = c.post(
        f"/nodes/{NODE}/lxc",
        vmid=120,
        ostemplate=f"local:vztmpl/{name}",
        rootfs="local-lvm:2",
        unprivileged=1,
        features="nesting=1",
        memory=256,
        tags="pvestack",
        description="lab\npvestack-stack: t",
    )
    assert c.wait_task(upid) == "OK"
    assert c.wait_task(c.post(f"/nodes/{NODE}/lxc/120/status/start")) == "OK"
    assert c.get(f"/nodes/{NODE}/lxc/120/status/current")["status"] == "running"
    resources = c.get("/cluster/resources", type="vm")
    assert [(r["vmid"], r["status"], r["tags"]) for r in resources] == [
        (120, "running", "pvestack")
    ]
    assert c.get(f"/nodes/{NODE}/lxc/120/config")["description"] == "lab\npvestack-stack: t\n"
    node.fail_next_task("vzshutdown", "container did not stop")
    with pytest.raises(PveTaskError) as t:
        c.wait_task(c.post(f"/nodes/{NODE}/lxc/120/status/shutdown"))
    assert "container did not stop" in str(t.value)
    assert c.wait_task(c.post(f"/nodes/{NODE}/lxc/120/status/stop")) == "OK"
    assert c.wait_task(c.delete(f"/nodes/{NODE}/lxc/120")) == "OK"
    assert c.get("/cluster/resources", type="vm") == []
