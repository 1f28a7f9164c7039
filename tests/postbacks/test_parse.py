"""The webhook parser's rules for what is a postback, field by field."""

from __future__ import annotations

import json

import pytest

from igbutton_server.postbacks.parse import MalformedDelivery, parse_delivery
from igbutton_server.storage.postbacks import MAX_ID_BYTES, MAX_RAW_JSON_BYTES
from tests.postbacks.conftest import ACCOUNT, postback_item


def body(*items: object, entry: dict[str, object] | None = None) -> bytes:
    return json.dumps(
        {"object": "instagram", "entry": [{"id": ACCOUNT, "time": 7, "messaging": list(items)}]}
        if entry is None
        else {"object": "instagram", "entry": [entry]}
    ).encode()


def test_a_postback_keeps_every_field() -> None:
    (p,) = parse_delivery(body(postback_item("m1", payload="P", title="T", timestamp=5))).postbacks
    assert (p.account_id, p.sender_id, p.mid, p.title, p.payload, p.tap_time_ms) == (
        ACCOUNT,
        "1234567890123456",
        "m1",
        "T",
        "P",
        5,
    )
    assert json.loads(p.raw_json)["postback"]["mid"] == "m1"


def test_the_account_falls_back_to_the_entry_id_and_the_time_to_the_entry_time() -> None:
    item = postback_item("m1")
    del item["recipient"], item["timestamp"]
    (p,) = parse_delivery(body(item)).postbacks
    assert (p.account_id, p.tap_time_ms) == (ACCOUNT, 7)


def test_numeric_ids_are_accepted_as_text() -> None:
    item = postback_item("m1")
    item["sender"]["id"] = 42
    (p,) = parse_delivery(body(item)).postbacks
    assert p.sender_id == "42"


@pytest.mark.parametrize("timestamp", [-1, 10**20, "soon", True, float("inf")])
def test_an_unusable_time_becomes_the_entry_time(timestamp: object) -> None:
    item = postback_item("m1", timestamp=0)
    item["timestamp"] = timestamp
    (p,) = parse_delivery(body(item)).postbacks
    assert p.tap_time_ms == 7


@pytest.mark.parametrize(
    "change",
    [
        lambda i: i["postback"].pop("mid"),
        lambda i: i["postback"].update(mid=""),
        lambda i: i["postback"].update(mid=True),
        lambda i: i.pop("sender"),
        lambda i: i["postback"].update(payload={"not": "text"}),
        lambda i: i["postback"].update(title=["x"]),
        lambda i: i.update(postback="text"),
    ],
)
def test_a_postback_without_usable_identity_or_fields_is_skipped(change: object) -> None:
    item = postback_item("m1")
    change(item)  # type: ignore[operator]
    parsed = parse_delivery(body(item, postback_item("m2")))
    assert [p.mid for p in parsed.postbacks] == ["m2"]
    assert parsed.skipped == {"invalid_postback": 1}


