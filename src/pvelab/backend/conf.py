"""PVE's container config file (``/etc/pve/lxc/<vmid>.conf``): read and written as PVE does.

::

    #description, one comment line per line, %-escaped
    arch: amd64
    features: keyctl=1,nesting=1
    lxc.idmap: u 0 100000 65536
    [pve:pending]
    memory: 1024
    [snap1]
    snaptime: 1700000000

Options are ``key: value`` lines written sorted; raw ``lxc.*`` lines are kept in order
(``key: value`` or ``key = value`` on input); ``[name]`` starts a snapshot section and
``[pve:pending]`` the pending changes (with ``delete: a,b``).
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field

_OPTION = re.compile(r"^([a-z][a-z_\-]*\d*):\s*(.*?)\s*$")
_RAW = re.compile(r"^(lxc\.[a-z0-9_\-.]+)(?::|\s*=)\s*(.*?)\s*$")
_SECTION = re.compile(r"^\[([a-z][a-z0-9_\-:]*)\]\s*$", re.I)
PENDING = "pve:pending"


class ConfError(ValueError):
    """A config file line PVE would not accept."""


@dataclass(frozen=True)
class Section:
    options: Mapping[str, str] = field(default_factory=dict)
    raw: tuple[tuple[str, str], ...] = ()
    description: str | None = None

    def get(self, key: str) -> str | None:
        if key == "description":
            return self.description
        return self.options.get(key)


@dataclass(frozen=True)
class CtConf:
    """One container's config: the current section, the pending one, the snapshots."""

    main: Section = field(default_factory=Section)
    pending: Section = field(default_factory=Section)
    snapshots: Mapping[str, Section] = field(default_factory=dict)


def _decode(line: str) -> str:
    return urllib.parse.unquote(line)


def _encode(line: str) -> str:
    return "".join(c if c.isprintable() and c != "%" else urllib.parse.quote(c) for c in line)


def parse(text: str, *, source: str = "conf") -> CtConf:
    sections: dict[str, dict[str, object]] = {}
    order: list[str] = [""]
    cur: dict[str, object] = {"options": {}, "raw": [], "descr": []}
    sections[""] = cur
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _SECTION.match(line)
        if m:
            name = m.group(1)
            cur = {"options": {}, "raw": [], "descr": []}
            sections[name] = cur
            order.append(name)
            continue
        if line.startswith("#"):
            descr = cur["descr"]
            assert isinstance(descr, list)
            descr.append(_decode(line[1:]))
            continue
        m = _RAW.match(line)
        if m:
            raw = cur["raw"]
            assert isinstance(raw, list)
            raw.append((m.group(1), m.group(2)))
            continue
        m = _OPTION.match(line)
        if m:
            opts = cur["options"]
            assert isinstance(opts, dict)
            opts[m.group(1)] = m.group(2)
            continue
        raise ConfError(f"{source} line {n}: unable to parse: {line}")

    def section(d: dict[str, object]) -> Section:
        opts = d["options"]
        raw = d["raw"]
        descr = d["descr"]
        assert isinstance(opts, dict) and isinstance(raw, list) and isinstance(descr, list)
        description = "\n".join(descr) if descr else opts.pop("description", None)
        return Section(dict(opts), tuple(raw), description)

    main = section(sections[""])
    pending = section(sections[PENDING]) if PENDING in sections else Section()
    snaps = {n: section(sections[n]) for n in order[1:] if n != PENDING}
    return CtConf(main, pending, snaps)


def _write_section(sec: Section) -> str:
    out: list[str] = []
    if sec.description:
        out.extend("#" + _encode(line) for line in sec.description.split("\n"))
    out.extend(f"{k}: {sec.options[k]}" for k in sorted(sec.options))
    out.extend(f"{k}: {v}" for k, v in sec.raw)
    return "".join(line + "\n" for line in out)


def write(conf: CtConf) -> str:
    text = _write_section(conf.main)
    if conf.pending.options:
        text += f"\n[{PENDING}]\n" + _write_section(conf.pending)
    for name in sorted(conf.snapshots):
        text += f"\n[{name}]\n" + _write_section(conf.snapshots[name])
    return text


def digest(text: str) -> str:
    """The SHA-1 digest PVE reports (``digest``) for a config file's text."""
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()
