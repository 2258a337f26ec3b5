"""One ASGI layer in front of every route: request id, deadline, HEAD, and size limits on the request.

Pure ASGI (not BaseHTTPMiddleware) so the deadline's context variable reaches the thread that
runs a sync endpoint (Starlette copies the context into its thread pool) and nothing is buffered.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import uuid
from typing import Any

from dinotiles.core.errors import TooLarge
from dinotiles.core.limits import deadline
from dinotiles.server.settings import Settings

logger = logging.getLogger("dinotiles")
Scope = dict[str, Any]
REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,128}$")


async def _json(send: Any, status: int, detail: str, request_id: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyTooLarge(TooLarge):
    """The request body passed DINOTILES_MAX_BODY_BYTES while it was read (413)."""


class RequestGuard:
    """Bounds a request before a route sees it, and tags its answer with an ``X-Request-ID``."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        given = headers.get("x-request-id", "")
        request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        target = len(scope.get("raw_path") or scope["path"].encode()) + len(scope.get("query_string") or b"")
        if target > self.settings.max_url_length:
            await _json(
                send,
                414,
                f"request URL of {target} bytes is over DINOTILES_MAX_URL_LENGTH={self.settings.max_url_length}",
                request_id,
            )
            return
        limit = self.settings.max_body_bytes
        if headers.get("content-length", "0").isdigit() and int(headers.get("content-length", "0")) > limit:
            await _json(send, 413, f"request body over DINOTILES_MAX_BODY_BYTES={limit}", request_id)
            return
        head = scope["method"] == "HEAD"
        if head:  # answered as GET without a body, as HTTP says
            scope = {**scope, "method": "GET"}
        if "content-length" not in headers and scope["method"] in ("POST", "PUT", "PATCH"):
            # a chunked body: read it here, bounded, so an oversized one is a 413 and not a parse error
            chunks, size = [], 0
            while True:
                message = await receive()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    await _json(send, 413, f"request body over DINOTILES_MAX_BODY_BYTES={limit}", request_id)
                    return
                chunks.append(chunk)
                if not message.get("more_body"):
                    break
            body, replayed = b"".join(chunks), False

            async def receive_buffered() -> Any:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            receive = receive_buffered
        received = 0

        async def bounded_receive() -> Any:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge
            return message

        started = False

        async def tagged_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            elif message["type"] == "http.response.body" and head:
                message = {**message, "body": b""}
            await send(message)

        with deadline(self.settings.request_timeout):
            try:
                await self.app(scope, bounded_receive, tagged_send)
            except BodyTooLarge:
                if not started:
                    await _json(send, 413, f"request body over DINOTILES_MAX_BODY_BYTES={limit}", request_id)


COMPRESSIBLE = (b"application/json", b"application/xml", b"text/", b"application/javascript", b"image/svg+xml")


class CompressText:
    """gzip for JSON, XML, HTML, JS and CSS when the client accepts it; tiles (PNG, WebP) go as they are.

    Starlette's GZipMiddleware would also squeeze already-compressed tiles, spending CPU on the hot path
    for nothing.
    """

    def __init__(self, app: Any, minimum_size: int = 500) -> None:
        self.app = app
        self.minimum_size = minimum_size

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        accepts = b"gzip" in dict(scope.get("headers", [])).get(b"accept-encoding", b"")
        if not accepts:
            await self.app(scope, receive, send)
            return
        start: dict[str, Any] | None = None
        chunks: list[bytes] = []
        passthrough = False

        async def gzip_send(message: Any) -> None:
            nonlocal start, passthrough
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                kind = headers.get(b"content-type", b"")
                if headers.get(b"content-encoding") or not kind.startswith(COMPRESSIBLE):
                    passthrough = True
                    await send(message)
                else:
                    start = message
                return
            if passthrough or start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = b"".join(chunks)
            kept = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            if len(body) >= self.minimum_size:
                body = gzip.compress(body, compresslevel=6)
                kept.append((b"content-encoding", b"gzip"))
            kept += [(b"content-length", str(len(body)).encode()), (b"vary", b"Accept-Encoding")]
            await send({**start, "headers": kept})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, gzip_send)
