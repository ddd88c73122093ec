"""``pvestack doctor`` and the least-privilege token against the lab's API on loopback
(in-process server; no container is started, no root needed).

The lab's default token ``pvestack@pve!deploy`` (role PVEStackDeploy, privilege
separation) passes every check; removing any one privilege of the role makes doctor
name it with the ``pveum`` commands that grant it; lxc-pve 6.0.0-1 (told through the
lab's control endpoint) makes it warn about runc. Also: apt/versions and aplinfo (GET,
POST with the node verifying the sha512) as the token sees them."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import shutil
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from labstub import make_template
from pvelab.api.server import LabApiServer
from pvelab.backend.aplinfo import Appliance, render_index
from pvelab.backend.node import Node
from pvelab.backend.privileges import DEPLOY_PRIVS, DEPLOY_ROLE, DEPLOY_TOKEN, grant_deploy_token
from pvelab.runtime.lxc import LxcRuntime
from pvestack._client import ClientSettings, PveClient
from pvestack._commands import Secret
from pvestack._doctor import DoctorReport, RootSettings, Status, doctor, render_doctor
from pvestack._model import ContainerSpec, DesiredState, StackSpec, TemplateSpec

pytestmark = pytest.mark.contract

NODE = "pve"
BRIDGE = "vmbr0"
SECRET = "doctor-contract-secret"
TEMPLATE = "debian-13-standard_13.1-1_amd64.tar.zst"


@dataclass
class Served:
    server: LabApiServer
    node: Node
    www: Path
    www_url: str

    def client(self) -> PveClient:
        return PveClient(
            ClientSettings(
                api_url=self.server.url,
                token_id=DEPLOY_TOKEN,
                token_secret=Secret("token", SECRET),
                fingerprint=self.server.fingerprint,
            )
        )

    def control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """The lab's control endpoint, as root@pam (ticket + CSRF)."""
        ctx = ssl.create_default_context(cafile=str(self.server.certfile))
        login = urllib.parse.urlencode(
            {"username": "root@pam", "password": self.node.auth.root_password()}
        ).encode()
        with urllib.request.urlopen(
            urllib.request.Request(self.server.url + "/api2/json/access/ticket", data=login),
            context=ctx,
        ) as r:
            t = json.loads(r.read())["data"]
        req = urllib.request.Request(
            self.server.url + path,
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
            headers={"Content-Type": "application/json",
                     "Cookie": f"PVEAuthCookie={t['ticket']}",
                     "CSRFPreventionToken": t["CSRFPreventionToken"]},
        )  # fmt: skip
        with urllib.request.urlopen(req, context=ctx) as r:
            return json.loads(r.read())["data"]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    www = tmp_path / "www"
    www.mkdir()
    make_template(www / TEMPLATE, {"./etc/os-release": b"PRETTY_NAME=lab\n"})
    sha = hashlib.sha512((www / TEMPLATE).read_bytes()).hexdigest()
    (www / "aplinfo.dat").write_text(
        render_index(
            [
                Appliance(
                    "debian-13-standard",
                    "13.1-1",
                    "debian-13",
                    TEMPLATE,
                    sha,
                    "Debian 13 Trixie (standard)",
                )
            ]
        )
    )

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return None

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(www))
    )
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    www_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    labdir = tmp_path / "lab"
    node = Node(labdir, LxcRuntime(labdir), NODE)
    grant_deploy_token(node.auth, NODE, BRIDGE, SECRET)
    node.netinfo.tell({BRIDGE: "10.77.0.1/24"})
    node.aplinfo.update(f"{www_url}/aplinfo.dat")
    server = LabApiServer(node, "127.0.0.1", 0)
    server.start()
    try:
        yield Served(server, node, www, www_url)
    finally:
        server.stop()
        httpd.shutdown()
        httpd.server_close()
        shutil.rmtree(labdir, ignore_errors=True)


def desired(served: Served, *, checksum: bool = True) -> DesiredState:
    sha = hashlib.sha512((served.www / TEMPLATE).read_bytes()).hexdigest()
    template = TemplateSpec(
        storage="local", url=f"{served.www_url}/{TEMPLATE}", filename=TEMPLATE,
        checksum=sha if checksum else None, checksum_algorithm="sha512" if checksum else None,
    )  # fmt: skip
    ct = ContainerSpec(
        stack="hermes", node=NODE, vmid=105, hostname="hermes",
        api_config={"hostname": "hermes", "memory": 2048, "cores": 2,
                    "rootfs": "local-lvm:8", "net0": f"name=eth0,bridge={BRIDGE},ip=dhcp"},
        features={"nesting": "1"}, template=template,
    )  # fmt: skip
    return DesiredState((StackSpec("hermes", ct),))


def run(served: Served, **kw: bool) -> DoctorReport:
    return doctor(
        served.client(), desired(served, **kw), RootSettings("console"), token_id=DEPLOY_TOKEN
    )


