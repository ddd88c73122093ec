"""Issue 13's show, on real LXC: an upgrade as a plan action with automatic rollback.

The seed's two stacks (examples/lab.toml: the LiteLLM gateway, Hermes pointed at it) with
Hermes WITHOUT bind mounts (PVE cannot snapshot a CT with one), on hermes-agent
0.18.2-boot2, applied and verified. Then:

1. the stack file pins 0.19.0-boot2: ``plan`` shows ONE ``upgrade`` action (from/to,
   snapshot true, keep 1); ``apply`` snapshots, loads the image, recreates the service,
   verifies green; a file in Hermes's data dir survives; pvestack's older snapshot is
   pruned to ``keep``, a snapshot pvestack did not make is left alone;
2. the stack file pins the broken release (never reaches running): ``apply`` verifies red,
   rolls back to its snapshot, verifies again (green, 0.19.0-boot2 running), prints both
   results and exits 1; the marker is gone and the data file is still there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from labkit import Api, ensure_lab_images, host_tmpdir, make_lab, ssh, stack_env

from pvelab.control import Lab

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
PVESTACK = str(ROOT / ".venv" / "bin" / "pvestack")
OLD, NEW = "hermes-agent-0.18.2-boot2", "hermes-agent-0.19.0-boot2"
BROKEN = "hermes-agent-broken"
TARBALLS = (f"{OLD}.tar", f"{NEW}.tar", f"{BROKEN}.tar", "litellm-1.82.6.tar")
HERMES = 218
PROOF = "/opt/hermes/upgrade-proof.txt"  # in Hermes's data dir (the CT's rootfs)


def _stack_file(image: str, tarball: str) -> str:
    """examples/lab.toml, Hermes without its bind mounts, pinned to ``image``, keep 1."""
    text = (ROOT / "examples" / "lab.toml").read_text()
    text = re.sub(r"\n\[\[stack\.mount\]\]\n(?:[^\n\[]+\n)+", "\n", text)
    assert "[[stack.mount]]" not in text
    text = re.sub(r'image = "pvestack-lab/hermes-agent:[^"]+"', f'image = "{image}"', text)
    text = re.sub(r"images/hermes-agent-[^\"]+\.tar", f"images/{tarball}", text)
    # Hermes's [stack.snapshots]: before its [stack.app] (the last table of the file)
    head, sep, app = text.rpartition('[stack.app]\nrecipe = "hermes"')
    assert sep, "examples/lab.toml changed: Hermes's [stack.app] not found"
    return head + "[stack.snapshots]\nkeep = 1\n\n" + sep + app


def _run(
    env: dict[str, str], *args: str, timeout: float = 2400
) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [PVESTACK, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    log = os.environ.get("PVESTACK_UPGRADE_LOG")  # the full outputs, for debugging
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"\n==== pvestack {' '.join(args)}: exit {r.returncode}\n{r.stdout}\n")
            f.write("---- stderr\n" + r.stderr)
    return r


def _pct(env: dict[str, str], command: str) -> str:
    r = ssh(env, f"pct {command}", 300)
    assert r.returncode == 0, f"pct {command}: {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def _running_image(env: dict[str, str]) -> str:
    out = _pct(env, f"exec {HERMES} -- docker ps --format '{{{{.Image}}}} {{{{.Names}}}}'")
    return " ".join(line.split()[0] for line in out.splitlines() if "hermes" in line)


def _snapshots(api: Api) -> list[str]:
    rows = api.ok("GET", f"/nodes/{{node}}/lxc/{HERMES}/snapshot")
    return sorted(r["name"] for r in rows if r["name"] != "current")


@pytest.fixture
def upgrade_lab() -> tuple[Lab, dict[str, str]]:  # type: ignore[misc]
    ensure_lab_images(TARBALLS)
    images = Path(os.environ.get("PVESTACK_LAB_IMAGES", "/var/lib/pvestack-lab/images"))
    lab = make_lab(host_tmpdir("pvestack-labupgrade-"), 7)
    try:
        lab.up(install=False)
        (lab.dir / "images").mkdir(exist_ok=True)
        for t in TARBALLS:
            (lab.dir / "images" / t).symlink_to(images / t)
        env = stack_env(lab)
        yield lab, env
    finally:
        try:
            lab.down(purge=True)
        finally:
            shutil.rmtree(lab.dir, ignore_errors=True)


def test_upgrade_snapshots_verifies_and_rolls_back_a_broken_release(
    upgrade_lab: tuple[Lab, dict[str, str]],
) -> None:
    lab, env = upgrade_lab
    api = Api(env, lab.dir / "etc/pve/local/pve-ssl.pem")
    stack = lab.dir / "upgrade.toml"
    t0 = time.monotonic()

    # 0.18.2-boot2 deployed and verified (apply ends with verify)
    stack.write_text(_stack_file(f"pvestack-lab/hermes-agent:{OLD.split('-', 2)[2]}", f"{OLD}.tar"))
    r = _run(env, "apply", "-c", str(stack), "--yes")
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    t_deploy = time.monotonic() - t0
    assert _running_image(env) == "pvestack-lab/hermes-agent:0.18.2-boot2"
    _pct(env, f"exec {HERMES} -- sh -c 'echo kept > {PROOF} && chown 10000:10000 {PROOF}'")
    # an older pvestack snapshot (pruned later: keep 1) and one pvestack did not make
    assert _run(env, "snapshot", "hermes", "-c", str(stack)).returncode == 0
    upid = api.ok("POST", f"/nodes/{{node}}/lxc/{HERMES}/snapshot", snapname="mine")
    assert api.wait(upid)["exitstatus"] == "OK"
    [older] = [s for s in _snapshots(api) if s.startswith("pvestack-")]

    # bump to 0.19.0-boot2: the plan shows ONE upgrade action
    stack.write_text(_stack_file("pvestack-lab/hermes-agent:0.19.0-boot2", f"{NEW}.tar"))
    r = _run(env, "plan", "-c", str(stack), "--json", timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    actions = json.loads(r.stdout)["actions"]
    hermes = [a for a in actions if a["stack"] == "hermes"]
    assert [a["kind"] for a in hermes] == ["upgrade"], hermes
    u = hermes[0]["upgrade"]
    assert u["from"] == {"hermes": "pvestack-lab/hermes-agent:0.18.2-boot2"}
    assert u["to"] == {"hermes": "pvestack-lab/hermes-agent:0.19.0-boot2"}
    assert (u["snapshot"], u["backup"], u["keep"], u["resume"]) == (True, False, 1, None)
    text = _run(env, "plan", "-c", str(stack), timeout=600).stdout
    assert "hermes:upgrade" in text and "upgrade: snapshot true, backup false, keep 1" in text

    t1 = time.monotonic()
    r = _run(env, "apply", "-c", str(stack), "--yes")
    t_upgrade = time.monotonic() - t1
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert "upgrade hermes (hermes pvestack-lab/hermes-agent:0.18.2-boot2 -> " in r.stdout
    assert "verify after the upgrade: green" in r.stdout
    assert _running_image(env) == "pvestack-lab/hermes-agent:0.19.0-boot2"
    assert _pct(env, f"exec {HERMES} -- cat {PROOF}") == "kept\n"
    snaps = _snapshots(api)
    assert older not in snaps and "mine" in snaps, snaps  # pruned to keep 1; foreign kept
    [good] = [s for s in snaps if s.startswith("pvestack-")]
    assert _pct(env, f"exec {HERMES} -- sh -c 'test ! -e /var/lib/pvestack/upgrade.json'") == ""

    # bump to the broken release: verify red, automatic rollback, green again, exit 1
    stack.write_text(_stack_file("pvestack-lab/hermes-agent:broken", f"{BROKEN}.tar"))
    t2 = time.monotonic()
    r = _run(env, "apply", "-c", str(stack), "--yes")
    t_rollback = time.monotonic() - t2
    out = r.stdout + r.stderr
    assert r.returncode == 1, out[-6000:]
    assert "verify after the upgrade: red" in r.stdout, out[-6000:]
    assert re.search(r"verify after the rollback to pvestack-\d{8}T\d{6}Z: green", r.stdout), out
    assert _running_image(env) == "pvestack-lab/hermes-agent:0.19.0-boot2"
    assert _pct(env, f"exec {HERMES} -- cat {PROOF}") == "kept\n"
    assert _pct(env, f"exec {HERMES} -- sh -c 'test ! -e /var/lib/pvestack/upgrade.json'") == ""
    snaps = _snapshots(api)
    assert good in snaps and "mine" in snaps and len(snaps) == 3, snaps  # no prune on red
    old_file = stack.read_text().replace("hermes-agent:broken", "hermes-agent:0.19.0-boot2")
    stack.write_text(old_file.replace(f"{BROKEN}.tar", f"{NEW}.tar"))
    r = _run(env, "verify", "-c", str(stack), timeout=900)
    assert r.returncode == 0, r.stdout[-4000:]
    print(
        f"\ndeploy {t_deploy:.0f}s, upgrade {t_upgrade:.0f}s, "
        f"failed upgrade + rollback {t_rollback:.0f}s, total {time.monotonic() - t0:.0f}s"
    )
