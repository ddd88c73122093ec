"""observe against the lab API (in-memory runtime) and fakepve: 2 calls for a named CT,
``/cluster/resources`` only as the fallback, a locked config waited for or explained
(``pct unlock``), never called foreign."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labstub import OSTEMPLATE, TEMPLATE, StubRuntime, make_template
from pvelab.api.server import LabApiServer
from pvelab.backend.conf import CtConf, Section
from pvelab.backend.node import Node
from pvestack._client import ClientSettings, PveClient
from pvestack._commands import Secret
from pvestack._config import parse_config
from pvestack._desired import build_desired
from pvestack._errors import GuestLockedError
from pvestack._model import DesiredState
from pvestack._observe import observe
from pvestack._plan import plan

pytestmark = pytest.mark.contract

TOKEN_ID = "pvestack@pve!observe"
SECRET = "observe-contract-secret"
VMID = 120

STACK = f"""
[pve]
api_url = "https://127.0.0.1:8006"
token_id = "{TOKEN_ID}"
token_secret = {{ env = "T" }}

[root]
via = "none"

[[stack]]
name = "web"
node = "pve"
vmid = {VMID}
hostname = "web"
cores = 1
memory = 512
disk_gb = 4
datastore = "local-lvm"

[stack.network]
bridge = "vmbr0"

[stack.template]
storage = "local"
url = "http://127.0.0.1:9/{TEMPLATE}"
"""


class SlowRuntime(StubRuntime):
    """Creates a rootfs only once ``release`` is set: a create task that takes a while."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def create_rootfs(self, *args: Any, **kw: Any) -> None:
        self.release.wait(30)
        super().create_rootfs(*args, **kw)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[LabApiServer, Node, SlowRuntime]]:
    make_template(tmp_path / "storage" / "local" / "template" / "cache" / TEMPLATE)
    runtime = SlowRuntime()
    runtime.release.set()
    node = Node(tmp_path, runtime, "pve")
    node.auth.add_token(TOKEN_ID, SECRET)
    privs = ["VM.Allocate", "VM.Audit", "VM.Config.Options", "VM.Config.Disk",
             "VM.Config.CPU", "VM.Config.Memory", "VM.Config.Network", "Datastore.AllocateSpace",
             "Datastore.Audit", "Sys.Audit", "SDN.Use"]  # fmt: skip
    node.auth.grant("pvestack@pve", "/", privs)
    server = LabApiServer(node, "127.0.0.1", 0)
    server.start()
    try:
        yield server, node, runtime
    finally:
        runtime.release.set()
        server.stop()


def lab_client(server: LabApiServer) -> PveClient:
    return PveClient(
        ClientSettings(server.url, TOKEN_ID, Secret("t", SECRET), fingerprint=server.fingerprint)
    )


def desired() -> DesiredState:
    cfg = parse_config(STACK, "web.toml", env={"T": SECRET})
    return build_desired(cfg, source="web.toml", with_apps=False)


def create_marked(node: Node, *, wait: bool = True) -> str:
    upid = node.create(
        {"vmid": VMID, "ostemplate": OSTEMPLATE, "rootfs": "local-lvm:4", "hostname": "web",
         "tags": "pvestack", "description": "pvestack-stack: web\n"},
    )  # fmt: skip
    if wait:
        node.wait(upid, 30)
    return upid


def test_a_named_ct_costs_two_calls(lab: tuple[LabApiServer, Node, SlowRuntime]) -> None:
    server, node, _ = lab
    create_marked(node)
    c = lab_client(server)
    obs = observe(c, desired())
    s = obs.stack("web")
    assert obs.api_calls == 2
    assert s.container is not None and s.container.owner_stack == "web" and s.foreign is None
    assert s.container.config["hostname"] == "web" and s.container.status == "stopped"


def test_an_absent_ct_falls_back_to_the_cluster_list(
    lab: tuple[LabApiServer, Node, SlowRuntime],
) -> None:
    server, _, _ = lab
    seen: list[str] = []
    c = PveClient(
        ClientSettings(server.url, TOKEN_ID, Secret("t", SECRET), fingerprint=server.fingerprint),
        on_call=lambda m, p, _: seen.append(f"{m} {p}"),
    )
    s = observe(c, desired()).stack("web")
    assert s.container is None and s.foreign is None and s.template_present
    assert seen == [
        f"GET /nodes/pve/lxc/{VMID}/pending",
        "GET /cluster/resources",
        "GET /nodes/pve/storage/local/content",
    ]


def test_lock_create_without_a_task_says_pct_unlock_never_adopt(
    lab: tuple[LabApiServer, Node, SlowRuntime],
) -> None:
    server, node, _ = lab
    with node.locked():
        node.write_conf(VMID, CtConf(Section({"lock": "create"})))  # a create whose task died
    with pytest.raises(GuestLockedError) as ei:
        observe(lab_client(server), desired())
    text = f"{ei.value} {ei.value.hint}"
    assert f"lxc/{VMID} on pve is locked (create) and no task of it runs" in text
    assert f"pct unlock {VMID}" in text and "--adopt" not in text


def test_lock_create_with_a_running_task_is_waited_for(
    lab: tuple[LabApiServer, Node, SlowRuntime],
) -> None:
    server, node, runtime = lab
    runtime.release.clear()
    create_marked(node, wait=False)  # the task now waits in create_rootfs, config locked
    assert node.load(VMID).main.options.get("lock") == "create"
    threading.Timer(1.0, runtime.release.set).start()
    d = desired()
    obs = observe(lab_client(server), d)
    s = obs.stack("web")
    assert s.container is not None and s.container.owner_stack == "web"
    assert "lock" not in s.container.config
    p = plan(d, obs)
    assert not p.refused, p.refused


def test_a_vm_at_the_vmid_is_found_through_the_fallback(pve: Any, stack_cfg: Any) -> None:
    """fakepve: PVE's 500 for the lxc path when a VM holds the vmid, then the cluster list."""
    pve.add_vm(118, "somevm", node="gihyeon", status="running")
    from pvestack._engine import connect  # noqa: PLC0415

    c = connect(stack_cfg)
    d = build_desired(stack_cfg, source=stack_cfg.source_file, with_apps=False)
    obs = observe(c, d)
    s = obs.stack("hermes")
    assert s.container is None and s.foreign is not None and s.foreign.type == "qemu"
    assert obs.api_calls == 2  # pending (500 "does not exist") + /cluster/resources
    assert any("is a VM" in r for r in plan(d, obs).refused)
