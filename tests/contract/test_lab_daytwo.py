"""Day two on the lab's HTTPS API (in process, loopback): snapshot / list / rollback /
delete, vzdump into ``local:backup``, the backup listing with notes, restore into a new
vmid, and PVE's refusals with its words.

Containers here are made by the lab node for real (config, volumes as directories, tasks),
but never started as LXC: the runtime below only extracts archives and records the
running state (the real LXC path is tests/lab/test_daytwo.py; this needs no root)."""

from __future__ import annotations

import json
import ssl
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from labstub import TEMPLATE, ExtractOnlyRuntime, make_template
from pvelab.api.server import LabApiServer
from pvelab.backend.auth import Identity
from pvelab.backend.node import Node
from pvestack import _daytwo as daytwo
from pvestack import cli
from pvestack._client import ClientSettings, PveClient
from pvestack._commands import Secret
from pvestack._errors import OwnershipError, PvestackError

pytestmark = pytest.mark.contract

NODE = "pve"
TOKEN_ID = "pvestack@pve!deploy"
SECRET = "daytwo-contract"
PRIVS = (
    "VM.Allocate", "VM.Audit", "VM.Config.Disk", "VM.Config.Options", "VM.Config.Network",
    "VM.Config.Memory", "VM.PowerMgmt", "VM.Snapshot", "VM.Backup", "Datastore.AllocateSpace",
    "Datastore.Audit", "Sys.Audit", "SDN.Use",
)  # fmt: skip


class Api:
    def __init__(self, server: LabApiServer, node: Node, runtime: ExtractOnlyRuntime) -> None:
        self.server, self.node, self.runtime = server, node, runtime
        self.ctx = ssl.create_default_context(cafile=str(server.certfile))

    def call(
        self, method: str, path: str, data: Mapping[str, Any] | None = None, token: str = TOKEN_ID
    ) -> tuple[int, dict[str, Any]]:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        url = self.server.url + "/api2/json" + path
        if method == "GET" and data:
            url += "?" + urllib.parse.urlencode(data)
            body = None
        req = urllib.request.Request(url, data=body, method=method)
        req.add_header("Authorization", f"PVEAPIToken={token}={SECRET}")
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def task(self, method: str, path: str, data: Mapping[str, Any] | None = None,
             token: str = TOKEN_ID) -> tuple[str, list[str]]:  # fmt: skip
        """Run a task; (exitstatus, log lines)."""
        status, body = self.call(method, path, data, token)
        assert status == 200, body
        upid = urllib.parse.quote(body["data"])
        for _ in range(300):
            _, st = self.call("GET", f"/nodes/{NODE}/tasks/{upid}/status")
            if st["data"]["status"] == "stopped":
                _, lg = self.call("GET", f"/nodes/{NODE}/tasks/{upid}/log", {"limit": 0})
                return str(st["data"]["exitstatus"]), [x["t"] for x in lg["data"]]
            time.sleep(0.05)
        raise AssertionError("task still running")

    def rootfs(self, vmid: int, storage: str = "local-lvm") -> Path:
        return self.node.lab_dir / "storage" / storage / "images" / str(vmid) / f"vm-{vmid}-disk-0"

    def create(self, vmid: int, storage: str = "local-lvm", **extra: Any) -> None:
        params = {"vmid": vmid, "ostemplate": f"local:vztmpl/{TEMPLATE}",
                  "rootfs": f"{storage}:1", "hostname": f"ct{vmid}", **extra}  # fmt: skip
        assert self.task("POST", f"/nodes/{NODE}/lxc", params)[0] == "OK"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    lab = tmp_path / "lab"
    make_template(lab / "storage" / "local" / "template" / "cache" / TEMPLATE)
    runtime = ExtractOnlyRuntime()
    node = Node(lab, runtime, NODE)
    node.auth.add_token(TOKEN_ID, SECRET)
    node.auth.grant("pvestack@pve", "/", PRIVS)
    for name, privs in (("audit", ["VM.Audit"]), ("rollback", ["VM.Audit", "VM.Snapshot.Rollback"]),
                        ("nobackup", ["VM.Audit", "Datastore.AllocateSpace"]),
                        ("nostore", ["VM.Backup", "VM.Audit"])):  # fmt: skip
        node.auth.add_user(f"{name}@pve")
        node.auth.add_token(f"{name}@pve!t", SECRET)
        node.auth.grant(f"{name}@pve", "/", privs)
    server = LabApiServer(node, "127.0.0.1", 0)
    server.start()
    try:
        yield Api(server, node, runtime)
    finally:
        server.stop()


