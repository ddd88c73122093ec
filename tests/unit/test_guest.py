"""Guest steps: the in-container shell programs run for real (here, on files in a temp
dir, in place of ``pct exec``), shellcheck, secrets never in argv, and the plan's
in-container drift (nothing when in sync; a model change touches only config.yaml)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pvestack._commands import Command, Payload, Secret, render_script, render_shell
from pvestack._engine._facts import guest_fact_commands
from pvestack._guestfacts import (
    FACTS,
    ComposeFact,
    DockerFact,
    GuestFacts,
    ImageFact,
    ManagedFact,
    ServiceFact,
    parse_guest_facts,
)
from pvestack._model import (
    AppFile,
    AppSpec,
    ContainerSpec,
    ObservedContainer,
    ObservedStack,
    StackSpec,
    TemplateSpec,
)
from pvestack._plan._guest import guest_actions
from pvestack._steps import guest
from pvestack.recipes import load_app, render_app

ROOT = Path(__file__).resolve().parents[2]
KEY = Secret("litellm_key", "sk-guest-SECRET-55555")
VMID = 218
UID = os.getuid()
GID = os.getgid()


def hermes_spec(model: str = "mock-gpt", *, uid: int = 10000, **over: Any) -> StackSpec:
    raw: dict[str, Any] = {
        "recipe": "hermes",
        "docker": "debian",
        "image": "pvestack-lab/hermes-agent:0.19.0",
        "image_tarball": "/var/lib/pvestack-lab/images/hermes-agent-0.19.0.tar",
        "gateway_url": "http://10.77.0.250:4000/v1",
        "gateway_key": "litellm_key",
        "default_model": model,
        "uid": uid,
        **over,
    }
    app = render_app(
        load_app(raw, stack_name="hermes"), stack_name="hermes", secrets={"litellm_key": KEY}
    )
    ct = ContainerSpec(
        stack="hermes",
        node="pve",
        vmid=VMID,
        hostname="hermes",
        api_config={},
        features={},
        template=TemplateSpec("local", "http://x/t.tar.zst", "t.tar.zst"),
    )
    return StackSpec("hermes", ct, app)


def running(facts: GuestFacts | None = None) -> ObservedStack:
    ct = ObservedContainer(VMID, "pve", "running", {}, "hermes")
    return ObservedStack("hermes", VMID, ct, True, guest_facts=facts)


def all_commands(actions: Any) -> list[Command]:
    out = []
    for a in actions:
        for s in a.steps:
            out.extend(s.commands)
            if s.guard is not None:
                out.append(s.guard)
    return out


# ---------------------------------------------------------------- run the programs here


# The YAML merge runs `python3` with PyYAML: this venv's (a dependency of pvestack),
# not whatever the host happens to have.
PATH = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"


def sh(program: str, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", program, "sh", *args],
        input=stdin.decode(),
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PATH": PATH},
    )


def run_write(
    f: AppFile, marks: Path, *, owner: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run WRITE_FILE exactly as the step would (its argv after `pct exec VMID --`)."""
    app = AppSpec("t", str(marks.parent), (f,))
    step = guest.file_step(app, f, VMID)
    (c,) = step.commands
    argv = list(c.argv[c.argv.index("--") + 1 :])
    program = guest.WRITE_YAML if f.merge_yaml else guest.WRITE_FILE
    assert argv[:2] == ["sh", "-c"] and argv[2] == program
    args = argv[4:]
    args[2] = owner or f"{UID}:{GID}"
    args[3 if f.merge_yaml else 4] = str(marks)
    assert c.stdin is not None
    return sh(program, *args, stdin=c.stdin.reveal())


