"""The command line (typer + rich): parse flags, call ``_engine``, print.

Exit codes: 0 done / nothing to change, 1 error, 2 changes pending
(``plan --detailed-exitcode``), 3 apply did the token's part and waits for root steps.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast

import typer
from rich.console import Console
from rich.markup import escape

from pvelab.cli import app as lab_app
from pvestack import __version__
from pvestack import _daytwo as daytwo
from pvestack import _engine as engine
from pvestack._commands import display
from pvestack._config import DEFAULT_FILE, StackFile, json_schema, load_config
from pvestack._errors import ConfigError, PvestackError
from pvestack._model import Action, Actor
from pvestack._plan import render_text
from pvestack.executors import _console as console

app = typer.Typer(
    name="pvestack",
    help="Deploy Docker app stacks into unprivileged Proxmox VE LXC containers from one file.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

T = TypeVar("T")

ConfigOpt = Annotated[
    Path, typer.Option("--config", "-c", help="the stack file", show_default=True)
]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output on stdout")]
AdoptOpt = Annotated[
    bool, typer.Option("--adopt", help="manage a guest that lacks the pvestack mark (diff first)")
]
InsecureOpt = Annotated[
    bool, typer.Option("--insecure", help="do NOT verify the node's TLS certificate (test only)")
]
ApiUrlOpt = Annotated[str | None, typer.Option("--api-url", help="overrides pve.api_url")]
TokenIdOpt = Annotated[str | None, typer.Option("--token-id", help="overrides pve.token_id")]
FingerprintOpt = Annotated[
    str | None, typer.Option("--fingerprint", help="overrides pve.fingerprint (SHA-256 pin)")
]
CaFileOpt = Annotated[str | None, typer.Option("--ca-file", help="overrides pve.ca_file")]
NodeOpt = Annotated[str | None, typer.Option("--node", help="overrides every stack's node")]
RootViaOpt = Annotated[
    str | None, typer.Option("--root-via", help="ssh | console | none (overrides root.via)")
]


def _overrides(**flags: str | None) -> dict[str, str]:
    names = {
        "api_url": "API_URL",
        "token_id": "TOKEN_ID",
        "fingerprint": "FINGERPRINT",
        "ca_file": "CA_FILE",
        "node": "NODE",
        "root_via": "ROOT_VIA",
    }
    return {names[k]: v for k, v in flags.items() if v}


def _fail(e: PvestackError) -> None:
    if isinstance(e, ConfigError):
        err.print(f"[bold red]error:[/] the stack file has {len(e.problems)} problem(s):")
        for p in e.problems:
            err.print(f"  {display(str(p))}", markup=False)
    else:
        err.print("[bold red]error:[/] ", end="")
        err.print(display(str(e), keep_newlines=True), markup=False)
        if e.hint:
            err.print("[yellow]hint:[/] ", end="")
            err.print(display(e.hint, keep_newlines=True), markup=False)
    raise typer.Exit(1)


def _guard(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except PvestackError as e:
        _fail(e)
        raise  # unreachable: _fail exits


def _load(config: Path, **flags: str | None) -> StackFile:
    return _guard(lambda: load_config(config, overrides=_overrides(**flags)))


def _client(cfg: StackFile, insecure: bool) -> Any:
    client = _guard(lambda: engine.connect(cfg, insecure=insecure))
    for w in client.warnings:
        err.print(f"[bold yellow]warning:[/] {escape(display(w))}", markup=True)
    return client


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


# ---------------------------------------------------------------- plan


@app.command()
def plan(
    *,
    config: ConfigOpt = Path(DEFAULT_FILE),
    json_out: JsonOpt = False,
    adopt: AdoptOpt = False,
    detailed_exitcode: Annotated[
        bool,
        typer.Option("--detailed-exitcode", help="exit 0 no changes, 2 changes pending, 1 error"),
    ] = False,
    insecure: InsecureOpt = False,
    api_url: ApiUrlOpt = None,
    token_id: TokenIdOpt = None,
    fingerprint: FingerprintOpt = None,
    ca_file: CaFileOpt = None,
    node: NodeOpt = None,
    root_via: RootViaOpt = None,
) -> None:
    """Show what apply would change, and who must do it (api token, root, guest)."""
    cfg = _load(
        config, api_url=api_url, token_id=token_id, fingerprint=fingerprint,
        ca_file=ca_file, node=node, root_via=root_via,
    )  # fmt: skip
    client = _client(cfg, insecure)
    root = engine.open_root_transport(cfg) if cfg.root.via == "ssh" else None
    reader = engine.TransportFactReader(root.transport) if root and root.transport else None
    if root is not None and root.transport is None:
        err.print("[bold yellow]warning:[/] host facts not read: " + escape(display(root.reason)))
    try:
        result = _guard(lambda: engine.plan(cfg, client, adopt=adopt, reader=reader))
    finally:
        if root and root.transport:
            root.transport.close()
    p = result.plan
    if json_out:
        data = p.to_json()
        data["api_calls"] = result.api_calls
        _print_json(data)
    else:
        out.print(f"pvestack plan: {display(cfg.source_file)}", markup=False)
        out.print(render_text(p, root_via=cfg.root.via), markup=False)
    if p.refused:  # a guest blocks a stack: the user must act
        raise typer.Exit(1)
    if detailed_exitcode and p.changes:
        raise typer.Exit(2)


# ---------------------------------------------------------------- apply


def _progress(a: Action, phase: str, detail: str) -> None:
    line = display(f"{a.change.symbol} {a.id} [{a.actor.value}] {a.target}")
    aid = display(a.id)
    if phase != "progress":
        detail = display(detail)
    if phase == "progress":
        if a.actor is not Actor.API and detail.strip():  # root/guest output, masked
            err.print(f"    [dim]│ {escape(display(detail.rstrip(), keep_newlines=True))}[/]")
    elif phase == "start":
        err.print(f"[cyan]…[/] {escape(line)}")
    elif phase == "done":
        err.print(f"[green]✓[/] {escape(aid)}")
    elif phase == "skipped":
        err.print(f"[green]=[/] {escape(aid)}: {escape(detail)}")
    elif phase == "pending":
        tag = escape(f"[{a.actor.value}]")
        err.print(f"[yellow]⏸[/] {escape(aid)} {tag}: pending ({escape(detail)})")
    elif phase == "failed":
        err.print(f"[red]✗[/] {escape(aid)}: {escape(detail)}")


@app.command()
def apply(
    *,
    config: ConfigOpt = Path(DEFAULT_FILE),
    json_out: JsonOpt = False,
    adopt: AdoptOpt = False,
    insecure: InsecureOpt = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask (scripts)")] = False,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="do not run verify after a complete apply")
    ] = False,
    api_url: ApiUrlOpt = None,
    token_id: TokenIdOpt = None,
    fingerprint: FingerprintOpt = None,
    ca_file: CaFileOpt = None,
    node: NodeOpt = None,
    root_via: RootViaOpt = None,
) -> None:
    """Do everything the plan says: the token's part through the API, root's part
    through SSH (or the console script), then the guest's."""
    cfg = _load(
        config, api_url=api_url, token_id=token_id, fingerprint=fingerprint,
        ca_file=ca_file, node=node, root_via=root_via,
    )  # fmt: skip
    client = _client(cfg, insecure)
    root = engine.open_root_transport(cfg)
    if root.transport is None and root.via == "ssh":
        err.print("[bold yellow]warning:[/] " + escape(display(root.reason)))
    report: Any = None
    script: str | None = None
    try:
        reader = engine.TransportFactReader(root.transport) if root.transport else None
        result = _guard(lambda: engine.plan(cfg, client, adopt=adopt, reader=reader))
        p = result.plan
        if not json_out:
            out.print(render_text(p, root_via=cfg.root.via), markup=False)
        if p.actions and adopt and not yes and sys.stdin.isatty():
            typer.confirm("Adopt and change the guests above?", abort=True)
        progress = None if json_out else _progress
        res = (
            _guard(lambda: engine.apply(p, client, root=root, on_progress=progress))
            if p.actions
            else engine.ApplyResult((), p)
        )
        if res.pending and cfg.root.via == "console" and res.exit_code == 3:
            # the token's part changed the node (e.g. started the CT): the script comes
            # from a fresh plan, so it holds what is needed now (the reboot, for one)
            fresh = _guard(lambda: engine.plan(cfg, client, adopt=adopt)).plan
            script = _console_script_or_none(fresh, cfg)
            if script and not json_out and sys.stdin.isatty():
                poll = engine.root_effects_missing(client, fresh)
                text = script
                _guard(
                    lambda: console.hand_off(
                        text, poll, write=lambda t: out.print(t, end="", markup=False)
                    )
                )
                script = None  # printed, and its effects seen
                p = _guard(lambda: engine.plan(cfg, client, adopt=adopt)).plan
                out.print(render_text(p, root_via=cfg.root.via), markup=False)
                res = (
                    _guard(lambda: engine.apply(p, client, root=root, on_progress=progress))
                    if p.actions
                    else engine.ApplyResult((), p)
                )
        if not no_verify and res.exit_code == 0:
            if not json_out:
                out.print("\nverify:")
            report = _guard(lambda: engine.run_verify(cfg, client, root=root))
    finally:
        if root.transport is not None:
            root.transport.close()
    code = res.exit_code
    if report is not None and not report.ok:
        code = 1
    if json_out:
        data = res.to_json()
        if res.pending and cfg.root.via == "console":
            data["console_script"] = script
        data["verify"] = report.to_json() if report is not None else None
        data["exit_code"] = code
        _print_json(data)
        raise typer.Exit(code)
    if report is not None:
        _print_verify(report)
    if not p.actions:
        out.print("No changes." if not p.refused else "Nothing done: guests refused (see above).")
        raise typer.Exit(code)
    done = sum(1 for r in res.results if r.outcome is engine.Outcome.DONE)
    out.print(
        f"\nApply: {done} done, {len(res.pending)} pending, "
        f"{sum(1 for r in res.results if r.outcome is engine.Outcome.FAILED)} failed."
    )
    if res.pending:
        out.print(f"Root steps pending: {display(res.pending_reason)}", markup=False)
        if script:
            out.print("\n# --- run this in the node's shell (as root), then apply again ---")
            out.print(script, markup=False)
    raise typer.Exit(code)


