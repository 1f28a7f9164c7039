"""The sync client against grpcio-testing's in-process channel: the requests it builds, the
retries it makes (and refuses to make), and how it decodes error statuses."""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

import grpc
import grpc_testing
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from igbutton import (
    Client,
    InvalidRequestError,
    OutsideMessagingWindowError,
    PostbackButton,
    RateLimitedError,
    ReconnectPolicy,
    RetryPolicy,
    UrlButton,
    template,
)
from igbutton.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    GraphUnavailableError,
    IgButtonError,
    UnavailableError,
)
from igbutton.v1 import button_template_pb2, postback_service_pb2, send_service_pb2
from igbutton_server.errors import FieldViolation as ServerViolation
from igbutton_server.errors import InvalidRequest, RateLimited

SEND = send_service_pb2.DESCRIPTOR.services_by_name["SendService"]
POSTBACKS = postback_service_pb2.DESCRIPTOR.services_by_name["PostbackService"]
SEND_METHOD = SEND.methods_by_name["SendButtonTemplate"]
VALIDATE_METHOD = SEND.methods_by_name["ValidateButtonTemplate"]
SUBSCRIBE_METHOD = POSTBACKS.methods_by_name["SubscribePostbacks"]
ACK_METHOD = POSTBACKS.methods_by_name["AckPostbacks"]
DETAILS_KEY = "grpc-status-details-bin"
FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.001, max_backoff=0.001)

T = TypeVar("T")


@pytest.fixture
def fake() -> Any:
    return grpc_testing.channel([SEND, POSTBACKS], grpc_testing.strict_real_time())


@pytest.fixture
def client(fake: Any) -> Iterator[Client]:
    with Client(channel=fake, token="caller-token-123456", retry=FAST_RETRY) as c:
        yield c


def in_background(fn: Callable[[], T]) -> Future[T]:
    """The client blocks until the test answers its RPC, so it runs on another thread: a
    daemon one, so a failing test cannot hang the run waiting for it."""
    future: Future[T] = Future()

    def run() -> None:
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the test through the future
                future.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return future


def ok_send(rpc: Any, recipient: str = "1234", mid: str = "m_1") -> None:
    response = send_service_pb2.SendButtonTemplateResponse(recipient_id=recipient, message_id=mid)
    rpc.terminate(response, (), grpc.StatusCode.OK, "")


def fail(rpc: Any, status: status_pb2.Status | None, code: grpc.StatusCode, message: str) -> None:
    trailers = () if status is None else ((DETAILS_KEY, status.SerializeToString()),)
    rpc.terminate(None, trailers, code, message)


def packed(*messages: Any) -> list[any_pb2.Any]:
    out = []
    for m in messages:
        a = any_pb2.Any()
        a.Pack(m)
        out.append(a)
    return out


# --- Request building ---


def test_send_builds_the_request_with_a_fresh_uuid_and_buttons_in_order(
    client: Client, fake: Any
) -> None:
    future = in_background(
        lambda: client.send_button_template(
            "1234",
            "Pick one",
            [UrlButton("Visit", "https://example.com/a?b=c"), PostbackButton("Yes", "ANSWER_YES")],
            account_id="17841400000000000",
            tag="human-agent",
        ),
    )
    metadata, request, rpc = fake.take_unary_unary(SEND_METHOD)
    ok_send(rpc)
    result = future.result(timeout=10)

    assert request.recipient_id == "1234"
    assert request.account_id == "17841400000000000"
    assert request.tag == button_template_pb2.MESSAGE_TAG_HUMAN_AGENT
    assert request.template.text == "Pick one"
    first, second = request.template.buttons
    assert first.title == "Visit"
    assert first.WhichOneof("action") == "url"
    assert first.url.url == "https://example.com/a?b=c"
    assert second.title == "Yes"
    assert second.WhichOneof("action") == "postback"
    assert second.postback.payload == "ANSWER_YES"
    assert uuid.UUID(request.request_id).version == 4
    assert ("authorization", "Bearer caller-token-123456") in metadata
    assert result.message_id == "m_1"
    assert result.recipient_id == "1234"
    assert result.request_id == request.request_id


