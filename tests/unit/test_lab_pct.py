"""``pct`` on the lab's backend (a real ``Node`` on a temp dir; the runtime only records, the
real-LXC path is in tests/lab): Proxmox syntax, output, PVE's messages and exit code 255."""

from __future__ import annotations

from pathlib import Path

import pytest

from labstub import TEMPLATE, StubRuntime, make_template
from pvelab.backend.node import Node
from pvelab.pct import main, run


@pytest.fixture
def node(tmp_path: Path) -> Node:
    tpl = tmp_path / "storage/local/template/cache" / TEMPLATE
    make_template(tpl, {"./etc/hostname": b"localhost\n"})
    n = Node(tmp_path, StubRuntime(), "pve")
    params = {
        "vmid": 118,
        "ostemplate": f"local:vztmpl/{TEMPLATE}",
        "rootfs": "local-lvm:4",
        "unprivileged": 1,
        "hostname": "hermes",
    }
    n.wait(n.create(params), 10)
    return n


def test_set_features_mount_and_delete_then_config(
    node: Node, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = tmp_path / "hermes-data"
    host.mkdir()
    assert (
        run(["set", "118", "-features", "keyctl=1,nesting=1", "-mp0", f"{host},mp=/data"], node)
        == 0
    )
    assert run(["config", "118"], node) == 0
    out = capsys.readouterr().out
    assert "features: keyctl=1,nesting=1\n" in out
    assert f"mp0: {host},mp=/data\n" in out
    assert "hostname: hermes\n" in out
    assert "digest" not in out
    assert run(["set", "118", "--delete", "mp0", "-memory", "1024"], node) == 0
    cfg = node.get_config(118)
    assert "mp0" not in cfg and cfg["memory"] == 1024


def test_start_status_stop(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["start", "118"], node) == 0
    assert run(["status", "118"], node) == 0
    assert capsys.readouterr().out == "status: running\n"
    assert run(["stop", "118"], node) == 0
    run(["status", "118"], node)
    assert capsys.readouterr().out == "status: stopped\n"


def _main(argv: list[str], node: Node, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr("pvelab.pct.make_node", lambda lab_dir=None: node)
    with pytest.raises(SystemExit) as e:
        main(argv)
    return int(e.value.code or 0)


def test_errors_are_pves_with_exit_255(
    node: Node, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _main(["stop", "118"], node, monkeypatch) == 255
    assert capsys.readouterr().err == "CT 118 not running\n"
    assert _main(["set", "118", "-unprivileged", "0"], node, monkeypatch) == 255
    assert "unable to modify read-only option: 'unprivileged'" in capsys.readouterr().err
    assert _main(["set", "118", "-features", "bogus=1"], node, monkeypatch) == 255
    err = capsys.readouterr().err
    assert err.startswith("400 Parameter verification failed.\nfeatures: ")
    assert _main(["set", "118"], node, monkeypatch) == 255
    assert "no options specified" in capsys.readouterr().err
    assert _main(["frobnicate", "118"], node, monkeypatch) == 255
    assert _main(["config", "999"], node, monkeypatch) == 255


def test_list(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["list"], node) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["VMID", "Status", "Lock", "Name"]
    assert lines[1].split() == ["118", "stopped", "hermes"]
