"""The host-key record (exact parsing, the description kept byte for byte), the create
parameter, the key pair (permissions refused with the fix), the guest settings, and the
two routes of a guest command (pct and straight SSH run the same in-container argv)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from test_guest import VMID, hermes_spec

from labstub import pct_node
from pvelab.pct import make_node
from pvestack import _guest_settings as gs
from pvestack._commands import Command, cmd
from pvestack._config import parse_config
from pvestack._engine._facts import guest_fact_commands
from pvestack._errors import ConfigError, HostKeyError, SecretError
from pvestack._steps import guest
from pvestack._steps import guest_access as ga
from pvestack._steps.guest_route import GuestPush, GuestRun, guest_step, in_container, via_pct

FP = "SHA256:" + "Ab3+/" * 8 + "xyz"  # 43 characters after the prefix
FP2 = "SHA256:" + "Zz9" * 14 + "q"
SHELLCHECK = shutil.which("shellcheck")


# ---------------------------------------------------------------- the record (pure)


def test_fingerprint_constants_are_well_formed() -> None:
    assert ga.FINGERPRINT_RE.match(FP) and ga.FINGERPRINT_RE.match(FP2)


def test_parse_record_exact() -> None:
    d = f"Hermes agent\npvestack-stack: hermes\npvestack-hostkey: {FP}\n"
    assert ga.parse_hostkey_record(d) == FP
    assert ga.parse_hostkey_record("Hermes\npvestack-stack: hermes") is None
    assert ga.parse_hostkey_record("") is None
    # the same record twice is one record
    assert ga.parse_hostkey_record(f"pvestack-hostkey: {FP}\npvestack-hostkey: {FP}") == FP


@pytest.mark.parametrize(
    "line",
    [
        f"pvestack-hostkey: {FP[:-1]}",  # one character short
        f"pvestack-hostkey: {FP}x",  # one too many
        f"pvestack-hostkey:{FP}",  # no space
        f"pvestack-hostkey:  {FP}",  # two spaces
        f"pvestack-hostkey: {FP} ",  # trailing space
        f"pvestack-hostkey: MD5:{FP[7:]}",
        "pvestack-hostkey: ",
    ],
)
def test_malformed_record_is_refused(line: str) -> None:
    with pytest.raises(HostKeyError, match="malformed"):
        ga.parse_hostkey_record(f"x\npvestack-stack: s\n{line}")


def test_two_different_records_are_refused() -> None:
    with pytest.raises(HostKeyError, match="two different") as e:
        ga.parse_hostkey_record(f"pvestack-hostkey: {FP}\npvestack-hostkey: {FP2}")
    assert FP in str(e.value) and FP2 in str(e.value)


def test_record_goes_after_the_mark_and_the_rest_is_kept() -> None:
    d = "  Notes: a:b  %41 ü\n\n#not a comment\npvestack-stack: hermes\nafter the mark\n"
    out = ga.description_with_record(d, FP)
    assert out == (
        "  Notes: a:b  %41 ü\n\n#not a comment\npvestack-stack: hermes\n"
        f"pvestack-hostkey: {FP}\nafter the mark"
    )
    # a new key replaces the old record, nothing else moves
    assert ga.description_with_record(out, FP2) == out.replace(FP, FP2)
    assert ga.strip_hostkey_record(out) == d.rstrip("\n")
    assert ga.description_with_record("", FP) == f"pvestack-hostkey: {FP}"
    assert ga.description_with_record("no mark", FP) == f"no mark\npvestack-hostkey: {FP}"
    with pytest.raises(ValueError, match="fingerprint"):
        ga.description_with_record(d, "SHA256:short")


def test_keep_record_when_the_planner_rewrites_the_description() -> None:
    observed = f"old text\npvestack-stack: hermes\npvestack-hostkey: {FP}\n"
    desired = "new text\npvestack-stack: hermes"
    assert ga.keep_hostkey_record(desired, observed) == f"{desired}\npvestack-hostkey: {FP}"
    assert ga.keep_hostkey_record(desired, "old text\npvestack-stack: hermes") == desired
    # a malformed record is not carried over (the root step writes a good one)
    assert ga.keep_hostkey_record(desired, "x\npvestack-hostkey: SHA256:bad") == desired


def test_require_record_says_what_to_run() -> None:
    with pytest.raises(HostKeyError) as e:
        ga.require_hostkey_record("pvestack-stack: hermes", 218)
    assert "no host-key record" in str(e.value)
    assert e.value.hint is not None and "console-script" in e.value.hint
    assert ga.require_hostkey_record(f"pvestack-hostkey: {FP}", 218) == FP


def test_ssh_public_keys_param() -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake pvestack-hermes"
    assert ga.ssh_public_keys_param(key + "\n") == {"ssh-public-keys": key}
    assert ga.ssh_public_keys_param(None) == {}
    for bad in ("", "not a key", key + "\n" + key, "-----BEGIN OPENSSH PRIVATE KEY-----"):
        with pytest.raises(ValueError):
            ga.ssh_public_keys_param(bad)


# ---------------------------------------------------------------- the record step, run


CONF = (
    "#Hermes%3A agent 100%25 ours\n#\n#--\n#  second: para 'q' $x `y`\n"
    "#pvestack-stack: hermes\n#tail line\n#--\n"
    "arch: amd64\nhostname: hermes\nmemory: 512\nostype: debian\n"
    "rootfs: local:118/vm-118-disk-0.raw,size=2G\nunprivileged: 1\n"
)


@pytest.fixture
def node(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """The lab's real ``pct`` on a node dir with CT 118 (not started); ``pct exec`` answers
    ssh-keygen's line with a fixed fingerprint (no container runs here)."""
    fp_file = tmp_path / "fp"
    fp_file.write_text(FP)
    lab, bin_dir = pct_node(tmp_path, CONF, f"256 $(cat {fp_file}) root@hermes (ED25519)")
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
        "PVESTACK_LAB_DIR": str(lab),
    }
    return env, lab


