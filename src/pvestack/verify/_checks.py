"""The checks. Each returns a ``CheckResult`` with evidence and, on failure, what to do.

Reads go through two doors only: ``api_get`` (the token, read-only) and a root
transport's ``capture`` (``pct exec`` on the node). Every text that leaves here
is masked with the stack's secrets.
"""

from __future__ import annotations

import json
import shlex
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pvestack._commands import Command, Payload, Secret, cmd, mask
from pvestack._model import DesiredState, StackSpec
from pvestack.executors._base import CommandOutput, RootTransport

ApiGet = Callable[[str], Any]


class Status(StrEnum):
    PASS = "pass"  # noqa: S105 (a status, not a password)
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class CheckResult:
    stack: str
    id: str
    title: str
    status: Status
    evidence: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return {
            "stack": self.stack,
            "id": self.id,
            "title": self.title,
            "status": self.status.value,
            "evidence": self.evidence,
            "fix": self.fix,
        }


@dataclass(frozen=True)
class VerifyReport:
    results: tuple[CheckResult, ...]

    @property
    def ok(self) -> bool:
        return all(r.status is not Status.FAIL for r in self.results)

    def failed(self) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if r.status is Status.FAIL)

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": 1,
            "ok": self.ok,
            "checks": [r.to_json() for r in self.results],
        }


# How long a check waits for an app that is still starting (just applied or restarted)
STARTUP_WAIT = 90.0

NO_ROOT = (
    "no root transport: this check runs `pct exec` on the node; configure [root.ssh] "
    "(or PVESTACK_SSH_*) to run it"
)


class _Ctx:
    def __init__(
        self,
        stack: StackSpec,
        vmid: int,
        api_get: ApiGet,
        transport: RootTransport | None,
        secrets: Sequence[Secret],
    ) -> None:
        self.stack = stack
        self.vmid = vmid
        self.api_get = api_get
        self.transport = transport
        self.secrets = tuple(secrets)
        self.base = f"/nodes/{stack.container.node}/lxc/{vmid}"
        self.startup_wait = STARTUP_WAIT

    def result(
        self, cid: str, title: str, status: Status, evidence: str, fix: str = ""
    ) -> CheckResult:
        return CheckResult(
            self.stack.name,
            cid,
            title,
            status,
            mask(evidence.strip(), self.secrets),
            mask(fix, self.secrets),
        )

    def pct(self, *argv: str) -> Command:
        return cmd("pct", "exec", str(self.vmid), "--", *argv)

    def run(self, command: Command) -> CommandOutput:
        assert self.transport is not None
        out = self.transport.capture(command)
        return CommandOutput(
            out.returncode, mask(out.stdout, self.secrets), mask(out.stderr, self.secrets)
        )


