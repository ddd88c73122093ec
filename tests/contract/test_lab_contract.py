"""The lab's API against fakepve (an independent emulator, permissions on): the same
requests, the same status codes, reason phrases, messages and per-parameter errors.

The lab side runs on real LXC (``pvelab.runtime.lxc.LxcRuntime``) in a private lab
directory; it needs root. Its template is the lab's Debian template when one is cached
(``PVESTACK_LAB_TEMPLATE`` or the lab directory), else a tiny busybox root file system
built here, so the real container create/start/stop path runs either way. Both sides get
the same API token,
``pvestack@pve!deploy``, holding a PVEVMAdmin-like set of privileges on ``/`` (no token is
ever root@pam).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import ssl
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pvelab.api.server import LabApiServer
from pvelab.backend.node import Node
from pvelab.runtime.lxc import LxcRuntime, remove_recorded_subids

pytestmark = pytest.mark.contract

NODE = "pve1"
TOKEN_ID = "pvestack@pve!deploy"
TOKEN_SECRET = "5d3c0f5e-lab-contract"
TOKEN_PRIVS = (
    "VM.Allocate",
    "VM.Audit",
    "VM.Config.CPU",
    "VM.Config.Memory",
    "VM.Config.Disk",
    "VM.Config.Network",
    "VM.Config.Options",
    "VM.PowerMgmt",
    "VM.Snapshot",
    "Datastore.AllocateSpace",
    "Datastore.AllocateTemplate",
    "Datastore.Audit",
    "Sys.Audit",
    "SDN.Use",
    "Sys.Modify",
)
ROOT_PASSWORD = "lab-contract-root"
LAB_DIR = Path(os.environ.get("PVESTACK_LAB_DIR", "/var/lib/pvestack-lab"))
DEBIAN = "debian-12-standard_12.12-1_amd64.tar.zst"
BUSYBOX = "busybox-lab-test_1.0_amd64.tar.gz"


def _debian_template() -> Path | None:
    candidates = (
        [Path(os.environ["PVESTACK_LAB_TEMPLATE"])]
        if os.environ.get("PVESTACK_LAB_TEMPLATE")
        else []
    )
    candidates += [LAB_DIR / d / DEBIAN for d in ("www", "cache", "storage/local/template/cache")]
    return next((p for p in candidates if p.is_file()), None)


TEMPLATE = DEBIAN if _debian_template() else BUSYBOX
OSTEMPLATE = f"local:vztmpl/{TEMPLATE}"


def _busybox_template(target: Path) -> None:
    """A root file system of the static busybox: enough for lxc-start to run an init."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("no lab template cached and no busybox to build a small one")

    def add_dir(t: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode = tarfile.DIRTYPE, mode
        t.addfile(info)

    def add_file(t: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), mode
        t.addfile(info, io.BytesIO(data))

    with tarfile.open(target, "w:gz") as t:
        for d in (
            "bin",
            "sbin",
            "etc",
            "etc/network",
            "proc",
            "sys",
            "dev",
            "tmp",
            "root",
            "run",
            "var",
            "usr",
            "usr/bin",
        ):
            add_dir(t, "./" + d, 0o1777 if d == "tmp" else 0o755)
        add_file(t, "./bin/busybox", Path(busybox).read_bytes(), 0o755)
        for link in ("bin/sh", "sbin/init", "bin/sleep", "bin/true", "bin/cat"):
            info = tarfile.TarInfo("./" + link)
            info.type, info.linkname = tarfile.SYMTYPE, "/bin/busybox"
            t.addfile(info)
        add_file(t, "./etc/inittab", b"::sysinit:/bin/true\n::respawn:/bin/sleep 1000000\n")
        add_file(t, "./etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        add_file(t, "./etc/group", b"root:x:0:\n")


def place_template(cache: Path) -> str:
    """``TEMPLATE`` into the storage's template cache: the cached Debian template (a hard
    link, else a copy) or, without one, the busybox one. Its file name."""
    debian = _debian_template()
    if TEMPLATE == DEBIAN and debian is not None:
        try:
            os.link(debian, cache / TEMPLATE)
        except OSError:
            shutil.copy2(debian, cache / TEMPLATE)
    else:
        _busybox_template(cache / TEMPLATE)
    return TEMPLATE


# Containers every side has before the tests: one stopped, one running.
STOPPED, RUNNING = 200, 201


@dataclass
class Answer:
    status: int
    reason: str
    body: dict[str, Any]

    @property
    def message(self) -> str | None:
        msg = self.body.get("message")
        return str(msg) if msg is not None else None

    def key(self) -> tuple[int, str, str | None, Any]:
        """What must be equal on both sides."""
        return (self.status, self.reason, self.message, self.body.get("errors"))


@dataclass
class Side:
    name: str
    url: str
    cafile: str
    ticket: tuple[str, str] | None = None
    calls: list[tuple[str, str]] = field(default_factory=list)

    def call(
        self,
        method: str,
        path: str,
        data: Mapping[str, Any] | None = None,
        *,
        as_root: bool = False,
    ) -> Answer:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        req = urllib.request.Request(f"{self.url}/api2/json{path}", data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", "application/x-www-form-urlencoded")
        if as_root:
            if self.ticket is None:
                t = self.call(
                    "POST", "/access/ticket", {"username": "root@pam", "password": ROOT_PASSWORD}
                ).body["data"]
                self.ticket = (t["ticket"], t["CSRFPreventionToken"])
            req.add_header("Cookie", "PVEAuthCookie=" + self.ticket[0])
            req.add_header("CSRFPreventionToken", self.ticket[1])
        elif path != "/access/ticket":
            req.add_header("Authorization", f"PVEAPIToken={TOKEN_ID}={TOKEN_SECRET}")
        ctx = ssl.create_default_context(cafile=self.cafile)
        self.calls.append((method, path))
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=300) as r:
                return Answer(r.status, r.reason, json.loads(r.read()))
        except urllib.error.HTTPError as e:
            return Answer(e.code, e.reason, json.loads(e.read() or b"{}"))

    def wait(self, upid: str, timeout: float = 300) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.call("GET", f"/nodes/{NODE}/tasks/{urllib.parse.quote(upid, safe='')}/status")
            assert st.status == 200, st
            if st.body["data"]["status"] == "stopped":
                return str(st.body["data"]["exitstatus"])
            time.sleep(0.2)
        raise AssertionError(f"{self.name}: task {upid} still running")


def create_params(vmid: int, **extra: Any) -> dict[str, Any]:
    return {
        "vmid": vmid,
        "ostemplate": OSTEMPLATE,
        "rootfs": "local-lvm:2",
        "unprivileged": 1,
        "hostname": f"ct{vmid}",
        "memory": 256,
        **extra,
    }


def _prepare(side: Side) -> None:
    for vmid in (STOPPED, RUNNING):
        a = side.call("POST", f"/nodes/{NODE}/lxc", create_params(vmid))
        assert a.status == 200, (side.name, a)
        assert side.wait(a.body["data"]) == "OK"
    a = side.call("POST", f"/nodes/{NODE}/lxc/{RUNNING}/status/start")
    assert a.status == 200, (side.name, a)
    assert side.wait(a.body["data"]) == "OK"


# ---------------------------------------------------------------- fakepve side


@pytest.fixture
def fake(fakepve: Any, fakepve_cafile: str) -> Side:
    fakepve.add_node(NODE)
    fakepve.password = ROOT_PASSWORD
    fakepve.apitokens[TOKEN_ID] = TOKEN_SECRET
    fakepve.grant(TOKEN_ID.partition("!")[0], "/", *TOKEN_PRIVS)
    fakepve.store_file("local", TEMPLATE, 86_000_000, content="vztmpl")
    side = Side("fakepve", fakepve.url, fakepve_cafile)
    _prepare(side)
    return side


# ---------------------------------------------------------------- lab side (real LXC)


def _lab_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the lab side runs real LXC containers: needs root"
    if shutil.which("lxc-start") is None:
        return "lxc is not installed (make setup)"
    return None


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Side]:
    reason = _lab_skip_reason()
    if reason:
        pytest.skip(reason)
    # A private lab directory next to the real one (same file system: the template is linked).
    base = Path("/var/tmp")
    labdir = (
        Path(tmp_path_factory.mktemp("lab", numbered=True))
        if not base.is_dir()
        else (base / f"pvestack-lab-contract-{os.getpid()}")
    )
    labdir.mkdir(parents=True, exist_ok=True)
    cache = labdir / "storage" / "local" / "template" / "cache"
    cache.mkdir(parents=True)
    place_template(cache)
    runtime = LxcRuntime(labdir)
    node = Node(labdir, runtime, NODE)
    node.auth.set_password("root@pam", ROOT_PASSWORD)
    node.auth.add_token(TOKEN_ID, TOKEN_SECRET)
    node.auth.grant(TOKEN_ID.partition("!")[0], "/", TOKEN_PRIVS)
    server = LabApiServer(node, "127.0.0.1", 0)
    server.start()
    try:
        side = Side("lab", server.url, str(server.certfile))
        _prepare(side)
        yield side
    finally:
        server.stop()
        node.reset()
        with contextlib.suppress(Exception):
            remove_recorded_subids(runtime.subid_record)
        shutil.rmtree(labdir, ignore_errors=True)


# ---------------------------------------------------------------- the same requests


def same(
    lab: Side,
    fake: Side,
    method: str,
    path: str,
    data: Mapping[str, Any] | None = None,
    *,
    as_root: bool = False,
) -> tuple[Answer, Answer]:
    a = lab.call(method, path, data, as_root=as_root)
    b = fake.call(method, path, data, as_root=as_root)
    assert a.key() == b.key(), f"{method} {path} {data}:\n lab     {a.key()}\n fakepve {b.key()}"
    return a, b


CFG = f"/nodes/{NODE}/lxc/{STOPPED}/config"


def test_token_create(lab: Side, fake: Side) -> None:
    a, b = same(
        lab,
        fake,
        "POST",
        f"/nodes/{NODE}/lxc",
        create_params(210, features="nesting=1", tags="pvestack"),
    )
    assert a.status == 200
    assert (
        a.body["data"].startswith(f"UPID:{NODE}:")
        and ":vzcreate:210:pvestack@pve!deploy:" in a.body["data"]
    )
    assert lab.wait(a.body["data"]) == fake.wait(b.body["data"]) == "OK"
    ca = lab.call("GET", f"/nodes/{NODE}/lxc/210/config").body["data"]
    cb = fake.call("GET", f"/nodes/{NODE}/lxc/210/config").body["data"]
    for key in ("features", "unprivileged", "hostname", "memory", "tags"):
        assert ca[key] == cb[key], key
    assert ca["rootfs"].startswith("local-lvm:vm-210-disk-0") and "size=2G" in ca["rootfs"]
    a, _ = same(lab, fake, "DELETE", f"/nodes/{NODE}/lxc/210")
    assert lab.wait(a.body["data"]) == "OK"


@pytest.mark.parametrize(
    "params",
    [
        {"mp0": "/srv/host-data,mp=/data"},
        {"rootfs": "/srv/rootfs"},
        {"mp0": "/dev/sdb,mp=/data"},
    ],
    ids=["bind", "bind-rootfs", "device"],
)
def test_token_bind_mount_is_403(lab: Side, fake: Side, params: dict[str, str]) -> None:
    a, _ = same(lab, fake, "PUT", CFG, params)
    assert a.status == 403
    assert "is only allowed for root@pam" in a.reason


def test_token_create_with_bind_mount_is_403(lab: Side, fake: Side) -> None:
    a, _ = same(lab, fake, "POST", f"/nodes/{NODE}/lxc", create_params(211, mp0="/srv/x,mp=/x"))
    assert a.status == 403


@pytest.mark.parametrize("features", ["nesting=1,keyctl=1", "keyctl=1", "fuse=1", "mount=nfs"])
def test_token_feature_flags_other_than_nesting_are_403(
    lab: Side, fake: Side, features: str
) -> None:
    a, _ = same(lab, fake, "PUT", CFG, {"features": features})
    assert a.status == 403
    assert a.message == (
        "Permission check failed (changing feature flags (except nesting) is only allowed "
        "for root@pam)\n"
    )


def test_token_nesting_alone_is_allowed(lab: Side, fake: Side) -> None:
    a, _ = same(lab, fake, "PUT", CFG, {"features": "nesting=1"})
    assert a.status == 200
    got = [s.call("GET", CFG).body["data"]["features"] for s in (lab, fake)]
    assert got == ["nesting=1", "nesting=1"]


@pytest.mark.parametrize("as_root", [False, True], ids=["token", "root"])
def test_unprivileged_change_is_500(lab: Side, fake: Side, as_root: bool) -> None:
    a, _ = same(lab, fake, "PUT", CFG, {"unprivileged": 0}, as_root=as_root)
    assert (a.status, a.message) == (500, "unable to modify read-only option: 'unprivileged'\n")


@pytest.mark.parametrize("as_root", [False, True], ids=["token", "root"])
def test_lxc_raw_key_is_400(lab: Side, fake: Side, as_root: bool) -> None:
    a, _ = same(lab, fake, "PUT", CFG, {"lxc.idmap": "u 0 100000 65536"}, as_root=as_root)
    assert a.status == 400
    assert a.body["errors"] == {
        "lxc.idmap": "property is not defined in schema and the schema does not allow "
        "additional properties"
    }


@pytest.mark.parametrize(
    "params",
    [
        {"net0": "name=eth0,bridge=vmbr0,ip=bogus"},
        {"net0": "name=eth0,bridge=vmbr0,ip=dhcp,colour=blue"},
        {"net0": "name=eth0,bridge=vmbr0,gw=1.2.3"},
        {"net0": "name=eth0,name=eth1"},
        {"features": "nesting=maybe"},
        {"features": "bogus=1"},
        {"mp0": "local-lvm:4"},
        {"mp0": "local-lvm:4,mp=/data,size=lots"},
        {"rootfs": "local-lvm:4,ro=perhaps"},
        {"tags": "bad tag!"},
        {"memory": "lots"},
        {"memory": 8},
        {"cores": 0},
        {"hostname": "-bad-"},
        {"arch": "sparc"},
        {"startup": "order=x"},
        {"mp0": "local-lvm:4,mp=/data,quota=1,quota=0"},
        {"net0": "eth0"},
    ],
    ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()),
)
def test_bad_values_are_400(lab: Side, fake: Side, params: dict[str, Any]) -> None:
    a, _ = same(lab, fake, "PUT", CFG, params)
    assert a.status == 400
    assert a.reason == "Parameter verification failed."


