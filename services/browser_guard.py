"""Browser safety for every port the local stack opens: no cross-origin use, no DNS rebinding.

A web page the user visits can send requests to 127.0.0.1 (simple requests need no preflight,
and a DNS-rebinding page even appears under its own host name). So, before anything acts:

- a request carrying an `Origin` that is neither allowlisted nor this server's own origin is
  refused, and so is one a browser marks `Sec-Fetch-Site: cross-site`/`same-site` (another port
  is another origin); preflights included, answered without any `Access-Control-Allow-*` header;
- a request whose `Host` is not one of ours (loopback names, `*.localhost`, the compose service
  names, the configured host name) is refused: that is what a rebinding page sends;
- management paths (`/moto-api/*`, `/_local_aws/*`) are never reachable cross-origin, even from
  an allowlisted origin.

Settings (read on every call, so tests and the stack may change them):
`SCONES_ALLOWED_ORIGINS` (comma-separated origins, e.g. `http://localhost:3000`; empty by default,
as LocalStack's `EXTRA_CORS_ALLOWED_ORIGINS`) and `SCONES_ALLOWED_HOSTS` (extra host names,
e.g. a LAN name when binding 0.0.0.0; `*.example` allows sub-domains).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

ORIGINS_SETTING = "SCONES_ALLOWED_ORIGINS"
HOSTS_SETTING = "SCONES_ALLOWED_HOSTS"
FORBIDDEN = 403
# Host names every service answers to: loopback, and the service names of docker-compose.yml.
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1", "localstack", "sagemaker-local")
MANAGEMENT_PREFIXES = ("/moto-api", "/_local_aws")
# What a browser says about who initiated the request; only these two mean another origin.
FOREIGN_FETCH_SITES = ("cross-site", "same-site")


def refusal(
    method: str,
    path: str,
    headers: Mapping[str, str],
    configured_hosts: Iterable[str] = (),
) -> tuple[int, str] | None:
    """None when the request may proceed, else the (status, message) to answer instead."""
    lower = {str(k).lower(): str(v) for k, v in headers.items()}
    host_header = lower.get("host", "")
    host = _host_name(host_header)
    # HTTP/1.0 clients may omit Host; browsers never do, so a missing Host is not a rebinding.
    if host_header and not _host_allowed(host, tuple(configured_hosts)):
        return FORBIDDEN, f"Host {host_header!r} is not allowed (set {HOSTS_SETTING} to add it)"
    origin = lower.get("origin")
    management = _is_management(path)
    if origin is not None and not _same_origin(origin, host_header):
        if management:
            return FORBIDDEN, f"{path} is not reachable cross-origin (Origin {origin!r})"
        if origin.rstrip("/").lower() not in _allowed_origins(os.environ.get(ORIGINS_SETTING, "")):
            kind = "preflight" if method.upper() == "OPTIONS" else "request"
            return (
                FORBIDDEN,
                f"cross-origin {kind} from {origin!r} refused (set {ORIGINS_SETTING} to allow it)",
            )
        return None
    fetch_site = lower.get("sec-fetch-site", "").lower()
    if fetch_site in FOREIGN_FETCH_SITES and origin is None:
        # A no-cors subresource (<img>, <form> GET): the browser tells us it is foreign.
        return FORBIDDEN, f"{fetch_site} browser request refused"
    return None


def environ_headers(environ: Mapping[str, Any]) -> dict[str, str]:
    """The request headers of a WSGI environ, for `refusal`."""
    headers = {
        key[5:].replace("_", "-").lower(): str(value)
        for key, value in environ.items()
        if key.startswith("HTTP_")
    }
    return headers


def wsgi_refusal(
    environ: Mapping[str, Any], configured_hosts: Iterable[str] = ()
) -> tuple[int, str] | None:
    """`refusal` for a WSGI request."""
    return refusal(
        str(environ.get("REQUEST_METHOD", "GET")),
        str(environ.get("PATH_INFO", "/")),
        environ_headers(environ),
        configured_hosts,
    )


def _host_name(host_header: str) -> str:
    """The name part of a Host header: `[::1]:4566` -> `::1`, `localhost:4566` -> `localhost`."""
    value = host_header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else value
    if value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


def _host_allowed(host: str, configured: tuple[str, ...]) -> bool:
    extra = _allowed_hosts(os.environ.get(HOSTS_SETTING, ""))
    names = {*DEFAULT_HOSTS, *(_host_name(h) for h in configured if h), *extra}
    names.discard("")
    # Binding 0.0.0.0 is no host name a client uses; loopback names are already listed.
    names.discard("0.0.0.0")
    if host in names or host == "localhost" or host.endswith(".localhost"):
        return True
    return any(name.startswith("*.") and host.endswith(name[1:]) for name in names)


def _same_origin(origin: str, host_header: str) -> bool:
    """A page served by this very server (scheme ignored: the stack speaks plain HTTP)."""
    _, sep, rest = origin.partition("://")
    return bool(sep and host_header) and rest.rstrip("/").lower() == host_header.strip().lower()


def _is_management(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in MANAGEMENT_PREFIXES)


@lru_cache(maxsize=8)
def _allowed_origins(setting: str) -> frozenset[str]:
    return frozenset(o.strip().rstrip("/").lower() for o in setting.split(",") if o.strip())


@lru_cache(maxsize=8)
def _allowed_hosts(setting: str) -> frozenset[str]:
    return frozenset(
        _host_name(h) if not h.strip().startswith("*.") else h.strip().lower()
        for h in setting.split(",")
        if h.strip()
    )
