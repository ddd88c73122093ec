"""Day two against a running stack on real LXC (a lab of its own): the LiteLLM gateway of
``examples/lab.toml`` (Docker from Debian, the lab's image tarball) applied and verified;
then, through the CLI as a user runs it:

* ``status`` / ``status --json``: the CT running at its address, the service ``litellm``
  running the wanted image, the last verify (kept in the CT by ``verify``);
* ``logs`` / ``logs --json`` / ``--tail`` / ``--since`` (Debian's compose v1 has no
  ``--since``: the tagged path) show the gateway's output, over the CT's own SSH and
  through the node's ``pct exec``; an unknown service is exit 1;
  ``logs -f`` stops on Ctrl-C (SIGINT) with exit 130 and leaves no reader in the CT;
* ``shell`` on a real pty (python's ``pty``): ``echo $((6*7)); exit 3`` shows 42 and
  exits 3, over the CT's own SSH and over ``pct enter`` through the node's root SSH;
  ``shell -- CMD`` passes output and exit status through without a terminal;
* ``backup`` then ``backups`` lists the archive; PVE's own ``pct restore NEWID ARCHIVE``
  on the node makes a new CT (the original stopped: it has the same static address)
  that ``verify`` calls green. test_daytwo.py shows snapshot/rollback and the archive's
  contents on a bare CT; this one shows the deployed app coming back from a backup.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from labkit import ensure_lab_images, host_tmpdir, make_lab, ssh, stack_env

from pvelab.control import Lab

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
PVESTACK = str(ROOT / ".venv" / "bin" / "pvestack")
IMAGES = Path(os.environ.get("PVESTACK_LAB_IMAGES", "/var/lib/pvestack-lab/images"))
TARBALLS = ("litellm-1.82.6.tar",)
GW, RESTORED = 217, 227
IMAGE = "pvestack-lab/litellm:1.82.6"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    ensure_lab_images(TARBALLS)
    lab = make_lab(host_tmpdir("pvestack-labstatus-"), 7)
    try:
        lab.up(install=False)
        (lab.dir / "images").mkdir(exist_ok=True)
        for t in TARBALLS:
            (lab.dir / "images" / t).symlink_to(IMAGES / t)
        yield lab
    finally:
        try:
            lab.down(purge=True)
        finally:
            shutil.rmtree(lab.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def env(lab: Lab) -> dict[str, str]:
    return {**stack_env(lab), "TERM": "xterm"}


def gateway_file(path: Path, vmid: int = GW) -> Path:
    """examples/lab.toml's gateway stack alone, the guest route from the environment."""
    text = (ROOT / "examples" / "lab.toml").read_text()
    text = text[: text.index("# ----------------------------------------------------------------"
                             " Hermes")]  # fmt: skip
    text = text.replace("vmid = 217", f"vmid = {vmid}")
    text += '\n[guest]\nvia = "${PVESTACK_TEST_GUEST_VIA:-ssh}"\n'
    path.write_text(text)
    return path


