"""fakepve on loopback, with permissions on, and a recorder that validates every
parameter pvestack sends against the official API schema (apidata-subset.json)."""

from __future__ import annotations

import hashlib
import json
import re
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pvestack._client import PveClient
from pvestack._config import StackFile, parse_config
from pvestack._engine import connect

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "src" / "pvelab" / "data" / "apidata-subset.json"
EXAMPLE = ROOT / "examples" / "hermes.toml"
TOKEN_ID = "pvestack@pve!deploy"
TOKEN_SECRET = "0f6c7a43-1d2e-4c55-9a9e-contract-test"

#: what a PVEVMAdmin-like token holds on / (no root, and a token is never root@pam)
TOKEN_PRIVS = (
    "VM.Allocate",
    "VM.Audit",
    "VM.Config.CPU",
    "VM.Config.Memory",
    "VM.Config.Disk",
    "VM.Config.Network",
    "VM.Config.Options",
    "VM.PowerMgmt",
    "Datastore.AllocateSpace",
    "Datastore.AllocateTemplate",
    "Datastore.Audit",
    "Sys.Audit",
    "Sys.Modify",
    "SDN.Use",
)

pytestmark = pytest.mark.contract


# ---------------------------------------------------------------- schema validation


class ApiSchema:
    """Checks one request against the flattened pve-docs API schema."""

    def __init__(self, path: Path = SCHEMA_FILE) -> None:
        data = json.loads(path.read_text())
        self.endpoints: dict[str, Any] = data["endpoints"]
        self._patterns = [
            (re.compile("^" + re.sub(r"\{[^}]+\}", r"([^/]+)", p) + "$"), p) for p in self.endpoints
        ]

    def template(self, path: str) -> tuple[str, dict[str, str]]:
        best: tuple[str, dict[str, str]] | None = None
        for rx, p in self._patterns:
            m = rx.match(path)
            if m:
                names = re.findall(r"\{([^}]+)\}", p)
                cand = (p, dict(zip(names, m.groups(), strict=True)))
                # prefer the most literal template
                if best is None or len(names) < len(re.findall(r"\{", best[0])):
                    best = cand
        if best is None:
            raise AssertionError(f"path not in the API schema: {path}")
        return best

    def check(self, method: str, path: str, params: Mapping[str, Any]) -> list[str]:
        tpl, path_params = self.template(path)
        info = self.endpoints[tpl]["info"]
        if method not in info:
            return [f"{method} {tpl}: method not in the schema"]
        props: dict[str, Any] = info[method].get("parameters", {}).get("properties", {}) or {}
        errors: list[str] = []
        sent = {**params, **path_params}
        for key, value in params.items():
            spec = self._prop(props, key)
            if spec is None:
                errors.append(f"{method} {tpl}: {key}: property is not defined in schema")
                continue
            errors += [f"{method} {tpl}: {key}: {e}" for e in self._value(spec, value)]
            req = spec.get("requires")
            if req and req not in sent:
                errors.append(f"{method} {tpl}: {key} requires {req}")
        for key, spec in props.items():
            if not spec.get("optional") and "[n]" not in key and key not in sent:
                errors.append(f"{method} {tpl}: {key}: property is missing and it is not optional")
        return errors

    @staticmethod
    def _prop(props: Mapping[str, Any], key: str) -> Any:
        if key in props:
            return props[key]
        m = re.fullmatch(r"([a-z]+)(\d+)", key)
        if m and f"{m.group(1)}[n]" in props:
            return props[f"{m.group(1)}[n]"]
        return None

    def _value(self, spec: Mapping[str, Any], value: Any) -> list[str]:
        t = spec.get("type")
        text = str(value)
        if t == "integer":
            if not re.fullmatch(r"-?\d+", text):
                return [f"{value!r} is not an integer"]
            n = int(text)
            if "minimum" in spec and n < spec["minimum"]:
                return [f"{n} < minimum {spec['minimum']}"]
            if "maximum" in spec and n > spec["maximum"]:
                return [f"{n} > maximum {spec['maximum']}"]
            return []
        if t == "boolean":
            return (
                []
                if text in ("0", "1", "true", "false", "True", "False")
                else [f"{value!r} not boolean"]
            )
        if t == "number":
            try:
                float(text)
            except ValueError:
                return [f"{value!r} is not a number"]
            return []
        errs: list[str] = []
        if spec.get("enum") and text not in spec["enum"]:
            errs.append(f"{text!r} not one of {spec['enum']}")
        if spec.get("pattern") and not re.fullmatch(spec["pattern"], text):
            errs.append(f"{text!r} does not match {spec['pattern']}")
        if spec.get("maxLength") and len(text) > spec["maxLength"]:
            errs.append(f"longer than {spec['maxLength']}")
        fmt = spec.get("format")
        if isinstance(fmt, dict):
            errs += self._property_string(fmt, text)
        elif fmt == "pve-tag-list":
            for tag in re.split(r"[;, ]+", text):
                if tag and not re.fullmatch(r"[a-z0-9_][a-z0-9_\-+.]*", tag, re.I):
                    errs.append(f"tag {tag!r} invalid")
        return errs

    def _property_string(self, fmt: Mapping[str, Any], text: str) -> list[str]:
        errs: list[str] = []
        default_key = next((k for k, v in fmt.items() if v.get("default_key")), None)
        for i, item in enumerate(text.split(",")):
            if "=" in item:
                k, _, v = item.partition("=")
            elif i == 0 and default_key:
                k, v = default_key, item
            else:
                errs.append(f"{item!r}: no key and no default key")
                continue
            sub = fmt.get(k)
            if sub is None:
                alias = next((n for n, s in fmt.items() if s.get("alias") == k), None)
                sub = fmt.get(alias) if alias else None
            if sub is None:
                errs.append(f"property-string key {k!r} not defined")
                continue
            errs += [f"{k}: {e}" for e in self._value(sub, v)]
        return errs


