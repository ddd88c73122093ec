"""PVE's parameter verification (pve-common JSONSchema) over the official API schema.

The schema is ``pvestack/data/apidata-subset.json`` (path -> {"info": {METHOD: method}}).
Messages are PVE's: ``type check ('integer') failed - got 'x'``, ``invalid format - ...``,
``property is not defined in schema and the schema does not allow additional properties``...
Property strings (``net0``, ``mp0``, ``features``, ``rootfs``) are parsed with their
sub-schemas, as ``parse_property_string`` does.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

from pvelab.backend.errors import PveError, param_error

Schema = Mapping[str, Any]

_TRUE = frozenset({"1", "on", "yes", "true"})
_FALSE = frozenset({"0", "off", "no", "false"})
# Highest index (exclusive) of numbered LXC options.
_MAX_INDEX = {"net": 32, "mp": 256, "dev": 256, "unused": 256}


@functools.cache
def api_schema() -> Mapping[str, Any]:
    text = resources.files("pvelab.data").joinpath("apidata-subset.json").read_text()
    endpoints: Mapping[str, Any] = json.loads(text)["endpoints"]
    return endpoints


def method_schema(template: str, method: str) -> Schema:
    """The schema of one API method, e.g. ``("/nodes/{node}/lxc", "POST")``."""
    info: Schema = api_schema()[template]["info"][method]
    return info


def lxc_option_schema(key: str) -> Schema | None:
    """The schema of an LXC config option (``net0`` -> ``net[n]``), from the config PUT."""
    props = method_schema("/nodes/{node}/lxc/{vmid}/config", "PUT")["parameters"]["properties"]
    return param_schema(props, key)


def param_schema(props: Mapping[str, Schema], name: str) -> Schema | None:
    if name in props:
        return props[name]
    base = name.rstrip("0123456789")
    index = name[len(base) :]
    if not (base and index) or str(int(index)) != index:
        return None
    sch = props.get(base + "[n]")
    if sch is None or int(index) >= _MAX_INDEX.get(base, 10**6):
        return None
    return sch


# ------------------------------------------------------------------ named formats


def _match(pattern: str) -> Callable[[str], bool]:
    rx = re.compile(pattern)
    return lambda v: rx.fullmatch(v) is not None


def _is_ip(version: int) -> Callable[[str], bool]:
    def check(v: str) -> bool:
        try:
            return ipaddress.ip_address(v).version == version
        except ValueError:
            return False

    return check


def _is_cidr(version: int) -> Callable[[str], bool]:
    def check(v: str) -> bool:
        if "/" not in v:
            return False
        try:
            return ipaddress.ip_interface(v).version == version
        except ValueError:
            return False

    return check


def _is_dns_name(v: str) -> bool:
    label = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?")
    return bool(v) and all(label.fullmatch(p) for p in v.split("."))


_STORAGE_ID = _match(r"[a-zA-Z][a-zA-Z0-9\-_.]*[a-zA-Z0-9]")


def _storage_id(v: str) -> str | None:
    if len(v) < 2:
        return f"storage ID '{v}' cannot be shorter than 2 characters"
    return None if _STORAGE_ID(v) else f"storage ID '{v}' contains illegal characters"


def _volume_id(v: str) -> str | None:
    store, colon, rest = v.partition(":")
    if colon and rest and _STORAGE_ID(store) and "\n" not in rest:
        return None
    return f"unable to parse volume ID '{v}'"


def _disk_size(v: str) -> str | None:
    ok = re.fullmatch(r"\d+(\.\d+)?([KMGT](iB)?)?", v) is not None
    return None if ok else f"value does not look like a valid disk size: {v}"


def _mp_string(v: str) -> str | None:
    # pve-lxc-mp-string: no '..' path components, no commas handled by the property string.
    if re.search(r"(^|/)\.\.(/|$)", v):
        return "mount point path may not contain '..'"
    return None


def _if(ok: Callable[[str], bool], message: str) -> Callable[[str], str | None]:
    return lambda v: None if ok(v) else message.format(v)


_NAMED: dict[str, Callable[[str], str | None]] = {
    "pve-node": _if(
        _match(r"[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?"),
        "value does not look like a valid node name",
    ),
    "pve-vmid": _if(_match(r"[1-9][0-9]{2,8}"), "value does not look like a valid VM ID"),
    "pve-configid": _if(_match(r"[a-zA-Z][a-zA-Z0-9_\-]+"), "invalid configuration ID '{}'"),
    "pve-storage-id": _storage_id,
    "pve-volume-id": _volume_id,
    "pve-lxc-mp-string": _mp_string,
    "disk-size": _disk_size,
    "dns-name": _if(_is_dns_name, "value does not look like a valid DNS name"),
    "ipv4": _if(_is_ip(4), "value does not look like a valid IPv4 address"),
    "ipv6": _if(_is_ip(6), "value does not look like a valid IPv6 address"),
    "CIDRv4": _if(_is_cidr(4), "value does not look like a valid IPv4 CIDR network"),
    "CIDRv6": _if(_is_cidr(6), "value does not look like a valid IPv6 CIDR network"),
    "lxc-ip-with-ll-iface": _if(
        lambda v: _is_ip(4)(v) or _is_ip(6)(v.split("%")[0]),
        "value does not look like a valid IP address",
    ),
    "mac-addr": _if(
        _match(r"[a-fA-F0-9][02468aceACE](:[a-fA-F0-9]{2}){5}"),
        "value does not look like a valid unicast MAC address",
    ),
    "pve-ipv4-config": _if(
        lambda v: v in ("dhcp", "manual") or _is_cidr(4)(v),
        "value does not look like a valid ipv4 network configuration",
    ),
    "pve-ipv6-config": _if(
        lambda v: v in ("auto", "dhcp", "manual") or _is_cidr(6)(v),
        "value does not look like a valid ipv6 network configuration",
    ),
    "pve-tag": _if(_match(r"[a-zA-Z0-9_][a-zA-Z0-9_\-+.]*"), "invalid characters in tag"),
    "pve-storage-content": _if(
        lambda v: v in ("images", "rootdir", "vztmpl", "iso", "backup", "snippets", "import"),
        "invalid content type '{}'",
    ),
    "pve-realm": _if(_match(r"[A-Za-z][A-Za-z0-9.\-_]+"), "value does not look like a valid realm"),
    "pve-startup-order": _if(
        lambda v: all(re.fullmatch(r"((order|up|down)=)?\d+", p) for p in v.split(",") if p),
        "unable to parse startup options",
    ),
    "pve-poolid": _if(
        _match(r"[A-Za-z0-9\-_.]+(/[A-Za-z0-9\-_.]+){0,2}"),
        "pool name '{}' contains invalid characters",
    ),
}


def split_list(text: str) -> list[str]:
    """PVE's split_list: NUL-separated, else commas, semicolons and white space."""
    if "\0" in text:
        return [p for p in text.split("\0") if p]
    return re.split(r"[,;\s]+", text.strip()) if text.strip() else []


