"""hermes-agent's REAL config migration applied to the config.yaml pvestack renders.

Needs a Python with hermes-agent installed (it is not a dependency of pvestack):
``make setup`` installs hermes-agent 0.19.0 from PyPI into ``.venv-hermes`` (used by
default), or ``HERMES_AGENT_PYTHON=/path/to/venv/bin/python``; skipped, with that reason,
when neither is there. The lab
end-to-end (``test_hermes_boot.py``) shows the same through the lab image's boot.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pvestack._commands import Secret
from pvestack.recipes import (
    load_app,
    managed_yaml_digest,
    managed_yaml_paths,
    merge_yaml,
    render_app,
)

_MAKE_VENV = Path(__file__).resolve().parents[2] / ".venv-hermes" / "bin" / "python"
PY = os.environ.get("HERMES_AGENT_PYTHON") or (str(_MAKE_VENV) if _MAKE_VENV.exists() else "")
pytestmark = pytest.mark.skipif(
    not PY, reason="run `make hermes-agent` or set HERMES_AGENT_PYTHON (hermes-agent installed)"
)

MIGRATE = """
import json
from hermes_cli.config import check_config_version, migrate_config
before = check_config_version()
migrate_config(interactive=False, quiet=True)
print(json.dumps({"before": before, "after": check_config_version()}))
"""


def rendered(**over: Any) -> str:
    raw: dict[str, Any] = {
        "recipe": "hermes",
        "gateway_url": "http://10.77.0.250:4000/v1",
        "gateway_key": "k",
        "default_model": "mock-gpt",
        "image": "pvestack-lab/hermes-agent:0.19.0-boot2",
        **over,
    }
    app = render_app(
        load_app(raw, stack_name="h"), stack_name="h", secrets={"k": Secret("k", "sk-" + "1" * 20)}
    )
    f = next(f for f in app.files if f.path.endswith("config.yaml"))
    return "".join(p for p in f.content if isinstance(p, str))


def migrate(home: Path, text: str) -> tuple[str, dict[str, Any]]:
    home.mkdir(exist_ok=True)
    (home / "config.yaml").write_text(text)
    env = {"PATH": os.environ.get("PATH", ""), "HERMES_HOME": str(home), "HOME": str(home)}
    r = subprocess.run(
        [PY, "-c", MIGRATE], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return (home / "config.yaml").read_text(), json.loads(r.stdout.strip().splitlines()[-1])


def test_the_migrated_file_has_no_drift_and_keeps_its_own_keys(tmp_path: Path) -> None:
    want = rendered()
    got, versions = migrate(tmp_path / "a", want)
    assert versions["before"][0] == 0 and versions["after"][0] == versions["after"][1]
    assert got != want  # Hermes rewrote it ...
    paths = managed_yaml_paths(want)
    assert managed_yaml_digest(got, paths) == managed_yaml_digest(want, paths)  # ... no drift
    assert merge_yaml(got, want) is None  # so apply writes nothing, restarts nothing
    new = merge_yaml(got, rendered(default_model="other"))
    assert new is not None
    doc = yaml.safe_load(new)
    assert doc["_config_version"] == versions["after"][1]  # Hermes's keys are kept
    # the merged file is current: the next boot has nothing to migrate
    again, v2 = migrate(tmp_path / "b", new)
    assert v2["before"][0] == v2["after"][1] and yaml.safe_load(again) == doc


def test_a_known_version_leaves_nothing_to_migrate(tmp_path: Path) -> None:
    want = rendered(config_version=33)
    got, versions = migrate(tmp_path / "c", want)
    assert versions["before"] == versions["after"] == [33, 33]
    assert got == want  # not rewritten at boot
