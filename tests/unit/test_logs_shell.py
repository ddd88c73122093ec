"""`pvestack logs` / `pvestack shell`: the options checked, the commands as data, the
LOGS program run by a real ``sh`` against a recording stand-in for ``docker`` (in a tmp
dir), the engine's line handling and route rendering, the CLI's refusals."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from examplekit import EXAMPLE
from pvestack._commands import Secret
from pvestack._engine._logs import Route, _Lines
from pvestack._errors import PvestackError
from pvestack._steps.logs import (
    LOGS,
    TAGGED,
    LogLine,
    check_since,
    logs_command,
    logs_query,
    parse_tagged,
    shell_command,
)
from pvestack.cli import app

SERVICES = ("hermes", "dashboard")
ENV = {"PVESTACK_TOKEN_SECRET": "t", "LITELLM_API_KEY": "sk-litellm-SECRET"}


# ---------------------------------------------------------------- options


def test_a_known_service_passes_an_unknown_or_odd_one_is_refused() -> None:
    assert logs_query("hermes", SERVICES).service == "hermes"
    with pytest.raises(PvestackError, match=r"no service 'web' \(its services: hermes, dash"):
        logs_query("web", SERVICES)
    for odd in ("-f", "a b", "$(reboot)", "x;id", "", "../etc", "é"):
        with pytest.raises(PvestackError) as ei:
            logs_query(odd, SERVICES)
        assert "not a compose service name" in str(ei.value)
        assert "hermes, dashboard" in (ei.value.hint or "")


@pytest.mark.parametrize(
    "value", ["10m", "1h30m", "90s", "1.5h", "1764662400", "2026-12-02", "2026-12-02T07:00:00Z",
              "2026-12-02T07:00:00.5+01:00", "2026-12-02T07:00"],
)  # fmt: skip
def test_since_takes_what_docker_takes(value: str) -> None:
    assert check_since(value) == value


@pytest.mark.parametrize(
    "value", ["yesterday", "10 m", "-10m", "10m; rm -rf /", "$(id)", "2026-12-02 07:00", "10x"]
)
def test_since_refuses_anything_else_with_the_forms(value: str) -> None:
    with pytest.raises(PvestackError) as ei:
        check_since(value)
    assert "1h30m" in (ei.value.hint or "")


def test_tail_below_zero_is_refused() -> None:
    with pytest.raises(PvestackError, match="--tail -1"):
        logs_query(None, SERVICES, tail=-1)
    assert logs_query(None, SERVICES, tail=0).tail == 0


def test_the_command_is_a_fixed_program_with_each_value_its_own_argument() -> None:
    q = logs_query("hermes", SERVICES, follow=True, since="10m", tail=5, json=True)
    c = logs_command(118, "/opt/hermes stack", "hermes", q)
    assert c.argv[:7] == ("pct", "exec", "118", "--", "sh", "-c", LOGS)
    assert c.argv[7:] == ("sh", "/opt/hermes stack", "hermes", "tagged", "1", "10m", "5", "hermes")
    assert c.stdin is None
    plain = logs_command(118, "/opt/x", "x", logs_query(None, SERVICES))
    assert plain.argv[7:] == ("sh", "/opt/x", "x", "text", "0", "", "all", "")
    assert shell_command(118, ["echo", "a b"]).argv == ("pct", "exec", "118", "--", "echo", "a b")
    with pytest.raises(PvestackError, match="empty command"):
        shell_command(118, [])


def test_tagged_lines_parse_with_and_without_a_timestamp() -> None:
    got = parse_tagged("hermes\t2026-12-02T07:00:01.123456789Z ready: listening on :8642")
    assert got == LogLine("hermes", "ready: listening on :8642", "2026-12-02T07:00:01.123456789Z")
    assert parse_tagged("hermes\tno time here") == LogLine("hermes", "no time here")
    assert parse_tagged("hermes-1  | compose text") is None
    assert parse_tagged("not a service\tx") is None
    assert got.to_json() == {
        "service": "hermes", "time": "2026-12-02T07:00:01.123456789Z",
        "message": "ready: listening on :8642",
    }  # fmt: skip


# ---------------------------------------------------------------- the program, run by sh

FAKE_DOCKER = """#!/bin/sh
printf '%s\\n' "docker $*" >> "$CALLS"
case "$1 $2" in
  "compose version") [ "$COMPOSE" = v2 ] || exit 1; exit 0 ;;
  "compose -p") [ -z "$FOLLOW_FOREVER" ] || echo $$ > "$CALLS.pid"
      echo "hermes-1  | hello from compose"
      [ -z "$FOLLOW_FOREVER" ] || while :; do sleep 0.1; done; exit 0 ;;
  "ps -a") echo "hermes/hermes-stack-hermes-1"; echo "dashboard/hermes-stack-dashboard-1"; exit 0 ;;
  "logs --timestamps") for a in "$@"; do c=$a; done
      echo "2026-12-02T07:00:00.000000001Z line of $c"; printf 'no newline'; exit 0 ;;
