"""Hermes: its gateway state, its platforms, the model path through it (in the
container), and its OpenAI-compatible API server (from the operator's machine)."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

from pvestack._verifyspec import HermesFacts
from pvestack.verify._core import CheckResult, Ctx, Status, address, json_line

PLATFORMS = ("telegram", "discord", "slack", "matrix", "signal")
ROUNDTRIP = ("llm.roundtrip", "a model round trip through Hermes completes")
API_CHAT = ("hermes.api.chat", "a chat completion through Hermes's API server answers OK")
PROMPT = "Reply with OK"
# The answer is judged, not the status code: Hermes can answer 200 with a failure text.
_OK = re.compile(r"\bOK\b")


def facts(ctx: Ctx) -> HermesFacts | None:
    app = ctx.stack.app
    return app.verify if app is not None and isinstance(app.verify, HermesFacts) else None


def planned(f: HermesFacts) -> list[tuple[str, str]]:
    """The required checks of this area (id, title), in run order."""
    out = [("hermes.gateway", "Hermes gateway_state is running")]
    out += [(f"hermes.platform.{p}", f"{p} connected") for p in f.platforms]
    out += [("llm.models", "the gateway's /v1/models answers with the key"), ROUNDTRIP]
    return out


def _gateway_state(ctx: Ctx, f: HermesFacts) -> tuple[dict[str, Any], str]:
    """gateway_state.json, waiting while Hermes is still starting; (state, error)."""
    deadline = time.monotonic() + ctx.startup_wait
    while True:
        out = ctx.run(ctx.pct("cat", f"{f.data_dir}/gateway_state.json"))
        state = json_line(out.stdout.replace("\n", " ")) if out.returncode == 0 else {}
        gstate = state.get("gateway_state")
        # just (re)started: no state file yet, or still starting; give it a moment
        if gstate not in (None, "starting") or time.monotonic() >= deadline:
            return state, "" if out.returncode == 0 else out.stderr.strip()
        time.sleep(3)


def check_hermes(ctx: Ctx) -> Iterator[CheckResult]:
    f = facts(ctx)
    if f is None:
        return
    state, err = _gateway_state(ctx, f)
    gstate = state.get("gateway_state")
    yield ctx.result(
        "hermes.gateway",
        "Hermes gateway_state is running",
        Status.PASS if gstate == "running" else Status.FAIL,
        f"{f.data_dir}/gateway_state.json: gateway_state={gstate}"
        if not err
        else f"cannot read {f.data_dir}/gateway_state.json: {err}",
        "" if gstate == "running" else f"see `pct exec {ctx.vmid} -- docker logs {f.container}`",
    )
    platforms = state.get("platforms") if isinstance(state.get("platforms"), dict) else {}
    assert isinstance(platforms, dict)
    for p in PLATFORMS:
        cid = f"hermes.platform.{p}"
        if p not in f.platforms:
            yield ctx.result(cid, f"{p} connected", Status.SKIP, "no token configured")
            continue
        entry = platforms.get(p)
        pstate = entry.get("state") if isinstance(entry, dict) else None
        yield ctx.result(
            cid,
            f"{p} connected",
            Status.PASS if pstate == "connected" else Status.FAIL,
            f"platforms.{p}.state={pstate}",
            ""
            if pstate == "connected"
            else f"check the {p} token and allow-list; "
            f"`pct exec {ctx.vmid} -- docker logs {f.container}`",
        )
    yield from check_llm_path(ctx, f)


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


def _skipped_roundtrip(ctx: Ctx) -> CheckResult:
    return ctx.result(*ROUNDTRIP, Status.SKIP, "not run: llm.models failed (fix that first)")


def check_llm_path(ctx: Ctx, f: HermesFacts) -> Iterator[CheckResult]:
    """From inside the Hermes container: the gateway lists the default model with the
    key, then ``hermes -z`` completes a round trip."""
    probe = ("python3", "-c", _MODELS_PROBE, f.gateway_url, f.key_env, "/opt/data/.env")
    out = ctx.run(ctx.pct("docker", "exec", f.container, *probe))
    answer = json_line(out.stdout)
    status, body = answer.get("status"), answer.get("body")
    ids = [str(m.get("id")) for m in body.get("data", [])] if isinstance(body, dict) else []
    title = "the gateway's /v1/models answers with the key"
    if status != 200:
        fix = (
            "the gateway refused the key: check the gateway key secret"
            if status in (400, 401, 403)
            else f"the gateway at {f.gateway_url} is unreachable from the Hermes container"
        )
        detail = str(body)[:200] if body else out.stderr.strip()
        ev = f"GET {f.gateway_url}/models: {status} {detail}"
        yield ctx.result("llm.models", title, Status.FAIL, ev, fix)
        yield _skipped_roundtrip(ctx)
        return
    served = f.default_model in ids
    yield ctx.result(
        "llm.models",
        title,
        Status.PASS if served else Status.FAIL,
        f"GET {f.gateway_url}/models: 200, models: {', '.join(ids)}",
        ""
        if served
        else f"default model {f.default_model!r} is not served by the gateway; set "
        f"default_model to one of: {', '.join(ids)}",
    )
    if not served:
        yield _skipped_roundtrip(ctx)
        return
    yield _roundtrip(ctx, f)


def _roundtrip(ctx: Ctx, f: HermesFacts) -> CheckResult:
    usage = f"/tmp/pvestack-usage-{uuid.uuid4().hex[:8]}.json"
    # as the data dir's owner (HERMES_UID), so the run leaves no root-owned files in /opt/data
    user = f"{f.uid}:{f.gid}"
    z = ("hermes", "-z", PROMPT, "--usage-file", usage)
    run = ctx.run(ctx.pct("docker", "exec", "-u", user, f.container, *z))
    read = ctx.run(ctx.pct("docker", "exec", f.container, "cat", usage))
    ctx.run(ctx.pct("docker", "exec", f.container, "rm", "-f", usage))
    report = json_line(read.stdout.replace("\n", " ")) if read.returncode == 0 else {}
    ok = bool(report.get("completed")) and not report.get("failed")
    return ctx.result(
        *ROUNDTRIP,
        Status.PASS if ok else Status.FAIL,
        f"hermes -z exit {run.returncode}, answer {run.stdout.strip()[:80]!r}; usage: "
        f"completed={report.get('completed')} failed={report.get('failed')} "
        f"api_calls={report.get('api_calls')} model={report.get('model')}"
        + (f" failure={report.get('failure')}" if report.get("failure") else ""),
        "" if ok else f"see `pct exec {ctx.vmid} -- docker logs {f.container}`",
    )


# ---------------------------------------------------------------- the API server


def check_api_server(ctx: Ctx) -> Iterator[CheckResult]:
    """From the operator's machine, the path a client such as Open WebUI takes: a chat
    completion through Hermes's API server on the container's address, judged by the
    answer (it must say OK), not by the status code."""
    f = facts(ctx)
    if f is None or f.api_server is None:
        return
    api = f.api_server
    url = f"http://{address(ctx)}:{api.port}/v1/chat/completions"
    body = {"model": api.model, "messages": [{"role": "user", "content": PROMPT}]}
    deadline = time.monotonic() + ctx.startup_wait
    while True:
        got = ctx.http("POST", url, key=api.key, body=body)
        # just (re)started: the API server listens a few seconds after the container
        if got.status != 0 or not got.refused or time.monotonic() >= deadline:
            break
        time.sleep(3)
    if got.status == 0 and not got.refused:
        yield ctx.result(
            *API_CHAT,
            Status.UNVERIFIED,
            f"POST {url}: {got.error}",
            "is the container's address reachable from this machine?",
        )
        return
    content = _answer_text(got.body) if got.status == 200 else ""
    ok = bool(_OK.search(content))
    yield ctx.result(
        *API_CHAT,
        Status.PASS if ok else Status.FAIL,
        f"POST {url}: {got.status or got.error} answer {content[:120]!r}"
        + ("" if got.status == 200 else f" {got.body[:200]}"),
        ""
        if ok
        else (
            "Hermes's API server refused the key: check the api_server key secret"
            if got.status in (401, 403)
            else f"see `pct exec {ctx.vmid} -- docker logs {f.container}` (api_server; "
            "the model path: llm.roundtrip)"
        ),
    )


def _answer_text(body: str) -> str:
    try:
        data = json.loads(body)
        return str(data["choices"][0]["message"]["content"] or "")
    except (ValueError, KeyError, IndexError, TypeError):
        return ""