def test_create_with_bad_property_string_is_400(lab: Side, fake: Side) -> None:
    a, _ = same(
        lab,
        fake,
        "POST",
        f"/nodes/{NODE}/lxc",
        create_params(212, net0="name=eth0,bridge=vmbr0,ip=300.1.1.1/24"),
    )
    assert a.status == 400


def test_start_of_running_ct_is_500(lab: Side, fake: Side) -> None:
    a, _ = same(lab, fake, "POST", f"/nodes/{NODE}/lxc/{RUNNING}/status/start")
    assert (a.status, a.message) == (500, f"CT {RUNNING} already running\n")


def test_delete_of_running_ct_is_500(lab: Side, fake: Side) -> None:
    a, _ = same(lab, fake, "DELETE", f"/nodes/{NODE}/lxc/{RUNNING}")
    assert (a.status, a.message) == (
        500,
        f"unable to destroy CT {RUNNING} - container is running\n",
    )


def test_running_state_is_real(lab: Side, fake: Side) -> None:
    a, b = same(lab, fake, "GET", f"/nodes/{NODE}/lxc/{RUNNING}/status/current")
    assert a.body["data"]["status"] == b.body["data"]["status"] == "running"
    assert a.body["data"]["pid"] > 1
    assert a.body["data"]["mem"] > 0  # read from the container's memory cgroup
    assert Path(f"/proc/{a.body['data']['pid']}").exists()
    a, b = same(lab, fake, "GET", f"/nodes/{NODE}/lxc/{STOPPED}/status/current")
    assert a.body["data"]["status"] == b.body["data"]["status"] == "stopped"


