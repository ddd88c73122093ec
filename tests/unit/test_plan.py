"""The planner as data: observed state + stack file in, expected actions out."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from pvestack._engine import RootAccess, apply
from pvestack._errors import ReplacementRequired
from pvestack._model import (
    Action,
    Actor,
    Adopt,
    Change,
    DesiredState,
    GuestSummary,
    HostPathFact,
    ObservedContainer,
    ObservedStack,
    ObservedState,
)
from pvestack._observe import mark_owner
from pvestack._plan import plan, same_value
from pvestack._render import render_text

PBS = GuestSummary(110, "gihyeon", "lxc", "pbs", "running", ())
CONVERGED: dict[str, str] = {
    "hostname": "hermes",
    "cores": "2",
    "memory": "4096",
    "swap": "512",
    "rootfs": "local-lvm:vm-118-disk-0,size=24G",
    "net0": "name=eth0,bridge=intra01,hwaddr=BC:24:11:00:00:01,ip=dhcp,type=veth",
    "onboot": "1",
    "tags": "agent;ai;pvestack",
    "description": "Hermes Agent (Nous Research)\npvestack-stack: hermes\n",
    "nameserver": "1.1.1.1 8.8.8.8",
    "unprivileged": "1",
    "features": "keyctl=1,nesting=1",
    "mp0": "/mnt/pve/hdd/hermes,mp=/data",
    "mp1": "/media/2tb/hermes,mp=/fast",
    "ostype": "debian",
    "arch": "amd64",
}
# what the token alone leaves behind: nesting only, no bind mounts
TOKEN_ONLY = {k: v for k, v in CONVERGED.items() if k not in ("mp0", "mp1")} | {
    "features": "nesting=1"
}
API_ROOT_ONLY_KEYS = ("keyctl", "fuse", "mknod", "lxc.")


def observed(
    config: dict[str, str] | None,
    *,
    status: str = "running",
    owner: str | None = "hermes",
    template: bool = True,
    guest_type: str = "lxc",
    host_paths: tuple[HostPathFact, ...] = (),
    pending: tuple[str, ...] = (),
) -> ObservedState:
    guests = [PBS]
    container = None
    foreign = None
    if config is not None:
        g = GuestSummary(118, "gihyeon", guest_type, "hermes", status, ("pvestack",))
        guests.append(g)
        if guest_type == "lxc":
            container = ObservedContainer(118, "gihyeon", status, config, owner, pending)
        if owner != "hermes" or guest_type != "lxc":
            foreign = g
    st = ObservedStack(
        name="hermes",
        vmid=118,
        container=container,
        template_present=template,
        foreign=foreign,
        host_paths=host_paths,
    )
    return ObservedState(("gihyeon",), tuple(guests), (st,))


def ids(p: Any) -> list[str]:
    return [a.id for a in p.actions]


def api_params(a: Action) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in a.api:
        out.update(c.params)
    return out


def assert_token_safe(p: Any) -> None:
    """No api action carries a key only root@pam may send."""
    for a in p.by_actor(Actor.API):
        for key, value in api_params(a).items():
            assert not key.startswith("lxc."), a.id
            if key == "features":
                flags = {kv.split("=")[0] for kv in str(value).split(",") if kv}
                assert flags <= {"nesting"}, (a.id, value)
            if key.startswith("mp"):
                assert not str(value).startswith("/"), (a.id, key, value)


# ---------------------------------------------------------------- create


def test_create_routes_token_and_root_parts(example_desired: DesiredState) -> None:
    p = plan(example_desired, observed(None, template=False))
    assert ids(p) == [
        "hermes:template",
        "hermes:ct:create",
        "hermes:host:mp0",
        "hermes:host:mp1",
        "hermes:root:pct-set",
        "hermes:ct:start",
        "hermes:probe:mp0",
        "hermes:probe:mp1",
    ]
    actors = {a.id: a.actor for a in p.actions}
    assert actors["hermes:template"] is Actor.API
    assert actors["hermes:ct:create"] is Actor.API
    assert actors["hermes:root:pct-set"] is Actor.ROOT
    assert actors["hermes:host:mp0"] is Actor.ROOT
    assert_token_safe(p)
    create = next(a for a in p.actions if a.id == "hermes:ct:create")
    params = api_params(create)
    assert params["vmid"] == 118
    assert params["features"] == "nesting=1"
    assert params["ostemplate"] == ("local:vztmpl/debian-12-standard_12.12-1_amd64.tar.zst")
    assert params["rootfs"] == "local-lvm:24"
    assert params["net0"] == "name=eth0,bridge=intra01,ip=dhcp"
    assert params["unprivileged"] == 1
    assert "pvestack" in str(params["tags"]).split(";")
    assert "pvestack-stack: hermes" in str(params["description"])
    root = next(a for a in p.actions if a.id == "hermes:root:pct-set")
    assert dict(root.after) == {
        "features": "keyctl=1,nesting=1",
        "mp0": "/mnt/pve/hdd/hermes,mp=/data",
        "mp1": "/media/2tb/hermes,mp=/fast",
    }
    assert "only allowed for root@pam" in root.reason
    tmpl = p.actions[0]
    assert api_params(tmpl) == {
        "content": "vztmpl",
        "filename": "debian-12-standard_12.12-1_amd64.tar.zst",
        "url": "http://download.proxmox.com/images/system/debian-12-standard_12.12-1_amd64.tar.zst",
    }


def test_create_skips_download_when_template_present(example_desired: DesiredState) -> None:
    p = plan(example_desired, observed(None, template=True))
    assert "hermes:template" not in ids(p)


def test_nesting_alone_is_all_token(example_text: str, make_desired: Any) -> None:
    text = example_text.replace(
        "features = { nesting = true, keyctl = true }", "features = { nesting = true }"
    )
    text = text.split("[[stack.mount]]")[0] + '[stack.app]\nrecipe = "hermes"\n'
    p = plan(make_desired(text), observed(None))
    assert [a.actor for a in p.actions] == [Actor.API, Actor.API]
    assert api_params(p.actions[0])["features"] == "nesting=1"


def test_volume_mount_is_token_safe_at_create(example_text: str, make_desired: Any) -> None:
    text = example_text.replace(
        'host_path = "/media/2tb/hermes"',
        'volume = { storage = "local-lvm", size_gb = 32 }',
    )
    p = plan(make_desired(text), observed(None))
    create = next(a for a in p.actions if a.id == "hermes:ct:create")
    assert api_params(create)["mp1"] == "local-lvm:32,mp=/fast"
    root = next(a for a in p.actions if a.id == "hermes:root:pct-set")
    assert "mp1" not in root.after and "mp0" in root.after
    assert_token_safe(p)


# ---------------------------------------------------------------- no-op / pending root


def test_converged_is_no_op(example_desired: DesiredState) -> None:
    p = plan(example_desired, observed(CONVERGED))
    assert p.actions == ()
    assert not p.changes
    assert "No changes" in render_text(p)


def test_after_token_apply_only_root_steps_remain(example_desired: DesiredState) -> None:
    p = plan(example_desired, observed(TOKEN_ONLY))
    assert p.by_actor(Actor.API) == ()
    assert ids(p) == [
        "hermes:host:mp0",
        "hermes:host:mp1",
        "hermes:root:pct-set",
        "hermes:ct:reboot",
        "hermes:probe:mp0",
        "hermes:probe:mp1",
    ]
    pct = next(a for a in p.actions if a.id == "hermes:root:pct-set")
    assert pct.change is Change.UPDATE
    assert pct.before == {"features": "nesting=1", "mp0": None, "mp1": None}
    reboot = next(a for a in p.actions if a.id == "hermes:ct:reboot")
    assert reboot.actor is Actor.ROOT


def test_stopped_container_is_started_not_rebooted(example_desired: DesiredState) -> None:
    p = plan(example_desired, observed(TOKEN_ONLY, status="stopped"))
    assert "hermes:ct:reboot" not in ids(p)
    assert ids(p).index("hermes:root:pct-set") < ids(p).index("hermes:ct:start")


# ---------------------------------------------------------------- update


def test_update_changes_only_differing_keys(example_desired: DesiredState) -> None:
    cfg = CONVERGED | {"memory": "2048", "cores": "1"}
    p = plan(example_desired, observed(cfg))
    assert ids(p) == ["hermes:ct:config"]
    a = p.actions[0]
    assert a.actor is Actor.API and a.change is Change.UPDATE
    assert api_params(a) == {"memory": 4096, "cores": 2}
    assert a.api[0].method == "PUT" and a.api[0].path == "/nodes/gihyeon/lxc/118/config"
    assert dict(a.before) == {"memory": "2048", "cores": "1"}
    assert dict(a.after) == {"memory": "4096", "cores": "2"}


def test_server_added_net_keys_and_tag_order_are_not_changes() -> None:
    assert same_value(
        "net0", "name=eth0,bridge=b,ip=dhcp", "bridge=b,hwaddr=AA:BB,ip=dhcp,name=eth0,type=veth"
    )
    assert not same_value("net0", "name=eth0,bridge=b,ip=dhcp", "name=eth0,bridge=c,ip=dhcp")
    assert same_value("tags", "b;a", "a;b")
    assert same_value("rootfs", "local-lvm:24", "local-lvm:vm-1-disk-0,size=24G")
    assert not same_value("rootfs", "local-lvm:24", "local-lvm:vm-1-disk-0,size=8G")


def test_dns_removed_from_file_is_deleted(example_text: str, make_desired: Any) -> None:
    text = example_text.replace('dns = ["1.1.1.1", "8.8.8.8"]\n', "")
    p = plan(make_desired(text), observed(CONVERGED))
    assert ids(p) == ["hermes:ct:config"]
    assert api_params(p.actions[0]) == {"delete": "nameserver"}


def test_grow_disk_resizes_shrink_warns(example_desired: DesiredState) -> None:
    p = plan(example_desired, observed(CONVERGED | {"rootfs": "local-lvm:vm-118-disk-0,size=8G"}))
    assert ids(p) == ["hermes:ct:resize"]
    assert api_params(p.actions[0]) == {"disk": "rootfs", "size": "24G"}
    p = plan(example_desired, observed(CONVERGED | {"rootfs": "local-lvm:vm-118-disk-0,size=64G"}))
    assert p.actions == ()
    assert any("cannot shrink" in w for w in p.warnings)


def test_nesting_change_on_existing_ct_goes_to_token(example_text: str, make_desired: Any) -> None:
    text = example_text.replace(
        "features = { nesting = true, keyctl = true }", "features = { nesting = true }"
    )
    cfg = CONVERGED | {"features": ""}
    p = plan(make_desired(text), observed(cfg))
    config = next(a for a in p.actions if a.id == "hermes:ct:config")
    assert api_params(config) == {"features": "nesting=1"}
    reboot = next(a for a in p.actions if a.id == "hermes:ct:reboot")
    assert reboot.actor is Actor.API  # the token may reboot; no root change needed it


def test_keyctl_change_goes_to_root(example_desired: DesiredState) -> None:
    p = plan(example_desired, observed(CONVERGED | {"features": "nesting=1"}))
    assert p.by_actor(Actor.API) == ()
    pct = next(a for a in p.actions if a.id == "hermes:root:pct-set")
    assert dict(pct.after) == {"features": "keyctl=1,nesting=1"}
    assert "except nesting" in pct.reason


def test_changed_bind_mount_goes_to_root(example_desired: DesiredState) -> None:
    p = plan(example_desired, observed(CONVERGED | {"mp1": "/media/2tb/other,mp=/fast"}))
    pct = next(a for a in p.actions if a.id == "hermes:root:pct-set")
    assert pct.actor is Actor.ROOT
    assert dict(pct.after) == {"mp1": "/media/2tb/hermes,mp=/fast"}
    assert "mount point type bind" in pct.reason
    assert "hermes:host:mp1" in ids(p) and "hermes:host:mp0" not in ids(p)


def test_custom_idmap_is_a_root_step(example_text: str, make_desired: Any) -> None:
    text = example_text.replace(
        "[stack.network]",
        'idmap = ["u 0 100000 65536", "g 0 100000 65536", "u 65536 165536 1000"]\n'
        "\n[stack.network]",
    )
    p = plan(make_desired(text), observed(CONVERGED))
    a = next(a for a in p.actions if a.id == "hermes:root:idmap")
    assert a.actor is Actor.ROOT
    assert "not an API parameter" in a.reason
    assert p.by_actor(Actor.API) == ()


# ---------------------------------------------------------------- host facts


def test_host_dir_facts_decide_host_steps(example_desired: DesiredState) -> None:
    good = HostPathFact("/mnt/pve/hdd/hermes", True, 100000, 100000, "755")
    wrong = HostPathFact("/media/2tb/hermes", True, 0, 0, "755")
    p = plan(example_desired, observed(CONVERGED, host_paths=(good, wrong)))
    assert ids(p) == ["hermes:host:mp1"]
    a = p.actions[0]
    assert a.actor is Actor.ROOT
    assert "host uid 100000" in a.reason
    assert a.after["owner"] == "100000:100000"


def test_owner_uid_maps_through_idmap(example_text: str, make_desired: Any) -> None:
    text = example_text.replace('path = "/fast"', 'path = "/fast"\nuid = 10000')
    missing = HostPathFact("/media/2tb/hermes", False)
    ok = HostPathFact("/mnt/pve/hdd/hermes", True, 100000, 100000, "755")
    p = plan(make_desired(text), observed(CONVERGED, host_paths=(ok, missing)))
    assert ids(p) == ["hermes:host:mp1"]
    assert p.actions[0].after["owner"] == "110000:110000"
    assert p.actions[0].change is Change.CREATE


# ---------------------------------------------------------------- ownership


def test_unmarked_guest_is_refused(example_desired: DesiredState) -> None:
    cfg = {k: v for k, v in CONVERGED.items() if k not in ("tags", "description")}
    p = plan(example_desired, observed(cfg, owner=None))
    assert p.actions == ()
    assert len(p.refused) == 1 and "without the pvestack mark" in p.refused[0]
    assert "--adopt" in p.refused[0]


def test_adopt_shows_the_diff_and_adds_the_mark(example_desired: DesiredState) -> None:
    cfg = {k: v for k, v in CONVERGED.items() if k not in ("tags", "description")}
    cfg["memory"] = "1024"
    p = plan(example_desired, observed(cfg, owner=None), adopt=True)
    assert p.refused == ()
    assert ids(p) == ["hermes:ct:config"]
    a = p.actions[0]
    assert set(a.after) == {"memory", "tags", "description"}
    assert a.before["tags"] is None
    assert a.precondition == Adopt("hermes")
    assert any("adopting" in w for w in p.warnings)


def test_vm_at_vmid_is_refused_even_with_adopt(example_desired: DesiredState) -> None:
    p = plan(example_desired, observed({}, guest_type="qemu", owner=None), adopt=True)
    assert p.actions == ()
    assert "is a VM" in p.refused[0]


def test_other_stacks_container_is_refused(example_desired: DesiredState) -> None:
    p = plan(example_desired, observed(CONVERGED, owner="litellm"), adopt=True)
    assert p.actions == ()
    assert "belongs to stack 'litellm'" in p.refused[0]


# ---------------------------------------------------------------- replace


def test_unprivileged_change_is_replace_never_done(example_desired: DesiredState) -> None:
    p = plan(example_desired, observed(CONVERGED | {"unprivileged": "0"}))
    assert ids(p) == ["hermes:ct:replace"]
    a = p.actions[0]
    assert a.change is Change.REPLACE and a.api == () and a.steps == ()
    assert "unable to modify read-only option: 'unprivileged'" in a.reason
    with pytest.raises(ReplacementRequired):
        apply(p, None, root=RootAccess(None, "none"))  # type: ignore[arg-type]


# ---------------------------------------------------------------- output


def test_json_shape_is_stable(example_desired: DesiredState) -> None:
    p = plan(example_desired, observed(CONVERGED | {"memory": "2048"}))
    data = json.loads(json.dumps(p.to_json()))
    assert data["format_version"] == 1 and data["changes"] is True
    # the README's documented keys stay as they were; new keys are only added
    documented = ("id", "stack", "action", "target", "actor", "reason", "before", "after")
    assert [{k: a[k] for k in documented} for a in data["actions"]] == [
        {
            "id": "hermes:ct:config",
            "stack": "hermes",
            "action": "update",
            "target": "lxc/118 on gihyeon",
            "actor": "api",
            "reason": "token-safe settings differ: memory",
            "before": {"memory": "2048"},
            "after": {"memory": "4096"},
        }
    ]
    a = data["actions"][0]
    assert a["kind"] == "config-update"
    assert a["target_ref"] == {"kind": "lxc", "node": "gihyeon", "vmid": 118, "path": ""}
    assert a["precondition"] == "marked by stack hermes"


def test_text_output_names_actor_and_symbols(example_desired: DesiredState) -> None:
    p = plan(example_desired, observed(None))
    text = render_text(p, root_via="console")
    assert "  +   hermes:ct:create  lxc/118 on gihyeon  [api]" in text
    assert "[root]" in text
    assert "root (via console)" in text


def test_stacks_ordered_by_depends_on(example_text: str, make_desired: Any) -> None:
    text = example_text
    second = (
        text[text.index("[[stack]]") :]
        .replace('\nname = "hermes"', '\nname = "gateway"')
        .replace("vmid = 118", "vmid = 117")
    )
    text = (
        text.replace('\nname = "hermes"', '\nname = "hermes"\ndepends_on = ["gateway"]')
        + "\n"
        + second
    )
    d = make_desired(text)
    obs = ObservedState(
        ("gihyeon",),
        (),
        (
            ObservedStack("hermes", 118, None, True),
            ObservedStack("gateway", 117, None, True),
        ),
    )
    p = plan(d, obs)
    order = [a.stack for a in p.actions]
    assert order.index("gateway") < order.index("hermes")
    assert replace(p, warnings=()).actions == p.actions


def test_pending_changes_on_a_running_ct_need_a_reboot(example_desired: DesiredState) -> None:
    p = plan(example_desired, observed(CONVERGED, pending=("features",)))
    assert ids(p) == ["hermes:ct:reboot"]
    a = p.actions[0]
    assert a.actor is Actor.API  # nothing root-only changes now: the token may reboot
    assert a.api[0].path == "/nodes/gihyeon/lxc/118/status/reboot"
    assert "pending now: features" in a.reason
    # stopped: the next start applies them, no reboot
    p = plan(example_desired, observed(CONVERGED, status="stopped", pending=("features",)))
    assert ids(p) == ["hermes:ct:start"]


def test_mark_needs_both_tag_and_description_line() -> None:
    assert mark_owner({"tags": "ai;pvestack", "description": "x\npvestack-stack: hermes\n"}) == (
        "hermes"
    )
    assert mark_owner({"tags": "ai", "description": "pvestack-stack: hermes"}) is None
    assert mark_owner({"tags": "pvestack", "description": "hand made"}) is None
    assert mark_owner({"tags": "PVESTACK,ai", "description": "pvestack-stack: gw"}) == "gw"


def test_host_key_record_in_the_description_is_kept(example_desired: DesiredState) -> None:
    """The record a root step wrote (``pvestack-hostkey:``) is no drift, and a description
    update carries it over (the guest transport pins it)."""
    fp = "SHA256:" + "Q" * 43
    recorded = CONVERGED["description"] + f"pvestack-hostkey: {fp}\n"
    assert plan(example_desired, observed(CONVERGED | {"description": recorded})).actions == ()
    old = f"old words\npvestack-stack: hermes\npvestack-hostkey: {fp}\n"
    p = plan(example_desired, observed(CONVERGED | {"description": old}))
    assert ids(p) == ["hermes:ct:config"]
    assert api_params(p.actions[0])["description"] == (
        f"Hermes Agent (Nous Research)\npvestack-stack: hermes\npvestack-hostkey: {fp}"
    )
