"""pvestack vs Ansible's ``community.proxmox.proxmox`` on the same emulator: a no-op
"ensure this CT exists with these settings", API calls and wall time, both tools, one run
each (after one warm-up run each).

fakepve (on loopback) is seeded with 1,000 guests and one CT (vmid 118, made by
pvestack's own apply of ``CT_STACK``: the CT alone, no app, no root steps), which both
tools are then asked to ensure, with the same settings. Ansible comes from PyPI (the
``ansible`` package carries the collection) into a venv of its own under the benchmark's cache dir
(``$PVESTACK_BENCH_CACHE``, default ``~/.cache/pvestack-bench``): it is never a
dependency of pvestack. No ``ansible`` on the index: the comparison is skipped, said so.

    .venv/bin/python benchmarks/ansible_side_by_side.py [--guests 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fakepve import FakePve
from fakepve.certs import make_cert
from plan_calls import TOKEN_ID, TOKEN_SECRET, Served, seed

from pvestack._config import parse_config
from pvestack._engine import RootAccess, apply, connect, plan

ROOT = Path(__file__).resolve().parents[1]
PVESTACK = str(Path(sys.executable).with_name("pvestack"))
CT_STACK = """
[pve]
api_url = "${PVESTACK_API_URL}"
token_id = "${PVESTACK_TOKEN_ID}"
token_secret = { env = "PVESTACK_TOKEN_SECRET" }
ca_file = "${PVESTACK_CA_FILE}"

[root]
via = "none"

[[stack]]
name = "hermes"
node = "gihyeon"
vmid = 118
hostname = "hermes"
cores = 2
memory = 4096
swap = 512
disk_gb = 8
datastore = "local-lvm"

[stack.network]
bridge = "vmbr0"

[stack.template]
storage = "local"
url = "http://download.proxmox.com/images/system/debian-12-standard_12.12-1_amd64.tar.zst"
"""
CACHE = Path(os.environ.get("PVESTACK_BENCH_CACHE", Path.home() / ".cache" / "pvestack-bench"))


def ansible_venv() -> Path | None:
    """The benchmark's own venv with ansible (made once); None if it cannot be installed."""
    venv = CACHE / "ansible-venv"
    if (venv / "bin" / "ansible").exists():
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    r = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "ansible", "proxmoxer", "requests"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if r.returncode != 0:
        print(f"ansible does not install here (pip: {r.stderr.strip()[-300:]}): skipped")
        return None
    return venv


def ansible_args(port: int) -> str:
    """The same CT as the example's Hermes stack, as community.proxmox.proxmox says it."""
    user, _, token = TOKEN_ID.partition("!")
    args = {
        "api_host": "127.0.0.1", "api_port": port, "api_user": user, "api_token_id": token,
        "api_token_secret": TOKEN_SECRET, "validate_certs": True, "node": "gihyeon",
        "vmid": 118, "hostname": "hermes", "cores": 2, "memory": 4096, "swap": 512,
        "ostemplate": "local:vztmpl/debian-12-standard_12.12-1_amd64.tar.zst",
        "unprivileged": True, "state": "present", "update": True,
    }  # fmt: skip
    return json.dumps(args)


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
    return time.perf_counter() - t0, r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--guests", type=int, default=1000)
    args = ap.parse_args()
    venv = ansible_venv()
    with tempfile.TemporaryDirectory() as tmp:
        certfile, keyfile, _ = make_cert(tmp, hosts=("127.0.0.1",))
        pve = FakePve(host="127.0.0.1", port=0)
        pve.time_scale = 0
        pve.max_requests = 100000
        seed(pve, args.guests)
        served = Served(pve, certfile, keyfile)
        try:
            env = {**os.environ, "PVESTACK_API_URL": pve.url, "PVESTACK_TOKEN_ID": TOKEN_ID,
                   "PVESTACK_TOKEN_SECRET": TOKEN_SECRET, "PVESTACK_CA_FILE": certfile,
                   "LITELLM_API_KEY": "bench"}  # fmt: skip
            os.environ.update(env)
            stack = Path(tmp) / "ct.toml"
            stack.write_text(CT_STACK)
            cfg = parse_config(CT_STACK, str(stack), env=env)
            client = connect(cfg)
            apply(plan(cfg, client).plan, client, root=RootAccess(None, "bench"))
            rows = []
            ours = [PVESTACK, "plan", "-c", str(stack)]
            rows.append(("pvestack plan (no-op)", *measure(pve, ours, env)))
            if venv is not None:
                port = int(pve.url.rsplit(":", 1)[1].split("/")[0])
                aenv = {**env, "REQUESTS_CA_BUNDLE": certfile, "ANSIBLE_HOST_KEY_CHECKING": "0",
                        "ANSIBLE_PYTHON_INTERPRETER": str(venv / "bin" / "python")}  # fmt: skip
                theirs = [str(venv / "bin" / "ansible"), "localhost", "-c", "local",
                          "-m", "community.proxmox.proxmox", "-a", ansible_args(port)]  # fmt: skip
                rows.append(("ansible community.proxmox.proxmox", *measure(pve, theirs, aenv)))
        finally:
            served.stop()
    print(f"no-op 'ensure the CT exists with these settings', {args.guests} guests on fakepve")
    print(f"{'tool':<36} {'API calls':>9} {'wall s':>8}  result")
    for name, calls, wall, note in rows:
        print(f"{name:<36} {calls:>9} {wall:>8.2f}  {note}")
    base, _ = timed([sys.executable, "-c", "pass"], dict(os.environ))
    print(f"(python -c pass: {base:.2f} s on this machine now: start-up is most of both walls)")
    if len(rows) == 2 and rows[0][2] > 0:
        print(f"ansible / pvestack: {rows[1][1] / max(rows[0][1], 1):.1f}x calls, "
              f"{rows[1][2] / rows[0][2]:.1f}x wall time")  # fmt: skip
    return 0


def measure(pve: FakePve, argv: list[str], env: dict[str, str]) -> tuple[int, float, str]:
    """(API calls, wall seconds, first line of the outcome) of one run, after a warm-up."""
    timed(argv, env)  # warm-up: caches, .pyc files
    before = len(pve.requests)
    wall, r = timed(argv, env)
    calls = len(pve.requests) - before
    out = (r.stdout + r.stderr).strip().splitlines()
    note = f"exit {r.returncode}: " + (out[-1][:60] if out else "")
    if "CHANGED" in r.stdout or "SUCCESS" in r.stdout:
        note = f"exit {r.returncode}: " + r.stdout.split("=>", 1)[0].strip()[:60]
    return calls, wall, note


if __name__ == "__main__":
    raise SystemExit(main())
