"""Console scripts of fuzzed VALID stack files, run under bash in a sandbox (issue 10).

The stack files carry hostile but valid strings (descriptions with quotes, ``$``,
backticks, ``;``, newlines; host and container paths, data dirs and project dirs
with quotes, ``$``, backticks, ``;``, ``|``...). The script the console hand-off would
print is run by bash with an empty PATH (an empty directory) and a
``command_not_found_handle`` that records every command it is asked to run, with its
stdin, and does nothing. The recorded commands must be exactly the steps' commands
(guard, then commands, for every step: the ``Step`` data's argv and stdin payload),
the script's own output exactly the ``ok: STEP`` lines and the success marker, and
nothing may appear in the working directory. When shellcheck is installed, a sample of
the scripts is also shellcheck-clean (warnings and errors).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hardkit import count, plan_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvestack._commands import Step
from pvestack._config import parse_config

BASH = shutil.which("bash")
SHELLCHECK = shutil.which("shellcheck")
ENV = {"PVESTACK_TOKEN_SECRET": "tok", "LITELLM_API_KEY": "sk-sandbox"}
N = int(os.environ.get("PVESTACK_SANDBOX_EXAMPLES", "120"))
pytestmark = pytest.mark.skipif(BASH is None, reason="bash is needed to run the scripts")

HANDLER = r"""
command_not_found_handle() {
  local data="" guard=0
  if [ /dev/stdout -ef /dev/null ]; then guard=1; fi
  IFS= read -r -d '' data || true
  { printf 'CALL\037%s\037' "$guard"; printf '%s\037' "$@"; printf 'STDIN\037%s\036' "$data"
  } >> "$SANDBOX_LOG"
  if [ "$1" = id ]; then echo 0; fi
  if [ "$guard" = 1 ]; then return 1; fi  # a guard: "not done yet", so the commands run
  return 0
}
pct() { command_not_found_handle pct "$@"; }
"""

# printable, no whitespace, ',' or '=' (refused in paths): everything a shell cares about
PATH_CHARS = "abcXYZ019._-'\"$`;&|<>()*?[]{}~#!\\^%@+:"
segment = st.text(alphabet=PATH_CHARS, min_size=1, max_size=8).filter(
    lambda s: s not in (".", "..")
)
ct_segment = segment.filter(lambda s: ":" not in s)


def abs_path(prefix: str, seg: Any = segment) -> Any:
    return st.lists(seg, min_size=1, max_size=3).map(lambda parts: prefix + "/".join(parts))


NOT_PRINTABLE = ("Cc", "Cs", "Zl", "Zp", "Cf", "Cn", "Co", "Zs")
description = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=NOT_PRINTABLE)
    | st.sampled_from(list("\n\t'\"$`;|&\\")),
    max_size=60,
).filter(
    lambda d: all(not ln.strip().lower().startswith("pvestack-stack:") for ln in d.splitlines())
)


def toml_str(s: str) -> str:
    out = []
    for c in s:
        if c in '"\\':
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


FEATURES = ["{ nesting = true }", '{ keyctl = true, mount = ["nfs", "cifs"] }', "{ fuse = true }"]


@st.composite
def stack_file(draw: Any) -> tuple[str, str]:
    mounts = draw(
        st.lists(
            st.tuples(
                abs_path("/srv/data/"),
                abs_path("/", ct_segment),
                st.integers(0, 65535),
                st.sampled_from(["0755", "0750", "700"]),
                st.booleans(),
            ),
            min_size=1,
            max_size=3,
            unique_by=lambda m: m[1],
        )
    )
    idmap = draw(st.sampled_from(["", 'idmap = ["u 0 100000 65536", "g 0 100000 65536"]']))
    features = draw(st.sampled_from(FEATURES))
    lines = [
        "[pve]",
        'api_url = "https://127.0.0.1:8006"',
        'token_id = "root@pam!pvestack"',
        "[root]",
        'via = "console"',
        "[secrets]",
        'key = { env = "LITELLM_API_KEY" }',
        "[[stack]]",
        f"name = {toml_str(draw(st.from_regex(r'[a-z][a-z0-9-]{0,10}', fullmatch=True)))}",
        'node = "pve"',
        f"vmid = {draw(st.integers(100, 999999))}",
        f"description = {toml_str(draw(description))}",
        "tags = " + draw(st.sampled_from(["[]", '["a+b.c", "x_y"]'])),
        f"features = {features}",
        idmap,
        "[stack.network]",
        f"bridge = {toml_str(draw(st.from_regex(r'[a-z][a-z0-9_.-]{0,10}', fullmatch=True)))}",
        "[stack.template]",
        'url = "http://127.0.0.1/debian-12-standard_12.12-1_amd64.tar.zst"',
    ]
    for host, ct, uid, mode, take in mounts:
        lines += [
            "[[stack.mount]]",
            f"host_path = {toml_str(host)}",
            f"path = {toml_str(ct)}",
            f"uid = {uid}",
            f"mode = {toml_str(mode)}",
            f"take_ownership = {str(take).lower()}",
        ]
    if draw(st.booleans()):
        lines += [
            "[stack.app]",
            'recipe = "hermes"',
            'docker = "preinstalled"',
            'gateway_url = "http://gw:4000/v1"',
            'gateway_key = "key"',
            "default_model = " + toml_str(draw(st.text(alphabet=PATH_CHARS, min_size=1))),
            f"data_dir = {toml_str(draw(abs_path('/opt/', ct_segment)))}",
            f"project_dir = {toml_str(draw(abs_path('/opt/', ct_segment)))}",
            f"workspace = {toml_str(draw(abs_path('/opt/', ct_segment)))}",
        ]
    fname = draw(st.sampled_from(["stack.toml", "it's $(here) `x`;.toml", 'a"b.toml']))
    return "\n".join(lines) + "\n", fname


def expected_calls(steps: tuple[Step, ...]) -> list[tuple[str, tuple[str, ...], str]]:
    out: list[tuple[str, tuple[str, ...], str]] = [("0", ("id", "-u"), "")]
    for s in steps:
        if s.guard is not None:
            out.append(("1", s.guard.argv, ""))
        for c in s.commands:
            out.append(("0", c.argv, c.stdin.masked() if c.stdin is not None else ""))
    return out


def recorded_calls(log: Path) -> list[tuple[str, tuple[str, ...], str]]:
    out = []
    for rec in log.read_text().split("\x1e")[:-1]:
        fields = rec.split("\x1f")
        assert fields[0] == "CALL", rec
        i = fields.index("STDIN")
        out.append((fields[1], tuple(fields[2:i]), fields[i + 1]))
    return out


def run_sandboxed(script: str, tmp: Path) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    tmp.mkdir(parents=True, exist_ok=True)
    empty_path, cwd, log = tmp / "path", tmp / "cwd", tmp / "calls.log"
    for d in (empty_path, cwd):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
    log.write_text("")
    (tmp / "handler.sh").write_text(HANDLER)
    (tmp / "script.sh").write_text(script)
    assert BASH is not None
    r = subprocess.run(
        [BASH, str(tmp / "script.sh")],
        env={"PATH": str(empty_path), "BASH_ENV": str(tmp / "handler.sh"), "SANDBOX_LOG": str(log)},
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return r, cwd, log


def check_script(text: str, fname: str, tmp: Path) -> None:
    cfg = parse_config(text, fname, env=ENV)  # valid by construction
    _, _, steps, script = plan_for(cfg, ENV)
    assert steps, "a bind mount always needs root steps"
    assert all(c.isprintable() or c in "\n\t" for c in script)
    r, cwd, log = run_sandboxed(script, tmp)
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert recorded_calls(log) == expected_calls(steps)
    assert r.stdout.splitlines() == [f"ok: {s.id}" for s in steps] + ["PVESTACK-DONE"]
    assert list(cwd.iterdir()) == []


SANDBOX = settings(
    max_examples=N,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@SANDBOX
@given(case=stack_file())
def test_console_script_runs_only_the_steps_commands(
    case: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    text, fname = case
    try:
        check_script(text, fname, tmp_path_factory.getbasetemp() / "sandbox")
    except BaseException:
        count("script sandbox: fuzzed valid files", False)
        raise
    count("script sandbox: fuzzed valid files")


def test_the_sandbox_catches_an_injection(tmp_path: Path) -> None:
    """The sandbox itself: a command slipped into a comment line is recorded."""
    step = Step("s", "d", (), None)
    bad = "#!/usr/bin/env bash\nset -euo pipefail\nid -u\n# x\ntouch /tmp/PWNED #\necho 'ok: s'\n"
    r, _, log = run_sandboxed(bad, tmp_path)
    assert r.returncode == 0
    calls = recorded_calls(log)
    assert calls != expected_calls((step,))
    assert ("0", ("touch", "/tmp/PWNED"), "") in calls


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck not installed (make setup installs it)")
@settings(SANDBOX, max_examples=max(5, N // 10))
@given(case=stack_file())
def test_console_scripts_are_shellcheck_clean(
    case: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    text, fname = case
    _, _, _, script = plan_for(parse_config(text, fname, env=ENV), ENV)
    path = tmp_path_factory.getbasetemp() / "shellcheck.sh"
    path.write_text(script)
    assert SHELLCHECK is not None
    sc = subprocess.run(
        [SHELLCHECK, "-s", "bash", "-S", "warning", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    count("script sandbox: shellcheck (warning and up)", sc.returncode == 0)
    assert sc.returncode == 0, sc.stdout