def _render_console_script(p: Any, cfg: StackFile) -> str:
    title = f"pvestack root steps for {cfg.source_file}"
    return console.console_script(
        engine.root_steps(p), title=title, success_marker=engine.CONSOLE_SUCCESS_MARKER
    )


def _console_script_or_none(p: Any, cfg: StackFile) -> str | None:
    in_script, _left = engine.console_actions(p)
    pending_root = [a for a in p.actions if a.actor is Actor.ROOT]
    if not in_script or any(not a.steps for a in pending_root):
        return None
    try:
        return _render_console_script(p, cfg)
    except (ValueError, PvestackError):
        return None


# ---------------------------------------------------------------- console-script


@app.command("console-script")
def console_script(
    *,
    config: ConfigOpt = Path(DEFAULT_FILE),
    adopt: AdoptOpt = False,
    insecure: InsecureOpt = False,
    api_url: ApiUrlOpt = None,
    token_id: TokenIdOpt = None,
    fingerprint: FingerprintOpt = None,
    ca_file: CaFileOpt = None,
    node: NodeOpt = None,
) -> None:
    """Print the root steps of the current plan as one idempotent script for the node's shell."""
    cfg = _load(
        config, api_url=api_url, token_id=token_id, fingerprint=fingerprint,
        ca_file=ca_file, node=node,
    )  # fmt: skip
    client = _client(cfg, insecure)
    result = _guard(lambda: engine.plan(cfg, client, adopt=adopt))
    root_actions = result.plan.by_actor(Actor.ROOT)
    in_script, left = engine.console_actions(result.plan)
    if not in_script and not left:
        err.print("No root steps pending.")
        return
    missing = [a.id for a in root_actions if not a.steps]
    if missing:
        err.print(
            "[bold red]error:[/] the root step builders are not available in this build yet "
            f"(pvestack._steps.root); cannot render: {', '.join(missing)}"
        )
        raise typer.Exit(1)
    script = _guard(lambda: _render_console_script(result.plan, cfg))
    sys.stdout.write(script)
    for a in left:
        err.print(
            f"not in the script: {escape(display(a.id))} (it carries a secret or waits for one: "
            'it needs root.via = "ssh")'
        )


