"""``apply`` runs doctor's checks first; ``plan`` checks lxc-pve only for a Docker install.

Against the lab's API on loopback (in-process, the least-privilege token; the runtime
only extracts archives and flips states: no container is started). Each write that
reaches the lab is counted on the server (its request log)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_lab_doctor import NODE, Served, served, stack_file
from typer.testing import CliRunner

from labstub import ExtractOnlyRuntime
from pvelab.backend.privileges import DEPLOY_PRIVS, DEPLOY_ROLE
from pvestack._engine import runc_guard
from pvestack._model import ActionKind, DesiredState, ObservedStack, Plan, StackSpec
from pvestack._plan._guest import guest_actions
from pvestack._steps import guest
from pvestack.cli import app

pytestmark = pytest.mark.contract
__all__ = ["served"]  # the fixture, shared with the doctor's contract tests

WRITES = ("POST", "PUT", "DELETE")


@pytest.fixture
def stack(served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    served.node.runtime = ExtractOnlyRuntime()  # type: ignore[assignment]
    # no guest SSH route in this test: doctor is its subject
    yield stack_file(served, tmp_path / "stack.toml", monkeypatch, '[guest]\nvia = "pct"\n')


def _writes(served: Served) -> list[tuple[str, str]]:
    return [(m, p) for m, p, _s in served.server.httpd.timings if m in WRITES]


def test_apply_stops_on_a_missing_privilege_before_any_change(served: Served, stack: Path) -> None:
    served.node.auth.set_role(DEPLOY_ROLE, set(DEPLOY_PRIVS) - {"VM.PowerMgmt"})
    served.server.httpd.timings.clear()
    r = CliRunner().invoke(app, ["apply", "-c", str(stack), "--json"])
    assert r.exit_code == 1, r.output
    assert _writes(served) == []  # nothing reached the lab but reads
    assert served.server.httpd.timings  # doctor did ask
    out = json.loads(r.stdout)
    assert out["results"] == [] and "doctor found 1 problem" in out["error"]
    (fail,) = [f for f in out["doctor"] if f["status"] == "fail"]
    assert "VM.PowerMgmt" in fail["evidence"] and "pveum acl modify /vms" in fail["fix"]
    text = CliRunner().invoke(app, ["apply", "-c", str(stack)])
    assert text.exit_code == 1 and _writes(served) == []
    assert "FAIL  privilege /vms/105" in text.output and "pveum role modify" in text.output
    assert "error: doctor found 1 problem" in text.output and "No changes" not in text.output


def test_apply_proceeds_when_all_is_well_and_skip_doctor_skips_it(
    served: Served, stack: Path
) -> None:
    served.server.httpd.timings.clear()
    r = CliRunner().invoke(app, ["apply", "-c", str(stack), "--json", "--no-verify"])
    out = json.loads(r.stdout)
    assert all(f["status"] == "pass" for f in out["doctor"]), out["doctor"]
    assert any(p.endswith("/lxc") for m, p in _writes(served) if m == "POST"), out
    assert r.exit_code == 0, r.output
    served.server.httpd.timings.clear()
    served.node.auth.set_role(DEPLOY_ROLE, set(DEPLOY_PRIVS) - {"Sys.Audit"})
    skipped = CliRunner().invoke(app, ["apply", "-c", str(stack), "--json", "--skip-doctor"])
    assert json.loads(skipped.stdout)["doctor"] is None
    paths = [p for _m, p, _s in served.server.httpd.timings]
    assert not any("/access/permissions" in p or "/apt/versions" in p for p in paths)


def _docker_plan(source: str) -> tuple[Plan, DesiredState]:
    from test_guest import VMID, hermes_spec  # noqa: PLC0415 (tests/unit helpers)

    spec: StackSpec = hermes_spec(docker=source)
    observed = ObservedStack("hermes", VMID, None, True)
    return Plan(guest_actions(spec, observed, VMID)), DesiredState((spec,))


@pytest.fixture
def unit_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "unit"))


@pytest.mark.usefixtures("unit_helpers")
def test_plan_with_a_docker_install_reads_lxc_pve_and_holds_containerd(served: Served) -> None:
    p, d = _docker_plan("docker-ce")
    c = served.client()
    ok = runc_guard(p, d, c)  # the lab's default: lxc-pve 6.0.5-3
    assert ok.plan == p and ok.notes == () and ok.api_calls == 1
    served.control("POST", "/_lab/packages", {"lxc-pve": "6.0.0-1"})
    old = runc_guard(p, d, c)
    (w,) = old.plan.warnings
    assert "lxc-pve 6.0.0-1 < 6.0.5-2" in w and "apt full-upgrade" in w
    (docker,) = [a for a in old.plan.actions if a.kind is ActionKind.GUEST_DOCKER]
    install = "\n".join(docker.steps[0].commands[0].argv)
    assert guest.INSTALL_HELD_CONTAINERD in install and "apt-mark hold containerd.io" in install
    assert "containerd.io held below 1.7.28-2" in docker.reason
    assert docker.after["containerd.io"] == "< 1.7.28-2 (held: lxc-pve < 6.0.5-2)"
    deb_p, deb_d = _docker_plan("debian")
    deb = runc_guard(deb_p, deb_d, c)  # warned, but Debian's docker.io is not held
    assert deb.plan.warnings and deb.plan.actions == deb_p.actions
    served.node.auth.set_role(DEPLOY_ROLE, set(DEPLOY_PRIVS) - {"Sys.Audit"})
    blind = runc_guard(p, d, c)
    assert blind.plan == p
    assert blind.notes == (
        f"could not read the node's package versions (Sys.Audit on /nodes/{NODE}): "
        "the runc/lxc-pve check was skipped",
    )


@pytest.mark.usefixtures("unit_helpers")
def test_plan_without_a_docker_install_reads_no_versions(served: Served) -> None:
    p, d = _docker_plan("docker-ce")
    rest = Plan(tuple(a for a in p.actions if a.kind is not ActionKind.GUEST_DOCKER))
    c = served.client()
    before = c.calls
    assert runc_guard(rest, d, c).plan == rest
    assert c.calls == before


SECRETS = """
[secrets]
litellm_key = { env = "LITELLM_API_KEY" }
"""
APP = """
[stack.app]
recipe = "hermes"
docker = "docker-ce"
gateway_url = "http://10.77.0.250:4000/v1"
gateway_key = "litellm_key"
default_model = "mock-gpt"
"""


def test_cli_plan_warns_about_runc_only_for_a_docker_install(
    served: Served, stack: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LITELLM_API_KEY", "sk-plan-test")
    served.control("POST", "/_lab/packages", {"lxc-pve": "6.0.0-1"})
    served.server.httpd.timings.clear()
    bare = CliRunner().invoke(app, ["plan", "-c", str(stack), "--json"])
    assert bare.exit_code == 0, bare.output
    assert json.loads(bare.stdout)["warnings"] == []  # no Docker to install: not read
    assert not any("/apt/versions" in p for _m, p, _s in served.server.httpd.timings)
    text = stack.read_text()
    head, sep, tail = text.partition("[[stack]]")
    stack.write_text(head + SECRETS + sep + tail + APP)
    r = CliRunner().invoke(app, ["plan", "-c", str(stack), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    (w,) = out["warnings"]
    assert "lxc-pve 6.0.0-1 < 6.0.5-2" in w and "apt full-upgrade" in w
    (docker,) = [a for a in out["actions"] if a["kind"] == "guest-docker"]
    assert "containerd.io held below 1.7.28-2" in docker["reason"]
    shown = CliRunner().invoke(app, ["plan", "-c", str(stack)])
    assert "warning: pve: lxc-pve 6.0.0-1 < 6.0.5-2" in shown.output
    served.node.auth.set_role(DEPLOY_ROLE, set(DEPLOY_PRIVS) - {"Sys.Audit"})
    blind = CliRunner().invoke(app, ["plan", "-c", str(stack)])
    assert blind.exit_code == 0, blind.output
    assert f"could not read the node's package versions (Sys.Audit on /nodes/{NODE})" in (
        blind.output
    )