def pvestack(
    env: dict[str, str], *args: str, timeout: float = 1200
) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [PVESTACK, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert env["LITELLM_MASTER_KEY"] not in r.stdout + r.stderr
    return r


def on_pty(
    env: dict[str, str], args: list[str], keys: bytes, timeout: float = 120
) -> tuple[int, str]:
    """Run pvestack on a real pseudo-terminal (as a user's terminal), type ``keys``."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: pvestack on the pty
        os.execve(PVESTACK, [PVESTACK, *args], env)
    out = bytearray()
    deadline = time.monotonic() + timeout
    typed = False
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    break
                if not data:
                    break
                out.extend(data)
            waited = time.monotonic() - (deadline - timeout)
            if not typed and (re.search(rb"[#$] ", bytes(out)) or waited > 20):
                os.write(fd, keys)  # at the shell's prompt
                typed = True
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def shown(text: str) -> list[str]:
    plain = re.sub(r"\x1b\[[?0-9;]*[A-Za-z]", "", text)
    return [ln.rstrip("\r").rsplit("\r", 1)[-1] for ln in plain.split("\n")]


def in_ct(env: dict[str, str], vmid: int, script: str) -> str:
    r = ssh(env, f"pct exec {vmid} -- sh -c '{script}'", 120)
    return r.stdout


def test_status_logs_shell_backup_restore(lab: Lab, env: dict[str, str], tmp_path: Path) -> None:
    t0 = time.monotonic()
    f = str(gateway_file(tmp_path / "gw.toml"))
    r = pvestack(env, "apply", "-c", f, "--yes", "--no-verify")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    t_apply = time.monotonic() - t0
    r = pvestack(env, "verify", "-c", f)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]

    # status: text and JSON (state, address, service, image, last verify)
    r = pvestack(env, "status", "-c", f, "--json")
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)
    assert (row["stack"], row["vmid"], row["state"]) == ("gateway", GW, "running")
    assert any(a.startswith(env["PVESTACK_LAB_GATEWAY_IP"] + "/") for a in row["addresses"])
    (svc,) = row["apps"]["services"]
    assert (svc["name"], svc["state"], svc["running_image"], svc["wanted_image"]) == (
        "litellm", "running", IMAGE, IMAGE)  # fmt: skip
    assert row["apps"]["last_verify"].startswith("ok at "), row
    r = pvestack(env, "status", "-c", f)
    assert re.search(rf"gateway\s+CT {GW}\s+running", r.stdout), r.stdout
    assert re.search(rf"service litellm\s+running\s+{re.escape(IMAGE)}", r.stdout), r.stdout
    assert "last verify: ok at" in r.stdout

    # logs: text, --tail, --json, --since (compose v1: the tagged path), unknown service
    r = pvestack(env, "logs", "gateway", "-c", f)
    lines = [ln for ln in r.stdout.splitlines() if not ln.startswith("Attaching to")]  # v1
    assert r.returncode == 0 and lines, r.stdout + r.stderr
    assert all(ln.startswith("litellm") for ln in lines), r.stdout
    r = pvestack(env, "logs", "gateway", "litellm", "--tail", "2", "-c", f)
    lines = [ln for ln in r.stdout.splitlines() if not ln.startswith("Attaching to")]
    assert r.returncode == 0 and 1 <= len(lines) <= 2, r.stdout + r.stderr
    r = pvestack(env, "logs", "gateway", "--json", "-c", f)
    rows = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert r.returncode == 0 and rows and all(x["service"] == "litellm" for x in rows), r.stdout
    assert all(re.match(r"\d{4}-\d\d-\d\dT", x["time"] or "") for x in rows), rows[:3]
    r = pvestack(env, "logs", "gateway", "--since", "1h", "-c", f)
    assert r.returncode == 0 and r.stdout.startswith("litellm | "), r.stdout + r.stderr
    pct_env = {**env, "PVESTACK_TEST_GUEST_VIA": "pct"}  # through the node: pct exec
    r = pvestack(pct_env, "logs", "gateway", "--json", "--tail", "1", "-c", f)
    assert r.returncode == 0 and json.loads(r.stdout)["service"] == "litellm", r.stdout + r.stderr
    r = pvestack(env, "logs", "gateway", "web", "-c", f)
    assert r.returncode == 1 and "no service 'web'" in r.stderr, r.stderr

    # logs -f: Ctrl-C ends it (exit 130), no reader is left in the CT
    p = subprocess.Popen(
        [PVESTACK, "logs", "gateway", "-f", "--tail", "1", "-c", f], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert p.stdout is not None
    first = p.stdout.readline()
    if first.startswith(b"Attaching to"):
        first = p.stdout.readline()
    assert first.startswith(b"litellm"), first
    p.send_signal(signal.SIGINT)  # our own child, by its pid
    assert p.wait(timeout=30) == 130
    time.sleep(2)
    readers = in_ct(env, GW, 'grep -la -e "[l]ogs" /proc/[0-9]*/cmdline 2>/dev/null; true')
    assert "cmdline" not in readers, readers

    # shell: a real pty, over the CT's own SSH and over `pct enter`; one command without
    for via in ("ssh", "pct"):
        code, text = on_pty(
            {**env, "PVESTACK_TEST_GUEST_VIA": via}, ["shell", "gateway", "-c", f],
            b"echo $((6*7)); exit 3\r",
        )  # fmt: skip
        assert code == 3 and "42" in shown(text), (via, code, text[-2000:])
    r = pvestack(env, "shell", "gateway", "-c", f, "--", "sh", "-c", "hostname; exit 4")
    assert (r.returncode, r.stdout) == (4, "gateway\n"), r.stderr
    r = pvestack(env, "shell", "gateway", "-c", f)  # no terminal: refused, the -- form named
    assert r.returncode == 1 and "needs a terminal" in r.stderr, r.stderr

    # backup, backups, PVE's restore into a new vmid, verify green there
    t1 = time.monotonic()
    # stop mode: a consistent copy. The lab's suspend mode archives the live files without
    # freezing the CT (PVE freezes it for a second pass): once, the restored copy's Docker
    # state was torn and the app's container stayed "Exited (255)".
    r = pvestack(env, "backup", "gateway", "--mode", "stop", "-c", f)
    assert r.returncode == 0, r.stdout + r.stderr
    r = pvestack(env, "backups", "gateway", "--json", "-c", f)
    (b,) = json.loads(r.stdout)
    assert b["volid"].startswith(f"local:backup/vzdump-lxc-{GW}-") and "gateway" in b["notes"]
    assert ssh(env, f"pct stop {GW}", 120).returncode == 0  # the copy has the same address
    rr = ssh(env, f"pct restore {RESTORED} {b['volid']} --storage local-lvm --unique", 900)
    assert rr.returncode == 0, rr.stdout + rr.stderr
    assert ssh(env, f"pct start {RESTORED}", 120).returncode == 0
    g2 = str(gateway_file(tmp_path / "restored.toml", RESTORED))
    deadline = time.monotonic() + 240
    while True:
        r = pvestack(env, "verify", "-c", g2)
        if r.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    print(f"\napply {t_apply:.0f}s, backup+restore+verify {time.monotonic() - t1:.0f}s, "
          f"all {time.monotonic() - t0:.0f}s")  # fmt: skip
    for vmid in (RESTORED, GW):
        ssh(env, f"pct destroy {vmid} --force 1 --purge 1", 300)
