"""Root SSH into the lab node: an OpenSSH sshd of its own on a loopback port.

Everything lives in ``<lab>/ssh/``: the sshd config, its host key, a generated client
key pair (``id_ed25519``, mode 600) whose public half is the only authorized key, a
``known_hosts`` with the host key for ``[127.0.0.1]:PORT``, the pid file and the log.
The session's PATH starts with ``<lab>/bin`` so that ``pct`` is found there.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pvelab.runtime import procs

SSHD = "/usr/sbin/sshd"
SESSION_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class LabSshd:
    lab_dir: Path
    port: int = 2222
    host: str = "127.0.0.1"
    user: str = "root"

    @property
    def dir(self) -> Path:
        return self.lab_dir / "ssh"

    @property
    def host_key(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"

    @property
    def client_key(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    @property
    def config(self) -> Path:
        return self.dir / "sshd_config"

    @property
    def pidfile(self) -> Path:
        return self.dir / "sshd.pid"

    def config_text(self) -> str:
        bin_dir = self.lab_dir / "bin"
        return "\n".join([
            f"Port {self.port}",
            f"ListenAddress {self.host}",
            f"HostKey {self.host_key}",
            f"PidFile {self.dir / 'sshd.ownpid'}",
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "StrictModes no",  # our own 0700 dir; the lab dir may sit under /tmp
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            f"AllowUsers {self.user}",
            "X11Forwarding no",
            "AllowTcpForwarding no",
            "PrintMotd no",
            "Subsystem sftp internal-sftp",
            f"SetEnv PATH={bin_dir}:{SESSION_PATH} PVESTACK_LAB_DIR={self.lab_dir}",
            "",
        ])  # fmt: skip

    def prepare(self) -> None:
        """Keys, authorized_keys, config and known_hosts (idempotent; keys made once)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        for key in (self.host_key, self.client_key):
            if not key.exists():
                subprocess.run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "",
                     "-C", f"pvestack-lab-{key.name}", "-f", str(key)],
                    check=True,
                )  # fmt: skip
            key.chmod(0o600)
        auth = self.dir / "authorized_keys"
        auth.write_text(Path(str(self.client_key) + ".pub").read_text())
        auth.chmod(0o600)
        self.config.write_text(self.config_text())
        host_pub = Path(str(self.host_key) + ".pub").read_text().split()
        self.known_hosts.write_text(f"[{self.host}]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        self.known_hosts.chmod(0o600)
        # sshd's privilege separation directory (normally made by the ssh service)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)

    def up(self) -> int:
        self.prepare()
        pid = procs.running(self.pidfile, "sshd")
        if pid is not None:
            return pid
        check = subprocess.run(
            [SSHD, "-t", "-f", str(self.config)], capture_output=True, text=True, check=False
        )
        if check.returncode != 0:
            raise RuntimeError(f"sshd config invalid: {check.stderr.strip()}")
        pid = procs.spawn(
            [SSHD, "-D", "-f", str(self.config), "-E", str(self.dir / "sshd.log")],
            self.pidfile,
            self.dir / "sshd.out",
            env={"PATH": os.environ.get("PATH", SESSION_PATH)},
        )
        if not procs.wait_port(self.host, self.port, 10):
            procs.stop(self.pidfile, "sshd")
            raise RuntimeError(f"sshd did not listen on {self.host}:{self.port}; see {self.dir}")
        return pid

    def down(self) -> None:
        procs.stop(self.pidfile, "sshd")
        (self.dir / "sshd.ownpid").unlink(missing_ok=True)

    def running(self) -> int | None:
        return procs.running(self.pidfile, "sshd")
