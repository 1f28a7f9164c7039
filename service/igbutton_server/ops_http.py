"""The operations HTTP endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

ReadinessCheck = Callable[[], Awaitable[str | None]]
"""Returns None when ready, else a short reason."""
LivenessCheck = Callable[[], Awaitable[str | None]]
"""Returns None while the process can still recover on its own, else a short reason."""


def build_ops_app(readiness: ReadinessCheck, liveness: LivenessCheck) -> web.Application:
    """An aiohttp app serving /healthz (503 when the process should be restarted), /readyz
    (503 while it cannot take work) and /metrics."""

    async def healthz(_: web.Request) -> web.Response:
        problem = await liveness()
        if problem is None:
            return web.json_response({"status": "ok"})
        return web.json_response({"status": "unhealthy", "reason": problem}, status=503)

    async def readyz(_: web.Request) -> web.Response:
        problem = await readiness()
        if problem is None:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready", "reason": problem}, status=503)

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
