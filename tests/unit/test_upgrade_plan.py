"""The upgrade as a plan action (issue 13): the running image as a guest fact, ONE
``upgrade`` action with from/to per service, snapshot true|false with PVE's reason,
backup, keep; its text and JSON; the config keys; the marker of an interrupted upgrade
read back as ``upgrade (resume)``."""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest

from examplekit import EXAMPLE, example_text
from pvestack._config import json_schema, parse_config
from pvestack._desired import build_desired
from pvestack._errors import ConfigError
from pvestack._guestfacts import (
    FACTS,
    ComposeFact,
    DockerFact,
    FactQuery,
    GuestFacts,
    ImageFact,
    ManagedFact,
    ServiceFact,
    ServiceUpgrade,
    UpgradeMarker,
    parse_guest_facts,
    parse_upgrade,
    read_args,
)
from pvestack._model import (
    ActionKind,
    Actor,
    DesiredState,
    ObservedContainer,
    ObservedStack,
    ObservedState,
    Plan,
)
from pvestack._plan import UpgradeInputs, plan, snapshot_blockers
from pvestack._render import render_text
from pvestack._steps import guest
from pvestack._steps import upgrade as upgrade_steps

OLD = "nousresearch/hermes-agent:v2026.6.1"
NEW = "nousresearch/hermes-agent:v2026.7.20"
ENV = {"LITELLM_API_KEY": "sk-upgrade-unit-1234", "PVESTACK_TOKEN_SECRET": "x"}
MOUNTS = re.compile(r"\n\[\[stack\.mount\]\]\n(?:[^\n\[]+\n)+")


def desired(extra: str = "", *, mounts: bool = False, image: str = NEW) -> DesiredState:
    text = example_text()
    if not mounts:
        text = MOUNTS.sub("\n", text)
    text = text.replace('recipe = "hermes"\n', f'recipe = "hermes"\nimage = "{image}"\n')
    head, sep, app = text.partition("[stack.app]\n")
    cfg = parse_config(head + extra + "\n" + sep + app, str(EXAMPLE), env={})
    return build_desired(cfg, env=ENV)


def observed(
    d: DesiredState, facts: GuestFacts, *, config: dict[str, str] | None = None
) -> ObservedState:
    spec = d.stacks[0]
    assert spec.container.vmid is not None
    cfg = {"rootfs": "local-lvm:vm-118-disk-0,size=8G", "unprivileged": "1", **(config or {})}
    for bm in spec.container.bind_mounts:
        cfg[bm.key] = bm.pve_value
    ct = ObservedContainer(spec.container.vmid, spec.container.node, "running", cfg, spec.name)
    st = ObservedStack(spec.name, ct.vmid, ct, True, guest_facts=facts)
    return ObservedState((ct.node,), (), (st,))


def in_sync_facts(d: DesiredState, running_image: str) -> GuestFacts:
    """What observe reads in a CT whose files match ``d`` and whose service runs
    ``running_image``: only the image differs."""
    app = d.stacks[0].app
    assert app is not None
    return GuestFacts(
        docker=DockerFact.OK,
        compose=ComposeFact.PLUGIN,
        images={img.ref: ImageFact.PRESENT for img in app.images},
        files={f.path: guest.file_want(f) for f in app.files if not (f.merge_env or f.merge_yaml)},
        managed={f.path: ManagedFact(guest.managed_sha256(f)) for f in app.files if f.merge_env},
        yaml={f.path: guest.yaml_want(f) for f in app.files if f.merge_yaml},
        services={"hermes": ServiceFact("running", running_image)},
    )


LVM = UpgradeInputs(storage_types={"local-lvm": "lvmthin", "local": "dir"})


def guest_plan(d: DesiredState, obs: ObservedState, inputs: UpgradeInputs = LVM) -> Plan:
    """The plan's in-container part (the CT's token/root settings are not observed here)."""
    p = plan(d, obs, upgrade=inputs)
    return replace(p, actions=tuple(a for a in p.actions if a.actor is Actor.GUEST))


def test_in_sync_stack_plans_nothing_and_a_new_pin_is_one_upgrade_action() -> None:
    d = desired()
    assert guest_plan(d, observed(d, in_sync_facts(d, NEW))).actions == ()

    old = desired(image=OLD)
    facts = in_sync_facts(old, OLD)  # the CT runs OLD with OLD's files
    p = guest_plan(d, observed(d, facts))
    assert [a.kind for a in p.actions] == [ActionKind.UPGRADE]
    (a,) = p.actions
    assert a.upgrade is not None
    assert a.upgrade.services == (ServiceUpgrade("hermes", OLD, NEW),)
    assert (a.upgrade.snapshot, a.upgrade.backup, a.upgrade.keep) == (True, False, 3)
    assert dict(a.before) == {"hermes": OLD} and dict(a.after) == {"hermes": NEW}
    # the image step runs first (a bad image fails before any file or service changes)
    ids = [s.id for s in a.steps]
    assert ids[0] == f"ct118:image:{NEW}" and ids[-1] == "ct118:compose:up", ids
    assert any(i.endswith("/compose.yml") for i in ids)


