"""Debian 13 in the lab, with the least-privilege token (``pvestack@pve!deploy``):

``pvestack doctor`` passes everything on the real lab; the node's appliance index lists
debian-12 and debian-13; ``POST aplinfo`` downloads debian-13 (the node checks the
sha512); the token creates and starts an unprivileged CT from it, which boots systemd
(trixie), gets a DHCP address, installs Debian's docker.io (on trixie the ``docker``
command is in ``docker-cli``, only a Recommends of docker.io) and runs a nested container;
then the token stops and destroys it.
"""

from __future__ import annotations

import time

import pytest
from labkit import Api, wait_systemd

from pvelab.control import Lab
from pvelab.runtime import template
from pvestack._client import ClientSettings, PveClient
from pvestack._commands import Secret
from pvestack._doctor import RootSettings, Status, doctor, render_doctor
from pvestack._model import ContainerSpec, DesiredState, StackSpec, TemplateSpec

pytestmark = pytest.mark.lab

VMID = 213
D13 = template.DEBIAN_13.name


def _desired(env: dict[str, str]) -> DesiredState:
    ct = ContainerSpec(
        stack="trixie", node=env["PVESTACK_NODE"], vmid=VMID, hostname="trixie",
        api_config={"hostname": "trixie", "memory": 1024,
                    "rootfs": f"{env['PVESTACK_LAB_ROOTDIR_STORAGE']}:4",
                    "net0": f"name=eth0,bridge={env['PVESTACK_LAB_BRIDGE']},ip=dhcp"},
        features={"nesting": "1"},
        template=TemplateSpec("local", "", "", appliance="debian-13-standard"),
    )  # fmt: skip
    return DesiredState((StackSpec("trixie", ct),))


def test_doctor_passes_with_the_deploy_token(lab: Lab, env: dict[str, str]) -> None:
    assert env["PVESTACK_TOKEN_ID"] == "pvestack@pve!deploy"
    client = PveClient(ClientSettings(
        api_url=env["PVESTACK_API_URL"], token_id=env["PVESTACK_TOKEN_ID"],
        token_secret=Secret("token", env["PVESTACK_TOKEN_SECRET"]),
        fingerprint=env["PVESTACK_FINGERPRINT"],
    ))  # fmt: skip
    root = RootSettings("ssh", env["PVESTACK_SSH_HOST"], int(env["PVESTACK_SSH_PORT"]),
                        env["PVESTACK_SSH_KNOWN_HOSTS"])  # fmt: skip
    report = doctor(client, _desired(env), root, token_id=env["PVESTACK_TOKEN_ID"])
    text = render_doctor(report)
    print("\n" + text)
    assert all(f.status is Status.PASS for f in report.findings), text


def test_debian13_from_aplinfo_boots_and_runs_docker(
    lab: Lab, env: dict[str, str], api: Api
) -> None:
    index = {r["package"]: r for r in api.ok("GET", "/nodes/{node}/aplinfo")}
    assert {"debian-12-standard", "debian-13-standard"} <= set(index)
    assert index["debian-13-standard"]["template"] == D13
    assert (
        index["debian-13-standard"]["sha512sum"]
        == template.cached(lab.cache, template.DEBIAN_13).sha512
    )  # type: ignore[union-attr]
    upid = api.ok("POST", "/nodes/{node}/aplinfo", storage="local", template=D13)
    assert api.wait(upid)["exitstatus"] == "OK"

    upid = api.ok(
        "POST", "/nodes/{node}/lxc", vmid=VMID, ostemplate=f"local:vztmpl/{D13}",
        hostname="trixie", unprivileged=1, features="nesting=1", memory=1024, swap=512,
        rootfs=f"{env['PVESTACK_LAB_ROOTDIR_STORAGE']}:4",
        net0=f"name=eth0,bridge={env['PVESTACK_LAB_BRIDGE']},ip=dhcp", start=1,
    )  # fmt: skip
    assert api.wait(upid)["exitstatus"] == "OK"
    rt = lab.runtime()
    try:
        wait_systemd(lab, VMID)
        release = rt.exec(VMID, ["cat", "/etc/os-release"]).stdout.decode()
        assert "VERSION_CODENAME=trixie" in release, release
        ip, deadline = None, time.monotonic() + 60
        while ip is None and time.monotonic() < deadline:
            ip = rt.ip_address(VMID)
            time.sleep(0.5)
        assert ip is not None

        install = rt.exec(
            VMID,
            ["sh", "-c", "apt-get update -q && DEBIAN_FRONTEND=noninteractive "
             "apt-get install -y -q --no-install-recommends docker.io docker-cli zstd"],
            timeout=900,
        )  # fmt: skip
        assert install.returncode == 0, install.stderr.decode()[-2000:]
        deadline = time.monotonic() + 60
        while rt.exec(VMID, ["docker", "info"]).returncode != 0:
            if time.monotonic() > deadline:
                why = rt.exec(
                    VMID,
                    [
                        "sh",
                        "-c",
                        "systemctl status docker containerd --no-pager;"
                        "journalctl -u docker -u containerd -n 40 --no-pager",
                    ],
                )
                raise AssertionError("docker did not start on trixie:\n" + why.stdout.decode())
            time.sleep(1)
        tpl = template.cached(lab.cache, template.DEBIAN_13)
        assert tpl is not None
        with tpl.path.open("rb") as f:
            imp = rt.exec(VMID, ["sh", "-c", "zstd -dcq | docker import - trixiebase"],
                          stdin=f.read(), timeout=600)  # fmt: skip
        assert imp.returncode == 0, imp.stderr.decode()
        run = rt.exec(VMID, ["docker", "run", "--rm", "trixiebase", "cat", "/etc/debian_version"],
                      timeout=300)  # fmt: skip
        assert run.returncode == 0, run.stderr.decode()
        assert run.stdout.decode().startswith("13"), run.stdout
    finally:
        upid = api.ok("POST", f"/nodes/{{node}}/lxc/{VMID}/status/stop")
        assert api.wait(upid)["exitstatus"] == "OK"
        upid = api.ok("DELETE", f"/nodes/{{node}}/lxc/{VMID}")
        assert api.wait(upid)["exitstatus"] == "OK"
