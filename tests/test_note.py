"""Signed notes (c2sp.org/signed-note), checked against golang.org/x/mod/sumdb/note data."""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealog.client.errors import (
    FormatError,
    InvalidSignatureError,
    KeyFormatError,
    NoteFormatError,
    UnverifiedNoteError,
    VerificationError,
)
from sealog.client.note import (
    MAX_NOTE_SIGNATURES,
    Ed25519Signer,
    Ed25519Verifier,
    NoteSignature,
    NoteSigner,
    NoteVerifier,
    key_hash,
    open_note,
    parse_note,
    sign_note,
)

VECTORS = Path(__file__).parent / "vectors"


def load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


XMOD = load("xmod_sumdb_note_vectors.json")
C2SP = {case["name"]: case for case in load("c2sp_signed_note_examples.json")["cases"]}

PETER_SKEY = XMOD["keys"]["PeterNeumann"]["skey"]
PETER_VKEY = XMOD["keys"]["PeterNeumann"]["vkey"]
ENOCH_VKEY = XMOD["keys"]["EnochRoot"]["vkey"]
TEXT = XMOD["sign"]["text"].encode()
PETER_NOTE = XMOD["sign"]["expected_note"].encode()
PETER_LINE = PETER_NOTE[len(TEXT) + 1 :]


def peter() -> Ed25519Verifier:
    return Ed25519Verifier.from_vkey(PETER_VKEY)


# --- The sumdb/note vectors -------------------------------------------------


def test_sign_reproduces_go_output_byte_for_byte() -> None:
    signer = Ed25519Signer.from_skey(XMOD["sign"]["skey"])
    assert sign_note(TEXT, signer) == PETER_NOTE


def test_signer_key_string_round_trips_and_matches_published_verifier_key() -> None:
    signer = Ed25519Signer.from_skey(PETER_SKEY)
    assert signer.skey == PETER_SKEY
    assert signer.verifier().vkey == PETER_VKEY
    assert signer.key_hash == 0xC74F20A3
    verifier = Ed25519Verifier.from_vkey(PETER_VKEY)
    assert verifier.vkey == PETER_VKEY
    assert verifier == signer.verifier()


def test_key_hash_is_sha256_of_name_newline_type_and_key() -> None:
    verifier = peter()
    assert key_hash("PeterNeumann", b"\x01" + verifier.public_key) == 0xC74F20A3
    # The type byte is part of the hash: the same key with another type is another key.
    assert key_hash("PeterNeumann", b"\x04" + verifier.public_key) != 0xC74F20A3


@pytest.mark.parametrize("vkey", XMOD["bad_vkeys"])
def test_go_rejected_verifier_keys_are_rejected(vkey: str) -> None:
    with pytest.raises(KeyFormatError):
        Ed25519Verifier.from_vkey(vkey)


def _case_id(case: dict[str, Any]) -> str:
    return str(case["name"])


@pytest.mark.parametrize("case", XMOD["open_cases"], ids=_case_id)
def test_go_open_cases(case: dict[str, Any]) -> None:
    note = base64.b64decode(case["note_b64"])
    verifiers = [Ed25519Verifier.from_vkey(v) for v in case["vkeys"]]
    if case["expect"] == "valid":
        opened = open_note(note, verifiers)
        assert [s.name for s in opened.verified] == case["verified"]
        assert [s.name for s in opened.unverified] == case.get("unverified", [])
        assert opened.text == TEXT
        return
    error = case["error"]
    if error.startswith("note has no verifiable signatures"):
        with pytest.raises(UnverifiedNoteError) as unverified:
            open_note(note, verifiers)
        assert str(unverified.value).startswith(error)
        assert unverified.value.note == note
    elif error.startswith("invalid signature for key"):
        with pytest.raises(InvalidSignatureError) as invalid:
            open_note(note, verifiers)
        assert str(invalid.value) == error
        assert (invalid.value.name, invalid.value.key_hash) == ("PeterNeumann", 0xC74F20A3)
    else:
        assert error.startswith("malformed note")
        with pytest.raises(NoteFormatError):
            open_note(note, verifiers)


