"""Property-based fuzzing of the stack file (issue 10): thousands of mutated files per run.

Every mutated file goes through the loader and, when valid, the plan against an empty
cluster, its text and the console script: no traceback (only ``PvestackError``s, which
the CLI turns into exit 1), and every problem carries the file, a line inside the file
and a key. Files the loader refuses also go through the real CLI (``pvestack plan``,
typer's runner; it exits before any connection): exit code 1, no traceback.

Seeded (``derandomize``) so a run is reproducible; ``PVESTACK_FUZZ_EXAMPLES`` scales it.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hardkit import count, dumps, plan_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from pvestack._config import parse_config
from pvestack._errors import ConfigError, PvestackError
from pvestack.cli import app

ROOT = Path(__file__).resolve().parents[2]
BASE = (ROOT / "examples" / "hermes.toml").read_text()
LAB = (ROOT / "examples" / "lab.toml").read_text()
ENV = {
    "PVESTACK_TOKEN_SECRET": "tok",
    "LITELLM_API_KEY": "sk-fuzz",
    "LITELLM_MASTER_KEY": "sk-master",
    "HOME": "/nonexistent",
}
# the CLI sees ENV and none of the caller's PVESTACK_* (an override could make a file valid)
CLI_ENV: dict[str, str | None] = {
    **{k: None for k in os.environ if k.startswith("PVESTACK_")},
    **ENV,
}
N = int(os.environ.get("PVESTACK_FUZZ_EXAMPLES", "900"))
FUZZ = settings(
    max_examples=N,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)

HOSTILE = [
    "nfs\ntouch /tmp/PWNED #",
    "/opt/x\n$(touch /tmp/PWNED)",
    "vmbr0,ip=10.0.0.9/24",
    "gihyeon,x",
    "a\x1b[2Jb",
    "pvestack-stack: other",
    "x\npvestack-stack: other",
    "${UNSET_FUZZ_VAR}",
    "${HOME}",
    "$$",
    "/",
    "/etc",
    "/etc/pve",
    "//etc/",
    "/var/lib/vz",
    "/var",
    "/mnt/pve/hdd",
    "/mnt/../etc",
    "'; touch /tmp/PWNED #",
    "`touch /tmp/PWNED`",
    "\r\n",
    "\u202e",
    "\u2028",
    "\x00",
    "",
    " ",
    "a" * 300,
    "u 0 100000 65536",
    "g 0 100000 65536",
    "u 0 100000 0",
    "1.2.3.4/24",
    "fd00::1/64",
]

scalar = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(max_size=40),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
)
value = st.recursive(
    scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


KEYS = [
    "take_ownership",
    "idmap",
    "depends_on",
    "gid",
    "uid",
    "mount",
    "ipv6",
    "gateway",
    "gateway6",
    "vlan",
    "data_dir",
    "project_dir",
    "workspace",
    "image_tarball",
    "mounts",
]
TOMLISH = st.sampled_from(list("[]{}=\"',.\n#$ \\a1")) | st.characters()


def leaf_paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path] if path else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += leaf_paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += leaf_paths(v, (*path, i))
    return out


def mutate(data: dict[str, Any], draw: Any) -> dict[str, Any]:
    paths = leaf_paths(data)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths))
        parent: Any = data
        for p in path[:-1]:
            parent = parent[p]
        last = path[-1]
        op = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add", "nest"]))
        try:
            if op == "replace":
                parent[last] = draw(value)
            elif op == "delete":
                del parent[last]
            elif op == "add" and isinstance(parent, dict):
                key = draw(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)))
                parent[key] = draw(value)
            elif op == "nest":
                parent[last] = [[[parent[last]]]]
        except (KeyError, IndexError, TypeError):
            pass
        paths = leaf_paths(data) or [("pve",)]
    return data


@st.composite
def mutated_data(draw: Any) -> str:
    base = draw(st.sampled_from([BASE, LAB]))
    data = tomllib.loads(base)
    return dumps(mutate(data, draw))


@st.composite
def mutated_text(draw: Any) -> str:
    text = draw(st.sampled_from([BASE, LAB]))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["insert", "delete", "dupline", "truncate", "nest"]))
        i = draw(st.integers(0, len(text)))
        if op == "insert":
            text = text[:i] + draw(st.text(alphabet=TOMLISH, max_size=12)) + text[i:]
        elif op == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 40)) :]
        elif op == "dupline":
            lines = text.splitlines(keepends=True)
            j = draw(st.integers(0, max(0, len(lines) - 1)))
            text = "".join(lines[: j + 1] + lines[j:])
        elif op == "truncate":
            text = text[:i]
        else:
            n = draw(st.integers(200, 3000))
            text += f"\ndeep = {'[' * n}{']' * n}\n"
    return text


def check_file(text: str, tmp: Path, runner: CliRunner | None = None) -> None:
    """No traceback; problems with file, line (inside the file) and key."""
    fname = str(tmp / "fuzz.toml")
    nlines = max(1, len(text.splitlines()))
    try:
        cfg = parse_config(text, fname, env=ENV)
    except ConfigError as e:
        assert e.problems
        for p in e.problems:
            assert p.file == fname, p
            assert p.key, p
            assert p.line is not None and 1 <= p.line <= nlines, (p, nlines)
        if runner is not None:
            (tmp / "fuzz.toml").write_text(text)
            r = runner.invoke(app, ["plan", "-c", fname], env=CLI_ENV)
            assert r.exit_code == 1, (r.exit_code, r.output, r.exception)
            assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
        return
    try:
        _, out, _, script = plan_for(cfg, ENV)
    except PvestackError as e:  # a secret or recipe problem: exit 1 in the CLI
        problems = getattr(e, "problems", ())
        for p in problems:
            assert p.file == fname and p.key and p.line, p
        return
    assert "\x1b" not in out and "\x1b" not in script
    assert all(c.isprintable() or c in "\n\t" for c in out + script)
    count("config fuzz: (of which valid: planned, plan text and script rendered)")


def _run(part: str, text: str, tmp: Path, runner: CliRunner | None = None) -> None:
    try:
        check_file(text, tmp, runner)
    except BaseException:
        count(part, False)
        raise
    count(part)


@FUZZ
@given(text=mutated_data())
def test_fuzz_mutated_values(text: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    _run("config fuzz: mutated values", text, tmp_path_factory.getbasetemp())


@FUZZ
@given(text=mutated_text())
def test_fuzz_mutated_text(text: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    _run("config fuzz: mutated text", text, tmp_path_factory.getbasetemp())


@settings(FUZZ, max_examples=max(20, N // 7))
@given(text=st.one_of(mutated_data(), mutated_text()))
def test_fuzz_through_the_cli(text: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.getbasetemp()
    _run("config fuzz: CLI", text, base, CliRunner())
