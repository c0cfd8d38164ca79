"""Where the live pages of each table are in an LMDB data file, for damaging them in tests.

A reader of LMDB's on-disk format (lmdb/mdb.c, data version 1): the two meta
pages, then each B-tree from its root. Pages on LMDB's free list hold stale
copies; damaging one of them damages nothing, so the tests pick pages that a
tree reaches. Only what the tests need: branch, leaf, LEAF2 and overflow pages
per table (the duplicates of a DUPSORT key in a sub-tree count for its table).
"""

from __future__ import annotations

import struct
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Layout", "layout"]

_HEADER = struct.Struct("<QHHHH")  # pgno, pad, flags, lower, upper
_DB = struct.Struct("<IHHQQQQQ")  # pad (page size in the free table), flags, depth, ..., root
_NODE = struct.Struct("<HHHH")  # lo, hi, flags, key size
_P_BRANCH, _P_LEAF, _P_LEAF2 = 0x01, 0x02, 0x20
_F_BIGDATA, _F_SUBDATA, _F_DUPDATA = 0x01, 0x02, 0x04
_INVALID = (1 << 64) - 1
_DBS_AT = 16 + 24
_TXNID_AT = _DBS_AT + 2 * _DB.size + 8


@dataclass
class Layout:
    """The live pages of a data file: ``pages[table][kind]`` lists page numbers."""

    page_size: int
    meta: int
    """The meta page LMDB uses (the newer one): 0 or 1."""
    pages: dict[str, dict[str, list[int]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )

    def offset(self, page: int) -> int:
        return page * self.page_size


def layout(data_mdb: Path) -> Layout:
    """Walk every table of ``data_mdb`` from the newer meta page."""
    data = data_mdb.read_bytes()
    psize = _DB.unpack_from(data, _DBS_AT)[0]
    txnids = [struct.unpack_from("<Q", data, n * psize + _TXNID_AT)[0] for n in (0, 1)]
    meta = 0 if txnids[0] >= txnids[1] else 1
    out = Layout(psize, meta)
    main_root = _DB.unpack_from(data, meta * psize + _DBS_AT + _DB.size)[7]
    _walk(data, psize, main_root, "(main)", out, main=True)
    return out


def _walk(data: bytes, psize: int, root: int, table: str, out: Layout, *, main: bool) -> None:
    stack = [] if root == _INVALID else [root]
    while stack:
        page = stack.pop()
        base = page * psize
        _, _, flags, lower, _ = _HEADER.unpack_from(data, base)
        if flags & _P_LEAF2:
            out.pages[table]["leaf2"].append(page)
            continue
        kind = "branch" if flags & _P_BRANCH else "leaf"
        out.pages[table][kind].append(page)
        for i in range((lower - _HEADER.size) // 2):
            (ptr,) = struct.unpack_from("<H", data, base + _HEADER.size + 2 * i)
            lo, hi, nflags, ksize = _NODE.unpack_from(data, base + ptr)
            if kind == "branch":
                stack.append(lo | hi << 16 | nflags << 32)
                continue
            at = base + ptr + _NODE.size
            key = data[at : at + ksize]
            value = at + ksize
            if nflags & _F_BIGDATA:
                (first,) = struct.unpack_from("<Q", data, value)
                out.pages[table]["overflow"].append(first)
            elif nflags & _F_SUBDATA:
                sub_root = _DB.unpack_from(data, value)[7]
                name = key.decode("ascii", "replace") if main else table
                _walk(data, psize, sub_root, name, out, main=False)
