"""The console script in a form that survives a paste into the node's shell.

Pasting is not running a file: the shell reads the pasted text line by line from the
terminal, and every command it starts shares that terminal as its stdin, so a command
that reads stdin (``apt-get``, ``pct exec``, ``ssh``, ``read``) swallows the rest of
the paste. ``render_paste_script`` therefore:

* wraps the whole script (``_commands.render_script``: the same ``Step`` data and the
  one quoting function the SSH executor's renderings use) in ONE function whose body is
  a subshell, ``pvestack_root_steps() ( ... )``: the shell parses the whole definition
  before anything runs, and ``set -e``/``exit`` end that subshell, never the
  operator's login shell;
* calls it with ``</dev/null``: no command in it can read the terminal (payloads are
  heredocs inside the text);
* refuses secrets (``render_script`` does), and tab characters (a pasted tab asks
  readline for completion).

Text typed or pasted after it is read by the shell as the next command, as expected.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pvestack._commands import Step, render_script

FUNCTION = "pvestack_root_steps"


def render_paste_script(
    steps: Sequence[Step], *, title: str, success_marker: str, preamble: Iterable[str] = ()
) -> str:
    """``steps`` as one paste-safe, idempotent script ending with ``success_marker``."""
    body = render_script(steps, title=title, success_marker=success_marker, preamble=preamble)
    lines = body.rstrip("\n").split("\n")
    shebang = lines[0] if lines and lines[0].startswith("#!") else "#!/usr/bin/env bash"
    if lines and lines[0].startswith("#!"):
        lines = lines[1:]  # kept first (a comment when pasted; tools see the shell)
    text = "\n".join(lines)
    if "\t" in text:
        raise ValueError("a pasted tab triggers completion: the script must not contain tabs")
    head = [
        shebang,
        "# Paste all of it into the PVE node's shell as root. The shell reads it whole before",
        "# anything runs, and nothing in it reads your terminal. Safe to run again.",
        f"{FUNCTION}() (",
    ]
    tail = [")", f"{FUNCTION} </dev/null"]
    return "\n".join([*head, text, *tail]) + "\n"
