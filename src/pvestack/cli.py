"""The command line (typer): parse options, call one engine workflow, render.

Options every command shares are declared once (``_COMMON``) and added to each
command's signature by ``_command``. Heavy modules (the engine, rich, pydantic,
proxmoxer, paramiko, jinja2) are imported inside the commands, so ``--help`` starts fast.

Exit codes: 0 done / nothing to change, 1 error, 2 changes pending
(``plan --detailed-exitcode``), 3 apply did the token's part and waits for root steps.
"""

import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from pvestack._daytwo import Guest
    from pvestack._doctor import DoctorReport
    from pvestack._engine import ApplyRun, DestroyPlan, Options, PlanResult, Session
    from pvestack._errors import PvestackError
    from pvestack._model import Action, Plan
    from pvestack.verify import VerifyReport

DEFAULT_FILE = "pvestack.toml"  # as pvestack._config.DEFAULT_FILE (not imported: start-up)

app = typer.Typer(
    name="pvestack",
    help="Deploy Docker app stacks into unprivileged Proxmox VE LXC containers from one file.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    # the group's --help is the callback's option below; typer's own would coerce its
    # unset value through pydantic on every subcommand's --help (slow start-up)
    context_settings={"help_option_names": []},
)
_HELP = {"help_option_names": ["--help"]}  # each command's own --help


def _group_help(ctx: typer.Context, value: bool) -> None:
    if value:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)


@app.callback()
def _main(
    help: Annotated[
        bool,
        typer.Option(
            "--help", is_eager=True, callback=_group_help, help="Show this message and exit."
        ),
    ] = False,
) -> None:
    """Deploy Docker app stacks into unprivileged Proxmox VE LXC containers from one file."""


T = TypeVar("T")

# ---------------------------------------------------------------- options, declared once

_KW = inspect.Parameter.KEYWORD_ONLY


def _opt(name: str, default: Any, kind: Any, *flags: str, help: str) -> inspect.Parameter:
    annotation = Annotated[kind, typer.Option(*flags, help=help)]
    return inspect.Parameter(name, _KW, default=default, annotation=annotation)


_STR = str | None
_COMMON: dict[str, inspect.Parameter] = {
    p.name: p
    for p in (
        _opt("config", Path(DEFAULT_FILE), Path, "--config", "-c", help="the stack file"),
        _opt(
            "insecure", False, bool, "--insecure",
            help="do NOT verify the node's TLS certificate (test only)",
        ),
        _opt("api_url", None, _STR, "--api-url", help="overrides pve.api_url"),
        _opt("token_id", None, _STR, "--token-id", help="overrides pve.token_id"),
        _opt(
            "fingerprint", None, _STR, "--fingerprint",
            help="overrides pve.fingerprint (SHA-256 pin)",
        ),
        _opt("ca_file", None, _STR, "--ca-file", help="overrides pve.ca_file"),
        _opt("node", None, _STR, "--node", help="overrides every stack's node"),
        _opt(
            "root_via", None, _STR, "--root-via", help="ssh | console | none (overrides root.via)"
        ),
        _opt(
            "adopt", False, bool, "--adopt",
            help="manage a guest that lacks the pvestack mark (diff first)",
        ),
    )
}  # fmt: skip
_CONNECTION = ("config", "insecure", "api_url", "token_id", "fingerprint", "ca_file", "node")
_PLANNING = (*_CONNECTION, "root_via", "adopt")
_OVERRIDES = {
    "api_url": "API_URL",
    "token_id": "TOKEN_ID",
    "fingerprint": "FINGERPRINT",
    "ca_file": "CA_FILE",
    "node": "NODE",
    "root_via": "ROOT_VIA",
}

JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output on stdout")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="do not ask (scripts)")]


