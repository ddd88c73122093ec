"""``pvestack lab up|down|status|env`` (typer); wired in by ``pvestack.cli``.

``eval "$(pvestack lab up)"`` or ``eval "$(pvestack lab env)"`` points any pvestack command
(or PVE client) at the lab. Progress goes to stderr; stdout carries only ``export`` lines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pvelab.control import Lab, LabError, export_lines

app = typer.Typer(
    help="the lab: a PVE-node emulator on real LXC", no_args_is_help=True, add_completion=False
)
err = Console(stderr=True, highlight=False)

LabDirOpt = Annotated[
    Path | None,
    typer.Option("--lab-dir", help="lab state directory (env PVESTACK_LAB_DIR)"),
]


def _lab(lab_dir: Path | None) -> Lab:
    return Lab(lab_dir)


@app.command()
def up(
    lab_dir: LabDirOpt = None,
    no_install: Annotated[
        bool, typer.Option("--no-install", help="do not apt-get install missing packages")
    ] = False,
) -> None:
    """Bring the lab up (idempotent) and print the connection as export lines."""
    lab = _lab(lab_dir)
    try:
        env = lab.up(install=not no_install, log=lambda m: err.print(f"lab: {m}"))
    except (LabError, RuntimeError, OSError) as e:
        err.print(f"[bold red]error:[/] {e}")
        raise typer.Exit(1) from e
    typer.echo(export_lines(env, lab.dir / "bin"), nl=False)


@app.command()
def env(lab_dir: LabDirOpt = None) -> None:
    """Print the connection again as export lines."""
    lab = _lab(lab_dir)
    try:
        typer.echo(export_lines(lab.env(), lab.dir / "bin"), nl=False)
    except LabError as e:
        err.print(f"[bold red]error:[/] {e}")
        raise typer.Exit(1) from e


@app.command()
def status(
    lab_dir: LabDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False,
) -> None:
    """What runs: network, dnsmasq, template server, sshd, API, containers."""
    st = _lab(lab_dir).status()
    if as_json:
        typer.echo(json.dumps(st, indent=1))
        return
    for key, value in st.items():
        if isinstance(value, dict):
            typer.echo(f"{key}:")
            for k, v in value.items():
                typer.echo(f"  {k}: {v}")
        else:
            typer.echo(f"{key}: {value if value is not None else '-'}")


@app.command()
def down(
    lab_dir: LabDirOpt = None,
    purge: Annotated[
        bool,
        typer.Option("--purge", help="also remove the built template (and the lab dir when empty)"),
    ] = False,
) -> None:
    """Remove every container, the bridge, the rules and the processes the lab made."""
    try:
        _lab(lab_dir).down(purge=purge)
    except (LabError, RuntimeError, OSError) as e:
        err.print(f"[bold red]error:[/] {e}")
        raise typer.Exit(1) from e
    err.print("lab: down")
