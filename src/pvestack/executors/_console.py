"""Console hand-off: the root steps as one script for the node's shell, then wait.

For operators who do not let pvestack SSH to the node: the plan's root steps are
rendered (``_commands.render_script``, the same ``Step`` data the SSH executor runs)
into ONE ``set -euo pipefail`` script that is idempotent (every step has its guard),
holds no secret, checks it runs as root on a node with ``pct``, and ends with a clear
success marker. pvestack prints it and then polls a caller-supplied function (the
engine passes one that re-reads the CT config/status through the API) until nothing is
missing, or times out listing what is still missing. Without a terminal to wait on,
the caller prints the script and exits 3 (a later ``apply`` resumes from the observed
state).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pvestack._commands import Step
from pvestack._errors import PvestackError, TransportError, WaitTimeout
from pvestack._steps.paste_script import render_paste_script

SUCCESS_MARKER = "PVESTACK-ROOT-STEPS-DONE"

_ROOT_CHECK = (
    'if [ "$(id -u)" -ne 0 ]; then echo "pvestack: run this as root on the node" >&2; exit 1; fi'
)
_PCT_CHECK = (
    "if ! command -v pct >/dev/null 2>&1; then "
    'echo "pvestack: pct not found: run this in the PVE node\'s shell" >&2; exit 1; fi'
)


def _uses_pct(steps: Sequence[Step]) -> bool:
    for s in steps:
        for c in (*s.commands, *((s.guard,) if s.guard else ())):
            if "pct" in c.argv[:1] or any("pct " in a for a in c.argv[2:3]):
                return True
    return False


def console_script(
    steps: Sequence[Step], *, title: str, success_marker: str = SUCCESS_MARKER
) -> str:
    """The steps as one idempotent script to paste into the node's shell (as root).

    Raises ``PvestackError`` when a step carries a secret (a printed script never may).
    """
    secret_steps = [s.id for s in steps if s.has_secret]
    if secret_steps:
        raise PvestackError(
            "these steps carry a secret and cannot go into a printed script: "
            + ", ".join(secret_steps),
            hint='use root.via = "ssh" for them',
        )
    preamble = [
        "# Paste into the PVE node's shell as root. Safe to run again: each step checks",
        "# first and does nothing when already done. It ends by printing " + success_marker,
        _ROOT_CHECK,
    ]
    if _uses_pct(steps):
        preamble.append(_PCT_CHECK)
    # paste-safe: parsed whole before anything runs, stdin /dev/null (_steps.paste_script)
    return render_paste_script(steps, title=title, success_marker=success_marker, preamble=preamble)


@dataclass(frozen=True)
class Handoff:
    """What happened after the script was printed."""

    waited: bool  # False: no terminal to wait on (the caller exits 3)
    done: bool  # the poll saw nothing missing
    missing: tuple[str, ...] = ()
    elapsed: float = 0.0


Poll = Callable[[], Sequence[str]]


def wait_for_root_steps(
    missing: Poll,
    *,
    timeout: float = 1800.0,
    interval: float = 5.0,
    on_status: Callable[[Sequence[str]], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Poll ``missing()`` until it returns nothing; return the seconds waited.

    ``on_status`` is called with the missing list whenever it changes. A transport
    failure during a poll counts as "still missing" (the node may be rebooting).
    Raises ``WaitTimeout`` listing what is still missing.
    """
    start = clock()
    last: tuple[str, ...] | None = None
    while True:
        try:
            now_missing = tuple(missing())
        except TransportError as e:
            now_missing = (f"the API could not be read: {e}",)
        if now_missing != last and on_status is not None:
            on_status(now_missing)
        last = now_missing
        if not now_missing:
            return clock() - start
        waited = clock() - start
        if waited >= timeout:
            raise WaitTimeout(
                f"the root steps' effects did not show within {timeout:g}s; still missing:\n"
                + "\n".join(f"  - {m}" for m in now_missing),
                hint="run the printed script in the node's shell as root (it ends with "
                f"{SUCCESS_MARKER}); `pvestack apply` again continues from what it finds",
            )
        sleep(min(interval, max(0.0, timeout - waited)))


def hand_off(
    script: str,
    missing: Poll,
    *,
    write: Callable[[str], None] | None = None,
    interactive: bool | None = None,
    timeout: float = 1800.0,
    interval: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Handoff:
    """Print ``script`` and wait until ``missing()`` is empty (when a terminal is there).

    ``interactive`` defaults to "stdin is a TTY". Not interactive: print and return
    ``waited=False`` at once (the engine then exits 3). Raises ``WaitTimeout``.
    """
    out = write or _stdout
    if interactive is None:
        interactive = sys.stdin.isatty()
    out("# --- run this in the PVE node's shell as root ---\n")
    out(script if script.endswith("\n") else script + "\n")
    out("# --- end of script ---\n")
    if not interactive:
        return Handoff(waited=False, done=False)

    def status(now: Sequence[str]) -> None:
        if now:
            out("waiting for the root steps (Ctrl-C stops; apply again resumes):\n")
            out("".join(f"  - {m}\n" for m in now))
        else:
            out("root steps done: the node shows their effects\n")

    elapsed = wait_for_root_steps(
        missing, timeout=timeout, interval=interval, on_status=status, clock=clock, sleep=sleep
    )
    return Handoff(waited=True, done=True, elapsed=elapsed)


def _stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
