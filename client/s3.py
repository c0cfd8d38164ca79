"""S3-compatible object storage: ``s3://bucket/prefix`` locations and a client from the environment.

The archive (``sealog serve --archive``), ``sealog restore`` and monitors that read
tiles from a bucket all name it the same way, ``s3://BUCKET/PREFIX``, and reach it
the way S3 tools do, through boto3's own configuration chain:

- ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``: the endpoint of a store other than
  AWS (SeaweedFS, MinIO, Ceph, R2...); with one set, requests use path-style
  addressing (``https://host/bucket/key``), which every self-hosted store accepts;
- ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (``AWS_SESSION_TOKEN``), or
  ``AWS_PROFILE`` and the shared config files, or an instance role;
- ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` (``us-east-1`` if none is set);
- ``AWS_CA_BUNDLE``: the CA certificates for an HTTPS endpoint of a private CA.

Nothing here logs a credential: boto3 reads them itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config

from sealog.client.errors import SealogError

__all__ = ["S3Location", "S3UrlError", "parse_s3_url", "s3_client"]

_BUCKET_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-")


class S3UrlError(SealogError):
    """An ``s3://`` location that does not name a bucket and prefix."""


@dataclass(frozen=True, slots=True)
class S3Location:
    """A bucket and a key prefix (empty, or ending in ``/``) within it."""

    bucket: str
    prefix: str

    def key(self, path: str) -> str:
        """The object key of ``path`` (e.g. ``tile/0/000``) under this location."""
        return self.prefix + path

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def parse_s3_url(url: str) -> S3Location:
    """``s3://bucket`` or ``s3://bucket/some/prefix`` (a trailing ``/`` is implied)."""
    parts = urlsplit(url)
    if parts.scheme != "s3":
        raise S3UrlError(f"{url!r}: want s3://BUCKET[/PREFIX]")
    if parts.query or parts.fragment or "@" in parts.netloc or ":" in parts.netloc:
        raise S3UrlError(f"{url!r}: want s3://BUCKET[/PREFIX], with no credentials, port or query")
    bucket = parts.netloc
    if not 3 <= len(bucket) <= 63 or not set(bucket) <= _BUCKET_CHARS:
        raise S3UrlError(
            f"{url!r}: bucket {bucket!r} is not 3-63 lowercase letters, digits, '.' or '-'"
        )
    prefix = parts.path.strip("/")
    if "//" in prefix or any(p in (".", "..") for p in prefix.split("/")):
        raise S3UrlError(f"{url!r}: prefix {prefix!r} has an empty, '.' or '..' element")
    return S3Location(bucket, prefix + "/" if prefix else "")


def s3_client(*, timeout_s: float = 30.0, max_attempts: int = 3) -> Any:
    """A boto3 S3 client configured from the environment (see the module's docstring).

    ``timeout_s`` bounds connecting and each read; ``max_attempts`` counts boto3's own
    retries of throttling and transient errors (its "standard" mode).
    """
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    config = Config(
        connect_timeout=timeout_s,
        read_timeout=timeout_s,
        retries={"mode": "standard", "max_attempts": max_attempts},
        s3={"addressing_style": "path" if endpoint else "auto"},
    )
    session = boto3.session.Session()
    return session.client(
        "s3",
        region_name=region or session.region_name or "us-east-1",
        config=config,
    )
