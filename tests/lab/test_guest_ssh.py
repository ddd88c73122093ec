"""The guest route over SSH, on real LXC, nothing of it through the node:

the token creates a CT with ``ssh-public-keys`` (a per-stack ed25519 key; it lands in
``/root/.ssh/authorized_keys``); the root step that records the CT's host key runs
through the node's root SSH (``pct``); the API reports the CT's address
(``GET .../interfaces``); the guest transport, pinned to the fingerprint it reads back
through the API, runs a command, sends a payload (with a secret) on stdin, copies a file
in, streams an image tarball into ``docker load``; a CT without the key is refused with
the fix and works after the root step authorizes it; a command over its time limit, a
wrong pin (both fingerprints named), a closed port and a stopped CT are clear errors.
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
from pathlib import Path

import pytest
from labkit import Api, download_template, ssh

from pvelab.control import Lab
from pvestack._client import ClientSettings, PveClient
from pvestack._commands import Payload, Secret, Step
from pvestack._errors import HostKeyError, TransportError
from pvestack._guest_settings import GuestSettings, ensure_stack_key
from pvestack._steps import guest_access as ga
from pvestack._steps.guest import image_step, pct_sh
from pvestack.executors._guest_ssh import (
    GuestSshTransport,
    GuestTarget,
    open_guest_transport,
    resolve_address,
    static_address,
)
from pvestack.executors._ssh import SshSettings, SshTransport

pytestmark = pytest.mark.lab

VMID = 231
SECRET = Secret("probe", "sk-guest-ssh-SECRET-31337")
WRONG = "SHA256:" + "A" * 43


FAKE_DOCKER = """#!/bin/sh
case "$1" in
  image) test -f /root/loaded.tar ;;
  load) cat >/root/loaded.tar && echo "Loaded image: pvestack/fake:1" ;;
  *) exit 2 ;;
