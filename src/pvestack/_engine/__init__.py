"""The engine: one session per run and the workflows (plan, apply with the console
hand-off, destroy, verify, the console script). The CLI calls one entry point each:

    with Session.load(Options(...)) as s:
        plan_run(s) | apply_run(s, hooks) | destroy_run(s, confirm=...) | verify_run(s)
        | console_script_run(s) | logs_run(s, stack, ...) | shell_run(s, stack, ...)

The lower steps (``plan``, ``apply``, ``destroy_plan``, ``destroy``,
``root_effects_missing``) are public for tests and tools.
"""

from __future__ import annotations

from pvestack._client import CallHook, PveClient
from pvestack._config import StackFile
from pvestack._desired import token_secret
from pvestack._engine._apply import ActionResult, ApplyResult, Outcome, ProgressHook, apply
from pvestack._engine._console import (
    CONSOLE_SUCCESS_MARKER,
    console_actions,
    render_console_script,
    root_effects_missing,
    root_steps,
)
from pvestack._engine._destroy import (
    DestroyPlan,
    DestroyResult,
    DestroyTarget,
    destroy,
    destroy_plan,
)
from pvestack._engine._facts import TransportFactReader
from pvestack._engine._logs import LogSink, logs_run, shell_run
from pvestack._engine._nodecheck import RuncGuard, preflight, runc_guard
from pvestack._engine._session import (
    Options,
    RootAccess,
    Session,
    client_settings,
    open_root,
    ssh_settings,
)
from pvestack._engine._status import status_run, verify_and_record_run
from pvestack._engine._upgrade import Upgrader, UpgradeReport
from pvestack._engine._workflows import (
    ApplyHooks,
    ApplyRun,
    ConsoleScript,
    DestroyRun,
    PlanResult,
    apply_run,
    console_script_run,
    destroy_run,
    plan,
    plan_run,
    verify_run,
)
from pvestack.executors._stream import Terminal


def connect(
    cfg: StackFile, *, insecure: bool = False, on_call: CallHook | None = None
) -> PveClient:
    """A client for ``cfg`` (resolves the token secret; a ``Session`` does it once)."""
    return PveClient(client_settings(cfg, token_secret(cfg), insecure=insecure), on_call=on_call)


__all__ = [
    "CONSOLE_SUCCESS_MARKER",
    "ActionResult",
    "ApplyHooks",
    "ApplyResult",
    "ApplyRun",
    "ConsoleScript",
    "DestroyPlan",
    "DestroyResult",
    "DestroyRun",
    "DestroyTarget",
    "LogSink",
    "Options",
    "Outcome",
    "PlanResult",
    "ProgressHook",
    "RootAccess",
    "RuncGuard",
    "Session",
    "Terminal",
    "TransportFactReader",
    "UpgradeReport",
    "Upgrader",
    "apply",
    "apply_run",
    "client_settings",
    "connect",
    "console_actions",
    "console_script_run",
    "destroy",
    "destroy_plan",
    "destroy_run",
    "logs_run",
    "open_root",
    "plan",
    "plan_run",
    "preflight",
    "render_console_script",
    "root_effects_missing",
    "root_steps",
    "runc_guard",
    "shell_run",
    "ssh_settings",
    "status_run",
    "verify_and_record_run",
    "verify_run",
]
