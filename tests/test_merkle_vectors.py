"""Merkle hashing, proof building and proof checking against published test data.

* ``rfc6962_8leaf_reference.json``: the classic 8-leaf tree of the CT and
  transparency-dev test suites, with its node hashes, roots and valid proofs.
* ``tdev_merkle_*_probes.json``: transparency-dev/merkle's golden probes, each
  a valid proof or one altered in a named way, with the expected verdict.
* ``sigstore_rekor_v2_staging_entry.json``: an inclusion proof from a real log.
* The worked examples of RFC 6962 §2.1.3, stated as leaf ranges.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from merkle_support import flip_bit, stored_hashes
from rfc6962_reference import ReferenceTree

from sealog.client.compact import CompactRange
from sealog.client.errors import InvalidProofError, RootMismatchError
from sealog.client.hashing import EMPTY_ROOT, HASH_SIZE, leaf_hash, node_hash
from sealog.client.proof import (
    NodeID,
    consistency_proof_nodes,
    fold_subtree,
    inclusion_proof_nodes,
)
from sealog.client.verify import (
    consistency_proof_length,
    inclusion_proof_length,
    root_from_inclusion_proof,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).parent / "vectors"


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return data


def _b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _b64_list(texts: Sequence[str] | None) -> list[bytes]:
    # Go's encoding/json writes a nil []byte slice as null.
    return [_b64(t) for t in texts or []]


def _prove(groups: Sequence[tuple[NodeID, ...]], stored: dict[NodeID, bytes]) -> list[bytes]:
    return [fold_subtree([stored[node] for node in group]) for group in groups]


# --- The 8-leaf reference tree ---------------------------------------------------------------

TREE8 = _load("rfc6962_8leaf_reference.json")
LEAVES8 = [bytes.fromhex(h) for h in TREE8["leaves_hex"]]
ROOTS8 = [bytes.fromhex(h) for h in TREE8["roots_by_size_hex"]]
NODES8 = [[bytes.fromhex(h) for h in level] for level in TREE8["node_hashes_by_level_hex"]]
STORED8 = stored_hashes([leaf_hash(leaf) for leaf in LEAVES8])
REFERENCE8 = ReferenceTree(LEAVES8)


def test_empty_tree_root_is_sha256_of_nothing() -> None:
    assert ROOTS8[0] == EMPTY_ROOT
    assert CompactRange().root() == ROOTS8[0]
    assert REFERENCE8.root(0) == ROOTS8[0]


def test_leaf_hashes_match_level_zero() -> None:
    assert [leaf_hash(leaf) for leaf in LEAVES8] == NODES8[0]


@pytest.mark.parametrize("size", range(9))
def test_compact_range_root_by_size(size: int) -> None:
    compact = CompactRange()
    compact.extend(leaf_hash(leaf) for leaf in LEAVES8[:size])
    assert compact.root() == ROOTS8[size]
    assert REFERENCE8.root(size) == ROOTS8[size]


def test_roots_from_a_resumed_compact_range() -> None:
    # A frontier saved at every size and resumed must keep producing the published roots.
    for size in range(9):
        compact = CompactRange()
        compact.extend(leaf_hash(leaf) for leaf in LEAVES8[:size])
        resumed = CompactRange(compact.size, compact.hashes)
        for grown, leaf in enumerate(LEAVES8[size:], start=size + 1):
            resumed.append(leaf_hash(leaf))
            assert resumed.root() == ROOTS8[grown]


@pytest.mark.parametrize("level", range(4))
def test_node_hashes_by_level(level: int) -> None:
    got = [STORED8[NodeID(level, index)] for index in range(len(NODES8[level]))]
    assert got == NODES8[level]
    assert all(NodeID(level, index) in STORED8 for index in range(8 >> level))
    assert len([node for node in STORED8 if node.level == level]) == 8 >> level


def test_node_hash_of_two_leaves() -> None:
    assert node_hash(NODES8[0][0], NODES8[0][1]) == NODES8[1][0]
    assert node_hash(NODES8[1][0], NODES8[1][1]) == NODES8[2][0]


@pytest.mark.parametrize(
    "case",
    TREE8["inclusion"],
    ids=[f"index{c['index']}-size{c['tree_size']}" for c in TREE8["inclusion"]],
)
def test_8leaf_inclusion(case: dict[str, Any]) -> None:
    index, size = case["index"], case["tree_size"]
    leaf = bytes.fromhex(case["leaf_hex"])
    proof = [bytes.fromhex(h) for h in case["proof_hex"]]
    root = _b64(case["root_b64"])
    assert leaf_hash(leaf) == _b64(case["leaf_hash_b64"])
    assert root == ROOTS8[size]

    verify_inclusion(index, size, leaf_hash(leaf), proof, root)
    assert root_from_inclusion_proof(index, size, leaf_hash(leaf), proof) == root
    assert _prove(inclusion_proof_nodes(index, size), STORED8) == proof
    assert REFERENCE8.path(index, size) == proof
    assert inclusion_proof_length(index, size) == len(proof)


@pytest.mark.parametrize(
    "case",
    TREE8["consistency"],
    ids=[f"size{c['size1']}-size{c['size2']}" for c in TREE8["consistency"]],
)
def test_8leaf_consistency(case: dict[str, Any]) -> None:
    size1, size2 = case["size1"], case["size2"]
    proof = [bytes.fromhex(h) for h in case["proof_hex"]]
    root1, root2 = _b64(case["root1_b64"]), _b64(case["root2_b64"])
    assert (root1, root2) == (ROOTS8[size1], ROOTS8[size2])

    verify_consistency(size1, size2, root1, root2, proof)
    assert _prove(consistency_proof_nodes(size1, size2), STORED8) == proof
    assert REFERENCE8.proof(size1, size2) == proof
    assert consistency_proof_length(size1, size2) == len(proof)


# --- RFC 6962 §2.1.3: the worked examples on seven leaves ----------------------------------
#
#             hash
#            /    \
#           k      l
#          / \    / \
#         g   h  i   j
#        / \ / \ / \  |
#        a b c d e f  d6
#
# Each name is the hash of a range of leaves.
RFC_NODES = {
    "a": (0, 1), "b": (1, 2), "c": (2, 3), "d": (3, 4), "e": (4, 5), "f": (5, 6),
    "g": (0, 2), "h": (2, 4), "i": (4, 6), "j": (6, 7), "k": (0, 4), "l": (4, 7),
}  # fmt: skip
LEAVES7 = [f"d{i}".encode() for i in range(7)]
REFERENCE7 = ReferenceTree(LEAVES7)
STORED7 = stored_hashes([leaf_hash(leaf) for leaf in LEAVES7])


def _named(names: str) -> list[bytes]:
    return [REFERENCE7.mth(*RFC_NODES[name]) for name in names]


@pytest.mark.parametrize(("index", "names"), [(0, "bhl"), (3, "cgl"), (4, "fjk"), (6, "ik")])
def test_rfc6962_audit_path_examples(index: int, names: str) -> None:
    want = _named(names)
    assert REFERENCE7.path(index, 7) == want
    assert _prove(inclusion_proof_nodes(index, 7), STORED7) == want
    verify_inclusion(index, 7, leaf_hash(LEAVES7[index]), want, REFERENCE7.root(7))


@pytest.mark.parametrize(("size1", "names"), [(3, "cdgl"), (4, "l"), (6, "ijk")])
def test_rfc6962_consistency_proof_examples(size1: int, names: str) -> None:
    want = _named(names)
    assert REFERENCE7.proof(size1, 7) == want
    assert _prove(consistency_proof_nodes(size1, 7), STORED7) == want
    verify_consistency(size1, 7, REFERENCE7.root(size1), REFERENCE7.root(7), want)


# --- transparency-dev/merkle golden probes -------------------------------------------------

INCLUSION_PROBES = _load("tdev_merkle_inclusion_probes.json")["probes"]
CONSISTENCY_PROBES = _load("tdev_merkle_consistency_probes.json")["probes"]

# Where sealog's verdict deliberately differs from transparency-dev/merkle's.
DEVIATIONS: dict[str, type[Exception]] = {
    # sealog requires every hash, both roots included, to be exactly 32 bytes, even when
    # the sizes are equal and the roots are only compared. The probe's roots are the
    # 12-byte "don't care 2", which transparency-dev accepts because they are equal.
    "testdata/consistency/additional/sizes-are-equal-one-and-proof-is-empty.json": (
        InvalidProofError
    ),
}


def _probe_id(probe: dict[str, Any]) -> str:
    return str(probe["file"]).removeprefix("testdata/").removesuffix(".json")


def _expect_rejected(probe: dict[str, Any]) -> Any:
    """Run the check the probe needs, expecting the failure its verdict calls for."""
    deviation = DEVIATIONS.get(probe["file"])
    if deviation is not None:
        assert not probe["wantErr"], "a deviation should only ever make sealog stricter"
        return pytest.raises(deviation)
    assert probe["wantErr"]
    return pytest.raises((InvalidProofError, RootMismatchError))


def test_probe_files_are_complete() -> None:
    assert len(INCLUSION_PROBES) == 98
    assert len(CONSISTENCY_PROBES) == 98
    assert set(DEVIATIONS) <= {p["file"] for p in CONSISTENCY_PROBES + INCLUSION_PROBES}


@pytest.mark.parametrize("probe", INCLUSION_PROBES, ids=_probe_id)
def test_inclusion_probe(probe: dict[str, Any]) -> None:
    index, size = probe["leafIdx"], probe["treeSize"]
    leaf, root, proof = _b64(probe["leafHash"]), _b64(probe["root"]), _b64_list(probe["proof"])
    if not probe["wantErr"] and probe["file"] not in DEVIATIONS:
        verify_inclusion(index, size, leaf, proof, root)
        assert root_from_inclusion_proof(index, size, leaf, proof) == root
        return
    with _expect_rejected(probe) as caught:
        verify_inclusion(index, size, leaf, proof, root)
    if isinstance(caught.value, RootMismatchError):
        assert caught.value.expected == root
        assert caught.value.calculated != root


@pytest.mark.parametrize("probe", CONSISTENCY_PROBES, ids=_probe_id)
def test_consistency_probe(probe: dict[str, Any]) -> None:
    size1, size2 = probe["size1"], probe["size2"]
    root1, root2, proof = _b64(probe["root1"]), _b64(probe["root2"]), _b64_list(probe["proof"])
    if not probe["wantErr"] and probe["file"] not in DEVIATIONS:
        verify_consistency(size1, size2, root1, root2, proof)
        return
    with _expect_rejected(probe) as caught:
        verify_consistency(size1, size2, root1, root2, proof)
    if isinstance(caught.value, RootMismatchError):
        assert caught.value.expected in (root1, root2)
        assert caught.value.calculated != caught.value.expected


def test_size_equal_probe_is_accepted_with_32_byte_roots() -> None:
    # The deviation above is about the hash length only: the same probe with real roots passes.
    root = ROOTS8[1]
    assert len(root) == HASH_SIZE
    verify_consistency(1, 1, root, root, [])


# --- A real Rekor v2 log entry ---------------------------------------------------------------

REKOR = _load("sigstore_rekor_v2_staging_entry.json")["inclusion"]
REKOR_LEAF = _b64(REKOR["leaf_b64"])
REKOR_ROOT = _b64(REKOR["root_b64"])
REKOR_PROOF = _b64_list(REKOR["proof_b64"])


def test_rekor_entry_is_included() -> None:
    assert (REKOR["index"], REKOR["tree_size"]) == (645, 646)
    assert inclusion_proof_length(645, 646) == len(REKOR_PROOF)
    verify_inclusion(645, 646, leaf_hash(REKOR_LEAF), REKOR_PROOF, REKOR_ROOT)


def test_rekor_entry_with_a_flipped_leaf_bit_fails() -> None:
    for bit in (0, 7, 8 * len(REKOR_LEAF) // 2, 8 * len(REKOR_LEAF) - 1):
        tampered = leaf_hash(flip_bit(REKOR_LEAF, bit))
        with pytest.raises(RootMismatchError) as caught:
            verify_inclusion(645, 646, tampered, REKOR_PROOF, REKOR_ROOT)
        assert caught.value.expected == REKOR_ROOT


@pytest.mark.parametrize("element", range(4))
def test_rekor_entry_with_a_flipped_proof_bit_fails(element: int) -> None:
    proof = list(REKOR_PROOF)
    proof[element] = flip_bit(proof[element], 8 * element + 3)
    with pytest.raises(RootMismatchError):
        verify_inclusion(645, 646, leaf_hash(REKOR_LEAF), proof, REKOR_ROOT)


def test_rekor_entry_against_a_flipped_root_fails() -> None:
    root = flip_bit(REKOR_ROOT, 255)
    with pytest.raises(RootMismatchError) as caught:
        verify_inclusion(645, 646, leaf_hash(REKOR_LEAF), REKOR_PROOF, root)
    assert caught.value.calculated == REKOR_ROOT
