"""Secrets: ``.env`` files mode 600 with the right owner, and no secret in
``docker inspect`` (the compose environment)."""

from __future__ import annotations

from collections.abc import Iterator

from pvestack.verify._core import CheckResult, Ctx, Status


def planned(ctx: Ctx) -> list[tuple[str, str]]:
    app = ctx.stack.app
    if app is None:
        return []
    out = [
        (f"secrets.env:{f.path}", f"{f.path} is mode 600 and owned by the data dir's owner")
        for f in app.files
        if f.path.endswith("/.env")
    ]
    if any(s.value for s in app.secrets):
        out.append(("secrets.inspect", "no secret appears in `docker inspect`"))
    return out


def check_secrets(ctx: Ctx) -> Iterator[CheckResult]:
    app = ctx.stack.app
    if app is None:
        return
    env_files = [f for f in app.files if f.path.endswith("/.env")]
    for f in env_files:
        cid = f"secrets.env:{f.path}"
        title = f"{f.path} is mode 600 and owned by the data dir's owner"
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
    ids = ctx.capture(ctx.pct("docker", "ps", "-aq"))
    names = ids.stdout.split()
    if not names:
        yield ctx.result("secrets.inspect", title, Status.SKIP, "no containers")
        return
    raw = ctx.capture(ctx.pct("docker", "inspect", *names))  # unmasked on purpose
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