esac
exit 9
"""
FAKE_V1 = """#!/bin/sh
printf '%s\\n' "docker-compose $*" >> "$CALLS"
[ "$1" = version ] && exit 0
exit 9
"""


def _bin(tmp_path: Path, v1: bool = False) -> Path:
    """A PATH of its own: the stand-ins and the few base tools the program uses (so no
    docker or docker-compose of this machine is seen)."""
    b = tmp_path / "bin"
    b.mkdir(exist_ok=True)
    for tool in ("sh", "cat", "sleep", "mktemp", "mkfifo", "rm"):
        if not (b / tool).exists():
            found = shutil.which(tool, path="/usr/bin:/bin")
            assert found is not None, f"{tool} (coreutils/dash) is missing"
            (b / tool).symlink_to(found)
    (b / "docker").write_text(FAKE_DOCKER)
    (b / "docker").chmod(0o755)
    if v1:
        (b / "docker-compose").write_text(FAKE_V1)
        (b / "docker-compose").chmod(0o755)
    return b


def _run(tmp_path: Path, args: tuple[str, ...], *, compose: str = "v2") -> tuple[int, str, str]:
    b = _bin(tmp_path, v1=compose == "v1")
    calls = tmp_path / "calls"
    env = {"PATH": str(b), "CALLS": str(calls), "COMPOSE": compose}
    p = subprocess.run(
        [str(b / "sh"), "-c", LOGS, *args], env=env, capture_output=True, text=True, timeout=30,
        stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    return p.returncode, p.stdout, calls.read_text() if calls.exists() else ""


def _args(q_service: str | None = None, **kw: object) -> tuple[str, ...]:
    q = logs_query(q_service, SERVICES, **kw)  # type: ignore[arg-type]
    return logs_command(1, "/opt/hermes-stack", "hermes-stack", q).argv[7:]


def test_text_form_runs_compose_logs_with_the_options_as_words(tmp_path: Path) -> None:
    code, out, calls = _run(tmp_path, _args("hermes", since="2026-12-02T07:00:00Z", tail=7))
    assert code == 0 and out == "hermes-1  | hello from compose\n"
    assert calls.splitlines()[-1] == (
        "docker compose -p hermes-stack -f /opt/hermes-stack/compose.yml logs --no-color "
        "--tail 7 --since 2026-12-02T07:00:00Z hermes"
    )


def test_tagged_form_reads_each_service_container_with_docker_logs(tmp_path: Path) -> None:
    code, out, calls = _run(tmp_path, _args(None, json=True, tail=3))
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == TAGGED
    assert sorted(lines[1:]) == [
        "dashboard\t2026-12-02T07:00:00.000000001Z line of hermes-stack-dashboard-1",
        "dashboard\tno newline",
        "hermes\t2026-12-02T07:00:00.000000001Z line of hermes-stack-hermes-1",
        "hermes\tno newline",
    ]
    assert "docker ps -a --filter label=com.docker.compose.project=hermes-stack" in calls
    assert "docker logs --timestamps --tail 3 hermes-stack-hermes-1" in calls


def test_compose_v1_has_no_since_so_the_tagged_form_serves_it(tmp_path: Path) -> None:
    code, out, calls = _run(tmp_path, _args("dashboard", since="1h"), compose="v1")
    assert code == 0
    assert out.splitlines()[0] == TAGGED
    assert all(ln.startswith("dashboard\t") for ln in out.splitlines()[1:])
    assert "docker logs --timestamps --tail all --since 1h hermes-stack-dashboard-1" in calls
    code, out, calls = _run(tmp_path, _args("dashboard"), compose="v1")
    assert "docker-compose -p hermes-stack -f /opt/hermes-stack/compose.yml logs" in calls


def test_no_compose_and_no_container_are_exit_codes(tmp_path: Path) -> None:
    assert _run(tmp_path, _args(), compose="none")[0] == 127
    b = _bin(tmp_path)
    (b / "docker").write_text('#!/bin/sh\n[ "$1" = compose ] && exit 0\nexit 0\n')
    p = subprocess.run(
        [str(b / "sh"), "-c", LOGS, *_args("hermes", json=True)], env={"PATH": str(b)},
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert p.returncode == 3 and "no container of hermes" in p.stderr


def test_follow_ends_everything_when_its_stdin_closes(tmp_path: Path) -> None:
    b = _bin(tmp_path)
    calls = tmp_path / "calls"
    env = {"PATH": str(b), "CALLS": str(calls), "COMPOSE": "v2",
           "FOLLOW_FOREVER": "1"}  # fmt: skip
    p = subprocess.Popen(
        [str(b / "sh"), "-c", LOGS, *_args("hermes", follow=True)], env=env, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert p.stdout is not None and p.stdin is not None
        assert p.stdout.readline() == b"hermes-1  | hello from compose\n"
        pid = int((tmp_path / "calls.pid").read_text())
        assert "--follow" in calls.read_text()
        p.stdin.close()  # the operator's Ctrl-C closes the channel: stdin ends
        p.wait(timeout=10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{pid}"), "the follower outlived the session"
    finally:
        if p.poll() is None:
            p.kill()  # our own child, by its pid
            p.wait()


# ---------------------------------------------------------------- engine pieces


def test_lines_split_and_mask_the_apps_secrets() -> None:
    got: list[str] = []
    lines = _Lines(got.append, (Secret("k", "sk-litellm-SECRET"),))
    lines.feed(b"one\r\ntw")
    lines.feed(b"o key=sk-litellm-SECRET\npartial")
    lines.flush()
    assert got == ["one", "two key=***", "partial"]


def test_routes_render_the_same_command_for_pct_and_for_the_cts_own_ssh() -> None:
    c = shell_command(118, ["sh", "-c", "echo $((6*7))"])
    pct = Route(None, "pct", "node", {})  # type: ignore[arg-type]
    ssh = Route(None, "ssh", "CT 118", {})  # type: ignore[arg-type]
    assert pct.line(c, 118) == "pct exec 118 -- sh -c 'echo $((6*7))'"
    assert ssh.line(c, 118) == "sh -c 'echo $((6*7))'"


# ---------------------------------------------------------------- the CLI's refusals


def _file(tmp_path: Path, text: str | None = None) -> Path:
    f = tmp_path / "stack.toml"
    f.write_text(text if text is not None else EXAMPLE.read_text())
    return f


def _cli(args: list[str]) -> tuple[int, str]:
    env = {k: None for k in os.environ if k.startswith("PVESTACK_")}
    r = CliRunner().invoke(app, args, env={**env, **ENV})
    return r.exit_code, r.output


def test_logs_refuses_an_unknown_service_and_stack_before_touching_the_node(
    tmp_path: Path,
) -> None:
    f = _file(tmp_path)
    code, out = _cli(["logs", "hermes", "web", "-c", str(f)])
    assert code == 1 and "the app has no service 'web' (its services: hermes)" in out, out
    code, out = _cli(["logs", "nope", "-c", str(f)])
    assert code == 1 and "no stack 'nope'" in out and "stacks: hermes" in out, out
    code, out = _cli(["logs", "hermes", "--since", "soon", "-c", str(f)])
    assert code == 1 and "not a time docker understands" in out, out


def test_logs_of_a_stack_without_an_app_says_so(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    no_app = text[: text.index("[stack.app]")]  # the app's tables end the example
    assert "recipe" not in no_app and "[[stack]]" in no_app
    code, out = _cli(["logs", "hermes", "-c", str(_file(tmp_path, no_app))])
    assert code == 1 and "has no app" in out and "pvestack shell hermes" in out, out


def test_shell_without_a_terminal_refuses_and_names_the_one_command_form(
    tmp_path: Path,
) -> None:
    code, out = _cli(["shell", "hermes", "-c", str(_file(tmp_path))])
    assert code == 1 and "needs a terminal" in out, out
    assert "pvestack shell hermes -- CMD" in out


def test_logs_json_lines_shape() -> None:
    line = LogLine("hermes", "x", None)
    assert json.loads(json.dumps(line.to_json())) == {
        "service": "hermes", "time": None, "message": "x"}  # fmt: skip


# ---------------------------------------------------------------- status: the app side


def test_the_app_status_program_and_its_parser(tmp_path: Path) -> None:
    from pvestack._engine._status import APP_STATUS, parse_app_status  # noqa: PLC0415

    b = _bin(tmp_path)
    (b / "docker").write_text(
        "#!/bin/sh\n"
        'printf "hermes\\trunning\\tlab/hermes:0.19.0\\tUp 3 minutes (healthy)\\n"\n'
        'printf "dashboard\\texited\\tlab/hermes:0.18.2\\tExited (1) 2 minutes ago\\n"\n'
    )
    rec = tmp_path / "last.json"
    rec.write_text('{"ok": true, "at": "2026-12-02T07:00:00Z", "passed": 9, "failed": 0, '
                   '"unverified": 0}\n')  # fmt: skip
    p = subprocess.run(
        [str(b / "sh"), "-c", APP_STATUS, "sh", "hermes-stack", str(rec)],
        env={"PATH": str(b)}, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    st = parse_app_status(
        p.stdout, {"hermes": "lab/hermes:0.19.0", "dashboard": "lab/hermes:0.19.0"}
    )
    assert [(x.name, x.state, x.health, x.running_image, x.wanted_image) for x in st.services] == [
        ("dashboard", "exited", "", "lab/hermes:0.18.2", "lab/hermes:0.19.0"),
        ("hermes", "running", "healthy", "lab/hermes:0.19.0", "lab/hermes:0.19.0"),
    ]
    assert st.last_verify == "ok at 2026-12-02T07:00:00Z (9 pass, 0 fail, 0 unverified)"
    assert parse_app_status("#last-verify\n", {}).last_verify == ""
    assert parse_app_status("#last-verify\n{broken", {}).last_verify == "unreadable"
    assert "docker does not answer" in parse_app_status("#no-docker\n#last-verify\n", {}).error


def test_the_verify_record_travels_on_stdin_and_counts_per_stack() -> None:
    from datetime import UTC, datetime  # noqa: PLC0415

    from pvestack._engine._status import (  # noqa: PLC0415
        LAST_VERIFY,
        record_step,
        verify_counts,
        verify_record,
    )
    from pvestack.verify import CheckResult, Status, VerifyReport  # noqa: PLC0415

    rec = verify_record(False, 3, 1, 0, datetime(2026, 12, 2, 7, 0, 5, 123, tzinfo=UTC))
    assert json.loads(rec) == {"ok": False, "at": "2026-12-02T07:00:05Z", "passed": 3,
                               "failed": 1, "unverified": 0}  # fmt: skip
    step = record_step(118, rec)
    (c,) = step.commands
    assert c.argv[:4] == ("pct", "exec", "118", "--") and c.argv[-1] == LAST_VERIFY
    assert c.stdin is not None and c.stdin.reveal().decode() == rec
    mk = lambda stack, st: CheckResult(stack, "id", "t", st, "")  # noqa: E731
    report = VerifyReport((mk("a", Status.PASS), mk("a", Status.FAIL), mk("b", Status.PASS),
                           mk("b", Status.UNVERIFIED), mk("b", Status.SKIP)))  # fmt: skip
    assert verify_counts(report) == {"a": (1, 1, 0), "b": (1, 0, 1)}