def test_all_pass_with_the_least_privilege_token(served: Served) -> None:
    report = run(served)
    text = render_doctor(report)
    assert not report.failed, text
    assert all(f.status is Status.PASS for f in report.findings), text
    checks = {f.check for f in report.findings}
    assert {"api", "token", "node pve", "storage local", "storage local-lvm", f"bridge {BRIDGE}",
            "hermes: template", "hermes: vmid", "lxc-pve on pve", "root"} <= checks  # fmt: skip
    assert "privilege /sdn/zones/localnetwork/vmbr0" in checks
    print(text)


@pytest.mark.parametrize("priv", sorted(DEPLOY_PRIVS))
def test_each_missing_privilege_is_named_with_its_grant(served: Served, priv: str) -> None:
    served.node.auth.set_role(DEPLOY_ROLE, set(DEPLOY_PRIVS) - {priv})
    report = run(served)
    assert report.failed
    fails = [f for f in report.findings if f.status is Status.FAIL]
    named = [f for f in fails if f.check.startswith("privilege ") and priv in f.evidence]
    assert named, render_doctor(report)
    fix = named[0].fix
    assert f"pveum role modify {DEPLOY_ROLE} --append 1 --privs {priv}" in fix
    assert "pveum acl modify " in fix and "--users pvestack@pve" in fix
    assert f"--tokens '{DEPLOY_TOKEN}'" in fix


def test_old_lxc_pve_warns_about_runc(served: Served) -> None:
    told = served.control("POST", "/_lab/packages", {"lxc-pve": "6.0.0-1"})
    assert told["lxc-pve"] == "6.0.0-1"
    report = run(served)
    (f,) = report.by_check("lxc-pve on pve")
    assert f.status is Status.WARN
    assert "lxc-pve 6.0.0-1 < 6.0.5-2" in f.evidence and "apt full-upgrade" in f.fix
    assert not report.failed
    served.control("DELETE", "/_lab/packages")
    (f,) = run(served).by_check("lxc-pve on pve")
    assert f.status is Status.PASS and "6.0.5-3" in f.evidence


def test_url_without_checksum_warns(served: Served) -> None:
    (f,) = run(served, checksum=False).by_check("hermes: template")
    assert f.status is Status.WARN and "no checksum" in f.evidence


def test_wrong_token_secret_fails_the_token_check(served: Served) -> None:
    c = PveClient(ClientSettings(api_url=served.server.url, token_id=DEPLOY_TOKEN,
                                 token_secret=Secret("token", "wrong"),
                                 fingerprint=served.server.fingerprint))  # fmt: skip
    report = doctor(c, desired(served), RootSettings("console"), token_id=DEPLOY_TOKEN)
    (f,) = report.by_check("token")
    assert f.status is Status.FAIL and report.failed


def test_apt_versions_needs_sys_audit(served: Served) -> None:
    rows = served.client().get(f"/nodes/{NODE}/apt/versions")
    assert [r["Package"] for r in rows[:2]] == ["proxmox-ve", "pve-manager"]
    served.node.auth.set_role(DEPLOY_ROLE, set(DEPLOY_PRIVS) - {"Sys.Audit"})
    with pytest.raises(Exception, match=r"Sys\.Audit"):
        served.client().get(f"/nodes/{NODE}/apt/versions")


def _wait(c: PveClient, upid: str) -> dict[str, Any]:
    for _ in range(200):
        st: dict[str, Any] = c.get(f"/nodes/{NODE}/tasks/{upid}/status")
        if st["status"] == "stopped":
            return st
        time.sleep(0.05)
    raise AssertionError("task still running")


def test_aplinfo_lists_and_downloads_verified(served: Served) -> None:
    c = served.client()
    (rec,) = c.get(f"/nodes/{NODE}/aplinfo")
    assert rec["package"] == "debian-13-standard" and rec["template"] == TEMPLATE
    assert rec["location"] == f"{served.www_url}/{TEMPLATE}" and len(rec["sha512sum"]) == 128
    upid = c.post(f"/nodes/{NODE}/aplinfo", storage="local", template=TEMPLATE)
    assert f":download:{TEMPLATE}:{DEPLOY_TOKEN}:" in upid
    assert _wait(c, upid)["exitstatus"] == "OK"
    vols = [r["volid"] for r in c.get(f"/nodes/{NODE}/storage/local/content", content="vztmpl")]
    assert f"local:vztmpl/{TEMPLATE}" in vols
    log = "\n".join(x["t"] for x in c.get(f"/nodes/{NODE}/tasks/{upid}/log"))
    assert "checksum verified" in log


