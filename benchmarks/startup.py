"""Start-up cost of the command line, as a ratio to ``python -c pass`` in the same venv
(the machine is noisy: ratios of medians, runs interleaved).

    .venv/bin/python benchmarks/startup.py [--runs N]

Target (issue 9): ``pvestack --help`` and ``pvestack plan --help`` at most 8x.
Also lists the heavy modules ``plan --help`` imports (none is the goal).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
HEAVY = ("paramiko", "jinja2", "rich", "pydantic", "proxmoxer", "requests", "yaml", "pvelab")
TARGET = 8.0


def _wall(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def _heavy_imports(args: list[str]) -> list[str]:
    code = (
        "import sys\nsys.argv = ['pvestack', *sys.argv[1:]]\n"
        "from pvestack.cli import app\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=False
    )
    return r.stderr.strip().splitlines()[-1].split() if r.stderr.strip() else []


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    n = ap.parse_args().runs
    pvestack = str(BIN / "pvestack")
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "pvestack --help": [pvestack, "--help"],
        "pvestack plan --help": [pvestack, "plan", "--help"],
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for argv in cases.values():  # warm-up (page cache, .pyc)
        _wall(argv)
    for _ in range(n):
        for name, argv in cases.items():
            times[name].append(_wall(argv))
    base = statistics.median(times["python -c pass"])
    worst = 0.0
    print(f"start-up, median of {n} interleaved runs:")
    for name, ts in times.items():
        med = statistics.median(ts)
        ratio = med / base
        if name != "python -c pass":
            worst = max(worst, ratio)
        print(f"  {name:<22} {med * 1000:7.1f} ms  {ratio:5.1f}x python -c pass")
    heavy = _heavy_imports(["plan", "--help"])
    print(f"  heavy modules imported by plan --help: {', '.join(heavy) or 'none'}")
    print(f"  worst ratio {worst:.1f}x (target <= {TARGET:g}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
