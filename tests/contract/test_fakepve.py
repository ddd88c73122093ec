"""plan/apply/destroy against fakepve with permissions on: a root-only key sent with
the token would fail with PVE's real 403. Every parameter sent is checked against the
API schema by the ``recorder`` fixture."""

from __future__ import annotations

import importlib
import json
import os
import pty
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pvestack._client import ClientSettings, PveClient
from pvestack._commands import Secret
from pvestack._config import StackFile
from pvestack._desired import build_desired
from pvestack._engine import (
    Outcome,
    RootAccess,
    apply,
    destroy,
    destroy_plan,
    plan,
    root_effects_missing,
)
from pvestack._errors import (
    PveAuthError,
    PveError,
    PveParamError,
    PvePermissionError,
    PveTaskError,
    TransportError,
)
from pvestack._model import Actor, Plan
from pvestack.cli import app

pytestmark = pytest.mark.contract

NO_ROOT = RootAccess(None, 'root.via = "console": run the printed script', "console")

# fakepve models neither /access/permissions nor every bridge: doctor is the lab's
# (tests/contract/test_lab_doctor.py, test_apply_doctor.py)
SKIP_DOCTOR = ("--skip-doctor",)


def token_apply(cfg: StackFile, client: PveClient, **kw: Any) -> Any:
    p = plan(build_desired(cfg), client, **kw).plan
    return apply(p, client, root=NO_ROOT)


# ---------------------------------------------------------------- create + converge


def test_apply_creates_the_seed_container_with_token_safe_keys(
    pve: Any, stack_cfg: StackFile, client: PveClient, recorder: Any
) -> None:
    res = token_apply(stack_cfg, client)
    outcomes = {r.action.id: r.outcome for r in res.results}
    assert outcomes["hermes:template"] is Outcome.DONE
    assert outcomes["hermes:ct:create"] is Outcome.DONE
    assert outcomes["hermes:ct:start"] is Outcome.DONE
    assert outcomes["hermes:root:pct-set"] is Outcome.PENDING
    assert all(r.outcome is not Outcome.FAILED for r in res.results), res.to_json()
    assert res.exit_code == 3
    assert "console" in res.pending_reason
    ct = pve.ct(118)
    assert ct is not None and ct.node == "gihyeon" and ct.status == "running"
    cfg = ct.config
    assert cfg["hostname"] == "hermes"
    assert cfg["features"] == "nesting=1"
    assert "mp0" not in cfg and "mp1" not in cfg
    assert cfg["tags"] == "agent;ai;pvestack"
    assert "pvestack-stack: hermes" in cfg["description"]
    assert str(cfg["unprivileged"]) == "1"
    assert cfg["nameserver"] == "1.1.1.1 8.8.8.8"
    assert str(cfg["memory"]) == "4096" and str(cfg["cores"]) == "2"
    rows = client.get("/nodes/gihyeon/storage/local/content", content="vztmpl")
    assert "local:vztmpl/debian-12-standard_12.12-1_amd64.tar.zst" in {r["volid"] for r in rows}
    # nothing root-only went out with the token
    for method, path, params in recorder.writes():
        assert "keyctl" not in str(params.get("features", "")), (method, path)
        assert not any(str(v).startswith("/") for k, v in params.items() if k.startswith("mp"))
    # the PBS container was only read
    assert pve.ct(110).config.get("tags") == "backup"
    assert not any("/lxc/110" in p for m, p, _ in recorder.writes())


def test_second_plan_shows_only_root_steps(
    pve: Any, stack_cfg: StackFile, client: PveClient, recorder: Any
) -> None:
    token_apply(stack_cfg, client)
    second = plan(build_desired(stack_cfg), client)
    p = second.plan
    assert p.by_actor(Actor.API) == ()
    assert {a.id for a in p.by_actor(Actor.ROOT)} >= {
        "hermes:root:pct-set",
        "hermes:ct:reboot",
    }
    pct = next(a for a in p.actions if a.id == "hermes:root:pct-set")
    assert pct.after["features"] == "keyctl=1,nesting=1"
    assert pct.after["mp0"] == "/mnt/pve/hdd/hermes,mp=/data"
    assert second.api_calls <= 4
    # and apply again: no token write at all, root still pending
    writes = len(recorder.writes())
    res = apply(p, client, root=NO_ROOT)
    assert res.exit_code == 3
    assert all(r.outcome is Outcome.PENDING for r in res.results)
    assert len(recorder.writes()) == writes


