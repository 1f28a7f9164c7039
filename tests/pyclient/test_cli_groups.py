"""``igbutton groups``, ``dead-letters``, ``seek`` and ``window`` as subprocesses against a
real ``igbutton serve --sandbox`` process; the group is fed by the Python client."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from igbutton import Client, PostbackButton
from igbutton.models import Postback
from tests.pyclient.conftest import ServerProcess, run_cli

RECIPIENT = "1234567890123456"
ACCOUNT = "17841400000000000"  # the sandbox's account, igbutton serve --sandbox's default


def cli(server: ServerProcess, *args: str) -> str:
    """Run ``igbutton ARGS --addr <server>``, insist on exit 0, return stdout."""
    result = run_cli(*args, "--addr", server.addr)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("groups", ["NAME", "--json"]),
        ("dead-letters", ["--redrive", "--all", "--purge", "--json"]),
        ("seek", ["--to", "SEQ|TIME"]),
        ("window", ["ACCOUNT", "IGSID", "--json"]),
    ],
)
def test_each_operating_command_has_help(command: str, expected: list[str]) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    for option in expected:
        assert option in result.stdout


def test_groups_dead_letters_seek_and_window(server_process: ServerProcess) -> None:
    server = server_process
    with Client(server.addr) as client:
        sent = client.send_button_template(RECIPIENT, "Pick one", [PostbackButton("Yes", "YES")])
        with client.subscribe(group="billing", ack_deadline=60) as subscription:
            subscription.wait_subscribed()
            deliveries: Iterator[Postback] = iter(subscription)
            tapped = run_cli("tap", sent.message_id, "--sandbox-url", server.sandbox_url)
            assert tapped.returncode == 0, tapped.stderr
            # Nacked on every attempt (5 by default): dead-lettered.
            for attempt in range(1, 6):
                postback = next(deliveries)
                assert (postback.payload, postback.delivery_attempt) == ("YES", attempt)
                client.ack("billing", nack_ids=[postback.ack_id])
            sequence = postback.sequence

            listed = json.loads(cli(server, "groups", "--json"))
            assert [(g["name"], g["dead_letters"], g["unacked"]) for g in listed] == [
                ("groups/billing", 1, 0)
            ]
            table = cli(server, "groups").splitlines()
            assert table[0].split()[:2] == ["NAME", "MEMBERS"]
            assert table[1].split()[:2] == ["groups/billing", "1"]
            detail = cli(server, "groups", "billing")
            assert "dead letters:" in detail
            assert "ack deadline:      60s" in detail

            dead = json.loads(cli(server, "dead-letters", "billing", "--json"))
            assert [(d["sequence"], d["reason"], d["delivery_attempts"]) for d in dead] == [
                (sequence, "nacked", 5)
            ]
            assert "nacked" in cli(server, "dead-letters", "billing")
            redriven = cli(server, "dead-letters", "billing", "--redrive", str(sequence))
            assert redriven.startswith("redrove 1 dead letters")
            again = next(deliveries)
            assert (again.sequence, again.delivery_attempt) == (sequence, 1)
            client.ack("billing", [again.ack_id])

            sought = cli(server, "seek", "billing", "--to", str(sequence - 1))
            assert "delivered again" in sought
            once_more = next(deliveries)
            assert (once_more.sequence, once_more.delivery_attempt) == (sequence, 1)
            client.ack("billing", [once_more.ack_id])

    window = json.loads(cli(server, "window", ACCOUNT, RECIPIENT, "--json"))
    assert (window["state"], window["human_agent_state"]) == ("open", "open")
    assert "without a tag" in cli(server, "window", ACCOUNT, RECIPIENT)
    unknown = cli(server, "window", ACCOUNT, "999")
    assert unknown.startswith("unknown")
    assert json.loads(cli(server, "dead-letters", "billing", "--purge", "--json")) == {"purged": 0}


def test_a_missing_group_is_one_line_and_exit_1(server_process: ServerProcess) -> None:
    result = run_cli("groups", "nope", "--addr", server_process.addr)
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1
    assert "GROUP_NOT_FOUND" in result.stderr
