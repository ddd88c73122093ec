"""The lab's HTTPS API server (stdlib ``ThreadingHTTPServer`` + ``ssl``), PVE's wire format.

Every request under ``/api2/json``: faults (control endpoint), authentication (API token or
ticket + CSRF), route, schema validation, the schema's permission check, the handler. Errors
are ``{"data": null, "message": "...\\n"[, "errors": {...}]}`` with the message's first line as
the HTTP reason phrase.

Control endpoint (root@pam ticket, loopback peers only), under ``/_lab``:
``POST /_lab/reset`` (remove every container, volume, task and fault),
``POST /_lab/faults`` JSON ``{"method": "POST", "path": "regex", "status": 500,
"message": "...", "hang": seconds, "times": n}`` or ``{"task": "vzstart", "message": "..."}``,
``DELETE /_lab/faults`` (clear), ``GET /_lab/faults``;
``POST|GET|DELETE /_lab/packages`` (the versions ``apt/versions`` reports, see
``backend.packages``).

Run: ``python -m pvelab.api.server --lab-dir DIR --port 8006 [--runtime mod:Class]``.
"""

from __future__ import annotations

import argparse
import datetime
import http.server
import importlib
import ipaddress
import json
import logging
import re
import ssl
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from pvelab.api import handlers
from pvelab.api.routes import ROUTES, resolve
from pvelab.backend.auth import Identity
from pvelab.backend.errors import PveError
from pvelab.backend.node import Node, lab_dir_from_env
from pvelab.backend.privileges import endpoint_check
from pvelab.backend.schema import api_schema, method_schema, validate
from pvelab.runtime_protocol import Runtime

_log = logging.getLogger("pvelab.api")
PREFIX = "/api2/json"
MAX_BODY = 64 * 1024 * 1024


# ---------------------------------------------------------------- certificate


def make_certificate(
    certfile: Path, keyfile: Path, hosts: tuple[str, ...] = ("127.0.0.1",)
) -> None:
    """A self-signed certificate for the lab (RSA 2048, 10 years, SANs for ``hosts``)."""

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pvestack-lab")])
    sans: list[x509.GeneralName] = [x509.DNSName("localhost")]
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certfile.parent.mkdir(parents=True, exist_ok=True)
    keyfile.touch(mode=0o600)
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def fingerprint(certfile: Path) -> str:
    """SHA-256 fingerprint as PVE shows it: ``AB:CD:...``."""

    cert = x509.load_pem_x509_certificate(certfile.read_bytes())
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


# ---------------------------------------------------------------- faults


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    status: int = 500
    message: str = "lab: injected failure"
    hang: float = 0.0
    times: int | None = None


@dataclass
class Faults:
    rules: list[Fault] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for rule in self.rules:
                if rule.method in (method, "*") and rule.path.search(path):
                    if rule.times is not None:
                        rule.times -= 1
                        if rule.times <= 0:
                            self.rules.remove(rule)
                    return rule
        return None

    def describe(self) -> list[dict[str, Any]]:
        with self.lock:
            return [{"method": r.method, "path": r.path.pattern, "status": r.status,
                     "message": r.message, "hang": r.hang, "times": r.times}
                    for r in self.rules]  # fmt: skip


# ---------------------------------------------------------------- request parsing


