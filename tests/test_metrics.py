"""The metrics endpoint: what a Prometheus scrape sees while the log appends and proves."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from e2e_support import OpenLog, RunningLog
from prometheus_client.parser import text_string_to_metric_families

from sealog.client.cosignature import Cosigner
from sealog.client.keyfile import write_private_key_file
from sealog.client.note import Ed25519Signer
from sealog.client.witness.endpoint import WitnessHTTPServer
from sealog.client.witness.protocol import Witness
from sealog.server.metrics import split_address
from sealog.server.policy import hash_api_key, new_api_key
from sealog.server.witness_push import witness_label
from sealog.v1 import log_pb2

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(log: RunningLog) -> tuple[str, Samples]:
    """The endpoint's text and every sample in it, keyed by name and sorted labels."""
    listener = log.server.metrics_listener
    assert listener is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{listener.port}/metrics", timeout=5) as r:
        assert r.status == 200
        text = r.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def handled(samples: Samples, method: str, code: str = "OK") -> float:
    return value(
        samples,
        "grpc_server_handled_total",
        grpc_code=code,
        grpc_method=method,
        grpc_service="sealog.v1.LogService",
        grpc_type="unary",
    )


def wait_for(log: RunningLog, ready: Callable[[Samples], bool], timeout: float = 10) -> Samples:
    """Scrape until ``ready`` holds (RPCs reach the metrics a flush later)."""
    deadline = time.monotonic() + timeout
    while True:
        _, samples = scrape(log)
        if ready(samples):
            return samples
        assert time.monotonic() < deadline, "the metrics did not show it in time"
        time.sleep(0.05)


@pytest.fixture
def metered(open_log: OpenLog) -> RunningLog:
    return open_log(metrics_address="127.0.0.1:0")


def test_counters_move_while_appending_and_proving(metered: RunningLog) -> None:
    client = metered.client()
    stub = metered.stub()
    stop = threading.Event()
    appended = [0]

    def append() -> None:
        while not stop.is_set():
            client.append(b"event %d" % appended[0])
            appended[0] += 1

    writer = threading.Thread(target=append)
    writer.start()
    try:
        seen: list[float] = []
        for _ in range(5):  # scraped during the appends: each scrape sees more
            samples = wait_for(
                metered,
                lambda s: (
                    value(s, "sealog_append_entries_total", outcome="new")
                    > (seen[-1] if seen else 0)
                ),
            )
            seen.append(value(samples, "sealog_append_entries_total", outcome="new"))
            size = value(samples, "sealog_tree_size")
            if size:
                stub.GetInclusionProof(
                    log_pb2.GetInclusionProofRequest(leaf_index=0, tree_size=int(size))
                )
    finally:
        stop.set()
        writer.join()
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    total = appended[0]
    samples = wait_for(
        metered,
        lambda s: handled(s, "Append") == total and handled(s, "GetInclusionProof") >= 1,
    )
    assert value(samples, "sealog_append_entries_total", outcome="new") == total
    assert value(samples, "sealog_tree_size") == total
    assert value(samples, "sealog_batch_entries_count") >= 1
    assert value(samples, "sealog_batch_entries_sum") == total
    assert value(samples, "sealog_commit_seconds_count") >= 1
    assert value(samples, "sealog_fsync_seconds_count") >= value(
        samples, "sealog_commit_seconds_count"
    )
    assert value(samples, "sealog_lmdb_used_bytes") > 0
    assert value(samples, "sealog_lmdb_map_bytes") >= value(samples, "sealog_lmdb_used_bytes")
    assert 0 <= value(samples, "sealog_checkpoint_age_seconds") < 60
    assert value(samples, "sealog_rpc_received_bytes_total", grpc_method="Append") > 0
    assert value(samples, "sealog_rpc_sent_bytes_total", grpc_method="GetInclusionProof") > 0
    count = value(
        samples,
        "grpc_server_handling_seconds_count",
        grpc_method="Append",
        grpc_service="sealog.v1.LogService",
        grpc_type="unary",
    )
    assert count == total
    assert value(samples, "process_resident_memory_bytes") > 0


def test_duplicates_refusals_and_entry_streams_are_counted(metered: RunningLog) -> None:
    client = metered.client()
    client.append(b"once", idempotency_key="k-1")
    client.append(b"once", idempotency_key="k-1")  # a retry: answered with the first leaf
    stub = metered.stub()
    with pytest.raises(grpc.RpcError) as info:
        stub.GetInclusionProof(log_pb2.GetInclusionProofRequest(leaf_index=5, tree_size=1))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    leaves = list(client.entries(0, 1))
    assert len(leaves) == 1
    samples = wait_for(
        metered,
        lambda s: (
            handled(s, "GetInclusionProof", "INVALID_ARGUMENT") == 1
            and value(
                s,
                "grpc_server_handled_total",
                grpc_code="OK",
                grpc_method="GetEntries",
                grpc_service="sealog.v1.LogService",
                grpc_type="server_stream",
            )
            >= 1
        ),
    )
    assert value(samples, "sealog_append_entries_total", outcome="new") == 1
    assert value(samples, "sealog_append_entries_total", outcome="duplicate") == 1
    assert value(samples, "sealog_rpc_sent_bytes_total", grpc_method="GetEntries") > 0


