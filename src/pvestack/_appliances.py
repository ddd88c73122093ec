"""``[stack.template] appliance = "debian-13-standard"``: the node's appliance index.

``GET /nodes/{node}/aplinfo`` lists what ``pveam available`` shows (pve-manager
``PVE/APLInfo.pm``: ``package``, ``version``, ``type``, ``template`` = the file name,
``location``, ``sha512sum``, ...). An appliance name resolves to its newest version
(Debian version order); ``POST /nodes/{node}/aplinfo`` (storage, template) downloads it,
the node verifying the index's sha512.
"""

from __future__ import annotations

from typing import Any

from debian.debian_support import Version

from pvestack._errors import PvestackError
from pvestack._model import TemplateSpec


def resolve_appliance(rows: Any, spec: TemplateSpec) -> TemplateSpec:
    """The newest ``lxc`` record of ``spec.appliance`` as a concrete template."""
    name = spec.appliance
    found = [
        r for r in rows or []
        if isinstance(r, dict) and r.get("package") == name and r.get("type") == "lxc"
        and r.get("template") and r.get("version")
    ]  # fmt: skip
    if not found:
        known = sorted({str(r.get("package")) for r in rows or [] if isinstance(r, dict)})
        raise PvestackError(
            f"appliance {name!r} is not in the node's index (known: {', '.join(known) or '-'})",
            hint="run `pveam update` on the node, then `pveam available --section system`",
        )
    best = max(found, key=lambda r: Version(str(r["version"])))
    sha = str(best.get("sha512sum") or "") or None
    return TemplateSpec(
        storage=spec.storage,
        url=str(best.get("location", "")),
        filename=str(best["template"]),
        checksum=sha,
        checksum_algorithm="sha512" if sha else None,
        appliance=name,
    )