@dataclass
class Recorder:
    schema: ApiSchema
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __call__(self, method: str, path: str, params: Mapping[str, Any]) -> None:
        self.calls.append((method, path, dict(params)))
        self.errors += self.schema.check(method, path, params)

    def writes(self) -> list[tuple[str, str, dict[str, Any]]]:
        return [c for c in self.calls if c[0] != "GET"]


@pytest.fixture(scope="session")
def api_schema() -> ApiSchema:
    return ApiSchema()


@pytest.fixture
def recorder(api_schema: ApiSchema) -> Iterator[Recorder]:
    rec = Recorder(api_schema)
    yield rec
    assert rec.errors == [], "parameters outside the API schema:\n" + "\n".join(rec.errors)


# ---------------------------------------------------------------- the fake node


@pytest.fixture
def pve(fakepve: Any) -> Any:
    """fakepve as the seed's node: gihyeon with the PBS container, a token, ACLs on."""
    fakepve.add_node("gihyeon")
    fakepve.add_ct(110, "pbs", node="gihyeon", status="running", config={"tags": "backup"})
    fakepve.apitokens[TOKEN_ID] = TOKEN_SECRET
    fakepve.grant(TOKEN_ID, "/", *TOKEN_PRIVS)
    return fakepve


@pytest.fixture
def cert_fingerprint(fakepve_cafile: str) -> str:
    der = ssl.PEM_cert_to_DER_cert(Path(fakepve_cafile).read_text())
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, 64, 2))


@pytest.fixture
def stack_cfg(pve: Any, fakepve_cafile: str, monkeypatch: pytest.MonkeyPatch) -> StackFile:
    """The example stack file pointed at the fake through the PVESTACK_* environment."""
    env = {
        "PVESTACK_API_URL": pve.url,
        "PVESTACK_TOKEN_ID": TOKEN_ID,
        "PVESTACK_TOKEN_SECRET": TOKEN_SECRET,
        "PVESTACK_CA_FILE": fakepve_cafile,
        "PVESTACK_ROOT_VIA": "console",
        "LITELLM_API_KEY": "sk-contract-test",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return parse_config(EXAMPLE.read_text(), str(EXAMPLE), env=env)


@pytest.fixture
def client(stack_cfg: StackFile, recorder: Recorder) -> PveClient:
    return connect(stack_cfg, on_call=recorder)
