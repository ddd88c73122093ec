"""The console script survives a paste: fed to ``bash -s`` and typed into an interactive
shell in a tmux pane, it runs to its success marker, no command in it reads the
terminal, and the text after it runs as the next command (the old rendering fails the
same test: a command in it eats the rest of the input)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from labstub import pct_node
from pvestack._commands import Step, cmd, render_script
from pvestack._steps import guest_access as ga
from pvestack._steps import root
from pvestack._steps.paste_script import render_paste_script
from pvestack.executors._console import SUCCESS_MARKER

FP = "SHA256:" + "Ab3+/" * 8 + "xyz"
CONF = (
    "#Hermes: the agent\n#pvestack-stack: hermes\n"
    "arch: amd64\nhostname: hermes\nmemory: 512\nostype: debian\n"
    "rootfs: local:118/vm-118-disk-0.raw,size=2G\nunprivileged: 1\n"
)
AFTER = "echo AFTER-THE-SCRIPT-$((6 * 7))"  # its output (…-42) differs from its text
TMUX = shutil.which("tmux")

# reads one line of stdin and shows it: on a terminal it would eat the pasted text
EATER = Step(
    "eater",
    "a command that reads stdin",
    (cmd("sh", "-c", 'if IFS= read -r l; then echo "ATE: $l"; fi'),),
)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    lab, bin_dir = pct_node(tmp_path, CONF, f"256 {FP} root@hermes (ED25519)")
    return {
        "PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(tmp_path),
        "PVESTACK_LAB_DIR": str(lab),
        "TERM": "xterm",
    }


# a ``!`` inside a multi-line program: an interactive shell would history-expand it
BANG = Step("bang", "a ! in a program", (cmd("sh", "-c", 'x=1\necho "bang!x$x"\n'),))


def steps() -> list[Step]:
    return [
        BANG,
        root.pct_set_step(118, {"features": "keyctl=1,nesting=1"}),
        EATER,
        ga.hostkey_record_step(118, "Hermes: the agent\npvestack-stack: hermes"),
        ga.authorized_key_step(118, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake k"),
    ]


def script() -> str:
    return render_paste_script(
        steps(), title="pvestack root steps (test)", success_marker=SUCCESS_MARKER
    )


def _bash_s(text: str, env: dict[str, str]) -> str:
    r = subprocess.run(
        ["bash", "-s"],
        input=text,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return r.stdout + r.stderr


def test_bash_s_runs_to_the_marker_and_leaves_the_rest(env: dict[str, str]) -> None:
    out = _bash_s(script() + AFTER + "\n", env)
    lines = out.splitlines()
    assert SUCCESS_MARKER in lines, out
    assert "AFTER-THE-SCRIPT-42" in lines, out
    assert lines.index(SUCCESS_MARKER) < lines.index("AFTER-THE-SCRIPT-42")
    assert "ATE:" not in out
    assert "bang!x1" in lines
    cfg = subprocess.run(
        ["pct", "config", "118"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert f"description: pvestack-hostkey: {FP}" in cfg
    # again: idempotent, same end
    assert SUCCESS_MARKER in _bash_s(script(), env).splitlines()


def test_the_plain_script_fails_the_same_test(env: dict[str, str]) -> None:
    plain = render_script(steps(), title="t", success_marker=SUCCESS_MARKER)
    out = _bash_s(plain + AFTER + "\n", env)
    assert "ATE:" in out  # a command read the text that followed it


def test_failure_ends_the_subshell_not_the_shell(env: dict[str, str]) -> None:
    bad = Step("fails", "exits 1", (cmd("false"),))
    text = render_paste_script([bad], title="t", success_marker=SUCCESS_MARKER) + AFTER + "\n"
    out = _bash_s(text, env)
    assert SUCCESS_MARKER not in out.splitlines()
    assert "AFTER-THE-SCRIPT-42" in out.splitlines()  # the operator's shell lives on


def test_no_tabs_and_no_secret() -> None:
    text = script()
    assert "\t" not in text
    assert text.splitlines()[-1] == "pvestack_root_steps </dev/null"


@pytest.mark.skipif(TMUX is None, reason="tmux not installed (make apt installs it)")
def test_typed_into_an_interactive_shell_in_tmux(env: dict[str, str], tmp_path: Path) -> None:
    assert TMUX is not None
    sock = tmp_path / "tmux.sock"  # a server of its own, its socket in the test's tmp dir
    rc = tmp_path / "bashrc"
    rc.write_text("PS1='$ '\n")
    shell = f"bash --noprofile --rcfile {rc} -i"
    base = [TMUX, "-S", str(sock), "-f", "/dev/null"]
    subprocess.run(
        [*base, "new-session", "-d", "-x", "200", "-y", "50", shell], env=env, check=True
    )
    pid = int(
        subprocess.run(
            [*base, "display-message", "-p", "#{pid}"], capture_output=True, text=True, check=True
        ).stdout
    )
    try:
        text = script() + AFTER + "\n"
        subprocess.run([*base, "send-keys", "-t", "0", "-l", "--", text], check=True)
        deadline = time.monotonic() + 90
        screen = ""
        while time.monotonic() < deadline:
            screen = subprocess.run(
                [*base, "capture-pane", "-p", "-J", "-S", "-5000", "-t", "0"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            if "AFTER-THE-SCRIPT-42" in screen.splitlines():
                break
            time.sleep(0.5)
        lines = [ln.rstrip() for ln in screen.splitlines()]
        assert SUCCESS_MARKER in lines, screen[-3000:]
        assert "AFTER-THE-SCRIPT-42" in lines, screen[-3000:]
        assert lines.index(SUCCESS_MARKER) < lines.index("AFTER-THE-SCRIPT-42")
        assert not any(ln.startswith("ATE:") for ln in lines)
        assert "syntax error" not in screen and "event not found" not in screen
        assert "bang!x1" in lines  # the ! reached the program
    finally:
        # the tmux server this test started (its own socket), and the socket file
        subprocess.run([*base, "kill-server"], check=False)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 15)
        sock.unlink(missing_ok=True)
