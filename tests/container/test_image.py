"""The container image, built and run: the smoke test ``make docker-test`` runs (and CI).

It builds the image with ``make docker`` (on the pinned base, or on an equivalent built from
Debian packages when that cannot be pulled, and says which), starts it in sandbox mode with
its ports published on 127.0.0.1, and checks what an operator relies on: a button template
sent over gRPC, tapped in the sandbox, arrives as a postback on the stream; the health check
becomes healthy on a non-default operations port; the image runs as 10001:10001 with a
pinned base; SIGTERM stops it within the grace period with a clean exit.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from igbutton.v1 import (
    button_template_pb2,
    postback_service_pb2,
    postback_service_pb2_grpc,
    send_service_pb2,
    send_service_pb2_grpc,
)
from igbutton_server.app import SANDBOX_ACCOUNT_ID
from tests.container.engine import IMAGE, Engine, find_engine, pinned_base, say

ASKED = os.environ.get("IGBUTTON_CONTAINER_TEST") == "1"
"""Set by make docker-test: building the base and the image takes minutes on a cold machine,
so a plain `make test` leaves this module to that target."""
REQUIRED = os.environ.get("IGBUTTON_REQUIRE_CONTAINER") == "1"
"""Set by CI: no working container engine is a failure, not a skip."""

pytestmark = pytest.mark.timeout(1800)  # a cold build, base included, measured in README

OPS_PORT = 9191
"""Not the default 9090: the health check must follow IGBUTTON_HTTP__PORT."""
GRACE_SECONDS = 20
"""`stop -t`: more than the server's own drain (grpc.shutdown_grace_seconds, 10 s)."""
RECIPIENT = "1254477777772919"
WAIT = 60.0


@pytest.fixture(scope="session")
def engine() -> Engine:
    """A working Podman or Docker; without one, skip (fail with IGBUTTON_REQUIRE_CONTAINER=1).
    With one, skip unless make docker-test asked for this module."""
    name, why = find_engine()
    if name is None:
        message = f"no working container engine ({why}); make docker-test needs podman or docker"
        if REQUIRED:
            pytest.fail(f"{message}, and IGBUTTON_REQUIRE_CONTAINER=1", pytrace=False)
        pytest.skip(message)
    if not ASKED:
        pytest.skip(
            f"{name} works, but the container smoke test builds an image (minutes): "
            "`make docker-test` runs it (IGBUTTON_CONTAINER_TEST=1)"
        )
    say(f"engine: {why}")
    return Engine(name)


@pytest.fixture(scope="session")
def image(engine: Engine) -> str:
    """igbutton's image, built by ``make docker``; returns its base."""
    base = engine.base_image()
    engine.build(base)
    return base


def _run_args() -> list[str]:
    # Every port on 127.0.0.1 with a port the engine picks, so parallel runs cannot collide.
    # The sandbox (the Graph stand-in, in the same process) must listen beyond the
    # container's loopback for the test to tap; the operations port is moved to 9191.
    return [
        "-p",
        "127.0.0.1::50051",
        "-p",
        f"127.0.0.1::{OPS_PORT}",
        "-p",
        "127.0.0.1::8765",
        "-e",
        f"IGBUTTON_HTTP__PORT={OPS_PORT}",
        "-e",
        "IGBUTTON_SANDBOX__HOST=0.0.0.0",
        IMAGE,
        "--sandbox",
    ]


@pytest.fixture
def container(engine: Engine, image: str) -> Iterator[str]:
    """A container of the image in sandbox mode, healthy; removed after the test."""
    assert image
    with engine.container(*_run_args()) as cid:
        say(f"started container {cid[:12]} from {IMAGE}: {' '.join(_run_args()[:-2])}")
        deadline = time.monotonic() + WAIT
        status = ""
        while time.monotonic() < deadline:
            status = engine.health(cid)
            if status == "healthy":
                break
            if engine.inspect(cid, "container")["State"].get("Status") == "exited":
                break
            time.sleep(0.5)  # polling the engine, bounded by the deadline
        assert status == "healthy", f"health {status!r} after {WAIT} s:\n{engine.logs(cid)}"
        say(f"health check: {status} (igbutton-server healthcheck on port {OPS_PORT})")
        yield cid


def test_image_runs_as_10001_with_a_health_check_and_a_pinned_base(
    engine: Engine, image: str
) -> None:
    data = engine.inspect(IMAGE)
    config = data["Config"]
    assert config["User"] == "10001:10001"
    health = data.get("Healthcheck") or config.get("Healthcheck")
    assert health is not None, "no HEALTHCHECK (Podman: was it built with --format docker?)"
    assert health["Test"] == ["CMD", "igbutton-server", "healthcheck"]
    labels = config.get("Labels") or {}
    assert labels["org.opencontainers.image.base.name"] == image
    pinned = pinned_base()
    assert re.fullmatch(r"\S+@sha256:[0-9a-f]{64}", pinned), pinned
    say(f"image user {config['User']}, health check {health['Test']}")
    say(f"image base (label org.opencontainers.image.base.name): {image}; pinned: {pinned}")


