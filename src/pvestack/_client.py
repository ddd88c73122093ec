"""The PVE API client: proxmoxer wrapped, typed, and the one boundary for API errors.

* token auth (``PVEAPIToken=USER@REALM!ID=SECRET``), the secret only in the header;
* TLS: a CA file, or a pinned SHA-256 fingerprint checked on the connection
  (urllib3 compares the peer certificate's digest before any byte is sent),
  or ``insecure`` only when asked (the caller prints a warning);
* ``{"data": ...}`` unwrapped (by proxmoxer);
* UPIDs waited for: short-then-growing poll intervals, log tail on failure;
* proxmoxer/requests errors translated once into ``pvestack._errors``, with
  PVE's message kept verbatim and a hint added;
* reads retried (at most ``read_retries`` = 3 times) with backoff on transport errors
  (a hang: no answer within the timeout) and 5xx gateway answers, task polls on 500 too;
  a read's TOTAL wait (attempts + pauses) is bounded by ``read_budget``, each attempt's
  timeout shrunk to what is left; each retry is reported (``on_retry``: what, why, which
  attempt); writes are never retried;
* every call counted (``calls``) and reported to ``on_call`` (tests check the
  parameters against the API schema).
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3
from proxmoxer import ProxmoxAPI, ResourceException
from requests.adapters import HTTPAdapter

from pvestack._commands import Secret
from pvestack._errors import (
    PveAuthError,
    PveError,
    PveNotFoundError,
    PveParamError,
    PvePermissionError,
    PvestackError,
    PveTaskError,
    TlsError,
    TransportError,
    WaitTimeout,
)
from pvestack._model import ApiCall

log = logging.getLogger(__name__)

Params = Mapping[str, str | int]
CallHook = Callable[[str, str, Mapping[str, Any]], None]

_READ_RETRY_STATUS = (502, 503, 504, 595, 596)
_TASK_POLL = re.compile(r"^/?nodes/[^/]+/tasks/[^/]+/(status|log)$")


@dataclass(frozen=True)
class ClientSettings:
    api_url: str  # https://host:8006
    token_id: str  # user@realm!name
    token_secret: Secret
    fingerprint: str | None = None  # AA:BB:... SHA-256
    ca_file: str | None = None
    insecure: bool = False
    timeout: float = 30.0

    @property
    def tls_mode(self) -> str:
        if self.ca_file:
            return f"CA file {self.ca_file}"
        if self.fingerprint:
            return "pinned SHA-256 fingerprint"
        if self.insecure:
            return "NOT VERIFIED (--insecure)"
        return "system CA store"


class _PinnedAdapter(HTTPAdapter):
    """An adapter whose pools check the peer certificate's SHA-256 against a pin."""

    def __init__(self, fingerprint: str) -> None:
        self._fingerprint = fingerprint.replace(":", "").lower()
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["assert_fingerprint"] = self._fingerprint
        super().init_poolmanager(*args, **kwargs)


@dataclass
class _Stats:
    calls: int = 0
    by_method: dict[str, int] = field(default_factory=dict)


