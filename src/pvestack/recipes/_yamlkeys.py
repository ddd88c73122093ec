"""Own only some keys of a YAML file (Hermes's ``config.yaml``), keep every other key.

pvestack owns the keys it renders (the leaves of the desired document) and nothing
else: Hermes adds keys and migrates the file at boot (``_config_version``,
``display.tool_progress``...), and those are kept. ``CREATE_ONLY`` top-level keys are
written only when the file is created: pvestack writes the pinned image's
``_config_version`` into a new file (so the image's boot has nothing to migrate), and
leaves an existing file's version to Hermes (an older version means Hermes still has
migrations to run on it).

This module is ALSO the program the guest runs (``python3 -c SOURCE merge|digest ...``,
see ``program()``): one implementation for the planner's digest and the container's,
so it imports only the standard library and PyYAML (``python3-yaml`` in the CT).

Comments of an existing file are not kept when a managed key changes (the file is
re-dumped); an unchanged file is never rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any

import yaml

CREATE_ONLY = ("_config_version",)
ABSENT = {"$absent": True}

Path_ = tuple[str, ...]


def leaves(doc: Any, prefix: Path_ = ()) -> list[Path_]:
    """The managed key paths of a desired document: its leaves (a list is one leaf)."""
    if isinstance(doc, dict) and doc:
        out: list[Path_] = []
        for k, v in doc.items():
            if not prefix and k in CREATE_ONLY:
                continue
            out += leaves(v, (*prefix, str(k)))
        return out
    return [prefix] if prefix else []


def get(doc: Any, path: Path_) -> Any:
    for k in path:
        if not isinstance(doc, dict) or k not in doc:
            return ABSENT
        doc = doc[k]
    return doc


def put(doc: dict[str, Any], path: Path_, value: Any) -> None:
    for k in path[:-1]:
        if not isinstance(doc.get(k), dict):
            doc[k] = {}
        doc = doc[k]
    doc[path[-1]] = value


def key_digests(doc: Any, paths: list[Path_]) -> dict[Path_, str]:
    """A short SHA-256 of each managed key's value (an absent key has its own)."""
    out: dict[Path_, str] = {}
    for p in paths:
        text = json.dumps(get(doc, p), sort_keys=True, separators=(",", ":"), default=str)
        out[tuple(p)] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return out


def dumps(digests: dict[Path_, str]) -> str:
    """One line: ``[[["model","default"],"<hash>"], ...]`` sorted by path."""
    rows = sorted([list(p), h] for p, h in digests.items())
    return json.dumps(rows, separators=(",", ":"), ensure_ascii=True)


def loads(line: str) -> dict[Path_, str]:
    return {tuple(p): str(h) for p, h in json.loads(line)}


def load(text: str) -> dict[str, Any]:
    doc = yaml.safe_load(text) if text.strip() else {}
    if not isinstance(doc, dict):
        raise ValueError("the YAML document is not a mapping")
    return doc


def text_digests(text: str, paths: list[Path_]) -> dict[Path_, str]:
    return key_digests(load(text), paths)


def merge(existing: str | None, desired: str) -> str | None:
    """The new file text, or None when the managed keys already hold the desired values.

    ``existing`` None: the file is created from ``desired`` as rendered (comments and
    ``CREATE_ONLY`` keys included)."""
    want = load(desired)
    if existing is None:
        return desired
    have = load(existing)
    paths = leaves(want)
    if key_digests(have, paths) == key_digests(want, paths):
        return None
    for p in paths:
        put(have, p, get(want, p))
    return yaml.safe_dump(have, sort_keys=False, allow_unicode=True, default_flow_style=False)


def main(argv: list[str]) -> int:
    """``merge DEST DESIRED OUT``: prints ``same`` or ``changed`` (OUT written);
    ``digest FILE PATHS_JSON``: prints the managed keys' digests (``dumps``), ``-`` for
    no file."""
    if argv[:1] == ["merge"] and len(argv) == 4:
        dest, desired, out = argv[1:]
        with open(desired, encoding="utf-8") as f:
            want = f.read()
        have = None
        if os.path.isfile(dest):
            with open(dest, encoding="utf-8") as f:
                have = f.read()
        new = merge(have, want)
        if new is None:
            print("same")
            return 0
        with open(out, "w", encoding="utf-8") as f:
            f.write(new)
        print("changed")
        return 0
    if argv[:1] == ["digest"] and len(argv) == 3:
        if not os.path.isfile(argv[1]):
            print("-")
            return 0
        paths = [tuple(p) for p in json.loads(argv[2])]
        with open(argv[1], encoding="utf-8") as f:
            print(dumps(text_digests(f.read(), paths)))
        return 0
    print("usage: merge DEST DESIRED OUT | digest FILE PATHS_JSON", file=sys.stderr)
    return 2


def program() -> str:
    """This module's source: what the guest runs with ``python3 -c``."""
    with open(__file__, encoding="utf-8") as f:
        return f.read()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
