"""Property-based: whatever arrives at the webhook, the answer is a clear status, a rejected
delivery stores nothing, and an accepted one stores exactly the postbacks it reports."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from igbutton_server.app import App
from igbutton_server.postbacks.parse import MalformedDelivery, parse_delivery
from igbutton_server.postbacks.webhook import sign
from tests.conftest import AppFactory
from tests.postbacks.conftest import ROTATED_SECRET, SECRET, WebhookClient, appended_during

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
good_ids = st.text(min_size=1, max_size=12)
odd_values = st.one_of(st.integers(min_value=-(2**64), max_value=2**64), json_values)


@st.composite
def postback_items(draw: st.DrawFn) -> dict[str, Any]:
    """Postback items: three in four well formed, the rest with one field dropped or odd."""
    item: dict[str, Any] = {
        "sender": {"id": draw(good_ids)},
        "recipient": {"id": draw(good_ids)},
        "timestamp": draw(st.integers(min_value=0, max_value=2**45)),
        "postback": {
            "mid": draw(st.uuids()).hex,
            "title": draw(st.text(max_size=30)),
            "payload": draw(st.text(max_size=50)),
        },
    }
    if draw(st.integers(0, 3)) == 0:
        where = draw(
            st.sampled_from(
                ["sender", "recipient", "timestamp", "postback", "mid", "title", "payload"]
            )
        )
        holder = item["postback"] if where in ("mid", "title", "payload") else item
        if draw(st.booleans()):
            holder.pop(where)
        elif where in ("sender", "recipient"):
            holder[where] = {"id": draw(odd_values)}
        else:
            holder[where] = draw(odd_values)
    return item


other_items = st.fixed_dictionaries(
    {"sender": st.just({"id": "1"}), "recipient": st.just({"id": "2"})},
    optional={"message": json_values, "read": json_values, "reaction": json_values},
)
items = st.one_of(postback_items(), postback_items(), postback_items(), other_items, json_values)
entries = st.one_of(
    st.fixed_dictionaries(
        {"id": good_ids, "messaging": st.lists(items, min_size=1, max_size=6)},
        optional={"time": json_values, "changes": json_values},
    ),
    st.fixed_dictionaries({}, optional={"id": odd_values, "messaging": json_values}),
)
structured = st.fixed_dictionaries(
    {"entry": st.lists(entries, min_size=1, max_size=3)},
    optional={"object": st.sampled_from(["instagram", "page", "user"])},
)
documents = st.one_of(
    structured,
    structured,
    structured,
    st.fixed_dictionaries({"entry": json_values}),
    json_values,
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """Serialised documents, sometimes cut short, re-encoded or replaced by raw bytes."""
    kind = draw(st.sampled_from(["json"] * 5 + ["truncated", "utf16", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    text = json.dumps(draw(documents), ensure_ascii=draw(st.booleans()))
    if kind == "truncated" and text:
        text = text[: draw(st.integers(min_value=0, max_value=len(text) - 1))]
    if kind == "utf16":
        return text.encode("utf-16")
    return text.encode("utf-8", "surrogatepass")


@pytest.fixture
async def app(start_app: AppFactory) -> App:
    """An App that keeps every account's postbacks, as ``parse_delivery`` does without a
    list of accounts: the ids drawn here are arbitrary."""
    return await start_app(webhook={"accept_unknown_accounts": True})


def _expected_postbacks(body: bytes) -> int | None:
    try:
        return len(parse_delivery(body).postbacks)
    except MalformedDelivery:
        return None


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=bodies(), signing=st.sampled_from(["good", "good", "rotated", "missing", "wrong"]))
async def test_any_body_gets_a_clear_status_and_rejections_store_nothing(
    app: App, webhook: WebhookClient, body: bytes, signing: str
) -> None:
    signature: str | None = {
        "good": sign(body, SECRET),
        "rotated": sign(body, ROTATED_SECRET),
        "missing": None,
        "wrong": sign(body + b" ", SECRET),
    }[signing]
    (status, answer), stored = await appended_during(
        app, webhook.post(body, secret=None, signature=signature)
    )
    expected = _expected_postbacks(body)
    event(f"status {status}, {'some' if stored else 'no'} postbacks stored")
    if signing == "missing":
        assert status == 401
    elif signing == "wrong":
        assert status == 403
    elif expected is None:
        assert status == 400
    else:
        assert status == 200, answer
        assert answer["stored"] + answer["duplicates"] == expected
        assert len(stored) == answer["stored"]
        return
    assert stored == []
    assert isinstance(answer, dict)
    assert set(answer) == {"error"}


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(st.one_of(postback_items(), other_items), min_size=1, max_size=20))
async def test_a_signed_delivery_stores_exactly_its_valid_postbacks(
    app: App, webhook: WebhookClient, batch: list[dict[str, Any]]
) -> None:
    body = json.dumps({"object": "instagram", "entry": [{"id": "entry-id", "messaging": batch}]})
    expected = parse_delivery(body.encode()).postbacks
    (status, answer), stored = await appended_during(app, webhook.post(body.encode()))
    assert status == 200, answer
    assert answer["stored"] + answer["duplicates"] == len(expected)
    new = [(p.account_id, p.mid) for p in stored]
    # What was stored is the expected postbacks, in order, minus ones already in the log.
    assert new == [(p.account_id, p.mid) for p in expected if (p.account_id, p.mid) in set(new)]
    assert len(set(new)) == len(new)
    first = {}
    for p in expected:
        first.setdefault((p.account_id, p.mid), p)
    for p in stored:
        want = first[(p.account_id, p.mid)]
        assert (p.sender_id, p.title, p.payload, p.tap_time_ms, p.raw_json) == (
            want.sender_id,
            want.title,
            want.payload,
            want.tap_time_ms,
            want.raw_json,
        )
    event(f"{len(stored)} stored")
