"""The SSH root executor against a real OpenSSH sshd on a loopback port (own keys, own
config in a temp dir, started and stopped by pid)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from pvestack._commands import Payload, Secret, Step, cmd
from pvestack._config import parse_config
from pvestack._errors import HostKeyError, RootStepError, TransportError
from pvestack._model import BindMount, IdMap
from pvestack._steps import root as root_steps
from pvestack.executors._base import RootTransport
from pvestack.executors._ssh import SshSettings, SshTransport, settings_from_config

SSHD = "/usr/sbin/sshd"
pytestmark = [
    pytest.mark.contract,
    pytest.mark.skipif(
        not (os.path.exists(SSHD) and shutil.which("ssh-keygen")), reason="OpenSSH not installed"
    ),
]


@dataclass(frozen=True)
class Server:
    dir: Path
    port: int
    user: str
    client_key: Path
    known_hosts: Path
    host_pub: str

    def settings(self, **kw: object) -> SshSettings:
        base = SshSettings(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            key_file=str(self.client_key),
            known_hosts=str(self.known_hosts),
            use_agent=False,
            connect_timeout=10,
        )
        return replace(base, **kw)  # type: ignore[arg-type]


def keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    d = tmp_path_factory.mktemp("sshd")
    d.chmod(0o700)
    user = pwd.getpwuid(os.getuid()).pw_name
    host_key, client_key = d / "host_ed25519", d / "id_ed25519"
    keygen(host_key)
    keygen(client_key)
    (d / "authorized_keys").write_text((d / "id_ed25519.pub").read_text())
    (d / "authorized_keys").chmod(0o600)
    port = free_port()
    (d / "sshd_config").write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"PidFile {d / 'sshd.pid'}",
                f"AuthorizedKeysFile {d / 'authorized_keys'}",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "StrictModes no",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                f"AllowUsers {user}",
                "PrintMotd no",
                "AcceptEnv PVESTACK_*",
                "",
            ]
        )
    )
    host_pub = (d / "host_ed25519.pub").read_text().split()
    known = d / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log = open(d / "sshd.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        if not wait_port(port, 10):
            pytest.skip(f"sshd did not start: {(d / 'sshd.log').read_text()[-500:]}")
        yield Server(d, port, user, client_key, known, f"{host_pub[0]} {host_pub[1]}")
    finally:
        proc.terminate()  # by our own pid
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def ssh(sshd: Server) -> Iterator[SshTransport]:
    t = SshTransport(sshd.settings())
    try:
        yield t
    finally:
        t.close()


def test_is_a_root_transport(ssh: SshTransport) -> None:
    t: RootTransport = ssh
    out = t.capture(cmd("sh", "-c", "echo hi; echo there >&2; exit 4"))
    assert (out.returncode, out.stdout, out.stderr) == (4, "hi\n", "there\n")


def test_step_guard_stdin_secret_and_rerun(ssh: SshTransport, tmp_path: Path) -> None:
    target = tmp_path / "it's a file"
    secret = Secret("api_key", "s3cr3t-Value")
    step = Step(
        id="write",
        description="write a file",
        guard=cmd("test", "-e", str(target)),
        commands=(
            cmd("sh", "-c", 'cat > "$1"; cat "$1"', "sh", str(target),
                stdin=Payload(("KEY=", secret, "\n"))),
        ),
    )  # fmt: skip
    lines: list[str] = []
    assert ssh.run_step(step, on_output=lines.append) is True
    assert target.read_text() == "KEY=s3cr3t-Value\n"  # revealed on the channel only
    assert "KEY=***" in lines
    assert not any("s3cr3t" in ln for ln in lines)
    assert lines[0].startswith("$ sh -c ")
    assert ssh.run_step(step, on_output=lines.append) is False


def test_failure_reports_command_code_and_masked_stderr(ssh: SshTransport) -> None:
    secret = Secret("tok", "hunter2-abc")
    step = Step(
        id="bad",
        description="fails",
        commands=(
            cmd("sh", "-c", 'read -r v; echo "bad value $v" >&2; exit 3', "sh",
                stdin=Payload((secret, "\n"))),
        ),
    )  # fmt: skip
    with pytest.raises(RootStepError) as ei:
        ssh.run_step(step)
    e = ei.value
    assert e.exit_code == 3
    assert e.command.startswith("sh -c ")
    assert "bad value ***" in e.stderr
    assert "hunter2" not in str(e) + e.stderr + e.command
    assert "step bad" in (e.hint or "")


def test_output_streams_line_by_line(ssh: SshTransport) -> None:
    seen: list[tuple[float, str]] = []
    t0 = time.monotonic()
    step = Step("s", "slow", (cmd("sh", "-c", "echo one; sleep 1; echo two; printf tail"),))
    ssh.run_step(step, on_output=lambda ln: seen.append((time.monotonic() - t0, ln)))
    texts = [t for _, t in seen]
    assert texts[1:] == ["one", "two", "tail"]
    assert seen[1][0] < seen[2][0] - 0.5  # "one" arrived before the sleep ended


def test_commands_have_time_limits_with_progress(sshd: Server) -> None:
    t = SshTransport(sshd.settings(command_timeout=1.5, idle_timeout=None, progress_every=0.5))
    try:
        lines: list[str] = []
        step = Step("slow", "a silent command", (cmd("sleep", "30"),))
        t0 = time.monotonic()
        with pytest.raises(TransportError) as ei:
            t.run_step(step, on_output=lines.append)
        assert time.monotonic() - t0 < 10
        assert "still running after 1.5s (its time limit): sleep 30" in str(ei.value)
        assert any(ln.startswith("… still running (") for ln in lines)
        # a long step carries its own, longer limit
        long = Step("long", "apt", (cmd("sh", "-c", "sleep 2; echo done"),), timeout=10)
        assert t.run_step(long) is True
    finally:
        t.close()
    t = SshTransport(sshd.settings(command_timeout=None, idle_timeout=1.0))
    try:
        with pytest.raises(TransportError) as ei:
            t.capture(cmd("sh", "-c", "echo start; sleep 30"))
        assert "no output and no exit for 1s" in str(ei.value)
    finally:
        t.close()


def test_concurrent_captures_one_channel_each(ssh: SshTransport, tmp_path: Path) -> None:
    """Six captures at once, each on its own channel: every command waits (up to 60 s)
    until all six have started, so captures run one after another would time out. A
    rendezvous, not a wall-clock bound: it holds on a busy machine too."""
    meet = tmp_path / "meet"
    meet.mkdir()
    wait = (
        'touch "$1/$2"; n=0; while [ "$(ls "$1" | wc -l)" -lt 6 ]; do'
        ' n=$((n+1)); [ "$n" -gt 600 ] && { echo alone; exit 1; }; sleep 0.1; done; echo "$2"'
    )

    def one(i: int) -> str:
        return ssh.capture(cmd("sh", "-c", wait, "sh", str(meet), str(i))).stdout

    with ThreadPoolExecutor(max_workers=6) as pool:
        outs = list(pool.map(one, range(6)))
    assert outs == [f"{i}\n" for i in range(6)]


def test_unknown_host_refused_then_accept_new(sshd: Server, tmp_path: Path) -> None:
    kh = tmp_path / "kh"
    with pytest.raises(HostKeyError, match="unknown") as ei:
        SshTransport(sshd.settings(known_hosts=str(kh)))
    assert "ssh-keyscan -p" in (ei.value.hint or "")
    assert not kh.exists()
    SshTransport(sshd.settings(known_hosts=str(kh), accept_new=True)).close()
    assert kh.read_text().split() == [f"[127.0.0.1]:{sshd.port}", *sshd.host_pub.split()]
    SshTransport(sshd.settings(known_hosts=str(kh))).close()  # now known


def test_changed_host_key_refused_with_fix(sshd: Server, tmp_path: Path) -> None:
    other = tmp_path / "other"
    keygen(other)
    pub = (tmp_path / "other.pub").read_text().split()
    kh = tmp_path / "kh"
    kh.write_text(f"[127.0.0.1]:{sshd.port} {pub[0]} {pub[1]}\n")
    for accept_new in (False, True):  # accept-new never accepts a changed key
        with pytest.raises(HostKeyError, match="CHANGED") as ei:
            SshTransport(sshd.settings(known_hosts=str(kh), accept_new=accept_new))
        assert f"ssh-keygen -R '[127.0.0.1]:{sshd.port}'" in (ei.value.hint or "")
    assert len(kh.read_text().splitlines()) == 1


def test_pinned_key(sshd: Server, tmp_path: Path) -> None:
    fp = subprocess.run(
        ["ssh-keygen", "-lf", str(sshd.dir / "host_ed25519.pub")],
        capture_output=True, text=True, check=True,
    ).stdout.split()[1]  # fmt: skip
    assert fp.startswith("SHA256:")
    none = str(tmp_path / "absent")
    SshTransport(sshd.settings(known_hosts=none, pinned_key=fp)).close()
    SshTransport(sshd.settings(known_hosts=none, pinned_key=sshd.host_pub)).close()
    with pytest.raises(HostKeyError, match="pinned"):
        SshTransport(sshd.settings(known_hosts=none, pinned_key="SHA256:" + "A" * 43))
    keygen(tmp_path / "k2")
    with pytest.raises(HostKeyError, match="CHANGED"):
        wrong = " ".join((tmp_path / "k2.pub").read_text().split()[:2])
        SshTransport(sshd.settings(known_hosts=none, pinned_key=wrong))


def test_wrong_client_key_is_a_transport_error(sshd: Server, tmp_path: Path) -> None:
    keygen(tmp_path / "stranger")
    with pytest.raises(TransportError, match="authentication") as ei:
        SshTransport(sshd.settings(key_file=str(tmp_path / "stranger")))
    assert not isinstance(ei.value, HostKeyError)
    with pytest.raises(TransportError, match="does not exist"):
        SshTransport(sshd.settings(key_file=str(tmp_path / "nope")))


def test_nothing_listening(sshd: Server) -> None:
    with pytest.raises(TransportError, match="failed"):
        SshTransport(sshd.settings(port=free_port(), connect_timeout=2))


def test_env_overrides(sshd: Server) -> None:
    base = SshSettings(host="10.9.9.9", port=22, user="admin", key_file=None, use_agent=False)
    s = base.with_env({
        "PVESTACK_SSH_HOST": "127.0.0.1", "PVESTACK_SSH_PORT": str(sshd.port),
        "PVESTACK_SSH_USER": sshd.user, "PVESTACK_SSH_KEY": str(sshd.client_key),
        "PVESTACK_SSH_KNOWN_HOSTS": str(sshd.known_hosts),
    })  # fmt: skip
    assert (s.host, s.port, s.host_key_name) == ("127.0.0.1", sshd.port, f"[127.0.0.1]:{sshd.port}")
    with SshTransport(s) as t:
        assert t.capture(cmd("id", "-un")).stdout.strip() == sshd.user
    assert base.with_env({}).host == "10.9.9.9"
    with pytest.raises(TransportError, match="not a port"):
        base.with_env({"PVESTACK_SSH_PORT": "ssh"})


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to mapped ids needs root")
def test_root_host_dir_step_over_ssh(ssh: SshTransport, tmp_path: Path) -> None:
    target = tmp_path / "data dir"
    m = BindMount("mp0", str(target), "/opt/data", owner_uid=10000, owner_gid=10000)
    step = root_steps.host_dir_step(m, IdMap())
    assert ssh.run_step(step) is True
    st = target.stat()
    assert (st.st_uid, st.st_gid, oct(st.st_mode & 0o777)) == (110000, 110000, "0o755")
    assert ssh.run_step(step) is False


@pytest.mark.skipif(not shutil.which("ssh-agent"), reason="ssh-agent not installed")
def test_key_from_the_agent(sshd: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert time.monotonic() < deadline, "ssh-agent did not start"
            time.sleep(0.05)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh keys to fall back on
        with pytest.raises(TransportError, match="authentication"):
            SshTransport(sshd.settings(key_file=None, use_agent=True))  # agent still empty
        subprocess.run(
            ["ssh-add", "-q", str(sshd.client_key)],
            env={**os.environ, "SSH_AUTH_SOCK": str(sock)}, check=True, capture_output=True,
        )  # fmt: skip
        with SshTransport(sshd.settings(key_file=None, use_agent=True)) as t:
            assert t.capture(cmd("echo", "via agent")).stdout == "via agent\n"
    finally:
        agent.terminate()  # our own pid
        agent.wait(10)


def test_large_stdin_while_the_command_writes_a_lot(ssh: SshTransport) -> None:
    body = "x" * 8_000_000 + "\n"
    # the command writes 8 MB before it reads anything: stdin must be fed concurrently
    c = cmd(
        "sh", "-c", "head -c 8000000 /dev/zero | tr '\\0' y; echo; wc -c", stdin=Payload.text(body)
    )
    out = ssh.capture(c)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1].strip() == str(len(body))


STACK_TOML = """
[pve]
api_url = "https://127.0.0.1:8006"
token_id = "root@pam!pvestack"
token_secret = { env = "PVESTACK_TOKEN_SECRET" }
fingerprint = "%s"

