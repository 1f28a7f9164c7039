"""``igbutton-server healthcheck``: probe a running server's operations port, for a container's
HEALTHCHECK or any supervisor that runs a command.

It reads the ``http`` settings exactly as the server does (``IGBUTTON_HTTP__PORT``,
``IGBUTTON_HTTP__HOST``, ``IGBUTTON_CONFIG_FILE`` or ``--config``), so the probe follows the
configured port, and asks ``/readyz`` (or ``/healthz`` with ``--live``). Exit status 0 when the
answer is 200, else 1 with one line on stderr saying why: Docker and Podman read 1 as
unhealthy and reserve 2, so every failure, a bad configuration included, is 1.

Only the configuration module and the standard library are imported, so a probe every few
seconds costs a fraction of the server's start-up.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
from pathlib import Path

from igbutton_server.config import ConfigError, load_http_settings

UNHEALTHY = 1
"""The exit status of every failed probe (HEALTHCHECK: 0 healthy, 1 unhealthy, 2 reserved)."""

# The wildcard addresses a server binds to listen everywhere; a probe connects to loopback.
_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}


class ProbeFailed(Exception):
    """The probe did not get a 200; the message is the one line printed."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="igbutton-server healthcheck",
        description="Exit 0 when the igbutton server configured by the same IGBUTTON_* "
        "variables and/or TOML file answers 200 on /readyz (--live: /healthz), else 1.",
    )
    parser.add_argument("--config", type=Path, help="the TOML configuration file the server reads")
    parser.add_argument(
        "--live",
        action="store_true",
        help="ask /healthz (should the process be restarted?) instead of /readyz "
        "(can it take work?)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=3.0,
        help="seconds to wait for the answer (default 3)",
    )
    return parser


def probe(host: str, port: int, path: str, timeout: float) -> None:
    """Raise ProbeFailed unless ``GET path`` on the operations port answers 200."""
    connect_host = _WILDCARDS.get(host, host).strip("[]")
    url = f"http://{f'[{connect_host}]' if ':' in connect_host else connect_host}:{port}{path}"
    conn = http.client.HTTPConnection(connect_host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Accept": "application/json"})
        response = conn.getresponse()
        body = response.read(4096)
    except TimeoutError:
        raise ProbeFailed(f"{url}: no answer within {timeout:g} s") from None
    except OSError as exc:
        raise ProbeFailed(f"{url}: {exc.strerror or exc}") from None
    except http.client.HTTPException as exc:
        raise ProbeFailed(f"{url}: not an HTTP answer ({type(exc).__name__})") from None
    finally:
        conn.close()
    if response.status != 200:
        raise ProbeFailed(f"{url} answered {response.status}{_reason(body)}")


def _reason(body: bytes) -> str:
    """The server's reason from a 503's JSON body, on the same line."""
    try:
        reason = json.loads(body).get("reason")
    except (ValueError, AttributeError):
        return ""
    return f": {' '.join(str(reason).split())}" if reason else ""


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``igbutton-server healthcheck``; returns the exit status."""
    args = _parser().parse_args(argv)
    path = "/healthz" if args.live else "/readyz"
    try:
        http_settings = load_http_settings(args.config)
        _check_port(http_settings.port)
        probe(http_settings.host, http_settings.port, path, args.timeout)
    except (ConfigError, ProbeFailed) as exc:
        print(f"igbutton-server healthcheck: unhealthy: {exc}", file=sys.stderr)
        return UNHEALTHY
    return 0


def _check_port(port: int) -> None:
    if port == 0:
        raise ProbeFailed(
            "http.port is 0 (IGBUTTON_HTTP__PORT): the server picks a free port at start, "
            "so a probe cannot know it; configure a fixed port"
        )
