"""The stack file: loading, one problem per mistake with file/line/key, overrides, schema."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest

from pvestack._config import SecretSource, find_line, json_schema, load_config, parse_config
from pvestack._desired import build_desired, resolve_secret, token_secret
from pvestack._errors import ConfigError, SecretError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hermes.toml"


def problems(text: str, **kw: object) -> list[tuple[int | None, str, str]]:
    with pytest.raises(ConfigError) as ei:
        parse_config(text, "stack.toml", env={}, **kw)  # type: ignore[arg-type]
    return [(p.line, p.key, p.message) for p in ei.value.problems]


def test_example_reproduces_the_seed(example_text: str) -> None:
    cfg = parse_config(example_text, "hermes.toml", env={})
    st = cfg.stack[0]
    assert (st.vmid, st.node, st.network.bridge) == (118, "gihyeon", "intra01")
    assert [(m.host_path, m.path) for m in st.mount] == [
        ("/mnt/pve/hdd/hermes", "/data"),
        ("/media/2tb/hermes", "/fast"),
    ]
    assert (st.cores, st.memory, st.swap, st.disk_gb, st.datastore) == (
        2,
        4096,
        512,
        24,
        "local-lvm",
    )
    assert st.app is not None and st.app["gateway_url"] == "http://10.1.10.22:4000/v1"
    assert cfg.pve.token_secret.env == "PVESTACK_TOKEN_SECRET"
    d = build_desired(cfg, with_apps=False, env={})
    c = d.stacks[0].container
    assert c.api_config["tags"] == "agent;ai;pvestack"
    assert c.features == {"keyctl": "1", "nesting": "1"}
    assert c.template.volid == "local:vztmpl/debian-12-standard_12.12-1_amd64.tar.zst"


def test_each_problem_has_file_line_and_key(example_text: str) -> None:
    bad = (
        example_text.replace('path = "/fast"', 'path = "fast"')
        .replace("cores = 2", "cores = 0")
        .replace('token_secret = { env = "PVESTACK_TOKEN_SECRET" }', 'token_secret = "s3cret"')
        .replace('bridge = "intra01"', 'bridge = "intra01"\nbogus = 1')
    )
    got = problems(bad)
    lines = bad.splitlines()
    assert len(got) == 4
    by_key = {k: (line, msg) for line, k, msg in got}
    assert "inline" in by_key["pve.token_secret"][1]
    assert lines[by_key["pve.token_secret"][0] - 1].startswith("token_secret")
    assert lines[by_key["stack[0].cores"][0] - 1] == "cores = 0"
    assert "absolute" in by_key["stack[0].mount[1].path"][1]
    assert by_key["stack[0].mount[1].path"][0] is not None
    assert lines[by_key["stack[0].network.bogus"][0] - 1] == "bogus = 1"
    assert "unknown key" in by_key["stack[0].network.bogus"][1]
    # the secret never appears in a message
    assert all("s3cret" not in m for _, _, m in got)


@pytest.mark.parametrize(
    ("old", "new", "key", "fragment"),
    [
        (
            'host_path = "/mnt/pve/hdd/hermes"',
            'host_path = "/mnt/../etc"',
            "stack[0].mount[0].host_path",
            "'..'",
        ),
        ('path = "/data"', 'path = "/"', "stack[0].mount[0].path", "must not be /"),
        ("vmid = 118", "vmid = 5", "stack[0].vmid", "between 100"),
        ('ipv4 = "dhcp"', 'ipv4 = "10.0.0.5"', "stack[0].network", "CIDR"),
        (
            'api_url = "https://192.168.50.87:8006"',
            'api_url = "http://x:8006"',
            "pve.api_url",
            "https",
        ),
        ('token_id = "root@pam!pvestack"', 'token_id = "root"', "pve.token_id", "USER@REALM"),
        (
            'url = "http://download.proxmox.com/images/system/debian-12-standard_12.12-1_amd64.tar.zst"',
            'url = "http://example.invalid/x.iso"',
            "stack[0].template",
            ".tar",
        ),
        ('tags = ["ai", "agent"]', 'tags = ["A B"]', "stack[0].tags", "tag"),
    ],
)
def test_validation(example_text: str, old: str, new: str, key: str, fragment: str) -> None:
    assert old in example_text
    got = problems(example_text.replace(old, new))
    assert [k for _, k, _ in got] == [key]
    assert fragment in got[0][2]
    assert got[0][0] is not None


def test_toml_syntax_error_has_line() -> None:
    got = problems('[pve]\napi_url = "https://x:8006"\ntoken_id = \n')
    assert got[0][0] == 3 and "TOML syntax" in got[0][2]


def test_missing_file_is_a_problem_not_a_traceback(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(tmp_path / "nope.toml", env={})
    assert "no such file" in str(ei.value)


def test_env_overrides_connection_and_node(example_text: str) -> None:
    env = {
        "PVESTACK_API_URL": "https://127.0.0.1:8443",
        "PVESTACK_TOKEN_ID": "ci@pve!t",
        "PVESTACK_CA_FILE": "/tmp/ca.pem",
        "PVESTACK_NODE": "lab1",
        "PVESTACK_ROOT_VIA": "ssh",
        "PVESTACK_SSH_HOST": "127.0.0.1",
        "PVESTACK_SSH_PORT": "2222",
    }
    cfg = parse_config(example_text, "x.toml", env=env)
    assert cfg.pve.api_url == "https://127.0.0.1:8443"
    assert cfg.pve.token_id == "ci@pve!t"
    assert cfg.pve.ca_file == "/tmp/ca.pem" and cfg.pve.fingerprint is None
    assert cfg.stack[0].node == "lab1"
    assert cfg.root.via == "ssh" and cfg.root.ssh.port == 2222
    # flags win over the environment
    cfg = parse_config(example_text, "x.toml", env=env, overrides={"NODE": "lab2"})
    assert cfg.stack[0].node == "lab2"


def test_find_line_in_arrays_of_tables(example_text: str) -> None:
    lines = example_text.splitlines()
    n = find_line(example_text, ("stack", 0, "mount", 1, "host_path"))
    assert n is not None and lines[n - 1] == 'host_path = "/media/2tb/hermes"'
    n = find_line(example_text, ("stack", 0, "features", "keyctl"))
    assert n is not None and lines[n - 1].startswith("features =")


def test_schema_validates_the_example(example_text: str) -> None:
    schema = json_schema()
    jsonschema.validate(tomllib.loads(example_text), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"pve": {}, "stack": []}, schema)


def test_schema_command_prints_json() -> None:
    out = subprocess.run(
        [str(Path(sys.executable).parent / "pvestack"), "schema"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout)["title"] == "pvestack stack file"


def test_cli_reports_problems_without_traceback(tmp_path: Path, example_text: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(example_text.replace("cores = 2", "cores = -1"))
    out = subprocess.run(
        [str(Path(sys.executable).parent / "pvestack"), "plan", "-c", str(f)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 1
    assert f"{f}:" in out.stderr and "stack[0].cores" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_secrets(tmp_path: Path) -> None:
    f = tmp_path / "s"
    f.write_text("from-file\n")
    assert resolve_secret("a", SecretSource(file=str(f))).value == "from-file"  # type: ignore[union-attr]
    assert resolve_secret("a", SecretSource(env="X"), env={"X": "v"}).value == "v"  # type: ignore[union-attr]
    assert resolve_secret("a", SecretSource(env="X", optional=True), env={}) is None
    with pytest.raises(SecretError, match="X is not set"):
        resolve_secret("a", SecretSource(env="X"), env={})
    s = resolve_secret("a", SecretSource(command=["printf", "cmd"]))
    assert s is not None and s.value == "cmd" and str(s) == "***"


def test_token_secret_missing_is_secret_error(
    example_text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PVESTACK_TOKEN_SECRET", raising=False)
    cfg = parse_config(example_text, "x.toml", env={})
    with pytest.raises(SecretError) as ei:
        token_secret(cfg)
    assert ei.value.hint and "PVESTACK_TOKEN_SECRET" in ei.value.hint


def test_env_interpolation(example_text: str) -> None:
    text = example_text.replace('bridge = "intra01"', 'bridge = "${PVESTACK_LAB_BRIDGE:-vmbr0}"')
    text = text.replace('datastore = "local-lvm"', 'datastore = "${LAB_STORAGE}"')
    cfg = parse_config(text, "x.toml", env={"LAB_STORAGE": "labdir"})
    assert cfg.stack[0].network.bridge == "vmbr0" and cfg.stack[0].datastore == "labdir"
    cfg = parse_config(text, "x.toml", env={"LAB_STORAGE": "st", "PVESTACK_LAB_BRIDGE": "lab0"})
    assert cfg.stack[0].network.bridge == "lab0"
    got = problems(text)
    assert len(got) == 1
    line, key, msg = got[0]
    assert key == "stack[0].datastore" and "${LAB_STORAGE} is not set" in msg
    assert text.splitlines()[line - 1].startswith("datastore")  # type: ignore[operator]


def test_empty_interpolation_means_unset(example_text: str) -> None:
    zeros = ":".join(["00"] * 32)
    text = example_text.replace(
        f'fingerprint = "{zeros}"',
        'fingerprint = "${NO_SUCH_FP:-}"\nca_file = "/etc/pve/pve-root-ca.pem"',
    )
    text = text.replace(
        '[stack.template]\nstorage = "local"',
        '[stack.template]\nstorage = "local"\nchecksum = "${NO_SUM:-}"\n'
        'checksum_algorithm = "sha512"',
    )
    cfg = parse_config(text, "x.toml", env={})
    assert cfg.pve.fingerprint is None and cfg.pve.ca_file == "/etc/pve/pve-root-ca.pem"
    assert cfg.stack[0].template.checksum is None


def test_lab_file_loads_with_the_lab_env() -> None:
    lab = EXAMPLE.parent / "lab.toml"
    if not lab.exists():
        pytest.skip("examples/lab.toml not in this checkout")
    env = {
        "PVESTACK_FINGERPRINT": "AB:" * 31 + "CD",
        "PVESTACK_NODE": "pve",
    }
    cfg = parse_config(lab.read_text(), str(lab), env=env)
    assert [s.name for s in cfg.stack] == ["gateway", "hermes"]
    assert cfg.pve.fingerprint == "AB:" * 31 + "CD"
    # templates from the node's appliance index; each stack's is selectable (Debian 13)
    assert [s.template.appliance for s in cfg.stack] == ["debian-12-standard"] * 2
    assert all(s.template.url is None for s in cfg.stack)
    env["PVESTACK_LAB_HERMES_APPLIANCE"] = "debian-13-standard"
    cfg = parse_config(lab.read_text(), str(lab), env=env)
    assert [s.template.appliance for s in cfg.stack] == [
        "debian-12-standard",
        "debian-13-standard",
    ]
