"""The fault matrix and the kill points of issue 10, on a lab node (real LXC).

A stack without an app and with ``root.via = "none"``: only the token part of apply runs
(template, create, start), so each scenario takes seconds. The distinct API calls of
plan/apply/destroy are found by running them once with a recorder; then, for each call,
a 500 and a hang are injected through the lab's fault endpoint (``POST /_lab/faults``),
the command runs as a user runs it (the CLI, a subprocess), and:

* it ends with exit 0 or 1 and, on 1, an ``error:`` line and no traceback;
* once the node's tasks of the vmid are done, no unmarked CT is left at the vmid;
* one re-run (the fault gone) converges: ``plan --detailed-exitcode`` exits 0
  (destroy: the CT is gone).

Kill points: the CLI is SIGKILLed while a given call is in flight (the fault endpoint
holds it: a step boundary, or the create task's status poll, i.e. inside the task),
then one re-run converges.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from pvestack._config import parse_config
from pvestack._desired import build_desired
from pvestack._engine import RootAccess, apply, connect, destroy, destroy_plan, plan

VMID = 230
PVESTACK = str(Path(sys.executable).with_name("pvestack"))
HANG_READ = 22.0  # > a GET attempt's share of the client's read budget (75 s / 4)
HANG_WRITE = 35.0  # > the client's 30 s timeout
UPID_RX = re.compile(r"UPID:[^/]+")

STACK = f"""
[pve]
api_url = "${{PVESTACK_API_URL}}"
token_id = "${{PVESTACK_TOKEN_ID}}"
token_secret = {{ env = "PVESTACK_TOKEN_SECRET" }}
fingerprint = "${{PVESTACK_FINGERPRINT}}"

[root]
via = "none"

[[stack]]
name = "faulty"
node = "${{PVESTACK_NODE}}"
vmid = {VMID}
hostname = "faulty"
cores = 1
memory = 256
swap = 0
disk_gb = 2
datastore = "${{PVESTACK_LAB_ROOTDIR_STORAGE}}"

[stack.network]
bridge = "${{PVESTACK_LAB_BRIDGE}}"

