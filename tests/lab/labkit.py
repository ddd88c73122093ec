"""Helpers of the lab tests (root + real LXC)."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import pty
import secrets
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
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


@contextlib.contextmanager
def running_lab(prefix: str, n: int) -> Iterator[Lab]:
    """Lab number ``n`` (see ``make_lab``) up in a new host dir for the block, then down
    (its daemons and CTs stopped by pid) and the dir removed."""
    lab = make_lab(host_tmpdir(prefix), n)
    try:
        lab.up(install=False)
        yield lab
    finally:  # down first: it finds what it started (pids, CTs) in the lab dir
        try:
            lab.down(purge=True)
        finally:
            shutil.rmtree(lab.dir, ignore_errors=True)


def stack_env(lab: Lab) -> dict[str, str]:
    """The environment examples/lab.toml's stacks need on ``lab``: its connection, fresh
    secrets, and the gateway's fixed address (the 5th from the top of the lab subnet)."""
    net = ipaddress.ip_network(lab.settings.subnet)
    hosts = list(net.hosts())
    gw_ip = str(hosts[-5])
    return {
        **os.environ,
        **lab.env(),
        "LITELLM_MASTER_KEY": "sk-lab-" + secrets.token_hex(16),
        "HERMES_API_KEY": "hermes-lab-" + secrets.token_hex(16),
        "PVESTACK_LAB_GATEWAY_CIDR": f"{gw_ip}/{net.prefixlen}",
        "PVESTACK_LAB_GATEWAY_IP": gw_ip,
        "PVESTACK_LAB_ROUTER": str(hosts[0]),
    }


def closed_port() -> int:
    """A loopback port nothing listens on (bound once, then let go)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def link_images(lab: Lab, tarballs: tuple[str, ...]) -> None:
    """The built lab images, linked into the lab's ``images/`` (where the recipes read them)."""
    (lab.dir / "images").mkdir(exist_ok=True)
    for t in tarballs:
        (lab.dir / "images" / t).symlink_to(LAB_IMAGES / t)


PVESTACK = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "pvestack")
#: the last line the console's root-steps script prints
ROOT_MARKER = "PVESTACK-ROOT-STEPS-DONE"
#: uid/gid 10000 inside -> 165535 on the host; the rest as PVE's default (within the
#: root:100000:65536 range the lab already has, so /etc/subuid is not touched)
SPLIT_IDMAP = [
    "u 0 100000 10000", "u 10000 165535 1", "u 10001 110001 55534",
    "g 0 100000 10000", "g 10000 165535 1", "g 10001 110001 55534",
]  # fmt: skip


