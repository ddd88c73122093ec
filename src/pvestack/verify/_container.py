"""The container, its mounts, its Docker engine and the app's compose containers."""

from __future__ import annotations

import json
import shlex
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from pvestack._commands import cmd
from pvestack._model import BindMount
from pvestack._pvevalues import split_props
from pvestack.verify._core import CheckResult, Ctx, Status

# runc 1.3.3 (containerd.io >= 1.7.28-2, November 2025) in an unprivileged LXC on a
# node whose lxc-pve is older than 6.0.5-2 fails every container start with this.
RUNC_SYSCTL_ERROR = "open sysctl net.ipv4.ip_unprivileged_port_start file"
RUNC_FIX = (
    "runc >= 1.3.3 cannot start containers in an unprivileged CT on this node: the node "
    "needs lxc-pve >= 6.0.5-2 (on the node: `apt update && apt full-upgrade`), then reboot "
    "the CT (`pct reboot {vmid}`); nesting and keyctl do not help"
)


def docker_fix(output: str, vmid: int | None = None) -> str:
    """What to do about a failed Docker probe, recognising the 2025 runc breakage."""
    if RUNC_SYSCTL_ERROR in output and "permission denied" in output:
        return RUNC_FIX.format(vmid=vmid if vmid is not None else "<vmid>")
    return "check `systemctl status docker` inside the CT (nesting=1 and keyctl=1 needed)"


def _features(value: str | None) -> dict[str, str]:
    return split_props(value or "")


def _mount_target(value: str) -> tuple[str, str]:
    props = split_props(value, first_key="volume")
    return props.get("volume", ""), props.get("mp", "")


def check_container(ctx: Ctx) -> Iterator[CheckResult]:
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


def check_mounts_writable(ctx: Ctx) -> Iterator[CheckResult]:
    spec = ctx.stack.container
    for m in spec.bind_mounts:
        cid = f"mount.{m.ct_path}"
        title = f"{m.ct_path} is writable inside and lands on {m.host_path}"
        if m.read_only:
            yield ctx.result(cid, title, Status.SKIP, "mount is read-only")
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
        if not ctx.node_root:
            yield _mount_seen_inside(ctx, m, cid, title, inside)
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


def _mount_seen_inside(ctx: Ctx, m: BindMount, cid: str, title: str, inside: str) -> CheckResult:
    """No root on the node (console only): the probe's owner as the container sees it. The
    host side is the id map's image of it (the config check proved the mount point); the
    evidence says the node itself was not read."""
    stat = ctx.run(ctx.pct("stat", "-c", "%u:%g", inside))
    ctx.run(ctx.pct("rm", "-f", inside))
    got = stat.stdout.strip()
    want = f"{m.owner_uid}:{m.owner_gid}"
    host = f"{ctx.stack.container.idmap.host_uid(m.owner_uid)}:"
    host += str(ctx.stack.container.idmap.host_gid(m.owner_gid))
    ok = stat.returncode == 0 and got == want
    return ctx.result(
        cid,
        title,
        Status.PASS if ok else Status.FAIL,
        f"probe written as uid {m.owner_uid} inside, owner there {got or stat.stderr.strip()} "
        f"(want {want}; on the host {host} by the id map: the node itself is not read "
        "without root on it)",
        "" if ok else "check the mount point's owner and the id map (pvestack apply)",
    )


def check_docker(ctx: Ctx, image: str | None) -> Iterator[CheckResult]:
    title = "the Docker engine runs a container"
    if image is None:
        out = ctx.run(ctx.pct("docker", "info", "--format", "{{.ServerVersion}}"))
        ok = out.returncode == 0
        yield ctx.result(
            "docker.engine",
            "the Docker engine answers",
            Status.PASS if ok else Status.FAIL,
            f"docker info: {(out.stdout or out.stderr).strip()}",
            "" if ok else docker_fix(out.stdout + out.stderr, ctx.vmid),
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
        "" if ok else docker_fix(out.stdout + out.stderr, ctx.vmid),
    )


def _compose_containers(ctx: Ctx, project: str) -> tuple[list[dict[str, Any]], str]:
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


def check_app_containers(ctx: Ctx) -> Iterator[CheckResult]:
    app = ctx.stack.app
    if app is None:
        return
    title = "the app's containers are running"
    project = app.verify.project if app.verify is not None else ctx.stack.name
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
