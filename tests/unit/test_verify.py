"""verify's logic on the real lab stack file (examples/lab.toml), with the node's answers
played back by a transport that answers ``pct exec`` commands as a healthy (or broken)
node does. The lab tests run the same checks against real containers."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from pvestack._commands import Command, Secret, Step
from pvestack._config import load_config
from pvestack._desired import build_desired
from pvestack._errors import TransportError
from pvestack._model import DesiredState
from pvestack.executors._base import CommandOutput
from pvestack.verify import RUNC_SYSCTL_ERROR, HttpAnswer, Status, _hermes, verify

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-unit-" + "4f" * 12
API_KEY = "hermes-api-" + "7a" * 10
ENV = {"LITELLM_MASTER_KEY": KEY, "HERMES_API_KEY": API_KEY, "PVESTACK_TOKEN_SECRET": "x" * 36}
HERMES_IP = "10.77.0.23"


def desired() -> DesiredState:
    cfg = load_config(ROOT / "examples" / "lab.toml", env=ENV)
    return build_desired(cfg, env=ENV)


Answer = Callable[[Command], CommandOutput | None]


class Node:
    """Answers the checks' commands like a node with the stacks up; ``broken`` overrides."""

    def __init__(self, *overrides: Answer) -> None:
        self.overrides = overrides
        self.seen: list[Command] = []

    def run_step(self, step: Step, *, on_output: Any = None) -> bool:
        raise AssertionError("verify never changes anything")

    def close(self) -> None:
        pass

    def capture(self, c: Command) -> CommandOutput:
        self.seen.append(c)
        for o in self.overrides:
            got = o(c)
            if got is not None:
                return got
        return healthy(c)


def ok(out: str = "") -> CommandOutput:
    return CommandOutput(0, out, "")


def healthy(c: Command) -> CommandOutput:
    a = c.argv
    line = " ".join(a)
    if a[0] == "stat" and a[-1].split("/")[-1].startswith(".pvestack-probe-"):
        return ok("110000:110000\n")
    if a[0] == "rm" or a[-3:-1] == ("rm", "-f"):
        return ok()
    if "setpriv" in a:
        return ok()
    if "stat" in a and a[-1].endswith("/.env"):
        return ok("600 10000:10000\n")
    if "docker" in a and "run" in a:
        return ok()
    if "docker" in a and "ps" in a and "--format" in a:
        project = next(x.rsplit("=", 1)[1] for x in a if x.startswith("label="))
        svc = {"gateway": "litellm", "hermes": "hermes"}[project]
        row = {
            "State": "running",
            "Status": "Up 2 minutes",
            "Labels": f"com.docker.compose.project={project},com.docker.compose.service={svc}",
        }
        return ok(json.dumps(row) + "\n")
    if "gateway_state.json" in line:
        return ok(json.dumps({"gateway_state": "running", "platforms": {}}))
    if "python3" in a and "/health/liveliness" in line:
        assert c.stdin is not None and c.stdin.reveal().decode().strip() == KEY
        models = json.dumps({"data": [{"id": "mock-gpt"}]})
        return ok(
            json.dumps(
                {
                    "live": {"status": 200, "body": '"I\'m alive!"'},
                    "models": {"status": 200, "body": models},
                }
            )
        )
    if "python3" in a:
        return ok(json.dumps({"status": 200, "body": {"data": [{"id": "mock-gpt"}]}}))
    if "hermes" in a and "-z" in a:
        return ok("OK (the lab gateway's mock model)\n")
    if "cat" in a and a[-1].startswith("/tmp/pvestack-usage-"):
        return ok(json.dumps({"completed": True, "failed": False, "model": "mock-gpt"}))
    if a[-6:] == ("ip", "-4", "-o", "addr", "show", "scope", "global")[-6:] and "ip" in a:
        return ok(f"2: eth0    inet {HERMES_IP}/24 brd 10.77.0.255 scope global eth0\n")
    if "ps" in a and "-aq" in a:
        return ok("abc123\n")
    if "inspect" in a:
        return ok('[{"Config": {"Env": ["HERMES_UID=10000"]}}]')
    raise AssertionError(f"unexpected command: {line}")


def api_get(path: str) -> Any:
    if path.endswith("/status/current"):
        return {"status": "running"}
    if path.endswith("/218/config"):
        return {
            "features": "keyctl=1,nesting=1",
            "mp0": "/var/lib/pvestack-lab/hostdata/hermes-data,mp=/data",
            "mp1": "/var/lib/pvestack-lab/hostdata/hermes-fast,mp=/fast",
        }
    return {"features": "keyctl=1,nesting=1"}


