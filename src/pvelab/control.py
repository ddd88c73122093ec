"""``pvestack lab up|down|status|env``: bring the whole lab node up and down.

``up`` (idempotent): checks (and installs) the Debian packages it needs, builds the
templates once (debian-12 and debian-13) with their appliance index ``aplinfo.dat``, brings
up the bridge with dnsmasq and NAT, the templates' loopback HTTP server, root's sshd, and
the API server as a background daemon (pid file + log); loads the appliance index into the
node (``pveam update``); creates the least-privilege API token ``pvestack@pve!deploy``
(role ``PVEStackDeploy``, see ``backend.privileges``) and a ``root@pam!pvestack`` token for
root-only lab work (``Lab.root_token``), and returns the connection as environment
variables (the deploy token's).

``down``: removes every container, the bridge, the tagged iptables rules, the processes
(each stopped by its pid file), and the subuid/subgid lines the lab added. The built
template is kept in ``<lab>/cache`` (``purge=True`` removes it too, and the lab
directory when nothing else is left in it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pvelab.runtime import network, procs, template
from pvelab.runtime.lxc import LxcRuntime, remove_recorded_subids
from pvelab.runtime.sshd import LabSshd

DEFAULT_LAB_DIR = Path("/var/lib/pvestack-lab")
TOKEN_ID = "pvestack@pve!deploy"  # noqa: S105 (an id, not a secret): the default token
ROOT_TOKEN_ID = "root@pam!pvestack"  # noqa: S105 (root-only lab work, never the default)
ROOTDIR_STORAGE = "local-lvm"
REQUIRED = {
    "lxc-start": "lxc",
    "lxc-usernsexec": "lxc",
    "debootstrap": "debootstrap",
    "dnsmasq": "dnsmasq-base",
    "iptables": "iptables",
    "sshd": "openssh-server",
    "ssh-keygen": "openssh-client",
    "newuidmap": "uidmap",
    "zstd": "zstd",
    "ip": "iproute2",
}
# What the lab makes under its directory (``down`` removes exactly these; ``cache`` too with
# ``purge``); other files there (e.g. image tarballs someone keeps) are left alone.
LAB_PARTS = ("lxc", "storage", "tasks", "etc", "run", "ssh", "bin", "secrets", "state", "var")
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


class LabError(RuntimeError):
    pass


@dataclass(frozen=True)
class LabSettings:
    """What ``up`` chose once; kept in ``<lab>/lab.json`` so later calls agree."""

    node: str = "pve"
    api_port: int = 8006
    ssh_port: int = 2222
    http_port: int = 8099
    bridge: str = network.DEFAULT_BRIDGE
    subnet: str = network.DEFAULT_SUBNET


def lab_dir_default() -> Path:
    return Path(os.environ.get("PVESTACK_LAB_DIR", str(DEFAULT_LAB_DIR)))


class Lab:
    def __init__(self, lab_dir: Path | None = None, settings: LabSettings | None = None) -> None:
        self.dir = lab_dir or lab_dir_default()
        saved = self._load_settings()
        self.settings = settings or saved or LabSettings()

    # ------------------------------------------------------------------ paths and parts
    def _load_settings(self) -> LabSettings | None:
        try:
            data = json.loads((self.dir / "lab.json").read_text())
        except (OSError, ValueError):
            return None
        return LabSettings(**{k: data[k] for k in LabSettings.__dataclass_fields__ if k in data})

    @property
    def run_dir(self) -> Path:
        return self.dir / "run"

    @property
    def cache(self) -> Path:
        return self.dir / "cache"

    @property
    def net(self) -> network.LabNetwork:
        return network.LabNetwork(self.settings.bridge, self.settings.subnet, self.run_dir)

    @property
    def sshd(self) -> LabSshd:
        return LabSshd(self.dir, self.settings.ssh_port)

    @property
    def api_pidfile(self) -> Path:
        return self.run_dir / "api.pid"

    @property
    def http_pidfile(self) -> Path:
        return self.run_dir / "template-http.pid"

    @property
    def secrets_file(self) -> Path:
        return self.dir / "secrets" / "token.json"

    def runtime(self) -> LxcRuntime:
        return LxcRuntime(self.dir, bridge_subnet=self.settings.subnet, nameserver=self.net.gateway)

    # ------------------------------------------------------------------ up
    def check_packages(self, install: bool = True) -> list[str]:
        """Missing Debian packages (installed with apt-get when ``install``)."""
        path = os.environ.get("PATH", "") + ":" + ":".join(_SBIN)
        missing = sorted(
            {pkg for tool, pkg in REQUIRED.items() if not shutil.which(tool, path=path)}
        )
        if missing and install:
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
            subprocess.run(
                ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
                check=True,
                env=env,
            )
            missing = sorted(
                {pkg for tool, pkg in REQUIRED.items() if not shutil.which(tool, path=path)}
            )
        return missing

    def up(self, *, install: bool = True, log: Any = None) -> dict[str, str]:
        def say(msg: str) -> None:
            if log is not None:
                log(msg)

        if os.geteuid() != 0:
            raise LabError("pvestack lab up needs root (real LXC, a bridge, iptables)")
        missing = self.check_packages(install)
        if missing:
            raise LabError("missing Debian packages: " + " ".join(missing))
        for d in (self.dir, self.run_dir, self.cache, self.dir / "bin", self.dir / "secrets"):
            d.mkdir(parents=True, exist_ok=True)
        (self.dir / "secrets").chmod(0o700)
        _check_traversable(self.dir)
        (self.dir / "lab.json").write_text(json.dumps(asdict(self.settings), indent=1) + "\n")
        say("templates: building (once) ...")
        for tpl in build_templates(self.cache):
            say(f"template: {tpl.path.name} sha512 {tpl.sha512[:16]}...")
        network.up(self.net)
        self._tell_network()
        say(f"network: {self.settings.bridge} {self.settings.subnet} (dnsmasq, NAT)")
        if procs.running(self.http_pidfile, "http.server") is None:
            _need_free_port(self.settings.http_port)
            procs.spawn(
                template.serve_argv(self.cache, self.settings.http_port),
                self.http_pidfile,
                self.run_dir / "template-http.log",
            )
            if not procs.wait_port("127.0.0.1", self.settings.http_port, 10):
                raise LabError("the template HTTP server did not start")
        say(f"template server: http://127.0.0.1:{self.settings.http_port}/")
        self._install_pct()
        if self.sshd.running() is None:
            _need_free_port(self.settings.ssh_port)
        self.sshd.up()
        say(f"sshd: 127.0.0.1:{self.settings.ssh_port}")
        self._start_api()
        say(f"API: https://127.0.0.1:{self.settings.api_port}")
        self._ensure_token()
        self._load_aplinfo()
        for vmid, problem in self._start_onboot():
            say(f"onboot: CT {vmid}: {problem}")
        return self.env()

    def _start_onboot(self) -> list[tuple[int, str]]:
        """As a PVE node at boot: start the containers with ``onboot: 1`` that are stopped
        (after the machine rebooted, ``up`` brings them back)."""
        from pvelab.backend.node import Node  # noqa: PLC0415

        node = Node(self.dir, self.runtime(), self.settings.node)
        out: list[tuple[int, str]] = []
        for vmid in node.vmids():
            opts = node.load(vmid).main.options
            if opts.get("onboot") != "1" or opts.get("template") == "1":
                continue
            if node.runtime.state(vmid) == "running":
                continue
            try:
                node.wait(node.start(vmid), 120)
                out.append((vmid, "started"))
            except Exception as e:  # report and go on, as PVE's startall does
                out.append((vmid, f"start failed: {e}"))
        return out

    def _install_pct(self) -> None:
        from pvelab.pct import wrapper_script  # noqa: PLC0415  (pct imports the backend)

        pct = self.dir / "bin" / "pct"
        pct.write_text(wrapper_script(sys.executable, self.dir))
        pct.chmod(0o755)

    def _start_api(self) -> None:
        if procs.running(self.api_pidfile, "pvelab.api.server") is not None:
            return
        _need_free_port(self.settings.api_port)
        env = {**os.environ, "PVESTACK_LAB_DIR": str(self.dir)}
        argv = [
            sys.executable, "-m", "pvelab.api.server", "--lab-dir", str(self.dir),
            "--host", "127.0.0.1", "--port", str(self.settings.api_port),
            "--node", self.settings.node, "--runtime", "pvelab.runtime.lxc:LxcRuntime",
        ]  # fmt: skip
        procs.spawn(argv, self.api_pidfile, self.run_dir / "api.log", env=env)
        if not procs.wait_port("127.0.0.1", self.settings.api_port, 30):
            procs.stop(self.api_pidfile, "pvelab.api.server")
            raise LabError(f"the API server did not start; see {self.run_dir / 'api.log'}")

    def _auth(self) -> Any:
        from pvelab.backend.auth import AuthStore  # noqa: PLC0415

        return AuthStore(self.dir / "etc" / "pve" / "lab-auth.json")

    def _ensure_token(self) -> None:
        """The deploy token (role, ACLs re-granted on every ``up``) and root's token."""
        from pvelab.backend.privileges import grant_deploy_token  # noqa: PLC0415

        auth = self._auth()
        saved: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            saved = json.loads(self.secrets_file.read_text())

        def valid(tokenid: str, secret: Any) -> bool:
            if saved.get("tokenid" if tokenid == TOKEN_ID else "root_tokenid") != tokenid:
                return False
            try:
                auth.check_token(f"PVEAPIToken={tokenid}={secret}")
            except Exception:
                return False
            return True

        s = self.settings
        secret = saved.get("secret") if valid(TOKEN_ID, saved.get("secret")) else None
        secret = grant_deploy_token(auth, s.node, s.bridge, secret)
        root_secret = saved.get("root_secret")
        if not valid(ROOT_TOKEN_ID, root_secret):
            root_secret = str(auth.add_token(ROOT_TOKEN_ID, privsep=False))
        fd = os.open(self.secrets_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"tokenid": TOKEN_ID, "secret": secret,
                       "root_tokenid": ROOT_TOKEN_ID, "root_secret": root_secret}, f)  # fmt: skip
        self.secrets_file.chmod(0o600)

    def _tell_network(self) -> None:
        from pvelab.backend.netinfo import NetInfo  # noqa: PLC0415

        net = self.net
        NetInfo(self.dir / "etc" / "pve").tell(
            {net.bridge: f"{net.gateway}/{net.network.prefixlen}"}
        )

    def root_token(self) -> tuple[str, str]:
        """``(tokenid, secret)`` of the lab's root@pam token, for root-only lab work."""
        try:
            saved = json.loads(self.secrets_file.read_text())
            return str(saved["root_tokenid"]), str(saved["root_secret"])
        except (OSError, ValueError, KeyError) as e:
            raise LabError("the lab is not up (no token yet): run `pvestack lab up`") from e

    @property
    def aplinfo_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.http_port}/{APLINFO_FILE}"

    def _load_aplinfo(self) -> None:
        """``pveam update`` against the lab's own template server."""
        from pvelab.backend.aplinfo import AplInfo  # noqa: PLC0415

        AplInfo(self.dir).update(self.aplinfo_url)

    # ------------------------------------------------------------------ env / status
    def env(self) -> dict[str, str]:
        try:
            secret = json.loads(self.secrets_file.read_text())["secret"]
        except (OSError, ValueError, KeyError) as e:
            raise LabError("the lab is not up (no token yet): run `pvestack lab up`") from e
        from pvelab.api.server import fingerprint  # noqa: PLC0415

        tpl = template.cached(self.cache)
        s = self.settings
        env = {
            "PVESTACK_API_URL": f"https://127.0.0.1:{s.api_port}",
            "PVESTACK_TOKEN_ID": TOKEN_ID,
            "PVESTACK_TOKEN_SECRET": secret,
            "PVESTACK_FINGERPRINT": fingerprint(self.dir / "etc/pve/local/pve-ssl.pem"),
            "PVESTACK_NODE": s.node,
            "PVESTACK_SSH_HOST": "127.0.0.1",
            "PVESTACK_SSH_PORT": str(s.ssh_port),
            "PVESTACK_SSH_USER": "root",
            "PVESTACK_SSH_KEY": str(self.sshd.client_key),
            "PVESTACK_SSH_KNOWN_HOSTS": str(self.sshd.known_hosts),
            "PVESTACK_LAB_DIR": str(self.dir),
            "PVESTACK_LAB_BRIDGE": s.bridge,
            "PVESTACK_LAB_ROOTDIR_STORAGE": ROOTDIR_STORAGE,
            "PVESTACK_LAB_TEMPLATE_URL": f"http://127.0.0.1:{s.http_port}/{template.TEMPLATE_NAME}",
            "PVESTACK_LAB_APLINFO_URL": self.aplinfo_url,
        }
        if tpl is not None:
            env["PVESTACK_LAB_TEMPLATE_SHA512"] = tpl.sha512
        return env

    def status(self) -> dict[str, Any]:
        rt = self.runtime()
        return {
            "lab_dir": str(self.dir),
            "network": network.status(self.net),
            "template_http_pid": procs.running(self.http_pidfile, "http.server"),
            "sshd_pid": self.sshd.running(),
            "api_pid": procs.running(self.api_pidfile, "pvelab.api.server"),
            "template": str(t.path) if (t := template.cached(self.cache)) else None,
            "containers": {
                str(v): " ".join(x for x in (rt.state(v), rt.ip_address(v)) if x)
                for v in rt.containers()
            },
        }

    # ------------------------------------------------------------------ down
    def down(self, *, purge: bool = False) -> None:
        procs.stop(self.api_pidfile, "pvelab.api.server")
        self._remove_containers()
        self.sshd.down()
        procs.stop(self.http_pidfile, "http.server")
        network.down(self.net)
        remove_recorded_subids(self.dir / "state" / "subids-added")
        names = [*LAB_PARTS, "cache"] if purge else LAB_PARTS
        for name in names:
            shutil.rmtree(self.dir / name, ignore_errors=True)
        (self.dir / "lab.json").unlink(missing_ok=True)
        if purge:
            with contextlib.suppress(OSError):
                self.dir.rmdir()  # only when nothing else (someone's files) is left in it

    def _remove_containers(self) -> None:
        rt = self.runtime()
        if (self.dir / "etc" / "pve").is_dir():
            from pvelab.backend.node import Node  # noqa: PLC0415

            with contextlib.suppress(Exception):
                Node(self.dir, rt, self.settings.node).reset()
        for vmid in rt.containers():
            rt.destroy(vmid)


