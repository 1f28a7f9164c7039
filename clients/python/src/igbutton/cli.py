"""The ``igbutton`` command line: run the server or the sandbox, send, tail postbacks, tap,
check the accounts (doctor).

Exit codes: 0 success, 1 the call failed (one line on stderr says why), 2 bad arguments or
nothing to run, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any, NoReturn

from igbutton import __version__
from igbutton._channel import DEFAULT_TARGET

DEFAULT_SANDBOX_URL = "http://127.0.0.1:8765"

# The server distribution declares these commands as entry points (see its pyproject.toml):
# the client reads the metadata and never imports the server by name, so the dependency
# between the two distributions runs one way, server -> client.
SERVER_COMMANDS_GROUP = "igbutton.server_commands"
SERVER_DISTRIBUTION = "igbutton-server"
_SERVER_COMMANDS = {
    "serve": "run the igbutton server (same options as igbutton-server)",
    "sandbox": "run only the local Instagram sandbox",
}

_MAIN_EPILOG = """\
a first run, in three terminals:
  igbutton serve --sandbox
  igbutton tail
  igbutton send --to 1234567890 --text "Pick one" \\
      --url-button "Visit=https://example.com" --postback-button "Yes=ANSWER_YES"
  igbutton tap MESSAGE_ID --button 2        # MESSAGE_ID as printed by send
  igbutton doctor                           # is every account connected? --fix subscribes

environment: IGBUTTON_ADDR (gRPC address), IGBUTTON_TOKEN (caller token),
IGBUTTON_SANDBOX_URL (sandbox URL for tap)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def _button_spec(kind: str) -> type[argparse.Action]:
    """An action appending (kind, title, value) to ``buttons``, keeping command-line order."""

    class _AppendButton(argparse.Action):
        def __call__(
            self,
            parser: argparse.ArgumentParser,
            namespace: argparse.Namespace,
            values: str | Sequence[object] | None,
            option_string: str | None = None,
        ) -> None:
            assert isinstance(values, str)
            title, sep, value = values.partition("=")
            if not sep or not title or not value:
                what = "URL" if kind == "url" else "PAYLOAD"
                parser.error(f"{option_string} expects TITLE={what}, got {values!r}")
            buttons = list(getattr(namespace, "buttons", None) or [])
            buttons.append((kind, title, value))
            namespace.buttons = buttons

    return _AppendButton


def _connection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--addr",
        default=os.environ.get("IGBUTTON_ADDR", DEFAULT_TARGET),
        help="igbutton's gRPC address, host:port (default: $IGBUTTON_ADDR or %(default)s)",
    )
    group.add_argument(
        "--token",
        default=os.environ.get("IGBUTTON_TOKEN"),
        help="caller bearer token (default: $IGBUTTON_TOKEN; prefer it or --token-file, "
        "which other users cannot see in the process list)",
    )
    group.add_argument("--token-file", help="read the caller token from this file")
    group.add_argument("--tls", action="store_true", help="use TLS (system trust store)")
    group.add_argument("--ca-file", help="PEM CA bundle to trust (implies --tls)")
    group.add_argument("--cert-file", help="PEM client certificate for mutual TLS")
    group.add_argument("--key-file", help="PEM client private key for mutual TLS")
    group.add_argument("--server-name", help="name to check the server's certificate against")