def test_snapshot_rollback_delete_restore_files_and_config(api: Api) -> None:
    api.create(100)
    root = api.rootfs(100)
    (root / "before.txt").write_text("kept\n")
    base = f"/nodes/{NODE}/lxc/100/snapshot"
    snap = {"snapname": "pvestack-20261202T040000Z", "description": "before upgrade"}
    assert api.task("POST", base, snap)[0] == "OK"
    conf = (api.node.lab_dir / "etc/pve/lxc/100.conf").read_text()
    assert "\n[pvestack-20261202T040000Z]\n#before upgrade\n" in conf
    assert "parent: pvestack-20261202T040000Z\n" in conf.split("\n[")[0]
    _, listing = api.call("GET", base)
    names = [(s["name"], s.get("parent")) for s in listing["data"]]
    assert names == [("pvestack-20261202T040000Z", None), ("current", "pvestack-20261202T040000Z")]
    _, cfg = api.call("GET", f"{base}/pvestack-20261202T040000Z/config")
    assert cfg["data"]["hostname"] == "ct100" and cfg["data"]["snaptime"] > 0
    assert "lock" not in cfg["data"] and "lxc" not in cfg["data"]

    (root / "after.txt").write_text("goes\n")
    (root / "before.txt").write_text("changed\n")
    assert api.call("PUT", "/nodes/pve/lxc/100/config", {"hostname": "changed"})[0] == 200
    assert api.task("POST", "/nodes/pve/lxc/100/status/start")[0] == "OK"
    status, log = api.task("POST", f"{base}/pvestack-20261202T040000Z/rollback")
    assert status == "OK" and "stopping CT 100" in log
    assert api.runtime.state(100) == "stopped"  # PVE stops the CT; start=1 starts it again
    assert not (root / "after.txt").exists() and (root / "before.txt").read_text() == "kept\n"
    _, cur = api.call("GET", "/nodes/pve/lxc/100/config")
    assert cur["data"]["hostname"] == "ct100" and cur["data"]["parent"] == snap["snapname"]

    assert api.task("POST", f"{base}/{snap['snapname']}/rollback", {"start": 1})[0] == "OK"
    assert api.runtime.state(100) == "running"
    assert api.call("PUT", f"{base}/{snap['snapname']}/config", {"description": "new"})[0] == 200
    assert api.call("GET", base)[1]["data"][0]["description"] == "new"
    assert api.task("DELETE", f"{base}/{snap['snapname']}")[0] == "OK"
    assert [s["name"] for s in api.call("GET", base)[1]["data"]] == ["current"]
    assert not (api.node.lab_dir / "storage/local-lvm/snapshots/100").exists()
    assert "parent" not in api.call("GET", "/nodes/pve/lxc/100/config")[1]["data"]