def _options(values: dict[str, Any]) -> "Options":
    from pvestack._engine import Options  # noqa: PLC0415

    return Options(
        config=values["config"],
        overrides={_OVERRIDES[k]: v for k, v in values.items() if k in _OVERRIDES and v},
        insecure=values.get("insecure", False),
        adopt=values.get("adopt", False),
    )


def _command(
    name: str | None = None, common: tuple[str, ...] = _PLANNING
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register ``fn(opts, **own)`` as a command taking its own options plus ``common``."""

    def deco(fn: Callable[..., None]) -> Callable[..., None]:
        # no `from __future__ import annotations` here: the annotations are objects
        own = [p for p in inspect.signature(fn).parameters.values() if p.name != "opts"]
        params = [*own, *(_COMMON[n] for n in common)]

        def wrapper(**kw: Any) -> None:
            values = {n: kw.pop(n) for n in common}
            fn(_options(values), **kw)

        wrapper.__name__ = fn.__name__
        wrapper.__doc__ = fn.__doc__
        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        app.command(name, context_settings=_HELP)(wrapper)
        return fn

    return deco


# ---------------------------------------------------------------- output (rich, lazily)

_consoles: dict[bool, "Console"] = {}


def _console(stderr: bool = False) -> "Console":
    if stderr not in _consoles:
        from rich.console import Console  # noqa: PLC0415

        _consoles[stderr] = Console(stderr=stderr, highlight=False, soft_wrap=True)
    return _consoles[stderr]


def _say(
    text: str, *, stderr: bool = False, style: str = "", end: str = "\n", raw: bool = False
) -> None:
    """Print plain text (never read as markup), optionally in one style. Terminal control
    characters from data are shown escaped (``_commands.display``); line breaks are kept.
    ``raw``: text pvestack made itself that must stay byte-exact (a script to paste)."""
    from pvestack._commands import display  # noqa: PLC0415

    out = text if raw else display(text, keep_newlines=True)
    _console(stderr).print(out, style=style or None, markup=False, end=end)


def _fail(e: "PvestackError") -> typer.Exit:
    from pvestack._errors import ConfigError  # noqa: PLC0415

    if isinstance(e, ConfigError):
        _say(
            f"error: the stack file has {len(e.problems)} problem(s):",
            stderr=True,
            style="bold red",
        )
        for p in e.problems:
            _say(f"  {p}", stderr=True)
    else:
        _say("error: ", stderr=True, style="bold red", end="")
        _say(str(e), stderr=True)
        if e.hint:
            _say("hint: ", stderr=True, style="yellow", end="")
            _say(e.hint, stderr=True)
    return typer.Exit(1)


def _run(opts: "Options", body: Callable[["Session"], T]) -> T:
    """Open one session, run ``body`` on it, close it; errors printed, exit 1."""
    from pvestack._engine import Session  # noqa: PLC0415
    from pvestack._errors import PvestackError  # noqa: PLC0415

    try:
        with Session.load(opts) as s:
            try:
                return body(s)
            finally:
                for w in s.client_warnings:
                    _say(f"warning: {w}", stderr=True, style="bold yellow")
    except PvestackError as e:
        raise _fail(e) from None


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


# ---------------------------------------------------------------- plan


@_command()
def plan(
    opts: "Options",
    *,
    json_out: JsonOpt = False,
    detailed_exitcode: Annotated[
        bool,
        typer.Option("--detailed-exitcode", help="exit 0 no changes, 2 changes pending, 1 error"),
    ] = False,
) -> None:
    """Show what apply would change, and who must do it (api token, root, guest)."""
    from pvestack._engine import plan_run  # noqa: PLC0415
    from pvestack._render import render_text  # noqa: PLC0415

    result: PlanResult = _run(opts, plan_run)
    for n in result.notes:
        _say(f"warning: {n}", stderr=True, style="bold yellow")
    p = result.plan
    if json_out:
        _print_json({**p.to_json(), "api_calls": result.api_calls})
    else:
        _say(f"pvestack plan: {opts.config}")
        _say(render_text(p, root_via=result.root_via))
    if p.refused:  # a guest blocks a stack: the user must act
        raise typer.Exit(1)
    if detailed_exitcode and p.changes:
        raise typer.Exit(2)


# ---------------------------------------------------------------- apply


def _progress(a: "Action", phase: str, detail: str) -> None:
    from pvestack._model import Actor  # noqa: PLC0415
    from pvestack._render import action_line, safe  # noqa: PLC0415

    if phase == "progress":
        if a.actor is not Actor.API and detail.strip():  # root/guest output, masked
            _say(f"    │ {safe(detail.rstrip())}", stderr=True, style="dim")
        return
    mark, style, text = {
        "start": ("…", "cyan", action_line(a)),
        "done": ("✓", "green", a.id),
        "skipped": ("=", "green", f"{a.id}: {detail}"),
        "pending": ("⏸", "yellow", f"{a.id} [{a.actor.value}]: pending ({detail})"),
        "failed": ("✗", "red", f"{a.id}: {detail}"),
    }[phase]
    _say(f"{mark} ", stderr=True, style=style, end="")
    _say(safe(text) if phase != "failed" else text, stderr=True)


@_command()
def apply(
    opts: "Options",
    *,
    json_out: JsonOpt = False,
    yes: YesOpt = False,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="do not run verify after a complete apply")
    ] = False,
    skip_doctor: Annotated[
        bool,
        typer.Option("--skip-doctor", help="do not run doctor's checks first (experts)"),
    ] = False,
    no_rollback: Annotated[
        bool,
        typer.Option(
            "--no-rollback",
            help="upgrade: keep a failed upgrade for debugging (and upgrade a CT PVE "
            "cannot snapshot without a backup)",
        ),
    ] = False,
    backup: Annotated[
        bool, typer.Option("--backup", help="upgrade: a vzdump backup first ([stack.backup])")
    ] = False,
) -> None:
    """Do everything the plan says: the token's part through the API, root's part
    through SSH (or the console script), then the guest's. Doctor's read-only checks
    run first: a fail stops apply before anything changes. An upgrade (a new pinned
    image) takes a snapshot first and rolls back when verify fails."""
    from pvestack._engine import ApplyHooks, apply_run  # noqa: PLC0415

    def show(p: "Plan", via: str) -> None:
        from pvestack._render import render_text  # noqa: PLC0415

        _say(render_text(p, root_via=via))

    def confirm(_p: "Plan") -> None:
        if not yes and sys.stdin.isatty():
            typer.confirm("Adopt and change the guests above?", abort=True)

    interactive = not json_out and sys.stdin.isatty()
    hooks = ApplyHooks(
        on_plan=None if json_out else show,
        confirm=confirm,
        on_progress=None if json_out else _progress,
        hand_off=_hand_off if interactive else None,
        on_verify=None if json_out else (lambda: _say("\nverify:")),
        on_doctor=None if json_out else _show_doctor,
    )
    run: ApplyRun = _run(
        opts,
        lambda s: apply_run(
            s, hooks, run_verify=not no_verify, run_doctor=not skip_doctor,
            no_rollback=no_rollback, backup=backup,
        ),
    )  # fmt: skip
    for n in run.notes:
        _say(f"warning: {n}", stderr=True, style="bold yellow")
    if json_out:
        data = run.result.to_json()
        data["console_script"] = run.script
        data["verify"] = run.report.to_json() if run.report is not None else None
        data["exit_code"] = run.exit_code
        data["doctor"] = _doctor_json(run.doctor) if run.doctor is not None else None
        data["upgrades"] = [u.to_json() for u in run.upgrades]
        _print_json(data)
        raise typer.Exit(run.exit_code)
    _apply_summary(run)
    raise typer.Exit(run.exit_code)


def _show_doctor(report: "DoctorReport") -> None:
    """Before apply: warnings and fails with their fixes (all of it on a fail)."""
    from pvestack._doctor import Status, render_doctor  # noqa: PLC0415

    if report.failed:
        _say(render_doctor(report), stderr=True)
        return
    for f in report.findings:
        if f.status is Status.WARN:
            _say(f"warning: doctor: {f.check}: {f.evidence}", stderr=True, style="bold yellow")
            if f.fix:
                _say(f"  fix: {f.fix}", stderr=True)


def _doctor_json(report: "DoctorReport") -> list[dict[str, str]]:
    return [{"check": f.check, "status": f.status.value, "evidence": f.evidence,
             "fix": f.fix} for f in report.findings]  # fmt: skip


def _hand_off(script: str, poll: Callable[[], Any]) -> None:
    from pvestack.executors._console import hand_off  # noqa: PLC0415

    hand_off(script, poll, write=lambda t: _say(t, end="", raw=True), interactive=True)


def _print_upgrades(run: "ApplyRun") -> None:
    for u in run.upgrades:
        moves = ", ".join(f"{s.service} {s.from_image} -> {s.to_image}" for s in u.spec.services)
        _say(f"\nupgrade {u.stack} ({moves}): " + ("ok" if u.ok else "FAILED"))
        if u.snapshot or u.backup:
            _say(f"  safety net: snapshot {u.snapshot or '-'}, backup {u.backup or '-'}")
        for title, r in (("after the upgrade", u.verify),
                         ("after the rollback to " + str(u.rolled_back_to),
                          u.verify_after_rollback)):  # fmt: skip
            if r is not None:
                _say(f"  verify {title}: " + ("green" if r.ok else "red"))
                _print_verify(r)
        if u.pruned:
            _say("  pruned: " + ", ".join(u.pruned))


def _apply_summary(run: "ApplyRun") -> None:
    from pvestack._engine import Outcome  # noqa: PLC0415

    _print_upgrades(run)
    if run.upgrades and run.report is not None:
        _say("\nverify (every stack, after apply):")
    if run.report is not None:
        _print_verify(run.report)
    res = run.result
    if res.error:  # stopped before the plan ran (doctor): not "No changes"
        _say(f"error: {res.error}", stderr=True, style="bold red")
        return
    if not run.plan.actions:
        _say("No changes." if not run.plan.refused else "Nothing done: guests refused (see above).")
        return
    done = sum(1 for r in res.results if r.outcome is Outcome.DONE)
    _say(f"\nApply: {done} done, {len(res.pending)} pending, {len(res.failed)} failed.")
    if res.pending and res.pending_reason:
        _say(f"Steps pending: {res.pending_reason}")
    if run.script:
        _say("\n# --- run this in the node's shell (as root), then apply again ---")
        _say(run.script, raw=True)


# ---------------------------------------------------------------- console-script


@_command("console-script")
def console_script(opts: "Options") -> None:
    """Print the root steps of the current plan as one idempotent script for the node's shell."""
    from pvestack._engine import console_script_run  # noqa: PLC0415

    result = _run(opts, console_script_run)
    if result.script is None and not result.left:
        _say("No root steps pending.", stderr=True)
        return
    if result.script is not None:
        sys.stdout.write(result.script)
    for a in result.left:
        _say(
            f"not in the script: {a.id} (it carries a secret or waits for one: "
            'it needs root.via = "ssh")',
            stderr=True,
        )


# ---------------------------------------------------------------- destroy


def _show_destroy_plan(dp: "DestroyPlan", *, stderr: bool) -> None:
    for r in dp.refused:
        _say(f"  ! refused: {r}", stderr=stderr)
    for name in dp.absent:
        _say(f"  = {name}: no container, nothing to destroy", stderr=stderr)
    for t in dp.targets:
        _say(f"  - {t.target} ({t.hostname}, stack {t.stack}, {t.status})", stderr=stderr)
        for v in t.volumes:
            _say(f"        volume DELETED with it: {v}", stderr=stderr)
        for b in t.bind_mounts:
            _say(f"        {b}", stderr=stderr)
        if t.protected:
            _say(
                "        protection=1: PVE refuses to delete it; pvestack leaves it", stderr=stderr
            )


@_command(common=_CONNECTION)
def destroy(opts: "Options", *, json_out: JsonOpt = False, yes: YesOpt = False) -> None:
    """Stop and delete the containers carrying this file's marks (host dirs are kept).
    Exits 1 when a guest at a stack's vmid is refused (not ours)."""
    from pvestack._engine import destroy_run  # noqa: PLC0415

    def confirm(dp: "DestroyPlan") -> None:
        _show_destroy_plan(dp, stderr=json_out)
        if yes:
            return
        if not sys.stdin.isatty():
            _say(
                "error: destroy needs --yes when not run from a terminal",
                stderr=True,
                style="bold red",
            )
            raise typer.Exit(1)
        typer.confirm("Destroy the containers above?", abort=True)

    say = lambda m: _say(m, stderr=True)  # noqa: E731
    run = _run(opts, lambda s: destroy_run(s, confirm=confirm, on_progress=say))
    if json_out:
        _print_json(run.to_json())
        raise typer.Exit(run.exit_code)
    if not run.plan.targets:
        _show_destroy_plan(run.plan, stderr=False)
        _say(
            "Nothing to destroy." if not run.plan.refused else "Nothing destroyed: guests refused."
        )
    for d in run.result.done:
        _say(f"destroyed {d}")
    for k in run.result.skipped:
        _say(f"kept {k}")
    for f in run.result.failed:
        _say(f"failed {f}", stderr=True, style="red")
    raise typer.Exit(run.exit_code)


# ---------------------------------------------------------------- verify


@_command(common=(*_CONNECTION, "root_via"))
def verify(opts: "Options", *, json_out: JsonOpt = False) -> None:
    """Check that the deployed stacks work (the seed's checklist, with evidence)."""
    from pvestack._engine import verify_and_record_run  # noqa: PLC0415

    report, notes = _run(opts, verify_and_record_run)  # the result is kept in each CT
    for n in notes:
        _say(f"warning: {n}", stderr=True, style="bold yellow")
    if json_out:
        _print_json(report.to_json())
    else:
        _print_verify(report)
    raise typer.Exit(0 if report.ok else 1)


def _print_verify(report: "VerifyReport") -> None:
    colour = {"pass": "green", "fail": "red", "skip": "yellow"}
    for r in report.results:
        colour = {"pass": "green", "fail": "red", "skip": "yellow", "unverified": "magenta"}
        _say(f"{r.status.value:>4}", style=colour.get(r.status.value, ""), end="")
        _say(f" {r.stack}: {r.title}")
        if r.evidence:
            _say(f"       {r.evidence}")
        if r.fix and r.status.value in ("fail", "unverified"):
            _say(f"       fix: {r.fix}")


# ---------------------------------------------------------------- schema / version / lab


# ---------------------------------------------------------------- doctor


@_command(common=(*_CONNECTION, "root_via"))
def doctor(opts: "Options", *, json_out: JsonOpt = False) -> None:
    """Read-only checks before anything is touched: API and TLS pin, token, privileges
    (with the pveum commands that grant what is missing), node, storages, bridge,
    template, vmid, lxc-pve vs runc, root transport. Exit 1 on a fail."""
    from pvestack._doctor import RootSettings, render_doctor  # noqa: PLC0415
    from pvestack._doctor import doctor as run_doctor  # noqa: PLC0415

    def body(s: "Session") -> Any:
        ssh = s.cfg.root.ssh
        root = RootSettings(s.cfg.root.via, ssh.host, ssh.port, ssh.known_hosts)
        return run_doctor(s.client, s.containers, root, token_id=s.cfg.pve.token_id)

    report = _run(opts, body)
    if json_out:
        _print_json(_doctor_json(report))
    else:
        _say(render_doctor(report))
    if report.failed:
        raise typer.Exit(1)


@app.command(context_settings=_HELP)
def schema() -> None:
    """Print the JSON Schema of the stack file (for editors)."""
    from pvestack._config import json_schema  # noqa: PLC0415

    _print_json(json_schema())


@app.command(context_settings=_HELP)
def version() -> None:
    """Print the version."""
    from pvestack import __version__  # noqa: PLC0415

    typer.echo(__version__)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def lab(ctx: typer.Context) -> None:
    """the lab: a PVE-node emulator on real LXC (pvestack lab --help)"""
    from pvelab.cli import app as lab_app  # noqa: PLC0415  (loaded only for `lab`)

    lab_app(args=ctx.args, prog_name="pvestack lab")


# ---------------------------------------------------------------- day two
# Thin wrappers over pvestack._daytwo (snapshots, backups, status); see DEVELOPERS.md.

StackArg = Annotated[str, typer.Argument(help="the stack's name in the stack file")]
KeepOpt = Annotated[int, typer.Option("--keep", help="pvestack snapshots to keep", min=1)]
StorageOpt = Annotated[str, typer.Option("--storage", help="the backup storage")]


def _guest_of(s: "Session", name: str) -> "Guest":
    from pvestack import _daytwo as daytwo  # noqa: PLC0415
    from pvestack._errors import PvestackError  # noqa: PLC0415

    found = [st for st in s.containers.stacks if st.name == name]
    if not found:
        known = ", ".join(st.name for st in s.containers.stacks)
        raise PvestackError(f"no stack '{name}' in {s.cfg.source_file} (stacks: {known})")
    ct = found[0].container
    return daytwo.find_guest(s.client, name, ct.node, ct.vmid)


@_command(common=_CONNECTION)
def snapshot(opts: "Options", stack: StackArg, *, keep: KeepOpt = 3) -> None:
    """Take a PVE snapshot of the stack's CT (pvestack-<UTC time>) and prune to --keep."""
    from datetime import UTC, datetime  # noqa: PLC0415

    from pvestack import _daytwo as daytwo  # noqa: PLC0415

    def body(s: "Session") -> None:
        guest = _guest_of(s, stack)
        snap = daytwo.take_snapshot(s.client, guest, now=datetime.now(UTC))
        _say(f"snapshot {snap.name} of CT {guest.vmid} taken")
        for name in daytwo.prune(s.client, guest, keep).deleted:
            _say(f"deleted old snapshot {name} (keep {keep})")

    _run(opts, body)


@_command(common=_CONNECTION)
def snapshots(opts: "Options", stack: StackArg, *, json_out: JsonOpt = False) -> None:
    """List the CT's snapshots (pvestack's and others')."""
    from pvestack import _daytwo as daytwo  # noqa: PLC0415

    have = _run(opts, lambda s: daytwo.list_snapshots(s.client, _guest_of(s, stack)))
    if json_out:
        _print_json([{"name": x.name, "taken": x.taken.isoformat() if x.taken else None,
                      "description": x.description, "parent": x.parent, "pvestack": x.ours}
                     for x in have.snapshots])  # fmt: skip
        return
    for x in have.snapshots:
        mark = "*" if x.name == have.current_parent else " "
        who = "pvestack" if x.ours else "other"
        _say(f"{mark} {x.name:<28} {who:<8} {x.description}")


@_command(common=_CONNECTION)
def rollback(
    opts: "Options",
    stack: StackArg,
    name: Annotated[str | None, typer.Argument(help="snapshot")] = None,
) -> None:
    """Roll the CT back to a snapshot (default: the newest pvestack one) and start it."""
    from pvestack import _daytwo as daytwo  # noqa: PLC0415
    from pvestack._errors import PvestackError  # noqa: PLC0415

    def body(s: "Session") -> None:
        guest = _guest_of(s, stack)
        target = name
        if target is None:
            ours = [x for x in daytwo.list_snapshots(s.client, guest).snapshots if x.ours]
            if not ours:
                raise PvestackError(f"CT {guest.vmid} has no pvestack snapshot to roll back to")
            target = ours[-1].name
        res = daytwo.rollback(s.client, guest, target)
        _say(f"CT {guest.vmid} rolled back to {res.name} and started")
        if res.protected:
            _say("note: protection=1 guards removal only; PVE rolls back regardless")

    _run(opts, body)


@_command(common=_CONNECTION)
def backup(
    opts: "Options",
    stack: StackArg,
    *,
    storage: StorageOpt = "local",
    mode: Annotated[str, typer.Option(help="snapshot | suspend | stop")] = "snapshot",
    compress: Annotated[str, typer.Option(help="zstd | gzip | 0")] = "zstd",
) -> None:
    """Back the CT up with vzdump (notes name the stack)."""
    from pvestack import _daytwo as daytwo  # noqa: PLC0415
    from pvestack._errors import PvestackError  # noqa: PLC0415

    if mode not in ("snapshot", "suspend", "stop") or compress not in ("zstd", "gzip", "0"):
        raise _fail(PvestackError("--mode: snapshot|suspend|stop, --compress: zstd|gzip|0"))

    def body(s: "Session") -> None:
        guest = _guest_of(s, stack)
        m = cast("daytwo.BackupMode", mode)
        c = cast("daytwo.Compression", compress)
        res = daytwo.backup(s.client, guest, storage=storage, mode=m, compress=c)
        _say(f"backup {res.backup.volid} ({res.backup.size} bytes, mode {res.mode_used})")
        for line in res.excluded:
            _say(f"  not in it: {line}")

    _run(opts, body)


@_command(common=_CONNECTION)
def backups(
    opts: "Options", stack: StackArg, *, storage: StorageOpt = "local", json_out: JsonOpt = False
) -> None:
    """List the stack's backups and PVE's restore command."""
    from pvestack import _daytwo as daytwo  # noqa: PLC0415

    found = _run(opts, lambda s: daytwo.list_backups(s.client, _guest_of(s, stack), storage))
    if json_out:
        _print_json([{"volid": b.volid, "size": b.size, "created": b.created.isoformat(),
                      "notes": b.notes, "protected": b.protected} for b in found])  # fmt: skip
        return
    for b in found:
        _say(f"{b.created:%Y-%m-%d %H:%M} {b.volid} {b.size} {b.notes}")
    if found:
        cmd = daytwo.restore_command(found[-1], 0, "local-lvm").replace(" 0 ", " NEW_VMID ")
        _say(f"restore (as root on the node): {cmd}")


@_command(common=(*_CONNECTION, "root_via"))
def status(opts: "Options", *, json_out: JsonOpt = False) -> None:
    """One line per stack: CT state, addresses, uptime, pvestack snapshots; then its app's
    services (state, health, running vs wanted image) and the last verify (kept in the CT)."""
    from pvestack._engine import status_run  # noqa: PLC0415

    rows = _run(opts, status_run)
    if json_out:
        _print_json([r.to_json() for r in rows])
        return
    for r in rows:
        addrs = ",".join(r.addresses) or "-"
        _say(
            f"{r.stack:<16} CT {r.vmid or '-':<6} {r.state:<8} {addrs:<20} "
            f"up {r.uptime_s}s  snapshots {len(r.snapshots)}"
            + (f"  lock {r.lock}" if r.lock else "")
        )
        if r.apps is None:
            continue
        for svc in r.apps.services:
            image = svc.running_image + (
                f" (wanted {svc.wanted_image})"
                if svc.wanted_image and svc.wanted_image != svc.running_image
                else ""
            )
            health = f" {svc.health}" if svc.health else ""
            _say(f"  service {svc.name:<12} {svc.state}{health:<10} {image}")
        _say(f"  last verify: {r.apps.last_verify or 'none recorded'}")
        if r.apps.error:
            _say(f"  app: {r.apps.error}", style="yellow")


# ---------------------------------------------------------------- logs, shell
# Thin wrappers over pvestack._engine._logs (the guest route of the stack file).


@_command(common=(*_CONNECTION, "root_via"))
def logs(
    opts: "Options",
    stack: StackArg,
    service: Annotated[str | None, typer.Argument(help="one service (default: all)")] = None,
    *,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing (Ctrl-C)")] = False,
    since: Annotated[
        str | None, typer.Option("--since", help="from: 10m, 1h30m, 2026-12-02T07:00:00Z")
    ] = None,
    tail: Annotated[
        int | None, typer.Option("--tail", help="the last N lines per container", min=0)
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="one JSON object a line: service, time, message")
    ] = False,
) -> None:
    """The app's `docker compose logs` in the stack's container (over the guest route).
    Exit 0, 1 on an error, 130 after Ctrl-C."""
    from pvestack._engine import logs_run  # noqa: PLC0415
    from pvestack._steps.logs import LogLine  # noqa: PLC0415

    def line(x: "str | LogLine") -> None:
        if json_out:
            data = x.to_json() if isinstance(x, LogLine) else {"service": None, "time": None,
                                                               "message": x}  # fmt: skip
            sys.stdout.write(json.dumps(data) + "\n")
        else:
            _say(f"{x.service} | {x.message}" if isinstance(x, LogLine) else x)
        sys.stdout.flush()

    body = lambda s: logs_run(  # noqa: E731
        s, stack, service=service, follow=follow, since=since, tail=tail, json=json_out,
        on_line=line, on_error=lambda t: _say(t, stderr=True),
    )  # fmt: skip
    try:
        _run(opts, body)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@_command(
    common=(*_CONNECTION, "root_via"),
)
def shell(
    opts: "Options",
    stack: StackArg,
    command: Annotated[
        list[str] | None, typer.Argument(help="after --: run this command, no terminal")
    ] = None,
) -> None:
    """A root shell in the stack's container, like `pct enter` (over the guest route:
    the CT's own SSH, or `pct enter` through the node's root SSH). Needs a terminal;
    `pvestack shell STACK -- CMD ARGS...` runs one command without one (piped stdin goes
    to it). Exits with the shell's (or the command's) exit status."""
    import os  # noqa: PLC0415

    from pvestack._engine import Terminal, shell_run  # noqa: PLC0415

    term = None
    if sys.stdin.isatty() and sys.stdout.isatty():
        term = Terminal(sys.stdin.fileno(), sys.stdout.fileno(), os.environ.get("TERM", "xterm"))

    def out(stream: Any) -> Callable[[bytes], None]:
        def write(data: bytes) -> None:  # the command's own bytes, as `ssh HOST CMD` does
            stream.buffer.write(data)
            stream.flush()

        return write

    # `-- CMD` with piped input (`< file`, `| ...`): copied to CMD; a terminal's is not read
    piped = sys.stdin.buffer if command and not sys.stdin.isatty() else None
    sys.stdout.flush()
    try:
        code = _run(
            opts,
            lambda s: shell_run(
                s,
                stack,
                command or [],
                term,
                on_stdout=out(sys.stdout),
                on_stderr=out(sys.stderr),
                stdin=piped,
            ),
        )
    except KeyboardInterrupt:  # Ctrl-C during `-- CMD` (a terminal session passes it on)
        raise typer.Exit(130) from None
    raise typer.Exit(code)


def main() -> None:
    app()


__all__ = ["app", "main"]


if __name__ == "__main__":
    main()
