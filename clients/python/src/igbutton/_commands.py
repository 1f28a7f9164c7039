"""What the ``igbutton`` subcommands send, tail, tap and doctor do (parsing lives in cli.py)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc

from igbutton._channel import Tls
from igbutton.buttons import Button, PostbackButton, UrlButton
from igbutton.errors import IgButtonError, from_rpc_error
from igbutton.sync_client import Client
from igbutton.v1 import account_service_pb2 as account_pb
from igbutton.v1 import account_service_pb2_grpc


class UsageError(Exception):
    """The arguments are inconsistent; reported as one line with exit code 2."""


def _say(command: str, text: str) -> None:
    print(f"igbutton {command}: {text}", file=sys.stderr, flush=True)


def _client(args: argparse.Namespace, timeout: float | None = None) -> Client:
    token: str | None = args.token
    if args.token_file:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UsageError(f"cannot read --token-file: {exc.strerror}") from None
    tls: Tls | None = None
    if args.tls or args.ca_file or args.cert_file or args.key_file or args.server_name:
        if bool(args.cert_file) != bool(args.key_file):
            raise UsageError("--cert-file and --key-file go together")
        try:
            tls = Tls.from_files(args.ca_file, args.cert_file, args.key_file, args.server_name)
        except OSError as exc:
            raise UsageError(f"cannot read {exc.filename}: {exc.strerror}") from None
    return Client(args.addr, token=token or None, tls=tls, timeout=timeout)


def _failure(command: str, args: argparse.Namespace, err: IgButtonError) -> int:
    hint = ""
    if err.code is grpc.StatusCode.UNAVAILABLE and err.reason is None:
        hint = f" (is igbutton running at {args.addr}?)"
    _say(command, err.describe() + hint)
    return 1


def send(args: argparse.Namespace) -> int:
    """``igbutton send``: one button template; prints the message id."""
    buttons: list[Button] = [
        UrlButton(title, value) if kind == "url" else PostbackButton(title, value)
        for kind, title, value in args.buttons
    ]
    if not buttons:
        raise UsageError("give at least one --url-button or --postback-button")
    with _client(args, timeout=args.timeout) as client:
        try:
            if args.dry_run:
                check = client.validate_button_template(
                    args.to, args.text, buttons, account_id=args.account, tag=args.tag
                )
                result: dict[str, Any] = {
                    "method": check.method,
                    "url": check.url,
                    "body": check.body,
                }
                print(json.dumps(result, indent=None if args.json else 2, ensure_ascii=False))
                return 0
            sent = client.send_button_template(
                args.to,
                args.text,
                buttons,
                account_id=args.account,
                request_id=args.request_id,
                tag=args.tag,
            )
        except IgButtonError as err:
            return _failure("send", args, err)
    if args.json:
        print(json.dumps(dataclasses.asdict(sent)))
    else:
        print(f"sent {sent.message_id} to {sent.recipient_id} (request id {sent.request_id})")
    return 0


def parse_start(text: str) -> tuple[str | datetime | None, int | None]:
    """``--from``: (start, after_sequence) for latest, earliest, a sequence or an ISO time."""
    if text in ("latest", "earliest"):
        return text, None
    if text.isdigit():
        return None, int(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"--from expects latest, earliest, a sequence number or an ISO 8601 time, not {text!r}"
        ) from None
    return (when if when.tzinfo else when.astimezone()), None


def _describe_filters(args: argparse.Namespace) -> str:
    accounts = ", ".join(args.account) if args.account else "all accounts"
    prefix = f"payloads starting {args.prefix!r}" if args.prefix else "any payload"
    where = f"group {args.group}" if args.group else f"from {args.start}"
    return f"{accounts}; {prefix}; {where}"


def tail(args: argparse.Namespace) -> int:
    """``igbutton tail``: one JSON line per postback; in a group, acknowledge after printing."""
    start, after = parse_start(args.start)

    def report(err: IgButtonError, delay: float) -> None:
        _say("tail", f"stream lost ({err.describe()}); reconnecting in {delay:.1f}s")

    printed = 0
    with _client(args) as client:
        subscription = client.subscribe(
            account_ids=args.account,
            payload_prefix=args.prefix,
            start=start,
            after_sequence=after,
            group=args.group,
            ack_deadline=args.ack_deadline,
            on_disconnect=report,
        )
        _say("tail", f"subscribing to {args.addr} ({_describe_filters(args)})")
        try:
            with subscription:
                subscription.wait_subscribed()
                _say("tail", "subscribed, waiting for postbacks; Ctrl-C stops")
                for postback in subscription:
                    sys.stdout.write(json.dumps(postback.to_dict(), ensure_ascii=False) + "\n")
                    sys.stdout.flush()
                    if args.group:
                        _ack(client, args.group, postback.ack_id)
                    printed += 1
                    if args.count is not None and printed >= args.count:
                        break
        except IgButtonError as err:
            return _failure("tail", args, err)
        except KeyboardInterrupt:
            _say("tail", f"stopped after {printed} postbacks")
            return 130
        except BrokenPipeError:
            # The reader had enough (``igbutton tail | head -1``); in a group, the postback
            # that could not be printed was not acknowledged and comes again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
    return 0


def _ack(client: Client, group: str, ack_id: str) -> None:
    try:
        result = client.ack(group, [ack_id])
    except IgButtonError as err:
        _say("tail", f"could not acknowledge ({err.describe()}); it will be delivered again")
        return
    if result.unknown_ack_ids:
        _say("tail", "acknowledged too late; the postback will be delivered again")


def tap(args: argparse.Namespace) -> int:
    """``igbutton tap``: ask the sandbox to tap a button (stdlib HTTP, no extra dependency)."""
    base = args.sandbox_url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise UsageError(f"--sandbox-url must be an http(s) URL, not {args.sandbox_url!r}")
    body = json.dumps({"message_id": args.message_id, "button_index": args.button - 1})
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
        f"{base}/_sandbox/tap",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - checked
            answer: dict[str, Any] = json.load(response)
    except urllib.error.HTTPError as err:
        note = " (--button N is the sandbox's button_index N-1)" if err.code == 400 else ""
        _say("tap", f"the sandbox refused ({err.code}): {_error_text(err)}{note}")
        return 1
    except urllib.error.URLError as err:
        _say(
            "tap",
            f"cannot reach the sandbox at {base} ({err.reason}); "
            "is 'igbutton serve --sandbox' running?",
        )
        return 1
    except (OSError, ValueError) as err:
        _say("tap", f"no usable answer from the sandbox at {base}: {err}")
        return 1
    status = answer.get("webhook_status")
    delivered = isinstance(status, int) and 200 <= status < 300
    if args.json:
        print(json.dumps(answer, ensure_ascii=False))
    elif delivered:
        print(
            f"tapped {answer.get('title')!r} on {args.message_id}: postback "
            f"{answer.get('payload')!r} delivered (webhook answered {status})"
        )
    if not delivered:
        why = answer.get("webhook_error") or f"it answered {status}"
        _say("tap", f"tapped, but igbutton's webhook did not take the postback: {why}")
        return 1
    return 0


def _error_text(err: urllib.error.HTTPError) -> str:
    try:
        data = json.load(err)
    except (OSError, ValueError):
        return err.reason if isinstance(err.reason, str) else str(err)
    if isinstance(data, dict) and "error" in data:
        return str(data["error"])
    return json.dumps(data)


_SEVERITY = {
    account_pb.FINDING_SEVERITY_OK: "OK",
    account_pb.FINDING_SEVERITY_WARNING: "WARNING",
    account_pb.FINDING_SEVERITY_ERROR: "ERROR",
}


def _finding_line(account_id: str, check: str, severity: str, message: str, action: str) -> str:
    line = f"{account_id} {check}: {severity} {message}"
    return f"{line} -- {action}" if action else line


def doctor(args: argparse.Namespace) -> int:
    """``igbutton doctor [--fix]``: CheckAccount for each account, one line per finding;
    with --fix, SubscribeAccount where the subscription is incomplete. Exit 1 on any ERROR."""
    errors = 0
    with _client(args, timeout=args.timeout) as client:
        stub = account_service_pb2_grpc.AccountServiceStub(client.channel)
        metadata = client.metadata
        try:
            listed = stub.ListAccounts(
                account_pb.ListAccountsRequest(), timeout=args.timeout, metadata=metadata
            ).accounts
            wanted = [a.id for a in listed if not args.account or a.id in args.account]
            missing = sorted(set(args.account) - {a.id for a in listed})
            for account_id in missing:
                print(
                    _finding_line(
                        account_id,
                        "account",
                        "ERROR",
                        "not an account this caller may use",
                        "check the id, or the caller's accounts in igbutton's callers setting",
                    )
                )
                errors += 1
            if not wanted and not missing:
                _say("doctor", "no account is configured (or this caller may use none)")
                return 1
            for account_id in wanted:
                errors += _doctor_account(stub, metadata, account_id, args)
        except grpc.RpcError as err:
            return _failure("doctor", args, from_rpc_error(err))
    return 1 if errors else 0


def _doctor_account(
    stub: account_service_pb2_grpc.AccountServiceStub,
    metadata: tuple[tuple[str, str], ...],
    account_id: str,
    args: argparse.Namespace,
) -> int:
    """Print one account's findings (fixing the subscription with --fix); the ERROR count."""
    checked = stub.CheckAccount(
        account_pb.CheckAccountRequest(account_id=account_id),
        timeout=args.timeout,
        metadata=metadata,
    )
    errors = 0
    for finding in checked.findings:
        severity = _SEVERITY.get(finding.severity, "ERROR")
        if args.fix and finding.check == "subscription" and severity != "OK":
            try:
                fixed = stub.SubscribeAccount(
                    account_pb.SubscribeAccountRequest(account_id=account_id),
                    timeout=args.timeout,
                    metadata=metadata,
                )
            except grpc.RpcError as err:
                print(
                    _finding_line(
                        account_id,
                        "subscription",
                        "ERROR",
                        f"{finding.message}; subscribing failed: {from_rpc_error(err).describe()}",
                        finding.action,
                    )
                )
                errors += 1
                continue
            fields = ", ".join(fixed.subscribed_fields) or "nothing"
            print(
                _finding_line(
                    account_id, "subscription", "FIXED", f"now subscribed to {fields}", ""
                )
            )
            continue
        print(_finding_line(account_id, finding.check, severity, finding.message, finding.action))
        if severity == "ERROR":
            errors += 1
    return errors