def test_each_send_gets_its_own_request_id_unless_given(client: Client, fake: Any) -> None:
    seen = []
    given = "6f1c1c3e-1d5b-4f0e-9a7e-2f7b1d9c0a11"
    for rid in (None, None, given):
        future = in_background(
            lambda rid=rid: client.send_button_template(
                "1234", template("Hi", PostbackButton("Yes", "Y")), request_id=rid
            ),
        )
        _, request, rpc = fake.take_unary_unary(SEND_METHOD)
        ok_send(rpc)
        assert future.result(timeout=10).request_id == request.request_id
        seen.append(request.request_id)
    assert seen[0] != seen[1]
    assert seen[2] == given
    # No account and no tag: the fields stay empty, so the server applies its defaults.
    assert request.account_id == ""
    assert request.tag == button_template_pb2.MESSAGE_TAG_UNSPECIFIED


def test_a_template_plus_extra_buttons_appends_them(client: Client, fake: Any) -> None:
    base = template("Hi", UrlButton("A", "https://a.example"))
    future = in_background(
        lambda: client.validate_button_template("1", base, [PostbackButton("B", "P_B")])
    )
    _, request, rpc = fake.take_unary_unary(VALIDATE_METHOD)
    rpc.terminate(
        send_service_pb2.ValidateButtonTemplateResponse(
            method="POST", url="https://graph/v25.0/1/messages", body_json='{"recipient": {}}'
        ),
        (),
        grpc.StatusCode.OK,
        "",
    )
    result = future.result(timeout=10)
    assert [b.title for b in request.template.buttons] == ["A", "B"]
    assert result.method == "POST"
    assert result.body == {"recipient": {}}


def test_ack_builds_acks_and_nacks(client: Client, fake: Any) -> None:
    future = in_background(lambda: client.ack("billing", ["a1", "a2"], ["n1"]))
    _, request, rpc = fake.take_unary_unary(ACK_METHOD)
    rpc.terminate(
        postback_service_pb2.AckPostbacksResponse(applied_count=2, unknown_ack_ids=["n1"]),
        (),
        grpc.StatusCode.OK,
        "",
    )
    result = future.result(timeout=10)
    assert request.group == "billing"
    assert list(request.ack_ids) == ["a1", "a2"]
    assert list(request.nack_ids) == ["n1"]
    assert result.applied_count == 2
    assert result.unknown_ack_ids == ("n1",)


def test_a_bad_tag_or_button_is_refused_before_any_call(client: Client) -> None:
    with pytest.raises(ValueError, match="unknown message tag"):
        client.send_button_template("1", "Hi", [PostbackButton("Y", "Y")], tag="urgent")
    with pytest.raises(TypeError, match="UrlButton or a PostbackButton"):
        client.send_button_template("1", "Hi", ["Yes"])  # type: ignore[list-item]


# --- Retries (AIP-194) ---


def test_unavailable_send_is_retried_with_the_same_request_id(client: Client, fake: Any) -> None:
    future = in_background(
        lambda: client.send_button_template("1234", "Hi", [PostbackButton("Y", "Y")])
    )
    _, first, rpc = fake.take_unary_unary(SEND_METHOD)
    fail(rpc, None, grpc.StatusCode.UNAVAILABLE, "connection reset")
    _, second, rpc = fake.take_unary_unary(SEND_METHOD)
    ok_send(rpc)
    assert future.result(timeout=10).request_id == first.request_id == second.request_id


def test_retries_stop_after_max_attempts(client: Client, fake: Any) -> None:
    future = in_background(
        lambda: client.send_button_template("1234", "Hi", [PostbackButton("Y", "Y")])
    )
    for _ in range(FAST_RETRY.max_attempts):
        _, _, rpc = fake.take_unary_unary(SEND_METHOD)
        fail(rpc, None, grpc.StatusCode.UNAVAILABLE, "down")
    with pytest.raises(UnavailableError) as caught:
        future.result(timeout=10)
    assert caught.value.request_id is not None


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INVALID_ARGUMENT,
    ],
)
def test_other_failures_are_not_retried(client: Client, fake: Any, code: grpc.StatusCode) -> None:
    future = in_background(
        lambda: client.send_button_template("1234", "Hi", [PostbackButton("Y", "Y")])
    )
    _, _, rpc = fake.take_unary_unary(SEND_METHOD)
    fail(rpc, None, code, "no")
    # Had the client retried, it would be blocked waiting for a second RPC instead.
    with pytest.raises(IgButtonError) as caught:
        future.result(timeout=10)
    assert caught.value.code is code
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        assert isinstance(caught.value, DeadlineExceededError)


