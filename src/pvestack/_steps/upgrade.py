"""Guest steps of an upgrade (commands as data): the marker file an unfinished upgrade
leaves in the CT, and the wait for Docker after a rollback's start.

The marker (``/var/lib/pvestack/upgrade.json``, JSON ``{stack, from, to, snapshot,
backup, phase}``) is written before anything changes and removed when the upgrade
finished (green) or was rolled back; observe's ``FACTS`` program (``_guestfacts``)
reads it back as ``GuestFacts.upgrade``, so the next plan shows ``upgrade (resume)``.
"""

from __future__ import annotations

import json
import posixpath

from pvestack._commands import Payload, Step
from pvestack._guestfacts import UPGRADE_MARKER, UpgradeMarker
from pvestack._steps.guest import pct_sh

MARKER_PATH = UPGRADE_MARKER  # observe reads it (``_guestfacts.FACTS``)
MARKER_DIR = posixpath.dirname(MARKER_PATH)

# Args: the marker's directory and path; the JSON on stdin (written atomically).
WRITE_MARKER = """\
set -eu
mkdir -p "$1"
cat >"$2.tmp"
mv -f "$2.tmp" "$2"
"""

CLEAR_MARKER = 'rm -f "$1"\n'

# Exit 0 once the engine answers (after a rollback's start Docker needs a moment).
DOCKER_UP = "docker info >/dev/null 2>&1\n"


def marker_json(stack: str, m: UpgradeMarker) -> str:
    return json.dumps(
        {
            "stack": stack,
            "from": {s.service: s.from_image for s in m.services},
            "to": {s.service: s.to_image for s in m.services},
            "snapshot": m.snapshot,
            "backup": m.backup,
            "phase": m.phase,
        },
        sort_keys=True,
    )


def write_marker_step(vmid: int, stack: str, m: UpgradeMarker) -> Step:
    payload = Payload.text(marker_json(stack, m) + "\n")
    return Step(
        f"ct{vmid}:upgrade:marker",
        f"record the upgrade in {MARKER_PATH} (phase {m.phase})",
        (pct_sh(vmid, WRITE_MARKER, MARKER_DIR, MARKER_PATH, stdin=payload),),
    )


def clear_marker_step(vmid: int) -> Step:
    return Step(
        f"ct{vmid}:upgrade:done",
        f"remove {MARKER_PATH} (the upgrade finished or was rolled back)",
        (pct_sh(vmid, CLEAR_MARKER, MARKER_PATH),),
    )


def docker_up_step(vmid: int) -> Step:
    return Step(f"ct{vmid}:upgrade:docker", "the Docker engine answers", (pct_sh(vmid, DOCKER_UP),))