def test_snapshot_refusals(api: Api) -> None:
    api.create(100)
    base = f"/nodes/{NODE}/lxc/100/snapshot"
    for name in ("current", "vzdump"):
        status, body = api.call("POST", base, {"snapname": name})
        assert (status, body["message"]) == (
            500, f"unable to use snapshot name '{name}' (reserved name)\n")  # fmt: skip
    assert api.call("POST", base, {"snapname": "1bad"})[0] == 400
    # a storage the lab marks as not snapshot-capable, and a bind mount point: PVE's
    # has_feature('snapshot') fails for both (a host path has no storage snapshot)
    api.create(101, storage="local-dir")
    assert api.task("POST", "/nodes/pve/lxc/101/snapshot", {"snapname": "s1"})[0] == (
        "snapshot feature is not available"
    )
    api.node.set_config(100, {"mp0": "/srv/hermes,mp=/data"})  # root@pam only
    assert api.task("POST", base, {"snapname": "s1"})[0] == "snapshot feature is not available"
    assert "lock" not in api.call("GET", "/nodes/pve/lxc/100/config")[1]["data"]
    api.node.set_config(100, {}, ["mp0"])
    # protection=1 guards removal only: pve-container snapshots and rolls back regardless
    assert api.call("PUT", "/nodes/pve/lxc/100/config", {"protection": 1})[0] == 200
    assert api.task("POST", base, {"snapname": "s1"})[0] == "OK"
    assert api.task("POST", f"{base}/s1/rollback")[0] == "OK"
    assert api.task("POST", base, {"snapname": "s1"})[0] == "snapshot name 's1' already used"
    assert api.task("POST", f"{base}/nope/rollback")[0] == "snapshot 'nope' does not exist"
    assert api.task("DELETE", f"{base}/nope")[0] == "snapshot 'nope' does not exist"
    # privileges: VM.Snapshot to take/delete, VM.Snapshot or VM.Snapshot.Rollback to roll back
    status, body = api.call("POST", base, {"snapname": "x"}, token="audit@pve!t")
    assert (status, body["message"]) == (403, "Permission check failed (/vms/100, VM.Snapshot)\n")
    assert api.call("POST", base, {"snapname": "x"}, token="rollback@pve!t")[0] == 403
    assert api.call("DELETE", f"{base}/s1", token="rollback@pve!t")[0] == 403
    assert api.task("POST", f"{base}/s1/rollback", token="rollback@pve!t")[0] == "OK"
    status, body = api.call("POST", f"{base}/s1/rollback", token="audit@pve!t")
    assert (status, body["message"]) == (
        403, "Permission check failed (/vms/100, VM.Snapshot|VM.Snapshot.Rollback)\n")  # fmt: skip


def _archive_members(path: Path) -> list[str]:
    with tarfile.open(path) as t:
        return t.getnames()


def test_vzdump_lists_with_notes_and_restores_into_a_new_vmid(api: Api) -> None:
    api.create(100, memory=256)
    (api.rootfs(100) / "data.txt").write_text("sessions\n")
    api.node.set_config(100, {"mp0": "/srv/hermes,mp=/data"})  # bind: not in the backup
    params = {"vmid": 100, "storage": "local", "mode": "snapshot", "compress": "gzip",
              "notes-template": "{{guestname}} pvestack-stack: hermes"}  # fmt: skip
    status, log = api.task("POST", f"/nodes/{NODE}/vzdump", params)
    assert status == "OK", log
    assert "INFO: excluding bind mount point mp0 ('/data') from backup (not a volume)" in log
    assert "INFO: create storage snapshot 'vzdump'" in log
    _, content = api.call("GET", "/nodes/pve/storage/local/content", {"content": "backup"})
    [item] = content["data"]
    assert item["volid"].startswith("local:backup/vzdump-lxc-100-") and item["volid"].endswith(
        ".tar.gz"
    )
    assert item["notes"] == "ct100 pvestack-stack: hermes" and item["vmid"] == 100
    assert item["format"] == "tar.gz" and item["size"] > 0
    archive = api.node.storages.volume_path(item["volid"])
    names = _archive_members(archive)
    assert names[:3] == ["./etc", "./etc/vzdump", "./etc/vzdump/pct.conf"] and "./data.txt" in names
    assert api.call("GET", "/nodes/pve/lxc/100/snapshot")[1]["data"][-1].get("parent") is None
    _, cfg = api.call("GET", "/nodes/pve/vzdump/extractconfig", {"volume": item["volid"]})
    assert "hostname: ct100\n" in cfg["data"] and "memory: 256\n" in cfg["data"]

    restore = {"vmid": 101, "ostemplate": item["volid"], "restore": 1, "storage": "local-lvm"}
    status, log = api.task("POST", f"/nodes/{NODE}/lxc", restore)
    assert (
        status == "unable to restore CT 101 - restoring 'mp0' to bind mount is only possible "
        "for root"
    )
    api.node.wait(api.node.create(restore), 30)  # root@pam (pct restore) may
    assert api.node.get_config(101)["mp0"] == "/srv/hermes,mp=/data"
    _, new = api.call("GET", "/nodes/pve/lxc/101/config")
    assert new["data"]["hostname"] == "ct100" and new["data"]["memory"] == 256
    assert new["data"]["rootfs"] == "local-lvm:vm-101-disk-0,size=1G"
    assert (api.rootfs(101) / "data.txt").read_text() == "sessions\n"
    assert not (api.rootfs(101) / "etc/vzdump/pct.conf").exists()
    assert api.task("POST", "/nodes/pve/lxc/101/status/start")[0] == "OK"
    # removing the archive takes its notes and log with it (pve-storage's archive_remove)
    api.node.wait(api.node.delete_volume(Identity("root@pam"), "local", item["volid"]) or "", 10)
    assert api.call("GET", "/nodes/pve/storage/local/content", {"content": "backup"})[1] == {
        "data": []}  # fmt: skip
    assert sorted(p.name for p in archive.parent.iterdir()) == []