def test_bad_token_secret_is_401(lab: Side, fake: Side) -> None:
    for side in (lab, fake):
        req = urllib.request.Request(f"{side.url}/api2/json/version")
        req.add_header("Authorization", f"PVEAPIToken={TOKEN_ID}=wrong")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, context=ssl.create_default_context(cafile=side.cafile))
        assert e.value.code == 401


def test_stop_of_stopped_ct_is_500(lab: Side, fake: Side) -> None:
    a, _ = same(lab, fake, "POST", f"/nodes/{NODE}/lxc/{STOPPED}/status/stop")
    assert (a.status, a.message) == (500, f"CT {STOPPED} not running\n")


def test_nextid_of_used_vmid_is_400(lab: Side, fake: Side) -> None:
    a, _ = same(lab, fake, "GET", f"/cluster/nextid?vmid={STOPPED}")
    assert a.status == 400
    assert a.body["errors"] == {"vmid": f"VM {STOPPED} already exists"}


def test_download_url_bad_extension_is_400(lab: Side) -> None:
    # fakepve accepts this one; pve-storage's download_url raises the param exception.
    a = lab.call(
        "POST",
        f"/nodes/{NODE}/storage/local/download-url",
        {"content": "vztmpl", "filename": "x.iso", "url": "http://127.0.0.1:9/x.iso"},
    )
    assert a.key() == (
        400,
        "Parameter verification failed.",
        "Parameter verification failed.\n",
        {"filename": "wrong file extension"},
    )


