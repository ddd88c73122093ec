"""The LiteLLM gateway: alive and listing its models with the master key, seen from
inside its container and from the operator's machine (over HTTP to the CT's address)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

from pvestack._commands import Payload, Secret, cmd
from pvestack._errors import CannotRun
from pvestack._verifyspec import LiteLLMFacts
from pvestack.verify._core import (
    CheckResult,
    Ctx,
    HttpAnswer,
    Status,
    address,
    json_line,
)

INSIDE = (
    ("gateway.health", "the gateway answers /health/liveliness on port {port}"),
    ("gateway.models", "the gateway lists the configured models (master key)"),
)
OUTSIDE = (
    ("gateway.http.live", "the gateway answers /health/liveliness at {url} from here"),
    ("gateway.http.models", "the gateway lists the models at {url} from here (master key)"),
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

Probe = Callable[[], tuple[HttpAnswer, HttpAnswer]]


def facts(ctx: Ctx) -> LiteLLMFacts | None:
    app = ctx.stack.app
    return app.verify if app is not None and isinstance(app.verify, LiteLLMFacts) else None


def master_key(ctx: Ctx, f: LiteLLMFacts) -> Secret | None:
    app = ctx.stack.app
    secrets = app.secrets if app is not None else ()
    key = next((s for s in secrets if s.name == f.master_key), None)
    return key or (secrets[0] if secrets else None)


def _answer(raw: object) -> HttpAnswer:
    """The in-container probe's ``{"status", "body"}`` as an ``HttpAnswer``."""
    d = raw if isinstance(raw, dict) else {}
    body = str(d.get("body", ""))
    status = int(d.get("status") or 0)
    error = body if status == 0 else ""
    return HttpAnswer(status, body, error, refused="refused" in error.lower())


def _alive(live: HttpAnswer) -> bool:
    return live.status == 200 and "alive" in live.body.lower()


def _wait(ctx: Ctx, probe: Probe) -> tuple[HttpAnswer, HttpAnswer]:
    deadline = time.monotonic() + ctx.startup_wait
    while True:
        live, models = probe()
        # LiteLLM needs ~20 s after a (re)start before it answers
        starting = live.status in (502, 503) or (live.status == 0 and live.refused)
        if _alive(live) or not starting or time.monotonic() >= deadline:
            return live, models
        time.sleep(3)


def _models_result(
    ctx: Ctx, f: LiteLLMFacts, models: HttpAnswer, cid: str, title: str
) -> CheckResult:
    ids: list[str] = []
    try:
        body = json.loads(models.body)
        ids = [str(m.get("id")) for m in body.get("data", []) if isinstance(m, dict)]
    except (ValueError, AttributeError):
        pass
    missing = [m for m in f.models if m not in ids]
    ok = models.status == 200 and not missing
    if models.status != 200:
        fix = (
            "the gateway refused the master key: config.yaml's master_key and the "
            f"{f.master_key} secret differ; run `pvestack apply`"
            if models.status in (400, 401, 403)
            else "the gateway does not answer /v1/models"
        )
        ev = f"GET /v1/models with the master key: {models.status} {models.body[:200]}"
    else:
        fix = (
            f"models missing from the gateway: {', '.join(missing)}; run `pvestack apply` "
            "(config.yaml model_list)"
            if missing
            else ""
        )
        ev = f"GET /v1/models with the master key: 200, models: {', '.join(ids) or '(none)'}"
    status = Status.PASS if ok else Status.FAIL
    return ctx.result(cid, title, status, ev + f" (want {', '.join(f.models)})", fix)


def check_litellm(ctx: Ctx) -> Iterator[CheckResult]:
    """Inside the gateway's container: alive, and ``/v1/models`` lists the models."""
    f = facts(ctx)
    if f is None:
        return
    key = master_key(ctx, f)
    probe = cmd(
        *("pct", "exec", str(ctx.vmid), "--", "docker", "exec", "-i", f.container),
        *("python3", "-c", _GATEWAY_PROBE, str(f.port)),
        stdin=Payload((key, "\n") if key is not None else ("\n",)),
    )
    failure = ""

    def inside() -> tuple[HttpAnswer, HttpAnswer]:
        nonlocal failure
        out = ctx.run(probe)
        answer = json_line(out.stdout)
        if not answer:
            failure = f"exit {out.returncode} {(out.stderr or out.stdout).strip()[:300]}"
        return _answer(answer.get("live")), _answer(answer.get("models"))

    live, models = _wait(ctx, inside)
    (hid, htitle), (mid, mtitle) = ((i, t.format(port=f.port)) for i, t in INSIDE)
    ok = _alive(live)
    yield ctx.result(
        hid,
        htitle,
        Status.PASS if ok else Status.FAIL,
        f"GET /health/liveliness: {live.status} {live.body[:80]}"
        if not failure
        else f"probe in container {f.container} failed: {failure}",
        ""
        if ok
        else f"see `pct exec {ctx.vmid} -- docker logs {f.container}` (LiteLLM needs ~20 s to "
        "start; a bad config.yaml keeps it restarting)",
    )
    if ok:
        yield _models_result(ctx, f, models, mid, mtitle)


def check_gateway_http(ctx: Ctx) -> Iterator[CheckResult]:
    """From the operator's machine: ``/health/liveliness`` and ``/v1/models`` over HTTP
    to the container's address (what Hermes and other clients reach)."""
    f = facts(ctx)
    if f is None:
        return
    base = f"http://{address(ctx)}:{f.port}"
    key = master_key(ctx, f)
    (lid, ltitle), (mid, mtitle) = ((i, t.format(url=base)) for i, t in OUTSIDE)

    def outside() -> tuple[HttpAnswer, HttpAnswer]:
        live = ctx.http("GET", base + "/health/liveliness")
        return live, ctx.http("GET", base + "/v1/models", key=key)

    live, models = _wait(ctx, outside)
    if live.status == 0 and not live.refused:
        raise CannotRun(f"GET {base}/health/liveliness from this machine: {live.error}")
    ok = _alive(live)
    yield ctx.result(
        lid,
        ltitle,
        Status.PASS if ok else Status.FAIL,
        f"GET {base}/health/liveliness: {live.status or live.error} {live.body[:80]}",
        ""
        if ok
        else f"the gateway does not answer on {base}: is the port published "
        "(compose ports) and the CT's firewall open?",
    )
    if ok:
        yield _models_result(ctx, f, models, mid, mtitle)