def _run(c: Command, env: dict[str, str]) -> int:
    return subprocess.run(c.line, shell=True, env=env, capture_output=True, check=False).returncode


def test_record_step_keeps_the_description_exactly(node: tuple[dict[str, str], Path]) -> None:
    env, lab = node
    before = make_node(lab).get_config(118)["description"]
    step = ga.hostkey_record_step(118, before)
    assert step.guard is not None and _run(step.guard, env) == 1
    for c in step.commands:
        assert _run(c, env) == 0
    after = make_node(lab).get_config(118)["description"]
    assert after.rstrip("\n") == ga.description_with_record(before, FP)
    assert ga.parse_hostkey_record(after) == FP
    assert ga.strip_hostkey_record(after) == before.rstrip("\n")
    assert _run(step.guard, env) == 0  # done: the guard sees the record
    # the container's key changes: the guard no longer holds, a re-run records the new key
    (lab.parent / "fp").write_text(FP2)
    assert _run(step.guard, env) == 1
    step2 = ga.hostkey_record_step(118, after)
    assert all(_run(c, env) == 0 for c in step2.commands)
    again = make_node(lab).get_config(118)["description"]
    assert ga.parse_hostkey_record(again) == FP2
    assert ga.strip_hostkey_record(again) == before.rstrip("\n")


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck not installed")
@pytest.mark.parametrize(
    "program",
    ["INSTALL_SSHD", "ADD_AUTHORIZED_KEY", "RECORD_HOSTKEY", "RECORD_GUARD", "_SSHD_GUARD"],
)
def test_programs_are_shellcheck_clean(program: str, tmp_path: Path) -> None:
    f = tmp_path / "p.sh"
    f.write_text("#!/bin/sh\n" + getattr(ga, program) + "\n")
    r = subprocess.run(
        [str(SHELLCHECK), "-s", "sh", str(f)], capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, r.stdout


def test_authorized_key_program_appends_once(tmp_path: Path) -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake pvestack-hermes"
    prog = ga.ADD_AUTHORIZED_KEY.replace("/root/.ssh", str(tmp_path / ".ssh"))
    for _ in range(2):
        subprocess.run(["sh", "-c", prog, "sh", key], check=True)
    f = tmp_path / ".ssh" / "authorized_keys"
    assert f.read_text() == key + "\n"
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    step = ga.authorized_key_step(218, key)
    assert step.commands[0].argv[:4] == ("pct", "exec", "218", "--")
    assert key in step.commands[0].argv  # public: no secret involved


def test_access_steps_in_order() -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake k"
    ids = [s.id for s in ga.guest_access_steps(218, "d", key, key_at_create=False)]
    assert ids == [
        "ct218:guest-access:sshd",
        "ct218:guest-access:authorized-key",
        "ct218:guest-access:hostkey-record",
    ]
    ids = [s.id for s in ga.guest_access_steps(218, "d", key, key_at_create=True)]
    assert "ct218:guest-access:authorized-key" not in ids


# ---------------------------------------------------------------- keys


def test_stack_key_generated_private(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    kp = gs.ensure_stack_key("hermes", env)
    assert kp.private_path == tmp_path / "cfg" / "pvestack" / "keys" / "hermes"
    assert stat.S_IMODE(kp.private_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(kp.private_path.parent.stat().st_mode) == 0o700
    assert kp.public_key.startswith("ssh-ed25519 ") and kp.public_key.endswith(" pvestack-hermes")
    assert (kp.private_path.parent / "hermes.pub").read_text().strip() == kp.public_key
    assert gs.ensure_stack_key("hermes", env) == kp  # the same key the next time
    # the public key derived from the private one is the same key
    (kp.private_path.parent / "hermes.pub").unlink()
    assert gs.load_key(kp.private_path).public_key.split()[:2] == kp.public_key.split()[:2]
    env2 = {"HOME": str(tmp_path / "home")}
    assert gs.key_dir(env2) == tmp_path / "home" / ".config" / "pvestack" / "keys"


def test_loose_key_file_refused_with_the_fix(tmp_path: Path) -> None:
    kp = gs.ensure_stack_key("hermes", {"XDG_CONFIG_HOME": str(tmp_path)})
    kp.private_path.chmod(0o644)
    with pytest.raises(SecretError, match="readable or writable by others") as e:
        gs.load_key(kp.private_path)
    assert e.value.hint == f"chmod 600 {kp.private_path}"
    kp.private_path.chmod(0o620)
    with pytest.raises(SecretError, match="mode 620"):
        gs.load_key(kp.private_path)


def test_loose_key_dir_refused_with_the_fix(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    kp = gs.ensure_stack_key("hermes", env)
    kp.private_path.parent.chmod(0o755)
    with pytest.raises(SecretError, match="open to others") as e:
        gs.ensure_stack_key("hermes", env)
    assert e.value.hint == f"chmod 700 {kp.private_path.parent}"


def test_missing_or_unreadable_key_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SecretError, match="does not exist"):
        gs.load_key(tmp_path / "nope")
    with pytest.raises(SecretError, match="not a regular file"):
        gs.load_key(tmp_path)
    key = gs.ensure_stack_key("s", {"XDG_CONFIG_HOME": str(tmp_path)}).private_path
    if os.geteuid() == 0:  # root reads every file: stand in for a key of another user
        monkeypatch.setattr(gs.os, "access", lambda p, m: False)
    else:
        key.chmod(0o000)
    with pytest.raises(SecretError, match="cannot read the SSH key file") as e:
        gs.load_key(key)
    assert e.value.hint is not None


def test_user_key_without_pub_and_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "id"
    bad.write_text("not a key\n")
    bad.chmod(0o600)
    with pytest.raises(SecretError, match="cannot read the SSH key"):
        gs.load_key(bad)


# ---------------------------------------------------------------- settings


BASE = """
[pve]
api_url = "https://127.0.0.1:8006"
token_id = "root@pam!t"
[root]
via = "{via}"
[root.ssh]
host = "n"
{guest}
[[stack]]
name = "s"
node = "n"
[stack.template]
url = "http://x/t.tar.zst"
"""


@pytest.mark.parametrize(("root_via", "guest_via", "want"), [
    ("console", None, "ssh"), ("ssh", None, "pct"), ("none", None, "pct"),
    ("ssh", "ssh", "ssh"), ("console", "pct", "pct"),
])  # fmt: skip
def test_guest_via_defaults(root_via: str, guest_via: str | None, want: str) -> None:
    g = f'[guest]\nvia = "{guest_via}"\nport = 2200\n' if guest_via else ""
    cfg = parse_config(BASE.format(via=root_via, guest=g), env={})
    s = gs.resolve_guest_settings(cfg)
    assert s.via == want
    assert s.port == (2200 if guest_via else 22)


def test_guest_section_rejects_unknown_route() -> None:
    with pytest.raises(ConfigError, match=r"guest\.via"):
        parse_config(BASE.format(via="console", guest='[guest]\nvia = "ftp"\n'), env={})


# ---------------------------------------------------------------- two routes, one command


def _guest_commands() -> list[Command]:
    spec = hermes_spec()
    app = spec.app
    assert app is not None
    steps = [
        *guest.docker_steps(app, VMID),
        *(guest.file_step(app, f, VMID) for f in app.files),
        *(guest.image_step(i.ref, i.tarball, VMID) for i in app.images),
        guest.image_step("x/y:1", None, VMID),
        guest.up_step(spec, app, VMID),
    ]
    out = [c for s in steps for c in (*s.commands, *((s.guard,) if s.guard else ()))]
    return out + list(guest_fact_commands(spec, VMID))


def test_both_routes_run_the_same_in_container_command() -> None:
    commands = _guest_commands()
    assert len(commands) > 8
    kinds = set()
    for c in commands:
        op = in_container(c, 218)
        kinds.add(type(op))
        assert via_pct(op, 218) == c  # the pct route is exactly today's command
        if isinstance(op, GuestRun):
            assert op.argv == c.argv[4:] and op.argv[0] != "pct"
            assert op.stdin == c.stdin  # secrets stay in stdin on both routes
        else:
            assert (op.source, op.dest) == c.argv[3:]
    assert kinds == {GuestRun, GuestPush}


def test_a_node_command_is_not_a_guest_command() -> None:
    for c in (
        cmd("pct", "exec", "219", "--", "true"),
        cmd("mkdir", "/x"),
        cmd("pct", "set", "218"),
    ):
        with pytest.raises(ValueError, match="not a guest command"):
            in_container(c, 218)
    step = guest.image_step("r:1", "/t.tar", 218)
    gstep = guest_step(step, 218)
    assert gstep.guard == GuestRun(("docker", "image", "inspect", "r:1"))
    assert isinstance(gstep.ops[0], GuestPush)