VMIDS = {"gateway": 217, "hermes": 218}
MODELS = json.dumps({"data": [{"id": "mock-gpt"}]})


class Web:
    """The operator's view over HTTP: a healthy gateway at its static address and
    Hermes's API server at the address read inside the CT; ``overrides`` first."""

    def __init__(self, *overrides: Callable[[str, str], HttpAnswer | None]) -> None:
        self.overrides = overrides
        self.seen: list[tuple[str, str, str | None]] = []

    def __call__(
        self, method: str, url: str, *, key: Secret | None = None, body: Any = None
    ) -> HttpAnswer:
        self.seen.append((method, url, key.value if key is not None else None))
        for o in self.overrides:
            got = o(method, url)
            if got is not None:
                return got
        if url == "http://10.77.0.250:4000/health/liveliness":
            return HttpAnswer(200, '"I\'m alive!"')
        if url == "http://10.77.0.250:4000/v1/models" and key is not None and key.value == KEY:
            return HttpAnswer(200, MODELS)
        if url == f"http://{HERMES_IP}:8642/v1/chat/completions" and key is not None:
            assert key.value == API_KEY and body["messages"][0]["content"] == "Reply with OK"
            answer = {"choices": [{"message": {"content": "OK (the lab gateway's mock model)"}}]}
            return HttpAnswer(200, json.dumps(answer))
        return HttpAnswer(0, "", "No route to host")


def by_id(node: Node | None, web: Web | None = None) -> dict[str, Any]:
    report = verify(desired(), VMIDS, api_get, node, http=web or Web())
    return {f"{r.stack}/{r.id}": r for r in report.results}


def test_all_green() -> None:
    node, web = Node(), Web()
    report = verify(desired(), VMIDS, api_get, node, http=web)
    assert report.ok
    bad = [r for r in report.results if r.status in (Status.FAIL, Status.UNVERIFIED)]
    assert bad == []
    ids = {f"{r.stack}/{r.id}" for r in report.results if r.status is Status.PASS}
    assert {
        "gateway/gateway.health",
        "gateway/gateway.models",
        "gateway/gateway.http.live",
        "gateway/gateway.http.models",
        "hermes/llm.roundtrip",
        "hermes/hermes.api.chat",
    } <= ids
    # the keys never travel in argv; over HTTP only as the Bearer header of their own URL
    assert all(KEY not in " ".join(c.argv) and API_KEY not in " ".join(c.argv) for c in node.seen)
    assert {(u, k) for _, u, k in web.seen if k} == {
        ("http://10.77.0.250:4000/v1/models", KEY),
        (f"http://{HERMES_IP}:8642/v1/chat/completions", API_KEY),
    }
    data = report.to_json()
    assert data["ok"] is True and data["format_version"] == 1


def test_docker_down_fails_once_and_skips_what_needs_it() -> None:
    def docker_down(c: Command) -> CommandOutput | None:
        if "218" in c.argv and "docker" in c.argv:
            return CommandOutput(1, "", "Cannot connect to the Docker daemon")
        return None

    checks = by_id(Node(docker_down))
    failed = {k for k, r in checks.items() if r.status is Status.FAIL}
    assert failed == {"hermes/docker.engine"}
    assert "systemctl status docker" in checks["hermes/docker.engine"].fix
    assert checks["hermes/llm.models"].status is Status.SKIP
    assert "docker.engine failed" in checks["hermes/app.containers"].evidence
    assert checks["hermes/secrets.env:/opt/hermes/.env"].status is Status.PASS


def test_wrong_key_is_named_and_secrets_are_masked() -> None:
    def refused(c: Command) -> CommandOutput | None:
        if "python3" in c.argv and "hermes" in c.argv:
            body = f"Authentication Error, invalid key {KEY}"
            return ok(json.dumps({"status": 401, "body": body}))
        return None

    checks = by_id(Node(refused))
    c = checks["hermes/llm.models"]
    assert c.status is Status.FAIL and "refused the key" in c.fix
    assert KEY not in c.evidence and "***" in c.evidence
    assert checks["hermes/llm.roundtrip"].status is Status.SKIP
    assert checks["hermes/hermes.api.chat"].status is Status.SKIP  # one broken key, one fail


def test_a_leaked_secret_in_docker_inspect_fails() -> None:
    def leak(c: Command) -> CommandOutput | None:
        if "inspect" in c.argv and "217" in c.argv:
            return ok(json.dumps([{"Config": {"Env": [f"LITELLM_MASTER_KEY={KEY}"]}}]))
        return None

    checks = by_id(Node(leak))
    c = checks["gateway/secrets.inspect"]
    assert c.status is Status.FAIL
    assert "gateway_master_key" in c.evidence and KEY not in c.evidence


