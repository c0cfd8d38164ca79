"""Numbers read as text take ASCII digits only: str.isdigit() also accepts Unicode digits
(ARABIC-INDIC DIGIT ONE is 1 to int(), SUPERSCRIPT TWO makes int() raise a ValueError)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from sealog.client.capture.spool import Spool, SpoolError
from sealog.server.cli.options import positive_int

UNICODE_DIGITS = ["\u0661", "\u00b2", "\uff11\uff12", "7\u0661"]


@pytest.mark.parametrize("text", UNICODE_DIGITS)
def test_a_count_on_the_command_line_is_ascii_digits(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="want a whole number > 0"):
        positive_int(text)
    assert positive_int("12") == 12


@pytest.mark.parametrize("text", UNICODE_DIGITS)
def test_a_spool_offset_in_unicode_digits_is_a_spool_error(tmp_path: Path, text: str) -> None:
    """A damaged offset file is a SpoolError that names it, never a UnicodeDecodeError."""
    path = tmp_path / "events"
    Spool(path, None).close()
    path.with_name("events.offset").write_text(text, "utf-8")
    with pytest.raises(SpoolError, match="want a number"):
        Spool(path, None)
