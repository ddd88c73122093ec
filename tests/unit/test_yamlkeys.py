"""Hermes's config.yaml: pvestack owns only the keys it renders. The pure merge and
digest, and the same program as the guest runs it (``WRITE_YAML`` + ``FACTS`` here, on
files in a temp dir, in place of ``pct exec``)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from pvestack._commands import Secret
from pvestack._engine._facts import yaml_read
from pvestack._guestfacts import (
    ABSENT,
    FACTS,
    UNREADABLE,
    Absent,
    FactQuery,
    Unreadable,
    YamlFact,
    parse_guest_facts,
    read_args,
)
from pvestack._model import AppFile, AppSpec
from pvestack._steps import guest
from pvestack.recipes import (
    changed_yaml_keys,
    load_app,
    managed_yaml_digest,
    managed_yaml_paths,
    merge_yaml,
    render_app,
)

KEY = Secret("litellm_key", "sk-yaml-SECRET-0123456789")
UID, GID = os.getuid(), os.getgid()
PATH = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
# What hermes-agent 0.19.0's own migration made of the rendered file (run for real in
# tests/lab/test_hermes_config.py): the managed values kept, keys of its own added.
MIGRATED_EXTRA = {
    "display": {"tool_progress": "all"},
    "agent": {"verify_on_stop": False},
    "plugins": {"enabled": []},
    "_config_version": 33,
}


def config(model: str = "mock-gpt", **over: Any) -> AppFile:
    raw: dict[str, Any] = {
        "recipe": "hermes",
        "docker": "debian",
        "image": "pvestack-lab/hermes-agent:0.19.0-boot2",
        "gateway_url": "http://10.77.0.250:4000/v1",
        "gateway_key": "litellm_key",
        "default_model": model,
        **over,
    }
    app = render_app(load_app(raw, stack_name="h"), stack_name="h", secrets={"litellm_key": KEY})
    return next(f for f in app.files if f.path.endswith("config.yaml"))


def text(f: AppFile) -> str:
    return "".join(p for p in f.content if isinstance(p, str))


def migrated(desired: str) -> str:
    doc = yaml.safe_load(desired)
    doc.update(MIGRATED_EXTRA)
    return yaml.safe_dump(doc, sort_keys=False)


def test_the_managed_keys_are_the_rendered_leaves_without_the_version() -> None:
    f = config(config_version=33)
    assert f.merge_yaml and not f.merge_env
    assert "_config_version: 33" in text(f)
    assert set(managed_yaml_paths(text(f))) == {
        ("model", "provider"),
        ("model", "default"),
        ("providers", "litellm", "api"),
        ("providers", "litellm", "transport"),
        ("providers", "litellm", "key_env"),
        ("terminal", "backend"),
        ("terminal", "cwd"),
    }


def test_the_version_is_written_only_when_known() -> None:
    assert "_config_version" not in text(config())
    assert "_config_version: 33" in text(config(image="nousresearch/hermes-agent:v2026.7.20"))
    assert "_config_version: 40" in text(config(config_version=40))


def test_what_hermes_adds_or_migrates_is_no_drift_and_is_kept() -> None:
    want = text(config())
    have = migrated(want)
    paths = managed_yaml_paths(want)
    assert managed_yaml_digest(have, paths) == managed_yaml_digest(want, paths)
    assert merge_yaml(have, want) is None  # nothing to write: no restart
    # a managed key changes: only it is written, Hermes's keys stay
    new = merge_yaml(have, text(config("other-model")))
    assert new is not None
    doc = yaml.safe_load(new)
    assert doc["model"]["default"] == "other-model"
    for k, v in MIGRATED_EXTRA.items():
        assert doc[k] == v
    assert changed_yaml_keys(want, managed_yaml_digest(new, paths)) == ("model.default",)


def test_an_existing_files_version_is_left_to_hermes() -> None:
    old = "model: {provider: custom:litellm, default: mock-gpt}\n_config_version: 20\n"
    new = merge_yaml(old, text(config(config_version=33)))
    assert new is not None and yaml.safe_load(new)["_config_version"] == 20
    assert "_config_version" not in yaml.safe_load(merge_yaml(None, text(config())) or "")


def test_a_scalar_where_a_mapping_is_managed_is_replaced() -> None:
    new = merge_yaml("model: gpt-4o\nfoo: 1\n", text(config()))
    assert new is not None
    doc = yaml.safe_load(new)
    assert doc["model"] == {"provider": "custom:litellm", "default": "mock-gpt"} and doc["foo"] == 1


# ---------------------------------------------------------------- the guest's programs


def sh(program: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": PATH}
    return subprocess.run(
        ["sh", "-c", program, "sh", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )


def write(f: AppFile, marks: Path) -> subprocess.CompletedProcess[str]:
    app = AppSpec("hermes", str(marks.parent), (f,))
    (c,) = guest.file_step(app, f, 218).commands
    argv = list(c.argv[c.argv.index("--") + 1 :])
    assert argv[2] == guest.WRITE_YAML
    args = argv[4:]
    args[2], args[3] = f"{UID}:{GID}", str(marks)
    assert c.stdin is not None
    return sh(guest.WRITE_YAML, *args, stdin=c.stdin.reveal().decode())


def fact(f: AppFile) -> YamlFact | Absent | Unreadable | None:
    r = sh(FACTS, *read_args(FactQuery("p", yaml=(yaml_read(f),))))
    assert r.returncode == 0, r.stderr
    facts = parse_guest_facts([r.stdout])
    assert facts is not None
    return facts.yaml.get(f.path)


def test_write_yaml_restarts_only_when_a_managed_key_changes(tmp_path: Path) -> None:
    target = tmp_path / "data" / "config.yaml"
    marks = tmp_path / "project" / ".pvestack"
    f = replace(config(config_version=33), path=str(target), uid=UID, gid=GID)
    r = write(f, marks)
    assert r.returncode == 0 and "written" in r.stdout, r.stderr
    assert target.read_text() == text(f)  # a new file: as rendered, version included
    assert oct(target.stat().st_mode & 0o777) == "0o640"
    (marks / "restart-hermes").unlink()
    # Hermes rewrites it (its own dump, its own keys): nothing to do, no restart
    target.write_text(migrated(text(f)))
    before = target.read_text()
    r = write(f, marks)
    assert "unchanged" in r.stdout and target.read_text() == before
    assert not (marks / "restart-hermes").exists()
    assert fact(f) == guest.yaml_want(f)
    # a managed key edited by hand: the fact names it; apply writes it back, keeps the rest
    target.write_text(before.replace("mock-gpt", "hand-edited"))
    edited = fact(f)
    assert isinstance(edited, YamlFact)
    assert guest.yaml_changes(f, edited) == ("model.default",)
    r = write(f, marks)
    assert "written" in r.stdout and (marks / "restart-hermes").exists()
    doc = yaml.safe_load(target.read_text())
    assert doc["model"]["default"] == "mock-gpt" and doc["display"] == {"tool_progress": "all"}
    assert [p.name for p in target.parent.iterdir()] == ["config.yaml"]  # no temp left


def test_the_fact_reports_absent_and_unreadable(tmp_path: Path) -> None:
    f = replace(config(), path=str(tmp_path / "config.yaml"))
    assert fact(f) == ABSENT
    Path(f.path).write_text("model: [unclosed\n")
    assert fact(f) == UNREADABLE