def test_write_file_is_atomic_idempotent_and_marks_restarts(tmp_path: Path) -> None:
    target = tmp_path / "data" / "config.yaml"
    marks = tmp_path / "project" / ".pvestack"
    f = AppFile(str(target), ("model: a\n",), "0640", UID, GID, ("hermes",))
    r = run_write(f, marks)
    assert r.returncode == 0, r.stderr
    assert target.read_text() == "model: a\n"
    assert oct(target.stat().st_mode & 0o777) == "0o640"
    assert (marks / "restart-hermes").exists()
    (marks / "restart-hermes").unlink()
    # same bytes: nothing written, no restart mark
    r = run_write(f, marks)
    assert "unchanged" in r.stdout
    assert not (marks / "restart-hermes").exists()
    # new bytes: written, marked
    r = run_write(replace(f, content=("model: b\n",)), marks)
    assert "written" in r.stdout and target.read_text() == "model: b\n"
    assert (marks / "restart-hermes").exists()
    assert [p.name for p in target.parent.iterdir()] == ["config.yaml"]  # no temp left


def test_write_file_fixes_a_wrong_mode(tmp_path: Path) -> None:
    target = tmp_path / ".env"
    f = AppFile(str(target), ("A=1\n",), "0600", UID, GID, ())
    target.write_text("A=1\n")
    target.chmod(0o644)
    r = run_write(f, tmp_path / "m")
    assert "written" in r.stdout
    assert oct(target.stat().st_mode & 0o777) == "0o600"


def test_env_merge_keeps_keys_the_stack_does_not_set(tmp_path: Path) -> None:
    target = tmp_path / ".env"
    target.write_text("# operator\nAPI_SERVER_KEY=keepme\nLITELLM_API_KEY=old\n")
    spec = hermes_spec()
    assert spec.app is not None
    env = next(f for f in spec.app.files if f.path.endswith("/.env"))
    f = replace(env, path=str(target), uid=UID, gid=GID)
    r = run_write(f, tmp_path / "m")
    assert r.returncode == 0, r.stderr
    assert target.read_text() == f"# operator\nAPI_SERVER_KEY=keepme\nLITELLM_API_KEY={KEY.value}\n"
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    assert (tmp_path / "m" / "restart-hermes").exists()
    (tmp_path / "m" / "restart-hermes").unlink()
    r = run_write(f, tmp_path / "m")  # again: the merge gives the same bytes
    assert "unchanged" in r.stdout and not (tmp_path / "m" / "restart-hermes").exists()


def test_facts_program_agrees_with_the_planner(tmp_path: Path) -> None:
    """Files written by WRITE_FILE are reported by FACTS as in sync, .env even with
    extra keys; a changed model shows up as exactly one out-of-sync file."""
    spec = hermes_spec()
    assert spec.app is not None
    moved: list[AppFile] = []
    for f in spec.app.files:
        local = tmp_path / f.path.lstrip("/")
        moved.append(replace(f, path=str(local), uid=UID, gid=GID))
    app = replace(spec.app, files=tuple(moved), project_dir=str(tmp_path / "opt/hermes-stack"))
    spec = replace(spec, app=app)
    for f in moved:
        assert run_write(f, tmp_path / "m").returncode == 0
    env = next(Path(f.path) for f in moved if f.merge_env)
    env.write_text("EXTRA=1\n" + env.read_text())  # the app or the operator added a key

    (c,) = guest_fact_commands(spec, VMID)
    argv = list(c.argv[c.argv.index("--") + 1 :])
    r = sh(argv[2], *argv[4:])
    assert r.returncode == 0, r.stderr
    facts = parse_guest_facts([r.stdout])
    assert facts is not None and facts.docker in (DockerFact.OK, DockerFact.MISSING)
    assert facts.images["pvestack-lab/hermes-agent:0.19.0"] in ImageFact
    assert len(facts.files) + len(facts.managed) + len(facts.yaml) == len(moved)
    facts = replace(
        facts,
        docker=DockerFact.OK,
        compose=ComposeFact.V1,
        services={"hermes": ServiceFact("running", "pvestack-lab/hermes-agent:0.19.0")},
        images={"pvestack-lab/hermes-agent:0.19.0": ImageFact.PRESENT},
    )
    assert guest_actions(spec, running(facts), VMID) == ()

    changed = hermes_spec("other-model")
    assert changed.app is not None
    files = tuple(
        replace(f, path=m.path, uid=UID, gid=GID)
        for f, m in zip(changed.app.files, moved, strict=True)
    )
    changed = replace(changed, app=replace(changed.app, files=files))
    ids = [a.id for a in guest_actions(changed, running(facts), VMID)]
    cfg_path = next(f.path for f in files if f.path.endswith("config.yaml"))
    assert ids == [f"hermes:guest:file:{cfg_path}", "hermes:guest:up"]


