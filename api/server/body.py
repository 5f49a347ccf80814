"""Reading a request's body with a size limit."""

from __future__ import annotations

from fastapi import HTTPException, Request


async def read_body(request: Request, *, limit: int) -> bytes:
    """The body, refused with 413 as soon as it exceeds `limit` bytes (before reading it all)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"the spec is larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"the spec is larger than {limit} bytes")
    return bytes(body)
