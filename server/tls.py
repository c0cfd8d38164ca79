"""Server TLS: credentials from PEM files, and which listen addresses are loopback."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import grpc

__all__ = ["is_loopback", "server_credentials"]


def server_credentials(
    cert_file: str | Path,
    key_file: str | Path,
    client_ca_file: str | Path | None = None,
    *,
    require_client_cert: bool = False,
) -> grpc.ServerCredentials:
    """TLS credentials; with ``client_ca_file``, client certificates signed by it are verified.

    ``require_client_cert`` refuses connections without one (mutual TLS only);
    otherwise a client may also come without a certificate (and use an API key).
    """
    if require_client_cert and client_ca_file is None:
        raise ValueError("requiring client certificates needs a client CA file")
    pair = (Path(key_file).read_bytes(), Path(cert_file).read_bytes())
    roots = Path(client_ca_file).read_bytes() if client_ca_file is not None else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=roots, require_client_auth=require_client_cert
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
