"""RFC 6962 §2.1 written out as its recursive definitions, to check sealog against.

Slow and deliberately naive: every function below is one equation of the RFC,
over the leaves ``D[begin:end]`` of a list. Only :meth:`ReferenceTree.mth` is
memoised, by ``(begin, end)``. It shares no code with ``sealog.client`` except
``hashlib``.

RFC 6962 §2.1, with ``k`` the largest power of two smaller than ``n``::

    MTH({})       = SHA-256()
    MTH({d(0)})   = SHA-256(0x00 || d(0))
    MTH(D[n])     = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))

§2.1.1, the audit path of leaf ``m``::

    PATH(0, {d(0)}) = {}
    PATH(m, D[n])   = PATH(m, D[0:k]) : MTH(D[k:n])       for m < k
    PATH(m, D[n])   = PATH(m - k, D[k:n]) : MTH(D[0:k])   for m >= k

§2.1.2, the consistency proof from the first ``m`` leaves::

    PROOF(m, D[n])              = SUBPROOF(m, D[n], true)
    SUBPROOF(m, D[m], true)     = {}
    SUBPROOF(m, D[m], false)    = {MTH(D[m])}
    SUBPROOF(m, D[n], b)        = SUBPROOF(m, D[0:k], b) : MTH(D[k:n])          for m <= k
    SUBPROOF(m, D[n], b)        = SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])  for m > k
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def largest_power_of_two_smaller_than(n: int) -> int:
    """The ``k`` of RFC 6962 §2.1: the largest power of two with ``k < n``, for ``n > 1``."""
    if n < 2:
        raise ValueError(f"no power of two below {n} splits a tree")
    k = 1
    while k * 2 < n:
        k *= 2
    return k


class ReferenceTree:
    """The Merkle tree over a list of leaves, computed straight from RFC 6962 §2.1."""

    def __init__(self, leaves: Sequence[bytes]) -> None:
        self.leaves = tuple(leaves)
        self._mth: dict[tuple[int, int], bytes] = {}

    @property
    def size(self) -> int:
        """The number of leaves, ``n``."""
        return len(self.leaves)

    def mth(self, begin: int, end: int) -> bytes:
        """``MTH(D[begin:end])``."""
        key = (begin, end)
        cached = self._mth.get(key)
        if cached is None:
            cached = self._compute_mth(begin, end)
            self._mth[key] = cached
        return cached

    def _compute_mth(self, begin: int, end: int) -> bytes:
        n = end - begin
        if n == 0:
            return hashlib.sha256(b"").digest()
        if n == 1:
            return hashlib.sha256(b"\x00" + self.leaves[begin]).digest()
        k = largest_power_of_two_smaller_than(n)
        left = self.mth(begin, begin + k)
        right = self.mth(begin + k, end)
        return hashlib.sha256(b"\x01" + left + right).digest()

    def root(self, n: int) -> bytes:
        """``MTH(D[0:n])``, the root hash of the tree of the first ``n`` leaves."""
        return self.mth(0, n)

    def path(self, m: int, n: int) -> list[bytes]:
        """``PATH(m, D[0:n])``: the inclusion proof of leaf ``m`` in the tree of size ``n``."""
        if not 0 <= m < n:
            raise ValueError(f"PATH({m}, D[{n}]) is not defined")
        return self._path(m, 0, n)

    def _path(self, m: int, begin: int, end: int) -> list[bytes]:
        # PATH(m, D[begin:end]), with m counted from begin.
        n = end - begin
        if n == 1:
            return []
        k = largest_power_of_two_smaller_than(n)
        if m < k:
            return [*self._path(m, begin, begin + k), self.mth(begin + k, end)]
        return [*self._path(m - k, begin + k, end), self.mth(begin, begin + k)]

    def proof(self, m: int, n: int) -> list[bytes]:
        """``PROOF(m, D[0:n])``: the consistency proof from tree size ``m`` to ``n``.

        Defined for ``0 < m <= n``; ``PROOF(n, D[n])`` is empty.
        """
        if not 0 < m <= n:
            raise ValueError(f"PROOF({m}, D[{n}]) is not defined")
        return self._subproof(m, 0, n, True)

    def _subproof(self, m: int, begin: int, end: int, b: bool) -> list[bytes]:
        # SUBPROOF(m, D[begin:end], b), with m counted from begin.
        n = end - begin
        if m == n:
            return [] if b else [self.mth(begin, end)]
        k = largest_power_of_two_smaller_than(n)
        if m <= k:
            return [*self._subproof(m, begin, begin + k, b), self.mth(begin + k, end)]
        return [*self._subproof(m - k, begin + k, end, False), self.mth(begin, begin + k)]