def test_interrupted_apply_resumes(pve: Any, stack_cfg: StackFile, client: PveClient) -> None:
    p = plan(build_desired(stack_cfg), client).plan
    # only the first two actions ran (template, create), then the run was cut off
    partial = Plan(actions=p.actions[:2])
    apply(partial, client, root=NO_ROOT)
    assert pve.ct(118).status == "stopped"
    p2 = plan(build_desired(stack_cfg), client).plan
    assert "hermes:template" not in {a.id for a in p2.actions}
    assert "hermes:ct:create" not in {a.id for a in p2.actions}
    assert "hermes:ct:start" in {a.id for a in p2.actions}
    res = apply(p2, client, root=NO_ROOT)
    assert pve.ct(118).status == "running"
    assert res.exit_code == 3
    # a stale plan that still says "create" skips it instead of failing
    res = apply(partial, client, root=NO_ROOT)
    assert [r.outcome for r in res.results] == [Outcome.SKIPPED, Outcome.SKIPPED]


# ---------------------------------------------------------------- PVE's real rules


def test_root_only_keys_with_the_token_get_pves_403(
    pve: Any, stack_cfg: StackFile, client: PveClient
) -> None:
    token_apply(stack_cfg, client)
    with pytest.raises(PvePermissionError) as ei:
        client.put("/nodes/gihyeon/lxc/118/config", features="keyctl=1,nesting=1")
    e = ei.value
    assert e.status == 403
    assert e.pve_message == (
        "Permission check failed (changing feature flags (except nesting) is only allowed "
        "for root@pam)"
    )
    assert e.hint is not None and "root.via" in e.hint and "features" in e.hint
    with pytest.raises(PvePermissionError) as ei:
        client.put("/nodes/gihyeon/lxc/118/config", mp0="/mnt/pve/hdd/hermes,mp=/data")
    assert ei.value.pve_message == (
        "Permission check failed (mount point type bind is only allowed for root@pam)"
    )
    # the token may change nesting alone
    client.put("/nodes/gihyeon/lxc/118/config", features="nesting=1")


def test_unknown_parameter_is_pves_400(client: PveClient, pve: Any, recorder: Any) -> None:
    with pytest.raises(PveParamError) as ei:
        client.put("/nodes/gihyeon/lxc/110/config", **{"lxc.idmap": "u 0 100000 65536"})
    assert ei.value.errors["lxc.idmap"] == (
        "property is not defined in schema and the schema does not allow additional properties"
    )
    assert ei.value.hint and "root steps" in ei.value.hint
    # the recorder's schema check catches the same mistake before PVE does
    assert recorder.errors == [
        "PUT /nodes/{node}/lxc/{vmid}/config: lxc.idmap: property is not defined in schema"
    ]
    recorder.errors.clear()


def test_foreign_guest_at_the_vmid_is_refused_and_untouched(
    pve: Any, stack_cfg: StackFile, client: PveClient, recorder: Any
) -> None:
    pve.add_ct(118, "hermes", node="gihyeon", status="running", config={"memory": 1024})
    before = dict(pve.ct(118).config)
    result = plan(build_desired(stack_cfg), client)
    assert result.plan.actions == ()
    assert len(result.plan.refused) == 1
    assert "without the pvestack mark" in result.plan.refused[0]
    res = apply(result.plan, client, root=NO_ROOT)
    assert res.results == ()
    assert pve.ct(118).config == before
    assert recorder.writes() == []