@pytest.mark.parametrize(
    ("method", "path", "data"),
    [
        ("GET", f"/nodes/{NODE}/lxc/999/config", None),
        ("GET", f"/nodes/{NODE}/lxc/999/status/current", None),
        ("POST", f"/nodes/{NODE}/lxc", create_params(STOPPED)),
        ("PUT", CFG, {"delete": "bogus"}),
        ("PUT", CFG, {"memory": 1024, "delete": "memory"}),
        ("PUT", CFG, {}),
        ("PUT", CFG, {"delete": "unprivileged"}),
        ("POST", f"/nodes/{NODE}/lxc/{RUNNING}/status/start", {"skiplock": 1}),
        ("POST", f"/nodes/{NODE}/lxc/{STOPPED}/status/reboot", None),
        ("POST", f"/nodes/{NODE}/lxc/{STOPPED}/status/shutdown", None),
        ("POST", f"/nodes/{NODE}/lxc/{STOPPED}/snapshot", {"snapname": "current"}),
        ("POST", f"/nodes/{NODE}/lxc", {"vmid": 99, "ostemplate": OSTEMPLATE}),
        ("POST", f"/nodes/{NODE}/lxc", {"vmid": 220, "ostemplate": "local:iso/x.iso"}),
    ],
    ids=[
        "config-missing-ct",
        "status-missing-ct",
        "create-existing",
        "delete-unknown",
        "set-and-delete",
        "no-options",
        "delete-unprivileged",
        "skiplock-token",
        "reboot-stopped",
        "shutdown-stopped",
        "snapshot-reserved",
        "vmid-too-small",
        "template-wrong-content",
    ],
)
def test_more_errors_match(
    lab: Side, fake: Side, method: str, path: str, data: dict[str, Any] | None
) -> None:
    a, _ = same(lab, fake, method, path, data)
    assert a.status >= 400


