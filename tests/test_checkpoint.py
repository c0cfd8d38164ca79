"""Checkpoints (c2sp.org/tlog-checkpoint): strict parsing, signing, opening."""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealog.client.checkpoint import (
    Checkpoint,
    SignedCheckpoint,
    open_checkpoint,
    sign_checkpoint,
)
from sealog.client.cosignature import CosignatureVerifier, verify_cosignatures
from sealog.client.errors import (
    CheckpointFormatError,
    FormatError,
    InvalidSignatureError,
    KeyFormatError,
    UnverifiedNoteError,
    VerificationError,
)
from sealog.client.note import Ed25519Signer, Ed25519Verifier, open_note, parse_note, sign_note

VECTORS = Path(__file__).parent / "vectors"


def load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


TDEV = load("tdev_formats_checkpoint_vectors.json")
REKOR = load("sigstore_rekor_v2_staging_entry.json")
C2SP = {case["name"]: case for case in load("c2sp_signed_note_examples.json")["cases"]}

ROOT = b"\xfb\xef\xbe\xff\xff\xff" + bytes(range(26))
ROOT_B64 = base64.b64encode(ROOT).decode()  # "++++////AAEC...GRo="
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# Same 32 bytes, but with the two unused bits of the last character set.
ROOT_B64_LOOSE = ROOT_B64[:-2] + ALPHABET[ALPHABET.index(ROOT_B64[-2]) | 3] + "="
LOG = Ed25519Signer.generate("example.com/log")


# --- Real checkpoints -------------------------------------------------------


def test_real_sum_golang_org_checkpoint_verifies() -> None:
    real = TDEV["real_sumdb_checkpoint"]
    signed = open_checkpoint(
        real["note"].encode(), Ed25519Verifier.from_vkey(real["vkey"]), origin=real["origin"]
    )
    assert signed.checkpoint.origin == "go.sum database tree"
    assert signed.checkpoint.size == 6476701
    assert signed.checkpoint.root_hash == base64.b64decode(
        "mb8QLQIs0Z0yP5Cstq6guj87oXWeC9gEM8oVikmm9Wk="
    )
    assert signed.note == real["note"].encode()
    assert [s.name for s in signed.verified] == ["sum.golang.org"]


def test_witnessed_sumdb_checkpoint_log_signature_verifies() -> None:
    cosigned = TDEV["cosigned_sumdb_checkpoint"]
    (log_vkey,) = cosigned["vkeys_log"]
    signed = open_checkpoint(cosigned["note"].encode(), Ed25519Verifier.from_vkey(log_vkey))
    assert signed.checkpoint.size == 6476701
    assert [s.name for s in signed.verified] == ["sum.golang.org"]


def test_old_style_witness_signatures_are_plain_ed25519_note_signatures() -> None:
    # These witness lines predate cosignature/v1: they are type 0x01 Ed25519
    # signatures of the checkpoint text, with no timestamp.
    cosigned = TDEV["cosigned_sumdb_checkpoint"]
    note = cosigned["note"].encode()
    witnesses = [Ed25519Verifier.from_vkey(v) for v in cosigned["vkeys_witnesses"]]
    opened = open_note(note, witnesses)
    assert [s.name for s in opened.verified] == ["bananas", "monkeys", "witness"]
    assert [s.name for s in opened.unverified] == ["sum.golang.org"]
    assert all(len(s.signature) == 64 for s in opened.verified)
    # As cosignature/v1 keys (type 0x04) the same public keys have other key
    # IDs, so none of these lines is a cosignature.
    as_cosigners = [CosignatureVerifier.from_public_key(w.name, w.public_key) for w in witnesses]
    assert all(c.key_hash != w.key_hash for c, w in zip(as_cosigners, witnesses, strict=True))
    assert verify_cosignatures(note, as_cosigners) == ()
    with pytest.raises(KeyFormatError, match="plain Ed25519 note key"):
        CosignatureVerifier.from_vkey(cosigned["vkeys_witnesses"][0])