def test_adopt_adds_the_mark(pve: Any, stack_cfg: StackFile, client: PveClient) -> None:
    pve.add_ct(
        118,
        "hermes",
        node="gihyeon",
        status="running",
        config={
            "memory": 1024,
            "features": "nesting=1",
            "rootfs": "local-lvm:vm-118-disk-0,size=24G",
        },
    )
    p = plan(build_desired(stack_cfg), client, adopt=True).plan
    config = next(a for a in p.actions if a.id == "hermes:ct:config")
    assert config.before["memory"] == "1024" and config.after["memory"] == "4096"
    res = apply(p, client, root=NO_ROOT)
    assert all(r.outcome is not Outcome.FAILED for r in res.results), res.to_json()
    cfg = pve.ct(118).config
    assert "pvestack" in cfg["tags"] and "pvestack-stack: hermes" in cfg["description"]
    # now it is ours: a plain plan manages it
    assert plan(build_desired(stack_cfg), client).plan.refused == ()


# ---------------------------------------------------------------- destroy


def test_destroy_only_marked_and_names_volumes(
    pve: Any, stack_cfg: StackFile, client: PveClient
) -> None:
    token_apply(stack_cfg, client)
    dp = destroy_plan(build_desired(stack_cfg), client)
    assert [t.vmid for t in dp.targets] == [118]
    t = dp.targets[0]
    assert any(v.startswith("rootfs: local-lvm:") for v in t.volumes)
    res = destroy(dp, client)
    assert res.exit_code == 0 and res.done
    assert pve.ct(118) is None
    assert pve.ct(110) is not None


def test_destroy_respects_protection(pve: Any, stack_cfg: StackFile, client: PveClient) -> None:
    token_apply(stack_cfg, client)
    pve.ct(118).config["protection"] = 1
    dp = destroy_plan(build_desired(stack_cfg), client)
    assert dp.targets[0].protected
    res = destroy(dp, client)
    assert res.done == () and "protection=1" in res.skipped[0]
    assert pve.ct(118) is not None


def test_destroy_refuses_foreign(pve: Any, stack_cfg: StackFile, client: PveClient) -> None:
    pve.add_ct(118, "byhand", node="gihyeon")
    dp = destroy_plan(build_desired(stack_cfg), client)
    assert dp.targets == () and "never deletes it" in dp.refused[0]


# ---------------------------------------------------------------- TLS and auth


def _settings(pve: Any, **kw: Any) -> ClientSettings:
    token_id, secret = next(iter(pve.apitokens.items()))
    base: dict[str, Any] = {
        "api_url": pve.url,
        "token_id": token_id,
        "token_secret": Secret("token", secret),
    }
    return ClientSettings(**(base | kw))


def test_fingerprint_pin(pve: Any, cert_fingerprint: str) -> None:
    c = PveClient(_settings(pve, fingerprint=cert_fingerprint))
    assert isinstance(c.get("/version"), dict)
    wrong = "AA:" + cert_fingerprint[3:]
    c = PveClient(_settings(pve, fingerprint=wrong), read_retries=0)
    with pytest.raises(TransportError) as ei:
        c.get("/version")
    assert "TLS" in str(ei.value) and ei.value.hint


def test_unverified_certificate_is_refused_without_pin(pve: Any) -> None:
    c = PveClient(_settings(pve), read_retries=0)
    with pytest.raises(TransportError, match="TLS verification"):
        c.get("/version")
    c = PveClient(_settings(pve, insecure=True))
    assert c.warnings and "NOT verified" in c.warnings[0]
    assert isinstance(c.get("/version"), dict)


def test_bad_token_is_401(pve: Any, fakepve_cafile: str) -> None:
    c = PveClient(_settings(pve, ca_file=fakepve_cafile, token_secret=Secret("t", "wrong")))
    with pytest.raises(PveAuthError) as ei:
        c.get("/version")
    assert ei.value.status == 401
    assert "wrong" not in str(ei.value)


def test_task_failure_carries_pve_text(pve: Any, client: PveClient) -> None:
    with pytest.raises(PveError) as ei:
        client.post("/nodes/gihyeon/lxc/110/status/start")
    assert "already running" in ei.value.pve_message


# ---------------------------------------------------------------- the command line


