"""Typed guest facts: each fact's parser (odd output included), the gathering into one
``GuestFacts`` (unknown vs absent), and the read program run for real against a
stand-in ``docker`` on PATH (files in a temp dir, in place of ``pct exec``)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pvestack._guestfacts import (
    ABSENT,
    FACTS,
    UNREADABLE,
    ComposeFact,
    DockerFact,
    FactQuery,
    FileFact,
    GuestFacts,
    ImageFact,
    ManagedFact,
    ManagedRead,
    ServiceFact,
    YamlFact,
    parse_compose,
    parse_docker,
    parse_file,
    parse_guest_facts,
    parse_image,
    parse_managed,
    parse_service,
    parse_yaml,
    read_args,
)

SHA = "a" * 64
token = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=30)
mode = st.text("01234567", min_size=1, max_size=4)
ids = st.integers(0, 2**32 - 1)


# ---------------------------------------------------------------- one parser per fact


def test_docker_compose_and_image_parsers_know_only_their_words() -> None:
    assert parse_docker("ok") is DockerFact.OK and parse_docker("missing") is DockerFact.MISSING
    assert parse_compose("plugin") is ComposeFact.PLUGIN and parse_compose("v1") is ComposeFact.V1
    assert parse_compose("missing") is ComposeFact.MISSING
    assert (
        parse_image("present") is ImageFact.PRESENT and parse_image("missing") is ImageFact.MISSING
    )
    for odd in ("", "OK", "yes", "ok ok", "present?"):
        assert parse_docker(odd) is None and parse_compose(odd) is None
        assert parse_image(odd) is None


def test_file_parser() -> None:
    assert parse_file(f"{SHA} 600 10000:10000") == FileFact(SHA, "600", 10000, 10000)
    assert parse_file("-") == ABSENT
    for odd in (
        "",
        "?",
        SHA,
        f"{SHA} 600",
        f"{SHA} 600 root:root",
        f"{SHA} rw 0:0",
        f"{SHA} 6 0:0 x",
    ):
        assert parse_file(odd) is None, odd


def test_managed_parser() -> None:
    assert parse_managed(SHA) == ManagedFact(SHA) and parse_managed("-") == ABSENT
    assert parse_managed("") is None and parse_managed(f"{SHA} x") is None


def test_yaml_parser_keeps_absent_and_unreadable_apart() -> None:
    digest = '{"model.default": "ab12"}'
    assert parse_yaml(f"640 0:0 {digest}") == YamlFact("640", 0, 0, digest)
    assert parse_yaml("640 0:0") == YamlFact("640", 0, 0, "")  # the digests may be empty
    assert parse_yaml("-") == ABSENT and parse_yaml("?") == UNREADABLE
    assert ABSENT != UNREADABLE
    for odd in ("", "640", "x 0:0 []", "640 a:b []"):
        assert parse_yaml(odd) is None, odd


def test_service_parser_carries_the_image() -> None:
    assert parse_service("running nous/hermes:v1") == ServiceFact("running", "nous/hermes:v1")
    assert parse_service("exited sha256:abc") == ServiceFact("exited", "sha256:abc")
    assert parse_service("running") == ServiceFact("running", "")  # no image column
    assert parse_service("") is None


@given(sha=token, m=mode, uid=ids, gid=ids)
def test_file_fact_round_trips(sha: str, m: str, uid: int, gid: int) -> None:
    assert parse_file(f"{sha} {m} {uid}:{gid}") == FileFact(sha, m, uid, gid)


@given(state=token, image=token)
def test_service_fact_round_trips(state: str, image: str) -> None:
    assert parse_service(f"{state} {image}") == ServiceFact(state, image)


@given(st.lists(st.text(max_size=80), max_size=8))
def test_any_output_parses_to_facts_or_none(outputs: list[str]) -> None:
    facts = parse_guest_facts(outputs)
    assert facts is None or isinstance(facts, GuestFacts)


# ---------------------------------------------------------------- gathering


def test_unknown_lines_and_refused_values_stay_unknown() -> None:
    out = (
        "docker\tok\n"
        "compose\tv1\n"
        "image:nous/hermes:v1\tpresent\n"
        "image:other:2\tmaybe\n"  # refused by its parser: unknown
        f"file:/opt/a b/c.yml\t{SHA} 644 0:0\n"
        "file:/opt/gone\t-\n"
        "managed:/opt/.env\t-\n"
        "yaml:/data/config.yaml\t?\n"
        "service:hermes\trunning nous/hermes:v1\n"
        "weather:today\tsunny\n"
        "no tab here\n"
    )
    facts = parse_guest_facts([out])
    assert facts == GuestFacts(
        docker=DockerFact.OK,
        compose=ComposeFact.V1,
        images={"nous/hermes:v1": ImageFact.PRESENT},
        files={"/opt/a b/c.yml": FileFact(SHA, "644", 0, 0), "/opt/gone": ABSENT},
        managed={"/opt/.env": ABSENT},
        yaml={"/data/config.yaml": UNREADABLE},
        services={"hermes": ServiceFact("running", "nous/hermes:v1")},
    )
    assert facts.docker_ready


def test_no_fact_line_is_not_observed_and_defaults_are_unknown() -> None:
    assert parse_guest_facts([]) is None
    assert parse_guest_facts(["", "pct: container is not running\n"]) is None
    facts = GuestFacts()
    assert facts.docker is None and facts.compose is None and not facts.docker_ready
    assert not (facts.images or facts.files or facts.managed or facts.yaml or facts.services)
    only_docker = parse_guest_facts(["docker\tok\ncompose\tmissing\n"])
    assert only_docker is not None and not only_docker.docker_ready


# ---------------------------------------------------------------- the read program


FAKE_DOCKER = """#!/bin/sh
echo "$*" >>"$DOCKER_LOG"
case "$1" in
  info) exit 0 ;;
  compose) exit 0 ;;
  image) [ "$3" = "present:1" ] ;;
  ps) printf 'hermes running nous/hermes:v1\\nlitellm exited sha256:0123\\n' ;;
  *) exit 1 ;;
