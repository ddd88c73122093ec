"""The lab backend's pure parts: schema validation with PVE's wording, property strings,
PVE's config file format, check_ct_modify_config_perm, tickets and tokens, UPIDs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pvelab.backend import conf
from pvelab.backend.auth import AuthStore, Identity
from pvelab.backend.errors import PveError
from pvelab.backend.perms import check_ct_modify_config_perm
from pvelab.backend.schema import (
    lxc_option_schema,
    method_schema,
    parse_property_string,
    validate,
)
from pvelab.backend.tasks import TaskStore, Upid

PUT_CONFIG = method_schema("/nodes/{node}/lxc/{vmid}/config", "PUT")
CREATE = method_schema("/nodes/{node}/lxc", "POST")


def errors_of(schema: object, params: dict[str, object]) -> dict[str, str]:
    with pytest.raises(PveError) as e:
        validate(schema, params)  # type: ignore[arg-type]
    assert e.value.status == 400
    assert e.value.message == "Parameter verification failed."
    return e.value.errors


# ---------------------------------------------------------------- schema


def test_valid_config_update_is_coerced() -> None:
    out = validate(PUT_CONFIG, {"node": "pve", "vmid": "100", "memory": "1024", "onboot": "yes"})
    assert out == {"node": "pve", "vmid": 100, "memory": 1024, "onboot": 1}


def test_unknown_parameter_wording() -> None:
    errs = errors_of(PUT_CONFIG, {"node": "pve", "vmid": 100, "lxc.idmap": "u 0 100000 65536"})
    assert errs == {
        "lxc.idmap": "property is not defined in schema and the schema does not allow "
        "additional properties"
    }


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("memory", "lots", "type check ('integer') failed - got 'lots'"),
        ("memory", "8", "value must have a minimum value of 16"),
        ("cores", "9000", "value must have a maximum value of 8192"),
        (
            "arch",
            "sparc",
            "value 'sparc' does not have a value in the enumeration "
            "'amd64, i386, arm64, armhf, riscv32, riscv64'",
        ),
        ("onboot", "perhaps", "type check ('boolean') failed - got 'perhaps'"),
        ("hostname", "-bad-", "invalid format - value does not look like a valid DNS name\n"),
        (
            "nameserver",
            "1.1.1.1 nope",
            "invalid format - value does not look like a valid IP address\n",
        ),
        (
            "net0",
            "name=eth0,bogus=1",
            "invalid format - invalid key in comma-separated list property: bogus\n",
        ),
        (
            "net0",
            "name=eth0,name=eth1",
            "invalid format - duplicate key in comma-separated list property: name\n",
        ),
        (
            "mp0",
            "local-lvm:4",
            "invalid format - format error\nmp0.mp: property is missing and it is not optional\n",
        ),
        (
            "features",
            "nesting=maybe",
            "invalid format - format error\nfeatures.nesting: type "
            "check ('boolean') failed - got 'maybe'\n",
        ),
        (
            "net0",
            "eth0",
            "invalid format - value without key, but schema does not define a default key\n",
        ),
    ],
)
def test_value_errors_have_pve_wording(key: str, value: str, message: str) -> None:
    assert errors_of(PUT_CONFIG, {"node": "pve", "vmid": 100, key: value}) == {key: message}


def test_missing_required_and_numbered_limits() -> None:
    errs = errors_of(CREATE, {"node": "pve", "ostemplate": "local:vztmpl/x.tar.zst", "net32": "x"})
    assert errs["vmid"] == "property is missing and it is not optional"
    assert "net32" in errs  # net0..net31 only


def test_requires_is_checked() -> None:
    schema = method_schema("/nodes/{node}/storage/{storage}/download-url", "POST")
    params = {
        "node": "pve",
        "storage": "local",
        "content": "vztmpl",
        "filename": "a.tar.zst",
        "url": "http://127.0.0.1/a",
        "checksum": "ab",
    }
    assert errors_of(schema, params) == {
        "checksum-algorithm": "missing property required by 'checksum'"
    }


def test_property_string_parse_with_default_key() -> None:
    sch = lxc_option_schema("mp3")
    assert sch is not None
    parsed = parse_property_string(sch["format"], "local-lvm:4,mp=/data,backup=0")
    assert parsed == {"volume": "local-lvm:4", "mp": "/data", "backup": "0"}


# ---------------------------------------------------------------- config file


CONF = """\
#Hermes agent%0A second line
arch: amd64
features: keyctl=1,nesting=1
hostname: hermes
mp0: /srv/hermes,mp=/opt/data
unprivileged: 1
lxc.idmap: u 0 100000 65536
lxc.idmap = g 0 100000 65536