def _features(value: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in (value or "").split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def _mount_target(value: str) -> tuple[str, str]:
    parts = value.split(",")
    src = parts[0]
    mp = next((p[3:] for p in parts[1:] if p.startswith("mp=")), "")
    return src, mp


def check_container(ctx: _Ctx) -> Iterator[CheckResult]:
    spec = ctx.stack.container
    status = ctx.api_get(f"{ctx.base}/status/current")
    state = str(status.get("status", "?")) if isinstance(status, Mapping) else "?"
    yield ctx.result(
        "ct.running",
        f"CT {ctx.vmid} is running",
        Status.PASS if state == "running" else Status.FAIL,
        f"status/current: status={state}",
        "" if state == "running" else f"start it: `pvestack apply` (or `pct start {ctx.vmid}`)",
    )
    config = ctx.api_get(f"{ctx.base}/config")
    conf: Mapping[str, Any] = config if isinstance(config, Mapping) else {}
    have = _features(conf.get("features"))
    missing = {k: v for k, v in spec.features.items() if have.get(k) != v}
    yield ctx.result(
        "ct.features",
        "config holds the features",
        Status.FAIL if missing else Status.PASS,
        f"features: {conf.get('features', '(none)')}",
        ""
        if not missing
        else "features missing: "
        + ",".join(f"{k}={v}" for k, v in sorted(missing.items()))
        + "; run `pvestack apply` with root (ssh or console)",
    )
    mounts = {**{m.key: m.pve_value for m in spec.bind_mounts}}
    for m in spec.volume_mounts:
        mounts[m.key] = m.ct_path
    bad: list[str] = []
    for key, want in sorted(mounts.items()):
        got = conf.get(key)
        if got is None:
            bad.append(f"{key} absent (want {want})")
            continue
        want_src, want_mp = _mount_target(want) if "," in want else ("", want)
        got_src, got_mp = _mount_target(str(got))
        if got_mp != want_mp or (want_src and got_src != want_src):
            bad.append(f"{key}={got} (want {want})")
    ev = "; ".join(f"{k}: {conf.get(k)}" for k in sorted(mounts)) or "no mounts wanted"
    yield ctx.result(
        "ct.mounts",
        "config holds the mount points",
        Status.FAIL if bad else Status.PASS,
        ev,
        ("; ".join(bad) + "; run `pvestack apply` with root") if bad else "",
    )


def check_mounts_writable(ctx: _Ctx) -> Iterator[CheckResult]:
    spec = ctx.stack.container
    for m in spec.bind_mounts:
        cid = f"mount.{m.ct_path}"
        title = f"{m.ct_path} is writable inside and lands on {m.host_path}"
        if m.read_only:
            yield ctx.result(cid, title, Status.SKIP, "mount is read-only")
            continue
        if ctx.transport is None:
            yield ctx.result(cid, title, Status.SKIP, NO_ROOT)
            continue
        want_uid = spec.idmap.host_uid(m.owner_uid)
        want_gid = spec.idmap.host_gid(m.owner_gid)
        name = f".pvestack-probe-{uuid.uuid4().hex[:8]}"
        inside = f"{m.ct_path.rstrip('/')}/{name}"
        host = f"{m.host_path.rstrip('/')}/{name}"
        write = ctx.run(
            ctx.pct(
                "setpriv",
                f"--reuid={m.owner_uid}",
                f"--regid={m.owner_gid}",
                "--clear-groups",
                "sh",
                "-c",
                f"echo pvestack > {shlex.quote(inside)}",
            )
        )
        if write.returncode != 0:
            yield ctx.result(
                cid,
                title,
                Status.FAIL,
                f"write as uid {m.owner_uid} inside failed: {write.stderr or write.stdout}",
                f"the host dir must be owned by {want_uid}:{want_gid} "
                f"(uid {m.owner_uid} inside): `chown {want_uid}:{want_gid} {m.host_path}` "
                "or `pvestack apply` with root",
            )
            continue
        stat = ctx.run(cmd("stat", "-c", "%u:%g", host))
        ctx.run(cmd("rm", "-f", host))
        got = stat.stdout.strip()
        ok = stat.returncode == 0 and got == f"{want_uid}:{want_gid}"
        yield ctx.result(
            cid,
            title,
            Status.PASS if ok else Status.FAIL,
            f"probe {host} on the host: owner {got or stat.stderr.strip()} "
            f"(want {want_uid}:{want_gid})",
            ""
            if ok
            else f"the bind mount does not land on {m.host_path} with the mapped owner; "
            "check the mount point and the id map",
        )


def check_docker(ctx: _Ctx, image: str | None) -> Iterator[CheckResult]:
    title = "the Docker engine runs a container"
    if ctx.transport is None:
        yield ctx.result("docker.engine", title, Status.SKIP, NO_ROOT)
        return
    if image is None:
        out = ctx.run(ctx.pct("docker", "info", "--format", "{{.ServerVersion}}"))
        ok = out.returncode == 0
        yield ctx.result(
            "docker.engine",
            "the Docker engine answers",
            Status.PASS if ok else Status.FAIL,
            f"docker info: {(out.stdout or out.stderr).strip()}",
            "" if ok else "start the engine: `systemctl start docker` in the CT",
        )
        return
    out = ctx.run(
        ctx.pct("docker", "run", "--rm", "--network", "none", "--entrypoint", "true", image)
    )
    ok = out.returncode == 0
    yield ctx.result(
        "docker.engine",
        title,
        Status.PASS if ok else Status.FAIL,
        f"docker run --rm {image}: exit {out.returncode} {out.stderr.strip()}",
        ""
        if ok
        else "check `systemctl status docker` inside the CT (nesting=1 and keyctl=1 needed)",
    )


def _compose_containers(ctx: _Ctx, project: str) -> tuple[list[dict[str, Any]], str]:
    out = ctx.run(
        ctx.pct(
            "docker",
            "ps",
            "-a",
            "--filter",
            f"label=com.docker.compose.project={project}",
            "--format",
            "{{json .}}",
        )
    )
    if out.returncode != 0:
        return [], out.stderr or out.stdout
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.strip().startswith("{")]
    return rows, ""


