"""The seed's two stacks on Debian 13 and 12, templates by appliance name (issue 12).

The seed lab (``seedlab.SeedLab``: examples/lab.toml, the least-privilege token
``pvestack@pve!deploy``) with ``PVESTACK_LAB_HERMES_APPLIANCE=debian-13-standard``: Hermes
runs on trixie, the gateway on bookworm (``debian-12-standard``, the file's default), both
templates downloaded through the node's ``aplinfo`` (sha512 checked by the node), Docker
from Debian's packages (trixie: ``docker-cli`` + compose v2; bookworm: compose v1).

1. Before anything exists, one privilege of the deploy role at a time is taken away (as
   ``pveum role modify`` would): ``apply`` stops in doctor, names the privilege with its
   grant command, and nothing reaches the node (no template, no container, no task).
   With lxc-pve 6.0.0-1 on the node, doctor and plan warn about runc with the fix.
2. ``apply`` ends green (every check of the seed's checklist, Hermes's API server from
   here included); the CTs run trixie and bookworm; ``plan --detailed-exitcode`` exits 0
   and a second ``apply`` says "No changes.".
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest
from seedlab import GW, HERMES, SeedLab
from test_seed_e2e import MUST_PASS

from pvelab.backend.auth import AuthStore
from pvelab.backend.packages import Packages
from pvelab.backend.privileges import DEPLOY_PRIVS, DEPLOY_ROLE, DEPLOY_TOKEN

pytestmark = pytest.mark.lab

TRIXIE = {"PVESTACK_LAB_HERMES_APPLIANCE": "debian-13-standard"}
# appliance templates: POST aplinfo checks only Datastore.AllocateTemplate on the storage,
# so the download-url privilege is not needed by this file
NOT_NEEDED = {"Sys.AccessNetwork"}
TEMPLATES = "storage/local/template/cache"


@pytest.fixture(scope="module")
def seed(request: pytest.FixtureRequest) -> Iterator[SeedLab]:
    s = SeedLab.get(request)
    assert s.env["PVESTACK_TOKEN_ID"] == DEPLOY_TOKEN
    before = s.env
    if s.applied:  # an earlier seed test of this session left its stacks: start afresh
        r = s.run("destroy", "-c", str(s.stack_file), "--yes", timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
        s.applied = False
    for t in (s.lab.dir / TEMPLATES).glob("*"):  # so this test downloads them (pveam remove)
        t.unlink()
    s.env = {**before, **TRIXIE}
    try:
        yield s
    finally:  # the seed lab is shared per session: leave it as the other tests expect it
        if s.applied:
            s.run("destroy", "-c", str(s.stack_file), "--yes", timeout=600)
            s.applied = False
        s.env = before


def _node_state(seed: SeedLab) -> tuple[frozenset[str], ...]:
    """The templates, container configs and task logs on the node (what a write leaves)."""
    d = seed.lab.dir
    dirs = (d / TEMPLATES, d / "etc/pve/lxc", d / "tasks")
    return tuple(frozenset(p.name for p in x.glob("*")) for x in dirs)


def test_a_missing_privilege_stops_apply_before_any_change(seed: SeedLab) -> None:
    auth = AuthStore(seed.lab.dir / "etc/pve/lab-auth.json")
    state = _node_state(seed)
    assert not state[0], state  # no template yet
    stopped: list[str] = []
    try:
        for priv in sorted(DEPLOY_PRIVS):
            auth.set_role(DEPLOY_ROLE, set(DEPLOY_PRIVS) - {priv})
            if priv in NOT_NEEDED:  # doctor (read-only) passes without it; apply would act
                r = seed.run("doctor", "-c", str(seed.stack_file), "--json", timeout=300)
                assert r.returncode == 0, (priv, r.stdout[-3000:], r.stderr[-2000:])
                continue
            r = seed.run("apply", "-c", str(seed.stack_file), "--yes", "--json", timeout=300)
            assert r.returncode == 1, (priv, r.stdout[-3000:], r.stderr[-2000:])
            out = json.loads(r.stdout)
            assert out["results"] == [] and "doctor found" in out["error"], (priv, out)
            fails = [f for f in out["doctor"] if f["status"] == "fail"]
            named = [f for f in fails if priv in f["evidence"]]
            assert named, (priv, fails)
            assert f"pveum role modify {DEPLOY_ROLE} --append 1 --privs {priv}" in named[0]["fix"]
            assert f"--tokens '{DEPLOY_TOKEN}'" in named[0]["fix"]
            assert _node_state(seed) == state, priv  # no template, CT or task appeared
            stopped.append(priv)
    finally:
        auth.set_role(DEPLOY_ROLE, DEPLOY_PRIVS)
    assert set(stopped) == set(DEPLOY_PRIVS) - NOT_NEEDED
    print(f"\napply stopped before acting for each of {len(stopped)} privileges: {stopped}")


def test_an_old_lxc_pve_warns_about_runc_with_the_fix(seed: SeedLab) -> None:
    state = _node_state(seed)
    packages = Packages(seed.lab.dir / "etc/pve")  # what POST /_lab/packages tells the node
    packages.tell({"lxc-pve": "6.0.0-1"})
    try:
        r = seed.run("doctor", "-c", str(seed.stack_file), "--json", timeout=300)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]  # a warning, not a fail
        (f,) = [f for f in json.loads(r.stdout) if f["check"].startswith("lxc-pve on ")]
        assert f["status"] == "warn" and "6.0.0-1" in f["evidence"], f
        assert "6.0.5-2" in f["evidence"] and "apt full-upgrade" in f["fix"], f
        r = seed.run("plan", "-c", str(seed.stack_file), timeout=300)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
        assert "warning: labtest: lxc-pve 6.0.0-1 < 6.0.5-2" in r.stdout, r.stdout[-3000:]
    finally:
        packages.reset()
    assert _node_state(seed) == state


def _os(seed: SeedLab, vmid: int) -> str:
    release = seed.pct(f"exec {vmid} -- cat /etc/os-release")
    return next(ln.split("=", 1)[1] for ln in release.splitlines() if ln.startswith("VERSION_C"))


def test_the_stacks_green_on_debian13_and_debian12_from_aplinfo(seed: SeedLab) -> None:
    # the plan downloads both templates by appliance name through aplinfo
    r = seed.run("plan", "-c", str(seed.stack_file), "--json", timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    plan = {a["id"]: a for a in json.loads(r.stdout)["actions"]}
    assert "debian-12-standard_" in plan["gateway:template"]["after"]["volid"], plan
    assert "debian-13-standard_" in plan["hermes:template"]["after"]["volid"], plan
    assert "no checksum" not in r.stderr, r.stderr

    t = time.monotonic()
    r = seed.run("apply", "-c", str(seed.stack_file), "--yes", "--json")  # ends with verify
    seed.applied = True
    print(f"\napply from nothing (two CTs, Docker from Debian, images, verify): "
          f"{time.monotonic() - t:.0f} s")  # fmt: skip
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    report = json.loads(r.stdout)["verify"]
    checks = {f"{c['stack']}/{c['id']}": c for c in report["checks"]}
    assert report["ok"] is True, json.dumps(checks, indent=1)[-6000:]
    want = MUST_PASS | {"hermes/hermes.api.chat", "gateway/gateway.http.models"}
    assert {k for k, c in checks.items() if c["status"] == "pass"} >= want, checks
    assert all(c["status"] != "fail" for c in checks.values()), checks
    assert "completed=True" in checks["hermes/llm.roundtrip"]["evidence"]
    assert 'answer "OK' in checks["hermes/hermes.api.chat"]["evidence"]
    print("\n".join(f"{k}: {c['status']} ({c['evidence']})" for k, c in checks.items()))

    assert _os(seed, HERMES) == "trixie" and _os(seed, GW) == "bookworm"
    # Debian's compose: v2 (the docker CLI plugin) on trixie, v1 on bookworm
    v2 = seed.pct(f"exec {HERMES} -- docker compose version")  # Debian's: "version 2.26.1-4"
    assert re.match(r"Docker Compose version v?2\.", v2), v2
    assert "docker-compose version 1." in seed.pct(f"exec {GW} -- docker-compose version")

    r = seed.run("plan", "-c", str(seed.stack_file), "--detailed-exitcode", timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    t = time.monotonic()
    r = seed.run("apply", "-c", str(seed.stack_file), "--yes", "--no-verify")  # just verified
    assert r.returncode == 0 and "No changes." in r.stdout, r.stdout[-4000:] + r.stderr[-2000:]
    print(f"second apply (no changes): {time.monotonic() - t:.0f} s")
    key = seed.env["LITELLM_MASTER_KEY"]
    assert all(key not in text for text in seed.printed)
