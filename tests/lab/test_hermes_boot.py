"""Hermes's config.yaml stays converged with an image that boots like the official one
(issue 12): the lab image (scripts/build-lab-images.sh) starts as root, owns the data
dir, migrates config.yaml with hermes-agent's own code and drops privileges.

On the seed lab (examples/lab.toml, without ``config_version`` so the image's boot has
a migration to do): apply is green, including a chat completion through Hermes's API
server from this machine; the boot migrated config.yaml (version, backup); after
``docker restart hermes`` the plan is empty (exit 0); a managed key edited by hand
inside the container shows in the plan as exactly that key, a key Hermes set itself
is left alone by the apply that repairs it.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml
from seedlab import HERMES, SeedLab, wait_for

pytestmark = pytest.mark.lab
CONFIG = "/opt/hermes/config.yaml"  # the data dir in the CT, /opt/data in the container


@pytest.fixture(scope="module")
def seed(request: pytest.FixtureRequest) -> SeedLab:
    s = SeedLab.get(request)
    text = s.stack_file.read_text()
    assert "config_version = 33\n" in text
    s.stack_file.write_text(text.replace("config_version = 33\n", ""))
    return s


def plan(seed: SeedLab) -> tuple[int, str]:
    r = seed.run("plan", "-c", str(seed.stack_file), "--detailed-exitcode", timeout=600)
    assert r.returncode in (0, 2), r.stdout[-4000:] + r.stderr[-3000:]
    return r.returncode, r.stdout


def config(seed: SeedLab) -> dict[str, object]:
    doc = yaml.safe_load(seed.pct(f"exec {HERMES} -- cat {CONFIG}"))
    assert isinstance(doc, dict)
    return doc


def test_hermes_config_stays_converged_through_boot_migration(seed: SeedLab) -> None:
    r = seed.apply()
    assert " fail " not in r.stdout and " unverified " not in r.stdout, r.stdout[-6000:]
    code, checks = seed.verify()
    assert code == 0, json.dumps(checks, indent=1)[-6000:]
    assert checks["hermes/hermes.api.chat"]["status"] == "pass", checks["hermes/hermes.api.chat"]
    assert checks["gateway/gateway.http.models"]["status"] == "pass"

    # the image's boot migrated the file pvestack wrote without a version
    doc = config(seed)
    assert doc["_config_version"] == 33, doc
    backups = seed.pct(f"exec {HERMES} -- ls /opt/hermes")
    assert re.search(r"config\.yaml\.bak-\d{8}T\d{6}Z", backups), backups

    # a restart (the boot runs again): nothing to do
    seed.pct(f"exec {HERMES} -- docker restart hermes")
    wait_for("hermes running after the restart", seed.hermes_running)
    code, out = plan(seed)
    assert code == 0, out[-4000:]

    # Hermes sets a key of its own; a managed key is edited by hand
    seed.pct(
        f"exec {HERMES} -- docker exec -u 10000:10000 hermes hermes config set display.compact true"
    )
    seed.pct(f"exec {HERMES} -- sed -i 's/default: mock-gpt/default: hand-edited/' {CONFIG}")
    assert config(seed)["model"] == {"provider": "custom:litellm", "default": "hand-edited"}
    code, out = plan(seed)
    assert code == 2, out
    changed = re.findall(r"^\s+changed = (.*)$", out, re.MULTILINE)
    assert [c.strip().strip("'\"") for c in changed] == ["model.default"], out
    assert "config.yaml" in out and "/.env" not in out and "compose.yml" not in out, out

    r = seed.apply()  # writes the managed key back, restarts Hermes
    doc = config(seed)
    assert doc["model"] == {"provider": "custom:litellm", "default": "mock-gpt"}, doc
    display = doc.get("display")
    assert isinstance(display, dict) and display.get("compact") is True, doc
    assert doc["_config_version"] == 33
    seed.pct(f"exec {HERMES} -- docker restart hermes")
    wait_for("hermes running after the restart", seed.hermes_running)
    code, out = plan(seed)
    assert code == 0, out[-4000:]