def test_rekor_v2_checkpoint_verifies_and_parses() -> None:
    signed = open_checkpoint(
        REKOR["checkpoint_note"].encode(),
        Ed25519Verifier.from_vkey(REKOR["vkey"]),
        origin=REKOR["log_name"],
    )
    assert signed.checkpoint == Checkpoint(
        "log2025-alpha1.rekor.sigstage.dev",
        646,
        base64.b64decode(REKOR["inclusion"]["root_b64"]),
    )


def test_rekor_vkey_is_derived_from_its_raw_public_key() -> None:
    verifier = Ed25519Verifier.from_public_key(
        REKOR["log_name"], base64.b64decode(REKOR["ed25519_pubkey_b64"])
    )
    assert verifier.vkey == REKOR["vkey"]


def test_c2sp_checkpoint_example_parses() -> None:
    text, _ = parse_note(C2SP["tlog-checkpoint example (behind-the-sofa)"]["note"].encode())
    checkpoint = Checkpoint.parse(text)
    assert checkpoint.origin == "example.com/behind-the-sofa"
    assert checkpoint.size == 20852163
    assert checkpoint.root_hash == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert checkpoint.extensions == ()
    assert checkpoint.to_bytes() == text


# --- Strict parsing ---------------------------------------------------------

# Which part of the message names the rule each derived reason is about.
REASON_WORDS = {
    "root hash is": "root hash",
    "need at least 3 lines": "3 lines",
    "empty origin line": "origin",
    "note text must end with newline": "newline",
    "tree size": "tree size",
    "root hash line is not standard base64": "base64",
}


def _reason_word(reason: str) -> str:
    reason = reason.removeprefix("checkpoint: ")
    for prefix, word in REASON_WORDS.items():
        if reason.startswith(prefix):
            return word
    raise AssertionError(f"no expectation for reason {reason!r}")


@pytest.mark.parametrize("case", TDEV["checkpoint_body_cases"], ids=lambda case: str(case["desc"]))
def test_formats_body_cases(case: dict[str, Any]) -> None:
    body = case["text"].encode()
    if case["c2sp_strict_valid"]:
        Checkpoint.parse(body)
        return
    with pytest.raises(CheckpointFormatError) as err:
        Checkpoint.parse(body)
    assert _reason_word(case["c2sp_strict_reason"]) in str(err.value)


@pytest.mark.parametrize(
    ("size_line", "size"),
    [("0", 0), ("1", 1), ("18446744073709551615", 2**64 - 1), ("20852163", 20852163)],
)
def test_canonical_tree_sizes_parse(size_line: str, size: int) -> None:
    body = f"log\n{size_line}\n{ROOT_B64}\n".encode()
    assert Checkpoint.parse(body).size == size


@pytest.mark.parametrize(
    "size_line",
    [
        "",
        "00",
        "007",
        "+5",
        "-0",
        " 5",
        "5 ",
        "1_000",
        "0x10",
        "1e3",
        "٣",
        "١٢",
        "18446744073709551616",
    ],
)
def test_non_canonical_or_out_of_range_tree_sizes_are_rejected(size_line: str) -> None:
    with pytest.raises(CheckpointFormatError, match="tree size"):
        Checkpoint.parse(f"log\n{size_line}\n{ROOT_B64}\n".encode())


def test_a_tree_size_longer_than_int_conversion_allows_is_out_of_range() -> None:
    # 5,001 digits: past Python's 4,300-digit int() limit, refused on its length.
    with pytest.raises(CheckpointFormatError, match="out of range"):
        Checkpoint.parse(f"log\n1{'0' * 5000}\n{ROOT_B64}\n".encode())