def check_app_containers(ctx: _Ctx) -> Iterator[CheckResult]:
    app = ctx.stack.app
    if app is None:
        return
    title = "the app's containers are running"
    if ctx.transport is None:
        yield ctx.result("app.containers", title, Status.SKIP, NO_ROOT)
        return
    project = app.verify.get("project", ctx.stack.name)
    rows, err = _compose_containers(ctx, project)
    if err:
        yield ctx.result("app.containers", title, Status.FAIL, err, "is Docker running?")
        return
    by_service = {_label(r, "com.docker.compose.service"): r for r in rows if isinstance(r, dict)}
    evidence = []
    failed = []
    for service in app.services or tuple(by_service):
        row = by_service.get(service)
        if row is None:
            failed.append(f"{service}: no container")
            continue
        state = str(row.get("State", ""))
        status = str(row.get("Status", ""))
        evidence.append(f"{service}: {state} ({status})")
        if state != "running" or "unhealthy" in status or "health: starting" in status:
            failed.append(f"{service}: {state} ({status})")
    yield ctx.result(
        "app.containers",
        title,
        Status.FAIL if failed or not by_service else Status.PASS,
        "; ".join(evidence) or "no containers",
        (
            f"{'; '.join(failed)}: see `pct exec {ctx.vmid} -- docker logs <container>` "
            "and run `pvestack apply`"
        )
        if failed or not by_service
        else "",
    )


def _label(row: Mapping[str, Any], name: str) -> str:
    for part in str(row.get("Labels", "")).split(","):
        if part.startswith(name + "="):
            return part.split("=", 1)[1]
    return str(row.get("Names", ""))