# --- Error decoding (AIP-193) ---


def test_server_encoded_invalid_request_decodes_with_every_violation(
    client: Client, fake: Any
) -> None:
    server_error = InvalidRequest(
        [
            ServerViolation("template.text", "must be 1 to 640 characters"),
            ServerViolation("template.buttons[1].title", "must be 1 to 20 characters"),
        ]
    )
    status = server_error.to_status()
    future = in_background(
        lambda: client.send_button_template("1234", "", [PostbackButton("Y", "Y")])
    )
    _, request, rpc = fake.take_unary_unary(SEND_METHOD)
    rpc.terminate(None, status.trailing_metadata, status.code, status.details)
    with pytest.raises(InvalidRequestError) as caught:
        future.result(timeout=10)
    err = caught.value
    assert err.code is grpc.StatusCode.INVALID_ARGUMENT
    assert err.reason == "INVALID_REQUEST"
    assert err.domain == "igbutton"
    assert err.violations == [
        FieldViolation("template.text", "must be 1 to 640 characters"),
        FieldViolation("template.buttons[1].title", "must be 1 to 20 characters"),
    ]
    assert err.request_id == request.request_id
    assert "template.buttons[1].title" in str(err)


def test_error_info_bad_request_and_retry_info_all_decode(client: Client, fake: Any) -> None:
    info = error_details_pb2.ErrorInfo(
        reason="RATE_LIMITED",
        domain="igbutton",
        metadata={"graphCode": "4", "fbtraceId": "AbCdEf"},
    )
    bad = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field="recipient_id", description="x")
        ]
    )
    retry = error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=1, nanos=500_000_000)
    )
    status = status_pb2.Status(
        code=code_pb2.RESOURCE_EXHAUSTED, message="slow down", details=packed(info, bad, retry)
    )
    future = in_background(
        lambda: client.send_button_template("1234", "Hi", [PostbackButton("Y", "Y")])
    )
    _, _, rpc = fake.take_unary_unary(SEND_METHOD)
    fail(rpc, status, grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down")
    with pytest.raises(RateLimitedError) as caught:
        future.result(timeout=10)
    err = caught.value
    assert err.retry_after == 1.5
    assert err.graph_code == 4
    assert err.graph_subcode is None
    assert err.fbtrace_id == "AbCdEf"
    assert err.violations == [("recipient_id", "x")]
    assert err.message == "slow down"


def test_graph_reason_maps_to_its_class_under_the_code_class(client: Client, fake: Any) -> None:
    info = error_details_pb2.ErrorInfo(
        reason="OUTSIDE_MESSAGING_WINDOW",
        domain="igbutton",
        metadata={"graphCode": "10", "graphSubcode": "2534022", "fbtraceId": "T1"},
    )
    status = status_pb2.Status(
        code=code_pb2.FAILED_PRECONDITION, message="window closed", details=packed(info)
    )
    future = in_background(
        lambda: client.send_button_template("1234", "Hi", [PostbackButton("Y", "Y")])
    )
    _, _, rpc = fake.take_unary_unary(SEND_METHOD)
    fail(rpc, status, grpc.StatusCode.FAILED_PRECONDITION, "window closed")
    with pytest.raises(OutsideMessagingWindowError) as caught:
        future.result(timeout=10)
    assert isinstance(caught.value, FailedPreconditionError)
    assert (caught.value.graph_code, caught.value.graph_subcode) == (10, 2534022)


def test_rate_limit_retry_info_from_the_server_encoder(client: Client, fake: Any) -> None:
    status = RateLimited("account rate limit", retry_after=0.25).to_status()
    future = in_background(
        lambda: client.send_button_template("1234", "Hi", [PostbackButton("Y", "Y")])
    )
    _, _, rpc = fake.take_unary_unary(SEND_METHOD)
    rpc.terminate(None, status.trailing_metadata, status.code, status.details)
    with pytest.raises(RateLimitedError) as caught:
        future.result(timeout=10)
    assert caught.value.retry_after == pytest.approx(0.25)


def test_graph_unavailable_is_retried_and_honours_retry_info(client: Client, fake: Any) -> None:
    info = error_details_pb2.ErrorInfo(reason="GRAPH_UNAVAILABLE", domain="igbutton")
    retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=1_000_000))
    status = status_pb2.Status(
        code=code_pb2.UNAVAILABLE, message="Meta is busy", details=packed(info, retry)
    )
    future = in_background(
        lambda: client.send_button_template("1234", "Hi", [PostbackButton("Y", "Y")])
    )
    for _ in range(FAST_RETRY.max_attempts):
        _, _, rpc = fake.take_unary_unary(SEND_METHOD)
        fail(rpc, status, grpc.StatusCode.UNAVAILABLE, "Meta is busy")
    with pytest.raises(GraphUnavailableError):
        future.result(timeout=10)