# ---------------------------------------------------------------- destroy


@app.command()
def destroy(
    *,
    config: ConfigOpt = Path(DEFAULT_FILE),
    json_out: JsonOpt = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask (scripts)")] = False,
    insecure: InsecureOpt = False,
    api_url: ApiUrlOpt = None,
    token_id: TokenIdOpt = None,
    fingerprint: FingerprintOpt = None,
    ca_file: CaFileOpt = None,
    node: NodeOpt = None,
) -> None:
    """Stop and delete the containers carrying this file's marks (host dirs are kept)."""
    cfg = _load(
        config, api_url=api_url, token_id=token_id, fingerprint=fingerprint,
        ca_file=ca_file, node=node,
    )  # fmt: skip
    client = _client(cfg, insecure)
    dp = _guard(lambda: engine.destroy_plan(cfg, client))
    show = err if json_out else out
    for r in dp.refused:
        show.print(f"  ! refused: {display(r)}", markup=False)
    for name in dp.absent:
        show.print(f"  = {display(name)}: no container, nothing to destroy", markup=False)
    for t in dp.targets:
        show.print(
            display(f"  - lxc/{t.vmid} on {t.node} ({t.hostname}, stack {t.stack}, {t.status})"),
            markup=False,
        )
        for v in t.volumes:
            show.print(f"        volume DELETED with it: {display(v)}", markup=False)
        for b in t.bind_mounts:
            show.print(f"        {display(b)}", markup=False)
        if t.protected:
            show.print(
                "        protection=1: PVE refuses to delete it; pvestack leaves it", markup=False
            )
    if not dp.targets:
        if json_out:
            _print_json({**dp.to_json(), "result": engine.DestroyResult().to_json()})
        else:
            out.print("Nothing to destroy.")
        raise typer.Exit(0)
    if not yes:
        if not sys.stdin.isatty():
            err.print("[bold red]error:[/] destroy needs --yes when not run from a terminal")
            raise typer.Exit(1)
        typer.confirm("Destroy the containers above?", abort=True)
    res = engine.destroy(dp, client, on_progress=lambda m: err.print(display(m), markup=False))
    if json_out:
        _print_json({**dp.to_json(), "result": res.to_json()})
    else:
        for d in res.done:
            out.print(f"destroyed {display(d)}", markup=False)
        for s in res.skipped:
            out.print(f"kept {display(s)}", markup=False)
        for f in res.failed:
            err.print(f"[red]failed[/] {escape(display(f))}")
    raise typer.Exit(res.exit_code)


