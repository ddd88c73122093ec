"""The lab node without HTTP and without root: PVE's rules, config on disk, tasks, storages.

The runtime here is a small in-memory one (it extracts the template with tarfile and keeps
'running' in a dict); the real LXC runtime is exercised by tests/contract/test_lab_contract.py
and tests/lab."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from labstub import OSTEMPLATE, TEMPLATE, StubRuntime, make_template
from pvelab.backend.auth import Identity
from pvelab.backend.errors import PveError
from pvelab.backend.node import Node

TOKEN = Identity("pvestack@pve", "deploy")


@pytest.fixture
def runtime() -> StubRuntime:
    return StubRuntime()


@pytest.fixture
def node(tmp_path: Path, runtime: StubRuntime) -> Node:
    make_template(tmp_path / "storage" / "local" / "template" / "cache" / TEMPLATE)
    n = Node(tmp_path, runtime, "pve")
    n.auth.add_token("pvestack@pve!deploy", "s")
    n.auth.grant(
        "pvestack@pve",
        "/",
        [
            "VM.Allocate",
            "VM.Audit",
            "VM.Config.Disk",
            "VM.Config.Options",
            "VM.Config.Network",
            "VM.Config.Memory",
            "VM.PowerMgmt",
            "Datastore.AllocateSpace",
            "Datastore.Audit",
            "SDN.Use",
        ],
    )
    return n


def create(node: Node, vmid: int = 100, **extra: object) -> None:
    params = {"vmid": vmid, "ostemplate": OSTEMPLATE, "rootfs": "local-lvm:4", **extra}
    node.wait(node.create(params, user=TOKEN), 10)


def error(fn: object, *args: object, **kw: object) -> tuple[int, str]:
    with pytest.raises(PveError) as e:
        fn(*args, **kw)  # type: ignore[operator]
    return e.value.status, e.value.message


def test_create_writes_pve_config_and_volume(node: Node, tmp_path: Path) -> None:
    create(
        node,
        features="nesting=1",
        tags="Web;api",
        hostname="hermes",
        net0="name=eth0,bridge=vmbr0,ip=dhcp",
        **{"ssh-public-keys": "ssh-ed25519 AAAA x"},
    )
    text = (tmp_path / "etc/pve/lxc/100.conf").read_text()
    assert "rootfs: local-lvm:vm-100-disk-0,size=4G\n" in text
    assert "unprivileged: 1\n" in text and "features: nesting=1\n" in text
    assert "tags: api;web\n" in text and "ostype: debian\n" in text
    cfg = node.get_config(100)
    assert cfg["net0"].startswith("name=eth0,bridge=vmbr0,hwaddr=BC:24:11:")
    assert cfg["net0"].endswith(",ip=dhcp,type=veth")
    assert cfg["memory"] == 512 and cfg["unprivileged"] == 1 and len(cfg["digest"]) == 40
    volume = tmp_path / "storage/local-lvm/images/100/vm-100-disk-0"
    assert (volume / "etc/os-release").read_text() == "ID=debian\n"
    assert (volume / "root/.ssh/authorized_keys").read_text() == "ssh-ed25519 AAAA x\n"
    assert node.storage_content("local-lvm", None, None)[0]["volid"] == "local-lvm:vm-100-disk-0"
    assert error(create, node) == (500, "CT 100 already exists on node 'pve'")


def test_create_of_a_missing_template_fails_in_the_task(node: Node, tmp_path: Path) -> None:
    upid = node.create({"vmid": 101, "ostemplate": "local:vztmpl/none.tar.zst"}, user=TOKEN)
    assert error(node.wait, upid, 10) == (
        500,
        "unable to create CT 101 - volume 'local:vztmpl/none.tar.zst' does not exist",
    )
    assert not (tmp_path / "etc/pve/lxc/101.conf").exists()
    assert not (tmp_path / "storage/local-lvm/images/101").exists()


def test_injected_create_failure_removes_config_and_volumes(node: Node, tmp_path: Path) -> None:
    """PVE's create_vm error path: destroy_disks + destroy_config, no ``lock: create`` left."""
    node.fail_next_task("vzcreate", "injected")
    upid = node.create({"vmid": 102, "ostemplate": OSTEMPLATE, "rootfs": "local-lvm:4"}, user=TOKEN)
    assert error(node.wait, upid, 10) == (500, "injected")
    assert not (tmp_path / "etc/pve/lxc/102.conf").exists()
    assert not (tmp_path / "storage/local-lvm/images/102").exists()
    create(node, 102)  # the vmid is free again


