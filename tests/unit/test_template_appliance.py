"""``[stack.template]`` by appliance name (resolved through aplinfo, downloaded with
PVE's POST aplinfo) or by URL (a URL without a checksum gets a plan warning)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from pvestack._appliances import resolve_appliance
from pvestack._errors import ConfigError, PvestackError
from pvestack._model import DesiredState, GuestSummary, ObservedStack, ObservedState, TemplateSpec
from pvestack._plan import plan

URL_LINE = (
    'url = "http://download.proxmox.com/images/system/debian-12-standard_12.12-1_amd64.tar.zst"'
)
INDEX = [
    {"package": "debian-13-standard", "version": "13.1-1", "type": "lxc",
     "template": "debian-13-standard_13.1-1_amd64.tar.zst",
     "location": "http://127.0.0.1:8099/debian-13-standard_13.1-1_amd64.tar.zst",
     "sha512sum": "aa" * 64},
    {"package": "debian-13-standard", "version": "13.0-2", "type": "lxc",
     "template": "debian-13-standard_13.0-2_amd64.tar.zst", "location": "x", "sha512sum": "bb"},
    {"package": "debian-12-standard", "version": "12.12-1", "type": "lxc",
     "template": "debian-12-standard_12.12-1_amd64.tar.zst", "location": "y", "sha512sum": "cc"},
]  # fmt: skip


MakeDesired = Callable[..., DesiredState]


def _with_template(text: str, lines: str) -> str:
    assert URL_LINE in text
    return text.replace(URL_LINE, lines)


def test_appliance_in_the_stack_file(make_desired: MakeDesired, example_text: str) -> None:
    d = make_desired(_with_template(example_text, 'appliance = "debian-13-standard"'))
    t = d.stacks[0].container.template
    assert (t.appliance, t.url, t.filename, t.storage) == ("debian-13-standard", "", "", "local")


@pytest.mark.parametrize(
    "lines",
    [
        f'{URL_LINE}\nappliance = "debian-13-standard"',  # both
        'appliance = "debian-13-standard"\nchecksum = "ab"\nchecksum_algorithm = "sha512"',
        'storage = "local"',  # neither
        'appliance = "Debian 13"',
    ],
)
def test_template_section_refuses(lines: str, make_desired: MakeDesired, example_text: str) -> None:
    with pytest.raises(ConfigError):
        make_desired(_with_template(example_text, lines))


def test_resolve_takes_the_newest_version() -> None:
    t = resolve_appliance(INDEX, TemplateSpec("local", "", "", appliance="debian-13-standard"))
    assert t.filename == "debian-13-standard_13.1-1_amd64.tar.zst"
    assert t.volid == "local:vztmpl/debian-13-standard_13.1-1_amd64.tar.zst"
    assert (t.checksum, t.checksum_algorithm) == ("aa" * 64, "sha512")
    with pytest.raises(PvestackError, match="debian-14-standard") as e:
        resolve_appliance(INDEX, TemplateSpec("local", "", "", appliance="debian-14-standard"))
    assert e.value.hint is not None and "pveam update" in e.value.hint


def _observed(template: TemplateSpec | None) -> ObservedState:
    st = ObservedStack("hermes", 118, None, False, template=template)
    pbs = GuestSummary(110, "gihyeon", "lxc", "pbs", "running", ())
    return ObservedState(("gihyeon",), (pbs,), (st,))


def test_plan_downloads_an_appliance_with_aplinfo(
    make_desired: MakeDesired, example_text: str
) -> None:
    d = make_desired(_with_template(example_text, 'appliance = "debian-13-standard"'))
    resolved = resolve_appliance(INDEX, d.stacks[0].container.template)
    p = plan(d, _observed(resolved))
    tpl = next(a for a in p.actions if a.id == "hermes:template")
    (call,) = tpl.api
    assert (call.method, call.path) == ("POST", "/nodes/gihyeon/aplinfo")
    assert dict(call.params) == {"storage": "local", "template": resolved.filename}
    create = next(a for a in p.actions if a.id == "hermes:ct:create")
    assert create.api[0].params["ostemplate"] == resolved.volid
    assert not [w for w in p.warnings if "checksum" in w]


def test_plan_warns_about_a_url_without_checksum(example_desired: DesiredState) -> None:
    d = example_desired
    p = plan(d, _observed(None))
    (w,) = [w for w in p.warnings if "no checksum" in w]
    assert "debian-12-standard_12.12-1_amd64.tar.zst" in w and "appliance" in w
    sha = "ab" * 64
    t = replace(d.stacks[0].container.template, checksum=sha, checksum_algorithm="sha512")
    ct = replace(d.stacks[0].container, template=t)
    d2 = replace(d, stacks=(replace(d.stacks[0], container=ct),))
    p2 = plan(d2, _observed(None))
    assert not [w for w in p2.warnings if "no checksum" in w]
    (call,) = next(a for a in p2.actions if a.id == "hermes:template").api
    assert call.params["checksum"] == sha
