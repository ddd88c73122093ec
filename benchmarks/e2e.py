"""Timings of an end-to-end run of the seed plan on the lab, split by where the time goes.

Run as root against a lab that is up, with the lab images built::

    eval "$(pvestack lab env)"
    scripts/build-lab-images.sh
    .venv/bin/python benchmarks/e2e.py [-c examples/lab.toml] [--keep]

It destroys the file's containers first (so the run is from nothing; host dirs are
kept), then times ``pvestack apply --json --no-verify`` (each action's own seconds come
from the apply report), ``pvestack verify``, and a second ``apply`` (no changes), and
prints:

* PVE tasks: the token's actions (template download, create, start, reboot);
* root steps: host dirs, ``pct set`` of features and bind mounts, mount probes;
* package installs: Docker inside the CTs (apt);
* image work: pushing the image tarballs into the CTs and ``docker load``;
* app files + compose: the rendered files and ``compose up``;
* pvestack's own overhead: the apply's wall time minus its actions (config, secrets,
  observing the node, planning, SSH set-up);
* verify, and the no-op apply (observe + plan, nothing to do).

``LITELLM_MASTER_KEY`` and ``HERMES_API_KEY`` are generated for the run when unset
(never printed).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PVESTACK = str(ROOT / ".venv" / "bin" / "pvestack")


def run(env: dict[str, str], *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.monotonic()
    r = subprocess.run(
        [PVESTACK, *args], env=env, capture_output=True, text=True, timeout=3600, check=False
    )
    return time.monotonic() - t0, r


def category(action: dict[str, Any]) -> str:
    aid = str(action.get("id", ""))
    actor = action.get("actor")
    if actor == "api":
        return "PVE tasks"
    if actor == "root":
        return "root steps"
    if ":guest:docker" in aid:
        return "package installs"
    if ":guest:image:" in aid:
        return "image work"
    return "app files + compose"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--config", default=str(ROOT / "examples" / "lab.toml"))
    ap.add_argument("--keep", action="store_true", help="do not destroy first")
    args = ap.parse_args()
    if "PVESTACK_API_URL" not in os.environ:
        print('the lab\'s env is missing: eval "$(pvestack lab env)" first', file=sys.stderr)
        return 2
    env = dict(os.environ)
    env.setdefault("LITELLM_MASTER_KEY", "sk-bench-" + secrets.token_hex(16))
    env.setdefault("HERMES_API_KEY", "hermes-bench-" + secrets.token_hex(16))

    if not args.keep:
        _, r = run(env, "destroy", "-c", args.config, "--yes")
        if r.returncode != 0:
            print(r.stdout + r.stderr, file=sys.stderr)
            return 1

    wall, r = run(env, "apply", "-c", args.config, "--yes", "--json", "--no-verify")
    try:
        report = json.loads(r.stdout)
    except ValueError:
        print(r.stdout[-3000:] + r.stderr[-3000:], file=sys.stderr)
        return 1
    if report.get("exit_code") != 0:
        print(json.dumps(report, indent=1)[-4000:], file=sys.stderr)
        return 1
    parts: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for a in report.get("results", []):
        cat = category(a)
        parts[cat] += float(a.get("seconds") or 0.0)
        counts[cat] += 1
    actions = sum(parts.values())
    t_verify, rv = run(env, "verify", "-c", args.config)
    t_noop, rn = run(env, "apply", "-c", args.config, "--yes", "--no-verify")

    print(f"end-to-end apply of {Path(args.config).name}: {wall:7.1f} s wall")
    for cat in ("PVE tasks", "root steps", "package installs", "image work"):
        print(f"  {cat:<24}{parts[cat]:7.1f} s  ({counts[cat]} actions)")
    cat = "app files + compose"
    print(f"  {cat:<24}{parts[cat]:7.1f} s  ({counts[cat]} actions)")
    print(f"  {'pvestack overhead':<24}{wall - actions:7.1f} s  (config, observe, plan, SSH)")
    green = "green" if rv.returncode == 0 else "FAILED"
    print(f"verify:                     {t_verify:7.1f} s  ({green})")
    noop = "No changes." in rn.stdout
    print(f"second apply (no-op):       {t_noop:7.1f} s  ({'no changes' if noop else 'CHANGED'})")
    return 0 if rv.returncode == 0 and noop and rn.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