def test_root_sets_what_a_token_may_not(node: Node) -> None:
    create(node)
    assert error(node.set_config, 100, {"features": "keyctl=1,nesting=1"}, user=TOKEN)[0] == 403
    node.set_config(100, {"features": "nesting=1,keyctl=1", "mp0": "/srv/hermes,mp=/opt/data"})
    cfg = node.get_config(100)
    assert cfg["features"] == "keyctl=1,nesting=1"
    assert cfg["mp0"] == "/srv/hermes,mp=/opt/data"
    node.set_config(100, {}, ["mp0"])
    assert "mp0" not in node.get_config(100)


def test_new_volume_mount_point_for_a_token(node: Node, tmp_path: Path) -> None:
    create(node)
    node.set_config(100, {"mp0": "local-lvm:2,mp=/data,backup=0"}, user=TOKEN)
    assert node.get_config(100)["mp0"] == "local-lvm:vm-100-disk-1,mp=/data,backup=0,size=2G"
    assert (tmp_path / "storage/local-lvm/images/100/vm-100-disk-1").is_dir()
    node.set_config(100, {}, ["mp0"], user=TOKEN)
    assert node.get_config(100)["unused0"] == "local-lvm:vm-100-disk-1"


def test_config_update_errors(node: Node) -> None:
    create(node)
    assert error(node.set_config, 100, {"unprivileged": 0}) == (
        500,
        "unable to modify read-only option: 'unprivileged'",
    )
    assert error(node.set_config, 100, {}, ["unprivileged"]) == (
        500,
        "unable to delete read-only option: 'unprivileged'",
    )
    assert error(node.set_config, 100, {}) == (500, "no options specified")
    assert error(node.set_config, 100, {"memory": 1024}, digest="0" * 40) == (
        500,
        "detected modified configuration - file changed by other user? Try again.",
    )
    assert error(node.set_config, 100, {"memory": 1024}, ["memory"])[0] == 400
    assert error(node.get_config, 999) == (
        500,
        "Configuration file 'nodes/pve/lxc/999.conf' does not exist",
    )


def test_raw_lxc_lines_survive_api_updates(node: Node, tmp_path: Path) -> None:
    create(node)
    path = tmp_path / "etc/pve/lxc/100.conf"
    path.write_text(path.read_text() + "lxc.idmap: u 0 100000 65536\nlxc.idmap: g 0 100000 65536\n")
    node.set_config(100, {"memory": 2048}, user=TOKEN)
    text = path.read_text()
    assert "memory: 2048\n" in text and text.count("lxc.idmap: ") == 2
    assert node.get_config(100)["lxc"] == [
        ["lxc.idmap", "u 0 100000 65536"],
        ["lxc.idmap", "g 0 100000 65536"],
    ]


def test_power_rules_and_messages(node: Node, runtime: StubRuntime) -> None:
    create(node, memory=256)
    assert error(node.stop, 100) == (500, "CT 100 not running")
    assert error(node.reboot, 100) == (500, "VM 100 not running")
    node.wait(node.start(100, user=TOKEN), 10)
    conf, _ = runtime.running[100]
    assert conf["rootfs"] == "local-lvm:vm-100-disk-0,size=4G" and conf["memory"] == "256"
    assert node.status(100)["status"] == "running" and node.status(100)["pid"] == 4242
    assert error(node.start, 100, user=TOKEN) == (500, "CT 100 already running")
    assert error(node.destroy, 100, user=TOKEN) == (
        500,
        "unable to destroy CT 100 - container is running",
    )
    node.wait(node.reboot(100), 10)
    node.wait(node.shutdown(100, user=TOKEN), 10)
    assert node.status(100)["status"] == "stopped"
    node.wait(node.destroy(100, user=TOKEN), 10)
    assert runtime.destroyed == [100] and node.vmids() == []


