"""The console-only user, end to end on real LXC: nothing connects to the node's SSH.

``root.via = "console"`` (so ``guest.via = "ssh"``), the root SSH settings pointed at a
closed port: ``apply`` creates the CT with the stack's public key (``ssh-public-keys``)
and stops with the script (exit 3); the script, root steps only (keyctl, the id map, the
reboot, sshd, the host-key record) and no secret, is fed to ``bash -s`` as root on the
lab node (what a paste into the node's shell amounts to); ``apply`` again carries on
alone over the CT's own SSH (pinned to the recorded key) and verify is green; a third
``apply`` says "No changes".
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from labkit import (
    ROOT_MARKER,
    SPLIT_IDMAP,
    STACK_LAB_CT,
    STACK_PVE,
    apply_on_a_terminal,
    closed_port,
    extract_script,
    pvestack,
    running_lab,
    ssh,
)

from pvelab.control import Lab

pytestmark = pytest.mark.lab

VMID = 251
IDMAP = SPLIT_IDMAP

STACK = (
    STACK_PVE
    + """
[root]
via = "console"

[root.ssh]  # a closed port and no key: nothing may use it
host = "127.0.0.1"
port = {closed}
key_file = "/nonexistent/key"
"""
    + STACK_LAB_CT
)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with running_lab("pvestack-labconsole-", 5) as lab:
        yield lab


@pytest.fixture(scope="module")
def env(lab: Lab) -> dict[str, str]:
    return {**os.environ, **lab.env()}


def test_console_only_user_finishes(lab: Lab, env: dict[str, str], tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    run_env = {**env, "XDG_CONFIG_HOME": str(xdg)}
    run_env.pop("PVESTACK_ROOT_VIA", None)
    for k in ("PVESTACK_SSH_HOST", "PVESTACK_SSH_PORT", "PVESTACK_SSH_KEY"):
        run_env.pop(k, None)  # the stack file's closed port stands
    idmap = "[" + ", ".join(f'"{line}"' for line in IDMAP) + "]"
    f = tmp_path / "console.toml"
    f.write_text(STACK.format(closed=closed_port(), vmid=VMID, idmap=idmap, name="consoleonly"))

    # plan writes no file (the key is made by apply)
    r = pvestack(run_env, "plan", "-c", str(f))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "a new SSH key" in r.stdout + r.stderr
    assert not (xdg / "pvestack" / "keys" / "consoleonly").exists()

    r = pvestack(run_env, "apply", "-c", str(f))
    out = r.stdout + r.stderr
    assert r.returncode == 3, out
    assert "SSH to 127.0.0.1" not in out  # the root SSH settings were never used
    key = xdg / "pvestack" / "keys" / "consoleonly"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    script = extract_script(r.stdout)
    assert "guest-access:hostkey-record" in script and "pct set" in script
    assert "docker" not in script and "pct push" not in script
    assert env["PVESTACK_TOKEN_SECRET"] not in out
    print(f"console script: {len(script.encode())} bytes, {len(script.splitlines())} lines")

    # the operator pastes it into the node's shell (root on the lab node)
    pasted = ssh(env, "bash -s", 900, stdin=script)
    assert pasted.returncode == 0, pasted.stdout + pasted.stderr
    assert pasted.stdout.rstrip().splitlines()[-1] == ROOT_MARKER
    cfg = ssh(env, f"pct config {VMID}", 60).stdout
    assert "pvestack-hostkey: SHA256:" in cfg.replace("%3A", ":").replace("%20", " ")

    r = pvestack(run_env, "apply", "-c", str(f))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "SSH to 127.0.0.1" not in out and "fail" not in out.lower(), out

    r = pvestack(run_env, "apply", "-c", str(f))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "No changes" in r.stdout, r.stdout + r.stderr

    r = pvestack(run_env, "verify", "-c", str(f))
    assert r.returncode == 0, r.stdout + r.stderr


def test_on_a_terminal_apply_waits_for_the_record_then_goes_on(
    lab: Lab, env: dict[str, str], tmp_path: Path
) -> None:
    """On a terminal: the script, a wait until the API shows its effects (the config
    keys and the host-key record), then the rest in the same run: exit 0."""
    run_env = {**env, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    for k in ("PVESTACK_ROOT_VIA", "PVESTACK_SSH_HOST", "PVESTACK_SSH_PORT", "PVESTACK_SSH_KEY"):
        run_env.pop(k, None)
    idmap = "[" + ", ".join(f'"{line}"' for line in IDMAP) + "]"
    f = tmp_path / "tty.toml"
    f.write_text(STACK.format(closed=closed_port(), vmid=VMID + 1, idmap=idmap, name="viatty"))
    code, text = apply_on_a_terminal(["apply", "-c", str(f)], run_env, env)
    assert code == 0, text[-3000:]
    assert "root steps done" in text.split("# --- end of script ---", 1)[1], text[-3000:]
    assert "SSH to 127.0.0.1" not in text