def test_snapshot_cycle(lab: Side, fake: Side) -> None:
    base = f"/nodes/{NODE}/lxc/{STOPPED}/snapshot"
    a, b = same(lab, fake, "POST", base, {"snapname": "before", "description": "clean"})
    assert lab.wait(a.body["data"]) == fake.wait(b.body["data"]) == "OK"
    names = [[s["name"] for s in side.call("GET", base).body["data"]] for side in (lab, fake)]
    assert names[0] == names[1] == ["before", "current"]
    a, b = same(lab, fake, "POST", base, {"snapname": "before"})
    assert (
        lab.wait(a.body["data"])
        == fake.wait(b.body["data"])
        == ("snapshot name 'before' already used")
    )
    a, b = same(lab, fake, "POST", f"{base}/before/rollback")
    assert lab.wait(a.body["data"]) == fake.wait(b.body["data"]) == "OK"
    a, b = same(lab, fake, "GET", f"{base}/before/config")
    assert a.body["data"]["hostname"] == b.body["data"]["hostname"] == f"ct{STOPPED}"
    a, b = same(lab, fake, "DELETE", f"{base}/before")
    assert lab.wait(a.body["data"]) == fake.wait(b.body["data"]) == "OK"


@pytest.mark.parametrize(
    ("path", "errors"),
    [
        # pve-manager Tasks.pm raises a param exception (fakepve answers 500)
        (f"/nodes/{NODE}/tasks/UPID:garbage/status", {"upid": "unable to parse worker upid"}),
        (
            f"/nodes/{NODE}/tasks/UPID:{NODE}:00000001:00000001:00000001:vzstart:1:root@pam:/status",
            {"upid": "no such task"},
        ),
        # the enum of /cluster/resources' type (fakepve does not check it)
        (
            "/cluster/resources?type=qemu",
            {
                "type": "value 'qemu' does not have a value in the enumeration "
                "'vm, storage, node, sdn'"
            },
        ),
    ],
    ids=["bad-upid", "unknown-task", "resources-type"],
)
def test_lab_only_param_errors(lab: Side, path: str, errors: dict[str, str]) -> None:
    a = lab.call("GET", path)
    assert a.key() == (
        400,
        "Parameter verification failed.",
        "Parameter verification failed.\n",
        errors,
    )


