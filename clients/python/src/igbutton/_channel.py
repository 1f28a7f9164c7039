"""Channels to igbutton: TLS, mutual TLS and the caller's bearer token."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

DEFAULT_TARGET = "127.0.0.1:50051"
"""Where ``igbutton serve`` listens by default."""

ChannelOptions = Sequence[tuple[str, str | int]]
Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True, repr=False)
class Tls:
    """TLS settings for the channel.

    With no roots the system's trust store is used. ``certificate_chain`` and ``private_key``
    (PEM) are the client's certificate for mutual TLS. ``server_name`` overrides the name the
    server's certificate is checked against (for tests and IP addresses).
    """

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("certificate_chain and private_key must be given together")

    @classmethod
    def from_files(
        cls,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        server_name: str | None = None,
    ) -> Tls:
        """Read PEM files: the CA bundle to trust and, for mutual TLS, the client's pair."""
        return cls(
            root_certificates=_read(ca_file),
            certificate_chain=_read(cert_file),
            private_key=_read(key_file),
            server_name=server_name,
        )

    def __repr__(self) -> str:
        # Never show key material.
        return f"Tls(custom_roots={self.root_certificates is not None}, mutual={self.mutual})"

    @property
    def mutual(self) -> bool:
        """Whether a client certificate is presented."""
        return self.certificate_chain is not None

    def credentials(self, token: str | None) -> grpc.ChannelCredentials:
        """Channel credentials, with the token as per-call credentials when given."""
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )
        if token is None:
            return creds
        return grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))

    def options(self) -> list[tuple[str, str | int]]:
        """Channel options this TLS setting needs."""
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]


def _read(path: str | Path | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


def resolve_tls(tls: Tls | bool | None) -> Tls | None:
    """``True`` means TLS with the system's roots; ``False``/``None`` means plaintext."""
    if tls is True:
        return Tls()
    if tls is False or tls is None:
        return None
    return tls


def call_metadata(token: str | None, tls: Tls | None, extra: Metadata) -> Metadata:
    """Metadata sent on every call. On TLS the token travels as call credentials instead,
    which gRPC refuses to send over plaintext; on plaintext (local use) it goes here."""
    if token is not None and tls is None:
        return (("authorization", f"Bearer {token}"), *extra)
    return extra


def sync_channel(
    target: str, tls: Tls | None, token: str | None, options: ChannelOptions
) -> grpc.Channel:
    """A blocking-API channel."""
    opts = [*options, *(tls.options() if tls else [])]
    if tls is None:
        return grpc.insecure_channel(target, options=opts)
    return grpc.secure_channel(target, tls.credentials(token), options=opts)


def aio_channel(
    target: str, tls: Tls | None, token: str | None, options: ChannelOptions
) -> grpc.aio.Channel:
    """An asyncio channel (create it inside the running event loop)."""
    opts = [*options, *(tls.options() if tls else [])]
    if tls is None:
        return grpc.aio.insecure_channel(target, options=opts)
    return grpc.aio.secure_channel(target, tls.credentials(token), options=opts)
