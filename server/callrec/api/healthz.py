"""`GET /healthz` over plain HTTP/1.1, for proxies that cannot health-check gRPC themselves.

HAProxy 2.6 sends its own gRPC health check with trouble (measured: "Socket error", with `check-proto
h2` too), while an HTTP/1.1 check on another port works everywhere (`check port N` + `option httpchk
GET /healthz`). This answers 200 `SERVING` while the gRPC health service reports SERVING, and 503
`NOT_SERVING` before the server started and once it drains (SIGTERM), so a proxy stops sending new
calls to a node that is going away. It serves nothing else and reads no request body.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from callrec.logs import get_logger

__all__ = ["HealthEndpoint"]

log = get_logger(__name__)


class HealthEndpoint:
    """A tiny aiohttp server on the event loop: `/healthz` reflects `serving()`."""

    def __init__(self, serving: Callable[[], bool]) -> None:
        self.serving = serving
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _healthz(self, request: web.Request) -> web.Response:
        if self.serving():
            return web.Response(text="SERVING\n")
        return web.Response(status=503, text="NOT_SERVING\n")

    async def start(self, host: str, port: int) -> int:
        """Listen on HOST:PORT (0: a free port); returns the bound port."""
        app = web.Application(client_max_size=1024)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        addresses = self._runner.addresses  # what the sockets bound (port 0 picks a free one)
        self.port = int(addresses[0][1]) if addresses else port
        log.info("health endpoint", listen=f"{host}:{self.port}", path="/healthz")
        return self.port

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
