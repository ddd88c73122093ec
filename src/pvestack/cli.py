"""The command line (typer + rich): parse flags, call ``_engine``, print.

Exit codes: 0 done / nothing to change, 1 error, 2 changes pending
(``plan --detailed-exitcode``), 3 apply did the token's part and waits for root steps.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from pvelab.cli import app as lab_app
from pvestack import __version__
from pvestack import _engine as engine
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
ChownOpt = Annotated[
    bool,
    typer.Option("--chown-recursive", help="chown host bind-mount dirs recursively (default: top)"),
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
            err.print(f"  {p}", markup=False)
    else:
        err.print("[bold red]error:[/] ", end="")
        err.print(str(e), markup=False)
        if e.hint:
            err.print("[yellow]hint:[/] ", end="")
            err.print(e.hint, markup=False)
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
        err.print(f"[bold yellow]warning:[/] {w}", markup=True)
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
    chown_recursive: ChownOpt = False,
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
        err.print("[bold yellow]warning:[/] host facts not read: " + escape(root.reason))
    try:
        result = _guard(
            lambda: engine.plan(
                cfg, client, adopt=adopt, chown_recursive=chown_recursive, reader=reader
            )
        )
    finally:
        if root and root.transport:
            root.transport.close()
    p = result.plan
    if json_out:
        data = p.to_json()
        data["api_calls"] = result.api_calls
        _print_json(data)
    else:
        out.print(f"pvestack plan: {cfg.source_file}", markup=False)
        out.print(render_text(p, root_via=cfg.root.via), markup=False)
    if p.refused:  # a guest blocks a stack: the user must act
        raise typer.Exit(1)
    if detailed_exitcode and p.changes:
        raise typer.Exit(2)


# ---------------------------------------------------------------- apply


def _progress(a: Action, phase: str, detail: str) -> None:
    line = f"{a.change.symbol} {a.id} [{a.actor.value}] {a.target}"
    if phase == "progress":
        if a.actor is not Actor.API and detail.strip():  # root/guest output, masked
            err.print(f"    [dim]│ {escape(detail.rstrip())}[/]")
    elif phase == "start":
        err.print(f"[cyan]…[/] {escape(line)}")
    elif phase == "done":
        err.print(f"[green]✓[/] {escape(a.id)}")
    elif phase == "skipped":
        err.print(f"[green]=[/] {escape(a.id)}: {escape(detail)}")
    elif phase == "pending":
        tag = escape(f"[{a.actor.value}]")
        err.print(f"[yellow]⏸[/] {escape(a.id)} {tag}: pending ({escape(detail)})")
    elif phase == "failed":
        err.print(f"[red]✗[/] {escape(a.id)}: {escape(detail)}")


@app.command()
def apply(
    *,
    config: ConfigOpt = Path(DEFAULT_FILE),
    json_out: JsonOpt = False,
    adopt: AdoptOpt = False,
    chown_recursive: ChownOpt = False,
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
        err.print("[bold yellow]warning:[/] " + escape(root.reason))
    report: Any = None
    script: str | None = None
    try:
        reader = engine.TransportFactReader(root.transport) if root.transport else None
        result = _guard(
            lambda: engine.plan(
                cfg, client, adopt=adopt, chown_recursive=chown_recursive, reader=reader
            )
        )
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
            fresh = _guard(
                lambda: engine.plan(cfg, client, adopt=adopt, chown_recursive=chown_recursive)
            ).plan
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
                p = _guard(
                    lambda: engine.plan(cfg, client, adopt=adopt, chown_recursive=chown_recursive)
                ).plan
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
        out.print(f"Root steps pending: {res.pending_reason}", markup=False)
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
    chown_recursive: ChownOpt = False,
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
    result = _guard(lambda: engine.plan(cfg, client, adopt=adopt, chown_recursive=chown_recursive))
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
            f"not in the script: {escape(a.id)} (it carries a secret or waits for one: "
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
        show.print(f"  ! refused: {r}", markup=False)
    for name in dp.absent:
        show.print(f"  = {name}: no container, nothing to destroy", markup=False)
    for t in dp.targets:
        show.print(
            f"  - lxc/{t.vmid} on {t.node} ({t.hostname}, stack {t.stack}, {t.status})",
            markup=False,
        )
        for v in t.volumes:
            show.print(f"        volume DELETED with it: {v}", markup=False)
        for b in t.bind_mounts:
            show.print(f"        {b}", markup=False)
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
    res = engine.destroy(dp, client, on_progress=lambda m: err.print(m, markup=False))
    if json_out:
        _print_json({**dp.to_json(), "result": res.to_json()})
    else:
        for d in res.done:
            out.print(f"destroyed {d}", markup=False)
        for s in res.skipped:
            out.print(f"kept {s}", markup=False)
        for f in res.failed:
            err.print(f"[red]failed[/] {f}")
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
        colour = {"pass": "green", "fail": "red", "skip": "yellow", "unverified": "magenta"}.get(
            r.status.value, "white"
        )
        out.print(f"[{colour}]{r.status.value:>4}[/] {escape(r.stack)}: {escape(r.title)}")
        if r.evidence:
            out.print(f"       {r.evidence}", markup=False)
        if r.fix and r.status.value in ("fail", "unverified"):
            out.print(f"       fix: {r.fix}", markup=False)


# ---------------------------------------------------------------- schema / version


@app.command()
def schema() -> None:
    """Print the JSON Schema of the stack file (for editors)."""
    _print_json(json_schema())


@app.command()
def version() -> None:
    """Print the version."""
    out.print(__version__)


app.add_typer(lab_app, name="lab", help="the lab: a PVE-node emulator on real LXC")


def main() -> None:
    app()


__all__ = ["app", "main"]


if __name__ == "__main__":
    main()
