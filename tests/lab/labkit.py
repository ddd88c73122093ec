"""Helpers of the lab tests (root + real LXC)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from pvelab.control import Lab, LabSettings
from pvelab.runtime import template

SHARED_TEMPLATE_DIR = Path("/var/lib/pvestack-lab/cache")


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "lab tests need root (real LXC, a bridge, iptables)"
    for tool in ("lxc-start", "lxc-usernsexec", "dnsmasq", "iptables", "debootstrap"):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            return f"lab tests need {tool} (make setup)"
    return None


def seed_template(www: Path) -> None:
    """Reuse the templates (debian-12, debian-13) another lab on this machine already built
    (saves the debootstraps); what is missing there is built into the shared cache once."""
    for flavor in template.FLAVORS:
        if template.cached(www, flavor) is not None:
            continue
        have = template.cached(SHARED_TEMPLATE_DIR, flavor)
        if have is None:
            have = template.build(SHARED_TEMPLATE_DIR, flavor=flavor)
        www.mkdir(parents=True, exist_ok=True)
        for p in (have.path, have.path.with_name(have.path.name + ".sha512")):
            shutil.copy2(p, www / p.name)


def host_tmpdir(prefix: str) -> Path:
    """A directory container roots can reach (the pytest tmp dirs are 0700)."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    d.chmod(0o755)
    return d


def make_lab(tmp: Path, n: int) -> Lab:
    # PVESTACK_LABTEST_SLOT shifts ports, bridge and subnet, so two test runs on one
    # machine (two developers' worktrees, say) never share a lab
    n += 10 * int(os.environ.get("PVESTACK_LABTEST_SLOT", "0"))
    settings = LabSettings(
        node="labtest",
        api_port=18006 + n,
        ssh_port=12222 + n,
        http_port=18099 + n,
        bridge=f"pvlabt{n}",
        subnet=f"10.78.{n}.0/24",
    )
    lab = Lab(tmp, settings)
    seed_template(lab.cache)
    return lab


class Api:
    """A minimal PVE API client for the tests (token auth, the lab's certificate as CA)."""

    def __init__(self, env: dict[str, str], cafile: Path) -> None:
        self.base = env["PVESTACK_API_URL"] + "/api2/json"
        self.node = env["PVESTACK_NODE"]
        self.s = requests.Session()
        self.cafile = str(cafile)  # per request: REQUESTS_CA_BUNDLE would override a session's
        tok = f"PVEAPIToken={env['PVESTACK_TOKEN_ID']}={env['PVESTACK_TOKEN_SECRET']}"
        self.s.headers["Authorization"] = tok

    def call(self, method: str, path: str, **params: Any) -> requests.Response:
        url = self.base + path.replace("{node}", self.node)
        if method == "GET":
            return self.s.get(url, params=params, timeout=60, verify=self.cafile)
        return self.s.request(method, url, data=params, timeout=60, verify=self.cafile)

    def ok(self, method: str, path: str, **params: Any) -> Any:
        r = self.call(method, path, **params)
        assert r.status_code == 200, f"{method} {path}: {r.status_code} {r.text}"
        return r.json()["data"]

    def wait(self, upid: str, timeout: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st: dict[str, Any] = self.ok("GET", f"/nodes/{{node}}/tasks/{upid}/status")
            if st["status"] == "stopped":
                return st
            time.sleep(0.5)
        raise AssertionError(f"task {upid} still running after {timeout}s")


def ssh_argv(env: dict[str, str], command: str) -> list[str]:
    """The ``ssh`` argv of root on the lab node running ``command``."""
    return [
        "ssh", "-p", env["PVESTACK_SSH_PORT"], "-i", env["PVESTACK_SSH_KEY"],
        "-o", f"UserKnownHostsFile={env['PVESTACK_SSH_KNOWN_HOSTS']}",
        "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
        f"{env['PVESTACK_SSH_USER']}@{env['PVESTACK_SSH_HOST']}", command,
    ]  # fmt: skip


def ssh(
    env: dict[str, str], command: str, timeout: float = 600, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Root on the lab node over SSH, the way pvestack's SSH path reaches a PVE node."""
    return subprocess.run(
        ssh_argv(env, command), input=stdin or "", capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


LAB_IMAGES = Path(os.environ.get("PVESTACK_LAB_IMAGES", "/var/lib/pvestack-lab/images"))
_ROOT = Path(__file__).resolve().parents[2]


def ensure_lab_images(tarballs: tuple[str, ...]) -> Path:
    """The lab's image tarballs, built once on this machine when missing (Hermes and
    LiteLLM from PyPI: scripts/build-lab-images.sh, which takes its own lock)."""
    if any(not (LAB_IMAGES / t).is_file() for t in tarballs):
        r = subprocess.run(
            [str(_ROOT / "scripts" / "build-lab-images.sh")],
            env={**os.environ, "PVESTACK_LAB_DIR": str(LAB_IMAGES.parent)},
            capture_output=True, text=True, timeout=3600, check=False,
        )  # fmt: skip
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return LAB_IMAGES
