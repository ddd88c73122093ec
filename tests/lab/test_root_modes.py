"""Root steps both ways on the lab node, for real: ``pvestack apply`` with root over SSH,
and with root via the console (apply prints the script and exits 3; the test pastes it
into the lab node's shell, twice, as a user would; apply again finishes). Both reach the
same end state, field by field: features, bind mounts, the custom id map, the host
directories' owners (computed from that map, not the seed's values) and mode, running.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from labkit import (
    ROOT_MARKER,
    SPLIT_IDMAP,
    STACK_LAB_CT,
    STACK_PVE,
    apply_on_a_terminal,
    extract_script,
    host_tmpdir,
    pvestack,
    running_lab,
    ssh,
)

from pvelab.control import Lab

pytestmark = pytest.mark.lab

IDMAP = SPLIT_IDMAP

STACK = (
    STACK_PVE
    + """
[root]
via = "{via}"

# root modes compared on their own (test_console_only.py: the ssh guest route); the
# console runs apply with --no-verify: with no way into the CT, verify says unverified
[guest]
via = "pct"

[root.ssh]
host = "${{PVESTACK_SSH_HOST}}"
key_file = "${{PVESTACK_SSH_KEY}}"
known_hosts = "${{PVESTACK_SSH_KNOWN_HOSTS}}"
"""
    + STACK_LAB_CT
    + """
[[stack.mount]]
host_path = "{data}/app"
path = "/srv/app"
uid = 10000
mode = "0750"

