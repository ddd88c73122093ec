"""Helpers of the hardening suites (issue 10): a TOML writer for mutated stack files,
the tally printed in pytest's terminal summary, and the plan/script pipeline run on a
stack file without any node (an empty cluster is observed)."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from pvestack import _engine as engine
from pvestack._commands import Step
from pvestack._config import StackFile
from pvestack._desired import build_desired
from pvestack._model import ObservedStack, ObservedState, Plan
from pvestack._plan import plan
from pvestack._render import render_text
from pvestack.executors import _console as console

#: part -> Counter(tried=, passed=): printed by conftest.pytest_terminal_summary
TALLY: dict[str, Counter[str]] = {}


def count(part: str, ok: bool = True) -> None:
    c = TALLY.setdefault(part, Counter())
    c["tried"] += 1
    c["passed"] += int(ok)


# ---------------------------------------------------------------- TOML writer

_BARE = re.compile(r"[A-Za-z0-9_-]+")


def _key(k: str) -> str:
    return k if _BARE.fullmatch(k) else _str(k)


def _str(s: str) -> str:
    out = ['"']
    for c in s:
        if c == '"':
            out.append('\\"')
        elif c == "\\":
            out.append("\\\\")
        elif c == "\t" or (c.isprintable() and c != "\x7f"):
            out.append(c)
        elif ord(c) > 0xFFFF:
            out.append(f"\\U{ord(c):08X}")
        elif 0xD800 <= ord(c) <= 0xDFFF:
            out.append("?")  # TOML has no lone surrogates
        else:
            out.append(f"\\u{ord(c):04X}")
    out.append('"')
    return "".join(out)


def _val(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _str(v)
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{_key(str(k))} = {_val(x)}" for k, x in v.items()) + " }"
    if isinstance(v, Sequence):
        return "[" + ", ".join(_val(x) for x in v) + "]"
    return _str(str(v))


def _is_aot(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def _table(d: Mapping[str, Any], path: tuple[str, ...], lines: list[str]) -> None:
    for k, v in d.items():
        if not isinstance(v, dict) and not _is_aot(v):
            lines.append(f"{_key(k)} = {_val(v)}")
    for k, v in d.items():
        sub = ".".join(_key(p) for p in (*path, k))
        if isinstance(v, dict):
            lines.append(f"[{sub}]")
            _table(v, (*path, k), lines)
        elif _is_aot(v):
            for item in v:
                lines.append(f"[[{sub}]]")
                _table(item, (*path, k), lines)


def dumps(d: Mapping[str, Any]) -> str:
    lines: list[str] = []
    _table(d, (), lines)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the pipeline


def empty_cluster(cfg: StackFile, desired: Any) -> ObservedState:
    stacks = tuple(
        ObservedStack(
            name=s.name,
            vmid=s.container.vmid if s.container.vmid is not None else 200 + i,
            container=None,
            template_present=False,
        )
        for i, s in enumerate(desired.stacks)
    )
    return ObservedState(nodes=(), guests=(), stacks=stacks)


def env_secrets_only(cfg: StackFile) -> bool:
    """Only env secret sources (the suites never read a file or run a command)."""
    sources = [cfg.pve.token_secret, *cfg.secrets.values()]
    return all(s.env is not None for s in sources)


def plan_for(cfg: StackFile, env: Mapping[str, str]) -> tuple[Plan, str, tuple[Step, ...], str]:
    """Plan against an empty cluster: the plan, its text, the console script's steps and
    the script (the same calls the CLI's plan / console-script make)."""
    with_apps = env_secrets_only(cfg)  # build_desired validates the apps first
    desired = build_desired(cfg, source=cfg.source_file, env=env, with_apps=with_apps)
    p = plan(desired, empty_cluster(cfg, desired))
    text = render_text(p, root_via=cfg.root.via)
    steps = engine.root_steps(p)
    script = console.console_script(
        steps, title=f"pvestack root steps for {cfg.source_file}", success_marker="PVESTACK-DONE"
    )
    return p, text, steps, script
