"""The gRPC ceiling: a trivial SendService that answers at once, in its own process.

It serves the real proto messages, so the load generator sends and receives exactly the
bytes it exchanges with igbutton; what is left is grpc.aio's own cost on this machine.
``python -m bench.ceiling_grpc --ports-file F``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from pathlib import Path

import grpc

from bench.payloads import send_response
from igbutton.v1 import send_service_pb2, send_service_pb2_grpc


class TrivialSendService(send_service_pb2_grpc.SendServiceServicer):
    """Answers every SendButtonTemplate with the same success."""

    def __init__(self) -> None:
        self._response = send_response()

    async def SendButtonTemplate(
        self,
        _request: send_service_pb2.SendButtonTemplateRequest,
        _context: grpc.aio.ServicerContext[
            send_service_pb2.SendButtonTemplateRequest, send_service_pb2.SendButtonTemplateResponse
        ],
    ) -> send_service_pb2.SendButtonTemplateResponse:
        return self._response

    async def ValidateButtonTemplate(
        self,
        _request: send_service_pb2.ValidateButtonTemplateRequest,
        context: grpc.aio.ServicerContext[
            send_service_pb2.ValidateButtonTemplateRequest,
            send_service_pb2.ValidateButtonTemplateResponse,
        ],
    ) -> send_service_pb2.ValidateButtonTemplateResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not part of the ceiling")


async def _serve(ports_file: Path) -> None:
    server = grpc.aio.server()
    send_service_pb2_grpc.add_SendServiceServicer_to_server(TrivialSendService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tmp = ports_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"grpc": port}))
    tmp.replace(ports_file)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ports-file", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(_serve(args.ports_file))


if __name__ == "__main__":
    main()