def test_files_belong_to_root_and_the_data_dir_to_10001(engine: Engine, image: str) -> None:
    assert image
    script = (
        "id -u; id -g; stat -c %u:%g /var/lib/igbutton; "
        "touch /var/lib/igbutton/probe && echo data-writable; "
        "touch /opt/igbutton/probe 2>/dev/null && echo code-writable || echo code-read-only"
    )
    out = engine.run("run", "--rm", "--entrypoint", "sh", IMAGE, "-c", script).split()
    assert out == ["10001", "10001", "10001:10001", "data-writable", "code-read-only"]


def test_send_tap_postback_round_trip(engine: Engine, container: str) -> None:
    status = engine.run("exec", container, "cat", "/proc/1/status")
    uids = re.search(r"^Uid:\s+(.*)$", status, re.MULTILINE)
    assert uids is not None
    assert uids.group(1).split() == ["10001"] * 4, "PID 1 must not run as root"
    say(f"PID 1 in the container runs as uid {uids.group(1).split()[0]} (not root)")

    grpc_port = engine.host_port(container, 50051)
    sandbox = f"http://127.0.0.1:{engine.host_port(container, 8765)}"
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        # Subscribe first; the initial metadata means the start position is fixed.
        stream = postback_service_pb2_grpc.PostbackServiceStub(channel).SubscribePostbacks(
            postback_service_pb2.SubscribePostbacksRequest(payload_prefix="SMOKE:"),
            timeout=WAIT,
        )
        stream.initial_metadata()
        sent = send_service_pb2_grpc.SendServiceStub(channel).SendButtonTemplate(
            send_service_pb2.SendButtonTemplateRequest(
                recipient_id=RECIPIENT,
                template=button_template_pb2.ButtonTemplate(
                    text="Container smoke test: tap Order",
                    buttons=[
                        button_template_pb2.Button(
                            title="Visit",
                            url=button_template_pb2.UrlAction(url="https://www.instagram.com"),
                        ),
                        button_template_pb2.Button(
                            title="Order",
                            postback=button_template_pb2.PostbackAction(payload="SMOKE:42"),
                        ),
                    ],
                ),
            ),
            timeout=WAIT,
        )
        say(f"sent over gRPC 127.0.0.1:{grpc_port}: message_id {sent.message_id}")
        request = urllib.request.Request(  # noqa: S310 (http to loopback)
            f"{sandbox}/_sandbox/tap",
            data=json.dumps({"message_id": sent.message_id, "button_index": 1}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=WAIT) as resp:  # noqa: S310 (loopback)
            tap = json.loads(resp.read())
        assert tap["webhook_status"] == 200, tap
        say(f"tapped in the sandbox ({sandbox}): mid {tap['mid']}, webhook answered 200")
        got = next(stream).postback
        stream.cancel()
    assert (got.mid, got.payload, got.title) == (tap["mid"], "SMOKE:42", "Order")
    assert (got.account_id, got.sender_id) == (SANDBOX_ACCOUNT_ID, RECIPIENT)
    say(
        f"postback on the stream: sequence {got.sequence} mid {got.mid} payload {got.payload} "
        f"title {got.title} from {got.sender_id}: round trip OK"
    )


def test_sigterm_stops_it_within_the_grace_period(engine: Engine, container: str) -> None:
    ops = f"http://127.0.0.1:{engine.host_port(container, OPS_PORT)}/readyz"
    with urllib.request.urlopen(ops, timeout=WAIT) as resp:
        assert resp.status == 200
    with grpc.insecure_channel(f"127.0.0.1:{engine.host_port(container, 50051)}") as channel:
        # An open stream must be ended by the server (SHUTTING_DOWN), not cut by a kill.
        stream = postback_service_pb2_grpc.PostbackServiceStub(channel).SubscribePostbacks(
            postback_service_pb2.SubscribePostbacksRequest(), timeout=GRACE_SECONDS + WAIT
        )
        stream.initial_metadata()
        started = time.monotonic()
        engine.run("stop", "-t", str(GRACE_SECONDS), container, timeout=GRACE_SECONDS + 60)
        took = time.monotonic() - started
        with pytest.raises(grpc.RpcError) as ended:
            next(stream)
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert _reason(ended.value) == "SHUTTING_DOWN"
    state = engine.inspect(container, "container")["State"]
    logs = engine.logs(container)
    # A SIGKILL after the grace period would be exit status 137.
    assert state["ExitCode"] == 0, logs
    assert took < GRACE_SECONDS, f"stop took {took:.1f} s"
    assert '"msg": "igbutton stopped"' in logs
    assert "Traceback" not in logs
    say(
        f"stop -t {GRACE_SECONDS} (SIGTERM): the open stream ended UNAVAILABLE/SHUTTING_DOWN, "
        f"exit status 0 after {took:.1f} s, 'igbutton stopped' logged"
    )


def _reason(error: grpc.RpcError) -> str:
    """The ErrorInfo reason of a failed call."""
    assert isinstance(error, grpc.Call)
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""
