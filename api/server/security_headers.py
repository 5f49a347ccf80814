"""Headers on every answer that keep other origins from using the dashboard's origin, where it keeps its token
(localStorage): scripts and styles only from this server (the docs' assets come from the fastapi-offline
package, not a CDN), no framing (clickjacking), no content-type sniffing, no referrer leaving with a job URL."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_POLICY = (
    "default-src 'self'; script-src 'self'{inline}; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "worker-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
# Swagger UI's page starts itself with an inline script (FastAPI writes it); every other page has none.
INLINE_SCRIPT_PATHS = frozenset({"/docs", "/docs/oauth2-redirect"})
_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
CSP = _POLICY.format(inline="")
CSP_INLINE = _POLICY.format(inline=" 'unsafe-inline'")


class SecurityHeaders:
    """Pure ASGI: appends the headers to the response start, whatever answered."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = (CSP_INLINE if scope["path"] in INLINE_SCRIPT_PATHS else CSP).encode()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    *_HEADERS,
                    (b"content-security-policy", policy),
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)
