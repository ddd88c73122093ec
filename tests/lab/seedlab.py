"""One lab with the seed's two stacks applied (examples/lab.toml: LiteLLM gateway + Hermes),
shared by ``test_seed_e2e`` and ``test_verify_failures`` (one lab up, one apply per run).

``SeedLab.get(request)`` brings the lab up on first use and tears it down at the end of
the session (pid-based: ``Lab.down`` stops what it started). Lab number 6: its own
directory, bridge, subnet and ports, so other labs on the machine are left alone.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from labkit import PVESTACK, ensure_lab_images, host_tmpdir, link_images, make_lab, ssh, stack_env

from pvelab.control import Lab

ROOT = Path(__file__).resolve().parents[2]
TARBALLS = ("hermes-agent-0.18.2-boot2.tar", "hermes-agent-0.19.0-boot2.tar", "litellm-1.82.6.tar")
GW, HERMES = 217, 218
MOCK_ANSWER = "OK (the lab gateway's mock model)"


def pvestack(
    env: dict[str, str], *args: str, timeout: float = 2400
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PVESTACK, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def wait_for(what: str, probe: Callable[[], tuple[bool, str]], timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        ok, last = probe()
        if ok:
            return last
        time.sleep(3)
    raise AssertionError(f"{what}: not reached in {timeout}s; last: {last}")


class SeedLab:
    _instance: SeedLab | None = None

    def __init__(self, lab: Lab, env: dict[str, str], stack_file: Path) -> None:
        self.lab = lab
        self.env = env
        self.stack_file = stack_file
        self.applied = False
        self.printed: list[str] = []  # everything pvestack printed (no secret may be there)

    # ------------------------------------------------------------ lifecycle

    @classmethod
    def get(cls, request: pytest.FixtureRequest) -> SeedLab:
        if cls._instance is not None:
            return cls._instance
        ensure_lab_images(TARBALLS)  # built once on this machine when missing
        # one seed lab per test slot at a time (the slot shifts its number, bridge, subnet)
        slot = os.environ.get("PVESTACK_LABTEST_SLOT", "0")
        lock = Path(f"/run/pvestack-labseed-{slot}.lock").open("w")  # noqa: SIM115
        fcntl.flock(lock, fcntl.LOCK_EX)
        lab = make_lab(host_tmpdir("pvestack-labseed-"), 6)

        def down() -> None:
            try:
                lab.down(purge=True)
            finally:
                shutil.rmtree(lab.dir, ignore_errors=True)  # the bind mounts' host dirs too
                lock.close()
                cls._instance = None

        request.session.config.add_cleanup(down)
        lab.up(install=False)
        link_images(lab, TARBALLS)
        env = stack_env(lab)
        stack_file = lab.dir / "lab.toml"
        stack_file.write_text((ROOT / "examples" / "lab.toml").read_text())
        cls._instance = SeedLab(lab, env, stack_file)
        return cls._instance

    def run(self, *args: str, timeout: float = 2400) -> subprocess.CompletedProcess[str]:
        r = pvestack(self.env, *args, timeout=timeout)
        self.printed += [r.stdout, r.stderr]
        log = os.environ.get("PVESTACK_SEEDLAB_LOG")  # the full outputs, for debugging
        if log:
            with open(log, "a", encoding="utf-8") as f:
                f.write(f"\n==== pvestack {' '.join(args)}: exit {r.returncode}\n")
                f.write(r.stdout + "\n---- stderr\n" + r.stderr)
        return r

    def apply(self) -> subprocess.CompletedProcess[str]:
        """``pvestack apply`` (which ends with verify); the stack is up and green after it."""
        r = self.run("apply", "-c", str(self.stack_file), "--yes")
        assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
        self.applied = True
        return r

    def ensure_applied(self) -> None:
        if not self.applied:
            self.apply()

    # ------------------------------------------------------------ looking at it

    def pct(self, command: str, stdin: str | None = None, check: bool = True) -> str:
        r = ssh(self.env, f"pct {command}", 300, stdin=stdin)
        if check:
            assert r.returncode == 0, f"pct {command}: {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r.stdout

    def verify(self, stack_file: Path | None = None) -> tuple[int, dict[str, dict[str, Any]]]:
        """``pvestack verify --json``: the exit code and the checks by ``stack/id``."""
        r = self.run("verify", "-c", str(stack_file or self.stack_file), "--json", timeout=600)
        try:
            data = json.loads(r.stdout)
        except ValueError as e:
            raise AssertionError(f"verify --json: {r.returncode}\n{r.stdout}\n{r.stderr}") from e
        assert data["ok"] is (r.returncode == 0), data
        return r.returncode, {f"{c['stack']}/{c['id']}": c for c in data["checks"]}

    def hermes_running(self) -> tuple[bool, str]:
        r = ssh(self.env, f"pct exec {HERMES} -- cat /opt/hermes/gateway_state.json", 30)
        try:
            state = json.loads(r.stdout).get("gateway_state")
        except ValueError:
            state = None
        return state == "running", r.stdout + r.stderr

    def wait_green(self, timeout: float = 240) -> dict[str, dict[str, Any]]:
        """Verify until it is all green (after a repair: containers restart, Hermes boots)."""
        last: dict[str, dict[str, Any]] = {}

        def probe() -> tuple[bool, str]:
            nonlocal last
            code, last = self.verify()
            bad = [f"{k}: {c['evidence']}" for k, c in last.items() if c["status"] == "fail"]
            return code == 0, "; ".join(bad)

        wait_for("verify all green", probe, timeout)
        return last
