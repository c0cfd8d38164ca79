"""The v1 leaf format: deterministic, strict, and documented byte for byte."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealog.client.errors import LeafFormatError
from sealog.client.leaf import MAX_IDENTITY_BYTES, Leaf, leaf_bytes, leaf_header, leaf_problem

identities = st.text(max_size=40).filter(lambda s: len(s.encode()) <= MAX_IDENTITY_BYTES)


def test_documented_example_bytes() -> None:
    # The worked example of docs/leaf-format.md.
    leaf = Leaf(1767225600000, "spiffe://example.org/ci", b"deploy")
    want = bytes.fromhex(
        "01"  # version
        "0000019b76daa800"  # accepted_at_ms: 2026-01-01T00:00:00Z
        "0017"  # identity_length 23
        + b"spiffe://example.org/ci".hex()
        + "00000006"  # payload_length
        + b"deploy".hex()
    )
    assert leaf.to_bytes() == want
    assert leaf.leaf_hash() == hashlib.sha256(b"\x00" + want).digest()


@given(st.integers(0, 2**64 - 1), identities, st.binary(max_size=300))
def test_round_trip(ms: int, identity: str, payload: bytes) -> None:
    leaf = Leaf(ms, identity, payload)
    assert Leaf.parse(leaf.to_bytes()) == leaf


@given(st.binary(max_size=64))
def test_parse_accepts_only_canonical_bytes(data: bytes) -> None:
    try:
        leaf = Leaf.parse(data)
    except LeafFormatError:
        return
    assert leaf.to_bytes() == data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "shorter than the 11-byte header"),
        (b"\x02" + bytes(10) + bytes(4), "version 2, want 1"),
        (b"\x01" + bytes(8) + struct.pack(">H", 5) + b"ab", "truncated"),
        (b"\x01" + bytes(8) + b"\x00\x00" + struct.pack(">I", 3) + b"ab", "payload_length 3"),
        (b"\x01" + bytes(8) + b"\x00\x00" + struct.pack(">I", 1) + b"ab", "payload_length 1"),
        (b"\x01" + bytes(8) + b"\x00\x02\xff\xfe" + bytes(4), "identity is not UTF-8"),
        (b"\x01" + bytes(8) + struct.pack(">H", 1025), "identity_length 1025"),
    ],
)
def test_malformed_leaves_are_rejected_with_the_reason(data: bytes, message: str) -> None:
    with pytest.raises(LeafFormatError, match=message):
        Leaf.parse(data)


def test_constructor_bounds() -> None:
    with pytest.raises(LeafFormatError):
        Leaf(-1, "", b"")
    with pytest.raises(LeafFormatError):
        Leaf(0, "x" * (MAX_IDENTITY_BYTES + 1), b"")


@given(st.integers(0, 2**64 - 1), identities, st.binary(max_size=300))
def test_a_header_and_a_payload_make_the_same_leaf(ms: int, identity: str, payload: bytes) -> None:
    assert leaf_bytes(leaf_header(ms, identity), payload) == Leaf(ms, identity, payload).to_bytes()


def test_a_header_refuses_what_a_leaf_refuses() -> None:
    with pytest.raises(LeafFormatError, match="accepted_at_ms: -1"):
        leaf_header(-1, "")
    with pytest.raises(LeafFormatError, match="identity: longer than 1024 bytes"):
        leaf_header(0, "x" * (MAX_IDENTITY_BYTES + 1))
    with pytest.raises(UnicodeEncodeError):
        leaf_header(0, "\udc80")


def _parse_problem(data: bytes) -> str:
    try:
        Leaf.parse(data)
    except LeafFormatError as e:
        return str(e)
    return ""


@given(st.binary(max_size=64))
def test_leaf_problem_says_what_parse_says(data: bytes) -> None:
    assert leaf_problem(data) == _parse_problem(data)


@given(st.integers(0, 2**64 - 1), identities, st.binary(max_size=40), st.data())
def test_leaf_problem_says_what_parse_says_of_edited_leaves(
    ms: int, identity: str, payload: bytes, data: st.DataObject
) -> None:
    leaf = bytearray(Leaf(ms, identity, payload).to_bytes())
    assert leaf_problem(bytes(leaf)) == ""
    at = data.draw(st.integers(0, len(leaf) - 1))
    leaf[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(leaf) + 2))
    edited = bytes(leaf[:cut]) + data.draw(st.binary(max_size=2))
    assert leaf_problem(edited) == _parse_problem(edited)