# --- The C2SP spec examples -------------------------------------------------


def test_c2sp_verifier_key_example_verifies() -> None:
    case = C2SP["signed-note vkey example"]
    verifier = Ed25519Verifier.from_vkey(case["vkey"])
    opened = open_note(case["note"].encode(), [verifier])
    assert opened.text == b"This is an example message.\n"
    assert [(s.name, s.key_hash) for s in opened.verified] == [("example.com/foo", 0x530D903A)]


def test_text_ends_at_the_last_blank_line() -> None:
    text, signatures = parse_note(C2SP["signed-note intro example (quasimodo)"]["note"].encode())
    assert (
        text
        == (
            "Ognuno sta solo sul cuor della terra\n"
            "trafitto da un raggio di sole:\n"
            "\n"
            "ed è subito sera.\n"
        ).encode()
    )
    assert [s.name for s in signatures] == ["quasimodo.example/salvatore"]


def test_c2sp_checkpoint_example_parses_as_a_note() -> None:
    text, signatures = parse_note(
        C2SP["tlog-checkpoint example (behind-the-sofa)"]["note"].encode()
    )
    assert text.startswith(b"example.com/behind-the-sofa\n20852163\n")
    assert [(s.name, len(s.signature)) for s in signatures] == [("example.com/behind-the-sofa", 64)]


# --- Opening notes ----------------------------------------------------------


def test_round_trip_with_generated_key() -> None:
    signer = Ed25519Signer.generate("example.com/log")
    note = sign_note(b"hello\n", signer)
    opened = open_note(note, [signer.verifier()])
    assert opened.text == b"hello\n"
    assert opened.verified == (
        NoteSignature("example.com/log", signer.key_hash, signer.sign(b"hello\n")),
    )


def test_same_name_other_key_is_unknown_not_invalid() -> None:
    # signed-note: unknown keys are ignored even if they share a name (or an ID) with a known one.
    impostor = Ed25519Signer.generate("PeterNeumann")
    note = sign_note(TEXT, impostor, existing=PETER_NOTE)
    opened = open_note(note, [peter()])
    assert [s.name for s in opened.verified] == ["PeterNeumann"]
    assert [s.key_hash for s in opened.unverified] == [impostor.key_hash]


def test_same_key_id_other_name_is_unknown_not_invalid() -> None:
    raw = base64.b64encode((0xC74F20A3).to_bytes(4, "big") + b"\x00" * 64).decode()
    note = PETER_NOTE + f"— PeterNeumann2 {raw}\n".encode()
    opened = open_note(note, [peter()])
    assert [(s.name, s.key_hash) for s in opened.unverified] == [("PeterNeumann2", 0xC74F20A3)]


def test_repeated_signature_by_a_verified_key_counts_once() -> None:
    opened = open_note(PETER_NOTE + PETER_LINE, [peter()])
    assert len(opened.verified) == 1


def test_later_lines_by_an_already_verified_key_are_skipped_as_in_go() -> None:
    bad = PETER_LINE.replace(b"x08go/ZJ", b"x08go/ZK")
    assert open_note(PETER_NOTE + bad, [peter()]).verified[0].name == "PeterNeumann"
    with pytest.raises(InvalidSignatureError):
        open_note(TEXT + b"\n" + bad + PETER_LINE, [peter()])


def test_identical_unknown_lines_are_kept_once() -> None:
    note = PETER_NOTE + _enoch_line() + _enoch_line()
    opened_note = open_note(note, [peter()])
    assert [s.name for s in opened_note.unverified] == ["EnochRoot"]


def _enoch_line() -> bytes:
    case = XMOD["open_cases"][0]
    return base64.b64decode(case["note_b64"])[len(PETER_NOTE) :]


def test_unverified_error_names_the_keys_that_did_sign() -> None:
    with pytest.raises(UnverifiedNoteError) as err:
        open_note(PETER_NOTE, [Ed25519Verifier.from_vkey(ENOCH_VKEY)])
    assert "PeterNeumann+c74f20a3" in str(err.value)