def check_hermes(ctx: _Ctx) -> Iterator[CheckResult]:
    app = ctx.stack.app
    if app is None or app.recipe != "hermes":
        return
    meta = app.verify
    data_dir = meta.get("data_dir", "/opt/hermes")
    container = meta.get("container", "hermes")
    if ctx.transport is None:
        yield ctx.result("hermes.gateway", "Hermes gateway is running", Status.SKIP, NO_ROOT)
        return
    deadline = time.monotonic() + ctx.startup_wait
    while True:
        out = ctx.run(ctx.pct("cat", f"{data_dir}/gateway_state.json"))
        state: dict[str, Any] = {}
        if out.returncode == 0:
            try:
                state = json.loads(out.stdout)
            except ValueError:
                state = {}
        gstate = state.get("gateway_state")
        # just (re)started: no state file yet, or still starting; give it a moment
        if gstate not in (None, "starting") or time.monotonic() >= deadline:
            break
        time.sleep(3)
    yield ctx.result(
        "hermes.gateway",
        "Hermes gateway_state is running",
        Status.PASS if gstate == "running" else Status.FAIL,
        f"{data_dir}/gateway_state.json: gateway_state={gstate}"
        if out.returncode == 0
        else f"cannot read {data_dir}/gateway_state.json: {out.stderr.strip()}",
        "" if gstate == "running" else f"see `pct exec {ctx.vmid} -- docker logs {container}`",
    )
    platforms = state.get("platforms") if isinstance(state.get("platforms"), dict) else {}
    assert isinstance(platforms, dict)
    configured = [p for p in meta.get("platforms", "").split(",") if p]
    for p in ("telegram", "discord", "slack", "matrix", "signal"):
        cid = f"hermes.platform.{p}"
        if p not in configured:
            yield ctx.result(cid, f"{p} connected", Status.SKIP, "no token configured")
            continue
        pstate = (
            (platforms.get(p) or {}).get("state") if isinstance(platforms.get(p), dict) else None
        )
        yield ctx.result(
            cid,
            f"{p} connected",
            Status.PASS if pstate == "connected" else Status.FAIL,
            f"platforms.{p}.state={pstate}",
            ""
            if pstate == "connected"
            else f"check the {p} token and allow-list; "
            f"`pct exec {ctx.vmid} -- docker logs {container}`",
        )
    yield from check_llm_path(ctx, container)


# Runs inside the Hermes container: the key comes from the container's own environment
# (HERMES_HOME/.env is loaded by hermes; we read it here), never from our argv.
_MODELS_PROBE = r"""
import json, os, sys, urllib.request
def env_from_file(path, name):
    try:
        for line in open(path, encoding="utf-8"):
            k, _, v = line.strip().partition("=")
            if k == name:
                return v.strip().strip('"').strip("'")
    except OSError:
        return None
url, key_env, env_file = sys.argv[1], sys.argv[2], sys.argv[3]
key = os.environ.get(key_env) or env_from_file(env_file, key_env) or ""
req = urllib.request.Request(
    url.rstrip("/") + "/models", headers={"Authorization": "Bearer " + key}
)
try:
    with urllib.request.urlopen(req, timeout=15) as r:
        print(json.dumps({"status": r.status, "body": json.load(r)}))
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code, "body": e.read().decode(errors="replace")[:300]}))
except Exception as e:
    print(json.dumps({"status": 0, "body": str(e)[:300]}))
"""


def _roundtrip_skipped(ctx: _Ctx) -> CheckResult:
    return ctx.result(
        "llm.roundtrip",
        "a model round trip through Hermes completes",
        Status.SKIP,
        "not run: llm.models failed (fix that first)",
    )


