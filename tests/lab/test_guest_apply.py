"""Inside the containers, for real: ``pvestack apply`` of ``examples/lab.toml`` on a lab of
its own (LiteLLM gateway + Hermes, Docker from Debian, images loaded from the tarballs
``scripts/build-lab-images.sh`` builds), then: the gateway answers ``/v1/models`` with
the master key, Hermes's ``gateway_state.json`` says ``running``, a second apply
restarts nothing, a model change rewrites config.yaml and restarts only Hermes, and no
secret appears in anything pvestack printed.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from labkit import PVESTACK, ensure_lab_images, host_tmpdir, link_images, make_lab, ssh, stack_env

from pvelab.control import Lab

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
TARBALLS = ("hermes-agent-0.18.2-boot2.tar", "hermes-agent-0.19.0-boot2.tar", "litellm-1.82.6.tar")
GW, HERMES = 217, 218


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    ensure_lab_images(TARBALLS)
    # one run of this module at a time on the machine (its lab's bridge and ports are fixed)
    lock = Path("/run/pvestack-labguest.lock").open("w")  # noqa: SIM115
    fcntl.flock(lock, fcntl.LOCK_EX)
    lab = make_lab(host_tmpdir("pvestack-labguest-"), 5)
    try:
        lab.up(install=False)
        link_images(lab, TARBALLS)
        # record every `pct` argv the node receives (secrets must never be there)
        pct = lab.dir / "bin" / "pct"
        pct.rename(pct.with_name("pct.real"))
        pct.write_text(
            f'#!/bin/sh\nprintf "%s\\n" "$*" >>{lab.dir / "pct-argv.log"}\n'
            f'exec {pct.with_name("pct.real")} "$@"\n'
        )
        pct.chmod(0o755)
        yield lab
    finally:
        try:
            lab.down(purge=True)
        finally:
            shutil.rmtree(lab.dir, ignore_errors=True)  # host dirs of the bind mounts too
            lock.close()


@pytest.fixture(scope="module")
def env(lab: Lab) -> dict[str, str]:
    return stack_env(lab)


def pvestack(
    env: dict[str, str], *args: str, timeout: float = 2400
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PVESTACK, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def pct(env: dict[str, str], cmd: str, stdin: str | None = None) -> str:
    r = ssh(env, f"pct {cmd}", 300, stdin=stdin)
    assert r.returncode == 0, f"pct {cmd}: {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def started_at(env: dict[str, str], vmid: int, name: str) -> str:
    return pct(env, f"exec {vmid} -- docker inspect -f '{{{{.State.StartedAt}}}}' {name}").strip()


def wait_for(what: str, probe, timeout: float = 180) -> str:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        ok, last = probe()
        if ok:
            return str(last)
        time.sleep(3)
    raise AssertionError(f"{what}: not reached in {timeout}s; last: {last}")


MODELS_PROBE = (
    "import json, sys, urllib.request; key = sys.stdin.readline().strip(); "
    "req = urllib.request.Request(sys.argv[1], headers={'Authorization': 'Bearer ' + key}); "
    "print(json.dumps(json.load(urllib.request.urlopen(req, timeout=10))))"
)


def models(env: dict[str, str]) -> tuple[bool, str]:
    r = ssh(
        env,
        f'pct exec {HERMES} -- docker exec -i hermes python3 -c "{MODELS_PROBE}" '
        f"http://{env['PVESTACK_LAB_GATEWAY_IP']}:4000/v1/models",
        60,
        stdin=env["LITELLM_MASTER_KEY"] + "\n",
    )
    return r.returncode == 0 and '"mock-gpt"' in r.stdout, r.stdout + r.stderr


def hermes_state(env: dict[str, str]) -> tuple[bool, str]:
    r = ssh(env, f"pct exec {HERMES} -- cat /opt/hermes/gateway_state.json", 30)
    try:
        state = json.loads(r.stdout).get("gateway_state")
    except ValueError:
        state = None
    return state == "running", r.stdout + r.stderr


def test_apply_gateway_and_hermes(lab: Lab, env: dict[str, str], tmp_path: Path) -> None:
    printed: list[str] = []
    stack_file = tmp_path / "lab.toml"
    stack_file.write_text((ROOT / "examples" / "lab.toml").read_text())

    r = pvestack(env, "apply", "-c", str(stack_file), "--yes", "--no-verify")
    printed += [r.stdout, r.stderr]
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]

    # the gateway answers with the key, from inside the Hermes container
    wait_for("the gateway's /v1/models from Hermes", lambda: models(env))
    wait_for("Hermes gateway_state running", lambda: hermes_state(env))
    stat = pct(env, f"exec {HERMES} -- stat -c '%a %u:%g' /opt/hermes/.env").strip()
    assert stat == "600 10000:10000"
    cfg = pct(env, f"exec {HERMES} -- cat /opt/hermes/config.yaml")
    assert 'default: "mock-gpt"' in cfg
    hermes_t0 = started_at(env, HERMES, "hermes")
    gw_t0 = started_at(env, GW, "litellm")

    # verify (issue 6's checks) is green on what apply built
    r = pvestack(env, "verify", "-c", str(stack_file), "--json")
    printed += [r.stdout, r.stderr]
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]

    # second apply: the plan is empty (in-container facts observed), nothing restarts
    r = pvestack(env, "plan", "-c", str(stack_file), "--json")
    printed += [r.stdout, r.stderr]
    plan = json.loads(r.stdout)
    assert plan["actions"] == [], plan
    r = pvestack(env, "apply", "-c", str(stack_file), "--yes", "--no-verify")
    printed += [r.stdout, r.stderr]
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert started_at(env, HERMES, "hermes") == hermes_t0
    assert started_at(env, GW, "litellm") == gw_t0

    # a model change: config.yaml changes, only Hermes restarts
    stack_file.write_text(
        stack_file.read_text().replace('default_model = "mock-gpt"', 'default_model = "mock-alt"')
    )
    r = pvestack(env, "plan", "-c", str(stack_file), "--json")
    printed += [r.stdout, r.stderr]
    ids = [a["id"] for a in json.loads(r.stdout)["actions"]]
    assert ids == ["hermes:guest:file:/opt/hermes/config.yaml", "hermes:guest:up"]
    r = pvestack(env, "apply", "-c", str(stack_file), "--yes", "--no-verify")
    printed += [r.stdout, r.stderr]
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    conf = yaml.safe_load(pct(env, f"exec {HERMES} -- cat /opt/hermes/config.yaml"))
    assert conf["model"]["default"] == "mock-alt"  # the managed key, merged (not re-rendered)
    assert started_at(env, HERMES, "hermes") != hermes_t0
    assert started_at(env, GW, "litellm") == gw_t0

    # no secret in anything pvestack printed, in any argv the node saw, in the node's logs
    key = env["LITELLM_MASTER_KEY"]
    assert all(key not in text for text in printed)
    argv_log = (lab.dir / "pct-argv.log").read_text()
    assert f"exec {HERMES} -- sh -c" in argv_log and "push" in argv_log
    assert key not in argv_log
    for part in ("tasks", "run", "etc", "state"):
        for f in (lab.dir / part).rglob("*"):
            if f.is_file() and not f.is_symlink():
                assert key.encode() not in f.read_bytes(), f