[stack.template]
storage = "local"
url = "${{PVESTACK_LAB_TEMPLATE_URL}}"
checksum = "${{PVESTACK_LAB_TEMPLATE_SHA512}}"
checksum_algorithm = "sha512"
"""


@dataclass(frozen=True)
class Call:
    phase: str  # create | noop | destroy
    method: str
    path: str  # a regex on the server's path (UPIDs generalised to type and id)

    def __str__(self) -> str:
        return f"{self.phase}: {self.method} {self.path}"


@dataclass(frozen=True)
class Outcome:
    ok: bool
    why: str


class Node:
    """The lab node as the suite drives it: the CLI, the API, the fault endpoint."""

    def __init__(self, env: Mapping[str, str], lab_dir: Path, stack_file: Path) -> None:
        self.env = {**os.environ, **env}
        self.lab_dir = lab_dir
        self.stack_file = stack_file
        stack_file.write_text(STACK)
        self.cafile = str(lab_dir / "etc/pve/local/pve-ssl.pem")
        self.base = env["PVESTACK_API_URL"]
        self.node = env["PVESTACK_NODE"]
        self.s = requests.Session()
        tok = f"PVEAPIToken={env['PVESTACK_TOKEN_ID']}={env['PVESTACK_TOKEN_SECRET']}"
        self.s.headers["Authorization"] = tok
        self.root = requests.Session()
        pw = json.loads((lab_dir / "etc/pve/lab-auth.json").read_text())["users"]["root@pam"]
        r = self.root.post(
            f"{self.base}/api2/json/access/ticket",
            data={"username": "root@pam", "password": pw["password"]},
            verify=self.cafile,
            timeout=30,
        )
        r.raise_for_status()
        t = r.json()["data"]
        self.root.headers["Cookie"] = f"PVEAuthCookie={t['ticket']}"
        self.root.headers["CSRFPreventionToken"] = t["CSRFPreventionToken"]

    # ------------------------------------------------------------ the fault endpoint

    def fault(self, rule: Mapping[str, Any]) -> None:
        r = self.root.post(f"{self.base}/_lab/faults", json=dict(rule), verify=self.cafile,
                           timeout=30)  # fmt: skip
        r.raise_for_status()

    def faults(self) -> list[Any]:
        r = self.root.get(f"{self.base}/_lab/faults", verify=self.cafile, timeout=30)
        data: list[Any] = r.json()["data"]
        return data

    def clear(self) -> None:
        self.root.delete(f"{self.base}/_lab/faults", verify=self.cafile, timeout=30)

    # ------------------------------------------------------------ the API and the CLI

    def get(self, path: str, **params: Any) -> requests.Response:
        return self.s.get(f"{self.base}/api2/json{path}", params=params, verify=self.cafile,
                          timeout=60)  # fmt: skip

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        argv = [PVESTACK, *args, "-c", str(self.stack_file)]
        return subprocess.run(argv, capture_output=True, text=True, env=self.env,
                              timeout=timeout, check=False)  # fmt: skip

    def popen(self, *args: str) -> subprocess.Popen[str]:
        argv = [PVESTACK, *args, "-c", str(self.stack_file)]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=self.env)  # fmt: skip

    def settle(self, timeout: float = 180) -> None:
        """Wait until no task of the vmid runs on the node."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.get(f"/nodes/{self.node}/tasks", vmid=VMID, source="active")
            if r.status_code == 200 and not r.json()["data"]:
                return
            time.sleep(0.5)
        raise AssertionError(f"tasks of {VMID} still running after {timeout}s")

    def ct_state(self) -> str:
        """absent | marked | unmarked (the config's mark, as pvestack reads it)."""
        r = self.get(f"/nodes/{self.node}/lxc/{VMID}/config")
        if r.status_code != 200:
            return "absent"
        cfg = r.json()["data"]
        tags = str(cfg.get("tags", "")).replace(",", ";").split(";")
        marked = "pvestack" in tags and "pvestack-stack: faulty" in str(cfg.get("description"))
        return "marked" if marked else "unmarked"

    # ------------------------------------------------------------ phases

    def prepare(self, phase: str) -> None:
        self.clear()
        self.settle()
        if phase == "create":
            if self.ct_state() != "absent":
                r = self.cli("destroy", "-y")
                assert r.returncode == 0, r.stdout + r.stderr
        else:
            r = self.cli("apply", "-y", "--no-verify")
            assert r.returncode == 0, r.stdout + r.stderr

    def command(self, phase: str) -> tuple[str, ...]:
        return ("destroy", "-y") if phase == "destroy" else ("apply", "-y", "--no-verify")

    def converged(self, phase: str) -> Outcome:
        r = self.cli(*self.command(phase))
        if r.returncode != 0:
            return Outcome(False, f"re-run exit {r.returncode}: {tail(r)}")
        self.settle()
        if phase == "destroy":
            st = self.ct_state()
            return Outcome(st == "absent", f"after destroy the CT is {st}")
        p = self.cli("plan", "--detailed-exitcode")
        return Outcome(p.returncode == 0, f"plan after re-run exit {p.returncode}: {tail(p)}")


def _says_what_failed(out: str) -> bool:
    """An ``error:`` line, or a failed action (``✗ id: message``) naming the call."""
    if "error" in out.lower():
        return True
    if any(ln.startswith("failed ") and ": " in ln for ln in out.splitlines()):
        return True  # destroy's "failed lxc/N on NODE (name): what"
    return any(ln.lstrip().startswith("✗ ") and ": " in ln for ln in out.splitlines())


def tail(r: subprocess.CompletedProcess[str], n: int = 6) -> str:
    return " | ".join((r.stdout + r.stderr).strip().splitlines()[-n:])