esac
"""


def root_transport(env: dict[str, str]) -> SshTransport:
    """Root on the lab node over its SSH (pvestack's own root transport)."""
    return SshTransport(
        SshSettings(
            host=env["PVESTACK_SSH_HOST"],
            port=int(env["PVESTACK_SSH_PORT"]),
            key_file=env["PVESTACK_SSH_KEY"],
            known_hosts=env["PVESTACK_SSH_KNOWN_HOSTS"],
            use_agent=False,
        )
    )


def _description(api: Api) -> str:
    return str(api.ok("GET", f"/nodes/{{node}}/lxc/{VMID}/config").get("description", ""))


def _create(lab: Lab, env: dict[str, str], api: Api, public_key: str, ipv4: str) -> str:
    name = download_template(api, env)
    description = "Guest SSH test: keep me\n\n  indented: a%b\npvestack-stack: guestssh\nafter"
    upid = api.ok(
        "POST",
        "/nodes/{node}/lxc",
        vmid=VMID,
        ostemplate=f"local:vztmpl/{name}",
        hostname="guestssh",
        unprivileged=1,
        memory=512,
        rootfs=f"{env['PVESTACK_LAB_ROOTDIR_STORAGE']}:4",
        net0=f"name=eth0,bridge={env['PVESTACK_LAB_BRIDGE']},ip={ipv4}",
        description=description,
        **ga.ssh_public_keys_param(public_key),
    )
    assert api.wait(upid)["exitstatus"] == "OK"
    assert (
        api.wait(api.ok("POST", f"/nodes/{{node}}/lxc/{VMID}/status/start"))["exitstatus"] == "OK"
    )
    rt = lab.runtime()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        out = rt.exec(VMID, ["systemctl", "is-active", "ssh"]).stdout.decode().strip()
        if out == "active":
            break
        time.sleep(1)
    assert out == "active", "sshd did not come up in the CT"
    return description


def test_guest_transport_pinned_by_the_root_record(
    lab: Lab, env: dict[str, str], api: Api, tmp_path: Path
) -> None:
    net = ipaddress.ip_network(lab.settings.subnet)
    ipv4 = f"{net.network_address + 77}/{net.prefixlen}"
    address = static_address(ipv4)
    assert address is not None
    kp = ensure_stack_key("guestssh", {"XDG_CONFIG_HOME": str(tmp_path / "cfg")})
    description = _create(lab, env, api, kp.public_key, ipv4)
    try:
        # ssh-public-keys at create filled the CT's authorized_keys (as PVE does)
        rt = lab.runtime()
        auth = rt.exec(VMID, ["cat", "/root/.ssh/authorized_keys"]).stdout.decode()
        assert kp.public_key in auth.splitlines()

        # no record yet: no connection, and the error says what to run
        with pytest.raises(HostKeyError, match="no host-key record"):
            ga.require_hostkey_record(_description(api), VMID)

        # root on the node (its SSH, pct) runs the access steps: sshd present, key recorded
        with root_transport(env) as root:
            observed = _description(api)
            steps = ga.guest_access_steps(VMID, observed, kp.public_key, key_at_create=True)
            ran = [root.run_step(s) for s in steps]
            assert ran == [False, True]  # sshd already there (template); the record written
            assert [root.run_step(s) for s in steps] == [False, False]  # idempotent
        # the address as the API reports it (PVE's GET .../interfaces) is the static one
        client = PveClient(
            ClientSettings(
                api_url=env["PVESTACK_API_URL"],
                token_id=env["PVESTACK_TOKEN_ID"],
                token_secret=Secret("token", env["PVESTACK_TOKEN_SECRET"]),
                fingerprint=env["PVESTACK_FINGERPRINT"],
            )
        )
        assert resolve_address(client, env["PVESTACK_NODE"], VMID, "dhcp") == address
        assert resolve_address(client, env["PVESTACK_NODE"], VMID, ipv4) == address

        after = _description(api)
        pinned = ga.require_hostkey_record(after, VMID)
        assert ga.strip_hostkey_record(after) == description  # the rest kept exactly
        seen = ssh(env, f"pct exec {VMID} -- ssh-keygen -lf {ga.HOSTKEY_PUB}").stdout.split()[1]
        assert pinned == seen

        target = GuestTarget(VMID, address, pinned, kp.private_path, connect_timeout=10)
        progress: list[tuple[int, int]] = []
        settings = GuestSettings(via="ssh", key_file=str(kp.private_path))
        opened = open_guest_transport(
            settings, client, stack="guestssh", node=env["PVESTACK_NODE"], vmid=VMID, ipv4="dhcp"
        )
        assert opened.target == GuestTarget(VMID, address, pinned, kp.private_path)
        with opened as g:
            # a command, straight in, as the CT's root (the pct-route Command, unwrapped)
            out = g.capture(pct_sh(VMID, "id -u; hostname"))
            assert out.returncode == 0 and out.stdout.split() == ["0", "guestssh"]
            # a payload with a secret on stdin only
            step = Step(
                "probe",
                "payload on stdin",
                (
                    pct_sh(
                        VMID,
                        'cat >"$1" && chmod 600 "$1" && wc -c <"$1"',
                        "/root/payload",
                        stdin=Payload(("data:", SECRET, "\n")),
                    ),
                ),
            )
            lines: list[str] = []
            assert g.run_step(step, on_output=lines.append)
            assert any(ln.strip() == str(len("data:" + SECRET.value + "\n")) for ln in lines)
            assert not any(SECRET.value in ln for ln in lines)
            got = rt.exec(VMID, ["cat", "/root/payload"]).stdout.decode()
            assert got == "data:" + SECRET.value + "\n"
            # a local file streamed in (temp name, then rename), with progress
            src = tmp_path / "blob.bin"
            src.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
            g.push(str(src), "/root/blob.bin", on_progress=lambda s, t: progress.append((s, t)))
            assert progress and progress[-1] == (src.stat().st_size, src.stat().st_size)
            remote = g.capture(pct_sh(VMID, "sha256sum /root/blob.bin; ls /root"))
            assert remote.stdout.split()[0] == hashlib.sha256(src.read_bytes()).hexdigest()
            assert ".pvestack." not in remote.stdout  # no temporary file left

            # an image step (built for pct push + docker load) streams the operator's
            # tarball into docker load's stdin; a stand-in docker records what it got
            g.run(["sh", "-c", "cat >/usr/local/bin/docker && chmod 755 /usr/local/bin/docker"],
                  stdin=FAKE_DOCKER.encode())  # fmt: skip
            tar = tmp_path / "image.tar"
            tar.write_bytes(b"pretend image " * 50000)
            out_lines: list[str] = []
            image = image_step("pvestack/fake:1", str(tar), VMID)
            assert g.run_step(image, on_output=out_lines.append)
            assert "Loaded image: pvestack/fake:1" in out_lines
            loaded = g.capture(pct_sh(VMID, "sha256sum /root/loaded.tar; ls /var/tmp"))
            assert loaded.stdout.split()[0] == hashlib.sha256(tar.read_bytes()).hexdigest()
            assert "pvestack-image.tar" not in loaded.stdout  # streamed, never on disk
            assert not g.run_step(image)  # the guard (docker image inspect) says done

        # a CT without the key (adopted, made elsewhere): refused with the fix, then the
        # root step authorizes it and the same connection works
        rt.exec(VMID, ["rm", "-f", "/root/.ssh/authorized_keys"])
        with pytest.raises(TransportError) as e0:
            GuestSshTransport(target)
        assert e0.value.hint is not None and "authorized_keys" in e0.value.hint
        with root_transport(env) as root2:
            assert root2.run_step(ga.authorized_key_step(VMID, kp.public_key))
        with GuestSshTransport(target) as g2:
            assert g2.capture(pct_sh(VMID, "echo back")).stdout == "back\n"

        # every command has a time limit
        quick = GuestTarget(VMID, address, pinned, kp.private_path, command_timeout=2)
        with GuestSshTransport(quick) as g3:
            t0 = time.monotonic()
            with pytest.raises(TransportError, match="timed out"):
                g3.capture(pct_sh(VMID, "sleep 30"))
            assert time.monotonic() - t0 < 10

        # a wrong pin: refused, both fingerprints named
        with pytest.raises(HostKeyError) as e:
            GuestSshTransport(GuestTarget(VMID, address, WRONG, kp.private_path))
        assert pinned in str(e.value) and WRONG in str(e.value)
        assert e.value.hint is not None and "record the new one" in e.value.hint

        # nothing listening: the address, the reason, and the pct route
        with pytest.raises(TransportError) as e2:
            GuestSshTransport(GuestTarget(VMID, address, pinned, kp.private_path, port=2))
        assert f"{address}:2" in str(e2.value) and "refused" in str(e2.value)
        assert e2.value.hint is not None and 'via = "pct"' in e2.value.hint
        # stopped: the API reports no address, and the error says what to do instead
        api.wait(api.ok("POST", f"/nodes/{{node}}/lxc/{VMID}/status/stop"))
        with pytest.raises(TransportError, match="not running") as e3:
            resolve_address(client, env["PVESTACK_NODE"], VMID, "dhcp")
        assert e3.value.hint is not None and 'via = "pct"' in e3.value.hint
    finally:
        upid = api.call("POST", f"/nodes/{{node}}/lxc/{VMID}/status/stop").json().get("data")
        if upid:
            api.wait(upid)
        upid = api.call("DELETE", f"/nodes/{{node}}/lxc/{VMID}").json().get("data")
        if upid:
            api.wait(upid)
