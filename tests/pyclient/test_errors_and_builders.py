"""Pure pieces of the client: the reason → exception table, builders, --from parsing."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest

from igbutton import ButtonTemplate, PostbackButton, UrlButton, template
from igbutton._commands import UsageError, parse_start
from igbutton._requests import SubscribeOptions
from igbutton._retry import RetryPolicy
from igbutton.errors import (
    ERROR_DOMAIN,
    IgButtonError,
    InvalidArgumentError,
    UnavailableError,
    error_class,
)
from igbutton.v1 import errors_pb2, postback_service_pb2

REASONS = [
    name.removeprefix("ERROR_REASON_")
    for name in errors_pb2.ErrorReason.keys()  # noqa: SIM118 - a proto enum, not a dict
    if name != "ERROR_REASON_UNSPECIFIED"
]


@pytest.mark.parametrize("reason", REASONS)
def test_every_error_reason_has_its_own_exception_class(reason: str) -> None:
    cls = error_class(grpc.StatusCode.UNKNOWN, reason, ERROR_DOMAIN)
    words = reason.lower().split("_")
    assert cls.__name__.lower().startswith(words[0]), (reason, cls.__name__)
    assert cls.__name__.endswith("Error")
    assert issubclass(cls, IgButtonError)


def test_a_foreign_domain_falls_back_to_the_status_code_class() -> None:
    assert error_class(grpc.StatusCode.UNAVAILABLE, "RATE_LIMITED", "googleapis.com") is (
        UnavailableError
    )
    assert error_class(grpc.StatusCode.INVALID_ARGUMENT, None, None) is InvalidArgumentError
    assert error_class(grpc.StatusCode.ABORTED, None, None) is IgButtonError


def test_template_builders_compose() -> None:
    url, postback = UrlButton("A", "https://a.example"), PostbackButton("B", "P")
    t = template("Pick", url).with_button(postback)
    assert t == ButtonTemplate("Pick", (url, postback))
    proto = t.to_proto()
    assert [b.WhichOneof("action") for b in proto.buttons] == ["url", "postback"]


def test_subscribe_options_build_each_start() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert SubscribeOptions().request().WhichOneof("start") is None
    assert SubscribeOptions(start="earliest").request().position == (
        postback_service_pb2.START_POSITION_EARLIEST
    )
    assert SubscribeOptions(after_sequence=41).request().after_sequence == 41
    assert SubscribeOptions(start=when).request().since_time.ToDatetime(tzinfo=UTC) == when
    group = SubscribeOptions(group="g", ack_deadline=1.5, max_unacked=7).request()
    assert (group.group, group.ack_deadline.ToMilliseconds(), group.max_unacked) == ("g", 1500, 7)
    with pytest.raises(ValueError, match="either start or after_sequence"):
        SubscribeOptions(start="earliest", after_sequence=3)
    with pytest.raises(ValueError, match="latest"):
        SubscribeOptions(start="newest")
    with pytest.raises(ValueError, match="timezone-aware"):
        SubscribeOptions(start=datetime(2026, 1, 1)).request()
    with pytest.raises(TypeError):
        SubscribeOptions(account_ids="17841400000000000")  # type: ignore[arg-type]


def test_parse_start_reads_every_form() -> None:
    assert parse_start("latest") == ("latest", None)
    assert parse_start("earliest") == ("earliest", None)
    assert parse_start("42") == (None, 42)
    start, after = parse_start("2026-01-02T03:04:05Z")
    assert after is None
    assert start == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    naive, _ = parse_start("2026-01-02T03:04:05")
    assert isinstance(naive, datetime)
    assert naive.tzinfo is not None
    with pytest.raises(UsageError, match="--from expects"):
        parse_start("yesterday")


def test_retry_delays_stay_within_bounds() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=0.3)
    for retry in range(6):
        assert 0 <= policy.delay(retry) <= 0.3
    assert policy.delay(0, server_hint=2.0) == 2.0
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