APLINFO_FILE = "aplinfo.dat"


def build_templates(cache: Path) -> list[template.Template]:
    """Every flavor (debian-12, debian-13), built once, and the appliance index beside
    them (served by the template server; the node reads it as ``pveam update`` would)."""
    from pvelab.backend.aplinfo import Appliance, render_index  # noqa: PLC0415

    built = [template.build(cache, flavor=f) for f in template.FLAVORS]
    write_aplinfo(cache, render_index(
        Appliance(package=f.appliance, version=f.version, os=f.appliance.rsplit("-", 1)[0],
                  location=t.path.name, sha512sum=t.sha512,
                  headline=f"Debian {f.appliance.split('-')[1]} {f.suite.title()} (standard)",
                  description=f"A small Debian {f.suite.title()} system (pvestack lab).")
        for f, t in zip(template.FLAVORS, built, strict=True)
    ))  # fmt: skip
    return built


def write_aplinfo(cache: Path, text: str) -> None:
    tmp = cache / (APLINFO_FILE + ".tmp")
    tmp.write_text(text)
    tmp.replace(cache / APLINFO_FILE)


def _check_traversable(lab_dir: Path) -> None:
    """Container roots (uid 100000...) must reach their rootfs under the lab dir, as on PVE
    (/var/lib/vz is 0755): the lab dir and its parents must be searchable by others."""
    lab_dir.chmod(0o755)
    for d in [lab_dir.resolve(), *lab_dir.resolve().parents]:
        if not d.stat().st_mode & 0o001:
            raise LabError(
                f"{d} is not searchable by others (mode {d.stat().st_mode & 0o777:o}): "
                "container roots could not reach their rootfs; choose another lab dir"
            )


def _need_free_port(port: int) -> None:
    with socket.socket() as s:
        s.settimeout(0.5)
        if s.connect_ex(("127.0.0.1", port)) == 0:
            raise LabError(f"port 127.0.0.1:{port} is taken by another program")


def export_lines(env: Mapping[str, str], bin_dir: Path | None = None) -> str:
    """``export K=V`` lines; with ``bin_dir``, a line that puts the lab's ``pct`` on PATH
    (once, however often it is eval'd), for the console path run in this shell."""
    import shlex  # noqa: PLC0415

    out = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
    if bin_dir is not None:
        b = shlex.quote(str(bin_dir))
        out += f'case ":$PATH:" in *:{b}:*) ;; *) export PATH={b}:"$PATH" ;; esac\n'
    return out
