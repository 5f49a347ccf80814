"""Requests from where the service is not: refused before any route runs, whatever the authentication mode.

- Host: only the names the operator serves under (VITQ_ALLOWED_HOSTS). A page on evil.example whose DNS name is
  re-pointed at 127.0.0.1 (DNS rebinding) sends `Host: evil.example`: a 400, so it reaches nothing.
- Writes (POST, PUT, PATCH, DELETE) from another origin: a browser sends `Origin` (or at least `Sec-Fetch-Site`) with
  every cross-origin write, so a page elsewhere cannot submit or cancel jobs through a visitor's browser (with
  authentication off, nothing else would stop it). The dashboard is same-origin; the CLI and curl send neither.
- Writes with the three content types an HTML form can send without asking first (a CORS "simple" request):
  never what the dashboard or the CLI sends, so a 415 that names the types to use.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from api.core.settings import Settings

WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})


def host_name(host: str) -> str:
    """The name of a Host header's value, without port or IPv6 brackets: "[::1]:8000" -> "::1"."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class RequestGuard:
    """Pure ASGI (the submit path is hot): reads three headers, answers the refusals itself."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.hosts = settings.allowed_host_names
        self.origins = settings.allowed_origin_list

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k: v.decode("latin-1") for k, v in scope["headers"] if k in _READ}
        refusal = self._refusal(scope["method"], headers)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, message = refusal
        body = json.dumps({"detail": message}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _refusal(self, method: str, headers: dict[bytes, str]) -> tuple[int, str] | None:
        host = headers.get(b"host", "")
        if "*" not in self.hosts and host_name(host) not in self.hosts:
            return (
                400,
                f"this server does not answer to the host name {host_name(host)!r} (VITQ_ALLOWED_HOSTS)",
            )
        if method not in WRITES:
            return None
        origin = headers.get(b"origin")
        if origin is not None and not self._same_origin(origin, host):
            return 403, f"a write from another origin ({origin}) is refused (VITQ_ALLOWED_ORIGINS)"
        if origin is None and headers.get(b"sec-fetch-site", "none") not in ("same-origin", "none"):
            return 403, "a write from another site is refused"
        media_type = headers.get(b"content-type", "").split(";", 1)[0].strip().lower()
        if media_type in FORM_TYPES:
            return 415, f"{media_type} is not accepted: send application/json or application/yaml"
        return None

    def _same_origin(self, origin: str, host: str) -> bool:
        if origin.rstrip("/").lower() in self.origins:
            return True
        parts = urlsplit(origin.lower())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False  # "null" (a sandboxed frame, a file) is no origin of ours
        default_port = {"http": ":80", "https": ":443"}[parts.scheme]
        return parts.netloc.removesuffix(default_port) == host.strip().lower().removesuffix(default_port)


_READ = frozenset({b"host", b"origin", b"sec-fetch-site", b"content-type"})