def test_aplinfo_download_refuses_a_changed_file(served: Served) -> None:
    (served.www / TEMPLATE).write_bytes(b"not the indexed file")
    c = served.client()
    upid = c.post(f"/nodes/{NODE}/aplinfo", storage="local", template=TEMPLATE)
    assert "checksum mismatch" in _wait(c, upid)["exitstatus"]
    with pytest.raises(Exception, match="no such template"):
        c.post(f"/nodes/{NODE}/aplinfo", storage="local", template="nope.tar.zst")
    served.node.auth.set_role(DEPLOY_ROLE, set(DEPLOY_PRIVS) - {"Datastore.AllocateTemplate"})
    with pytest.raises(Exception, match=r"/storage/local, Datastore\.AllocateTemplate"):
        c.post(f"/nodes/{NODE}/aplinfo", storage="local", template=TEMPLATE)


def stack_file(
    served: Served, path: Path, monkeypatch: pytest.MonkeyPatch, extra: str = ""
) -> Path:
    """A stack file for one CT (105) on the served node from its template, the deploy
    token's secret in the environment and no other PVESTACK_* that could override it;
    ``extra`` goes after ``[root]``."""
    sha = hashlib.sha512((served.www / TEMPLATE).read_bytes()).hexdigest()
    path.write_text(
        f'[pve]\napi_url = "{served.server.url}"\ntoken_id = "{DEPLOY_TOKEN}"\n'
        f'fingerprint = "{served.server.fingerprint}"\n[root]\nvia = "console"\n{extra}'
        f'[[stack]]\nname = "hermes"\nnode = "{NODE}"\nvmid = 105\nhostname = "hermes"\n'
        'memory = 2048\ndatastore = "local-lvm"\ndisk_gb = 8\n'
        f'[stack.network]\nbridge = "{BRIDGE}"\n'
        f'[stack.template]\nstorage = "local"\nurl = "{served.www_url}/{TEMPLATE}"\n'
        f'checksum = "{sha}"\nchecksum_algorithm = "sha512"\n'
    )
    monkeypatch.setenv("PVESTACK_TOKEN_SECRET", SECRET)
    for k in ("PVESTACK_API_URL", "PVESTACK_TOKEN_ID", "PVESTACK_FINGERPRINT", "PVESTACK_NODE",
              "PVESTACK_ROOT_VIA", "PVESTACK_CA_FILE"):  # fmt: skip
        monkeypatch.delenv(k, raising=False)
    return path


def test_cli_doctor_exit_codes_and_json(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner  # noqa: PLC0415

    from pvestack.cli import app  # noqa: PLC0415

    stack = stack_file(served, tmp_path / "stack.toml", monkeypatch)
    runner = CliRunner()
    ok = runner.invoke(app, ["doctor", "-c", str(stack)])
    assert ok.exit_code == 0, ok.output
    assert "doctor: 0 fail, 0 warn" in ok.output
    served.node.auth.set_role(DEPLOY_ROLE, set(DEPLOY_PRIVS) - {"VM.PowerMgmt"})
    bad = runner.invoke(app, ["doctor", "-c", str(stack), "--json"])
    assert bad.exit_code == 1, bad.output
    rows = json.loads(bad.output)
    (fail,) = [r for r in rows if r["status"] == "fail"]
    assert "VM.PowerMgmt" in fail["evidence"] and "pveum acl modify /vms" in fail["fix"]


def test_appliance_resolved_planned_downloaded_and_seen(served: Served) -> None:
    from pvestack._observe import observe  # noqa: PLC0415
    from pvestack._plan import plan  # noqa: PLC0415

    d = desired(served)
    ct = d.stacks[0].container
    t = TemplateSpec("local", "", "", appliance="debian-13-standard")
    d = DesiredState((StackSpec("hermes", replace(ct, template=t)),))
    c = served.client()
    obs = observe(c, d)
    (st,) = obs.stacks
    assert st.template is not None and st.template.filename == TEMPLATE
    assert not st.template_present
    (report_t,) = doctor(c, d, RootSettings("console"), token_id=DEPLOY_TOKEN).by_check(
        "hermes: template"
    )
    assert report_t.status is Status.PASS and "sha512" in report_t.evidence
    p = plan(d, obs)
    (call,) = next(a for a in p.actions if a.id == "hermes:template").api
    upid = c.request(call.method, call.path, call.params)
    assert _wait(c, upid)["exitstatus"] == "OK"
    (st2,) = observe(c, d).stacks
    assert st2.template_present
    create = next(a for a in plan(d, observe(c, d)).actions if a.id == "hermes:ct:create")
    assert create.api[0].params["ostemplate"] == f"local:vztmpl/{TEMPLATE}"


def test_a_wrong_tls_pin_fails_the_api_check_and_stops(served: Served) -> None:
    wrong = ":".join(["AB"] * 32)
    settings = ClientSettings(
        api_url=served.server.url,
        token_id=DEPLOY_TOKEN,
        token_secret=Secret("token", SECRET),
        fingerprint=wrong,
    )
    c = PveClient(settings)
    report = doctor(c, desired(served), RootSettings("console"), token_id=DEPLOY_TOKEN)
    assert [f.check for f in report.findings] == ["api"]
    (f,) = report.findings
    assert f.status is Status.FAIL and "fingerprint" in f.fix