esac
"""


@pytest.fixture
def fake_docker(tmp_path: Path) -> dict[str, str]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "docker").write_text(FAKE_DOCKER)
    (bindir / "docker").chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "DOCKER_LOG": str(tmp_path / "docker.log"),
    }


def test_the_program_reads_every_fact(tmp_path: Path, fake_docker: dict[str, str]) -> None:
    whole = tmp_path / "compose.yml"
    whole.write_bytes(b"services: {}\n")
    whole.chmod(0o640)
    env = tmp_path / ".env"
    env.write_text("# operator\nB=2\nEXTRA=x\nA=1\n")
    q = FactQuery(
        project="hermes",
        images=("present:1", "missing:1"),
        files=(str(whole), str(tmp_path / "none.yml")),
        managed=(ManagedRead(str(env), ("A", "B")), ManagedRead(str(tmp_path / "x.env"), ("A",))),
    )
    r = subprocess.run(
        ["sh", "-c", FACTS, "sh", *read_args(q)],
        env=fake_docker,
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    facts = parse_guest_facts([r.stdout])
    uid, gid = os.getuid(), os.getgid()
    assert facts == GuestFacts(
        docker=DockerFact.OK,
        compose=ComposeFact.PLUGIN,
        images={"present:1": ImageFact.PRESENT, "missing:1": ImageFact.MISSING},
        files={
            str(whole): FileFact(hashlib.sha256(b"services: {}\n").hexdigest(), "640", uid, gid),
            str(tmp_path / "none.yml"): ABSENT,
        },
        managed={
            str(env): ManagedFact(hashlib.sha256(b"A=1\nB=2\n").hexdigest()),
            str(tmp_path / "x.env"): ABSENT,
        },
        services={
            "hermes": ServiceFact("running", "nous/hermes:v1"),
            "litellm": ServiceFact("exited", "sha256:0123"),
        },
    )
    ps = next(
        ln for ln in Path(fake_docker["DOCKER_LOG"]).read_text().splitlines() if ln.startswith("ps")
    )
    assert "label=com.docker.compose.project=hermes" in ps and "{{.Image}}" in ps
