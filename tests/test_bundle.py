"""Offline proof bundles (c2sp.org/tlog-proof@v1): they verify, and any flipped byte is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_support import RunningLog, ServeProcess, flip, run_sealog

from sealog.client.cosignature import Cosigner, cosign_checkpoint
from sealog.client.errors import (
    BundleFormatError,
    SealogError,
    VerificationError,
    WitnessPolicyError,
)
from sealog.client.hashing import leaf_hash
from sealog.client.monitor.bundle import ProofBundle
from sealog.client.note import Ed25519Signer
from sealog.client.witness_policy import WitnessPolicy

W1 = Cosigner.generate("w1.example/witness")
W2 = Cosigner.generate("w2.example/witness")


def bundle_for(log: RunningLog, index: int) -> ProofBundle:
    client = log.client()
    cp = client.checkpoint()
    entry, proof = client.entry_and_proof(index, cp)
    return ProofBundle.for_leaf(index, entry.leaf, proof.proof, cp.note)


def test_bundle_round_trip_and_format(log: RunningLog) -> None:
    log.client().append_batch([b"event %d" % i for i in range(11)])
    bundle = bundle_for(log, 6)
    data = bundle.to_bytes()
    lines = data.split(b"\n")
    assert lines[0] == b"c2sp.org/tlog-proof@v1"
    assert lines[1].startswith(b"extra ") and lines[2] == b"index 6"
    assert ProofBundle.parse(data) == bundle
    verified = ProofBundle.parse(data).verify(log.verifier)
    assert verified.index == 6 and verified.leaf is not None
    assert verified.leaf.payload == b"event 6"
    assert verified.checkpoint.checkpoint.size == 11
    assert verified.leaf_hash == leaf_hash(bundle.extra or b"")
    # The expected leaf hash, when given, must match.
    with pytest.raises(VerificationError, match="not the expected"):
        bundle.verify(log.verifier, expected_leaf_hash=b"\x00" * 32)
    # Another log's key, or another origin, is refused.
    other = Ed25519Signer.generate(log.origin).verifier()
    with pytest.raises(VerificationError):
        bundle.verify(other)
    with pytest.raises(VerificationError, match="origin"):
        bundle.verify(log.verifier, origin="another.example/log")


def test_bundle_without_leaf_needs_the_leaf_hash(log: RunningLog) -> None:
    log.client().append_batch([b"a", b"b", b"c"])
    full = bundle_for(log, 2)
    bare = ProofBundle(full.index, full.inclusion_proof, full.checkpoint)
    assert b"extra" not in bare.to_bytes()
    with pytest.raises(BundleFormatError, match="leaf hash"):
        bare.verify(log.verifier)
    assert bare.verify(log.verifier, expected_leaf_hash=leaf_hash(full.extra or b"")).index == 2


def flips(data: bytes) -> list[tuple[int, bytes]]:
    """Every one-bit change of ``data``: the lowest bit of each byte in turn."""
    return [(i, flip(data, i)) for i in range(len(data))]


def test_every_flipped_byte_is_rejected(log: RunningLog) -> None:
    log.client().append_batch([b"event %d" % i for i in range(13)])
    data = bundle_for(log, 5).to_bytes()
    for i, changed in flips(data):
        with pytest.raises(SealogError):
            ProofBundle.parse(changed).verify(log.verifier)
            pytest.fail(f"a bundle with byte {i} changed verified")


def test_every_flipped_byte_of_a_witnessed_bundle_is_rejected(log: RunningLog) -> None:
    log.client().append_batch([b"event %d" % i for i in range(5)])
    bundle = bundle_for(log, 3)
    note = cosign_checkpoint(cosign_checkpoint(bundle.checkpoint, W1, 1_800_000_000), W2)
    witnessed = ProofBundle(bundle.index, bundle.inclusion_proof, note, bundle.extra)
    policy = WitnessPolicy.from_vkeys([W1.verifier(), W2.verifier()])
    assert len(witnessed.verify(log.verifier, policy=policy).cosignatures) == 2
    with pytest.raises(WitnessPolicyError, match=W2.name):
        bundle.verify(log.verifier, policy=policy)
    data = witnessed.to_bytes()
    for i, changed in flips(data):
        with pytest.raises(SealogError):
            ProofBundle.parse(changed).verify(log.verifier, policy=policy)
            pytest.fail(f"a witnessed bundle with byte {i} changed verified")


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"c2sp.org/tlog-proof@v2\nindex 0\n\n",
        b"c2sp.org/tlog-proof@v1\nindex 00\n\n",
        b"c2sp.org/tlog-proof@v1\nindex -1\n\n",
        b"c2sp.org/tlog-proof@v1\nindex 1\nAAAA\n\n",
        b"c2sp.org/tlog-proof@v1\nextra \nindex 1\n\n",
        b"c2sp.org/tlog-proof@v1\nindex 1\n",
        b"c2sp.org/tlog-proof@v1\nextra AA==\n",
        b"c2sp.org/tlog-proof@v1\nindex 1\n\nnot a note",
    ],
)
def test_malformed_bundles(text: bytes) -> None:
    with pytest.raises(BundleFormatError):
        ProofBundle.parse(text)


@pytest.mark.slow
def test_prove_bundle_and_verify_cli(tmp_path: Path) -> None:
    proc = ServeProcess(tmp_path / "data", cwd=tmp_path)
    try:
        proc.wait_ready()
        common = ("--target", proc.target, "--vkey", proc.vkey)
        appended = run_sealog("append", *common, stdin="one\ntwo\nthree\n", cwd=tmp_path)
        assert appended.returncode == 0, appended.stderr
        made = run_sealog(
            "prove", "--index", "1", "--bundle", "p.tlog-proof", *common, cwd=tmp_path
        )
        assert made.returncode == 0, made.stderr
        assert "wrote the proof bundle" in made.stdout
    finally:
        proc.close()
    # The server is gone: verification needs only the file and the key.
    ok = run_sealog("verify", "p.tlog-proof", "--vkey", proc.vkey, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("VALID: entry 1") and "payload two" in ok.stdout
    data = (tmp_path / "p.tlog-proof").read_bytes()
    (tmp_path / "bad.tlog-proof").write_bytes(flip(data, len(data) // 2))
    bad = run_sealog("verify", "bad.tlog-proof", "--vkey", proc.vkey, cwd=tmp_path)
    assert bad.returncode == 1 and "error" in bad.stderr
    w = run_sealog(
        "verify", "p.tlog-proof", "--vkey", proc.vkey, "--witness-vkey", W1.verifier().vkey,
        cwd=tmp_path,
    )  # fmt: skip
    assert w.returncode == 1 and W1.name in w.stderr
