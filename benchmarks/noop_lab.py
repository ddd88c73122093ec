"""Wall time of a converged ``plan`` and ``apply`` of the lab's stack file on a lab node
(targets: plan <= 2 s, apply <= 3 s), with the API calls of the plan.

Against the lab of the environment (what ``make bench`` does after ``benchmarks/e2e.py``
applied the file)::

    eval "$(pvestack lab env)"
    .venv/bin/python benchmarks/noop_lab.py [-c examples/lab.toml] [--runs 5]

or on a test lab of its own (``--test-lab``, root; ports/bridge from
``PVESTACK_LABTEST_SLOT``): up, ``apply`` the file once, measure, down. The lab images must
be built for a file with apps (``scripts/build-lab-images.sh``).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PVESTACK = str(Path(sys.executable).with_name("pvestack"))
PLAN_TARGET = 2.0
APPLY_TARGET = 3.0


def run(env: dict[str, str], *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    r = subprocess.run([PVESTACK, *args], env=env, capture_output=True, text=True,
                       timeout=3600, check=False)  # fmt: skip
    return time.perf_counter() - t0, r


def measure(env: dict[str, str], stack: str, runs: int) -> int:
    plans, applies, calls = [], [], []
    for _ in range(runs):
        wall, r = run(env, "plan", "-c", stack, "--json")
        if r.returncode != 0:
            print(f"plan failed ({r.returncode}): {(r.stdout + r.stderr)[-600:]}")
            return 1
        data = json.loads(r.stdout)
        if data.get("changes"):
            print("the lab is not converged: plan shows changes; apply the file first")
            return 1
        plans.append(wall)
        calls.append(int(data.get("api_calls", -1)))
    for _ in range(max(1, runs // 2)):
        wall, r = run(env, "apply", "-y", "--no-verify", "-c", stack)
        if r.returncode != 0:
            print(f"apply failed ({r.returncode}): {(r.stdout + r.stderr)[-600:]}")
            return 1
        applies.append(wall)
    startup = statistics.median(run(env, "--help")[0] for _ in range(3))
    p, a = statistics.median(plans), statistics.median(applies)
    print(f"converged {stack} on the lab ({runs} plans, {len(applies)} applies):")
    print(f"  plan   median {p:.2f} s (max {max(plans):.2f}; target <= {PLAN_TARGET:g} s), "
          f"{max(calls)} API calls")  # fmt: skip
    print(f"  apply  median {a:.2f} s (max {max(applies):.2f}; target <= {APPLY_TARGET:g} s)")
    print(f"  (start-up, pvestack --help: {startup:.2f} s; plan without it {p - startup:.2f} s, "
          f"apply without it {a - startup:.2f} s)")  # fmt: skip
    return 0


def with_test_lab(stack: str, runs: int) -> int:
    sys.path.insert(0, str(ROOT / "tests" / "lab"))
    from labkit import host_tmpdir, make_lab  # noqa: PLC0415

    images = Path(os.environ.get("PVESTACK_LAB_IMAGES", "/var/lib/pvestack-lab/images"))
    lab = make_lab(host_tmpdir("pvestack-bench-noop-"), 8)
    try:
        lab.up(install=False)
        (lab.dir / "images").mkdir(exist_ok=True)
        for t in images.glob("*.tar"):  # the file's image_tarball paths point here
            (lab.dir / "images" / t.name).symlink_to(t)
        hosts = list(ipaddress.ip_network(lab.settings.subnet).hosts())
        env = {
            **os.environ,
            **lab.env(),
            "LITELLM_MASTER_KEY": "sk-" + secrets.token_hex(16),
            "PVESTACK_LAB_GATEWAY_CIDR": f"{hosts[-5]}/{lab.settings.subnet.split('/')[1]}",
            "PVESTACK_LAB_GATEWAY_IP": str(hosts[-5]),
            "PVESTACK_LAB_ROUTER": str(hosts[0]),
        }
        t0 = time.perf_counter()
        _, r = run(env, "apply", "-y", "--no-verify", "-c", stack)
        if r.returncode != 0:
            print(f"first apply failed ({r.returncode}): {(r.stdout + r.stderr)[-800:]}")
            return 1
        print(f"(first apply from nothing: {time.perf_counter() - t0:.0f} s)")
        return measure(env, stack, runs)
    finally:
        lab.down(purge=True)
        shutil.rmtree(lab.dir, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--config", default=str(ROOT / "examples" / "lab.toml"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--test-lab", action="store_true", help="bring up a test lab of its own")
    args = ap.parse_args()
    if args.test_lab:
        return with_test_lab(args.config, args.runs)
    if not os.environ.get("PVESTACK_API_URL"):
        print('no lab in the environment: eval "$(pvestack lab env)" first, or --test-lab')
        return 1
    env = dict(os.environ)
    env.setdefault("LITELLM_MASTER_KEY", "sk-" + secrets.token_hex(16))
    return measure(env, args.config, args.runs)


if __name__ == "__main__":
    raise SystemExit(main())
