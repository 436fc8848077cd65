"""Request size limits, enforced before routing: a long URL answers 414, a large body 413 (both with the envelope).

The body is read up to the limit before the app sees it, so a client streaming an endless body costs at most
`max_body_bytes` of memory.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from k2.api.errors import error_response


class RequestLimits:
    """ASGI middleware: 414 past `max_url_bytes` of path + query, 413 past `max_body_bytes` of body."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_url_bytes: int) -> None:
        self.app = app
        self.max_body = max_body_bytes
        self.max_url = max_url_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        url_bytes = len(scope.get("raw_path") or scope["path"].encode()) + len(scope.get("query_string", b""))
        if url_bytes > self.max_url:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 4414})
                return
            message = f"the URL is {url_bytes} bytes, over the {self.max_url} allowed: send fewer or shorter parameters"
            await error_response(414, message)(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await self._too_large(scope, receive, send)
            return
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_body:
                await self._too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replay = iter(messages)

        async def buffered() -> Message:
            return next(replay, None) or await receive()

        await self.app(scope, buffered, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"the request body is over {self.max_body} bytes: K2 reads take query parameters, not bodies"
        await error_response(413, message)(scope, receive, send)
