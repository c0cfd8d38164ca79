"""The shared text encodings: strict base64 and canonical decimal (sealog.client._encoding)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealog.client._encoding import (
    decode_base64,
    encode_base64,
    is_canonical_decimal,
    parse_decimal,
)

MAX_UINT64 = 2**64 - 1
MAX_INT63 = 2**63 - 1

# --- canonical decimal --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("1", 1),
        ("10", 10),
        ("9", 9),
        (str(MAX_INT63), MAX_INT63),
        (str(MAX_UINT64), MAX_UINT64),
    ],
)
def test_decimal_accepts_canonical_values_up_to_the_bound(text: str, value: int) -> None:
    assert is_canonical_decimal(text)
    assert parse_decimal(text, MAX_UINT64) == value
    assert parse_decimal(text.encode("ascii"), MAX_UINT64) == value


@pytest.mark.parametrize(
    "text",
    [
        "",
        "00",
        "01",
        "007",
        "+1",
        "-1",
        "-0",
        " 1",
        "1 ",
        "1\n",
        "\t1",
        "1_000",
        "0x10",
        "1e3",
        "1.0",
        "\u0661",  # ARABIC-INDIC DIGIT ONE: int() takes it, the rule does not
        "1\u0660",
        "\uff11",  # FULLWIDTH DIGIT ONE
        "\u00b9",  # SUPERSCRIPT ONE
    ],
)
def test_decimal_rejects_non_canonical_text(text: str) -> None:
    assert not is_canonical_decimal(text)
    assert parse_decimal(text, MAX_UINT64) is None
    assert parse_decimal(text.encode("utf-8"), MAX_UINT64) is None


def test_decimal_rejects_bytes_outside_ascii() -> None:
    for raw in (b"\xd9\xa1", b"1\xff", b"\x00", b"1\x00"):
        assert not is_canonical_decimal(raw)
        assert parse_decimal(raw, MAX_UINT64) is None


@pytest.mark.parametrize("bound", [0, 9, 10, MAX_INT63, MAX_UINT64, 10**20 - 1])
def test_decimal_bound_is_inclusive(bound: int) -> None:
    assert parse_decimal(str(bound), bound) == bound
    assert parse_decimal(str(bound + 1), bound) is None
    assert is_canonical_decimal(str(bound + 1))  # canonical, only too large


def test_decimal_refuses_too_many_digits_without_converting() -> None:
    # Far past int()'s 4300-digit limit: refused on length, never converted.
    huge = "1" + "0" * 10_000
    assert is_canonical_decimal(huge)
    assert parse_decimal(huge, MAX_UINT64) is None
    assert parse_decimal("1" + "0" * 20, MAX_UINT64) is None  # 21 digits
    assert parse_decimal("9" * 20, MAX_UINT64) is None  # 20 digits, above 2**64 - 1


@given(st.integers(min_value=0, max_value=MAX_UINT64))
def test_decimal_round_trips_str(value: int) -> None:
    assert parse_decimal(str(value), MAX_UINT64) == value
    assert parse_decimal(b"%d" % value, MAX_UINT64) == value


def _decimal_oracle(text: str) -> int | None:
    """Canonical decimal is what ``str`` writes for a non-negative int."""
    if not (text.isascii() and text.isdigit()) or str(int(text)) != text:
        return None
    return int(text) if int(text) <= MAX_UINT64 else None


@given(st.text(alphabet="0123456789+- \n", max_size=25))
def test_decimal_accepts_exactly_what_str_of_an_int_writes(text: str) -> None:
    assert parse_decimal(text, MAX_UINT64) == _decimal_oracle(text)


# --- strict base64 ------------------------------------------------------------


@given(st.binary(max_size=100))
def test_base64_round_trips_and_matches_the_standard_encoding(data: bytes) -> None:
    text = encode_base64(data)
    assert text == base64.b64encode(data).decode("ascii")
    assert decode_base64(text) == data


def test_base64_empty_string_decodes_to_empty_bytes() -> None:
    assert encode_base64(b"") == ""
    assert decode_base64("") == b""


@pytest.mark.parametrize(
    "text",
    [
        "AQ",  # missing padding
        "AQ=",  # short padding
        "AQ===",  # extra padding
        "AQI",  # missing padding
        "AR==",  # non-zero bits after the last byte
        "AQJ=",  # non-zero bits after the last byte
        "AQ==AQ==",  # padding in the middle
        "=AQ=",
        "A",
        "AQ== ",
        " AQ==",
        "AQ==\n",
        "A Q==",
        "AQ-_",  # URL-safe alphabet
        "_w==",
        "-w==",
        "AQ\u00e9=",  # not ASCII
        "\u0410Q==",  # CYRILLIC A
    ],
)
def test_base64_rejects_non_canonical_text(text: str) -> None:
    assert decode_base64(text) is None


@given(st.text(alphabet="ABCDEFabcdef0123456789+/=-_ \n", max_size=16))
def test_base64_accepts_only_what_encoding_gives_back(text: str) -> None:
    decoded = decode_base64(text)
    if decoded is not None:
        assert encode_base64(decoded) == text