# ---------------------------------------------------------------- verify


@app.command()
def verify(
    *,
    config: ConfigOpt = Path(DEFAULT_FILE),
    json_out: JsonOpt = False,
    insecure: InsecureOpt = False,
    api_url: ApiUrlOpt = None,
    token_id: TokenIdOpt = None,
    fingerprint: FingerprintOpt = None,
    ca_file: CaFileOpt = None,
    node: NodeOpt = None,
    root_via: RootViaOpt = None,
) -> None:
    """Check that the deployed stacks work (the seed's checklist, with evidence)."""
    cfg = _load(
        config, api_url=api_url, token_id=token_id, fingerprint=fingerprint,
        ca_file=ca_file, node=node, root_via=root_via,
    )  # fmt: skip
    client = _client(cfg, insecure)
    root = engine.open_root_transport(cfg)
    try:
        report = _guard(lambda: engine.run_verify(cfg, client, root=root))
    finally:
        if root.transport is not None:
            root.transport.close()
    if json_out:
        _print_json(report.to_json())
    else:
        _print_verify(report)
    raise typer.Exit(0 if report.ok else 1)


def _print_verify(report: Any) -> None:
    for r in report.results:
        colour = {"pass": "green", "fail": "red", "skip": "yellow"}.get(r.status.value, "white")
        stack, title = escape(display(r.stack)), escape(display(r.title))
        out.print(f"[{colour}]{r.status.value:>4}[/] {stack}: {title}")
        if r.evidence:
            out.print(f"       {display(r.evidence, keep_newlines=True)}", markup=False)
        if r.fix and r.status.value == "fail":
            out.print(f"       fix: {display(r.fix, keep_newlines=True)}", markup=False)


