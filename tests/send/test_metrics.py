"""The send path's Prometheus metrics, read from the real /metrics endpoint."""

from __future__ import annotations

import aiohttp
import grpc
import pytest

from igbutton_server.sandbox import Fault
from tests.send.conftest import AppFactory, send_request, stub_for

ACCESS_TOKEN = "IGAAT-metrics-access-token-41b7"
CALLER_TOKEN = "metrics-caller-token-9e0c2aa"


async def test_send_metrics_are_exported_without_tokens(start_app: AppFactory) -> None:
    app = await start_app(
        accounts=[{"id": "17841400000000000", "access_token": ACCESS_TOKEN}],
        callers=[{"name": "metrics-test", "token": CALLER_TOKEN}],
        graph={"backoff_initial_seconds": 0.01},
    )
    assert app.sandbox is not None
    app.sandbox.add_fault(
        Fault(kind="graph_error", code=2, headers={"X-App-Usage": '{"call_count": 42}'})
    )
    metadata = (("authorization", f"Bearer {CALLER_TOKEN}"),)
    async with stub_for(app) as stub:
        await stub.SendButtonTemplate(send_request(request_id="m-1"), metadata=metadata, timeout=10)
        await stub.SendButtonTemplate(send_request(request_id="m-1"), metadata=metadata, timeout=10)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.SendButtonTemplate(send_request(), timeout=10)  # no caller token
    url = f"http://127.0.0.1:{app.ports.http}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        text = await response.text()
    for line in [
        'igbutton_graph_calls_total{graph_code="2",outcome="graph_error"}',
        'igbutton_graph_calls_total{graph_code="",outcome="ok"}',
        'igbutton_graph_retries_total{reason="transient"}',
        'igbutton_sends_total{outcome="sent"}',
        'igbutton_sends_total{outcome="replayed"}',
        'igbutton_graph_app_usage_percent{account="17841400000000000",field="call_count"} 42.0',
        'igbutton_rpcs_total{code="UNAUTHENTICATED",method="SendService/SendButtonTemplate"}',
    ]:
        assert line in text, line
    assert ACCESS_TOKEN not in text
    assert CALLER_TOKEN not in text
