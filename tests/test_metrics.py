"""/metrics after real traffic: every family igbutton documents is there, with plausible values.

Prometheus' registry is process-wide, so the test compares samples before and after its own
traffic instead of trusting absolute values.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import grpc
import pytest
from google.protobuf import duration_pb2
from prometheus_client.parser import text_string_to_metric_families

from igbutton.v1 import (
    button_template_pb2,
    postback_service_pb2,
    postback_service_pb2_grpc,
    send_service_pb2,
    send_service_pb2_grpc,
)
from igbutton_server.app import App
from igbutton_server.sandbox import Fault
from tests.conftest import SettingsFactory

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(app: App) -> Samples:
    url = f"http://127.0.0.1:{app.ports.http}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200
        text = await response.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of a sample name's values over every label set containing ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lbl), v in samples.items() if n == name and want <= set(lbl))


def request(payload: str) -> send_service_pb2.SendButtonTemplateRequest:
    return send_service_pb2.SendButtonTemplateRequest(
        recipient_id="1254477777772919",
        template=button_template_pb2.ButtonTemplate(
            text="Metrics?",
            buttons=[
                button_template_pb2.Button(
                    title="Yes", postback=button_template_pb2.PostbackAction(payload=payload)
                )
            ],
        ),
    )


@pytest.fixture
async def busy_app(make_settings: SettingsFactory) -> App:
    app = App(
        make_settings(
            graph={"backoff_initial_seconds": 0.01},
            postbacks={"max_delivery_attempts": 1},
            # The token is refreshed at once (for 90 days: once) and then reported.
            sandbox={"min_refresh_age_seconds": 0, "token_lifetime_seconds": 90 * 24 * 3600},
            tokens={
                "min_age_seconds": 0,
                "refresh_margin_seconds": 61 * 24 * 3600,
                "check_interval_seconds": 0.05,
            },
        )
    )
    await app.start()
    return app


async def test_every_metric_family_moves_with_real_traffic(busy_app: App) -> None:
    app = busy_app
    assert app.sandbox is not None
    try:
        before = await scrape(app)
        usage = {
            "17841400000000000": [
                {
                    "type": "instagram",
                    "call_count": 97,
                    "total_cputime": 5,
                    "total_time": 6,
                    "estimated_time_to_regain_access": 0,
                }
            ]
        }
        app.sandbox.add_fault(
            Fault(
                kind="graph_error",
                code=2,
                headers={
                    "X-App-Usage": '{"call_count": 12, "total_cputime": 3, "total_time": 4}',
                    "X-Business-Use-Case-Usage": json.dumps(usage),
                },
            )
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as channel:
            send = send_service_pb2_grpc.SendServiceStub(channel)
            postbacks = postback_service_pb2_grpc.PostbackServiceStub(channel)
            broadcast = postbacks.SubscribePostbacks(
                postback_service_pb2.SubscribePostbacksRequest(payload_prefix="METRICS")
            )
            group = postbacks.SubscribePostbacks(
                postback_service_pb2.SubscribePostbacksRequest(
                    payload_prefix="METRICS",
                    group="metrics-group",
                    ack_deadline=duration_pb2.Duration(seconds=1),
                )
            )
            await broadcast.initial_metadata()
            await group.initial_metadata()
            sent = await send.SendButtonTemplate(request("METRICS-1"), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError):
                await send.SendButtonTemplate(request(""), timeout=10)
            tap = await app.sandbox.tap(sent.message_id, mid="metrics-mid-1")
            # Meta delivering the same tap again: stored once, counted as a duplicate.
            again = await app.sandbox.tap(sent.message_id, mid="metrics-mid-1")
            assert again.webhook_status == 200
            await app.sandbox.deliver(
                json.dumps(
                    {
                        "object": "instagram",
                        "entry": [
                            {
                                "id": "1",
                                "time": 1,
                                "messaging": [
                                    {
                                        "sender": {"id": "2"},
                                        "recipient": {"id": "1"},
                                        "timestamp": 1,
                                        "read": {"mid": "m"},
                                    }
                                ],
                            }
                        ],
                    }
                ).encode()
            )
            async with asyncio.timeout(15):
                assert (await broadcast.read()).postback.payload == "METRICS-1"
                first = await group.read()
                during = await scrape(app)
                # Not acknowledged: with max_delivery_attempts=1 it is dead-lettered once its
                # ack deadline passes and the member looks for more work.
                assert first.delivery_attempt == 1
                for _ in range(100):
                    dead = total(
                        await scrape(app),
                        "igbutton_postbacks_dead_lettered_total",
                        group="metrics-group",
                    )
                    if dead >= 1:
                        break
                    await asyncio.sleep(0.1)
            assert tap.webhook_status == 200
            assert await app.sandbox.send_test_delivery(payload="METRICS-TEST") == 200
            assert app.tokens is not None
            for _ in range(750):  # polling, bounded (15 s)
                record = app.tokens.record("17841400000000000")
                if record is not None and record.refreshed_ms is not None:
                    break  # stored and exported (the same step, no await between)
                await asyncio.sleep(0.02)
            broadcast.cancel()
            group.cancel()
        after = await scrape(app)
    finally:
        await app.stop()

    def grew(name: str, **labels: str) -> bool:
        return total(after, name, **labels) > total(before, name, **labels)

    assert grew("igbutton_rpcs_total", method="SendService/SendButtonTemplate", code="OK")
    assert grew("igbutton_rpcs_total", code="INVALID_ARGUMENT")
    assert grew("igbutton_rpc_duration_seconds_count", method="SendService/SendButtonTemplate")
    assert grew("igbutton_graph_calls_total", outcome="ok")
    assert grew("igbutton_graph_calls_total", outcome="graph_error", graph_code="2")
    assert grew("igbutton_graph_call_duration_seconds_count")
    assert grew("igbutton_graph_retries_total")
    assert grew("igbutton_rate_limit_wait_seconds_count")
    assert grew("igbutton_sends_total", outcome="sent")
    assert grew("igbutton_sends_total", outcome="failed")
    assert total(after, "igbutton_graph_app_usage_percent", field="call_count") == 12
    assert total(after, "igbutton_graph_business_usage_percent", field="call_count") == 97
    assert any(n == "igbutton_graph_business_regain_access_minutes" for n, _ in after)
    assert grew("igbutton_webhooks_total", result="accepted")
    assert grew("igbutton_webhook_items_skipped_total")
    assert grew("igbutton_postbacks_stored_total")
    assert grew("igbutton_postbacks_duplicate_total")
    assert grew("igbutton_log_append_duration_seconds_count")
    assert total(during, "igbutton_subscribers", kind="broadcast") >= 1
    assert total(during, "igbutton_subscribers", kind="group") >= 1
    assert total(during, "igbutton_groups") >= 1
    assert total(during, "igbutton_postbacks_unacked", group="metrics-group") == 1
    assert grew("igbutton_postbacks_dead_lettered_total", group="metrics-group")
    assert grew("igbutton_webhook_test_deliveries_total", kind="dashboard")
    account = "17841400000000000"
    assert total(after, "igbutton_account_token_refreshes_total", account=account, result="ok") >= 1
    expiry = total(after, "igbutton_account_token_expiry_timestamp_seconds", account=account)
    assert expiry > time.time() + 89 * 24 * 3600
    assert total(after, "igbutton_account_status", account=account, status="ok") == 1
    assert total(after, "igbutton_account_status", account=account, status="expiring") == 0
    for latency in (
        "igbutton_rpc_duration_seconds_sum",
        "igbutton_graph_call_duration_seconds_sum",
    ):
        assert 0 < total(after, latency) - total(before, latency) < 60
