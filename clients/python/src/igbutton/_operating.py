"""What ``igbutton groups``, ``dead-letters``, ``seek`` and ``window`` do (parsing lives in
cli.py): tables for people, ``--json`` for scripts."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from igbutton._commands import UsageError, _client, _failure
from igbutton.errors import IgButtonError
from igbutton.group_models import DeadLetter, Group
from igbutton.sync_client import Client


def run(args: argparse.Namespace) -> int:
    """Run one of the operating commands."""
    with _client(args, timeout=30.0) as client:
        try:
            if args.command == "groups":
                return _groups(client, args)
            if args.command == "dead-letters":
                return _dead_letters(client, args)
            if args.command == "seek":
                return _seek(client, args)
            return _window(client, args)
        except IgButtonError as err:
            return _failure(args.command, args, err)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(isinstance(r[i], int) for r in rows) and bool(rows) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [
            cell.rjust(w) if numeric[i] else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _age(value: timedelta | None) -> str:
    if value is None:
        return "-"
    seconds = int(value.total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _groups(client: Client, args: argparse.Namespace) -> int:
    if args.name:
        group = client.get_group(args.name)
        if args.json:
            print(json.dumps(group.to_dict()))
        else:
            print(_describe(group))
        return 0
    groups = client.list_groups()
    if args.json:
        print(json.dumps([g.to_dict() for g in groups]))
        return 0
    if not groups:
        print("no groups")
        return 0
    rows = [
        (
            g.name,
            g.connected_members,
            g.last_delivered_sequence,
            g.backlog,
            g.unacked,
            g.redelivered,
            g.dead_letters,
            _age(g.oldest_unacked_age),
        )
        for g in groups
    ]
    headers = ("NAME", "MEMBERS", "POSITION", "BACKLOG", "UNACKED", "REDELIVERED", "DEAD")
    print(table((*headers, "OLDEST UNACKED"), rows))
    return 0


def _describe(group: Group) -> str:
    fields: list[tuple[str, Any]] = [
        ("name", group.name),
        ("caller", group.caller or "-"),
        ("accounts", ", ".join(group.account_ids) or "all"),
        ("payload prefix", group.payload_prefix or "-"),
        ("start", group.start),
        ("ack deadline", f"{group.ack_deadline.total_seconds():g}s"),
        ("max attempts", group.max_delivery_attempts),
        ("members connected", group.connected_members),
        ("position", group.last_delivered_sequence),
        ("backlog", group.backlog),
        ("unacknowledged", group.unacked),
        ("redelivered", group.redelivered),
        ("dead letters", group.dead_letters),
        ("oldest unacked", _age(group.oldest_unacked_age)),
    ]
    width = max(len(k) for k, _ in fields)
    return "\n".join(f"{k + ':':<{width + 1}} {v}" for k, v in fields)


def _dead_letters(client: Client, args: argparse.Namespace) -> int:
    if args.purge:
        count = client.purge_dead_letters(args.name)
        print(json.dumps({"purged": count}) if args.json else f"purged {count} dead letters")
        return 0
    if args.redrive or args.all:
        count = client.redrive_dead_letters(args.name, None if args.all else args.redrive)
        asked = "all" if args.all else len(args.redrive)
        if args.json:
            print(json.dumps({"redriven": count}))
        else:
            print(f"redrove {count} dead letters (asked: {asked})")
        return 0
    letters: list[DeadLetter] = []
    token = ""
    while True:
        page = client.list_dead_letters(args.name, page_size=1000, page_token=token)
        letters.extend(page.dead_letters)
        token = page.next_page_token
        if not token:
            break
    if args.json:
        print(json.dumps([d.to_dict() for d in letters], ensure_ascii=False))
        return 0
    if not letters:
        print("no dead letters")
        return 0
    rows = [
        (
            d.postback.sequence,
            d.reason,
            d.delivery_attempts,
            _iso(d.dead_letter_time),
            d.postback.account_id,
            d.postback.payload[:40],
        )
        for d in letters
    ]
    print(table(("SEQ", "REASON", "ATTEMPTS", "DEAD SINCE", "ACCOUNT", "PAYLOAD"), rows))
    return 0


def _seek(client: Client, args: argparse.Namespace) -> int:
    target: str = args.to
    if target.isdigit():
        client.seek_group(args.name, after_sequence=int(target))
        print(f"sought {args.name}: everything after sequence {target} is delivered again")
        return 0
    try:
        when = datetime.fromisoformat(target)
    except ValueError:
        raise UsageError(
            f"--to expects a sequence number or an ISO 8601 time, not {target!r}"
        ) from None
    when = when if when.tzinfo else when.astimezone()
    client.seek_group(args.name, since=when)
    print(f"sought {args.name}: everything received since {when.isoformat()} is delivered again")
    return 0


def _window(client: Client, args: argparse.Namespace) -> int:
    window = client.get_messaging_window(args.igsid, account_id=args.account)
    if args.json:
        print(json.dumps(window.to_dict()))
        return 0
    if window.state == "unknown":
        print(f"unknown: igbutton has seen no message from {args.igsid} (Meta decides)")
        return 0
    print(
        table(
            ("SEND", "STATE", "UNTIL"),
            [
                ("without a tag", window.state, _iso(window.close_time)),
                ("HUMAN_AGENT", window.human_agent_state, _iso(window.human_agent_close_time)),
            ],
        )
    )
    print(f"last message seen: {_iso(window.last_message_time)}", file=sys.stdout)
    return 0


def _iso(value: datetime | None) -> str:
    return "-" if value is None else value.isoformat(timespec="seconds").replace("+00:00", "Z")