def pvestack(
    env: dict[str, str], *args: str, timeout: float = 1200
) -> subprocess.CompletedProcess[str]:
    """The worktree's ``pvestack`` CLI, its output captured, stdin /dev/null."""
    return subprocess.run(
        [PVESTACK, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def extract_script(stdout: str) -> str:
    """The root-steps script a console-mode apply prints for the user to paste."""
    start = stdout.index("#!/usr/bin/env bash")
    call = "pvestack_root_steps </dev/null"
    end = stdout.index(call, stdout.index(f"echo {ROOT_MARKER}", start)) + len(call)
    return stdout[start:end] + "\n"


def _read_until(fd: int, buf: bytes, done: bytes | None, deadline: float) -> bytes:
    """Read the child's terminal until ``done`` shows (None: until it closes)."""
    while done is None or done not in buf:
        assert time.monotonic() < deadline, buf.decode(errors="replace")[-3000:]
        r, _, _ = select.select([fd], [], [], 5)
        if not r:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            return buf
        if not chunk:
            return buf
        buf += chunk
    return buf


def apply_on_a_terminal(
    args: list[str], run_env: dict[str, str], ssh_env: dict[str, str], timeout: float = 900
) -> tuple[int, str]:
    """``pvestack ARGS`` on a terminal (a pty): read until the printed script ends, paste
    the script into root's shell on the node (over its SSH, as the user would), read until
    pvestack exits. Returns its exit code and everything it wrote (``\\n`` line ends)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: pvestack with a terminal on stdin/stdout
        os.execve(PVESTACK, [PVESTACK, *args], run_env)
    deadline = time.monotonic() + timeout
    try:
        buf = _read_until(fd, b"", b"# --- end of script ---", deadline)
        text = buf.decode(errors="replace").replace("\r\n", "\n")
        pasted = ssh(ssh_env, "bash -s", 900, stdin=extract_script(text))
        assert pasted.returncode == 0, pasted.stdout + pasted.stderr
        buf = _read_until(fd, buf, None, deadline)
        _, status = os.waitpid(pid, 0)
        pid = 0
    finally:
        if pid:
            os.kill(pid, signal.SIGTERM)  # our own child, by pid
            os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), buf.decode(errors="replace").replace("\r\n", "\n")


def wait_systemd(lab: Lab, vmid: int, timeout: float = 120) -> None:
    """Until systemd in the CT says ``running`` (or ``degraded``)."""
    rt = lab.runtime()
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = rt.exec(vmid, ["systemctl", "is-system-running"]).stdout.decode().strip()
        if state in ("running", "degraded"):
            return
        time.sleep(1)
    raise AssertionError(f"CT {vmid}: systemd is {state!r}")


# Stack file pieces (``str.format`` templates: ``{{``/``}}`` are braces) the lab's env fills.
STACK_PVE = """
[pve]
api_url = "${{PVESTACK_API_URL}}"
token_id = "${{PVESTACK_TOKEN_ID}}"
token_secret = {{ env = "PVESTACK_TOKEN_SECRET" }}
fingerprint = "${{PVESTACK_FINGERPRINT:-}}"
"""
#: one small CT (``{name}``, ``{vmid}``, ``{idmap}``) from the lab template on its bridge
STACK_LAB_CT = """
[[stack]]
name = "{name}"
node = "${{PVESTACK_NODE}}"
vmid = {vmid}
memory = 512
swap = 0
disk_gb = 2
datastore = "${{PVESTACK_LAB_ROOTDIR_STORAGE}}"
features = {{ nesting = true, keyctl = true }}
idmap = {idmap}

[stack.network]
bridge = "${{PVESTACK_LAB_BRIDGE}}"
ipv4 = "dhcp"

[stack.template]
storage = "local"
url = "${{PVESTACK_LAB_TEMPLATE_URL}}"
checksum = "${{PVESTACK_LAB_TEMPLATE_SHA512}}"
checksum_algorithm = "sha512"
"""


def download_template(api: Api, env: dict[str, str]) -> str:
    """The lab's template into ``local`` through the API (download-url, sha512 checked)."""
    name = template.TEMPLATE_NAME
    upid = api.ok(
        "POST", "/nodes/{node}/storage/local/download-url", url=env["PVESTACK_LAB_TEMPLATE_URL"],
        content="vztmpl", filename=name, checksum=env["PVESTACK_LAB_TEMPLATE_SHA512"],
        **{"checksum-algorithm": "sha512"},
    )  # fmt: skip
    assert api.wait(upid)["exitstatus"] == "OK"
    return name


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
#: the broken Hermes release (scripts/build-broken-hermes.sh), for the rollback test
BROKEN_TARBALL = "hermes-agent-broken.tar"


def ensure_lab_images(tarballs: tuple[str, ...]) -> Path:
    """The lab's image tarballs, built once on this machine when missing (Hermes and
    LiteLLM from PyPI: scripts/build-lab-images.sh, which takes its own lock)."""
    missing = [t for t in tarballs if not (LAB_IMAGES / t).is_file()]
    scripts = ["build-lab-images.sh"] if set(missing) - {BROKEN_TARBALL} else []
    if BROKEN_TARBALL in missing:  # built FROM the 0.19.0 image the first script makes
        scripts = ["build-lab-images.sh", "build-broken-hermes.sh"]
    for script in scripts:
        r = subprocess.run(
            [str(_ROOT / "scripts" / script)],
            env={**os.environ, "PVESTACK_LAB_DIR": str(LAB_IMAGES.parent)},
            capture_output=True, text=True, timeout=3600, check=False,
        )  # fmt: skip
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return LAB_IMAGES