def test_failing_start_is_a_task_error(node: Node, runtime: StubRuntime) -> None:
    create(node)
    runtime.fail_start = "bridge 'vmbr9' does not exist"
    upid = node.start(100)
    assert error(node.wait, upid, 10) == (500, "startup for container '100' failed")
    lines, _ = node.task_log(Identity("root@pam"), upid)
    assert [x["t"] for x in lines] == [
        "bridge 'vmbr9' does not exist",
        "TASK ERROR: startup for container '100' failed",
    ]
    runtime.fail_start = None
    node.fail_next_task("vzstart", "injected")
    assert error(node.wait, node.start(100), 10) == (500, "injected")
    node.wait(node.start(100), 10)


def test_snapshot_and_rollback_restore_files(node: Node, tmp_path: Path) -> None:
    create(node)
    etc = tmp_path / "storage/local-lvm/images/100/vm-100-disk-0/etc"
    node.wait(node.snapshot(100, "before", user=TOKEN, description="clean"), 10)
    (etc / "hostname").write_text("changed\n")
    node.set_config(100, {"memory": 1024})
    assert [s["name"] for s in node.snapshot_list(100)] == ["before", "current"]
    assert node.snapshot_list(100)[1]["parent"] == "before"
    node.wait(node.rollback(100, "before"), 10)
    assert (etc / "hostname").read_text() == "localhost\n"
    assert node.get_config(100)["memory"] == 512
    assert error(node.wait, node.snapshot(100, "before"), 10) == (
        500,
        "snapshot name 'before' already used",
    )
    node.wait(node.delete_snapshot(100, "before"), 10)
    assert [s["name"] for s in node.snapshot_list(100)] == ["current"]
    assert "parent" not in node.get_config(100)


def test_two_nodes_on_one_directory_share_state(node: Node, tmp_path: Path) -> None:
    """``pct`` is another process with its own Node on the same lab directory."""
    create(node)
    pct = Node(tmp_path, StubRuntime(), "pve")
    pct.set_config(100, {"features": "nesting=1,keyctl=1"}, user="root@pam")
    assert node.get_config(100)["features"] == "keyctl=1,nesting=1"
    assert pct.auth.check_token("PVEAPIToken=pvestack@pve!deploy=s") == TOKEN


def test_tasks_list_and_visibility(node: Node) -> None:
    create(node)
    node.wait(node.start(100), 10)
    mine = node.task_list(TOKEN, {})
    assert [t["type"] for t in mine] == ["vzcreate"]
    everything = node.task_list(Identity("root@pam"), {"vmid": 100})
    assert {t["type"] for t in everything} == {"vzcreate", "vzstart"}
    assert all(t["status"] == "OK" for t in everything)


def test_nextid(node: Node) -> None:
    assert node.nextid() == "100"
    create(node)
    assert node.nextid() == "101"
    assert error(node.nextid, 100) == (400, "Parameter verification failed.")


def test_running_container_keeps_non_hotplug_changes_pending(
    node: Node, runtime: StubRuntime
) -> None:
    create(node, features="nesting=1", nameserver="10.0.0.1")
    node.wait(node.start(100), 10)
    node.set_config(100, {"features": "keyctl=1,nesting=1", "memory": 1024}, ["nameserver"])
    assert node.get_config(100, current=True)["features"] == "nesting=1"
    assert node.get_config(100, current=True)["memory"] == 1024  # hot-plugged
    shown = node.get_config(100)
    assert shown["features"] == "keyctl=1,nesting=1" and "nameserver" not in shown
    pending = {p["key"]: p for p in node.pending(100)}
    assert pending["features"] == {
        "key": "features",
        "value": "nesting=1",
        "pending": "keyctl=1,nesting=1",
    }
    assert pending["nameserver"]["delete"] == 1
    assert pending["digest"]["value"] == shown["digest"]  # as PVE's load_config adds it
    node.set_config(100, {}, revert=["nameserver"])
    assert node.get_config(100)["nameserver"] == "10.0.0.1"
    node.wait(node.stop(100), 10)
    node.wait(node.start(100), 10)
    conf, _ = runtime.running[100]
    assert conf["features"] == "keyctl=1,nesting=1" and conf["nameserver"] == "10.0.0.1"
    assert all("pending" not in p for p in node.pending(100))