def check_llm_path(ctx: _Ctx, container: str) -> Iterator[CheckResult]:
    app = ctx.stack.app
    assert app is not None
    meta = app.verify
    url = meta.get("gateway_url", "")
    model = meta.get("default_model", "")
    key_env = meta.get("key_env", "LITELLM_API_KEY")
    out = ctx.run(
        ctx.pct(
            "docker",
            "exec",
            container,
            "python3",
            "-c",
            _MODELS_PROBE,
            url,
            key_env,
            "/opt/data/.env",
        )
    )
    try:
        answer = json.loads(out.stdout.strip().splitlines()[-1]) if out.stdout.strip() else {}
    except ValueError:
        answer = {}
    status = answer.get("status")
    body = answer.get("body")
    ids = [m.get("id") for m in body.get("data", [])] if isinstance(body, dict) else []
    if status != 200:
        fix = (
            "the gateway refused the key: check the gateway key secret"
            if status in (400, 401, 403)
            else f"the gateway at {url} is unreachable from the Hermes container"
        )
        yield ctx.result(
            "llm.models",
            "the gateway's /v1/models answers with the key",
            Status.FAIL,
            f"GET {url}/models: {status} {str(body)[:200] if body else out.stderr.strip()}",
            fix,
        )
        yield _roundtrip_skipped(ctx)
        return
    yield ctx.result(
        "llm.models",
        "the gateway's /v1/models answers with the key",
        Status.PASS if model in ids else Status.FAIL,
        f"GET {url}/models: 200, models: {', '.join(str(i) for i in ids)}",
        ""
        if model in ids
        else f"default model {model!r} is not served by the gateway; set default_model "
        f"to one of: {', '.join(str(i) for i in ids)}",
    )
    if model not in ids:
        yield _roundtrip_skipped(ctx)
        return
    usage = f"/tmp/pvestack-usage-{uuid.uuid4().hex[:8]}.json"
    # as the data dir's owner (HERMES_UID), so the run leaves no root-owned files in /opt/data
    user = f"{meta.get('uid', '10000')}:{meta.get('gid', meta.get('uid', '10000'))}"
    run = ctx.run(
        ctx.pct(
            "docker",
            "exec",
            "-u",
            user,
            container,
            "hermes",
            "-z",
            "Reply with OK",
            "--usage-file",
            usage,
        )
    )
    read = ctx.run(ctx.pct("docker", "exec", container, "cat", usage))
    ctx.run(ctx.pct("docker", "exec", container, "rm", "-f", usage))
    report: dict[str, Any] = {}
    try:
        report = json.loads(read.stdout) if read.returncode == 0 else {}
    except ValueError:
        report = {}
    ok = bool(report.get("completed")) and not report.get("failed")
    yield ctx.result(
        "llm.roundtrip",
        "a model round trip through Hermes completes",
        Status.PASS if ok else Status.FAIL,
        f"hermes -z exit {run.returncode}, answer {run.stdout.strip()[:80]!r}; usage: "
        f"completed={report.get('completed')} failed={report.get('failed')} "
        f"api_calls={report.get('api_calls')} model={report.get('model')}"
        + (f" failure={report.get('failure')}" if report.get("failure") else ""),
        "" if ok else f"see `pct exec {ctx.vmid} -- docker logs {container}`",
    )


# Runs inside the LiteLLM container: the master key comes on stdin, never in argv.
_GATEWAY_PROBE = r"""
import json, sys, urllib.error, urllib.request
port = sys.argv[1]
key = sys.stdin.readline().strip()
def get(path, auth):
    headers = {"Authorization": "Bearer " + key} if auth else {}
    req = urllib.request.Request("http://127.0.0.1:" + port + path, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read().decode(errors="replace")
            return {"status": r.status, "body": body[:2000]}
    except urllib.error.HTTPError as e:
        return {"status": e.code, "body": e.read().decode(errors="replace")[:300]}
    except Exception as e:
        return {"status": 0, "body": str(e)[:300]}
print(json.dumps({"live": get("/health/liveliness", False), "models": get("/v1/models", True)}))
"""


