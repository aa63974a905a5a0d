"""The ASGI middlewares around the service's routes: body limit, bearer token, one schema,
names in paths. Each takes its values when the service is built (from that service's
settings), never from module state.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi.responses import JSONResponse

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})
DOC_PATHS = frozenset({"/", "/docs.json", "/openapi.json"})
DOC_ASSETS = "/static_content/"  # the API page's scripts and styles (BentoML's Swagger UI)


def _open_path(path: str) -> bool:
    """Health, metrics and the API's documentation: answered without the token."""
    return path in OPEN_PATHS or path in DOC_PATHS or path.startswith(DOC_ASSETS)


class BearerTokenMiddleware:
    """Require ``Authorization: Bearer <token>`` on every path but health, metrics and docs."""

    def __init__(self, app: ASGIApp, token: str | None = None) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.expected is None or scope["type"] != "http" or _open_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        if hmac.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        response = JSONResponse(
            {"error": "missing or wrong bearer token", "field": "Authorization"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)


class OpenApiMiddleware:
    """Answer ``GET /docs.json`` (BentoML's schema path, which its API page at ``/`` reads) with
    the FastAPI schema of ``/openapi.json``: one description of the API, not two."""

    def __init__(self, app: ASGIApp, schema: Callable[[], dict[str, Any]]) -> None:
        self.app = app
        self.schema = schema

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/docs.json":
            await JSONResponse(self.schema())(scope, receive, send)
            return
        await self.app(scope, receive, send)


class NameInPathMiddleware:
    """A campaign name in the path with a line break never reaches the router (BentoML's outer
    mount does not match it and answers a plain-text 404): answer the 422 naming the field."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path.startswith("/campaigns/") and ("\n" in path or "\r" in path):
            response = JSONResponse(
                {"error": "a campaign name has no line breaks", "field": "name"}, status_code=422
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuse a request body over ``limit`` bytes with 413, declared or streamed (chunked).

    The body is read here (up to the limit) and handed on in one piece; a declared
    ``Content-Length`` over the limit is refused before anything is read.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message], receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        whole = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([whole], receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        logger.info("%s rejected: body over %d bytes", scope.get("path"), self.limit)
        response = JSONResponse(
            {
                "error": f"request body larger than {self.limit} bytes "
                "(service.max_request_bytes); send smaller batches",
                "field": "body",
            },
            status_code=413,
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


def _replay(messages: list[dict[str, Any]], receive: Receive) -> Receive:
    """A ``receive`` that returns ``messages`` first, then defers to the real one."""
    pending = list(messages)

    async def replay() -> Any:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
