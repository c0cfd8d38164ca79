"""The S3 engine the archive tests rely on behaves as the archive assumes: conditional
writes refuse to overwrite, and Object Lock in compliance mode refuses deletion. If a
new SeaweedFS release changed that, these fail before the archive tests mislead."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError
from s3_support import S3Server

from sealog.client.s3 import S3Location, S3UrlError, parse_s3_url, s3_client

pytestmark = pytest.mark.slow


def test_conditional_write_refuses_an_existing_key(s3_server: S3Server) -> None:
    bucket = s3_server.make_bucket()
    with s3_server.environment():
        client = s3_client()
    client.put_object(Bucket=bucket, Key="p/tile/0/000", Body=b"one", IfNoneMatch="*")
    with pytest.raises(ClientError) as refused:
        client.put_object(Bucket=bucket, Key="p/tile/0/000", Body=b"two", IfNoneMatch="*")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert s3_server.objects(bucket) == {"p/tile/0/000": b"one"}


def test_compliance_lock_refuses_deletion(s3_server: S3Server) -> None:
    bucket = s3_server.make_bucket(object_lock=True)
    client = s3_server.client()
    until = datetime.now(UTC) + timedelta(days=1)
    put = client.put_object(
        Bucket=bucket,
        Key="tile/0/000",
        Body=b"x",
        ObjectLockMode="COMPLIANCE",
        ObjectLockRetainUntilDate=until,
    )
    head = client.head_object(Bucket=bucket, Key="tile/0/000")
    assert head["ObjectLockMode"] == "COMPLIANCE"
    with pytest.raises(ClientError):
        client.delete_object(Bucket=bucket, Key="tile/0/000", VersionId=put["VersionId"])


@pytest.mark.parametrize(
    ("url", "location"),
    [
        ("s3://logs", S3Location("logs", "")),
        ("s3://logs/", S3Location("logs", "")),
        ("s3://logs/a/b", S3Location("logs", "a/b/")),
        ("s3://my.logs-1/a/b/", S3Location("my.logs-1", "a/b/")),
    ],
)
def test_s3_urls(url: str, location: S3Location) -> None:
    assert parse_s3_url(url) == location
    assert location.key("checkpoint") == location.prefix + "checkpoint"


@pytest.mark.parametrize(
    "url",
    [
        "http://logs/a",
        "s3://Logs/a",
        "s3://ab",
        "s3://key:secret@logs/a",
        "s3://logs/a/../b",
        "s3://logs/a//b",
        "s3://logs/a?x=1",
        "s3://logs:9000/a",
    ],
)
def test_bad_s3_urls(url: str) -> None:
    with pytest.raises(S3UrlError):
        parse_s3_url(url)
