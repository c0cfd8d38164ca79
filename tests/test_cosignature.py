"""Witness cosignatures (c2sp.org/tlog-cosignature, Ed25519 cosignature/v1)."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealog.client.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from sealog.client.cosignature import (
    COSIGNATURE_KEY_TYPE,
    MAX_TIMESTAMP,
    Cosignature,
    CosignatureVerifier,
    Cosigner,
    cosign_checkpoint,
    cosigned_message,
    verify_cosignatures,
)
from sealog.client.errors import (
    CheckpointFormatError,
    FormatError,
    InvalidSignatureError,
    KeyFormatError,
    NoteFormatError,
    UnverifiedNoteError,
    VerificationError,
)
from sealog.client.note import (
    Ed25519Signer,
    Ed25519Verifier,
    NoteSignature,
    key_hash,
    open_note,
    parse_note,
    sign_note,
)

DOC = Path(__file__).parent.parent / "docs" / "signed-notes.md"

# The worked example of docs/signed-notes.md. These keys are public test keys.
LOG_SKEY = "PRIVATE+KEY+example.com/sealog+78dc349f+AVTvkyhmcbBhUCSMull/y4rAdpdpJubxatttLIN89bDd"
LOG_VKEY = "example.com/sealog+78dc349f+AVJRtrNp4j/fqHzpY1bnx1s1rU8U+jE7T+D+chSPQe3s"
WITNESS_SKEY = (
    "PRIVATE+KEY+witness.example/w1+06d55e77+BIU+eXqxwyU3DmPEdnChfX/PCysguC582USinPek3xo8"
)
WITNESS_VKEY = "witness.example/w1+06d55e77+BHZB1SzWWQpM6PbPcSSp0Crp8ZZqjbLW++Ynj2YqP/BG"
BODY = b"example.com/sealog\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n"
LOG_LINE = (
    "\u2014 example.com/sealog eNw0nww+er6Q0UT782fsYgf8+PRGaNvyJpyVcDL6GPE5NLugXd"
    "bzLl5SRMQDYBq4SpbqKKFin6WHGhnzcM5yBxF4Xgw=\n"
).encode()
TIMESTAMP = 1700000000
WITNESS_LINE = (
    "\u2014 witness.example/w1 BtVedwAAAABlU/EA1ixhhnQ4QYjMrumQleke3w5Z8UhdhcgUjvX9MHbq"
    "G+/J6k3p94kD7vhlCXLBy4ey2jWVf9f4LU4dpkjnn+DLBg==\n"
).encode()
SIGNED = BODY + b"\n" + LOG_LINE
COSIGNED = SIGNED + WITNESS_LINE

LOG = Ed25519Signer.from_skey(LOG_SKEY)
WITNESS = Cosigner.from_skey(WITNESS_SKEY)


# --- The worked example -----------------------------------------------------


def test_worked_example_reproduces_byte_for_byte() -> None:
    checkpoint = Checkpoint.parse(BODY)
    assert sign_checkpoint(checkpoint, LOG) == SIGNED
    assert cosign_checkpoint(SIGNED, WITNESS, TIMESTAMP) == COSIGNED
    assert LOG.verifier().vkey == LOG_VKEY
    assert WITNESS.verifier().vkey == WITNESS_VKEY
    assert WITNESS.skey == WITNESS_SKEY


def test_worked_example_verifies() -> None:
    signed = open_checkpoint(COSIGNED, Ed25519Verifier.from_vkey(LOG_VKEY))
    assert signed.checkpoint.size == 8
    witness = CosignatureVerifier.from_vkey(WITNESS_VKEY)
    assert verify_cosignatures(COSIGNED, [witness]) == (
        Cosignature("witness.example/w1", 0x06D55E77, TIMESTAMP),
    )


def test_documentation_shows_the_tested_example() -> None:
    doc = DOC.read_text(encoding="utf-8")
    for value in (LOG_SKEY, LOG_VKEY, WITNESS_SKEY, WITNESS_VKEY, str(TIMESTAMP)):
        assert value in doc
    assert COSIGNED.decode() in doc
    assert cosigned_message(BODY, TIMESTAMP).decode() in doc


def test_signed_message_is_header_time_line_and_body() -> None:
    assert cosigned_message(BODY, TIMESTAMP) == b"cosignature/v1\ntime 1700000000\n" + BODY
    assert cosigned_message(BODY, 0).startswith(b"cosignature/v1\ntime 0\n")


def test_c2sp_example_cosignature_carries_the_spec_timestamp() -> None:
    # From tlog-cosignature.md: its signed-message example says "time 1679315147".
    line = (
        "\u2014 witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9d"
        "lrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n"
    )
    _, (signature,) = parse_note(b"x\n\n" + line.encode())
    assert signature.key_hash == 0x8D66CF3F
    assert CosignatureVerifier.timestamp_of(signature.signature) == 1679315147


# --- Round trips and tampering ----------------------------------------------


def test_round_trip_with_generated_keys() -> None:
    log = Ed25519Signer.generate("example.com/log")
    witness = Cosigner.generate("example.com/witness")
    note = sign_checkpoint(Checkpoint("example.com/log", 3, b"\x11" * 32), log)
    cosigned = cosign_checkpoint(note, witness, 1234)
    assert cosigned.startswith(note)
    assert open_checkpoint(cosigned, log.verifier()).checkpoint.size == 3
    (found,) = verify_cosignatures(cosigned, [witness.verifier()])
    assert found == Cosignature(witness.name, witness.key_hash, 1234)


def test_sign_uses_the_current_time() -> None:
    before = int(time.time())
    signature = WITNESS.sign(BODY)
    after = int(time.time())
    assert before <= CosignatureVerifier.timestamp_of(signature) <= after
    WITNESS.verifier().verify(BODY, signature)
    (found,) = verify_cosignatures(cosign_checkpoint(SIGNED, WITNESS), [WITNESS.verifier()])
    assert before <= found.timestamp <= int(time.time())


def test_tampered_timestamp_is_rejected() -> None:
    signature = WITNESS.sign_at(BODY, TIMESTAMP)
    for moved in (TIMESTAMP - 1, TIMESTAMP + 1, 0):
        forged = moved.to_bytes(8, "big") + signature[8:]
        with pytest.raises(InvalidSignatureError) as err:
            WITNESS.verifier().verify(BODY, forged)
        assert (err.value.name, err.value.key_hash) == (WITNESS.name, WITNESS.key_hash)
    line = NoteSignature(WITNESS.name, WITNESS.key_hash, (TIMESTAMP + 1).to_bytes(8, "big"))
    forged_line = NoteSignature(line.name, line.key_hash, line.signature + signature[8:])
    with pytest.raises(InvalidSignatureError):
        verify_cosignatures(SIGNED + forged_line.to_line(), [WITNESS.verifier()])


def test_tampered_body_is_rejected() -> None:
    signature = WITNESS.sign_at(BODY, TIMESTAMP)
    for body in (BODY.replace(b"\n8\n", b"\n9\n"), BODY.replace(b"sealog", b"seal0g")):
        with pytest.raises(InvalidSignatureError):
            WITNESS.verifier().verify(body, signature)


def test_flipping_any_byte_of_a_cosigned_note_is_detected() -> None:
    witness, log = WITNESS.verifier(), LOG.verifier()

    def accepted(note: bytes) -> bool:
        try:
            open_checkpoint(note, log)
            return verify_cosignatures(note, [witness]) != ()
        except (FormatError, VerificationError):
            return False

    assert accepted(COSIGNED)
    for mask in (0x01, 0x20, 0x80):
        for i in range(len(COSIGNED)):
            tampered = bytearray(COSIGNED)
            tampered[i] ^= mask
            assert not accepted(bytes(tampered)), f"flip 0x{mask:02x} at byte {i} accepted"


def test_cosignature_covers_extension_lines() -> None:
    body = Checkpoint("example.com/log", 1, b"\x22" * 32, ("ext",)).to_bytes()
    signature = WITNESS.sign_at(body, TIMESTAMP)
    WITNESS.verifier().verify(body, signature)
    with pytest.raises(InvalidSignatureError):
        WITNESS.verifier().verify(body.replace(b"ext", b"exu"), signature)


@given(st.integers(min_value=0, max_value=MAX_TIMESTAMP))
def test_any_valid_timestamp_round_trips(timestamp: int) -> None:
    signature = WITNESS.sign_at(BODY, timestamp)
    assert len(signature) == 72
    assert CosignatureVerifier.timestamp_of(signature) == timestamp
    WITNESS.verifier().verify(BODY, signature)


@given(st.binary(min_size=72, max_size=72))
def test_random_signatures_are_invalid(signature: bytes) -> None:
    with pytest.raises(InvalidSignatureError):
        WITNESS.verifier().verify(BODY, signature)


# --- Key IDs and key strings ------------------------------------------------


def test_key_id_uses_type_0x04() -> None:
    verifier = WITNESS.verifier()
    assert COSIGNATURE_KEY_TYPE == 0x04
    assert verifier.key_hash == key_hash(verifier.name, b"\x04" + verifier.public_key)
    plain = Ed25519Verifier.from_public_key(verifier.name, verifier.public_key)
    assert plain.key_hash == key_hash(verifier.name, b"\x01" + verifier.public_key)
    assert plain.key_hash != verifier.key_hash


def test_cosignature_and_plain_signature_by_one_key_do_not_mix() -> None:
    verifier = WITNESS.verifier()
    plain = Ed25519Signer(
        WITNESS.name,
        Ed25519Verifier.from_public_key(WITNESS.name, verifier.public_key).key_hash,
        WITNESS.seed,
    )
    both = sign_note(BODY, plain, existing=COSIGNED)
    # The plain line is no cosignature, and the cosignature is no plain signature.
    assert verify_cosignatures(both, [verifier]) == (
        Cosignature(WITNESS.name, WITNESS.key_hash, TIMESTAMP),
    )
    opened = open_note(both, [plain.verifier()])
    assert [s.key_hash for s in opened.verified] == [plain.key_hash]
    assert WITNESS.key_hash in [s.key_hash for s in opened.unverified]


def test_key_strings_round_trip() -> None:
    assert Cosigner.from_skey(WITNESS.skey) == WITNESS
    assert CosignatureVerifier.from_vkey(WITNESS_VKEY) == WITNESS.verifier()
    generated = Cosigner.generate("example.com/w2")
    assert CosignatureVerifier.from_vkey(generated.verifier().vkey) == generated.verifier()
    assert generated.skey.startswith("PRIVATE+KEY+example.com/w2+")
    assert base64.b64decode(generated.skey.split("+", 4)[4])[0] == 0x04


def test_plain_note_keys_are_refused_with_a_hint() -> None:
    with pytest.raises(KeyFormatError, match="plain Ed25519 note key"):
        CosignatureVerifier.from_vkey(LOG_VKEY)
    with pytest.raises(KeyFormatError, match="plain Ed25519 note key"):
        Cosigner.from_skey(LOG_SKEY)
    with pytest.raises(KeyFormatError, match="cosignature/v1 witness key"):
        Ed25519Verifier.from_vkey(WITNESS_VKEY)
    with pytest.raises(KeyFormatError, match="cosignature/v1 witness key"):
        Ed25519Signer.from_skey(WITNESS_SKEY)


@pytest.mark.parametrize(
    "skey",
    [
        WITNESS_SKEY.replace("06d55e77", "06d55e78"),
        WITNESS_SKEY.replace("witness.example/w1", "witness.example/w2"),
        WITNESS_SKEY[:-4],
        WITNESS_VKEY,
    ],
)
def test_malformed_cosigner_keys_are_rejected(skey: str) -> None:
    with pytest.raises(KeyFormatError) as err:
        Cosigner.from_skey(skey)
    assert WITNESS_SKEY.split("+", 4)[4][4:20] not in str(err.value)


def test_wrong_key_hash_in_verifier_key_is_rejected() -> None:
    with pytest.raises(KeyFormatError, match="does not match"):
        CosignatureVerifier.from_vkey(WITNESS_VKEY.replace("06d55e77", "06d55e78"))


def test_cosigner_repr_hides_the_private_key() -> None:
    text = repr(WITNESS) + str(WITNESS)
    assert "witness.example/w1" in text
    seed = WITNESS.seed
    for secret in (WITNESS_SKEY.split("+", 4)[4], seed.hex(), base64.b64encode(seed).decode()):
        assert secret not in text


# --- Refusals ---------------------------------------------------------------


@pytest.mark.parametrize("timestamp", [-1, MAX_TIMESTAMP + 1, 2**64])
def test_out_of_range_timestamps_cannot_be_signed(timestamp: int) -> None:
    with pytest.raises(ValueError, match="timestamp"):
        WITNESS.sign_at(BODY, timestamp)
    with pytest.raises(ValueError, match="timestamp"):
        cosign_checkpoint(SIGNED, WITNESS, timestamp)


def test_timestamp_above_2_63_is_refused_when_reading() -> None:
    signature = (2**63).to_bytes(8, "big") + b"\x00" * 64
    with pytest.raises(NoteFormatError, match="2\\*\\*63"):
        CosignatureVerifier.timestamp_of(signature)
    with pytest.raises(InvalidSignatureError):
        WITNESS.verifier().verify(BODY, signature)


@pytest.mark.parametrize("length", [0, 64, 71, 73])
def test_cosignatures_of_the_wrong_length_are_invalid(length: int) -> None:
    with pytest.raises(NoteFormatError, match="72"):
        CosignatureVerifier.timestamp_of(b"\x00" * length)
    with pytest.raises(InvalidSignatureError):
        WITNESS.verifier().verify(BODY, b"\x00" * length)


def test_only_checkpoints_can_be_cosigned() -> None:
    with pytest.raises(CheckpointFormatError):
        WITNESS.sign_at(b"hello\n", TIMESTAMP)
    with pytest.raises(CheckpointFormatError):
        cosign_checkpoint(sign_note(b"hello\n", LOG), WITNESS, TIMESTAMP)
    # A cosignature line on a note whose text is no checkpoint never verifies.
    forged = sign_note(b"hello\n", LOG) + WITNESS_LINE
    with pytest.raises(InvalidSignatureError):
        verify_cosignatures(forged, [WITNESS.verifier()])


# --- Collecting cosignatures ------------------------------------------------


def test_cosigning_again_replaces_the_witness_line() -> None:
    again = cosign_checkpoint(COSIGNED, WITNESS, TIMESTAMP + 60)
    _, signatures = parse_note(again)
    assert [s.name for s in signatures] == ["example.com/sealog", "witness.example/w1"]
    assert verify_cosignatures(again, [WITNESS.verifier()])[0].timestamp == TIMESTAMP + 60


def test_several_witnesses_and_unknown_lines() -> None:
    w2, w3 = Cosigner.generate("example.com/w2"), Cosigner.generate("example.com/w3")
    note = cosign_checkpoint(cosign_checkpoint(COSIGNED, w2, 5), w3, 6)
    found = verify_cosignatures(note, [WITNESS.verifier(), w3.verifier()])
    assert [(c.name, c.timestamp) for c in found] == [
        ("witness.example/w1", TIMESTAMP),
        ("example.com/w3", 6),
    ]
    assert verify_cosignatures(note, []) == ()
    assert verify_cosignatures(SIGNED, [WITNESS.verifier()]) == ()


def test_a_repeated_cosignature_counts_once() -> None:
    assert len(verify_cosignatures(COSIGNED + WITNESS_LINE, [WITNESS.verifier()])) == 1


def test_bad_cosignature_by_a_known_witness_rejects_the_note() -> None:
    other_time = cosign_checkpoint(
        sign_checkpoint(Checkpoint("example.com/sealog", 9, b"\x00" * 32), LOG),
        WITNESS,
        TIMESTAMP,
    )
    transplanted = SIGNED + other_time[other_time.rindex("\u2014".encode()) :]
    with pytest.raises(InvalidSignatureError) as err:
        verify_cosignatures(transplanted, [WITNESS.verifier()])
    assert err.value.name == "witness.example/w1"


def test_a_cosignature_is_not_a_log_signature() -> None:
    with pytest.raises(UnverifiedNoteError):
        open_checkpoint(BODY + b"\n" + WITNESS_LINE, LOG.verifier())