# --- Subscriptions and groups over the fake channel ---


def event(seq: int, ack_id: str = "", payload: str = "P") -> Any:
    return postback_service_pb2.SubscribePostbacksResponse(
        postback=postback_service_pb2.Postback(
            sequence=seq, account_id="17841400000000000", mid=f"mid{seq}", payload=payload
        ),
        ack_id=ack_id,
        delivery_attempt=1 if ack_id else 0,
    )


def test_subscription_resumes_after_the_last_sequence_and_drops_repeats(fake: Any) -> None:
    client = Client(channel=fake, reconnect=ReconnectPolicy(initial_backoff=0.001))
    subscription = client.subscribe(payload_prefix="P", start="earliest")
    seen: queue.Queue[int] = queue.Queue()

    def read() -> None:
        for postback in subscription:
            seen.put(postback.sequence)

    future = in_background(read)
    try:
        _, first, rpc = fake.take_unary_stream(SUBSCRIBE_METHOD)
        assert first.position == postback_service_pb2.START_POSITION_EARLIEST
        assert first.payload_prefix == "P"
        rpc.send_response(event(5))
        rpc.send_response(event(6))
        # grpcio-testing drops unread responses on termination: end the stream once both
        # were read, as a real server restart after delivering them would.
        assert [seen.get(timeout=10), seen.get(timeout=10)] == [5, 6]
        rpc.terminate((), grpc.StatusCode.UNAVAILABLE, "server restarting")
        _, second, rpc = fake.take_unary_stream(SUBSCRIBE_METHOD)
        assert second.WhichOneof("start") == "after_sequence"
        assert second.after_sequence == 6
        assert second.payload_prefix == "P"
        rpc.send_response(event(6))  # a repeat the client must not yield twice
        rpc.send_response(event(7))
        assert seen.get(timeout=10) == 7
        assert subscription.last_sequence == 7
    finally:
        subscription.close()
    future.result(timeout=10)
    assert seen.empty()


def test_consume_acks_after_the_handler_and_nacks_when_it_raises(fake: Any) -> None:
    client = Client(channel=fake)
    handled: list[str] = []

    def handler(postback: Any) -> None:
        handled.append(postback.payload)
        if postback.payload == "BAD":
            raise RuntimeError("cannot handle")

    future = in_background(
        lambda: client.consume("billing", handler, ack_deadline=60, max_messages=2)
    )
    _, request, stream = fake.take_unary_stream(SUBSCRIBE_METHOD)
    assert request.group == "billing"
    assert request.ack_deadline.seconds == 60
    stream.send_response(event(1, ack_id="a1", payload="GOOD"))
    _, ack, rpc = fake.take_unary_unary(ACK_METHOD)
    # The ack arrives only once the handler returned.
    assert handled == ["GOOD"]
    assert (list(ack.ack_ids), list(ack.nack_ids)) == (["a1"], [])
    rpc.terminate(
        postback_service_pb2.AckPostbacksResponse(applied_count=1), (), grpc.StatusCode.OK, ""
    )
    stream.send_response(event(2, ack_id="a2", payload="BAD"))
    _, nack, rpc = fake.take_unary_unary(ACK_METHOD)
    assert (list(nack.ack_ids), list(nack.nack_ids)) == ([], ["a2"])
    rpc.terminate(
        postback_service_pb2.AckPostbacksResponse(applied_count=1), (), grpc.StatusCode.OK, ""
    )
    assert future.result(timeout=10) == 2
    assert handled == ["GOOD", "BAD"]
