"""One stack's checks in order; a failed prerequisite skips what depends on it (so one
broken thing shows as one failed check), and a check that cannot run is unverified."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from pvestack._errors import CannotRun
from pvestack._model import DesiredState
from pvestack.executors._base import RootTransport
from pvestack.verify import _hermes, _litellm, _secrets
from pvestack.verify._container import (
    check_app_containers,
    check_container,
    check_docker,
    check_mounts_writable,
)
from pvestack.verify._core import (
    ApiGet,
    CheckResult,
    Ctx,
    Http,
    Status,
    VerifyReport,
    http_request,
)

Planned = list[tuple[str, str]]
DOCKER = ("docker.engine", "the Docker engine runs a container")
CONTAINERS = ("app.containers", "the app's containers are running")


def _mounts(ctx: Ctx) -> Planned:
    return [
        (f"mount.{m.ct_path}", f"{m.ct_path} is writable inside and lands on {m.host_path}")
        for m in ctx.stack.container.bind_mounts
        if not m.read_only
    ]


def _app_checks(ctx: Ctx) -> Planned:
    """The checks of the app itself (after its containers run), in run order."""
    out: Planned = []
    hermes = _hermes.facts(ctx)
    if hermes is not None:
        out += _hermes.planned(hermes)
        if hermes.api_server is not None:
            out.append(_hermes.API_CHAT)
    litellm = _litellm.facts(ctx)
    if litellm is not None:
        out += [(i, t.format(port=litellm.port, url="")) for i, t in _litellm.INSIDE]
        out += [(i, t.format(port=litellm.port, url="")) for i, t in _litellm.OUTSIDE]
    return out


def _dependent(ctx: Ctx, after: str) -> Planned:
    """The checks that need what ``after`` checks (id, title), in run order."""
    app = ctx.stack.app
    out: Planned = []
    if after == "ct.running":
        out += _mounts(ctx)
        if app is not None:
            out.append(DOCKER)
    if app is None:
        return out
    if after in ("ct.running", "docker.engine"):
        out.append(CONTAINERS)
    out += _app_checks(ctx)
    if after in ("ct.running", "docker.engine"):
        out += [p for p in _secrets.planned(ctx) if p[0] == "secrets.inspect"]
    return out


def _skip_after(ctx: Ctx, failed: str) -> Iterator[CheckResult]:
    for cid, title in _dependent(ctx, failed):
        yield ctx.result(cid, title, Status.SKIP, f"not run: {failed} failed (fix that first)")


def guarded(
    ctx: Ctx, check: Callable[[Ctx], Iterator[CheckResult]], planned: Planned
) -> list[CheckResult]:
    """Run ``check``; when it cannot look, each planned check it did not report is
    ``unverified`` with the reason."""
    results: list[CheckResult] = []
    try:
        results.extend(check(ctx))
    except CannotRun as e:
        done = {r.id for r in results}
        for cid, title in planned:
            if cid not in done:
                results.append(ctx.result(cid, title, Status.UNVERIFIED, str(e)))
    return results


def _failed(results: list[CheckResult]) -> bool:
    return any(r.status is Status.FAIL for r in results)


def _stack_checks(ctx: Ctx) -> Iterator[CheckResult]:
    first = list(check_container(ctx))
    yield from first
    if any(r.id == "ct.running" and r.status is Status.FAIL for r in first):
        yield from _skip_after(ctx, "ct.running")
        return
    yield from guarded(ctx, check_mounts_writable, _mounts(ctx))
    app = ctx.stack.app
    if app is None:
        return
    image = app.images[0].ref if app.images else None
    docker = guarded(ctx, lambda c: check_docker(c, image), [DOCKER])
    yield from docker
    secrets = _secrets.planned(ctx)
    if _failed(docker):
        yield from _skip_after(ctx, "docker.engine")
        yield from guarded(
            ctx,
            lambda c: (r for r in _secrets.check_secrets(c) if r.id != "secrets.inspect"),
            [p for p in secrets if p[0] != "secrets.inspect"],
        )
        return
    containers = guarded(ctx, check_app_containers, [CONTAINERS])
    yield from containers
    if _failed(containers):
        yield from _skip_after(ctx, "app.containers")
    else:
        yield from _app_area(ctx)
    yield from guarded(ctx, _secrets.check_secrets, secrets)


def _app_area(ctx: Ctx) -> Iterator[CheckResult]:
    planned = _app_checks(ctx)

    def only(*ids: str) -> Planned:
        return [p for p in planned if p[0] in ids or p[0].startswith(ids)]

    hermes_ids = only("hermes.gateway", "hermes.platform.", "llm.")
    hermes = guarded(ctx, _hermes.check_hermes, hermes_ids)
    yield from hermes
    yield from guarded(ctx, _litellm.check_litellm, only("gateway.health", "gateway.models"))
    yield from guarded(ctx, _litellm.check_gateway_http, only("gateway.http."))
    # the API server's answer needs the model path: one broken key is one failed check
    path = next((r for r in hermes if r.id == _hermes.ROUNDTRIP[0]), None)
    if path is not None and path.status is not Status.PASS:
        for cid, title in only("hermes.api."):
            why = f"not run: {path.id} did not pass (fix that first)"
            yield ctx.result(cid, title, Status.SKIP, why)
    else:
        yield from guarded(ctx, _hermes.check_api_server, only("hermes.api."))


def verify(
    desired: DesiredState,
    vmids: Mapping[str, int | None],
    api_get: ApiGet,
    transport: RootTransport | None,
    *,
    http: Http = http_request,
    node_root: bool = True,
) -> VerifyReport:
    """Run every check for every stack (in file order). ``node_root`` False: ``transport``
    reaches the containers only (the console user's guest route), not the node itself."""
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
        ctx = Ctx(stack, vmid, api_get, transport, secrets, http=http, node_root=node_root)
        results.extend(_stack_checks(ctx))
    return VerifyReport(tuple(results))
