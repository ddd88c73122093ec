"""verify catches what it claims to catch (issue 6): on one applied lab (the seed's two
stacks), break one thing at a time and see exactly that check fail, with evidence and a
fix that names the cause; then restore it and see verify green again.

The checks that need the broken thing are skipped (not failed), so one broken thing
shows as one failed check.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from seedlab import HERMES, SeedLab

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def seed(request: pytest.FixtureRequest) -> Iterator[SeedLab]:
    s = SeedLab.get(request)
    s.ensure_applied()
    s.wait_green()
    yield s


def failed(checks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {k: c for k, c in checks.items() if c["status"] == "fail"}


def test_docker_stopped(seed: SeedLab) -> None:
    seed.pct(f"exec {HERMES} -- systemctl stop docker.socket docker.service")
    try:
        code, checks = seed.verify()
        assert code == 1
        assert set(failed(checks)) == {"hermes/docker.engine"}, failed(checks)
        c = checks["hermes/docker.engine"]
        assert "docker run --rm" in c["evidence"] and "exit 0" not in c["evidence"]
        assert "systemctl status docker" in c["fix"]
        assert checks["hermes/app.containers"]["status"] == "skip"
        assert "docker.engine failed" in checks["hermes/app.containers"]["evidence"]
        assert checks["gateway/gateway.models"]["status"] == "pass"
    finally:
        seed.pct(f"exec {HERMES} -- systemctl start docker.service")
    seed.wait_green()


def test_mount_owned_wrong(seed: SeedLab) -> None:
    host = seed.lab.dir / "hostdata" / "hermes-fast"
    st = host.stat()
    os.chown(host, 0, 0)
    try:
        code, checks = seed.verify()
        assert code == 1
        assert set(failed(checks)) == {"hermes/mount./fast"}, failed(checks)
        c = checks["hermes/mount./fast"]
        assert "write as uid 10000 inside failed" in c["evidence"]
        assert "Permission denied" in c["evidence"]
        assert f"chown 110000:110000 {host}" in c["fix"]
        assert checks["hermes/mount./data"]["status"] == "pass"
    finally:
        os.chown(host, st.st_uid, st.st_gid)
    code, checks = seed.verify()
    assert code == 0, failed(checks)


def test_wrong_gateway_key(seed: SeedLab) -> None:
    env_file = "/opt/hermes/.env"
    original = seed.pct(f"exec {HERMES} -- cat {env_file}")
    assert "LITELLM_API_KEY=" in original
    broken = "".join(
        "LITELLM_API_KEY=sk-not-the-key\n" if line.startswith("LITELLM_API_KEY=") else line
        for line in original.splitlines(keepends=True)
    )
    seed.pct(f"exec {HERMES} -- sh -c 'cat > {env_file}'", stdin=broken)
    try:
        code, checks = seed.verify()
        assert code == 1
        assert set(failed(checks)) == {"hermes/llm.models"}, failed(checks)
        c = checks["hermes/llm.models"]
        assert c["evidence"].split(": ", 1)[1].startswith(("400", "401")), c
        assert "refused the key" in c["fix"]
        assert checks["gateway/gateway.models"]["status"] == "pass"  # the master key works
    finally:
        seed.pct(f"exec {HERMES} -- sh -c 'cat > {env_file}'", stdin=original)
    code, checks = seed.verify()
    assert code == 0, failed(checks)


def test_unknown_model(seed: SeedLab) -> None:
    other = seed.stack_file.with_name("lab-unknown-model.toml")
    text = seed.stack_file.read_text()
    assert 'default_model = "mock-gpt"' in text
    other.write_text(text.replace('default_model = "mock-gpt"', 'default_model = "gpt-nope"'))
    code, checks = seed.verify(other)
    assert code == 1
    assert set(failed(checks)) == {"hermes/llm.models"}, failed(checks)
    c = checks["hermes/llm.models"]
    assert "models: mock-gpt" in c["evidence"]
    assert "'gpt-nope' is not served by the gateway" in c["fix"] and "mock-gpt" in c["fix"]
    assert checks["hermes/llm.roundtrip"]["status"] == "skip"


def test_hermes_container_stopped(seed: SeedLab) -> None:
    seed.pct(f"exec {HERMES} -- docker stop hermes")
    try:
        code, checks = seed.verify()
        assert code == 1
        assert set(failed(checks)) == {"hermes/app.containers"}, failed(checks)
        c = checks["hermes/app.containers"]
        assert "hermes: exited" in c["evidence"], c
        assert "docker logs" in c["fix"]
        for cid in ("hermes.gateway", "llm.models", "llm.roundtrip"):
            assert checks[f"hermes/{cid}"]["status"] == "skip"
    finally:
        seed.pct(f"exec {HERMES} -- docker start hermes")
    seed.wait_green()