def _check_named(fmt: str, value: str) -> str | None:
    base, kind = fmt, ""
    for suffix in ("-list", "-opt"):
        if fmt.endswith(suffix):
            base, kind = fmt[: -len(suffix)], suffix
    checker = _NAMED.get(base)
    if checker is None:
        return None
    if kind == "-list":
        for item in split_list(value):
            why = checker(item)
            if why:
                return why
        return None
    if kind == "-opt" and not value:
        return None
    return checker(value)


# ------------------------------------------------------------------ values


def _type_error(kind: str, value: object) -> str:
    shown = "ARRAY" if isinstance(value, list) else "HASH" if isinstance(value, dict) else value
    return f"type check ('{kind}') failed - got '{shown}'"


def _perl_pattern(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern.replace("(?^:", "(?:"), re.S)
    except re.error:
        return None


def check_value(sch: Schema, value: Any, path: str, errors: dict[str, str]) -> Any:
    """Check ``value`` as ``check_prop`` does; record the error under ``path``;
    return the value coerced."""
    kind = sch.get("type", "string")
    if isinstance(value, (list, dict)) and kind != "array":
        errors[path] = _type_error(kind, value)
        return value
    if kind == "array":
        items = value if isinstance(value, list) else [value]
        return [
            check_value(sch.get("items", {}), v, f"{path}[{i}]", errors)
            for i, v in enumerate(items)
        ]
    raw = ("1" if value else "0") if isinstance(value, bool) else str(value)
    out: Any = raw
    if kind == "integer":
        if not re.fullmatch(r"[+-]?\d+", raw):
            errors[path] = _type_error("integer", raw)
            return raw
        out = int(raw)
    elif kind == "number":
        try:
            out = float(raw)
        except ValueError:
            errors[path] = _type_error("number", raw)
            return raw
        if out == int(out):
            out = int(out)
    elif kind == "boolean":
        low = raw.lower()
        if low in _TRUE:
            return 1
        if low in _FALSE:
            return 0
        errors[path] = _type_error("boolean", raw)
        return raw
    fmt = sch.get("format")
    if fmt is not None:
        why = check_property_string(fmt, raw, path) if isinstance(fmt, dict) else None
        if isinstance(fmt, str):
            named = _check_named(fmt, raw)
            why = named + "\n" if named else None
        if why:
            errors[path] = "invalid format - " + why
            return out
    if isinstance(out, str):
        pattern = sch.get("pattern")
        if pattern:
            rx = _perl_pattern(pattern)
            if rx is not None and not rx.fullmatch(out):
                errors[path] = "value does not match the regex pattern"
                return out
        if "maxLength" in sch and len(out) > int(sch["maxLength"]):
            errors[path] = f"value may only be {sch['maxLength']} characters long"
            return out
        if "minLength" in sch and len(out) < int(sch["minLength"]):
            errors[path] = f"value must be at least {sch['minLength']} characters long"
            return out
    if isinstance(out, (int, float)):
        if "maximum" in sch and out > float(sch["maximum"]):
            errors[path] = f"value must have a maximum value of {sch['maximum']}"
            return out
        if "minimum" in sch and out < float(sch["minimum"]):
            errors[path] = f"value must have a minimum value of {sch['minimum']}"
            return out
    enum = sch.get("enum")
    if enum is not None and str(out) not in [str(e) for e in enum]:
        errors[path] = (
            f"value '{out}' does not have a value in the enumeration '{', '.join(map(str, enum))}'"
        )
    return out


