"""PVE's appliance index (``pveam``): ``GET|POST /nodes/{node}/aplinfo``.

As pve-manager's ``PVE/APLInfo.pm``: an index file of Debian-control-like records
(``Package``, ``Version``, ``Type``, ``OS``, ``Section``, ``Location``, ``Infopage``,
``Description``, ``sha512sum``, ...) is fetched once (``update``, what ``pveam update``
does) into ``<lab>/var/lib/pve-manager/apl-info/`` and read from there; ``GET`` lists the
records (keys lower-cased, ``headline``/``description`` from ``Description``, ``location``
made absolute against the index's URL, ``source`` and ``template`` = the file name);
``POST`` (``storage``, ``template``; Datastore.AllocateTemplate on the storage, see
``privileges``) downloads ``location`` into the storage's template cache as a
``download`` task, the node checking ``sha512sum`` (PVE's ``hash_required``).

The lab's index source is its own template server on loopback
(``http://127.0.0.1:<port>/aplinfo.dat``, written by ``render_index``).
"""

from __future__ import annotations

import re
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvelab.backend.errors import PveError, param_error

INDEX_FILE = "aplinfo.dat"
_TEMPLATE_FILE = re.compile(r"([^/]+\.tar(?:\.(?:gz|xz|zst|bz2))?)$")
_VERSION = re.compile(r"^(\d[a-zA-Z0-9.+\-:~]*)(-(\d+))?$")


@dataclass(frozen=True)
class Appliance:
    """One record the lab's template server offers."""

    package: str  # debian-13-standard
    version: str  # 13.1-1
    os: str  # debian-13
    location: str  # relative to the index's URL (or absolute)
    sha512sum: str
    headline: str
    description: str = ""


def render_index(entries: Iterable[Appliance]) -> str:
    """The index in APLInfo's record format (what download.proxmox.com serves)."""
    out = []
    for e in entries:
        out.append(
            f"Package: {e.package}\nVersion: {e.version}\nType: lxc\nOS: {e.os}\n"
            "Section: system\nMaintainer: pvestack lab <root@localhost>\n"
            f"Architecture: amd64\nLocation: {e.location}\n"
            "Infopage: https://pve.proxmox.com/wiki/Linux_Container#pct_supported_distributions\n"
            f"Description: {e.headline}\n {e.description or e.headline}\n"
            f"sha512sum: {e.sha512sum}\n"
        )
    return "\n".join(out)


def parse_index(text: str, source: str) -> dict[str, dict[str, Any]]:
    """template file name -> record, as ``read_aplinfo_from_fh`` builds ``$list->{all}``."""
    out: dict[str, dict[str, Any]] = {}
    for rec in re.split(r"\n\s*\n", text.strip()):
        res = _record(rec)
        if not res:
            continue
        res.setdefault("section", "unknown")
        if not all(res.get(k) for k in ("package", "type", "os", "version", "infopage")):
            continue  # PVE: "found incomplete appliance records" (warned, skipped)
        location = str(res.get("location") or "")
        if location:
            m = _TEMPLATE_FILE.search(location)
            template = m.group(1) if m else location.rsplit("/", 1)[-1]
            if not re.match(r"^[a-zA-Z]+://", location):
                res["location"] = f"{source}/{location}"
        else:
            arch = res.get("architecture") or "i386"
            template = f"{res['os']}-{res['package']}_{res['version']}_{arch}.tar.gz"
            template = template.replace(f"{res['os']}-{res['os']}-", f"{res['os']}-")
            res["location"] = f"{source}/{res['section']}/{template}"
        res["source"] = source
        res["template"] = template
        out[template] = res
    return out


def _record(rec: str) -> dict[str, Any]:
    res: dict[str, Any] = {}
    lines = rec.splitlines()
    i = 0
    while i < len(lines):
        key, sep, value = lines[i].partition(":")
        if not sep:
            return {}
        key, value = key.strip().lower(), value.strip()
        i += 1
        if key == "description":
            long = []
            while i < len(lines) and lines[i][:1].isspace():
                long.append(lines[i].strip())
                i += 1
            res["headline"] = value
            res["description"] = " ".join(long)
        elif (key == "version" and not _VERSION.match(value)) or (
            key == "type" and value not in ("openvz", "lxc")
        ):
            return {}  # PVE: "unable to parse appliance record"
        else:
            res[key] = value
    return res


class AplInfo:
    """The node's stored indexes under ``<lab>/var/lib/pve-manager/apl-info``."""

    def __init__(self, lab_dir: Path) -> None:
        self.dir = lab_dir / "var" / "lib" / "pve-manager" / "apl-info"

    def update(self, url: str) -> int:
        """``pveam update`` from one loopback index URL; returns the number of records."""
        host = urllib.parse.urlsplit(url).hostname or ""
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise PveError(500, f"lab: aplinfo only from loopback, not '{host}'")
        with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 (loopback http)
            text = resp.read().decode("utf-8", "replace")
        source = url.rsplit("/", 1)[0]
        records = parse_index(text, source)
        self.dir.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9.]+", "_", source)
        (self.dir / f"{name}.dat").write_text(text)
        (self.dir / f"{name}.url").write_text(source + "\n")
        return len(records)

    def load(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        if not self.dir.is_dir():
            return out
        for dat in sorted(self.dir.glob("*.dat")):
            url_file = dat.with_suffix(".url")
            source = url_file.read_text().strip() if url_file.is_file() else ""
            out.update(parse_index(dat.read_text(), source))
        return out

    def listing(self) -> list[dict[str, Any]]:
        return [r for r in self.load().values() if r.get("package") != "pve-web-news"]

    def lookup(self, template: str, store_content: Iterable[str], sid: str) -> Mapping[str, Any]:
        """apl_download's checks before its worker: the record, a template storage."""
        record = self.load().get(template)
        if record is None:
            raise param_error({"template": "no such template"})
        if record.get("type") not in ("openvz", "lxc"):
            raise PveError(500, f"unknown template type '{record.get('type')}'")
        if "vztmpl" not in set(store_content):
            raise PveError(500, f"storage '{sid}' does not support templates")
        return record
