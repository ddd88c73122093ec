"""The lab's privilege table, the deploy token's role and ACLs, SDN.Use on the bridge,
package versions and the appliance index (no root, no network)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pvelab.backend.aplinfo import AplInfo, Appliance, parse_index, render_index
from pvelab.backend.auth import PRIVILEGES, AuthStore, Identity
from pvelab.backend.errors import PveError
from pvelab.backend.packages import Packages
from pvelab.backend.perms import check_bridge_access, check_ct_modify_config_perm
from pvelab.backend.privileges import (
    DEPLOY_PRIVS,
    DEPLOY_TOKEN,
    RULES,
    endpoint_check,
    grant_deploy_token,
)
from pvelab.backend.schema import api_schema, method_schema

TOKEN = Identity("pvestack@pve", "deploy")


def test_every_rule_names_a_source_and_matches_pves_schema() -> None:
    schema = api_schema()
    for rule in RULES:
        assert rule.source.split()[0] in ("pve-container", "pve-manager", "pve-storage",
                                          "pve-access-control"), rule  # fmt: skip
        info = schema[rule.template]["info"][rule.method]
        assert (info.get("permissions") or {}).get("check") == rule.check, rule


def test_endpoint_check_falls_back_to_the_schema() -> None:
    tpl = "/nodes/{node}/storage/{storage}/upload"
    assert endpoint_check("POST", tpl, method_schema(tpl, "POST")) is not None


@pytest.fixture
def auth(tmp_path: Path) -> AuthStore:
    a = AuthStore(tmp_path / "auth.json")
    grant_deploy_token(a, "pve", "vmbr0", "s3cret")
    return a


def test_deploy_token_holds_the_role_on_its_paths_only(auth: AuthStore) -> None:
    assert auth.check_token(f"PVEAPIToken={DEPLOY_TOKEN}=s3cret") == TOKEN
    assert auth.privileges(TOKEN, "/vms/105") == set(DEPLOY_PRIVS)
    assert auth.privileges(TOKEN, "/storage/local-lvm") == set(DEPLOY_PRIVS)
    assert "SDN.Use" in auth.privileges(TOKEN, "/sdn/zones/localnetwork/vmbr0")
    assert "SDN.Use" not in auth.privileges(TOKEN, "/sdn/zones/localnetwork/vmbr1")
    assert auth.privileges(TOKEN, "/") == set()  # never on /: no Sys.Modify
    assert "Sys.AccessNetwork" in auth.privileges(TOKEN, "/nodes/pve")


def test_privsep_token_is_the_intersection_with_its_user(auth: AuthStore) -> None:
    auth.set_role("PVEStackDeploy", set(DEPLOY_PRIVS) - {"VM.Snapshot"})
    assert "VM.Snapshot" not in auth.privileges(TOKEN, "/vms/105")
    assert auth.permissions(TOKEN, "/vms/105")["/vms/105"]["VM.Allocate"] == 1


def test_a_download_url_needs_the_node_network_or_sys_modify(auth: AuthStore) -> None:
    check = endpoint_check("POST", "/nodes/{node}/storage/{storage}/download-url", {})
    assert check is not None
    auth.check(TOKEN, check, {"node": "pve", "storage": "local"})
    auth.set_role("PVEStackDeploy", set(DEPLOY_PRIVS) - {"Sys.AccessNetwork"})
    with pytest.raises(PveError) as e:
        auth.check(TOKEN, check, {"node": "pve", "storage": "local"})
    assert e.value.status == 403


def test_net_needs_sdn_use_on_the_bridge_and_the_tag(auth: AuthStore) -> None:
    check_bridge_access(auth, TOKEN, "name=eth0,bridge=vmbr0,ip=dhcp")
    with pytest.raises(PveError, match=r"/sdn/zones/localnetwork/vmbr1, SDN.Use"):
        check_bridge_access(auth, TOKEN, "name=eth0,bridge=vmbr1,ip=dhcp")
    # a tagged vlan: checked on .../vmbr0/20, which the bridge's ACL propagates to
    check_bridge_access(auth, TOKEN, "name=eth0,bridge=vmbr0,tag=20")
    auth.set_role("PVEStackDeploy", set(DEPLOY_PRIVS) - {"SDN.Use"})
    with pytest.raises(PveError, match=r"SDN\.Use"):
        check_ct_modify_config_perm(
            auth, TOKEN, 105, None, {"net0": "name=eth0,bridge=vmbr0"}, [], True
        )


def test_packages_default_patched_and_told(tmp_path: Path) -> None:
    p = Packages(tmp_path)
    rows = p.versions("pve-manager/9.1.1/lab")
    assert [r["Package"] for r in rows[:2]] == ["proxmox-ve", "pve-manager"]
    lxc = next(r for r in rows if r["Package"] == "lxc-pve")
    assert lxc["OldVersion"] == "6.0.5-3" and lxc["CurrentState"] == "Installed"
    p.tell({"lxc-pve": "6.0.0-1", "pve-container": None})
    assert p.installed()["lxc-pve"] == "6.0.0-1" and "pve-container" not in p.installed()
    with pytest.raises(ValueError):
        p.tell({"lxc-pve": 6})
    p.reset()
    assert p.installed()["lxc-pve"] == "6.0.5-3"


def test_aplinfo_index_round_trip_as_aplinfo_pm(tmp_path: Path) -> None:
    text = render_index([
        Appliance("debian-13-standard", "13.1-1", "debian-13",
                  "debian-13-standard_13.1-1_amd64.tar.zst", "ab" * 64, "Debian 13 Trixie",
                  "A small Debian Trixie system."),
        Appliance("debian-12-standard", "12.12-1", "debian-12",
                  "http://127.0.0.1:9/x/debian-12-standard_12.12-1_amd64.tar.zst", "cd" * 64,
                  "Debian 12 Bookworm"),
    ]) + "\nPackage: broken\nVersion: not a version\n"  # fmt: skip
    index = parse_index(text, "http://127.0.0.1:8099")
    assert sorted(index) == [
        "debian-12-standard_12.12-1_amd64.tar.zst",
        "debian-13-standard_13.1-1_amd64.tar.zst",
    ]
    rec = index["debian-13-standard_13.1-1_amd64.tar.zst"]
    assert rec["package"] == "debian-13-standard" and rec["os"] == "debian-13"
    assert rec["location"] == "http://127.0.0.1:8099/debian-13-standard_13.1-1_amd64.tar.zst"
    assert rec["sha512sum"] == "ab" * 64 and rec["type"] == "lxc"
    assert rec["headline"] == "Debian 13 Trixie"
    assert rec["description"] == "A small Debian Trixie system."
    assert index["debian-12-standard_12.12-1_amd64.tar.zst"]["location"].startswith(
        "http://127.0.0.1:9/x/"
    )
    apl = AplInfo(tmp_path)
    assert apl.listing() == []
    with pytest.raises(PveError, match="loopback"):
        apl.update("http://example.org/aplinfo.dat")


def test_lab_up_tokens_deploy_by_default_root_kept(tmp_path: Path) -> None:
    from pvelab.control import ROOT_TOKEN_ID, TOKEN_ID, Lab, LabSettings  # noqa: PLC0415

    lab = Lab(tmp_path, LabSettings(node="n1", bridge="pvlabx"))
    (tmp_path / "secrets").mkdir()
    lab._ensure_token()
    first = json.loads(lab.secrets_file.read_text())
    assert first["tokenid"] == TOKEN_ID == DEPLOY_TOKEN
    assert (lab.secrets_file.stat().st_mode & 0o777) == 0o600
    auth = AuthStore(tmp_path / "etc" / "pve" / "lab-auth.json")
    who = auth.check_token(f"PVEAPIToken={TOKEN_ID}={first['secret']}")
    assert who == TOKEN and not who.is_root
    assert "SDN.Use" in auth.privileges(who, "/sdn/zones/localnetwork/pvlabx")
    assert "Sys.Audit" in auth.privileges(who, "/nodes/n1")
    root_id, root_secret = lab.root_token()
    assert root_id == ROOT_TOKEN_ID
    assert auth.privileges(auth.check_token(f"PVEAPIToken={root_id}={root_secret}"), "/") == set(
        PRIVILEGES
    )
    lab._ensure_token()  # a second `up` keeps both secrets and re-grants the role
    assert json.loads(lab.secrets_file.read_text()) == first
    assert len([e for e in json.loads(auth.path.read_text())["acl"] if e["ugid"] == TOKEN_ID]) == 4


@pytest.mark.parametrize(
    ("opt", "priv"),
    [
        ("cores", "VM.Config.CPU"), ("cpulimit", "VM.Config.CPU"), ("memory", "VM.Config.Memory"),
        ("swap", "VM.Config.Memory"), ("rootfs", "VM.Config.Disk"), ("mp3", "VM.Config.Disk"),
        ("net0", "VM.Config.Network"), ("hostname", "VM.Config.Network"),
        ("nameserver", "VM.Config.Network"), ("tags", "VM.Config.Options"),
        ("description", "VM.Config.Options"), ("onboot", "VM.Config.Options"),
        ("features", "VM.Allocate"),
    ],
)  # fmt: skip
def test_each_option_needs_its_privilege(auth: AuthStore, opt: str, priv: str) -> None:
    values = {"rootfs": "local-lvm:4", "mp3": "local-lvm:1,mp=/x", "net0": "name=eth0,bridge=vmbr0",
              "features": "nesting=1"}  # fmt: skip
    new = {opt: values.get(opt, "1")}
    check_ct_modify_config_perm(auth, TOKEN, 105, None, new, [], True)
    auth.set_role("PVEStackDeploy", set(DEPLOY_PRIVS) - {priv})
    with pytest.raises(PveError, match=f"/vms/105, {re.escape(priv)}"):
        check_ct_modify_config_perm(auth, TOKEN, 105, None, new, [], True)
