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

The adopted variant makes both containers beforehand with the token, as the seed's
Terraform does (no ``ssh-public-keys``, no mark, its own description and tags, started;
the gateway's template without an SSH server): apply refuses them without ``--adopt``
and changes nothing; with it the plan shows the adoption, the script installs sshd,
authorizes the stack's key and records the host key, and the rest is the same flow.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from shlex import quote
from typing import Any

import pytest
from labkit import (
    ROOT_MARKER,
    Api,
    closed_port,
    download_template,
    ensure_lab_images,
    extract_script,
    link_images,
    running_lab,
    ssh,
    ssh_argv,
)
from labkit import pvestack as _pvestack

from pvelab.control import Lab

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
TARBALLS = ("hermes-agent-0.19.0-boot2.tar", "litellm-1.82.6.tar")


def _lab(prefix: str, n: int) -> Iterator[Lab]:
    ensure_lab_images(TARBALLS)
    with running_lab(prefix, n) as lab:  # down, then the dir removed
        yield lab


@pytest.fixture  # one test each: torn down before the next lab starts
def lab() -> Iterator[Lab]:
    yield from _lab("pvestack-labconseed-", 4)


@pytest.fixture  # one test each: torn down before the next lab starts
def adopt_lab() -> Iterator[Lab]:
    yield from _lab("pvestack-labconadopt-", 8)


def pvestack(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return _pvestack(env, *args, timeout=3000)  # the whole seed, on a busy machine


def precreate(lab: Lab, env: dict[str, str], node_env: dict[str, str]) -> None:
    """The seed's containers made beforehand with the token, as its Terraform does
    (token-safe skeleton: no features, no mounts, no ``ssh-public-keys``, no pvestack
    mark, its own description and tags; started)."""
    api = Api(env, lab.dir / "etc/pve/local/pve-ssl.pem")
    name = download_template(api, env)
    bridge = env["PVESTACK_LAB_BRIDGE"]
    nets = {
        217: (
            f"name=eth0,bridge={bridge},ip={env['PVESTACK_LAB_GATEWAY_CIDR']},"
            f"gw={env['PVESTACK_LAB_ROUTER']}"
        ),
        218: f"name=eth0,bridge={bridge},ip=dhcp",
    }
    for vmid, hostname, memory in ((217, "gateway", 1536), (218, "hermes", 2048)):
        upid = api.ok(
            "POST", "/nodes/{node}/lxc", vmid=vmid, ostemplate=f"local:vztmpl/{name}",
            hostname=hostname, unprivileged=1, memory=memory, swap=512, onboot=1,
            rootfs=f"{env['PVESTACK_LAB_ROOTDIR_STORAGE']}:8", net0=nets[vmid],
            description=f"{hostname} - Managed by Terraform", tags="ai;terraform",
        )  # fmt: skip
        assert api.wait(upid)["exitstatus"] == "OK"
        start = api.ok("POST", f"/nodes/{{node}}/lxc/{vmid}/status/start")
        assert api.wait(start)["exitstatus"] == "OK"
        keys = ssh(node_env, f"pct exec {vmid} -- cat /root/.ssh/authorized_keys", 60)
        assert keys.returncode != 0 or not keys.stdout.strip(), keys.stdout  # no key yet
    # the gateway's template has no SSH server: the console script installs one
    purge = "apt-get purge -y -q openssh-server openssh-sftp-server && rm -f /etc/ssh/ssh_host_*"
    r = ssh(
        node_env, f"pct exec 217 -- env DEBIAN_FRONTEND=noninteractive sh -c {quote(purge)}", 300
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


def configs(node_env: dict[str, str]) -> list[str]:
    return [ssh(node_env, f"pct config {vmid}", 60).stdout for vmid in (217, 218)]


def refuse_without_adopt(env: dict[str, str], node_env: dict[str, str], stack: Path) -> str:
    """Without ``--adopt`` apply touches neither unmarked CT and says why."""
    before = configs(node_env)
    r = pvestack(env, "apply", "-c", str(stack))
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    for vmid in (217, 218):
        assert f"lxc/{vmid}" in r.stdout + r.stderr
    assert "without the pvestack mark" in r.stdout + r.stderr and "--adopt" in r.stdout + r.stderr
    assert "No changes" not in r.stdout  # doctor stopped it: said as an error
    # past doctor, the plan refuses them itself
    r2 = pvestack(env, "apply", "-c", str(stack), "--skip-doctor")
    assert r2.returncode == 1, r2.stdout[-3000:] + r2.stderr[-3000:]
    assert r2.stdout.count("exists without the pvestack mark; it is left untouched") == 2
    assert configs(node_env) == before
    return r.stdout + r.stderr + r2.stdout + r2.stderr


def console_flow(lab: Lab, tmp_path: Path, *, adopt: bool = False) -> None:
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
    first = ["apply", "-c", str(stack)]
    if adopt:
        precreate(lab, env, node_env)
        printed.append(refuse_without_adopt(env, node_env, stack))
        first.append("--adopt")

    r = pvestack(env, *first)
    printed += [r.stdout, r.stderr]
    assert r.returncode == 3, r.stdout[-6000:] + r.stderr[-3000:]
    script = extract_script(r.stdout)
    assert "docker" not in script and "pct push" not in script and ".env" not in script
    print(f"console script: {len(script.encode())} bytes, {len(script.splitlines())} lines")
    if adopt:
        assert "adopting lxc/217" in r.stdout + r.stderr, r.stdout[-3000:]
        assert "adopting lxc/218" in r.stdout + r.stderr, r.stdout[-3000:]
        assert script.count("guest-access:authorized-key") >= 2, script

    pasted = ssh(node_env, "bash -s", 1200, stdin=script)
    assert pasted.returncode == 0, pasted.stdout[-3000:] + pasted.stderr[-3000:]
    assert pasted.stdout.rstrip().splitlines()[-1] == ROOT_MARKER
    if adopt:  # the script installed sshd, authorized the stack's key, recorded the host key
        for (vmid, name), cfg in zip(((217, "gateway"), (218, "hermes")), configs(node_env)):
            assert "pvestack-hostkey: SHA256:" in cfg, cfg
            keys = ssh(node_env, f"pct exec {vmid} -- cat /root/.ssh/authorized_keys", 60)
            pub = (tmp_path / "xdg" / "pvestack" / "keys" / f"{name}.pub").read_text()
            assert keys.stdout.splitlines() == [pub.strip()], keys.stdout + keys.stderr

    report = guest_apply(env, node_env, stack, master, tmp_path, printed)
    verify_green(report)

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


PS_LOOP = "while :; do ps -eo args; echo {sep}; sleep 0.5; done"


def guest_apply(
    env: dict[str, str],
    node_env: dict[str, str],
    stack: Path,
    master: str,
    tmp: Path,
    printed: list[str],
) -> dict[str, Any]:
    """The second apply: every guest step over the containers' own SSH, while a ``ps``
    loop in each container (one long ``pct exec``, cheap on a busy node) records every
    argv, looked through for the gateway key. Returns the verify report apply ran."""
    sep = "--ps-" + secrets.token_hex(4) + "--"
    watchers = []
    for vmid in (217, 218):
        with (tmp / f"ps-{vmid}.txt").open("w") as out:
            loop = quote(PS_LOOP.format(sep=sep))
            argv = ssh_argv(node_env, f"pct exec {vmid} -- sh -c {loop}")
            watchers.append(subprocess.Popen(argv, stdout=out, stdin=subprocess.DEVNULL))
    try:
        r = pvestack(env, "apply", "-c", str(stack), "--json")
    finally:
        for w in watchers:
            w.terminate()
            w.wait(timeout=60)
    snapshots = [x for v in (217, 218) for x in (tmp / f"ps-{v}.txt").read_text().split(sep)]
    assert len(snapshots) > 10 and any("docker" in x for x in snapshots)
    assert not [x for x in snapshots if master in x]
    printed += [r.stdout, r.stderr]
    data = json.loads(r.stdout)
    results = data["results"]
    assert results and all(x["outcome"] in ("done", "skipped") for x in results), results
    assert any(x["actor"] == "guest" and x["outcome"] == "done" for x in results)
    assert r.returncode == 0 and data["verify"] is not None, r.stdout[-3000:] + r.stderr[-2000:]
    report: dict[str, Any] = data["verify"]
    return report


def verify_green(report: dict[str, Any]) -> None:
    """The verify that apply ran (``pvestack verify``'s checks): every check green."""
    checks = report["checks"]
    bad = [c for c in checks if c["status"] in ("fail", "unverified")]
    assert bad == [], bad
    mounts = [c for c in checks if c["id"].startswith("mount.")]
    # proved inside over the guest route; the node itself is never asked (no root on it)
    assert mounts and all(c["status"] == "pass" for c in mounts), mounts
    assert all("the node itself is not read" in c["evidence"] for c in mounts), mounts
    assert any(c["id"] == "llm.roundtrip" and c["status"] == "pass" for c in checks), checks
    # the path a client such as Open WebUI takes: Hermes's API server, from this machine
    assert any(c["id"] == "hermes.api.chat" and c["status"] == "pass" for c in checks), checks


def test_seed_topology_console_only(lab: Lab, tmp_path: Path) -> None:
    console_flow(lab, tmp_path)


def test_seed_topology_console_only_adopted(adopt_lab: Lab, tmp_path: Path) -> None:
    """The same with containers created beforehand without the key (the seed's
    Terraform skeleton), taken over with ``apply --adopt``."""
    console_flow(adopt_lab, tmp_path, adopt=True)