def test_cli_plan_apply_plan(pve: Any, stack_cfg: StackFile) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["plan", "-c", stack_cfg.source_file, "--json", "--detailed-exitcode"])
    assert r.exit_code == 2, r.output
    data = json.loads(r.stdout)
    assert {"id", "action", "target", "actor", "reason", "before", "after"} <= set(
        data["actions"][0]
    )
    r = runner.invoke(app, ["apply", "-c", stack_cfg.source_file, "--json", *SKIP_DOCTOR])
    assert r.exit_code == 3, r.output
    out = json.loads(r.stdout)
    assert out["pending_reason"] and out["exit_code"] == 3
    r = runner.invoke(app, ["plan", "-c", stack_cfg.source_file, "--json"])
    assert r.exit_code == 0
    actors = {a["actor"] for a in json.loads(r.stdout)["actions"]}
    assert "root" in actors and "api" not in actors  # guest actions wait for root
    r = runner.invoke(app, ["destroy", "-c", stack_cfg.source_file, "--yes", "--json"])
    assert r.exit_code == 0, r.output
    assert pve.ct(118) is None


# ---------------------------------------------------------------- tasks and retries


@pytest.mark.fakepve(time_scale=0.05)
def test_task_wait_polls_quickly_then_backs_off(pve: Any, stack_cfg: StackFile) -> None:
    pve.add_ct(140, "slow", node="gihyeon", status="stopped")
    pve.ct(140).start_secs = 20  # 1 s real at time_scale 0.05
    sleeps: list[float] = []

    def sleep(s: float) -> None:
        sleeps.append(s)
        time.sleep(s)

    c = PveClient(_settings(pve, ca_file=stack_cfg.pve.ca_file), sleep=sleep)
    t0 = time.monotonic()
    upid = c.post("/nodes/gihyeon/lxc/140/status/start")
    assert c.wait_task(upid) == "OK"
    took = time.monotonic() - t0
    assert pve.ct(140).status == "running"
    assert sleeps[0] == 0.1 and sleeps == sorted(sleeps) and max(sleeps) <= 2.0
    assert len(sleeps) < 15  # no hammering
    assert took < 3.5  # noticed soon after it finished


def test_failed_task_raises_with_log_tail(pve: Any, client: PveClient) -> None:
    pve.add_ct(141, "broken", node="gihyeon", status="stopped")
    pve.ct(141).start_error = "startup for container '141' failed"
    upid = client.post("/nodes/gihyeon/lxc/141/status/start")
    with pytest.raises(PveTaskError) as ei:
        client.wait_task(upid)
    assert "startup for container '141' failed" in ei.value.exitstatus
    assert any("TASK ERROR" in line for line in ei.value.log_tail)


def test_reads_retry_on_503_writes_do_not(pve: Any, stack_cfg: StackFile) -> None:
    pve.fail("GET", "/version", 503, "service unavailable", times=2)
    sleeps: list[float] = []
    c = PveClient(_settings(pve, ca_file=stack_cfg.pve.ca_file), sleep=sleeps.append)
    assert isinstance(c.get("/version"), dict)
    assert c.calls == 3 and sleeps == [0.5, 1.0]
    pve.fail("POST", "/nodes/gihyeon/lxc/110/status/stop", 503, "service unavailable", times=1)
    with pytest.raises(PveError) as ei:
        c.post("/nodes/gihyeon/lxc/110/status/stop")
    assert ei.value.status == 503 and c.calls == 4


def test_console_poll_lists_what_root_has_not_done_yet(
    pve: Any, stack_cfg: StackFile, client: PveClient
) -> None:
    token_apply(stack_cfg, client)
    p = plan(build_desired(stack_cfg), client).plan
    missing = root_effects_missing(client, p)
    before = missing()
    assert any("features" in m and "keyctl=1,nesting=1" in m for m in before)
    assert any(m.startswith("lxc/118: mp0") for m in before)
    # what the pasted script does on the node (root@pam: no permission check)
    ct = pve.ct(118)
    ct.config["features"] = "keyctl=1,nesting=1"
    ct.config["mp0"] = "/mnt/pve/hdd/hermes,mp=/data"
    ct.config["mp1"] = "/media/2tb/hermes,mp=/fast"
    assert missing() == []
    after = plan(build_desired(stack_cfg), client).plan
    assert after.by_actor(Actor.API) == () and after.by_actor(Actor.ROOT) == ()