[root]
via = "ssh"

[root.ssh]
host = "10.9.9.9"
port = 2200
user = "admin"
key_file = "/nonexistent/key"

[[stack]]
name = "t"
node = "pve"

[stack.template]
storage = "local"
url = "http://127.0.0.1:1/debian-12-standard_12.12-1_amd64.tar.zst"
"""


def test_settings_from_the_stack_file_and_env(sshd: Server) -> None:
    fp = ":".join(["AB"] * 32)
    env = {"PVESTACK_TOKEN_SECRET": "x"}
    cfg = parse_config(STACK_TOML % fp, env=env)
    s = settings_from_config(cfg, env={})
    assert (s.host, s.port, s.user, s.key_file) == ("10.9.9.9", 2200, "admin", "/nonexistent/key")
    over = {
        "PVESTACK_SSH_HOST": "127.0.0.1", "PVESTACK_SSH_PORT": str(sshd.port),
        "PVESTACK_SSH_USER": sshd.user, "PVESTACK_SSH_KEY": str(sshd.client_key),
        "PVESTACK_SSH_KNOWN_HOSTS": str(sshd.known_hosts),
    }  # fmt: skip
    s = replace(settings_from_config(cfg, env=over), use_agent=False)
    with SshTransport(s) as t:
        assert t.capture(cmd("true")).returncode == 0