def test_plan_json_and_text_show_from_to_snapshot_backup_keep() -> None:
    d = desired("[stack.snapshots]\nkeep = 5\n[stack.backup]\nbefore_upgrade = true\n"
                'storage = "nas"\n')  # fmt: skip
    p = guest_plan(d, observed(d, in_sync_facts(desired(image=OLD), OLD)))
    (j,) = p.to_json()["actions"]
    assert j["kind"] == "upgrade" and j["id"] == "hermes:upgrade"
    assert j["upgrade"] == {
        "from": {"hermes": OLD}, "to": {"hermes": NEW}, "snapshot": True,
        "snapshot_blockers": [], "backup": True, "backup_storage": "nas", "keep": 5,
        "protected": False, "not_in_backup": [], "resume": None,
    }  # fmt: skip
    json.dumps(p.to_json())
    text = render_text(p)
    assert "~   hermes:upgrade  lxc/118 on gihyeon  [guest]" in text
    assert f'hermes: "{OLD}" -> "{NEW}"' in text
    assert "upgrade: snapshot true, backup true (storage nas), keep 5" in text


def test_bind_mounts_block_the_snapshot_and_the_plan_says_why_and_what_to_do() -> None:
    d = desired(mounts=True)
    p = plan(d, observed(d, in_sync_facts(desired(mounts=True, image=OLD), OLD)), upgrade=LVM)
    (a,) = [a for a in p.actions if a.kind is ActionKind.UPGRADE]
    u = a.upgrade
    assert u is not None and not u.snapshot
    assert u.blockers == (
        "mp0 is a bind mount of the host path /mnt/pve/hdd/hermes at /data (a host path has "
        "no storage snapshot)",
        "mp1 is a bind mount of the host path /media/2tb/hermes at /fast (a host path has "
        "no storage snapshot)",
    )
    assert u.not_in_backup == (
        "mp0 (/mnt/pve/hdd/hermes at /data)",
        "mp1 (/media/2tb/hermes at /fast)",
    )
    assert "apply refuses it: set [stack.backup] before_upgrade = true (or --backup)" in a.reason
    assert "not in any snapshot or backup: mp0" in a.reason
    assert "upgrade: snapshot false (mp0 is a bind mount" in render_text(p)
    # --backup: the offered safety net
    p = plan(d, observed(d, in_sync_facts(desired(mounts=True, image=OLD), OLD)),
             upgrade=UpgradeInputs(storage_types=LVM.storage_types, backup=True))  # fmt: skip
    (a,) = [a for a in p.actions if a.kind is ActionKind.UPGRADE]
    assert a.upgrade is not None and a.upgrade.backup
    assert "a vzdump backup comes first (no automatic rollback)" in a.reason


def test_storage_without_snapshots_and_protection() -> None:
    cfg = {"rootfs": "local-dir:vm-118-disk-0,size=8G", "mp0": "local-lvm:vm-118-disk-1,mp=/x"}
    assert snapshot_blockers(cfg, {"local-dir": "dir", "local-lvm": "lvmthin"}) == [
        "rootfs (local-dir:vm-118-disk-0) is on storage 'local-dir' of type dir, which "
        "cannot snapshot container volumes"
    ]
    assert snapshot_blockers(cfg, None) == []  # types not read: not claimed
    d = desired()
    obs = observed(d, in_sync_facts(desired(image=OLD), OLD), config={"protection": "1"})
    (a,) = guest_plan(d, obs).actions
    assert a.upgrade is not None and a.upgrade.protected and a.upgrade.snapshot
    assert "protection=1" in a.reason


@pytest.mark.parametrize(
    ("extra", "key", "fragment"),
    [
        ("[stack.snapshots]\nkeep = 0\n", "stack[0].snapshots.keep", "greater than or equal to 1"),
        ("[stack.snapshots]\nkept = 2\n", "stack[0].snapshots.kept", "unknown key"),
        ('[stack.backup]\nbefore_upgrade = "yes please"\n', "stack[0].backup.before_upgrade",
         "valid boolean"),
        ('[stack.backup]\nstorage = "no storage"\n', "stack[0].backup.storage", "storage id"),
    ],
)  # fmt: skip
def test_config_keys_are_validated_with_file_line_key(extra: str, key: str, fragment: str) -> None:
    head, sep, app = example_text().partition("[stack.app]\n")
    with pytest.raises(ConfigError) as ei:
        parse_config(head + extra + "\n" + sep + app, "stack.toml", env={})
    got = [(p.key, p.message, p.line) for p in ei.value.problems]
    assert [k for k, _, _ in got] == [key], got
    assert fragment in got[0][1] and got[0][2] is not None