def test_console_mode_prints_a_script_from_the_fresh_state(
    pve: Any, stack_cfg: StackFile, tmp_path: Any
) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["apply", "-c", stack_cfg.source_file, "--json", *SKIP_DOCTOR])
    assert r.exit_code == 3, r.output
    script = json.loads(r.stdout)["console_script"]
    assert script is not None
    # the token started the CT before root could act: the script must reboot it
    assert "pct set 118 -features keyctl=1,nesting=1 -mp0 /mnt/pve/hdd/hermes,mp=/data" in script
    assert "pct reboot" in script
    # paste-safe: one function, its last command the marker, called with stdin /dev/null
    assert script.rstrip().endswith(
        "echo PVESTACK-ROOT-STEPS-DONE\n)\npvestack_root_steps </dev/null"
    )
    assert "sk-contract-test" not in script  # the gateway key never in a printed script
    # guest.via = "ssh" (the default with root.via = "console"): root steps only, the
    # guest access among them, no guest step (those go over the CT's own SSH)
    assert "ct118:guest-access:hostkey-record" in script
    assert "docker" not in script and "pct push" not in script
    f = tmp_path / "root.sh"
    f.write_text(script)
    subprocess.run(["bash", "-n", str(f)], check=True)
    if shutil.which("shellcheck"):
        # info-level SC2016 flags the intended single-quoted `sh -c` programs
        subprocess.run(["shellcheck", "-S", "warning", "-s", "bash", str(f)], check=True)
    r = runner.invoke(app, ["console-script", "-c", stack_cfg.source_file])
    assert r.exit_code == 0, r.output
    assert "pct reboot" in r.stdout and "sk-contract-test" not in r.stdout


def test_console_hand_off_waits_on_a_terminal(pve: Any, stack_cfg: StackFile) -> None:
    if not _has_console_handoff():
        pytest.skip("pvestack.executors._console (the hand-off) is not in this build")
    master, slave = pty.openpty()
    exe = str(Path(sys.executable).parent / "pvestack")
    proc = subprocess.Popen(
        [exe, "apply", "-c", stack_cfg.source_file, "--no-verify", *SKIP_DOCTOR],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            ct = pve.ct(118)
            if ct is not None and ct.status == "running":
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()
        # the operator pastes the script into the node's shell: its effects show in the API
        time.sleep(1)
        ct = pve.ct(118)
        ct.config["features"] = "keyctl=1,nesting=1"
        ct.config["mp0"] = "/mnt/pve/hdd/hermes,mp=/data"
        ct.config["mp1"] = "/media/2tb/hermes,mp=/fast"
        ct.config["description"] += "\npvestack-hostkey: SHA256:" + "Q" * 43
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        os.close(master)
        os.close(slave)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "PVESTACK-ROOT-STEPS-DONE" in stdout
    assert "root steps done" in stdout, stdout + stderr
    # guest.via = "ssh": the fake's CT has no address, so the guest route stops with
    # the reason and the alternative (no guest step ever went into the script)
    out = stdout + stderr
    assert proc.returncode == 1, out
    assert "reports no IPv4 address" in out and 'via = "pct"' in out, out


def _has_console_handoff() -> bool:
    try:
        mod = importlib.import_module("pvestack.executors._console")
    except ImportError:
        return False
    return hasattr(mod, "hand_off")


def test_pending_change_is_seen_and_a_reboot_applies_it(
    pve: Any, stack_cfg: StackFile, client: PveClient
) -> None:
    token_apply(stack_cfg, client)
    ct = pve.ct(118)
    ct.config.update(
        features="keyctl=1,nesting=1",
        mp0="/mnt/pve/hdd/hermes,mp=/data",
        mp1="/media/2tb/hermes,mp=/fast",
    )
    # root set the mounts while it ran; PVE keeps a change it cannot hotplug pending
    ct.pending["mp1"] = "/media/2tb/hermes,mp=/fast,backup=0"
    result = plan(build_desired(stack_cfg), client)
    reboot = next(a for a in result.plan.actions if a.id == "hermes:ct:reboot")
    assert reboot.actor is Actor.API and "pending now: mp1" in reboot.reason
    assert result.api_calls <= 4
    apply(result.plan, client, root=NO_ROOT)
    assert ct.pending == {}
    p = plan(build_desired(stack_cfg), client).plan
    assert p.by_actor(Actor.API) == ()