def test_description_round_trip(node: Node, tmp_path: Path) -> None:
    create(node, description="Hermes\npvestack-stack: hermes\n")
    assert node.get_config(100)["description"] == "Hermes\npvestack-stack: hermes\n"
    assert (
        (tmp_path / "etc/pve/lxc/100.conf")
        .read_text()
        .startswith("#Hermes\n#pvestack-stack: hermes\narch: amd64\n")
    )
    node.set_config(100, {"description": "100% done\n"})
    assert node.get_config(100)["description"] == "100% done\n"


def test_node_lock_is_reentrant_and_excludes_other_processes(node: Node, tmp_path: Path) -> None:
    probe = (
        "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); "
        "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)"
    )
    lockfile = str(tmp_path / "etc/pve/.lock")
    with node.locked(), node.locked():
        held = subprocess.run(
            [sys.executable, "-c", probe, lockfile], capture_output=True, check=False
        )
        assert held.returncode != 0 and b"BlockingIOError" in held.stderr
    fd = os.open(lockfile, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released again
    finally:
        os.close(fd)


def test_create_sets_the_root_password_hash(node: Node, tmp_path: Path) -> None:
    tpl = tmp_path / "storage/local/template/cache/with-shadow_1_amd64.tar.gz"
    shadow = b"root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n"
    make_template(tpl, {"./etc/shadow": shadow}, mode=0o640)
    upid = node.create(
        {
            "vmid": 101,
            "ostemplate": f"local:vztmpl/{tpl.name}",
            "rootfs": "local-lvm:1",
            "password": "s3cret-pw",
        },
        user=TOKEN,
    )
    node.wait(upid, 10)
    shadow = tmp_path / "storage/local-lvm/images/101/vm-101-disk-0/etc/shadow"
    root, daemon = shadow.read_text().splitlines()
    assert root.startswith("root:$6$") and daemon == "daemon:*:19000:0:99999:7:::"
    salt = root.split(":")[1].split("$")[2]
    again = subprocess.run(
        ["openssl", "passwd", "-6", "-salt", salt, "-stdin"],
        input="s3cret-pw",
        capture_output=True,
        text=True,
        check=True,
    )
    assert root.split(":")[1] == again.stdout.strip()
    assert oct(shadow.stat().st_mode & 0o777) == "0o640"
    lines, _ = node.task_log(Identity("root@pam"), upid, 0, 0)
    assert "s3cret-pw" not in repr(lines) and "s3cret-pw" not in shadow.read_text()


def test_interfaces_as_pve_answers_them(node: Node) -> None:
    """``GET .../interfaces``: null while stopped; PVE's item shape when running, from
    which the guest transport takes the CT's address."""
    from pvestack.executors._guest_ssh import address_from_interfaces  # noqa: PLC0415

    create(node)
    assert node.interfaces(100) is None
    node.wait(node.start(100, user=TOKEN), 10)
    items = node.interfaces(100)
    assert items is not None
    lo, eth0 = items
    assert lo["name"] == "lo" and lo["inet"] == "127.0.0.1/8" and lo["inet6"] == "::1/128"
    assert eth0 == {
        "name": "eth0",
        "inet": "10.78.61.77/24",
        "inet6": "fe80::be24:11ff:fe00:31/64",
        "ip-addresses": [
            {"ip-address-type": "inet", "ip-address": "10.78.61.77", "prefix": 24},
            {"ip-address-type": "inet6", "ip-address": "fe80::be24:11ff:fe00:31", "prefix": 64},
        ],
        "hardware-address": "bc:24:11:00:00:31",
        "hwaddr": "bc:24:11:00:00:31",
    }
    assert address_from_interfaces(items) == "10.78.61.77"
    assert address_from_interfaces(None) is None
    assert address_from_interfaces([lo]) is None  # loopback is never the CT's address
    assert address_from_interfaces([{"name": "eth1", "inet": "10.0.0.9/8"}]) == "10.0.0.9"
    with pytest.raises(PveError):
        node.interfaces(999)