def check_litellm(ctx: _Ctx) -> Iterator[CheckResult]:
    """The LiteLLM gateway: alive, and ``/v1/models`` with the master key lists the models."""
    app = ctx.stack.app
    if app is None or app.recipe != "litellm":
        return
    meta = app.verify
    container = meta.get("container", "litellm")
    port = meta.get("port", "4000")
    want = [m for m in meta.get("models", "").split(",") if m]
    if ctx.transport is None:
        yield ctx.result("gateway.health", "the gateway is alive", Status.SKIP, NO_ROOT)
        return
    key = next((s for s in app.secrets if s.name == meta.get("master_key")), None)
    key = key or (app.secrets[0] if app.secrets else None)
    probe = cmd(
        "pct",
        "exec",
        str(ctx.vmid),
        "--",
        "docker",
        "exec",
        "-i",
        container,
        "python3",
        "-c",
        _GATEWAY_PROBE,
        port,
        stdin=Payload((key, "\n") if key is not None else ("\n",)),
    )
    deadline = time.monotonic() + ctx.startup_wait
    while True:
        out = ctx.run(probe)
        try:
            line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
            answer = json.loads(line) if line else {}
        except ValueError:
            answer = {}
        live = answer.get("live") or {}
        models = answer.get("models") or {}
        live_ok = live.get("status") == 200 and "alive" in str(live.get("body", "")).lower()
        # LiteLLM needs ~20 s after a (re)start before it answers
        if live_ok or live.get("status") not in (0, 502, 503) or time.monotonic() >= deadline:
            break
        time.sleep(3)
    yield ctx.result(
        "gateway.health",
        f"the gateway answers /health/liveliness on port {port}",
        Status.PASS if live_ok else Status.FAIL,
        f"GET /health/liveliness: {live.get('status')} {str(live.get('body', ''))[:80]}"
        if answer
        else f"probe in container {container} failed: exit {out.returncode} "
        f"{(out.stderr or out.stdout).strip()[:300]}",
        ""
        if live_ok
        else f"see `pct exec {ctx.vmid} -- docker logs {container}` (LiteLLM needs ~20 s to "
        "start; a bad config.yaml keeps it restarting)",
    )
    if not live_ok:
        return
    status = models.get("status")
    ids: list[str] = []
    try:
        body = json.loads(models.get("body", ""))
        ids = [str(m.get("id")) for m in body.get("data", []) if isinstance(m, dict)]
    except (ValueError, AttributeError):
        body = None
    missing = [m for m in want if m not in ids]
    ok = status == 200 and not missing
    if status != 200:
        fix = (
            "the gateway refused the master key: config.yaml's master_key and the "
            f"{meta.get('master_key', 'master key')} secret differ; run `pvestack apply`"
            if status in (400, 401, 403)
            else "the gateway does not answer /v1/models"
        )
        ev = f"GET /v1/models with the master key: {status} {str(models.get('body'))[:200]}"
    else:
        fix = (
            f"models missing from the gateway: {', '.join(missing)}; run `pvestack apply` "
            "(config.yaml model_list)"
            if missing
            else ""
        )
        ev = f"GET /v1/models with the master key: 200, models: {', '.join(ids) or '(none)'}"
    yield ctx.result(
        "gateway.models",
        "the gateway lists the configured models (master key)",
        Status.PASS if ok else Status.FAIL,
        ev + f" (want {', '.join(want)})",
        fix,
    )


def check_secrets(ctx: _Ctx) -> Iterator[CheckResult]:
    app = ctx.stack.app
    if app is None:
        return
    env_files = [f for f in app.files if f.path.endswith("/.env")]
    for f in env_files:
        cid = f"secrets.env:{f.path}"
        title = f"{f.path} is mode 600 and owned by the data dir's owner"
        if ctx.transport is None:
            yield ctx.result(cid, title, Status.SKIP, NO_ROOT)
            continue
        out = ctx.run(ctx.pct("stat", "-c", "%a %u:%g", f.path))
        got = out.stdout.strip()
        want = f"600 {f.uid}:{f.gid}"
        yield ctx.result(
            cid,
            title,
            Status.PASS if got == want else Status.FAIL,
            f"stat {f.path}: {got or out.stderr.strip()} (want {want})",
            ""
            if got == want
            else f"`pvestack apply` rewrites it; or chmod 600 / chown {f.uid}:{f.gid}",
        )
    secrets = [s for s in app.secrets if s.value]
    if not secrets:
        return
    title = "no secret appears in `docker inspect`"
    if ctx.transport is None:
        yield ctx.result("secrets.inspect", title, Status.SKIP, NO_ROOT)
        return
    ids = ctx.transport.capture(ctx.pct("docker", "ps", "-aq"))
    names = ids.stdout.split()
    if not names:
        yield ctx.result("secrets.inspect", title, Status.SKIP, "no containers")
        return
    raw = ctx.transport.capture(ctx.pct("docker", "inspect", *names))  # unmasked on purpose
    leaked = sorted({s.name for s in secrets if s.value in raw.stdout})
    yield ctx.result(
        "secrets.inspect",
        title,
        Status.FAIL if leaked else Status.PASS,
        f"inspected {len(names)} container(s); leaked: {', '.join(leaked) or 'none'}",
        "secrets must live in the app's data-dir .env, not in the compose environment/env_file"
        if leaked
        else "",
    )