def test_compose_up_restarts_only_marked_services(tmp_path: Path) -> None:
    """COMPOSE_UP with a stand-in `docker-compose` on PATH that records its calls."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls"
    (bindir / "docker").write_text("#!/bin/sh\nexit 1\n")  # no compose plugin
    (bindir / "docker-compose").write_text(f'#!/bin/sh\necho "$*" >>{log}\n')
    for p in bindir.iterdir():
        p.chmod(0o755)
    marks = tmp_path / "project" / ".pvestack"
    marks.mkdir(parents=True)
    (marks / "restart-hermes").touch()
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    args = [str(tmp_path / "project"), "hermes", str(marks)]
    r = subprocess.run(
        ["sh", "-c", guest.COMPOSE_UP, "sh", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    f = f"-p hermes -f {tmp_path}/project/compose.yml"
    assert log.read_text().splitlines() == [f"{f} up -d --remove-orphans", f"{f} restart hermes"]
    assert not (marks / "restart-hermes").exists()
    log.unlink()
    subprocess.run(["sh", "-c", guest.COMPOSE_UP, "sh", *args], env=env, check=True)
    assert log.read_text().splitlines() == [f"{f} up -d --remove-orphans"]  # no restart


# ---------------------------------------------------------------- plan


def test_nothing_observed_gives_every_step() -> None:
    spec = hermes_spec()
    actions = guest_actions(spec, ObservedStack("hermes", VMID, None, True), VMID)
    ids = [a.id for a in actions]
    assert ids[0] == "hermes:guest:docker"
    assert ids[-1] == "hermes:guest:up"
    assert "hermes:guest:image:pvestack-lab/hermes-agent:0.19.0" in ids
    assert sum(i.startswith("hermes:guest:file:") for i in ids) == 4
    assert all(a.actor.value == "guest" for a in actions)
    env = next(a for a in actions if a.id.endswith("/.env"))
    assert env.after["secrets"] == f"litellm_key=*** (sha256 {KEY.digest})"
    assert env.after["other keys"] == "kept"


def test_typed_file_facts_in_sync_leave_files_alone() -> None:
    """Facts equal to what the steps write: no file action; one fact off (the mode, the
    owner, the bytes): exactly that file is updated; unknown files are written if different."""
    spec = hermes_spec()
    assert spec.app is not None
    whole = [f for f in spec.app.files if not (f.merge_env or f.merge_yaml)]
    env = next(f for f in spec.app.files if f.merge_env)
    cfg = next(f for f in spec.app.files if f.merge_yaml)
    facts = GuestFacts(
        docker=DockerFact.OK,
        compose=ComposeFact.PLUGIN,
        files={f.path: guest.file_want(f) for f in whole},
        managed={env.path: ManagedFact(guest.managed_sha256(env))},
        yaml={cfg.path: guest.yaml_want(cfg)},
    )
    ids = [a.id for a in guest_actions(spec, running(facts), VMID)]
    assert not [i for i in ids if ":file:" in i]
    want = guest.file_want(whole[0])
    for off in (
        replace(want, mode="644" if want.mode != "644" else "600"),
        replace(want, uid=want.uid + 1),
        replace(want, sha256="0" * 64),
    ):
        odd = replace(facts, files={**facts.files, whole[0].path: off})
        acts = [a for a in guest_actions(spec, running(odd), VMID) if ":file:" in a.id]
        assert [a.id for a in acts] == [f"hermes:guest:file:{whole[0].path}"]
        assert acts[0].before == {"file": "present"} and acts[0].after["content"] == "changes"
    unknown = replace(facts, managed={})
    (a,) = [a for a in guest_actions(spec, running(unknown), VMID) if ":file:" in a.id]
    assert a.id.endswith(env.path) and a.after["content"] == "written if different"


def test_secrets_never_in_argv_and_scripts_refuse_them() -> None:
    spec = hermes_spec()
    actions = guest_actions(spec, ObservedStack("hermes", VMID, None, True), VMID)
    for c in all_commands(actions):
        assert all(KEY.value not in a for a in c.argv)
    for a in actions:
        for s in a.steps:
            assert KEY.value not in render_shell(s)
    secret_steps = [s for a in actions for s in a.steps if s.has_secret]
    assert len(secret_steps) == 1 and secret_steps[0].id.endswith("/opt/hermes/.env")
    with pytest.raises(ValueError, match="secret"):
        render_script(secret_steps, title="t", success_marker="ok")


def test_tarball_images_are_pushed_and_loaded_pull_otherwise() -> None:
    s = guest.image_step("img:1", "/x/img.tar", VMID)
    assert s.guard is not None and s.guard.argv[-3:] == ("image", "inspect", "img:1")
    assert s.commands[0].argv == (
        "pct",
        "push",
        str(VMID),
        "/x/img.tar",
        "/var/tmp/pvestack-image.tar",
    )
    assert s.commands[1].argv[-1] == "/var/tmp/pvestack-image.tar"
    pull = guest.image_step("img:1", None, VMID)
    assert pull.commands[0].argv[-2:] == ("pull", "img:1")


@pytest.mark.parametrize("source", ["docker-ce", "debian", "preinstalled"])
def test_docker_steps_are_guarded_and_end_with_a_probe(source: str) -> None:
    spec = hermes_spec(docker=source)
    assert spec.app is not None
    install, probe = guest.docker_steps(spec.app, VMID)
    assert install.guard is not None and guest.DOCKER_READY in install.guard.argv
    assert probe.commands[0].argv[-1] == guest.PROBE_IMAGE
    if source == "docker-ce":
        text = install.commands[0].argv[6]
        assert guest.DOCKER_KEY_FINGERPRINT == "9DC858229FC7DD38854AE2D88D81803C0EBFCD88"
        assert guest.DOCKER_KEY_FINGERPRINT in text and "docker-compose-plugin" in text
    if source == "debian":
        assert "docker.io $cli docker-compose" in install.commands[0].argv[6]


# ---------------------------------------------------------------- shellcheck


PROGRAMS = {"FACTS": FACTS} | {
    name: getattr(guest, name)
    for name in (
        "DOCKER_READY",
        "INSTALL_DOCKER_CE",
        "INSTALL_DOCKER_CE_HELD",
        "INSTALL_DOCKER_DEBIAN",
        "CHECK_PREINSTALLED",
        "DOCKER_PROBE",
        "WRITE_FILE",
        "COMPOSE_UP",
        "DOCKER_LOAD",
    )
}


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_programs_pass_shellcheck(name: str, tmp_path: Path) -> None:
    p = tmp_path / f"{name}.sh"
    p.write_text("#!/bin/sh\n" + PROGRAMS[name])
    r = subprocess.run(
        ["shellcheck", "-s", "sh", str(p)], capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, r.stdout


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_printed_guest_script_and_image_script_pass_shellcheck(tmp_path: Path) -> None:
    spec = hermes_spec()
    actions = guest_actions(spec, ObservedStack("hermes", VMID, None, True), VMID)
    steps = [s for a in actions for s in a.steps if not s.has_secret]
    script = tmp_path / "guest.sh"
    script.write_text(render_script(steps, title="guest", success_marker="guest steps done"))
    # SC2016: each in-container program is passed on purpose as one single-quoted
    # `sh -c` argument (checked on its own above).
    for path, extra in ((script, ["-e", "SC2016"]), (ROOT / "scripts" / "build-lab-images.sh", [])):
        r = subprocess.run(
            ["shellcheck", *extra, str(path)], capture_output=True, text=True, check=False
        )
        assert r.returncode == 0, r.stdout


def test_payload_reveals_exact_bytes() -> None:
    spec = hermes_spec()
    assert spec.app is not None
    env = next(f for f in spec.app.files if f.merge_env)
    assert Payload(env.content).reveal() == f"LITELLM_API_KEY={KEY.value}\n".encode()


@pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg is not installed")
def test_docker_ce_refuses_a_key_with_another_fingerprint(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """INSTALL_DOCKER_CE run with stand-ins for the network and package tools: a key
    that is not Docker's (a fresh one) stops it before any apt source is written."""
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    gpg_env = {**os.environ, "GNUPGHOME": str(home)}
    # key generation starts a gpg-agent for this GNUPGHOME: stop it when the test ends
    request.addfinalizer(
        lambda: subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=gpg_env, check=False)
    )
    subprocess.run(
        ["gpg", "--batch", "--passphrase", "", "--quick-gen-key", "not-docker@example.invalid",
         "ed25519", "sign", "1d"],
        env=gpg_env, capture_output=True, check=True,
    )  # fmt: skip
    key = tmp_path / "key.asc"
    key.write_bytes(
        subprocess.run(
            ["gpg", "--batch", "--armor", "--export"], env=gpg_env, capture_output=True, check=True
        ).stdout
    )
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls"
    for tool in ("apt-get", "install", "dpkg", "systemctl"):
        (bindir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >>{calls}\n')
    # curl -fsSL URL -o FILE: copy the local key to FILE ($4)
    (bindir / "curl").write_text(f'#!/bin/sh\necho "curl $*" >>{calls}\ncp {key} "$4"\n')
    for p in bindir.iterdir():
        p.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "GNUPGHOME": str(home)}
    r = subprocess.run(
        ["sh", "-c", guest.INSTALL_DOCKER_CE, "sh"], env=env, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    assert r.returncode == 1
    assert f"expected {guest.DOCKER_KEY_FINGERPRINT}" in r.stderr
    log = calls.read_text()
    assert f"curl -fsSL {guest.DOCKER_KEY_URL} -o" in log
    assert "docker-ce" not in log  # never reached the install


def test_service_and_image_facts_drive_the_up_action() -> None:
    """Every service running, images present, files in sync: nothing to do; one service
    exited: compose up, showing each service's state; an unread service is unknown."""
    spec = hermes_spec()
    assert spec.app is not None
    env = next(f for f in spec.app.files if f.merge_env)
    cfg = next(f for f in spec.app.files if f.merge_yaml)
    ref = "pvestack-lab/hermes-agent:0.19.0"
    facts = GuestFacts(
        docker=DockerFact.OK,
        compose=ComposeFact.PLUGIN,
        images={ref: ImageFact.PRESENT},
        files={
            f.path: guest.file_want(f) for f in spec.app.files if not (f.merge_env or f.merge_yaml)
        },
        managed={env.path: ManagedFact(guest.managed_sha256(env))},
        yaml={cfg.path: guest.yaml_want(cfg)},
        services={s: ServiceFact("running", ref) for s in spec.app.services},
    )
    assert guest_actions(spec, running(facts), VMID) == ()
    exited = replace(facts, services={**facts.services, "hermes": ServiceFact("exited", ref)})
    (up,) = guest_actions(spec, running(exited), VMID)
    assert up.id == "hermes:guest:up" and up.before["hermes"] == "exited"
    (up,) = guest_actions(spec, running(replace(facts, services={})), VMID)
    assert set(up.before.values()) == {"unknown"}
    missing = replace(facts, images={ref: ImageFact.MISSING})
    ids = [a.id for a in guest_actions(spec, running(missing), VMID)]
    assert ids == [f"hermes:guest:image:{ref}", "hermes:guest:up"]
