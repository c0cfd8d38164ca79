"""Hostile bytes against every parser and verifier a party runs on untrusted input.

Whatever the input, each one returns or raises one of sealog's own errors
(:class:`~sealog.client.errors.SealogError`; its format errors are also
``ValueError``\\ s), quickly; never another exception. A parser that accepts
something writes it back byte for byte, and a mutated signed note never
verifies as a different checkpoint. ``python -m bench.fuzz_parsers`` runs the
same byte-level targets for as long as you like (with atheris if installed).
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealog.client.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from sealog.client.cosignature import CosignatureVerifier, Cosigner, cosign_checkpoint
from sealog.client.errors import (
    CheckpointFormatError,
    KeyFormatError,
    LeafFormatError,
    NoteFormatError,
    SealogError,
    VerificationError,
)
from sealog.client.leaf import Leaf
from sealog.client.note import Ed25519Signer, Ed25519Verifier, open_note, parse_note
from sealog.client.range_proof import verify_range
from sealog.client.verify import verify_consistency, verify_inclusion

REPO = Path(__file__).resolve().parent.parent
ORIGIN = "fuzz.example/log"
SIGNER = Ed25519Signer.generate(ORIGIN)
VERIFIER = SIGNER.verifier()
WITNESS = Cosigner.generate("witness.example/w1")
CHECKPOINT = Checkpoint(ORIGIN, 21, bytes(range(32)), ("an extension",))
NOTE = sign_checkpoint(CHECKPOINT, SIGNER)
COSIGNED = cosign_checkpoint(NOTE, WITNESS)
LEAF = Leaf(1767225600000, "spiffe://example.org/ci", b"deploy").to_bytes()

# A thousand examples a test: marked slow, so they run in the full suite only; the fast lane
# keeps each parser's own property tests (test_note.py, test_checkpoint.py, test_leaf.py, ...).
FUZZ = settings(
    max_examples=1000,
    deadline=timedelta(seconds=1),  # every single input is answered quickly
    suppress_health_check=[HealthCheck.too_slow],
)


@st.composite
def mutated(draw: st.DrawFn, sample: bytes) -> bytes:
    """``sample`` with a few bytes flipped, replaced, inserted, deleted, or cut off."""
    out = bytearray(sample)
    for _ in range(draw(st.integers(1, 4))):
        if not out:
            break
        pos = draw(st.integers(0, len(out) - 1))
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "cut"]))
        if op == "flip":
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            out[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del out[pos]
        else:
            del out[pos:]
    return bytes(out)


def only_sealog_errors(call: Callable[[], Any]) -> Any:
    """Run ``call``; a SealogError is fine (returns None), anything else fails the test."""
    try:
        return call()
    except SealogError:
        return None


# --- leaves -------------------------------------------------------------------------------------
@pytest.mark.slow
@FUZZ
@given(st.one_of(st.binary(max_size=2000), mutated(LEAF)))
def test_leaf_parse_accepts_only_what_it_would_write(data: bytes) -> None:
    try:
        leaf = Leaf.parse(data)
    except LeafFormatError:
        return
    assert leaf.to_bytes() == data


# --- notes and checkpoints ----------------------------------------------------------------------
notes = st.one_of(st.binary(max_size=1500), mutated(NOTE), mutated(COSIGNED), st.just(NOTE + b"\n"))


@pytest.mark.slow
@FUZZ
@given(notes)
def test_parse_note_raises_only_note_format_errors(data: bytes) -> None:
    try:
        text, signatures = parse_note(data)
    except NoteFormatError:
        return
    assert data.startswith(text)
    assert 1 <= len(signatures) <= 100


@pytest.mark.slow
@FUZZ
@given(notes)
def test_a_mutated_note_never_opens_as_other_text(data: bytes) -> None:
    try:
        opened = open_note(data, [VERIFIER, WITNESS.verifier()])
    except (NoteFormatError, VerificationError):
        return
    assert opened.text == CHECKPOINT.to_bytes()  # only the signed text can verify


@pytest.mark.slow
@FUZZ
@given(notes)
def test_a_mutated_checkpoint_never_verifies_as_another(data: bytes) -> None:
    signed = only_sealog_errors(lambda: open_checkpoint(data, VERIFIER, origin=ORIGIN))
    if signed is not None:
        assert signed.checkpoint == CHECKPOINT


@pytest.mark.slow
@FUZZ
@given(st.one_of(st.binary(max_size=600), mutated(CHECKPOINT.to_bytes())))
def test_checkpoint_parse_accepts_only_what_it_would_write(data: bytes) -> None:
    try:
        cp = Checkpoint.parse(data)
    except CheckpointFormatError:
        return
    assert cp.to_bytes() == data


# --- keys ---------------------------------------------------------------------------------------
def _mutated_text(sample: str) -> st.SearchStrategy[str]:
    return mutated(sample.encode()).map(lambda b: b.decode("utf-8", errors="replace"))


keys_in = st.one_of(
    st.text(max_size=200),
    _mutated_text(VERIFIER.vkey),
    _mutated_text(SIGNER.skey),
    _mutated_text(WITNESS.verifier().vkey),
    _mutated_text(WITNESS.skey),
)
not_text = st.one_of(st.none(), st.integers(), st.binary(max_size=60), st.lists(st.text()))


@pytest.mark.slow
@FUZZ
@given(key=st.one_of(keys_in, not_text))
@pytest.mark.parametrize(
    ("parse", "written"),
    [
        (Ed25519Verifier.from_vkey, "vkey"),
        (Ed25519Signer.from_skey, "skey"),
        (CosignatureVerifier.from_vkey, "vkey"),
    ],
    ids=["Ed25519Verifier.from_vkey", "Ed25519Signer.from_skey", "CosignatureVerifier.from_vkey"],
)
def test_key_parsers_accept_only_what_they_would_write(
    parse: Callable[[Any], Any], written: str, key: Any
) -> None:
    try:
        parsed = parse(key)
    except KeyFormatError:
        return
    # Accepted keys are written back the same, except that the key ID is always
    # written in lowercase hex (Go's note package also accepts uppercase). Names never hold a
    # "+", but the base64 key may, so the key ID is found by counting from the left.
    fields_before_key = 4 if written == "skey" else 2
    parts = key.split("+", fields_before_key)
    parts[-2] = parts[-2].lower()
    assert getattr(parsed, written) == "+".join(parts)


# --- proofs -------------------------------------------------------------------------------------
ints = st.one_of(
    st.integers(0, 70),
    st.sampled_from([0, 1, 2, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -1, -(2**63)]),
    st.integers(),
)
hashes = st.one_of(st.binary(min_size=32, max_size=32), st.binary(max_size=40))
proofs = st.lists(hashes, max_size=70)


@pytest.mark.slow
@FUZZ
@given(ints, ints, hashes, proofs, hashes)
def test_verify_inclusion_with_random_inputs(
    index: int, size: int, leaf_hash: bytes, proof: list[bytes], root: bytes
) -> None:
    only_sealog_errors(lambda: verify_inclusion(index, size, leaf_hash, proof, root))


@pytest.mark.slow
@FUZZ
@given(ints, ints, hashes, hashes, proofs)
def test_verify_consistency_with_random_inputs(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: list[bytes]
) -> None:
    only_sealog_errors(lambda: verify_consistency(size1, size2, root1, root2, proof))


@pytest.mark.slow
@FUZZ
@given(ints, st.lists(hashes, max_size=40), ints, hashes, proofs, proofs, ints)
def test_verify_range_with_random_inputs(
    start: int,
    leaf_hashes: list[bytes],
    size: int,
    root: bytes,
    frontier: list[bytes],
    consistency: list[bytes],
    derive: int,
) -> None:
    verified = only_sealog_errors(
        lambda: verify_range(start, leaf_hashes, size, root, frontier, consistency)
    )
    if verified is not None:
        only_sealog_errors(lambda: verified.inclusion_proof(derive))


# --- the byte-level targets of bench/fuzz_parsers.py ----------------------------------------------
@pytest.fixture(scope="module")
def fuzz_targets() -> ModuleType:
    sys.path.insert(0, str(REPO))
    try:
        return importlib.import_module("bench.fuzz_parsers")
    finally:
        sys.path.remove(str(REPO))


def test_byte_level_targets_hold_on_their_seeds_and_random_bytes(fuzz_targets: ModuleType) -> None:
    failures: list[str] = []

    @settings(max_examples=1500, deadline=timedelta(seconds=1), database=None)
    @given(
        st.one_of(
            st.binary(max_size=600),
            st.tuples(st.integers(0, len(fuzz_targets.TARGETS) - 1), st.binary(max_size=300)).map(
                lambda t: bytes([t[0]]) + t[1]
            ),
        )
    )
    def run(data: bytes) -> None:
        failure = fuzz_targets.check_one(data)
        if failure is not None:
            failures.append(failure)

    for seed in fuzz_targets.seed_inputs():
        assert fuzz_targets.check_one(seed) is None
    run()

    assert not failures, failures[:5]


@pytest.mark.slow
def test_the_fuzz_command_runs_for_its_time_budget_and_reports() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.fuzz_parsers", "--seconds", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tried = re.search(r"^inputs tried: ([\d,]+)$", proc.stdout, re.M)
    assert tried and int(tried.group(1).replace(",", "")) > 1000, proc.stdout
    assert re.search(r"^failures found: 0$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^fuzz engine: (atheris|hypothesis), \d+ targets", proc.stdout, re.M)
