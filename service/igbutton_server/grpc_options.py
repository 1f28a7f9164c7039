"""The gRPC server's channel arguments, from :class:`~igbutton_server.config.GrpcSettings`.

grpc's defaults suit short unary calls; igbutton also holds postback streams that stay
quiet for minutes, behind load balancers, and sees every subscriber reconnect at once after
a restart. Each argument below answers one of those (README, "gRPC connections").
"""

from __future__ import annotations

from igbutton_server.config import GrpcSettings

ChannelArgs = list[tuple[str, int]]


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def server_options(settings: GrpcSettings) -> ChannelArgs:
    """The ``options`` for ``grpc.aio.server``."""
    options: ChannelArgs = [
        ("grpc.so_reuseport", 0),
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
        # Calls not yet picked up by the event loop. Beyond the soft limit grpc cancels new
        # ones at random, beyond the hard limit all: a burst of reconnects must fit.
        ("grpc.server.max_pending_requests", settings.max_pending_rpcs // 2),
        ("grpc.server.max_pending_requests_hard_limit", settings.max_pending_rpcs),
        # Our pings on idle connections: load balancers see traffic, dead peers are found.
        ("grpc.keepalive_time_ms", _ms(settings.keepalive_time_seconds)),
        ("grpc.keepalive_timeout_ms", _ms(settings.keepalive_timeout_seconds)),
        # grpc 1.85 waits for any ping's ack this long (default 1 min), keepalive's too.
        ("grpc.http2.ping_timeout_ms", _ms(settings.keepalive_timeout_seconds)),
        # ... also on a connection whose streams are quiet (grpc stops after 2 otherwise).
        ("grpc.http2.max_pings_without_data", 0),
        # Clients' pings: allowed with and without calls down to the configured interval.
        ("grpc.keepalive_permit_without_calls", 1),
        (
            "grpc.http2.min_ping_interval_without_data_ms",
            _ms(settings.min_client_ping_interval_seconds),
        ),
    ]
    if settings.max_connection_age_seconds is not None:
        options += [
            ("grpc.max_connection_age_ms", _ms(settings.max_connection_age_seconds)),
            ("grpc.max_connection_age_grace_ms", _ms(settings.max_connection_age_grace_seconds)),
        ]
    return options
