"""The ``igbutton-server`` command: load the configuration, run the service until SIGTERM."""

from __future__ import annotations

import os

# gRPC core writes its own plain-text lines to stderr ("I1201 ... ssl_transport_security.cc
# ... Handshake failed" for each failed TLS handshake, "E... add_port.cc" ...). The installed
# grpcio logs through absl and offers no hook to route them into logging; it reads
# GRPC_VERBOSITY once, when grpc is imported (setting it later does nothing). So, unless the
# operator asks for gRPC's logs or traces, it is silenced here, before any grpc import, and
# stderr carries only igbutton's lines. (ERROR would still let plain-text lines through.)
if not os.environ.get("GRPC_VERBOSITY") and not os.environ.get("GRPC_TRACE"):
    os.environ["GRPC_VERBOSITY"] = "NONE"

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from igbutton_server import __version__
from igbutton_server.config import ConfigError, Settings

if TYPE_CHECKING:
    from igbutton_server.app import Ports

# The service itself (grpc, aiohttp, OpenTelemetry, the storage engines) is imported only to
# serve: `igbutton-server healthcheck` runs every few seconds and needs none of it.

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="igbutton-server",
        description="Run igbutton: the gRPC gateway for Instagram button templates and "
        "postbacks. Settings come from IGBUTTON_* environment variables and/or a TOML file.",
        epilog="igbutton-server healthcheck [--config FILE] [--live]: exit 0 when the server "
        "these settings describe answers 200 on /readyz (--live: /healthz), else 1 "
        "(see igbutton-server healthcheck --help).",
    )
    parser.add_argument("--version", action="version", version=f"igbutton-server {__version__}")
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    parser.add_argument(
        "--sandbox",
        action="store_true",
        help="start the local Instagram sandbox and send to it (no Meta app needed)",
    )
    parser.add_argument(
        "--ports-file",
        type=Path,
        help="once ready, write the bound ports here as JSON (for scripts and tests)",
    )
    return parser


async def serve(
    settings: Settings,
    ports_file: Path | None = None,
    on_ready: Callable[[Ports], None] | None = None,
) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    from igbutton_server.app import App

    app = App(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, app.request_stop)
    # SIGHUP re-reads the accounts' token files (they are also checked for changes).
    loop.add_signal_handler(signal.SIGHUP, app.reload_tokens)
    try:
        await app.start()
        if ports_file is not None:
            tmp = ports_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(vars(app.ports)))
            tmp.replace(ports_file)  # atomic, so a reader never sees half a file
        if on_ready is not None:
            on_ready(app.ports)
        await app.wait_stop_requested()
    finally:
        await app.stop()


def main(argv: list[str] | None = None, on_ready: Callable[[Ports], None] | None = None) -> int:
    """Entry point of ``igbutton-server``; ``on_ready`` is called once every port is bound."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["healthcheck"]:
        from igbutton_server import healthcheck

        return healthcheck.main(argv[1:])
    from igbutton_server import event_loop, logs
    from igbutton_server.storage.postbacks import StorageCorrupt, StorageUnavailable

    args = _parser().parse_args(argv)
    # Keyword overrides are merged over the environment and file, key by key.
    overrides: dict[str, object] = {"sandbox": {"enabled": True}} if args.sandbox else {}
    try:
        settings = Settings.load(args.config, **overrides)
    except ConfigError as exc:
        print(f"igbutton-server: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log)
    try:
        event_loop.run(serve(settings, args.ports_file, on_ready), settings.event_loop)
    except (StorageCorrupt, StorageUnavailable) as exc:
        # Nothing to retry: an operator restores the file (or moves it away), or makes its
        # filesystem writable, first.
        print(f"igbutton-server: cannot start: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # An operator's problem (a port taken, a path not writable): the message, no traceback.
        log.error("cannot start: %s", exc)  # noqa: TRY400
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