def test_stopped_ct_skips_the_inside_checks() -> None:
    def stopped(path: str) -> Any:
        if path.endswith("218/status/current"):
            return {"status": "stopped"}
        return api_get(path)

    node = Node()
    report = verify(desired(), VMIDS, stopped, node, http=Web())
    checks = {f"{r.stack}/{r.id}": r for r in report.results}
    assert not report.ok
    assert {k for k, r in checks.items() if r.status is Status.FAIL} == {"hermes/ct.running"}
    assert checks["hermes/mount./data"].status is Status.SKIP
    assert not any("218" in c.argv for c in node.seen)


def test_unknown_model_names_the_served_ones() -> None:
    cfg = load_config(ROOT / "examples" / "lab.toml", env=ENV)
    d = build_desired(cfg, env=ENV)
    hermes = d.stack("hermes")
    assert hermes.app is not None
    assert hermes.app.verify is not None
    app = replace(hermes.app, verify=replace(hermes.app.verify, default_model="gpt-nope"))
    d2 = DesiredState(tuple(replace(s, app=app) if s.name == "hermes" else s for s in d.stacks))
    report = verify(d2, VMIDS, api_get, Node(), http=Web())
    c = next(r for r in report.results if r.id == "llm.models")
    assert c.status is Status.FAIL
    assert "'gpt-nope' is not served" in c.fix and "mock-gpt" in c.fix


def test_a_gateway_still_starting_is_waited_for() -> None:
    calls = {"n": 0}

    def booting(c: Command) -> CommandOutput | None:
        if "/health/liveliness" in " ".join(c.argv):
            calls["n"] += 1
            if calls["n"] == 1:
                refused = {"status": 0, "body": "[Errno 111] Connection refused"}
                return ok(json.dumps({"live": refused, "models": refused}))
        return None

    checks = by_id(Node(booting))
    assert calls["n"] == 2
    assert checks["gateway/gateway.health"].status is Status.PASS


def test_a_gateway_that_never_answers_fails_after_the_wait(monkeypatch: Any) -> None:
    monkeypatch.setattr("pvestack.verify._core.STARTUP_WAIT", 0.0)

    def down(c: Command) -> CommandOutput | None:
        if "/health/liveliness" in " ".join(c.argv):
            refused = {"status": 0, "body": "[Errno 111] Connection refused"}
            return ok(json.dumps({"live": refused, "models": refused}))
        return None

    checks = by_id(Node(down))
    c = checks["gateway/gateway.health"]
    assert c.status is Status.FAIL and "Connection refused" in c.evidence
    assert "docker logs litellm" in c.fix
    assert "gateway/gateway.models" not in checks


# ---------------------------------------------------------------- honest: unverified


def test_without_a_transport_the_inside_checks_are_unverified_not_green() -> None:
    report = verify(desired(), VMIDS, api_get, None, http=Web())
    checks = {f"{r.stack}/{r.id}": r for r in report.results}
    assert not report.ok
    unverified = {k for k, r in checks.items() if r.status is Status.UNVERIFIED}
    assert {
        "hermes/mount./data",
        "hermes/docker.engine",
        "gateway/docker.engine",
        "hermes/secrets.env:/opt/hermes/.env",
        "gateway/secrets.inspect",
    } <= unverified
    assert "no transport into the container" in checks["hermes/docker.engine"].evidence
    # what the API and the operator's machine can see is still checked
    assert checks["hermes/ct.running"].status is Status.PASS
    assert checks["gateway/gateway.http.live"].status is Status.PASS
    assert checks["gateway/gateway.http.models"].status is Status.PASS
    assert report.to_json()["ok"] is False


def test_an_unreachable_ct_is_unverified_with_the_reason() -> None:
    class Down(Node):
        def capture(self, c: Command) -> CommandOutput:
            if "218" in c.argv:
                raise TransportError("ssh to 10.77.0.23:22: connection timed out")
            return super().capture(c)

    checks = by_id(Down())
    c = checks["hermes/docker.engine"]
    assert c.status is Status.UNVERIFIED and "connection timed out" in c.evidence
    assert checks["hermes/mount./data"].status is Status.UNVERIFIED
    assert checks["gateway/app.containers"].status is Status.PASS


def test_a_gateway_unreachable_from_here_is_unverified() -> None:
    def no_route(method: str, url: str) -> HttpAnswer | None:
        return HttpAnswer(0, "", "No route to host") if ":4000/" in url else None

    checks = by_id(Node(), Web(no_route))
    for cid in ("gateway/gateway.http.live", "gateway/gateway.http.models"):
        assert checks[cid].status is Status.UNVERIFIED, cid
        assert "No route to host" in checks[cid].evidence
    assert checks["gateway/gateway.health"].status is Status.PASS  # inside, it answers