def discover(env: Mapping[str, str], stack_file: Path, node: Node) -> list[Call]:
    """The distinct API calls of apply from nothing, a no-op apply, and destroy."""
    calls: list[Call] = []
    phase = ["create"]

    def record(method: str, path: str, _params: Mapping[str, Any]) -> None:
        rx = "^/api2/json" + re.escape(path) + "$"
        rx = UPID_RX.sub(lambda m: _upid_rx(m.group(0)), rx.replace("\\:", ":"))
        c = Call(phase[0], method, rx)
        if c not in calls:
            calls.append(c)

    saved = dict(os.environ)
    os.environ.update(env)  # secrets are read from the environment when used
    try:
        cfg = parse_config(stack_file.read_text(), str(stack_file), env=dict(env))
        desired = build_desired(cfg, env=dict(env))
        client = connect(cfg, on_call=record)
        node.prepare("destroy")  # once through: the template is on the node from now on
        node.prepare("create")
        none = RootAccess(None, "faults: token part only")
        apply(plan(desired, client).plan, client, root=none)
        phase[0] = "noop"
        apply(plan(desired, client).plan, client, root=none)
        phase[0] = "destroy"
        destroy(destroy_plan(desired, client), client)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return calls


def _upid_rx(upid: str) -> str:
    parts = upid.split(":")
    kind, ident = (parts[5], parts[6]) if len(parts) > 7 else ("[^:/]+", "[^:/]*")
    return f"UPID:[^/]*:{kind}:{ident}:[^/]*"


def run_fault(node: Node, call: Call, kind: str) -> Outcome:
    node.prepare(call.phase)
    hang = HANG_READ if call.method == "GET" else HANG_WRITE
    rule: dict[str, Any] = {"method": call.method, "path": call.path, "times": 1}
    if kind == "500":
        rule |= {"status": 500, "message": "lab: injected fault"}
    else:
        rule |= {"hang": hang, "status": 0}
    node.fault(rule)
    t0 = time.monotonic()
    r = node.cli(*node.command(call.phase))
    node.clear()
    out = r.stdout + r.stderr
    if "Traceback" in out:
        return Outcome(False, f"traceback: {tail(r)}")
    if r.returncode not in (0, 1):
        return Outcome(False, f"exit {r.returncode}: {tail(r)}")
    if r.returncode == 1 and not _says_what_failed(out):
        return Outcome(False, f"exit 1 without an error line: {tail(r)}")
    if kind == "hang":  # the held request still lands on the node after the hang
        time.sleep(max(0.0, hang - (time.monotonic() - t0)) + 1.0)
    node.settle()
    if node.ct_state() == "unmarked":
        return Outcome(False, f"an unmarked CT is left at {VMID}: {tail(r)}")
    return node.converged(call.phase)


def run_kill(node: Node, call: Call) -> Outcome:
    """SIGKILL the CLI while ``call`` is held by the node, then re-run AT ONCE: a create
    task may still run (the CT locked ``create``); the re-run must wait for it, not call
    the CT foreign. A held write still lands when its hang ends: the re-run starts then."""
    hang = 6.0
    node.prepare(call.phase)
    node.fault({"method": call.method, "path": call.path, "times": 1, "hang": hang, "status": 0})
    proc = node.popen(*node.command(call.phase))
    deadline = time.monotonic() + 120
    while node.faults() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    held = time.monotonic()
    if proc.poll() is not None:
        node.clear()
        return Outcome(False, "the command ended before reaching the call")
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)  # our own child, by its pid
    proc.wait(30)
    if proc.stdout is not None:
        proc.stdout.close()
    if call.method != "GET":
        time.sleep(max(0.0, hang - (time.monotonic() - held)) + 0.5)
    outcome = node.converged(call.phase)
    node.settle()
    if node.ct_state() == "unmarked":
        return Outcome(False, f"an unmarked CT is left at {VMID} after the kill")
    return outcome


def run_task_fault(node: Node, task: str) -> Outcome:
    """The create (or start) task itself fails: nothing unmarked is left, a re-run converges."""
    node.prepare("create")
    node.fault({"task": task, "message": f"lab: injected {task} failure"})
    r = node.cli(*node.command("create"))
    node.clear()
    if r.returncode != 1 or f"injected {task} failure" not in r.stdout + r.stderr:
        return Outcome(False, f"expected exit 1 naming the task's error: {tail(r)}")
    node.settle()
    if node.ct_state() == "unmarked":
        return Outcome(False, f"an unmarked CT is left at {VMID} after the failed {task}")
    return node.converged("create")