[[stack.mount]]
host_path = "{data}/cfg"
path = "/etc/app"
"""
)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with running_lab("pvestack-labroot-", 7) as lab:
        yield lab


@pytest.fixture(scope="module")
def env(lab: Lab) -> dict[str, str]:
    e = {**os.environ, **lab.env()}
    e.pop("PVESTACK_ROOT_VIA", None)
    return e


@pytest.fixture(scope="module")
def data() -> Iterator[Path]:
    d = host_tmpdir("pvestack-labroot-data-")
    try:
        yield d
    finally:
        subprocess.run(["rm", "-rf", "--", str(d)], check=False)


def write_stack(tmp: Path, data: Path, via: str, name: str, vmid: int) -> Path:
    (data / name).mkdir(exist_ok=True)
    idmap = "[" + ", ".join(f'"{line}"' for line in IDMAP) + "]"
    p = tmp / f"{name}.toml"
    p.write_text(STACK.format(via=via, name=name, vmid=vmid, data=data / name, idmap=idmap))
    return p


def pct_config(env: dict[str, str], vmid: int) -> dict[str, str]:
    r = ssh(env, f"pct config {vmid}", 60)
    assert r.returncode == 0, r.stderr
    out: dict[str, str] = {}
    for line in r.stdout.splitlines():
        k, _, v = line.partition(": ")
        out[k] = f"{out[k]}\n{v}" if k in out else v
    return out


def comparable(cfg: dict[str, str], name: str, vmid: int, data: Path) -> dict[str, str]:
    """The config with what must differ between the two stacks taken out."""
    skip = {"hostname", "description", "digest", "net0", "rootfs"}
    out = {k: v for k, v in cfg.items() if k not in skip}
    for k in ("mp0", "mp1"):
        out[k] = out.get(k, "").replace(str(data / name), "<data>")
    out["net0"] = re.sub(r"hwaddr=[0-9A-Fa-f:]+,?", "", cfg.get("net0", ""))
    out["rootfs"] = cfg.get("rootfs", "").replace(str(vmid), "<vmid>")
    return out


def host_state(data: Path, name: str) -> dict[str, tuple[int, int, str]]:
    out = {}
    for sub in ("app", "cfg"):
        st = (data / name / sub).stat()
        out[sub] = (st.st_uid, st.st_gid, oct(st.st_mode & 0o7777))
    return out


def ct_pid(env: dict[str, str], vmid: int) -> str:
    r = ssh(env, f"pct status {vmid} --verbose", 60)
    pid = [ln for ln in r.stdout.splitlines() if ln.startswith("pid: ")]
    assert pid, r.stdout + r.stderr
    return pid[0]


def test_ssh_and_console_reach_the_same_state(
    lab: Lab, env: dict[str, str], data: Path, tmp_path: Path
) -> None:
    # ---- root over SSH
    f_ssh = write_stack(tmp_path, data, "ssh", "viassh", 241)
    r = pvestack(env, "apply", "-c", str(f_ssh))
    assert r.returncode == 0, r.stdout + r.stderr
    r = pvestack(env, "plan", "-c", str(f_ssh), "--detailed-exitcode")
    assert r.returncode == 0, r.stdout + r.stderr

    # ---- root via the console: apply stops with the script, exit 3
    f_con = write_stack(tmp_path, data, "console", "viaconsole", 242)
    r = pvestack(env, "apply", "-c", str(f_con), "--no-verify")
    assert r.returncode == 3, r.stdout + r.stderr
    script = extract_script(r.stdout)
    assert env["PVESTACK_TOKEN_SECRET"] not in r.stdout + r.stderr
    # paste it into the node's shell (the lab node's root shell over its sshd)
    first = ssh(env, "bash -s", 900, stdin=script)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.rstrip().splitlines()[-1] == ROOT_MARKER
    cfg_once = pct_config(env, 242)
    host_once = host_state(data, "viaconsole")
    pid_once = ct_pid(env, 242)
    again = ssh(env, "bash -s", 900, stdin=script)  # idempotent: nothing changes
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.rstrip().splitlines()[-1] == ROOT_MARKER
    assert pct_config(env, 242) == cfg_once
    assert host_state(data, "viaconsole") == host_once
    assert ct_pid(env, 242) == pid_once  # not rebooted again
    assert "ok: reboot:242" in again.stdout and "probe ok: /srv/app" in again.stdout
    r = pvestack(env, "apply", "-c", str(f_con), "--no-verify")
    assert r.returncode in (0, 3), r.stdout + r.stderr
    if r.returncode == 3:  # the token's part (start) made more root work: paste once more
        third = ssh(env, "bash -s", 900, stdin=extract_script(r.stdout))
        assert third.returncode == 0, third.stdout + third.stderr
        r = pvestack(env, "apply", "-c", str(f_con), "--no-verify")
        assert r.returncode == 0, r.stdout + r.stderr
    r = pvestack(env, "plan", "-c", str(f_con), "--detailed-exitcode")
    assert r.returncode == 0, r.stdout + r.stderr

    # ---- identical end state, field by field
    a = comparable(pct_config(env, 241), "viassh", 241, data)
    b = comparable(pct_config(env, 242), "viaconsole", 242, data)
    assert a == b
    assert "keyctl=1" in a["features"] and "nesting=1" in a["features"]
    assert a["mp0"].startswith("<data>/app,") and "mp=/srv/app" in a["mp0"]
    assert a["lxc.idmap"].splitlines() == IDMAP
    assert host_state(data, "viassh") == host_state(data, "viaconsole")
    assert host_state(data, "viassh") == {
        "app": (165535, 165535, "0o750"),  # uid 10000 through the custom map
        "cfg": (100000, 100000, "0o755"),  # container root
    }
    for vmid in (241, 242):
        assert ssh(env, f"pct status {vmid}", 60).stdout.strip() == "status: running"
        # written inside as uid 10000, seen on the host as 165535
        w = ssh(
            env,
            f"pct exec {vmid} -- setpriv --reuid 10000 --regid 10000 --clear-groups "
            "sh -c 'echo hi > /srv/app/from-ct'",
            60,
        )
        assert w.returncode == 0, w.stderr
    for name in ("viassh", "viaconsole"):
        st = (data / name / "app" / "from-ct").stat()
        assert (st.st_uid, st.st_gid) == (165535, 165535)


def test_console_hand_off_waits_on_a_terminal(
    lab: Lab, env: dict[str, str], data: Path, tmp_path: Path
) -> None:
    """On a terminal, apply prints the script, waits until the API shows its effects
    (polling), then carries on and finishes with exit 0 in the same run."""
    f = write_stack(tmp_path, data, "console", "viatty", 243)
    code, text = apply_on_a_terminal(["apply", "-c", str(f), "--no-verify"], env, env, 600)
    assert code == 0, text[-3000:]
    assert "waiting for the root steps" not in text.split("#!/usr/bin/env bash")[0]
    after = text.split("# --- end of script ---", 1)[1]
    assert "root steps done: the node shows their effects" in after
    assert env["PVESTACK_TOKEN_SECRET"] not in text
    cfg = pct_config(env, 243)
    assert "keyctl=1" in cfg["features"] and cfg["mp0"].endswith("mp=/srv/app")
    assert ssh(env, "pct status 243", 60).stdout.strip() == "status: running"