def test_schema_has_the_keys_and_defaults() -> None:
    d = desired()
    assert (d.stacks[0].upgrade.keep, d.stacks[0].upgrade.backup_before) == (3, False)
    schema = json_schema()
    defs = schema.get("$defs", {})
    assert defs["SnapshotsSection"]["properties"]["keep"]["minimum"] == 1
    assert defs["BackupSection"]["properties"]["before_upgrade"]["default"] is False
    import tomllib  # noqa: PLC0415

    raw = tomllib.loads(example_text())
    raw["stack"][0]["snapshots"] = {"keep": 2}
    raw["stack"][0]["backup"] = {"before_upgrade": True, "storage": "local"}
    jsonschema.validate(raw, schema)


# ---------------------------------------------------------------- the guest's side, for real


def _sh(
    program: str, *args: str, stdin: str = "", path: str = ""
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{path}:/usr/bin:/bin" if path else "/usr/bin:/bin"}
    return subprocess.run(["sh", "-c", program, "sh", *args], input=stdin, capture_output=True,
                          text=True, check=False, env=env)  # fmt: skip


def test_facts_program_reports_each_service_image_and_the_marker(tmp_path: Path) -> None:
    """FACTS with a stand-in ``docker`` on PATH; the marker written by the real
    WRITE_MARKER program (paths moved into tmp) is read back as ``upgrade (resume)``."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "docker"
    fake.write_text(
        '#!/bin/sh\ncase "$1" in\n  info|compose) exit 0 ;;\n'
        f"  ps) printf 'hermes running {OLD}\\ndashboard exited {NEW}\\n' ;;\n"
        "  *) exit 1 ;;\nesac\n"
    )
    fake.chmod(0o755)
    marker = tmp_path / "state" / "upgrade.json"
    assert upgrade_steps.MARKER_PATH in FACTS
    facts_program = FACTS.replace(upgrade_steps.MARKER_PATH, str(marker))
    args = read_args(FactQuery("hermes"))

    r = _sh(facts_program, *args, path=str(bindir))
    assert r.returncode == 0, r.stderr
    facts = parse_guest_facts([r.stdout])
    assert facts is not None and facts.upgrade is None
    assert dict(facts.services) == {
        "hermes": ServiceFact("running", OLD),
        "dashboard": ServiceFact("exited", NEW),
    }

    m = UpgradeMarker((ServiceUpgrade("hermes", OLD, NEW),), "pvestack-20261202T071500Z", None,
                      "upgrade")  # fmt: skip
    (c,) = upgrade_steps.write_marker_step(118, "hermes", m).commands
    argv = list(c.argv[c.argv.index("--") + 1 :])
    assert argv[2] == upgrade_steps.WRITE_MARKER and c.stdin is not None
    w = _sh(argv[2], str(marker.parent), str(marker), stdin=c.stdin.reveal().decode())
    assert w.returncode == 0, w.stderr
    facts = parse_guest_facts([_sh(facts_program, *args, path=str(bindir)).stdout])
    assert facts is not None and facts.upgrade == m

    # the next plan: upgrade (resume), even though the service already runs the new image
    d = desired()
    resumed = replace(in_sync_facts(d, NEW), upgrade=facts.upgrade)
    (a,) = guest_plan(d, observed(d, resumed)).actions
    assert a.id == "hermes:upgrade:resume" and a.upgrade is not None
    assert a.upgrade.resume == m and a.upgrade.services == m.services
    assert "interrupted (phase upgrade, snapshot pvestack-20261202T071500Z)" in a.reason
    assert "upgrade (resume): snapshot true" in render_text(guest_plan(d, observed(d, resumed)))

    (c,) = upgrade_steps.clear_marker_step(118).commands
    argv = list(c.argv[c.argv.index("--") + 1 :])
    assert _sh(argv[2], str(marker)).returncode == 0 and not marker.exists()


@pytest.mark.parametrize("text", ["", "{", "[]", '{"to": 3}', '{"from": {}, "to": null}'])
def test_an_unreadable_marker_is_no_marker(text: str) -> None:
    assert parse_upgrade(text) is None
    facts = parse_guest_facts([f"docker\tok\nupgrade\t{text}\n"])
    assert facts is not None and facts.upgrade is None
