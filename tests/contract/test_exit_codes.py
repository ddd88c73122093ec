"""Exit codes and messages (hardening finding 7), through the command line on fakepve."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import pytest
from typer.testing import CliRunner

from pvestack._client import ClientSettings, PveClient
from pvestack._commands import Secret
from pvestack._config import StackFile
from pvestack._errors import TlsError
from pvestack.cli import app

pytestmark = pytest.mark.contract


def test_destroy_exits_1_after_refusing_a_guest(pve: Any, stack_cfg: StackFile) -> None:
    pve.add_ct(118, "byhand", node="gihyeon", status="running")
    runner = CliRunner()
    r = runner.invoke(app, ["destroy", "-c", stack_cfg.source_file, "--yes"])
    assert r.exit_code == 1, r.output
    assert "refused" in r.output and "Nothing to destroy" not in r.output
    r = runner.invoke(app, ["destroy", "-c", stack_cfg.source_file, "--yes", "--json"])
    assert r.exit_code == 1
    data = json.loads(r.stdout)
    assert data["result"]["exit_code"] == 1 and data["result"]["refused"]
    assert pve.ct(118) is not None


def test_plan_does_not_say_no_changes_after_a_refusal(pve: Any, stack_cfg: StackFile) -> None:
    pve.add_ct(118, "byhand", node="gihyeon", status="running")
    r = CliRunner().invoke(app, ["plan", "-c", stack_cfg.source_file])
    assert r.exit_code == 1
    assert "refused" in r.output
    assert "No changes" not in r.output


def test_tls_hint_names_the_port_in_use(pve: Any) -> None:
    token_id, secret = next(iter(pve.apitokens.items()))
    c = PveClient(
        ClientSettings(
            api_url=pve.url,
            token_id=token_id,
            token_secret=Secret("t", secret),
            fingerprint="AA:" + ":".join(["00"] * 31),
        ),
        read_retries=0,
    )
    with pytest.raises(TlsError) as ei:
        c.get("/version")
    port = urlsplit(pve.url).port
    assert port != 8006
    assert ei.value.hint is not None and f"127.0.0.1:{port}" in ei.value.hint
    assert "8006" not in ei.value.hint