def test_auth_and_quota_rejections_name_no_identity_or_key(
    open_log: OpenLog, tmp_path: Path
) -> None:
    token = new_api_key()
    policy = tmp_path / "policy.toml"
    policy.write_text(
        "public_read = false\n"
        '[[identity]]\nname = "secret-bot-name"\nroles = ["append", "read"]\n'
        "appends_per_second = 1\nburst = 2\n"
        f'[[api_key]]\nidentity = "secret-bot-name"\nsha256 = "{hash_api_key(token)}"\n'
    )
    log = open_log(metrics_address="127.0.0.1:0", policy_file=policy)
    bot = log.client(api_key=token, max_attempts=1)
    bot.append_batch([b"a", b"b"])  # the burst
    with pytest.raises(grpc.RpcError) as info:
        bot.append(b"over the quota")
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    stranger = log.client(max_attempts=1)
    with pytest.raises(grpc.RpcError):
        stranger.append(b"no identity")
    bad_key = log.client(api_key=new_api_key(), max_attempts=1)
    with pytest.raises(grpc.RpcError):
        bad_key.append(b"a key the policy does not know")
    wait_for(
        log,
        lambda s: (
            value(s, "sealog_quota_rejections_total") == 1
            and value(s, "sealog_auth_rejections_total", reason="unauthenticated") == 2
        ),
    )
    text, _ = scrape(log)
    assert "secret-bot-name" not in text
    assert token not in text
    assert b"over the quota".decode() not in text


def test_witness_push_and_cosignature_age(open_log: OpenLog, tmp_path: Path) -> None:
    origin = "sealog.localhost/log"
    key = Ed25519Signer.generate(origin)
    key_file = tmp_path / "log.key"
    write_private_key_file(key_file, key.skey)
    cosigner = Cosigner.generate("w1.example/witness")
    witness = WitnessHTTPServer(
        Witness(cosigner, {origin: [key.verifier()]}, tmp_path / "witness")
    ).start()
    secret_url = witness.url.replace("http://", "http://user:pw@") + "?token=hidden"
    try:
        log = open_log(
            key_file=key_file,
            new_log=True,
            witnesses=[cosigner.verifier()],
            push_witnesses=[witness.url],
            push_witness_interval_s=0.05,
            metrics_address="127.0.0.1:0",
        )
        log.client().append(b"cosign me")
        label = witness_label(witness.url)
        samples = wait_for(
            log,
            lambda s: (
                value(s, "sealog_witness_pushes_total", witness=label, outcome="ok") >= 1
                and (
                    "sealog_witness_cosignature_age_seconds",
                    (("witness", f"w1.example/witness+{cosigner.key_hash:08x}"),),
                )
                in s
            ),
        )
        age = value(
            samples,
            "sealog_witness_cosignature_age_seconds",
            witness=f"w1.example/witness+{cosigner.key_hash:08x}",
        )
        assert 0 <= age < 60
        assert 0 <= value(samples, "sealog_witness_push_last_success_seconds", witness=label) < 60
    finally:
        witness.stop()
        witness.witness.close()
    assert witness_label(secret_url) == label  # no credentials or query in a label


def test_metrics_are_off_unless_asked_for(log: RunningLog) -> None:
    assert log.server.metrics_listener is None
    assert log.server.observer is None


def test_a_metrics_address_in_use_stops_the_start(open_log: OpenLog, tmp_path: Path) -> None:
    first = open_log(metrics_address="127.0.0.1:0")
    assert first.server.metrics_listener is not None
    busy = f"127.0.0.1:{first.server.metrics_listener.port}"
    with pytest.raises(OSError, match=r"cannot serve metrics on 127\.0\.0\.1:"):
        open_log(tmp_path / "second", metrics_address=busy)
    # The failed server released its folder: it opens again with a free port.
    again = open_log(tmp_path / "second", metrics_address="127.0.0.1:0")
    again.client().append(b"fine")


@pytest.mark.parametrize("address", ["9464", "localhost", ":x", "host:99999", ""])
def test_bad_metrics_addresses_are_named(address: str) -> None:
    with pytest.raises(ValueError, match="listen address"):
        split_address(address)


def test_ipv6_metrics_address() -> None:
    assert split_address("[::1]:9464") == ("::1", 9464)
