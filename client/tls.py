"""Client TLS: channel credentials, with or without a client certificate."""

from __future__ import annotations

from pathlib import Path

import grpc

__all__ = ["channel_credentials"]


def channel_credentials(
    ca_file: str | Path | None = None,
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
) -> grpc.ChannelCredentials:
    """TLS credentials: trust ``ca_file`` (default: the system roots); present a client
    certificate (mutual TLS) when ``cert_file`` and ``key_file`` are given."""
    if (cert_file is None) != (key_file is None):
        raise ValueError("a client certificate needs both cert_file and key_file")
    return grpc.ssl_channel_credentials(
        root_certificates=Path(ca_file).read_bytes() if ca_file is not None else None,
        private_key=Path(key_file).read_bytes() if key_file is not None else None,
        certificate_chain=Path(cert_file).read_bytes() if cert_file is not None else None,
    )
