"""doctor's pure parts: what the stacks need, the grant commands, the root check, the
rendering (no network: the API is a recorded stand-in; the lab run is in tests/contract)."""

from __future__ import annotations

import base64
from dataclasses import replace
from pathlib import Path
from typing import Any

from pvestack._doctor import (
    DoctorReport,
    Finding,
    RootSettings,
    Status,
    _root_check,
    _vmid_finding,
    grant_commands,
    render_doctor,
    required_privileges,
)
from pvestack._model import ContainerSpec, DesiredState, StackSpec, TemplateSpec, VolumeMount


def _desired(vmid: int | None = 105, tag: str = "") -> DesiredState:
    ct = ContainerSpec(
        stack="s", node="pve", vmid=vmid, hostname="s",
        api_config={"rootfs": "fast:8", "net0": f"name=eth0,bridge=vmbr1{tag}"},
        features={}, template=TemplateSpec("local", "https://x/t.tar.zst", "t.tar.zst"),
        volume_mounts=(VolumeMount("mp0", "slow", 4, "/data"),),
    )  # fmt: skip
    return DesiredState((StackSpec("s", ct),))


def test_required_privileges_follow_the_stack() -> None:
    needs = {(n.path, p) for n in required_privileges(_desired()) for p in n.privs}
    assert ("/vms/105", "VM.Allocate") in needs and ("/vms/105", "VM.Snapshot") in needs
    assert ("/storage/fast", "Datastore.AllocateSpace") in needs
    assert ("/storage/slow", "Datastore.AllocateSpace") in needs
    assert ("/storage/local", "Datastore.AllocateTemplate") in needs
    assert ("/sdn/zones/localnetwork/vmbr1", "SDN.Use") in needs
    assert ("/nodes/pve", "Sys.Audit") in needs
    download = next(n for n in required_privileges(_desired()) if n.why == "download-url")
    assert download.alternative == ("/", ("Sys.Audit", "Sys.Modify"))


def test_an_appliance_template_needs_no_network_privilege() -> None:
    # POST /nodes/{node}/aplinfo checks Datastore.AllocateTemplate on the storage only
    # (pve-manager PVE/API2/Nodes.pm apl_download); Sys.AccessNetwork is download-url's
    d = _desired()
    ct = replace(d.stacks[0].container, template=TemplateSpec("local", "", "", appliance="x"))
    needs = required_privileges(DesiredState((StackSpec("s", ct),)))
    assert all(n.why != "download-url" for n in needs)
    held = {(n.path, p) for n in needs for p in n.privs}
    assert ("/storage/local", "Datastore.AllocateTemplate") in held
    assert ("/nodes/pve", "Sys.Audit") in held  # apt/versions still


def test_a_vlan_tag_and_the_next_free_id_change_the_paths() -> None:
    needs = {n.path for n in required_privileges(_desired(None, ",tag=20"))}
    assert "/sdn/zones/localnetwork/vmbr1/20" in needs and "/vms" in needs


def test_grant_commands_name_role_user_and_token() -> None:
    fix = grant_commands("deploy@pve!ci", "/vms/105", ["VM.Snapshot"])
    assert "pveum role modify PVEStackDeploy --append 1 --privs VM.Snapshot" in fix
    assert "pveum role add PVEStackDeploy --privs VM.Snapshot" in fix
    assert "pveum acl modify /vms --roles PVEStackDeploy --users deploy@pve" in fix
    assert "pveum acl modify /vms --roles PVEStackDeploy --tokens 'deploy@pve!ci'" in fix


def _known_hosts(tmp_path: Path, name: str) -> Path:
    blob = base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + b"k" * 32).decode()
    f = tmp_path / "known_hosts"
    f.write_text(f"{name} ssh-ed25519 {blob}\n")
    return f


def test_root_check_needs_a_known_host_key_and_a_reachable_port(tmp_path: Path) -> None:
    kh = _known_hosts(tmp_path, "[10.0.0.5]:2222")
    calls: list[tuple[str, int]] = []

    def ok(host: str, port: int) -> None:
        calls.append((host, port))

    def refused(host: str, port: int) -> None:
        raise ConnectionRefusedError("refused")

    good = _root_check(RootSettings("ssh", "10.0.0.5", 2222, str(kh)), ok)
    assert good.status is Status.PASS and calls == [("10.0.0.5", 2222)]
    unknown = _root_check(RootSettings("ssh", "10.0.0.6", 22, str(kh)), ok)
    assert unknown.status is Status.FAIL and "ssh-keyscan" in unknown.fix
    down = _root_check(RootSettings("ssh", "10.0.0.5", 2222, str(kh)), refused)
    assert down.status is Status.FAIL and "unreachable" in down.evidence
    assert _root_check(RootSettings("console"), ok).status is Status.PASS
    assert _root_check(RootSettings("none"), ok).status is Status.WARN


def test_render_one_line_per_finding_with_the_fix() -> None:
    report = DoctorReport((
        Finding("api", Status.PASS, "ok"),
        Finding("privilege /vms/1", Status.FAIL, "lacks VM.Audit", "pveum ..."),
    ))  # fmt: skip
    text = render_doctor(report).splitlines()
    assert text[0] == "PASS  api: ok"
    assert text[1] == "FAIL  privilege /vms/1: lacks VM.Audit  -> fix: pveum ..."
    assert text[2] == "doctor: 1 fail, 0 warn, 2 checks" and report.failed


class _ForeignConfig:
    """The API as _vmid_finding reads it: a CT without pvestack's mark."""

    def get(self, path: str, **params: str | int) -> Any:
        assert path == "/nodes/pve/lxc/105/config"
        return {"hostname": "other", "description": "not ours"}

    def request(self, method: str, path: str, params: Any = None) -> Any:
        raise AssertionError("doctor only reads the config here")


def test_a_foreign_ct_in_the_vmid_fails_unless_apply_adopts_it() -> None:
    (stack,) = _desired().stacks
    guests = {105: {"type": "lxc", "node": "pve", "name": "other"}}
    plain = _vmid_finding(_ForeignConfig(), stack, guests)
    assert plain.status is Status.FAIL and "--adopt" in plain.fix
    assert "without the pvestack mark" in plain.evidence
    adopted = _vmid_finding(_ForeignConfig(), stack, guests, adopt=True)
    assert adopted.status is Status.WARN and "--adopt takes it over" in adopted.evidence
    vm = _vmid_finding(_ForeignConfig(), stack, {105: {"type": "qemu", "name": "vm"}}, adopt=True)
    assert vm.status is Status.FAIL  # a VM is never adopted


class _OtherStackConfig(_ForeignConfig):
    def get(self, path: str, **params: str | int) -> Any:
        return {"hostname": "other", "tags": "pvestack", "description": "pvestack-stack: other"}


def test_another_stacks_ct_fails_even_with_adopt() -> None:
    (stack,) = _desired().stacks
    guests = {105: {"type": "lxc", "node": "pve", "name": "other"}}
    taken = _vmid_finding(_OtherStackConfig(), stack, guests, adopt=True)
    assert taken.status is Status.FAIL and "stack 'other'" in taken.evidence
    assert "--adopt" not in taken.fix