def _pairs(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in urllib.parse.parse_qsl(text, keep_blank_values=True):
        if k in out:
            out[k] = [*out[k], v] if isinstance(out[k], list) else [out[k], v]
        else:
            out[k] = v
    return out


class _Handler(http.server.BaseHTTPRequestHandler):
    server: LabHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "pve-api-daemon/3.0"
    sys_version = ""
    # headers and body are two writes: with Nagle, each answer waited for the client's
    # delayed ACK (about 40 ms per call on loopback)
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # ------------------------------------------------------------ answers

    def _send(self, status: int, body: Mapping[str, Any], reason: str | None = None) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status, reason)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(raw)))
        self.send_header("Cache-Control", "max-age=0")
        self.end_headers()
        self.wfile.write(raw)

    def _error(self, e: PveError) -> None:
        message = e.message if e.message.endswith("\n") else e.message + "\n"
        body: dict[str, Any] = {"data": None, "message": message}
        if e.errors:
            body["errors"] = e.errors
        reason = message.splitlines()[0][:200] if message.strip() else None
        self._send(e.status, body, reason)

    # ------------------------------------------------------------ flow

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise PveError(413, "Request Entity Too Large")
        raw = self.rfile.read(length) if length else b""
        self._body_read = True
        if not raw:
            return {}
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if ctype == "application/json":
            try:
                data = json.loads(raw)
            except ValueError:
                raise PveError(400, "Parameter verification failed.",
                               {"body": "request body is not a JSON object"}) from None  # fmt: skip
            if not isinstance(data, dict):
                raise PveError(400, "Parameter verification failed.",
                               {"body": "request body is not a JSON object"})  # fmt: skip
            return {k: v for k, v in data.items()}
        return _pairs(raw.decode("utf-8", "replace"))

    def _authenticate(self, method: str) -> Identity:
        auth = self.server.node.auth
        header = self.headers.get("Authorization") or ""
        if header.startswith("PVEAPIToken="):
            return auth.check_token(header)
        cookie = self.headers.get("Cookie") or ""
        ticket = None
        for part in cookie.split(";"):
            k, _, v = part.strip().partition("=")
            if k == "PVEAuthCookie":
                ticket = urllib.parse.unquote(v)
        if ticket is None:
            raise PveError(401, "No ticket")
        return auth.check_ticket(
            ticket, self.headers.get("CSRFPreventionToken"), write=method != "GET"
        )

    def _dispatch(self, method: str) -> None:
        started = time.monotonic()
        try:
            url = urllib.parse.urlsplit(self.path)
            path = url.path  # still %-encoded: a volume id may hold an encoded '/'

            self._body_read = False
            body = self._body()  # first: an unread body would break the next keep-alive request
            if path.startswith("/_lab/"):
                self._control(method, path, body)
                return
            fault = self.server.faults.take(method, path)
            if fault is not None:
                if fault.hang:
                    time.sleep(fault.hang)
                if fault.status:
                    raise PveError(fault.status, fault.message)
            if not path.startswith(PREFIX + "/") and path != PREFIX:
                raise PveError(501, f"Method '{method} {path}' not implemented")
            api_path = path[len(PREFIX) :] or "/"
            params = _pairs(url.query)
            params.update(body)
            self._api(method, api_path, params)
        except PveError as e:
            if not getattr(self, "_body_read", True):
                self.close_connection = True
            self._error(e)
        except Exception as e:  # a bug must still answer like PVE does
            self.server.last_exception = e
            _log.exception("internal error in %s %s", method, urllib.parse.urlsplit(self.path).path)
            self._error(PveError(500, f"lab internal error: {type(e).__name__}: {e}"))
        finally:
            self.server.record(method, self.path, time.monotonic() - started)

    def _api(self, method: str, api_path: str, params: dict[str, Any]) -> None:
        """As pve-http-server's rest_handler: find the handler (else 501), merge the URI
        parameters (a duplicate is a 400), check the permissions, then the method
        validates its parameters and runs."""
        node = self.server.node
        match = resolve(api_path)
        world = match is not None and match.template == "/access/ticket"
        who = None if world else self._authenticate(method)
        known = match is not None and method in api_schema()[match.template]["info"]
        if match is None or not known or (method, match.template) not in ROUTES:
            shown = urllib.parse.unquote(api_path)
            raise PveError(501, f"Method '{method} {shown}' not implemented")
        schema = method_schema(match.template, method)
        for k, raw in match.params.items():
            if k in params:
                raise PveError(400, "Parameter verification failed.",
                               {k: "duplicate parameter (already defined in URI)"})  # fmt: skip
            params[k] = urllib.parse.unquote(raw)
        if who is not None and who.token is not None and not schema.get("allowtoken", 1):
            raise PveError(403, "Permission check failed (API token not allowed)")
        check = endpoint_check(method, match.template, schema)
        if check and who is not None and not who.is_root:
            node.auth.check(who, check, params)
        values = validate(schema, params)
        handler = ROUTES[(method, match.template)]
        data = handler(handlers.Request(node, who, values, method, match.template))
        if isinstance(data, handlers.Answer):
            self._send(200, {"data": data.data, **data.extra})
        else:
            self._send(200, {"data": data})

    # ------------------------------------------------------------ control

    def _control(self, method: str, path: str, body: dict[str, Any]) -> None:
        peer = self.client_address[0]
        if not ipaddress.ip_address(peer).is_loopback:
            raise PveError(403, "lab control: loopback only")
        who = self._authenticate(method)
        if not who.is_root:
            raise PveError(403, "lab control: only root@pam")
        faults = self.server.faults
        node = self.server.node
        if path == "/_lab/reset" and method == "POST":
            with faults.lock:
                faults.rules.clear()
            node.reset()
            self._send(200, {"data": None})
        elif path == "/_lab/faults" and method == "GET":
            self._send(200, {"data": faults.describe()})
        elif path == "/_lab/faults" and method == "DELETE":
            with faults.lock:
                faults.rules.clear()
            node.reset_faults()
            self._send(200, {"data": None})
        elif path == "/_lab/packages":
            self._control_packages(method, body)
        elif path == "/_lab/faults" and method == "POST":
            if "task" in body:
                node.fail_next_task(str(body["task"]), str(body.get("message", "lab: injected")))
            else:
                hang = float(body.get("hang", 0))
                rule = Fault(
                    method=str(body.get("method", "*")).upper(),
                    path=re.compile(str(body["path"])),
                    status=int(body.get("status", 0 if hang and "status" not in body else 500)),
                    message=str(body.get("message", "lab: injected failure")),
                    hang=hang,
                    times=int(body["times"]) if body.get("times") is not None else None,
                )
                with faults.lock:
                    faults.rules.append(rule)
            self._send(200, {"data": None})
        else:
            raise PveError(501, f"Method '{method} {path}' not implemented")

    def _control_packages(self, method: str, body: dict[str, Any]) -> None:
        """``POST /_lab/packages {"lxc-pve": "6.0.0-1"}`` (``null`` uninstalls), ``GET``
        (installed versions), ``DELETE`` (back to the defaults): what apt/versions says."""
        packages = self.server.node.packages
        if method == "POST":
            try:
                packages.tell(body)
            except ValueError as e:
                raise PveError(400, str(e)) from None
        elif method == "DELETE":
            packages.reset()
        elif method != "GET":
            raise PveError(501, f"Method '{method} /_lab/packages' not implemented")
        self._send(200, {"data": packages.installed()})


class LabHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], node: Node, ctx: ssl.SSLContext) -> None:
        self.node = node
        self.faults = Faults()
        self.verbose = False
        self.ctx = ctx
        self.timings: list[tuple[str, str, float]] = []
        self.last_exception: Exception | None = None
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = super().get_request()
        return self.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def record(self, method: str, path: str, secs: float) -> None:
        if len(self.timings) < 100_000:
            self.timings.append((method, path, secs))


class LabApiServer:
    """The lab's API on ``https://host:port``, serving ``node`` (runtime injected there)."""

    def __init__(
        self,
        node: Node,
        host: str = "127.0.0.1",
        port: int = 8006,
        certfile: Path | None = None,
        keyfile: Path | None = None,
    ) -> None:
        local = node.etc / "local"
        self.certfile = certfile or local / "pve-ssl.pem"
        self.keyfile = keyfile or local / "pve-ssl.key"
        if not self.certfile.exists() or not self.keyfile.exists():
            make_certificate(self.certfile, self.keyfile, (host,))
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(self.certfile), str(self.keyfile))
        self.node = node
        self.httpd = LabHTTPServer((host, port), node, ctx)
        self.host = host
        self.port = int(self.httpd.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.certfile)

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="lab-api", daemon=True
        )
        self._thread.start()

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(10)


def load_runtime(spec: str) -> Runtime:
    """``package.module:Class`` -> an instance (constructed without arguments)."""
    module, _, cls = spec.partition(":")
    runtime: Runtime = getattr(importlib.import_module(module), cls)()
    return runtime


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pvelab.api.server")
    p.add_argument("--lab-dir", type=Path, default=lab_dir_from_env())
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8006)
    p.add_argument("--node", default="pve")
    p.add_argument("--runtime", default="pvelab.runtime.lxc:LxcRuntime")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    node = Node(args.lab_dir, load_runtime(args.runtime), args.node)
    server = LabApiServer(node, args.host, args.port)
    server.httpd.verbose = args.verbose
    print(f"pvestack lab API on {server.url} fingerprint {server.fingerprint}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()


if __name__ == "__main__":
    main()