def test_a_platform_without_a_token_is_the_only_skip_on_a_green_stack() -> None:
    checks = by_id(Node())
    skipped = {k for k, r in checks.items() if r.status is Status.SKIP}
    assert skipped == {f"hermes/hermes.platform.{p}" for p in _hermes.PLATFORMS}


# ---------------------------------------------------------------- the API server, runc


def test_hermes_api_answer_is_judged_not_the_status_code() -> None:
    def failed_model(method: str, url: str) -> HttpAnswer | None:
        if url.endswith(":8642/v1/chat/completions"):
            text = "API call failed after 3 retries: Connection error."
            return HttpAnswer(200, json.dumps({"choices": [{"message": {"content": text}}]}))
        return None

    c = by_id(Node(), Web(failed_model))["hermes/hermes.api.chat"]
    assert c.status is Status.FAIL and "Connection error" in c.evidence


def test_hermes_api_wrong_key_is_named() -> None:
    def refused(method: str, url: str) -> HttpAnswer | None:
        return HttpAnswer(401, '{"error": "invalid key"}') if ":8642/" in url else None

    c = by_id(Node(), Web(refused))["hermes/hermes.api.chat"]
    assert c.status is Status.FAIL and "api_server key" in c.fix


def test_the_runc_breakage_is_recognised_with_the_node_fix() -> None:
    text = (
        "docker: Error response from daemon: failed to create task for container: "
        "failed to create shim task: OCI runtime create failed: runc create failed: "
        f"unable to start container process: error during container init: {RUNC_SYSCTL_ERROR}"
        ": reopen fd 8: permission denied: unknown."
    )

    def runc(c: Command) -> CommandOutput | None:
        if "218" in c.argv and "run" in c.argv and "docker" in c.argv:
            return CommandOutput(126, "", text)
        return None

    c = by_id(Node(runc))["hermes/docker.engine"]
    assert c.status is Status.FAIL
    assert "lxc-pve >= 6.0.5-2" in c.fix and "apt full-upgrade" in c.fix
    assert "pct reboot 218" in c.fix
    other = by_id(
        Node(lambda c: CommandOutput(1, "", "Cannot connect") if "run" in c.argv else None)
    )
    assert "lxc-pve" not in other["hermes/docker.engine"].fix


def test_the_api_servers_address_comes_from_the_api_when_it_knows_it() -> None:
    def with_interfaces(path: str) -> Any:
        if path.endswith("/218/interfaces"):
            return [
                {"name": "lo", "inet": "127.0.0.1/8"},
                {"name": "eth0", "inet": "10.77.0.99/24"},
            ]
        return api_get(path)

    node = Node()
    web = Web(
        lambda m, u: (
            HttpAnswer(200, json.dumps({"choices": [{"message": {"content": "OK"}}]}))
            if u == "http://10.77.0.99:8642/v1/chat/completions"
            else None
        )
    )
    report = verify(desired(), VMIDS, with_interfaces, node, http=web)
    c = next(r for r in report.results if r.id == "hermes.api.chat")
    assert c.status is Status.PASS, c
    assert not any("addr" in c.argv for c in node.seen)  # no need to look inside


def test_console_only_mounts_are_proved_inside_and_the_node_is_never_asked() -> None:
    """The guest route reaches the containers, not the node: the bind-mount probe is
    judged by its owner inside (the host side is the id map's image, said so), green."""

    def inside(c: Command) -> CommandOutput | None:
        a = c.argv
        if a[:2] == ("pct", "exec") and "stat" in a and ".pvestack-probe-" in a[-1]:
            return ok("10000:10000\n")
        return None

    node = Node(inside)
    report = verify(desired(), VMIDS, api_get, node, http=Web(), node_root=False)
    mounts = [r for r in report.results if r.id.startswith("mount.")]
    assert mounts and all(r.status is Status.PASS for r in mounts), mounts
    assert all("the node itself is not read" in r.evidence for r in mounts)
    assert all(c.argv[0] == "pct" for c in node.seen), "no node command without node root"
    assert report.ok

    def wrong_owner(c: Command) -> CommandOutput | None:
        a = c.argv
        if a[:2] == ("pct", "exec") and "stat" in a and ".pvestack-probe-" in a[-1]:
            return ok("0:0\n")
        return None

    bad = verify(desired(), VMIDS, api_get, Node(wrong_owner), http=Web(), node_root=False)
    assert not bad.ok
    assert any(r.id.startswith("mount.") and r.status is Status.FAIL for r in bad.results)