@pytest.mark.parametrize(
    ("root_line", "reason"),
    [
        (ROOT_B64.rstrip("="), "base64"),  # missing padding
        (ROOT_B64 + "=", "base64"),  # extra padding
        (ROOT_B64_LOOSE, "base64"),  # non-zero padding bits: same bytes, other text
        (ROOT_B64.replace("/", "_"), "base64"),  # URL-safe alphabet
        (ROOT_B64.replace("+", "-"), "base64"),
        (" " + ROOT_B64, "base64"),
        (ROOT_B64 + "\r", "control character|base64"),
        (base64.b64encode(ROOT[:31]).decode(), "31 bytes"),
        (base64.b64encode(ROOT + b"\x00").decode(), "33 bytes"),
        ("", "0 bytes"),
    ],
)
def test_bad_root_hash_lines_are_rejected(root_line: str, reason: str) -> None:
    assert root_line != ROOT_B64
    with pytest.raises(CheckpointFormatError, match=reason):
        Checkpoint.parse(f"log\n1\n{root_line}\n".encode())


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (f"log\n1\n{ROOT_B64}\n\n".encode(), "extension"),  # trailing blank line
        (f"log\n1\n{ROOT_B64}\next\n\nmore\n".encode(), "extension"),
        (f"log\n1\n{ROOT_B64}".encode(), "newline"),
        (f"log\r\n1\n{ROOT_B64}\n".encode(), "control character"),
        (f"l\x00g\n1\n{ROOT_B64}\n".encode(), "control character"),
        (f"log\n1\n{ROOT_B64}\nex\tt\n".encode(), "control character"),
        (b"l\xffg\n1\n" + ROOT_B64.encode() + b"\n", "UTF-8"),
        (b"log\n1\n", "3 lines"),
        (b"", "newline"),
    ],
)
def test_malformed_bodies_are_rejected(body: bytes, reason: str) -> None:
    with pytest.raises(CheckpointFormatError, match=reason):
        Checkpoint.parse(body)


def test_origin_may_contain_spaces_and_extensions_are_kept() -> None:
    body = f"go.sum database tree\n5\n{ROOT_B64}\nfirst ext\nsecond — ext\n".encode()
    checkpoint = Checkpoint.parse(body)
    assert checkpoint.origin == "go.sum database tree"
    assert checkpoint.extensions == ("first ext", "second — ext")
    assert checkpoint.to_bytes() == body


# --- Construction -----------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"origin": ""}, "empty origin"),
        ({"origin": "a\nb"}, "newline"),
        ({"origin": "a\x1bb"}, "control character"),
        ({"origin": "\udc80"}, "UTF-8"),
        ({"size": -1}, "out of range"),
        ({"size": 2**64}, "out of range"),
        ({"size": True}, "int"),
        ({"size": 1.0}, "int"),
        ({"root_hash": ROOT[:31]}, "31 bytes"),
        ({"root_hash": ROOT_B64}, "bytes"),
        ({"extensions": ("",)}, "empty extension"),
        ({"extensions": ("a\nb",)}, "newline"),
        ({"extensions": "abc"}, "sequence"),
    ],
)
def test_constructor_refuses_invalid_fields(kwargs: dict[str, Any], reason: str) -> None:
    fields: dict[str, Any] = {"origin": "example.com/log", "size": 1, "root_hash": ROOT}
    fields.update(kwargs)
    with pytest.raises(CheckpointFormatError, match=reason):
        Checkpoint(**fields)


def test_extensions_given_as_a_list_become_a_tuple() -> None:
    checkpoint = Checkpoint("log", 1, ROOT, ["ext"])  # type: ignore[arg-type]
    assert checkpoint.extensions == ("ext",)
    assert hash(checkpoint) == hash(Checkpoint("log", 1, ROOT, ("ext",)))


def test_root_hash_has_exactly_one_accepted_spelling() -> None:
    # A lenient decoder reads the same root from ROOT_B64_LOOSE, so two
    # different checkpoint texts would carry one tree head. Only one parses.
    assert ROOT_B64.startswith("++++////")
    assert base64.b64decode(ROOT_B64_LOOSE) == ROOT
    assert Checkpoint.parse(f"log\n1\n{ROOT_B64}\n".encode()).root_hash == ROOT
    with pytest.raises(CheckpointFormatError, match="base64"):
        Checkpoint.parse(f"log\n1\n{ROOT_B64_LOOSE}\n".encode())


def test_to_bytes_is_the_c2sp_note_text() -> None:
    checkpoint = Checkpoint("example.com/log", 10, ROOT, ("ext",))
    assert checkpoint.to_bytes() == f"example.com/log\n10\n{ROOT_B64}\next\n".encode()


# --- Signing and opening ----------------------------------------------------


def test_sign_and_open_round_trip() -> None:
    checkpoint = Checkpoint("example.com/log", 42, ROOT, ("ext one",))
    note = sign_checkpoint(checkpoint, LOG)
    signed = open_checkpoint(note, LOG.verifier(), origin="example.com/log")
    assert signed == SignedCheckpoint(checkpoint, note, signed.verified)
    assert [s.key_hash for s in signed.verified] == [LOG.key_hash]


