"""What ``sealog`` commands print: a line of text, or with --json one JSON object, and
the JSON forms of leaves and checkpoints that several commands share."""

from __future__ import annotations

import argparse
import contextlib
import json
from typing import Any

from sealog.client._encoding import encode_base64
from sealog.client.checkpoint import SignedCheckpoint
from sealog.client.leaf import Leaf
from sealog.client.log_client import Entry

__all__ = ["add_json_option", "checkpoint_json", "emit", "leaf_json"]


def add_json_option(p: argparse.ArgumentParser, help: str = "print JSON") -> None:
    """--json: :func:`emit` prints the object instead of the text."""
    p.add_argument("--json", action="store_true", help=help)


def emit(args: argparse.Namespace, obj: dict[str, Any], text: str) -> None:
    """Print ``obj`` as one JSON line if --json was given, else ``text``; flush."""
    print(json.dumps(obj) if args.json else text, flush=True)


def leaf_json(index: int, leaf: bytes) -> dict[str, Any]:
    """The entry at ``index``: its fields, its RFC 6962 leaf hash and the leaf itself.

    ``payload`` is present only when the payload is UTF-8; ``payload_b64`` always is.
    """
    parsed = Leaf.parse(leaf)
    payload: dict[str, Any] = {"payload_b64": encode_base64(parsed.payload)}
    with contextlib.suppress(UnicodeDecodeError):
        payload["payload"] = parsed.payload.decode("utf-8")
    return {
        "index": index,
        "leaf_hash": Entry(index, leaf).leaf_hash.hex(),
        "accepted_at_ms": parsed.accepted_at_ms,
        "identity": parsed.identity,
        **payload,
        "leaf_b64": encode_base64(leaf),
    }


def checkpoint_json(signed: SignedCheckpoint) -> dict[str, Any]:
    """A signed checkpoint: origin, size, root hash and the whole note (c2sp.org/signed-note)."""
    cp = signed.checkpoint
    return {
        "origin": cp.origin,
        "tree_size": cp.size,
        "root_hash": encode_base64(cp.root_hash),
        "note": signed.note.decode("utf-8"),
    }
