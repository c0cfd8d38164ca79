"""RFC 6962 §2.1 Merkle tree hashing with SHA-256.

A leaf hash is ``SHA-256(0x00 || leaf)``; an interior node hash is
``SHA-256(0x01 || left || right)``; the root of the empty tree is
``SHA-256("")``. The two one-byte prefixes keep a leaf from ever being read
as an interior node (second-preimage resistance).
"""

from __future__ import annotations

import hashlib

__all__ = ["EMPTY_ROOT", "HASH_SIZE", "leaf_hash", "node_hash"]

HASH_SIZE = 32
"""Length in bytes of every hash in the tree."""

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH({}): the root hash of a tree with no leaves (RFC 6962 §2.1)."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def leaf_hash(leaf: bytes) -> bytes:
    """Return the RFC 6962 leaf hash ``SHA-256(0x00 || leaf)``."""
    return hashlib.sha256(_LEAF_PREFIX + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the RFC 6962 interior node hash ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()
