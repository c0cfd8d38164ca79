"""Proofs asked for of sizes or indexes that name no proof: the server's own error, which
clients receive as INVALID_ARGUMENT with the rule broken (RFC 6962 §2.1.1, §2.1.2)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from sealog.client.errors import InvalidProofError
from sealog.client.note import Ed25519Signer
from sealog.client.proof import consistency_path, inclusion_path
from sealog.server.errors import ProofPreconditionError
from sealog.server.lmdb_storage import LmdbStorage
from sealog.server.log import Log
from sealog.server.proofs import build_range_proof
from sealog.server.sequencer import AppendItem
from sealog.server.servicer import _status_of

ORIGIN = "sealog.localhost/log"
SIGNER = Ed25519Signer.generate(ORIGIN)


@pytest.fixture
def log(tmp_path: Path) -> Iterator[Log]:
    storage = LmdbStorage(tmp_path / "db")
    the_log = Log(storage, SIGNER, SIGNER.verifier(), ORIGIN)
    the_log.append([AppendItem(b"e%d" % i) for i in range(3)], "")
    yield the_log
    the_log.close()
    storage.close()


def _client_message(call: object) -> str:
    assert callable(call)
    with pytest.raises(InvalidProofError) as caught:
        call()
    return str(caught.value)


def test_an_index_not_below_the_tree_size(log: Log) -> None:
    with pytest.raises(ProofPreconditionError) as caught:
        log.inclusion_proof(5, 3, "GetInclusionProofRequest")
    assert str(caught.value) == _client_message(lambda: inclusion_path(5, 3))
    assert _status_of(caught.value) == (grpc.StatusCode.INVALID_ARGUMENT, str(caught.value))


def test_a_first_size_above_the_second(log: Log) -> None:
    with pytest.raises(ProofPreconditionError) as caught:
        log.consistency_proof(3, 2)
    assert str(caught.value) == _client_message(lambda: consistency_path(3, 2))
    assert _status_of(caught.value) == (grpc.StatusCode.INVALID_ARGUMENT, str(caught.value))


def test_an_empty_range(log: Log) -> None:
    with log.storage.read() as snap, pytest.raises(ProofPreconditionError) as caught:
        build_range_proof(snap, 2, 2, 3)
    assert str(caught.value) == "range [2, 2) in tree size 3: want 0 <= start < end <= size"
    assert _status_of(caught.value) == (grpc.StatusCode.INVALID_ARGUMENT, str(caught.value))
