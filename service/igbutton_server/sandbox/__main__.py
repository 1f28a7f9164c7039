"""Run the sandbox on its own: ``python -m igbutton_server.sandbox --port 8765``."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from igbutton_server import event_loop
from igbutton_server.sandbox.server import Sandbox


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m igbutton_server.sandbox",
        description="A local stand-in for Instagram's Graph API send endpoint, with a "
        "control API under /_sandbox/ to inspect sends, inject faults and tap buttons.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=8765, help="port; 0 picks a free one")
    parser.add_argument("--webhook-url", help="where taps deliver the postback webhook")
    parser.add_argument(
        "--app-secret-file", type=Path, help="file holding the app secret that signs webhooks"
    )
    parser.add_argument(
        "--token",
        action="append",
        default=[],
        metavar="ACCOUNT=TOKEN",
        help="accept only this token for this account (repeatable); "
        "without any, every non-empty token is accepted",
    )
    parser.add_argument(
        "--token-lifetime-seconds",
        type=float,
        default=60 * 24 * 3600,
        help="how long tokens issued on refresh are valid (default: Meta's 60 days)",
    )
    parser.add_argument(
        "--min-refresh-age-seconds",
        type=float,
        default=24 * 3600,
        help="how old a token must be to be refreshed (default: Meta's 24 hours)",
    )
    parser.add_argument(
        "--event-loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="the event loop to run on (default: uvloop)",
    )
    return parser


def _tokens(pairs: list[str]) -> dict[str, str]:
    tokens: dict[str, str] = {}
    for pair in pairs:
        account, sep, token = pair.partition("=")
        if not sep or not account or not token:
            raise ValueError("--token must look like ACCOUNT=TOKEN")
        tokens[account] = token
    return tokens


async def _run(args: argparse.Namespace, tokens: dict[str, str], secret: bytes | None) -> None:
    sandbox = Sandbox(
        args.host,
        args.port,
        tokens=tokens,
        token_lifetime_seconds=args.token_lifetime_seconds,
        min_refresh_age_seconds=args.min_refresh_age_seconds,
    )
    if args.webhook_url:
        sandbox.set_webhook(args.webhook_url, secret or b"")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await sandbox.start()
    try:
        print(f"sandbox listening on {sandbox.url}", flush=True)
        await stop.wait()
    finally:
        await sandbox.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m igbutton_server.sandbox``."""
    args = _parser().parse_args(argv)
    try:
        tokens = _tokens(args.token)
    except ValueError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 2
    secret: bytes | None = None
    if args.app_secret_file is not None:
        try:
            secret = args.app_secret_file.read_bytes().strip()
        except OSError as exc:
            print(f"sandbox: cannot read {args.app_secret_file}: {exc.strerror}", file=sys.stderr)
            return 2
    if args.webhook_url and not secret:
        print("sandbox: --webhook-url needs --app-secret-file to sign taps", file=sys.stderr)
        return 2
    try:
        event_loop.run(_run(args, tokens, secret), args.event_loop)
    except OSError as exc:
        print(f"sandbox: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
