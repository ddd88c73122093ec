"""Guest and host facts: one parser per fact, the framing, and the defaults in one place."""

from __future__ import annotations

from pvestack import _facts
from pvestack._model import GuestFacts, GuestFile, HostPathFact

FACTS = (
    _facts.Docker(),
    _facts.Compose(),
    _facts.Image("app:1"),
    _facts.File("/opt/a/compose.yml"),
    _facts.ManagedEnv("/opt/a/.env", ("K1", "K2")),
    _facts.Services("a"),
)


def framed(*frames: list[str], first: int = 0) -> str:
    out = []
    for i, lines in enumerate(frames, start=first):
        out.append(f"\x1epvestack-fact {i}")
        out += lines
    return "\n".join(out) + "\n"


def test_every_fact_parsed_into_one_typed_value() -> None:
    text = framed(
        ["/srv/data exists"],  # junk for the host path: not a stat line
        ["ok"],
        ["plugin"],
        ["present"],
        ["abc 640 0:0"],
        ["-"],
        ["hermes running", "worker exited"],
        first=0,
    )
    frames = _facts.split_frames(text)
    assert _facts.HostPath("/srv/data").parse(frames[0]) == HostPathFact("/srv/data", False)
    g = _facts.parse_guest(FACTS, frames, 1)
    assert g == GuestFacts(
        observed=True,
        docker="ok",
        compose="plugin",
        images={"app:1": True},
        files={"/opt/a/compose.yml": GuestFile("abc", "640", "0:0")},
        managed={"/opt/a/.env": None},
        services={"hermes": "running", "worker": "exited"},
    )


def test_missing_frames_keep_the_defaults() -> None:
    assert _facts.parse_guest(FACTS, {}, 0) == GuestFacts()
    g = _facts.parse_guest(FACTS, _facts.split_frames(framed(["missing"])), 0)
    assert g.observed and g.docker == "missing" and g.compose == "unknown"
    assert g.images == {} and g.files == {} and g.services == {}


def test_one_command_for_host_paths_and_guest_data_as_arguments() -> None:
    c = _facts.facts_command(["/srv/a b", "/srv/$(x)"], 118, FACTS)
    argv = c.argv
    assert argv[:3] == ("sh", "-c", _facts.NODE_FACTS)
    assert argv[4:7] == ("/srv/a b", "/srv/$(x)", "--")
    assert argv[7:10] == ("pct", "exec", "118")
    assert argv[argv.index(_facts.GUEST_FACTS) + 2] == "2"  # guest frames follow the hosts'
    assert tuple(argv[argv.index("managed") : argv.index("managed") + 3]) == (
        "managed",
        "/opt/a/.env",
        "K1 K2",
    )
    assert _facts.facts_command([], None, ()).argv[-1] == "--"  # host paths only: no pct