def test_vzdump_and_restore_refusals(api: Api) -> None:
    api.create(100)
    api.create(102, storage="local-dir")
    vz = f"/nodes/{NODE}/vzdump"
    status, body = api.call("POST", vz, {"vmid": 100, "storage": "local-lvm"})
    assert (status, body["message"]) == (
        500, "can't use storage 'local-lvm' for backups - wrong content type\n")  # fmt: skip
    status, body = api.call(
        "POST", vz, {"vmid": 100, "storage": "local", "notes-template": "{{stack}}"}
    )
    assert status == 400 and body["errors"] == {
        "notes-template": "found unknown: variable 'stack' at char 4"}  # fmt: skip
    status, body = api.call("POST", vz, {"vmid": 100, "storage": "local"}, token="nostore@pve!t")
    assert (status, body["message"]) == (
        403, "Permission check failed (/storage/local, Datastore.AllocateSpace)\n")  # fmt: skip
    status, log = api.task("POST", vz, {"vmid": 100, "storage": "local"}, token="nobackup@pve!t")
    assert status == "Permission check failed (/vms/100, VM.Backup)"
    # snapshot mode on a storage that cannot snapshot: PVE falls back to suspend mode
    status, log = api.task("POST", vz, {"vmid": 102, "storage": "local", "mode": "snapshot"})
    assert status == "OK" and "INFO: trying 'suspend' mode instead" in log
    [backup] = api.call("GET", "/nodes/pve/storage/local/content", {"content": "backup"})[1]["data"]
    assert backup["format"] == "tar"
    # the listing shows a backup only to who may use it (VM.Backup on its CT)
    status, hidden = api.call("GET", "/nodes/pve/storage/local/content", {"content": "backup"},
                              token="nobackup@pve!t")  # fmt: skip
    assert (status, hidden["data"]) == (200, [])
    restore = {"ostemplate": backup["volid"], "restore": 1, "storage": "local-lvm"}
    status, body = api.call("POST", f"/nodes/{NODE}/lxc", {"vmid": 100, **restore})
    assert (status, body["message"]) == (500, "CT 100 already exists on node 'pve'\n")
    status, log = api.task(
        "POST", f"/nodes/{NODE}/lxc", {**restore, "vmid": 103, "storage": "local"}
    )
    assert status == (
        "unable to restore CT 103 - storage 'local' does not allow content type 'rootdir' "
        "(Container)"
    )
    assert not (api.node.lab_dir / "etc/pve/lxc/103.conf").exists()
    status, body = api.call("POST", f"/nodes/{NODE}/lxc", {**restore, "vmid": 104},
                            token="audit@pve!t")  # fmt: skip
    assert status == 403


# ---------------------------------------------------------------- the deployer's side


def _client(api: Api) -> PveClient:
    settings = ClientSettings(
        api_url=api.server.url, token_id=TOKEN_ID, token_secret=Secret("token", SECRET),
        ca_file=str(api.server.certfile),
    )  # fmt: skip
    return PveClient(settings)