# ------------------------------------------------------------------ property strings


def _default_key(fmt: Schema) -> str | None:
    return next((k for k, v in fmt.items() if v.get("default_key")), None)


def parse_property_string(fmt: Schema, text: str) -> dict[str, str]:
    """Split ``key=value,...`` against its sub-schema (aliases resolved, the default key
    filled from a bare value). Raises ValueError with PVE's message on a syntax error;
    values are not checked here (see ``check_property_string``)."""
    res: dict[str, str] = {}
    for part in text.split(","):
        if not part:
            continue
        if "\n" in part:
            raise ValueError("properties must not contain newlines")
        key, eq, val = part.partition("=")
        if eq and key and val:
            entry = fmt.get(key)
            if entry is not None and entry.get("alias"):
                key = entry["alias"]
                entry = fmt.get(key)
            if key in res:
                raise ValueError(f"duplicate key in comma-separated list property: {key}")
            if entry is None:
                raise ValueError(f"invalid key in comma-separated list property: {key}")
            res[key] = val
        elif not eq:
            default = _default_key(fmt)
            if default is None:
                raise ValueError("value without key, but schema does not define a default key")
            if default in res:
                raise ValueError(f"duplicate key in comma-separated list property: {default}")
            res[default] = part
        else:
            raise ValueError("missing key in comma-separated list property")
    return res


def check_property_string(fmt: Schema, text: str, path: str) -> str | None:
    """PVE's message for a property string that breaks its format (with trailing newline)."""
    try:
        res = parse_property_string(fmt, text)
    except ValueError as e:
        return f"{e}\n"
    errors: dict[str, str] = {}
    for key, entry in fmt.items():
        if entry.get("alias"):
            continue
        where = f"{path}.{key}" if path else key
        if key not in res:
            if not entry.get("optional"):
                errors[where] = "property is missing and it is not optional"
            continue
        check_value(entry, res[key], where, errors)
        need = entry.get("requires")
        if need and need not in res:
            errors[f"{path}.{need}" if path else need] = f"missing property required by '{where}'"
    if not errors:
        return None
    return "format error\n" + "".join(f"{k}: {errors[k]}\n" for k in sorted(errors))


def print_property_string(
    fmt: Schema, values: Mapping[str, str], order: list[str] | None = None
) -> str:
    """``key=value,...`` with the default key first and bare, as PVE prints it."""
    default = _default_key(fmt)
    parts: list[str] = []
    if default is not None and default in values:
        parts.append(values[default])
    keys = order if order is not None else sorted(values)
    parts.extend(f"{k}={values[k]}" for k in keys if k != default and k in values)
    return ",".join(parts)


def is_true(value: str | None) -> bool:
    return value is not None and value.lower() in _TRUE


# ------------------------------------------------------------------ requests


def validate(method: Schema, values: Mapping[str, Any]) -> dict[str, Any]:
    """Check request parameters against a method's schema; return them coerced.

    Raises PVE's 400 ``Parameter verification failed.`` with every error by parameter."""
    spec: Schema = method.get("parameters") or {}
    props: Mapping[str, Schema] = spec.get("properties") or {}
    errors: dict[str, str] = {}
    out: dict[str, Any] = {}
    for name, value in values.items():
        sch = param_schema(props, name)
        if sch is None:
            if str(spec.get("additionalProperties", 1)) in ("0", "False"):
                errors[name] = (
                    "property is not defined in schema and the schema does not allow "
                    "additional properties"
                )
            else:
                out[name] = value
            continue
        out[name] = check_value(sch, value, name, errors)
    for name, sch in props.items():
        if name not in values and not sch.get("optional") and "[n]" not in name:
            errors[name] = "property is missing and it is not optional"
    for name in values:
        need = (param_schema(props, name) or {}).get("requires")
        if need and need not in values:
            errors[need] = f"missing property required by '{name}'"
    if errors:
        raise param_error(errors)
    return out


def require_valid(condition: bool, param: str, message: str) -> None:
    if not condition:
        raise PveError(400, "Parameter verification failed.", {param: message})
