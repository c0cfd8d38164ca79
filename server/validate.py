"""Request validation: one function per request, messages that name field, value and rule.

Only what can be checked without storage is checked here; sizes beyond the
log's are the log's to reject (OUT_OF_RANGE).
"""

from __future__ import annotations

from sealog.client.hashing import HASH_SIZE
from sealog.client.leaf import MAX_IDENTITY_BYTES
from sealog.client.proof import MAX_TREE_SIZE
from sealog.server.config import Settings
from sealog.server.errors import InvalidArgumentError, ResourceExhaustedError
from sealog.server.sequencer import AppendItem
from sealog.v1 import log_pb2

__all__ = [
    "MAX_NOTE_BYTES",
    "append_items",
    "check_add_cosignature_request",
    "check_consistency_request",
    "check_entries_request",
    "check_inclusion_by_hash_request",
    "check_inclusion_request",
    "check_search_request",
]


MAX_NOTE_BYTES = 64 * 1024
"""Largest signed note AddCosignature takes: a checkpoint with up to 100 signature lines."""


def _fail(field: str, value: object, rule: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"{field}: {value}, want {rule}")


def _check_size(field: str, value: int) -> None:
    if value >= MAX_TREE_SIZE:
        raise _fail(field, value, "< 2^63")


def append_items(request: log_pb2.AppendRequest, settings: Settings) -> list[AppendItem]:
    """Validate an AppendRequest and return its entries."""
    n = len(request.entries)
    if n == 0:
        raise _fail("AppendRequest.entries", "0 entries", ">= 1")
    if n > settings.max_request_entries:
        raise _fail("AppendRequest.entries", f"{n} entries", f"<= {settings.max_request_entries}")
    items = []
    for i, entry in enumerate(request.entries):
        size = len(entry.payload)
        if size > settings.max_entry_bytes:
            raise ResourceExhaustedError(
                f"AppendRequest.entries[{i}].payload: {size} bytes, "
                f"want <= {settings.max_entry_bytes} (the server's max entry size)"
            )
        key = entry.idempotency_key
        if key:
            if len(key) > settings.max_idempotency_key_bytes:
                raise _fail(
                    f"AppendRequest.entries[{i}].idempotency_key",
                    f"{len(key)} characters",
                    f"<= {settings.max_idempotency_key_bytes}",
                )
            if not (key.isascii() and key.isprintable()):
                raise _fail(
                    f"AppendRequest.entries[{i}].idempotency_key",
                    repr(key[:40]),
                    "printable ASCII",
                )
        items.append(AppendItem(entry.payload, key))
    return items


def check_inclusion_request(name: str, leaf_index: int, tree_size: int) -> None:
    """GetInclusionProofRequest / GetEntryAndProofRequest."""
    _check_size(f"{name}.tree_size", tree_size)
    if tree_size == 0:
        raise _fail(f"{name}.tree_size", 0, "> 0")
    if leaf_index >= tree_size:
        raise _fail(f"{name}.leaf_index", leaf_index, f"< tree_size {tree_size}")


def check_inclusion_by_hash_request(request: log_pb2.GetInclusionProofByHashRequest) -> None:
    """GetInclusionProofByHashRequest."""
    name = "GetInclusionProofByHashRequest"
    if len(request.leaf_hash) != HASH_SIZE:
        raise _fail(f"{name}.leaf_hash", f"{len(request.leaf_hash)} bytes", f"{HASH_SIZE} bytes")
    _check_size(f"{name}.tree_size", request.tree_size)
    if request.tree_size == 0:
        raise _fail(f"{name}.tree_size", 0, "> 0")


def check_consistency_request(request: log_pb2.GetConsistencyProofRequest) -> None:
    """GetConsistencyProofRequest: 0 < first_tree_size <= second_tree_size."""
    name = "GetConsistencyProofRequest"
    _check_size(f"{name}.second_tree_size", request.second_tree_size)
    if request.first_tree_size == 0:
        raise _fail(f"{name}.first_tree_size", 0, "> 0")
    if request.first_tree_size > request.second_tree_size:
        raise _fail(
            f"{name}.first_tree_size",
            request.first_tree_size,
            f"<= second_tree_size {request.second_tree_size}",
        )


def check_entries_request(request: log_pb2.GetEntriesRequest, settings: Settings) -> int:
    """GetEntriesRequest; returns the page size to use."""
    name = "GetEntriesRequest"
    _check_size(f"{name}.tree_size", request.tree_size)
    if request.start >= request.end:
        raise _fail(f"{name}.start", request.start, f"< end {request.end}")
    if request.end > request.tree_size:
        raise _fail(f"{name}.end", request.end, f"<= tree_size {request.tree_size}")
    count = request.end - request.start
    if count > settings.max_entries_per_request_range:
        raise _fail(
            f"{name}.end - start",
            count,
            f"<= {settings.max_entries_per_request_range} leaves per call",
        )
    if request.page_size > settings.max_page_size:
        raise _fail(f"{name}.page_size", request.page_size, f"<= {settings.max_page_size}")
    return request.page_size or settings.default_page_size


def check_add_cosignature_request(request: log_pb2.AddCosignatureRequest) -> None:
    """AddCosignatureRequest: a non-empty note of at most :data:`MAX_NOTE_BYTES`."""
    name = "AddCosignatureRequest.checkpoint"
    size = len(request.checkpoint)
    if size == 0:
        raise _fail(name, "0 bytes", "a signed checkpoint note")
    if size > MAX_NOTE_BYTES:
        raise _fail(name, f"{size} bytes", f"<= {MAX_NOTE_BYTES}")


def check_search_request(request: log_pb2.SearchEntriesRequest, settings: Settings) -> int:
    """SearchEntriesRequest; returns the page size to use."""
    name = "SearchEntriesRequest"
    if not request.identity:
        raise _fail(f"{name}.identity", '""', "the identity to search for")
    if len(request.identity.encode()) > MAX_IDENTITY_BYTES:
        raise _fail(
            f"{name}.identity",
            f"{len(request.identity.encode())} bytes",
            f"<= {MAX_IDENTITY_BYTES}",
        )
    _check_size(f"{name}.tree_size", request.tree_size)
    if request.tree_size == 0:
        raise _fail(f"{name}.tree_size", 0, "> 0")
    if request.until_ms and request.until_ms < request.since_ms:
        raise _fail(f"{name}.until_ms", request.until_ms, f">= since_ms {request.since_ms} (or 0)")
    if request.start_index >= request.tree_size:
        raise _fail(f"{name}.start_index", request.start_index, f"< tree_size {request.tree_size}")
    if request.page_size > settings.max_page_size:
        raise _fail(f"{name}.page_size", request.page_size, f"<= {settings.max_page_size}")
    return request.page_size or settings.default_page_size