def test_two_different_verifiers_with_the_same_name_and_id_are_refused() -> None:
    class Twin:
        name = "PeterNeumann"
        key_hash = 0xC74F20A3

        def verify(self, message: bytes, signature: bytes) -> None:
            return None

    with pytest.raises(ValueError, match="ambiguous key PeterNeumann\\+c74f20a3"):
        open_note(PETER_NOTE, [peter(), Twin()])
    # The same verifier twice is not ambiguous.
    assert open_note(PETER_NOTE, [peter(), peter()]).verified


def test_any_verifier_implementing_the_protocol_is_used() -> None:
    calls: list[tuple[bytes, bytes]] = []

    class Recording:
        name = "PeterNeumann"
        key_hash = 0xC74F20A3

        def verify(self, message: bytes, signature: bytes) -> None:
            calls.append((message, signature))

    verifier: NoteVerifier = Recording()
    open_note(PETER_NOTE, [verifier])
    assert calls == [(TEXT, parse_note(PETER_NOTE)[1][0].signature)]


def test_at_most_100_signatures() -> None:
    assert MAX_NOTE_SIGNATURES == 100
    open_note(TEXT + b"\n" + PETER_LINE * 100, [peter()])
    with pytest.raises(NoteFormatError, match="101"):
        parse_note(TEXT + b"\n" + PETER_LINE * 101)


@pytest.mark.parametrize(
    ("note", "reason"),
    [
        (PETER_NOTE.replace("—".encode(), b"-"), "em dash"),
        (PETER_NOTE.replace(b"PeterNeumann ", b"PeterNeumann  "), "base64"),
        (PETER_NOTE.replace(b"PeterNeumann ", b"Peter+Neumann "), "contains '\\+'"),
        (PETER_NOTE.replace(b"PeterNeumann ", "Peter\u2003Neumann ".encode()), "space"),
        (PETER_NOTE.replace(b"PeterNeumann ", "Peter\u00a0Neumann ".encode()), "space"),
        (PETER_NOTE.replace(b"x08go/ZJ", b"x08go_ZJ"), "base64"),
        (PETER_NOTE.replace(b"AM=\n", b"AM\n"), "base64"),
        (PETER_NOTE.replace(b"AM=\n", b"AN=\n"), "canonical"),  # non-zero padding bits
        (TEXT + b"\n" + "— PeterNeumann \n".encode(), "base64"),
        (TEXT + b"\n" + "— PeterNeumann\n".encode(), "base64"),
        (TEXT + b"\n" + "— PeterNeumann x08g\n".encode(), "4-byte key ID"),
        (TEXT + b"\n" + "—  x08go/ZJkuBS9UG\n".encode(), "empty"),
        (PETER_NOTE.replace(b"\n", b"\r\n"), "control character"),
        (b"\x7fok\n\n" + PETER_LINE + b"\xed\xa0\x80", "UTF-8"),  # encoded surrogate
        (PETER_NOTE + b"\n", "signature line"),
        (PETER_NOTE[:-1] + b"\t\n", "control character"),
    ],
)
def test_malformed_notes_are_rejected_with_a_reason(note: bytes, reason: str) -> None:
    with pytest.raises(NoteFormatError, match=reason):
        open_note(note, [peter()])


def test_delete_character_is_allowed_as_in_go() -> None:
    # Only characters below U+0020 are forbidden; U+007F is not.
    signer = Ed25519Signer.from_skey(PETER_SKEY)
    note = sign_note(b"rub\x7fout\n", signer)
    assert open_note(note, [peter()]).text == b"rub\x7fout\n"


@pytest.mark.parametrize("mask", [0x01, 0x20, 0x80])
def test_flipping_any_byte_of_a_signed_note_is_detected(mask: int) -> None:
    verifier = peter()
    for i in range(len(PETER_NOTE)):
        tampered = bytearray(PETER_NOTE)
        tampered[i] ^= mask
        with pytest.raises((FormatError, VerificationError)):
            open_note(bytes(tampered), [verifier])