def test_checkpoint_signed_by_another_key_is_unverified() -> None:
    note = sign_checkpoint(Checkpoint("example.com/log", 1, ROOT), Ed25519Signer.generate("x"))
    with pytest.raises(UnverifiedNoteError):
        open_checkpoint(note, LOG.verifier())


def test_checkpoint_signed_by_a_lookalike_key_is_unverified() -> None:
    lookalike = Ed25519Signer.generate(LOG.name)
    note = sign_checkpoint(Checkpoint("example.com/log", 1, ROOT), lookalike)
    with pytest.raises(UnverifiedNoteError):
        open_checkpoint(note, LOG.verifier())


def test_origin_mismatch_names_both_origins() -> None:
    note = sign_checkpoint(Checkpoint("example.com/log", 1, ROOT), LOG)
    with pytest.raises(VerificationError) as err:
        open_checkpoint(note, LOG.verifier(), origin="example.com/other")
    assert "example.com/log" in str(err.value)
    assert "example.com/other" in str(err.value)


def test_signed_text_that_is_not_a_checkpoint_is_rejected() -> None:
    note = sign_note(b"hello\nworld\n", LOG)
    with pytest.raises(CheckpointFormatError):
        open_checkpoint(note, LOG.verifier())


def test_flipping_any_byte_of_a_signed_checkpoint_is_detected() -> None:
    note = sign_checkpoint(Checkpoint("example.com/log", 7, ROOT, ("ext",)), LOG)
    verifier = LOG.verifier()
    for mask in (0x01, 0x20, 0x80):
        for i in range(len(note)):
            tampered = bytearray(note)
            tampered[i] ^= mask
            with pytest.raises((FormatError, VerificationError)):
                open_checkpoint(bytes(tampered), verifier, origin="example.com/log")


def test_bad_log_signature_is_invalid_not_unverified() -> None:
    note = sign_checkpoint(Checkpoint("example.com/log", 7, ROOT), LOG)
    other = sign_checkpoint(Checkpoint("example.com/log", 8, ROOT), LOG)
    swapped = note[: note.index(b"\n\n") + 2] + other[other.index(b"\n\n") + 2 :]
    with pytest.raises(InvalidSignatureError):
        open_checkpoint(swapped, LOG.verifier())


# --- Properties -------------------------------------------------------------

line = st.text(alphabet=st.characters(blacklist_categories=["Cs"], min_codepoint=0x20), min_size=1)
checkpoints = st.builds(
    Checkpoint,
    origin=line,
    size=st.integers(min_value=0, max_value=2**64 - 1),
    root_hash=st.binary(min_size=32, max_size=32),
    extensions=st.lists(line, max_size=3).map(tuple),
)


@given(checkpoints)
def test_parse_inverts_to_bytes(checkpoint: Checkpoint) -> None:
    assert Checkpoint.parse(checkpoint.to_bytes()) == checkpoint


@given(checkpoints)
@settings(max_examples=50)
def test_signed_checkpoints_open(checkpoint: Checkpoint) -> None:
    signed = open_checkpoint(sign_checkpoint(checkpoint, LOG), LOG.verifier())
    assert signed.checkpoint == checkpoint


@given(st.binary(max_size=200))
@settings(max_examples=500)
def test_random_bodies_only_raise_checkpoint_format_errors(body: bytes) -> None:
    with contextlib.suppress(CheckpointFormatError):
        checkpoint = Checkpoint.parse(body)
        assert checkpoint.to_bytes() == body


@given(st.lists(st.sampled_from(["log", "0", "01", ROOT_B64, "", "x", " "]), max_size=6))
def test_any_body_that_parses_is_canonical(lines: list[str]) -> None:
    body = "".join(part + "\n" for part in lines).encode()
    with contextlib.suppress(CheckpointFormatError):
        assert Checkpoint.parse(body).to_bytes() == body


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_random_notes_only_raise_format_or_verification_errors(note: bytes) -> None:
    with contextlib.suppress(FormatError, VerificationError):
        open_checkpoint(note, LOG.verifier())
