"""grpc.health.v1.Health whose Watch streams end, after NOT_SERVING, when shutdown begins.

grpc's reference servicer keeps every Watch open until the server's grace period runs
out, so one watcher (a load balancer, a mesh sidecar) made each shutdown last the whole
grace and then saw its stream cancelled. Here a watcher gets NOT_SERVING and the stream
ends OK; the status change is the news, and a watcher re-watches another replica.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeAlias

import grpc
from grpc_health.v1 import health_pb2

Status: TypeAlias = health_pb2.HealthCheckResponse.ServingStatus.ValueType
Context = grpc.aio.ServicerContext[Any, Any]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthServicer:
    """The serving status of the server ("") and of each service, for Check and Watch
    (registered with grpc_health's ``add_HealthServicer_to_server``)."""

    def __init__(self) -> None:
        self._status: dict[str, Status] = {"": SERVING}
        self._changed = asyncio.Event()  # replaced by a fresh one at every change
        self._shutting_down = False

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def set(self, service: str, status: Status) -> None:
        """Set a service's status; ignored once shutdown began."""
        if self._shutting_down:
            return
        self._status[service] = status
        self._notify()

    async def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING, for good; open Watch streams send it and end."""
        if self._shutting_down:
            return
        self._shutting_down = True
        for service in self._status:
            self._status[service] = NOT_SERVING
        self._notify()

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: Context
    ) -> health_pb2.HealthCheckResponse:
        """The status now; NOT_FOUND for a service never set."""
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def List(
        self, _request: health_pb2.HealthListRequest, _context: Context
    ) -> health_pb2.HealthListResponse:
        """Every service's status now."""
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in self._status.items()
            }
        )

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Context) -> None:
        """The status now and at each change (intermediate ones may be skipped); ends OK
        after NOT_SERVING once shutdown began."""
        last: Status | None = None
        while True:
            changed = self._changed  # read with the status: no change is missed
            status = self._status.get(request.service, SERVICE_UNKNOWN)
            if status != last:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            if self._shutting_down:
                return
            await changed.wait()
