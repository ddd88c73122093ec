"""The whole seed plan, end to end on a fresh lab (issue 6): ``apply`` of
``examples/lab.toml`` (LiteLLM gateway + Hermes, images loaded from the tarballs
``scripts/build-lab-images.sh`` builds) ends with verify all green; Hermes answers a
prompt through the gateway's mock model; ``apply`` again reports no changes and is
green; ``destroy --yes`` removes both CTs and leaves the bind-mount data on the host.
"""

from __future__ import annotations

import json

import pytest
from seedlab import GW, HERMES, MOCK_ANSWER, SeedLab

pytestmark = pytest.mark.lab

# every check the seed's checklist asks for, on this file's two stacks
MUST_PASS = {
    "gateway/ct.running",
    "gateway/ct.features",
    "gateway/docker.engine",
    "gateway/app.containers",
    "gateway/gateway.health",
    "gateway/gateway.models",
    "gateway/secrets.inspect",
    "hermes/ct.running",
    "hermes/ct.features",
    "hermes/ct.mounts",
    "hermes/mount./data",
    "hermes/mount./fast",
    "hermes/docker.engine",
    "hermes/app.containers",
    "hermes/hermes.gateway",
    "hermes/llm.models",
    "hermes/llm.roundtrip",
    "hermes/secrets.env:/opt/hermes/.env",
    "hermes/secrets.inspect",
}


@pytest.fixture(scope="module")
def seed(request: pytest.FixtureRequest) -> SeedLab:
    return SeedLab.get(request)


def test_seed_plan_end_to_end(seed: SeedLab) -> None:
    # 1. apply on a fresh lab: both CTs, Docker, images, compose; it ends with verify
    r = seed.apply()
    assert "\nverify:" in r.stdout
    assert " fail " not in r.stdout, r.stdout[-6000:]

    # 2. verify --json: every check of the checklist passes (platforms without a token skip)
    code, checks = seed.verify()
    assert code == 0, json.dumps(checks, indent=1)[-6000:]
    assert {k for k, c in checks.items() if c["status"] == "pass"} >= MUST_PASS, checks
    for k, c in checks.items():
        assert c["status"] != "fail", (k, c)
        if c["status"] == "skip":
            assert ".platform." in k, (k, c)  # no token configured in the lab file
    assert "mock-gpt" in checks["gateway/gateway.models"]["evidence"]
    assert "completed=True" in checks["hermes/llm.roundtrip"]["evidence"]

    # 3. a prompt answered by Hermes through the gateway's mock model
    out = seed.pct(
        f"exec {HERMES} -- docker exec -u 10000:10000 hermes "
        "hermes -z 'Say hello to the lab' --usage-file /tmp/e2e-usage.json"
    )
    assert MOCK_ANSWER in out, out
    usage = json.loads(seed.pct(f"exec {HERMES} -- docker exec hermes cat /tmp/e2e-usage.json"))
    assert usage.get("completed") is True and not usage.get("failed"), usage
    assert usage.get("model") == "mock-gpt", usage

    # 4. apply again: no changes, green again
    r = seed.run("plan", "-c", str(seed.stack_file), "--json")
    assert json.loads(r.stdout)["actions"] == [], r.stdout
    r = seed.apply()
    assert "No changes." in r.stdout, r.stdout[-4000:]
    assert " fail " not in r.stdout

    # no secret in anything pvestack printed
    key = seed.env["LITELLM_MASTER_KEY"]
    assert all(key not in text for text in seed.printed)

    # 5. destroy: both CTs go, the bind-mount data stays on the host disk
    seed.pct(
        f"exec {HERMES} -- setpriv --reuid=10000 --regid=10000 --clear-groups "
        "sh -c 'echo kept > /data/e2e-keep.txt'"
    )
    host_data = seed.lab.dir / "hostdata" / "hermes-data"
    assert (host_data / "e2e-keep.txt").read_text() == "kept\n"
    r = seed.run("destroy", "-c", str(seed.stack_file), "--yes")
    seed.applied = False
    assert r.returncode == 0, r.stdout + r.stderr
    assert "destroyed" in r.stdout
    listing = seed.pct("list")
    assert str(GW) not in listing.split() and str(HERMES) not in listing.split(), listing
    assert (host_data / "e2e-keep.txt").read_text() == "kept\n"
    assert (host_data / "e2e-keep.txt").stat().st_uid == 110000
    assert (seed.lab.dir / "hostdata" / "hermes-fast").is_dir()
    r = seed.run("plan", "-c", str(seed.stack_file), "--json")
    ids = [a["id"] for a in json.loads(r.stdout)["actions"]]
    assert "gateway:ct:create" in ids and "hermes:ct:create" in ids, ids