def test_deployer_snapshots_prune_keeps_foreign_and_rolls_back(api: Api) -> None:
    api.create(100, tags="pvestack", description="pvestack-stack: hermes")
    client = _client(api)
    guest = daytwo.find_guest(client, "hermes", NODE, None)
    assert guest == daytwo.Guest("hermes", NODE, 100)
    assert api.task("POST", "/nodes/pve/lxc/100/snapshot", {"snapname": "manual"})[0] == "OK"
    t0 = datetime(2026, 12, 2, 4, 0, 0, tzinfo=UTC)
    taken = [daytwo.take_snapshot(client, guest, now=t0 + timedelta(minutes=i)).name
             for i in range(4)]  # fmt: skip
    assert taken[0] == "pvestack-20261202T040000Z"
    (api.rootfs(100) / "after.txt").write_text("x\n")
    listed = daytwo.list_snapshots(client, guest)
    assert [s.name for s in listed.snapshots if s.ours] == taken
    assert listed.current_parent == taken[-1]
    result = daytwo.prune(client, guest, keep=2)
    assert result == daytwo.PruneResult(tuple(taken[:2]), tuple(taken[2:]), ("manual",))
    names = [s["name"] for s in api.call("GET", "/nodes/pve/lxc/100/snapshot")[1]["data"]]
    assert sorted(names) == sorted(["manual", *taken[2:], "current"])

    assert api.call("PUT", "/nodes/pve/lxc/100/config", {"protection": 1})[0] == 200
    rb = daytwo.rollback(client, guest, taken[-1])
    assert rb.started and rb.protected and api.runtime.state(100) == "running"
    assert not (api.rootfs(100) / "after.txt").exists()
    with pytest.raises(PvestackError, match="has no snapshot 'nope'"):
        daytwo.rollback(client, guest, "nope")
    api.node.fail_next_task("vzrollback", "rbd error: rollback failed")
    with pytest.raises(daytwo.RollbackFailed) as e:
        daytwo.rollback(client, guest, taken[-1])
    assert (
        "rbd error: rollback failed" in e.value.message and "the CT is running" in e.value.message
    )
    assert f"pct rollback 100 {taken[-1]} && pct start 100" in e.value.message


def test_deployer_refuses_snapshots_pve_cannot_take_and_offers_a_backup(api: Api) -> None:
    api.create(100)
    api.create(101, storage="local-dir")
    client = _client(api)
    api.node.set_config(100, {"mp0": "/srv/hermes,mp=/data"})
    now = datetime(2026, 12, 2, 4, 0, 0, tzinfo=UTC)
    with pytest.raises(daytwo.SnapshotUnavailable) as e:
        daytwo.take_snapshot(client, daytwo.Guest("hermes", NODE, 100), now=now)
    assert e.value.reasons == (
        "mp0 is a bind mount of the host path /srv/hermes at /data "
        "(a host path has no storage snapshot)",
    )
    assert "pvestack backup" in (e.value.hint or "")
    with pytest.raises(daytwo.SnapshotUnavailable, match="storage 'local-dir' of type dir"):
        daytwo.take_snapshot(client, daytwo.Guest("other", NODE, 101), now=now)
    assert api.call("GET", "/nodes/pve/lxc/100/snapshot")[1]["data"][0]["name"] == "current"

    res = daytwo.backup(client, daytwo.Guest("hermes", NODE, 100), storage="local",
                        compress="gzip")  # fmt: skip
    assert res.mode_used == "snapshot"
    assert res.excluded == ("mp0 (/srv/hermes at /data): not a volume, not in the backup",)
    assert res.backup.notes == "ct100 pvestack-stack: hermes" and res.backup.vmid == 100
    assert daytwo.list_backups(client, daytwo.Guest("hermes", NODE, 100), "local") == (res.backup,)
    assert daytwo.restore_command(res.backup, 120, "local-lvm") == (
        f"pct restore 120 {res.backup.volid} --storage local-lvm --unique"
    )
    other = daytwo.backup(client, daytwo.Guest("other", NODE, 101), storage="local", compress="0")
    assert other.mode_used == "suspend"  # PVE's fallback: local-dir cannot snapshot