def _parser() -> _Parser:
    parser = _Parser(
        prog="igbutton",
        description="Send Instagram button templates through igbutton and watch their postbacks.",
        epilog=_MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"igbutton {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    for name, summary in _SERVER_COMMANDS.items():
        # Handled before parsing (every argument goes to the server); listed here for --help.
        commands.add_parser(name, help=f"{summary}; see 'igbutton {name} --help'")

    send = commands.add_parser(
        "send",
        help="send a button template message",
        description="Send one button template: a text above 1 to 3 buttons, in the order given.",
        epilog='example:\n  igbutton send --to 1234567890 --text "Pick one" \\\n'
        '      --url-button "Visit=https://example.com" --postback-button "Yes=ANSWER_YES"',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    send.add_argument("--to", required=True, metavar="RECIPIENT", help="recipient's IGSID")
    send.add_argument("--text", required=True, help="the text above the buttons (1-640 chars)")
    send.add_argument(
        "--url-button",
        action=_button_spec("url"),
        metavar="TITLE=URL",
        help="a button opening URL (repeatable)",
    )
    send.add_argument(
        "--postback-button",
        action=_button_spec("postback"),
        metavar="TITLE=PAYLOAD",
        help="a button sending PAYLOAD back as a postback (repeatable)",
    )
    send.add_argument("--account", help="IG ID to send from (needed if several are configured)")
    send.add_argument("--request-id", help="idempotency key (a UUID); default: a fresh one")
    send.add_argument(
        "--tag", choices=["human-agent"], help="message tag, for human replies after 24 hours"
    )
    send.add_argument(
        "--dry-run",
        action="store_true",
        help="only validate, and print the Graph API request igbutton would make",
    )
    send.add_argument("--timeout", type=_positive_float, default=30.0, help="seconds (%(default)s)")
    send.add_argument("--json", action="store_true", help="print the result as JSON")
    _connection_options(send)
    send.set_defaults(buttons=[])

    tail = commands.add_parser(
        "tail",
        help="print postbacks as JSON lines as they arrive",
        description="Subscribe to postbacks and print one JSON object per line on stdout. "
        "Reconnects and resumes if the connection drops. With --group, each postback is "
        "acknowledged after it is printed.",
        epilog="examples:\n  igbutton tail --prefix ANSWER_\n"
        "  igbutton tail --from earliest --count 10\n"
        "  igbutton tail --group billing --ack-deadline 60",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tail.add_argument("--account", action="append", default=[], help="only this IG ID (repeatable)")
    tail.add_argument("--prefix", default="", help="only payloads starting with this")
    tail.add_argument(
        "--from",
        dest="start",
        default="latest",
        metavar="WHERE",
        help="latest (default), earliest, a sequence number SEQ (start after it: pass the last "
        "sequence you saw), or an ISO 8601 time (local unless it has an offset or Z)",
    )
    tail.add_argument("--group", help="join this consumer group (shared, acknowledged delivery)")
    tail.add_argument(
        "--ack-deadline",
        type=_positive_float,
        metavar="SECONDS",
        help="group only: redeliver if not acknowledged in time (server default 30)",
    )
    tail.add_argument("--count", type=_positive_int, help="exit after this many postbacks")
    _connection_options(tail)

    tap = commands.add_parser(
        "tap",
        help="tap a button of a message in the sandbox",
        description="Ask the local sandbox to tap a button of a message it received; for a "
        "postback button it delivers a signed webhook to igbutton, which streams it to "
        "subscribers (see 'igbutton tail').",
        epilog="example:\n  igbutton tap m_abc123 --button 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tap.add_argument("message_id", metavar="MESSAGE_ID", help="the message id printed by send")
    tap.add_argument(
        "--button",
        type=_positive_int,
        default=1,
        metavar="N",
        help="which button, counting from 1 (default 1)",
    )
    tap.add_argument(
        "--sandbox-url",
        default=os.environ.get("IGBUTTON_SANDBOX_URL", DEFAULT_SANDBOX_URL),
        help="the sandbox (default: $IGBUTTON_SANDBOX_URL or %(default)s)",
    )
    tap.add_argument("--json", action="store_true", help="print the sandbox's answer as JSON")

    doctor = commands.add_parser(
        "doctor",
        help="check that every account is connected, and say what to do",
        description="For each account the caller may use, check that its token works, that it "
        "is subscribed to the webhook fields messaging_postbacks and messages, that an app "
        "secret is configured and that igbutton's own webhook accepts a signed delivery (a "
        "self-test, never stored as a postback). One line per finding: ACCOUNT CHECK: "
        "OK|WARNING|ERROR what was found -- what to do. Exit 0 when nothing is an ERROR.",
        epilog="examples:\n  igbutton doctor\n  igbutton doctor --fix --account 17841400000000000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    doctor.add_argument(
        "--fix",
        action="store_true",
        help="subscribe accounts missing messaging_postbacks or messages (SubscribeAccount)",
    )
    doctor.add_argument(
        "--account", action="append", default=[], help="only this IG ID (repeatable)"
    )
    doctor.add_argument(
        "--timeout", type=_positive_float, default=60.0, help="seconds (%(default)s)"
    )
    _connection_options(doctor)
    _operating_commands(commands)
    return parser


def _operating_commands(commands: Any) -> None:
    """The commands over GroupService and the messaging window (admin callers)."""
    groups = commands.add_parser(
        "groups",
        help="list the consumer groups, or show one",
        description="A table of the groups (position, backlog, unacknowledged, dead letters, "
        "members), or every detail of one. NAME is a group's resource name, or in open mode "
        "its plain name. Needs an admin caller when callers are configured.",
        epilog="examples:\n  igbutton groups\n  igbutton groups billing --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    groups.add_argument("name", nargs="?", metavar="NAME", help="one group")
    groups.add_argument("--json", action="store_true", help="print JSON")
    _connection_options(groups)

    dead = commands.add_parser(
        "dead-letters",
        help="list, redrive or purge a group's dead letters",
        description="Without options: a table of the group's dead letters. --redrive SEQ... "
        "or --all delivers them to the group again from attempt 1; --purge removes them all.",
        epilog="examples:\n  igbutton dead-letters billing\n"
        "  igbutton dead-letters billing --redrive 41 42\n"
        "  igbutton dead-letters billing --all\n  igbutton dead-letters billing --purge",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dead.add_argument("name", metavar="NAME", help="the group")
    action = dead.add_mutually_exclusive_group()
    action.add_argument(
        "--redrive", nargs="+", type=_positive_int, metavar="SEQ", help="redrive these"
    )
    action.add_argument("--all", action="store_true", help="redrive every dead letter")
    action.add_argument("--purge", action="store_true", help="remove every dead letter")
    dead.add_argument("--json", action="store_true", help="print JSON")
    _connection_options(dead)

    seek = commands.add_parser(
        "seek",
        help="move a group back (or forward) in the log",
        description="Deliver again every postback after sequence SEQ, or received at or after "
        "TIME (ISO 8601, local unless it has an offset or Z), from attempt 1.",
        epilog="examples:\n  igbutton seek billing --to 1200\n"
        "  igbutton seek billing --to 2026-03-01T09:00Z",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    seek.add_argument("name", metavar="NAME", help="the group")
    seek.add_argument("--to", required=True, metavar="SEQ|TIME", help="where to move it")
    _connection_options(seek)

    window = commands.add_parser(
        "window",
        help="show a person's messaging window",
        description="Whether a send to IGSID from ACCOUNT is possible now and until when, from "
        "the last message igbutton saw in the webhook (Meta remains the authority).",
        epilog="example:\n  igbutton window 17841400000000000 1234567890123456",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    window.add_argument("account", metavar="ACCOUNT", help="the IG ID sending")
    window.add_argument("igsid", metavar="IGSID", help="the person")
    window.add_argument("--json", action="store_true", help="print JSON")
    _connection_options(window)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _server_entry_point(name: str) -> metadata.EntryPoint | None:
    found = tuple(metadata.entry_points(group=SERVER_COMMANDS_GROUP, name=name))
    return found[0] if found else None


def _server_missing(name: str) -> str:
    """The one line saying why ``igbutton NAME`` cannot run."""
    try:
        metadata.distribution(SERVER_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return f"igbutton {name} needs the server: pip install {SERVER_DISTRIBUTION}"
    # Installed before it declared its commands (an editable install keeps the metadata of
    # the day it was made), so installing it again is the cure, not installing it.
    return (
        f"igbutton {name}: the installed {SERVER_DISTRIBUTION} declares no {name!r} command; "
        f"reinstall it (in the igbutton repository: make venv)"
    )


def _announce_start(ports: Any) -> None:
    """Print one plain line once the server has bound its ports."""
    parts = [f"gRPC port {ports.grpc}"]
    for label, port in (("webhook", ports.webhook), ("ops HTTP", ports.http)):
        if port:
            parts.append(f"{label} port {port}")
    if ports.sandbox:
        parts.append(f"sandbox port {ports.sandbox}")
    print(f"igbutton serve: listening on {', '.join(parts)}", file=sys.stderr, flush=True)


def _run_server_command(name: str, argv: list[str]) -> int:
    """Hand every argument to the server's own entry point, loaded only now."""
    entry_point = _server_entry_point(name)
    if entry_point is None:
        print(_server_missing(name), file=sys.stderr)
        return 2
    if not {"-h", "--help"} & set(argv):
        print(
            f"igbutton {name}: starting ({entry_point.module}); Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
    try:
        server_main = entry_point.load()
        if name == "serve":
            code: int = server_main(argv, on_ready=_announce_start)
        else:
            code = server_main(argv)
    except KeyboardInterrupt:
        return 130
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``igbutton`` command."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in _SERVER_COMMANDS:
        return _run_server_command(args_list[0], args_list[1:])
    args = _parser().parse_args(args_list)
    from igbutton import _commands  # imported late: keeps --help fast

    try:
        if args.command == "send":
            return _commands.send(args)
        if args.command == "tail":
            return _commands.tail(args)
        if args.command == "doctor":
            return _commands.doctor(args)
        if args.command == "tap":
            return _commands.tap(args)
        from igbutton import _operating  # imported late: keeps --help fast

        return _operating.run(args)
    except _commands.UsageError as exc:
        print(f"igbutton {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
