"""Server TLS: credentials from PEM files, and which listen addresses are loopback."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import grpc

__all__ = ["is_loopback", "server_credentials"]


def server_credentials(
    cert_file: str | Path, key_file: str | Path, client_ca_file: str | Path | None = None
) -> grpc.ServerCredentials:
    """TLS credentials; with ``client_ca_file``, mutual TLS: every client must present a
    certificate signed by that CA. (gRPC's Python server cannot ask for a client
    certificate without requiring one, so a port is either TLS or mutual TLS.)"""
    pair = (Path(key_file).read_bytes(), Path(cert_file).read_bytes())
    if client_ca_file is None:
        return grpc.ssl_server_credentials([pair])
    return grpc.ssl_server_credentials(
        [pair], root_certificates=Path(client_ca_file).read_bytes(), require_client_auth=True
    )


def is_loopback(address: str) -> bool:
    """Whether a gRPC listen address (``host:port``) only accepts local connections."""
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name, "0.0.0.0" handled above as an address, "[::]", ...