def test_deployer_status(api: Api) -> None:
    api.create(100, net0="name=eth0,bridge=pvlab0,ip=dhcp")
    client = _client(api)
    stopped = daytwo.stack_status(client, "hermes", NODE, 100)
    assert (stopped.exists, stopped.state, stopped.addresses) == (True, "stopped", ())
    assert api.task("POST", "/nodes/pve/lxc/100/status/start")[0] == "OK"
    seen: list[daytwo.Guest] = []

    def probe(g: daytwo.Guest) -> daytwo.AppStatus:
        seen.append(g)
        return daytwo.AppStatus(error="no guest transport in this test")

    st = daytwo.stack_status(client, "hermes", NODE, 100, probe)
    assert (st.state, st.addresses, st.apps) == (
        "running",
        ("10.77.5.50/24",),
        daytwo.AppStatus(error="no guest transport in this test"),
    )
    assert seen == [daytwo.Guest("hermes", NODE, 100)]
    assert st.to_json()["addresses"] == ["10.77.5.50/24"]
    assert st.problems == ("CT 100 does not carry the mark of stack hermes",)
    with pytest.raises(OwnershipError, match="CT 100 does not carry the mark of stack hermes"):
        daytwo.find_guest(client, "hermes", NODE, 100)
    missing = daytwo.stack_status(client, "litellm", NODE, 130)
    assert (missing.exists, missing.state) == (False, "missing")


def test_cli_snapshot_snapshots_rollback_backup_backups_status(
    api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.create(
        100,
        net0="name=eth0,bridge=pvlab0,ip=dhcp",
        tags="pvestack",
        description="pvestack-stack: hermes",
    )
    stack_file = tmp_path / "stack.toml"
    stack_file.write_text(
        f'[pve]\napi_url = "{api.server.url}"\ntoken_id = "{TOKEN_ID}"\n'
        'token_secret = { env = "PVESTACK_TOKEN_SECRET" }\n'
        f'ca_file = "{api.server.certfile}"\n\n'
        '[[stack]]\nname = "hermes"\nnode = "pve"\nvmid = 100\n\n'
        '[stack.network]\nbridge = "pvlab0"\n\n[stack.template]\nstorage = "local"\n'
        f'url = "http://127.0.0.1:1/{TEMPLATE}"\n'
    )
    monkeypatch.setenv("PVESTACK_TOKEN_SECRET", SECRET)
    for var in ("PVESTACK_API_URL", "PVESTACK_TOKEN_ID", "PVESTACK_FINGERPRINT", "PVESTACK_NODE"):
        monkeypatch.delenv(var, raising=False)
    runner = CliRunner()

    def run(*args: str) -> str:
        r = runner.invoke(cli.app, [*args, "-c", str(stack_file)])
        assert r.exit_code == 0, r.output
        return r.output

    assert "snapshot pvestack-" in run("snapshot", "hermes", "--keep", "1")
    (api.rootfs(100) / "after.txt").write_text("x\n")
    time.sleep(1.1)  # the next snapshot's name has the next second
    out = run("snapshot", "hermes", "--keep", "1")
    assert "deleted old snapshot pvestack-" in out
    listed = json.loads(run("snapshots", "hermes", "--json"))
    assert len(listed) == 1 and listed[0]["pvestack"] is True
    (api.rootfs(100) / "later.txt").write_text("x\n")
    assert "rolled back to pvestack-" in run("rollback", "hermes")
    assert not (api.rootfs(100) / "later.txt").exists() and (api.rootfs(100) / "after.txt").exists()
    assert "backup local:backup/vzdump-lxc-100-" in run("backup", "hermes", "--compress", "gzip")
    out = run("backups", "hermes")
    assert "pvestack-stack: hermes" in out and "pct restore NEW_VMID local:backup/" in out
    [st] = json.loads(run("status", "--json"))
    assert (st["stack"], st["state"], st["addresses"]) == ("hermes", "running", ["10.77.5.50/24"])
    r = runner.invoke(cli.app, ["rollback", "hermes", "nope", "-c", str(stack_file)])
    assert r.exit_code == 1 and "has no snapshot 'nope'" in r.output