[pve:pending]
memory: 2048

[before]
arch: amd64
hostname: hermes
snaptime: 1700000000
"""


def test_config_file_round_trip() -> None:
    c = conf.parse(CONF)
    assert c.main.options["features"] == "keyctl=1,nesting=1"
    assert c.main.raw == (("lxc.idmap", "u 0 100000 65536"), ("lxc.idmap", "g 0 100000 65536"))
    assert c.main.description == "Hermes agent\n second line"
    assert c.pending.options == {"memory": "2048"}
    assert c.snapshots["before"].options["snaptime"] == "1700000000"
    again = conf.parse(conf.write(c))
    assert again == c
    assert "lxc.idmap: g 0 100000 65536\n" in conf.write(c)


def test_config_file_rejects_garbage() -> None:
    with pytest.raises(conf.ConfError):
        conf.parse("arch amd64\n")


# ---------------------------------------------------------------- permissions


@pytest.fixture
def auth(tmp_path: Path) -> AuthStore:
    a = AuthStore(tmp_path / "auth.json")
    a.add_token("pvestack@pve!deploy", "s3cret")
    a.grant(
        "pvestack@pve",
        "/",
        [
            "VM.Allocate",
            "VM.Config.Disk",
            "VM.Config.Options",
            "VM.Config.Network",
            "Datastore.AllocateSpace",
        ],
    )
    a.add_token("root@pam!pvestack", "r00t")
    return a


TOKEN = Identity("pvestack@pve", "deploy")
ROOT_TOKEN = Identity("root@pam", "pvestack")
ROOT = Identity("root@pam")


def denied(
    auth: AuthStore,
    who: Identity,
    new: dict[str, str],
    old: dict[str, str] | None = None,
    delete: tuple[str, ...] = (),
    unpriv: bool = True,
) -> str:
    with pytest.raises(PveError) as e:
        check_ct_modify_config_perm(auth, who, 100, old, new, delete, unpriv)
    assert e.value.status == 403
    return e.value.message


@pytest.mark.parametrize("who", [TOKEN, ROOT_TOKEN], ids=["token", "root-token"])
def test_root_only_rules_apply_to_every_token(auth: AuthStore, who: Identity) -> None:
    assert denied(auth, who, {"mp0": "/srv/x,mp=/x"}) == (
        "Permission check failed (mount point type bind is only allowed for root@pam)"
    )
    assert denied(auth, who, {"mp0": "/dev/sdb,mp=/x"}) == (
        "Permission check failed (mount point type device is only allowed for root@pam)"
    )
    assert denied(auth, who, {"dev0": "/dev/fuse"}) == (
        "Permission check failed (configuring device passthrough is only allowed for root@pam)"
    )
    assert denied(auth, who, {"features": "nesting=1,keyctl=1"}) == (
        "Permission check failed (changing feature flags (except nesting) is only allowed "
        "for root@pam)"
    )
    assert denied(auth, who, {"features": "nesting=1"}, unpriv=False) == (
        "Permission check failed (changing feature flags for privileged container is only "
        "allowed for root@pam)"
    )
    assert denied(auth, who, {"hookscript": "local:snippets/x.sh"}) == (
        "Permission check failed (changing the hookscript is only allowed for root@pam)"
    )
    # deleting keyctl is a feature change too
    assert "except nesting" in denied(
        auth, who, {}, old={"features": "keyctl=1,nesting=1"}, delete=("features",)
    )


def test_token_may_set_nesting_and_volumes(auth: AuthStore) -> None:
    check_ct_modify_config_perm(auth, TOKEN, 100, None, {"features": "nesting=1"}, [], True)
    check_ct_modify_config_perm(
        auth,
        TOKEN,
        100,
        {"features": "nesting=1,keyctl=1"},
        {"features": "nesting=0,keyctl=1"},
        [],
        True,
    )
    check_ct_modify_config_perm(auth, TOKEN, 100, None, {"mp0": "local-lvm:8,mp=/d"}, [], True)


def test_root_at_pam_may_do_everything(auth: AuthStore) -> None:
    check_ct_modify_config_perm(
        auth,
        ROOT,
        100,
        None,
        {"mp0": "/srv/x,mp=/x", "features": "keyctl=1", "dev0": "/dev/x"},
        [],
        False,
    )


def test_missing_privilege_names_path_and_privilege(auth: AuthStore) -> None:
    assert (
        denied(auth, TOKEN, {"cores": "2"}) == "Permission check failed (/vms/100, VM.Config.CPU)"
    )


# ---------------------------------------------------------------- authentication


def test_tokens_and_tickets(auth: AuthStore) -> None:
    assert auth.check_token("PVEAPIToken=pvestack@pve!deploy=s3cret") == TOKEN
    with pytest.raises(PveError) as e:
        auth.check_token("PVEAPIToken=pvestack@pve!deploy=wrong")
    assert (e.value.status, e.value.message) == (401, "authentication failure")
    auth.set_password("root@pam", "pw")
    t = auth.login("root", "pw")
    assert t.username == "root@pam" and t.ticket.startswith("PVE:root@pam:")
    assert auth.check_ticket(t.ticket, None, write=False) == ROOT
    assert auth.check_ticket(t.ticket, t.csrf, write=True) == ROOT
    with pytest.raises(PveError, match="invalid csrf token"):
        auth.check_ticket(t.ticket, "nope", write=True)
    forged = t.ticket.replace("root@pam", "roo2@pam")
    with pytest.raises(PveError, match="invalid PVE ticket"):
        auth.check_ticket(forged, None, write=False)
    old = auth.issue("root@pam", now=time.time() - 7300)
    with pytest.raises(PveError, match="invalid PVE ticket"):
        auth.check_ticket(old.ticket, None, write=False)
    with pytest.raises(PveError, match="authentication failure"):
        auth.login("root@pam", "bad")


def test_privilege_separated_token_is_the_intersection(auth: AuthStore) -> None:
    auth.add_token("pvestack@pve!narrow", "x", privsep=True)
    auth.grant("pvestack@pve!narrow", "/vms", ["VM.Audit", "VM.Allocate"])
    who = Identity("pvestack@pve", "narrow")
    assert auth.privileges(who, "/vms/100") == {"VM.Allocate"}
    assert auth.privileges(ROOT_TOKEN, "/")  # not separated: root's privileges
    assert not ROOT_TOKEN.is_root


# ---------------------------------------------------------------- tasks


def test_upid_round_trip_and_bad_upid() -> None:
    text = "UPID:pve:00001A2B:0012D687:6553F100:vzstart:100:root@pam!tok:"
    u = Upid.parse(text)
    assert (u.node, u.pid, u.type, u.id, u.user) == (
        "pve",
        0x1A2B,
        "vzstart",
        "100",
        "root@pam!tok",
    )
    assert str(u) == text
    with pytest.raises(PveError) as e:
        Upid.parse("UPID:nonsense")
    assert e.value.status == 400


def test_task_runs_and_stops_with_log(tmp_path: Path) -> None:
    store = TaskStore(tmp_path, "pve")
    gate = __import__("threading").Event()

    def body(log: object) -> None:
        log.write("working")  # type: ignore[attr-defined]
        gate.wait(5)

    upid = store.start("vzstart", "100", "root@pam", body)
    assert store.status(upid)["status"] == "running"
    gate.set()
    assert store.wait(upid, 5) == "OK"
    st = store.status(upid)
    assert (
        st["status"] == "stopped" and st["exitstatus"] == "OK" and st["endtime"] >= st["starttime"]
    )
    lines, total = store.log(upid)
    assert [x["t"] for x in lines] == ["working", "TASK OK"] and lines[0]["n"] == 1 and total == 2

    def failing(log: object) -> None:
        raise PveError(500, "CT 100 already running")

    upid2 = store.start("vzstart", "100", "root@pam", failing)
    assert store.wait(upid2, 5) == "CT 100 already running"
    assert store.log(upid2)[0][-1]["t"] == "TASK ERROR: CT 100 already running"


def test_task_of_a_dead_process_reads_stopped(tmp_path: Path) -> None:
    upid = str(Upid("pve", 2**22 - 3, 1, int(time.time()), "vzcreate", "100", "root@pam"))
    (tmp_path / f"{upid}.log").write_text("")
    st = TaskStore(tmp_path, "pve").status(upid)
    assert (st["status"], st["exitstatus"]) == ("stopped", "unexpected status")