def _dependent(ctx: _Ctx, after: str) -> tuple[tuple[str, str], ...]:
    """The checks that need what ``after`` checks (id, title), in run order."""
    app = ctx.stack.app
    out: list[tuple[str, str]] = []
    if after == "ct.running":
        out += [
            (f"mount.{m.ct_path}", f"{m.ct_path} is writable")
            for m in ctx.stack.container.bind_mounts
        ]
        if app is not None:
            out.append(("docker.engine", "the Docker engine runs a container"))
    if app is None:
        return tuple(out)
    if after in ("ct.running", "docker.engine"):
        out.append(("app.containers", "the app's containers are running"))
    if app.recipe == "hermes":
        out += [
            ("hermes.gateway", "Hermes gateway_state is running"),
            ("llm.models", "the gateway's /v1/models answers with the key"),
            ("llm.roundtrip", "a model round trip through Hermes completes"),
        ]
    elif app.recipe == "litellm":
        out += [
            ("gateway.health", "the gateway answers /health/liveliness"),
            ("gateway.models", "the gateway lists the configured models (master key)"),
        ]
    if after in ("ct.running", "docker.engine") and any(s.value for s in app.secrets):
        out.append(("secrets.inspect", "no secret appears in `docker inspect`"))
    return tuple(out)


def _skip_after(ctx: _Ctx, failed: str) -> Iterator[CheckResult]:
    for cid, title in _dependent(ctx, failed):
        yield ctx.result(cid, title, Status.SKIP, f"not run: {failed} failed (fix that first)")


def _stack_checks(ctx: _Ctx) -> Iterator[CheckResult]:
    """One stack's checks; a failed prerequisite skips what depends on it, so one
    broken thing shows as one failed check."""
    first = list(check_container(ctx))
    yield from first
    if any(r.id == "ct.running" and r.status is Status.FAIL for r in first):
        yield from _skip_after(ctx, "ct.running")
        return
    yield from check_mounts_writable(ctx)
    app = ctx.stack.app
    if app is None:
        return
    image = app.images[0].ref if app.images else None
    docker = list(check_docker(ctx, image))
    yield from docker
    if any(r.status is Status.FAIL for r in docker):
        yield from _skip_after(ctx, "docker.engine")
        yield from (r for r in check_secrets(ctx) if r.id != "secrets.inspect")
        return
    containers = list(check_app_containers(ctx))
    yield from containers
    if any(r.status is Status.FAIL for r in containers):
        yield from _skip_after(ctx, "app.containers")
    else:
        yield from check_hermes(ctx)
        yield from check_litellm(ctx)
    yield from check_secrets(ctx)


def verify(
    desired: DesiredState,
    vmids: Mapping[str, int | None],
    api_get: ApiGet,
    transport: RootTransport | None,
) -> VerifyReport:
    """Run every check for every stack (in file order)."""
    results: list[CheckResult] = []
    for stack in desired.stacks:
        vmid = vmids.get(stack.name)
        if vmid is None:
            results.append(
                CheckResult(
                    stack.name,
                    "ct.exists",
                    "the container exists",
                    Status.FAIL,
                    "no container carries this stack's mark",
                    "run `pvestack apply`",
                )
            )
            continue
        secrets = stack.app.secrets if stack.app else ()
        ctx = _Ctx(stack, vmid, api_get, transport, secrets)
        results.extend(_stack_checks(ctx))
    return VerifyReport(tuple(results))