@pytest.mark.parametrize("field", ["mid", "sender", "account"])
def test_an_id_over_the_bound_is_skipped_as_oversized(field: str) -> None:
    # Bytes, not characters: three-byte characters reach the bound at a third the length.
    ok = "\u20ac" * (MAX_ID_BYTES // 3)
    too_long = ok + "x" * (MAX_ID_BYTES - len(ok.encode()) + 1)
    kwargs = {"mid": "m1", "sender": "s", "account": ACCOUNT}
    parsed = parse_delivery(body(postback_item(**{**kwargs, field: ok})))
    assert len(parsed.postbacks) == 1
    parsed = parse_delivery(body(postback_item(**{**kwargs, field: too_long}), postback_item("m2")))
    assert [p.mid for p in parsed.postbacks] == ["m2"]
    assert parsed.skipped == {"oversized": 1}


def test_an_item_over_the_bound_is_skipped_as_oversized() -> None:
    for field in ("payload", "title", "extra"):
        item = postback_item("m1")
        item["postback"][field] = "x" * MAX_RAW_JSON_BYTES
        parsed = parse_delivery(body(item, postback_item("m2")))
        assert [p.mid for p in parsed.postbacks] == ["m2"]
        assert parsed.skipped == {"oversized": 1}


def test_a_lone_surrogate_is_not_stored_as_text() -> None:
    raw = body(postback_item("m1", payload="PAYLOAD")).replace(b"PAYLOAD", b"\\ud800")
    assert parse_delivery(raw).skipped == {"invalid_postback": 1}
    # Elsewhere in the item it survives, escaped, in the raw JSON.
    raw = body(postback_item("m1", extra_field="X")).replace(b'"X"', b'"\\udfff"')
    (p,) = parse_delivery(raw).postbacks
    assert "\\udfff" in p.raw_json


def test_other_fields_and_items_are_counted() -> None:
    entry = {"id": ACCOUNT, "changes": [{"field": "comments"}, {"field": "mentions"}]}
    assert parse_delivery(body(entry=entry)).skipped == {"changes": 2}
    parsed = parse_delivery(body({"message_edit": {}}, {"unknown": 1}, 3))
    assert parsed.skipped == {"message_edit": 1, "other": 1, "invalid_item": 1}


@pytest.mark.parametrize("raw", [b"", b"[]", b"null", b'{"entry": 1}', b"\xff", b"{" * 5000])
def test_bodies_that_are_not_deliveries(raw: bytes) -> None:
    with pytest.raises(MalformedDelivery):
        parse_delivery(raw)


# --- standby, the account's own postbacks, unknown accounts ---


def test_standby_postbacks_are_kept_marked_and_its_other_items_counted() -> None:
    entry = {
        "id": ACCOUNT,
        "time": 7,
        "messaging": [postback_item("tapped")],
        "standby": [postback_item("observed"), {"read": {"mid": "r"}}, "junk"],
    }
    parsed = parse_delivery(body(entry=entry))
    assert [(p.mid, p.standby) for p in parsed.postbacks] == [
        ("tapped", False),
        ("observed", True),
    ]
    assert parsed.skipped == {"read": 1, "invalid_item": 1}


def test_an_entry_with_only_a_standby_array_is_read() -> None:
    entry = {"id": ACCOUNT, "time": 7, "standby": [postback_item("observed")]}
    (p,) = parse_delivery(body(entry=entry)).postbacks
    assert (p.mid, p.account_id, p.standby, p.tap_time_ms) == (
        "observed",
        ACCOUNT,
        True,
        1_502_905_976_377,
    )


def test_a_standby_field_that_is_not_a_list_makes_the_entry_invalid() -> None:
    entry = {"id": ACCOUNT, "messaging": [postback_item("m1")], "standby": {"x": 1}}
    parsed = parse_delivery(body(entry=entry))
    assert (parsed.postbacks, parsed.skipped) == ([], {"invalid_entry": 1})


@pytest.mark.parametrize("where", ["recipient", "entry"])
def test_a_postback_sent_by_the_account_itself_is_skipped_as_self_sent(where: str) -> None:
    # An echo of the business's own action names the account as the sender: with the
    # account as the recipient too, or with the person as the recipient and the account
    # only in the entry's id.
    echo = postback_item("echo", sender=ACCOUNT, account=ACCOUNT if where == "recipient" else "9")
    parsed = parse_delivery(body(echo, postback_item("tap")))
    assert [p.mid for p in parsed.postbacks] == ["tap"]
    assert parsed.skipped == {"self_sent": 1}


def test_a_self_sent_standby_postback_is_skipped_too() -> None:
    entry = {"id": ACCOUNT, "standby": [postback_item("echo", sender=ACCOUNT)]}
    parsed = parse_delivery(body(entry=entry))
    assert (parsed.postbacks, parsed.skipped) == ([], {"self_sent": 1})


def test_postbacks_of_accounts_not_named_are_skipped_as_unknown_account() -> None:
    delivery = json.dumps(
        {
            "object": "instagram",
            "entry": [
                {"id": ACCOUNT, "messaging": [postback_item("ours")]},
                {"id": "555", "messaging": [postback_item("a", account="555")]},
                {"id": "555", "standby": [postback_item("b", account="555")]},
                {"id": "666", "messaging": [postback_item("c", account="666")]},
            ],
        }
    ).encode()
    parsed = parse_delivery(delivery, frozenset({ACCOUNT}))
    assert [p.mid for p in parsed.postbacks] == ["ours"]
    assert parsed.skipped == {"unknown_account": 3}
    assert parsed.unknown_accounts == {"555", "666"}
    # Without a list of accounts, every account's postbacks are kept.
    every = parse_delivery(delivery)
    assert [p.mid for p in every.postbacks] == ["ours", "a", "b", "c"]
    assert (every.skipped, every.unknown_accounts) == ({}, set())


def dashboard_entry(**value: object) -> dict[str, object]:
    """What the App Dashboard's Test button sends for messaging_postbacks."""
    sample: dict[str, object] = {
        "sender": {"id": "12334"},
        "recipient": {"id": "23245"},
        "timestamp": "1527459824",
        "postback": {"mid": "random_mid", "title": "TITLE", "payload": "PAYLOAD"},
    }
    sample.update(value)
    return {
        "id": "0",
        "time": 1700000000123,
        "changes": [{"field": "messaging_postbacks", "value": sample}],
    }


def test_a_dashboard_test_delivery_is_kept_as_a_test_postback_of_any_account() -> None:
    parsed = parse_delivery(body(entry=dashboard_entry()), accounts={ACCOUNT})
    [postback] = parsed.postbacks
    assert postback.test is True
    assert postback.standby is False
    assert (postback.account_id, postback.sender_id) == ("23245", "12334")
    assert postback.mid == "random_mid#test-1700000000123"
    assert (postback.title, postback.payload) == ("TITLE", "PAYLOAD")
    assert postback.tap_time_ms == 1700000000123  # the string timestamp is not a time
    assert json.loads(postback.raw_json)["postback"]["mid"] == "random_mid"
    assert parsed.skipped == {}


def test_a_malformed_dashboard_test_postback_is_skipped_as_invalid() -> None:
    parsed = parse_delivery(body(entry=dashboard_entry(sender={})))
    assert parsed.postbacks == []
    assert parsed.skipped == {"invalid_postback": 1}


def test_a_self_test_change_is_collected_and_never_a_postback() -> None:
    entry = {
        "id": ACCOUNT,
        "changes": [
            {"field": "igbutton_self_test", "value": {"nonce": "abc123"}},
            {"field": "igbutton_self_test", "value": {"nonce": 5}},
            {"field": "messaging_postbacks", "value": "not an object"},
        ],
    }
    parsed = parse_delivery(body(entry=entry))
    assert parsed.self_tests == ["abc123"]
    assert parsed.postbacks == []
    assert parsed.skipped == {"changes": 2}
