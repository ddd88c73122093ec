"""The seed topology (LiteLLM gateway + Hermes, ``examples/lab-console.toml``) for the
console-only user, on real LXC, with the node's SSH settings pointed at a closed port:
apply stops with the root-only script (exit 3), the script runs as root on the node
(``bash -s``), apply again does every guest step over the containers' own SSH (the
image tarballs travel from this machine over that channel, the gateway key on stdin
only) and verify runs its in-container checks over the same route; a third apply says
"No changes". No secret in the script, in anything printed, in the argv seen in the
containers while the guest steps ran (``ps`` snapshots), or in ``docker inspect``.

Verify exits 0 with every check green: the bind-mount checks, which cannot read the
node without root on it, prove the probe's owner inside the container (the host side is
the id map's image of it, and their evidence says the node was not read).
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import labkit
import pytest
from labkit import (
    ROOT_MARKER,
    closed_port,
    ensure_lab_images,
    extract_script,
    link_images,
    running_lab,
    ssh,
)

from pvelab.control import Lab

pytestmark = pytest.mark.lab

TARBALLS = ("hermes-agent-0.19.0-boot2.tar", "litellm-1.82.6.tar")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    ensure_lab_images(TARBALLS)
    with running_lab("pvestack-labconseed-", 4) as lab:
        try:
            yield lab
        finally:
            shutil.rmtree(lab.dir, ignore_errors=True)


def pvestack(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return labkit.pvestack(env, *args, timeout=3000)


def test_seed_topology_console_only(lab: Lab, tmp_path: Path) -> None:
    link_images(lab, TARBALLS)
    net = ipaddress.ip_network(lab.settings.subnet)
    hosts = list(net.hosts())
    gw_ip = str(hosts[-5])
    master = "sk-lab-" + secrets.token_hex(16)
    api_key = "hermes-api-" + secrets.token_hex(12)
    node_env = {**os.environ, **lab.env()}  # the test's own root shell on the node
    env = {
        **node_env,
        "LITELLM_MASTER_KEY": master,
        "HERMES_API_KEY": api_key,
        "PVESTACK_LAB_GATEWAY_CIDR": f"{gw_ip}/{net.prefixlen}",
        "PVESTACK_LAB_GATEWAY_IP": gw_ip,
        "PVESTACK_LAB_ROUTER": str(hosts[0]),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        # root over SSH would go here: a closed port, no key
        "PVESTACK_SSH_HOST": "127.0.0.1",
        "PVESTACK_SSH_PORT": str(closed_port()),
        "PVESTACK_SSH_KEY": "/nonexistent/key",
    }
    env.pop("PVESTACK_ROOT_VIA", None)
    stack = lab.dir / "lab-console.toml"
    stack.write_text((ROOT / "examples" / "lab-console.toml").read_text())
    printed: list[str] = []
    secret_values = (master, api_key, env["PVESTACK_TOKEN_SECRET"])

    r = pvestack(env, "apply", "-c", str(stack))
    printed += [r.stdout, r.stderr]
    assert r.returncode == 3, r.stdout[-6000:] + r.stderr[-3000:]
    script = extract_script(r.stdout)
    assert "docker" not in script and "pct push" not in script and ".env" not in script
    print(f"console script: {len(script.encode())} bytes, {len(script.splitlines())} lines")

    pasted = ssh(node_env, "bash -s", 1200, stdin=script)
    assert pasted.returncode == 0, pasted.stdout[-3000:] + pasted.stderr[-3000:]
    assert pasted.stdout.rstrip().splitlines()[-1] == ROOT_MARKER

    # argv seen in the containers while the guest steps run: `ps` snapshots
    snapshots: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for vmid in (217, 218):
                ps = ssh(node_env, f"pct exec {vmid} -- ps -eo args", 30)
                snapshots.append(ps.stdout)
            stop.wait(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        r = pvestack(env, "apply", "-c", str(stack), "--json")
    finally:
        stop.set()
        watcher.join(timeout=60)
    printed += [r.stdout, r.stderr]
    assert len(snapshots) > 10 and any("docker" in x for x in snapshots)
    assert not [x for x in snapshots if master in x]
    data = json.loads(r.stdout)
    results = data["results"]
    assert results and all(x["outcome"] in ("done", "skipped") for x in results), results
    assert any(x["actor"] == "guest" and x["outcome"] == "done" for x in results)

    r = pvestack(env, "verify", "-c", str(stack), "--json")
    printed += [r.stdout, r.stderr]
    checks = json.loads(r.stdout)["checks"]
    bad = [c for c in checks if c["status"] in ("fail", "unverified")]
    assert bad == [], bad
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    mounts = [c for c in checks if c["id"].startswith("mount.")]
    # proved inside over the guest route; the node itself is never asked (no root on it)
    assert mounts and all(c["status"] == "pass" for c in mounts), mounts
    assert all("the node itself is not read" in c["evidence"] for c in mounts), mounts
    assert any(c["id"] == "llm.roundtrip" and c["status"] == "pass" for c in checks), checks
    # the path a client such as Open WebUI takes: Hermes's API server, from this machine
    assert any(c["id"] == "hermes.api.chat" and c["status"] == "pass" for c in checks), checks

    r = pvestack(env, "apply", "-c", str(stack), "--no-verify")
    printed += [r.stdout, r.stderr]
    assert r.returncode == 0 and "No changes" in r.stdout, r.stdout[-3000:] + r.stderr

    for text in (script, *printed):
        for value in secret_values:
            assert value not in text
    for vmid in (217, 218):
        inspect = ssh(node_env, f"pct exec {vmid} -- sh -c 'docker inspect $(docker ps -aq)'", 120)
        assert inspect.returncode == 0, inspect.stderr
        assert master not in inspect.stdout