class PveClient:
    """A small typed client for the endpoints pvestack uses."""

    def __init__(
        self,
        settings: ClientSettings,
        *,
        on_call: CallHook | None = None,
        sleep: Callable[[float], None] = time.sleep,
        read_retries: int = 3,
        read_budget: float = 75.0,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self._on_call = on_call
        self._sleep = sleep
        self._read_retries = min(read_retries, 3)
        self._read_budget = read_budget
        self._on_retry = on_retry
        self.stats = _Stats()
        self.warnings: list[str] = []
        parts = urlsplit(settings.api_url)
        if parts.scheme != "https" or not parts.hostname:
            raise TransportError(f"API URL must be https://HOST[:PORT], got {settings.api_url!r}")
        user, _, token_name = settings.token_id.partition("!")
        if not token_name:
            raise TransportError(f"token id must be USER@REALM!NAME, got {settings.token_id!r}")
        verify: bool | str = True
        if settings.ca_file:
            verify = settings.ca_file
        elif settings.fingerprint or settings.insecure:
            verify = False
        if settings.insecure and not (settings.ca_file or settings.fingerprint):
            self.warnings.append(
                f"TLS certificate of {parts.hostname} is NOT verified (--insecure): "
                "pin its fingerprint (PVESTACK_FINGERPRINT) or give a CA file instead"
            )
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        self._api = ProxmoxAPI(
            host,
            port=parts.port or 8006,
            user=user,
            token_name=token_name,
            token_value=settings.token_secret.value,
            verify_ssl=verify,
            timeout=settings.timeout,
            backend="https",
        )
        if settings.fingerprint and not settings.ca_file:
            session: requests.Session = self._api._store["session"]
            session.mount("https://", _PinnedAdapter(settings.fingerprint))

    # ---------------------------------------------------------------- calls

    @property
    def calls(self) -> int:
        return self.stats.calls

    def get(self, path: str, **params: str | int) -> Any:
        return self.request("GET", path, params)

    def post(self, path: str, **params: str | int) -> Any:
        return self.request("POST", path, params)

    def put(self, path: str, **params: str | int) -> Any:
        return self.request("PUT", path, params)

    def delete(self, path: str, **params: str | int) -> Any:
        return self.request("DELETE", path, params)

    def request(self, method: str, path: str, params: Params | None = None) -> Any:
        method = method.upper()
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        read = method == "GET"
        attempts = 1 + (self._read_retries if read else 0)
        start = time.monotonic()
        deadline = start + (self._read_budget if read else float("inf"))
        delay = 0.5
        for attempt in range(1, attempts + 1):
            share = (deadline - time.monotonic()) / (attempts - attempt + 1)
            timeout = min(self.settings.timeout, max(1.0, share))
            try:
                return self._once(method, path, clean, timeout)
            except (TransportError, PveError) as e:
                if not self._retryable(e, path) or not read:
                    raise
                left = deadline - time.monotonic() - delay
                if attempt >= attempts or left < 1.0:
                    if isinstance(e, TransportError):
                        raise TransportError(
                            f"GET {path}: gave up after {attempt} attempt(s) in "
                            f"{time.monotonic() - start:.0f}s (at most {self._read_budget:.0f}s "
                            f"per read): {e}",
                            hint=e.hint,
                        ) from None
                    raise
                self._report_retry(
                    f"GET {path} failed ({_short(e)}); retrying in {delay:.1f}s "
                    f"(retry {attempt} of {attempts - 1})"
                )
                self._sleep(delay)
                delay = min(delay * 2, 8.0)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _retryable(e: PvestackError, path: str) -> bool:
        if isinstance(e, TlsError):
            return False
        if isinstance(e, TransportError):
            return True
        if not isinstance(e, PveError) or isinstance(e, (PveAuthError, PvePermissionError)):
            return False
        if e.status in _READ_RETRY_STATUS:
            return True
        # a task poll is read-only and idempotent: a 500 there is worth another try
        return e.status == 500 and bool(_TASK_POLL.match(path))

    def _report_retry(self, message: str) -> None:
        log.warning("%s", message)
        if self._on_retry is not None:
            self._on_retry(message)

    def _once(self, method: str, path: str, params: dict[str, str | int], timeout: float) -> Any:
        self.stats.calls += 1
        self.stats.by_method[method] = self.stats.by_method.get(method, 0) + 1
        if self._on_call is not None:
            self._on_call(method, path, dict(params))
        resource = self._api(path.strip("/"))
        session: Any = self._api._store["session"]
        session.auth.timeout = timeout  # this attempt's share of the read's budget
        try:
            with warnings.catch_warnings():
                if self.settings.insecure:  # warned once, in self.warnings
                    warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
                return self._send(resource, method, params)
        except ResourceException as e:
            raise translate_resource_error(e, method, path, params) from None
        except requests.exceptions.SSLError as e:
            raise TlsError(
                f"TLS verification of {self.settings.api_url} failed ({self.settings.tls_mode}): "
                f"{_short(e)}",
                hint=f"check the pinned fingerprint of {_host_port(self.settings.api_url)} "
                "(pvenode cert info on the node) or the CA file; "
                "--insecure only for a throw-away test node",
            ) from None
        except requests.exceptions.Timeout as e:
            raise TransportError(
                f"no answer from the PVE API at {self.settings.api_url} within {timeout:.0f}s "
                f"({method} {path}): {_short(e)}",
                hint="the node may be overloaded; a write may still have happened: "
                "re-run plan to see",
            ) from None
        except requests.exceptions.RequestException as e:
            raise TransportError(
                f"cannot reach the PVE API at {self.settings.api_url}: {_short(e)}",
                hint=f"is the URL right and {_host_port(self.settings.api_url)} reachable?",
            ) from None

    @staticmethod
    def _send(resource: Any, method: str, params: dict[str, str | int]) -> Any:
        if method == "GET":
            return resource.get(**params)
        if method == "POST":
            return resource.post(**params)
        if method == "PUT":
            return resource.put(**params)
        if method == "DELETE":
            return resource.delete(**params)
        raise ValueError(f"unknown method {method}")

    # ---------------------------------------------------------------- tasks

    def run(
        self,
        call: ApiCall,
        *,
        timeout: float = 900.0,
        on_progress: Callable[[str], None] | None = None,
    ) -> Any:
        """Send ``call``; if it returns a UPID and ``waits_task``, wait for the task."""
        result = self.request(call.method, call.path, call.params)
        if call.waits_task and isinstance(result, str) and result.startswith("UPID:"):
            return self.wait_task(result, timeout=timeout, on_progress=on_progress)
        return result

    def wait_task(
        self,
        upid: str,
        *,
        timeout: float = 900.0,
        on_progress: Callable[[str], None] | None = None,
        first_interval: float = 0.1,
        max_interval: float = 2.0,
    ) -> str:
        """Wait for a task; returns its exit status (``OK`` or ``WARNINGS: n``)."""
        node = upid_node(upid)
        deadline = time.monotonic() + timeout
        interval = first_interval
        while True:
            status = self.get(f"/nodes/{node}/tasks/{upid}/status")
            if isinstance(status, dict) and status.get("status") == "stopped":
                exitstatus = str(status.get("exitstatus", ""))
                if exitstatus == "OK" or exitstatus.startswith("WARNINGS"):
                    return exitstatus
                raise PveTaskError(upid, exitstatus, log_tail=self._log_tail(node, upid))
            if time.monotonic() >= deadline:
                raise WaitTimeout(
                    f"task {upid} still running after {timeout:.0f}s",
                    hint="it may still finish on the node; re-run apply to resume",
                )
            if on_progress is not None:
                on_progress(f"waiting for {upid_type(upid)} task")
            self._sleep(interval)
            interval = min(interval * 1.6, max_interval)

    def _log_tail(self, node: str, upid: str, lines: int = 8) -> tuple[str, ...]:
        try:
            entries = self.get(f"/nodes/{node}/tasks/{upid}/log", start=0, limit=500)
        except PveError:
            return ()
        texts = [str(e.get("t", "")) for e in entries or [] if isinstance(e, dict)]
        return tuple(texts[-lines:])


def upid_node(upid: str) -> str:
    parts = upid.split(":")
    if len(parts) < 3 or parts[0] != "UPID":
        raise ValueError(f"not a UPID: {upid!r}")
    return parts[1]


def upid_type(upid: str) -> str:
    parts = upid.split(":")
    return parts[5] if len(parts) > 5 else "?"


def _short(e: Exception) -> str:
    text = str(e)
    return text if len(text) < 300 else text[:300] + "..."


# ---------------------------------------------------------------- errors

ROOT_HINT = (
    "PVE allows this only to root@pam (a password login), never to an API token. "
    'pvestack sends it as a root step instead: set root.via = "ssh" (PVESTACK_ROOT_VIA=ssh '
    'with PVESTACK_SSH_HOST/PVESTACK_SSH_KEY) or "console" (pvestack prints a script for '
    "the node's shell). If you see this, the key was sent with the token: please report it."
)


#: which of pvestack's root steps sets a root-only key (``mpN``: the bind mount)
_ROOT_STEP_OF = {
    "features": "<stack>:root:pct-set",
    "mpN": "<stack>:host:mpN + <stack>:root:pct-set",
    "devN": "(device passthrough: not managed by pvestack)",
    "hookscript": "(hookscripts: not managed by pvestack)",
}


def translate_resource_error(
    e: ResourceException, method: str, path: str, params: Mapping[str, Any]
) -> PveError:
    """proxmoxer's ResourceException -> the project's tree; PVE's message verbatim."""
    status = int(e.status_code)
    message = str(e.content or e.status_message or "").strip()
    errors: dict[str, str] = {}
    if isinstance(e.errors, dict):
        errors = {str(k): str(v).strip() for k, v in e.errors.items() if k != "errors"}
    if status == 401:
        return PveAuthError(
            status,
            message,
            method=method,
            path=path,
            hint="check the token id and secret (PVESTACK_TOKEN_ID / PVESTACK_TOKEN_SECRET)",
        )
    if status == 403:
        hint = None
        if "root@pam" in message:
            keys = sorted(k for k in params if k not in ("node", "vmid"))
            steps = sorted(
                {_ROOT_STEP_OF.get(re.sub(r"\d+$", "N", k), "root:pct-set") for k in keys}
            )
            hint = ROOT_HINT
            if keys:
                hint += f" (keys sent: {', '.join(keys)}; the root step: {', '.join(steps)})"
        else:
            hint = (
                "the token lacks a privilege: grant it on the path named (e.g. "
                "pveum acl modify / -token 'USER@REALM!NAME' -role PVEVMAdmin), and remember "
                "a token with privilege separation needs its own ACLs"
            )
        return PvePermissionError(
            status, message, method=method, path=path, errors=errors, hint=hint
        )
    if status == 404 or "does not exist" in message:
        return PveNotFoundError(status, message, method=method, path=path, errors=errors)
    if status == 400:
        hint = None
        if any(k.startswith("lxc.") for k in errors):
            hint = "raw lxc.* keys are not API parameters; they are root steps on the node"
        return PveParamError(status, message, method=method, path=path, errors=errors, hint=hint)
    hint = None
    if "unable to modify read-only option" in message:
        hint = "this key cannot change after creation: the container must be replaced"
    elif "protection mode enabled" in message:
        hint = "protection=1 is set: remove it first (pct set VMID -protection 0) if you mean it"
    return PveError(status, message, method=method, path=path, errors=errors, hint=hint)


def _host_port(url: str) -> str:
    """``host:port`` of the API URL as used (PVE's 8006 when the URL names no port)."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 8006}"