# --- Signing ----------------------------------------------------------------


def test_adding_a_signature_keeps_existing_lines_first() -> None:
    peter_signer = Ed25519Signer.from_skey(PETER_SKEY)
    other = Ed25519Signer.generate("example.com/witness")
    note = sign_note(TEXT, other, existing=PETER_NOTE)
    assert note.startswith(PETER_NOTE)
    opened = open_note(note, [peter_signer.verifier(), other.verifier()])
    assert [s.name for s in opened.verified] == ["PeterNeumann", "example.com/witness"]


def test_signing_again_with_the_same_key_replaces_its_line() -> None:
    peter_signer = Ed25519Signer.from_skey(PETER_SKEY)
    other = Ed25519Signer.generate("example.com/witness")
    twice = sign_note(TEXT, other, existing=PETER_NOTE)
    again = sign_note(TEXT, peter_signer, existing=twice)
    _, signatures = parse_note(again)
    assert [s.name for s in signatures] == ["example.com/witness", "PeterNeumann"]


def test_several_signers_sign_in_the_order_given() -> None:
    a, b = Ed25519Signer.generate("a.example"), Ed25519Signer.generate("b.example")
    _, signatures = parse_note(sign_note(TEXT, b, a))
    assert [s.name for s in signatures] == ["b.example", "a.example"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (b"no newline", "end with a newline"),
        (b"", "end with a newline"),
        (b"bell\x07\n", "control character"),
        (b"\xff\n", "UTF-8"),
    ],
)
def test_sign_refuses_text_that_cannot_be_a_note(text: bytes, reason: str) -> None:
    with pytest.raises(NoteFormatError, match=reason):
        sign_note(text, Ed25519Signer.from_skey(PETER_SKEY))


def test_sign_needs_a_signer_and_distinct_keys() -> None:
    signer = Ed25519Signer.from_skey(PETER_SKEY)
    with pytest.raises(NoteFormatError, match="at least one signer"):
        sign_note(TEXT)
    with pytest.raises(NoteFormatError, match="share the key"):
        sign_note(TEXT, signer, signer)


def test_sign_refuses_an_existing_note_with_other_text() -> None:
    with pytest.raises(NoteFormatError, match="differs"):
        sign_note(b"other\n", Ed25519Signer.generate("x"), existing=PETER_NOTE)


def test_sign_refuses_to_exceed_the_signature_limit() -> None:
    crowded = (
        TEXT
        + b"\n"
        + b"".join(NoteSignature(f"w{i}", i, b"\x01" * 64).to_line() for i in range(100))
    )
    with pytest.raises(NoteFormatError, match="101"):
        sign_note(TEXT, Ed25519Signer.generate("one-more"), existing=crowded)


def test_sign_refuses_a_signer_with_an_invalid_name() -> None:
    class Spacey:
        name = "has space"
        key_hash = 1

        def sign(self, message: bytes) -> bytes:
            return b"\x00" * 64

    signer: NoteSigner = Spacey()
    with pytest.raises(NoteFormatError, match="white space"):
        sign_note(TEXT, signer)


