"""A cap on the requests an HTTP port works on at once: past it a request is answered 503
at once, before its body is read, instead of queueing in memory without bound."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from torchport.errors import Overloaded
from torchport.transports.http.responses import error_response


class InflightLimit:
    """ASGI middleware: at most `limit` HTTP requests in progress, `exempt` paths aside."""

    def __init__(self, app: ASGIApp, limit: int, *, exempt: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.limit = limit
        self.exempt = exempt
        self.inflight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.limit:
            refused = Overloaded(
                f"this server is working on {self.limit} requests already (max_inflight); "
                "retry shortly"
            )
            await error_response(refused)(scope, receive, send)
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1