def test_create_with_missing_template_fails_in_the_task(lab: Side, fake: Side) -> None:
    params = {**create_params(230), "ostemplate": "local:vztmpl/missing_1.0_amd64.tar.zst"}
    a, b = same(lab, fake, "POST", f"/nodes/{NODE}/lxc", params)
    assert (
        lab.wait(a.body["data"])
        == fake.wait(b.body["data"])
        == (
            "unable to create CT 230 - volume 'local:vztmpl/missing_1.0_amd64.tar.zst' "
            "does not exist"
        )
    )
    same(lab, fake, "GET", f"/nodes/{NODE}/lxc/230/config")


def test_root_ticket_may_set_keyctl_and_bind_mounts(lab: Side, fake: Side) -> None:
    params = {"features": "nesting=1,keyctl=1", "mp0": "/srv/hermes,mp=/opt/data"}
    a, _ = same(lab, fake, "PUT", CFG, params, as_root=True)
    assert a.status == 200
    got = [side.call("GET", CFG).body["data"] for side in (lab, fake)]
    assert got[0]["features"] == got[1]["features"] == "keyctl=1,nesting=1"
    assert got[0]["mp0"] == got[1]["mp0"] == "/srv/hermes,mp=/opt/data"
    a, _ = same(lab, fake, "PUT", CFG, {"delete": "mp0"}, as_root=True)
    assert "mp0" not in lab.call("GET", CFG).body["data"]


def test_create_in_a_missing_pool_is_403(lab: Side, fake: Side) -> None:
    a, _ = same(lab, fake, "POST", f"/nodes/{NODE}/lxc", create_params(231, pool="nope"))
    assert (a.status, a.reason) == (403, "Permission check failed (pool 'nope' does not exist)")


def test_running_ct_keeps_feature_changes_pending(lab: Side, fake: Side) -> None:
    path = f"/nodes/{NODE}/lxc/{RUNNING}"
    a, _ = same(
        lab,
        fake,
        "PUT",
        f"{path}/config",
        {"features": "nesting=1,keyctl=1", "memory": 300},
        as_root=True,
    )
    assert a.status == 200
    pending = [
        [
            p
            for p in side.call("GET", f"{path}/pending").body["data"]
            if p["key"] in ("features", "memory")
        ]
        for side in (lab, fake)
    ]
    assert (
        pending[0]
        == pending[1]
        == [{"key": "features", "pending": "keyctl=1,nesting=1"}, {"key": "memory", "value": 300}]
    )
    for side in (lab, fake):
        assert "features" not in side.call("GET", f"{path}/config?current=1").body["data"]
        assert side.call("GET", f"{path}/config").body["data"]["features"] == "keyctl=1,nesting=1"