# ---------------------------------------------------------------- schema / version


@app.command()
def schema() -> None:
    """Print the JSON Schema of the stack file (for editors)."""
    _print_json(json_schema())


@app.command()
def version() -> None:
    """Print the version."""
    out.print(__version__)


# ---------------------------------------------------------------- day two
# Thin wrappers over pvestack._daytwo (snapshots, backups, status); see DEVELOPERS.md.

StackArg = Annotated[str, typer.Argument(help="the stack's name in the stack file")]
KeepOpt = Annotated[int, typer.Option("--keep", help="pvestack snapshots to keep", min=1)]
StorageOpt = Annotated[str, typer.Option("--storage", help="the backup storage")]


def _stack_guest(cfg: StackFile, client: Any, name: str) -> daytwo.Guest:
    found = [st for st in cfg.stack if st.name == name]
    if not found:
        known = ", ".join(s.name for s in cfg.stack)
        _fail(PvestackError(f"no stack '{name}' in {cfg.source_file} (stacks: {known})"))
    node, vmid = found[0].node, None if found[0].vmid == "auto" else int(found[0].vmid)
    return _guard(lambda: daytwo.find_guest(client, name, node, vmid))


def _open(config: Path, insecure: bool, stack: str) -> tuple[Any, daytwo.Guest]:
    cfg = _load(config)
    client = _client(cfg, insecure)
    return client, _stack_guest(cfg, client, stack)


@app.command()
def snapshot(
    stack: StackArg, *, config: ConfigOpt = Path(DEFAULT_FILE), keep: KeepOpt = 3,
    insecure: InsecureOpt = False,
) -> None:  # fmt: skip
    """Take a PVE snapshot of the stack's CT (pvestack-<UTC time>) and prune to --keep."""
    client, guest = _open(config, insecure, stack)
    now = datetime.now(UTC)
    snap = _guard(lambda: daytwo.take_snapshot(client, guest, now=now))
    out.print(f"snapshot {snap.name} of CT {guest.vmid} taken", markup=False)
    pruned = _guard(lambda: daytwo.prune(client, guest, keep))
    for name in pruned.deleted:
        out.print(f"deleted old snapshot {name} (keep {keep})", markup=False)


@app.command()
def snapshots(
    stack: StackArg, *, config: ConfigOpt = Path(DEFAULT_FILE), json_out: JsonOpt = False,
    insecure: InsecureOpt = False,
) -> None:  # fmt: skip
    """List the CT's snapshots (pvestack's and others')."""
    client, guest = _open(config, insecure, stack)
    have = _guard(lambda: daytwo.list_snapshots(client, guest))
    if json_out:
        _print_json([{"name": s.name, "taken": s.taken.isoformat() if s.taken else None,
                      "description": s.description, "parent": s.parent, "pvestack": s.ours}
                     for s in have.snapshots])  # fmt: skip
        return
    for s in have.snapshots:
        mark = "*" if s.name == have.current_parent else " "
        who = "pvestack" if s.ours else "other"
        out.print(f"{mark} {s.name:<28} {who:<8} {s.description}", markup=False)