# --- Keys -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vkey", "reason"),
    [
        ("PeterNeumann", "form"),
        ("PeterNeumann+c74f20a3", "form"),
        ("PeterNeumann+c74f20a+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "8 hex"),
        ("PeterNeumann+0xc74f20+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "8 hex"),
        ("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "does not match"),
        ("PeterNeumanm+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "does not match"),
        ("+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "empty"),
        ("Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "white space"),
        ("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T", "base64"),
        ("PeterNeumann+c74f20a3+", "base64"),
        ("PeterNeumann+c74f20a3+BBpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "cosignature"),
        (PETER_SKEY, "private"),
    ],
)
def test_malformed_verifier_keys_are_rejected_with_a_reason(vkey: str, reason: str) -> None:
    with pytest.raises(KeyFormatError, match=reason):
        Ed25519Verifier.from_vkey(vkey)


def test_verifier_key_hash_may_be_upper_case_hex_as_in_go() -> None:
    verifier = Ed25519Verifier.from_vkey(PETER_VKEY.replace("c74f20a3", "C74F20A3"))
    assert verifier.vkey == PETER_VKEY


SEED_B64 = PETER_SKEY.split("+", 4)[4]


@pytest.mark.parametrize(
    "skey",
    [
        PETER_VKEY,
        PETER_SKEY.replace("PRIVATE+KEY", "PRIVATE+KEYS"),
        PETER_SKEY.replace("c74f20a3", "c74f20a4"),
        PETER_SKEY[:-4],
        PETER_SKEY.replace("+AYEK", "+BIEK"),
    ],
)
def test_malformed_signer_keys_are_rejected_without_echoing_the_secret(skey: str) -> None:
    with pytest.raises(KeyFormatError) as err:
        Ed25519Signer.from_skey(skey)
    secret = SEED_B64[4:20]
    assert secret not in str(err.value)


def test_signer_repr_hides_the_private_key() -> None:
    signer = Ed25519Signer.from_skey(PETER_SKEY)
    text = repr(signer) + str(signer)
    assert "PeterNeumann" in text
    assert "c74f20a3" in text
    seed = base64.b64decode(SEED_B64)[1:]
    for secret in (SEED_B64, seed.hex(), repr(seed)[2:20], base64.b64encode(seed).decode()):
        assert secret not in text


def test_constructors_check_the_key_hash() -> None:
    verifier = peter()
    with pytest.raises(KeyFormatError, match="does not match"):
        Ed25519Verifier("PeterNeumann", 0xC74F20A4, verifier.public_key)
    with pytest.raises(KeyFormatError, match="32 bytes"):
        Ed25519Verifier.from_public_key("PeterNeumann", verifier.public_key[:31])
    assert Ed25519Verifier.from_public_key("PeterNeumann", verifier.public_key) == verifier


@pytest.mark.parametrize(
    "name",
    ["", "a b", "a\tb", "a\u00a0b", "a\u2003b", "a\u3000b", "a+b", "a\x01b", "\udc80"],
)
def test_invalid_key_names_are_refused(name: str) -> None:
    with pytest.raises(KeyFormatError):
        Ed25519Signer.generate(name)


def test_unicode_key_names_are_fine() -> None:
    signer = Ed25519Signer.generate("пример.example/лог")
    assert Ed25519Verifier.from_vkey(signer.verifier().vkey) == signer.verifier()
    assert open_note(sign_note(TEXT, signer), [signer.verifier()]).verified


def test_verify_raises_instead_of_returning_false() -> None:
    verifier = peter()
    signature = parse_note(PETER_NOTE)[1][0].signature
    verifier.verify(TEXT, signature)
    with pytest.raises(InvalidSignatureError):
        verifier.verify(TEXT + b"x", signature)
    with pytest.raises(InvalidSignatureError):
        verifier.verify(TEXT, signature[:63])


# --- Properties -------------------------------------------------------------

note_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], min_codepoint=0x20) | st.just("\n"),
).map(lambda s: (s + "\n").encode())

SIGNER = Ed25519Signer.generate("prop.example/log")


@given(note_text)
@settings(max_examples=200)
def test_any_valid_text_round_trips(text: bytes) -> None:
    opened = open_note(sign_note(text, SIGNER), [SIGNER.verifier()])
    assert opened.text == text


@given(st.binary(max_size=400))
@settings(max_examples=500)
def test_random_bytes_only_raise_format_or_verification_errors(data: bytes) -> None:
    with contextlib.suppress(FormatError, VerificationError):
        open_note(data, [peter()])


@given(st.lists(st.sampled_from([PETER_LINE, b"\n", "— ".encode(), b"A", b"=", b" x"]), max_size=8))
def test_mangled_signature_blocks_only_raise_format_or_verification_errors(
    parts: list[bytes],
) -> None:
    with contextlib.suppress(FormatError, VerificationError):
        open_note(TEXT + b"\n" + b"".join(parts), [peter()])