@app.command()
def rollback(
    stack: StackArg, name: Annotated[str | None, typer.Argument(help="snapshot")] = None, *,
    config: ConfigOpt = Path(DEFAULT_FILE), insecure: InsecureOpt = False,
) -> None:  # fmt: skip
    """Roll the CT back to a snapshot (default: the newest pvestack one) and start it."""
    client, guest = _open(config, insecure, stack)
    if name is None:
        ours = [s for s in _guard(lambda: daytwo.list_snapshots(client, guest)).snapshots
                if s.ours]  # fmt: skip
        if not ours:
            _fail(PvestackError(f"CT {guest.vmid} has no pvestack snapshot to roll back to"))
        name = ours[-1].name
    target = name
    res = _guard(lambda: daytwo.rollback(client, guest, target))
    out.print(f"CT {guest.vmid} rolled back to {res.name} and started", markup=False)
    if res.protected:
        out.print("note: protection=1 guards removal only; PVE rolls back regardless")


@app.command()
def backup(
    stack: StackArg, *, config: ConfigOpt = Path(DEFAULT_FILE), storage: StorageOpt = "local",
    mode: Annotated[str, typer.Option(help="snapshot | suspend | stop")] = "snapshot",
    compress: Annotated[str, typer.Option(help="zstd | gzip | 0")] = "zstd",
    insecure: InsecureOpt = False,
) -> None:  # fmt: skip
    """Back the CT up with vzdump (notes name the stack)."""
    if mode not in ("snapshot", "suspend", "stop") or compress not in ("zstd", "gzip", "0"):
        _fail(PvestackError("--mode: snapshot|suspend|stop, --compress: zstd|gzip|0"))
    client, guest = _open(config, insecure, stack)
    m, c = cast("daytwo.BackupMode", mode), cast("daytwo.Compression", compress)
    res = _guard(lambda: daytwo.backup(client, guest, storage=storage, mode=m, compress=c))
    out.print(f"backup {res.backup.volid} ({res.backup.size} bytes, mode {res.mode_used})",
              markup=False)  # fmt: skip
    for line in res.excluded:
        out.print(f"  not in it: {line}", markup=False)


@app.command()
def backups(
    stack: StackArg, *, config: ConfigOpt = Path(DEFAULT_FILE), storage: StorageOpt = "local",
    json_out: JsonOpt = False, insecure: InsecureOpt = False,
) -> None:  # fmt: skip
    """List the stack's backups and PVE's restore command."""
    client, guest = _open(config, insecure, stack)
    found = _guard(lambda: daytwo.list_backups(client, guest, storage))
    if json_out:
        _print_json([{"volid": b.volid, "size": b.size, "created": b.created.isoformat(),
                      "notes": b.notes, "protected": b.protected} for b in found])  # fmt: skip
        return
    for b in found:
        out.print(f"{b.created:%Y-%m-%d %H:%M} {b.volid} {b.size} {b.notes}", markup=False)
    if found:
        cmd = daytwo.restore_command(found[-1], 0, "local-lvm").replace(" 0 ", " NEW_VMID ")
        out.print(f"restore (as root on the node): {cmd}", markup=False)


@app.command()
def status(
    *, config: ConfigOpt = Path(DEFAULT_FILE), json_out: JsonOpt = False,
    insecure: InsecureOpt = False,
) -> None:  # fmt: skip
    """One line per stack: CT state, addresses, uptime, pvestack snapshots."""
    cfg = _load(config)
    client = _client(cfg, insecure)
    rows = []
    for st in cfg.stack:
        name, node, vmid = st.name, st.node, None if st.vmid == "auto" else int(st.vmid)
        rows.append(_guard(lambda: daytwo.stack_status(client, name, node, vmid)))  # noqa: B023
    if json_out:
        _print_json([r.to_json() for r in rows])
        return
    for r in rows:
        addrs = ",".join(r.addresses) or "-"
        out.print(f"{r.stack:<16} CT {r.vmid or '-':<6} {r.state:<8} {addrs:<20} "
                  f"up {r.uptime_s}s  snapshots {len(r.snapshots)}"
                  + (f"  lock {r.lock}" if r.lock else ""), markup=False)  # fmt: skip


app.add_typer(lab_app, name="lab", help="the lab: a PVE-node emulator on real LXC")


def main() -> None:
    app()


__all__ = ["app", "main"]


if __name__ == "__main__":
    main()
