"""Witness policies: trust a checkpoint only when enough named witnesses cosigned it.

A witness cosigns (c2sp.org/tlog-cosignature) only checkpoints it verified to
be consistent with everything it saw of the log before. If ``k`` of ``n``
independent witnesses cosigned a checkpoint, a log that wants to show you a
fork must also fool (or collude with) ``k`` of them. The policy here is the
plain ``k`` of ``n`` rule; c2sp.org/tlog-policy describes richer ones (groups
of groups), which sealog does not implement.

The log's own signature is not part of the policy: check it with
:func:`sealog.client.checkpoint.open_checkpoint` as well.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from sealog.client.cosignature import Cosignature, CosignatureVerifier, verify_cosignatures
from sealog.client.errors import WitnessPolicyError

__all__ = ["WitnessPolicy"]


def _key(name: str, key_hash: int) -> str:
    return f"{name}+{key_hash:08x}"


@dataclass(frozen=True)
class WitnessPolicy:
    """At least ``threshold`` of ``witnesses`` must have validly cosigned a checkpoint.

    With ``max_age_s``, a cosignature whose timestamp is older than that many
    seconds does not count (it shows the witness saw the checkpoint, but not
    recently). The constructor checks ``1 <= threshold <= len(witnesses)``
    and that no witness key is listed twice (ValueError).
    """

    witnesses: tuple[CosignatureVerifier, ...]
    threshold: int
    max_age_s: float | None = None

    def __post_init__(self) -> None:
        witnesses = tuple(self.witnesses)
        object.__setattr__(self, "witnesses", witnesses)
        if not witnesses:
            raise ValueError("a witness policy needs at least one witness key")
        keys = [_key(w.name, w.key_hash) for w in witnesses]
        if len(set(keys)) != len(keys):
            raise ValueError(f"a witness key is listed twice: {sorted(keys)}")
        if isinstance(self.threshold, bool) or not 1 <= self.threshold <= len(witnesses):
            raise ValueError(
                f"witness threshold: {self.threshold}, want 1 <= threshold <= {len(witnesses)} "
                "(the number of witness keys)"
            )
        if self.max_age_s is not None and self.max_age_s <= 0:
            raise ValueError(f"witness max age: {self.max_age_s}, want > 0 seconds")

    @classmethod
    def from_vkeys(
        cls,
        vkeys: Iterable[str | CosignatureVerifier],
        threshold: int | None = None,
        max_age_s: float | None = None,
    ) -> WitnessPolicy:
        """A policy over witness verifier keys (type 0x04); ``threshold`` defaults to all."""
        witnesses = tuple(
            CosignatureVerifier.from_vkey(v) if isinstance(v, str) else v for v in vkeys
        )
        return cls(witnesses, len(witnesses) if threshold is None else threshold, max_age_s)

    @property
    def names(self) -> tuple[str, ...]:
        """Each witness as ``name+keyID``, in policy order."""
        return tuple(_key(w.name, w.key_hash) for w in self.witnesses)

    def check(self, note: bytes, *, now: float | None = None) -> tuple[Cosignature, ...]:
        """Return the valid, fresh cosignatures on ``note`` by the policy's witnesses.

        Raises :class:`WitnessPolicyError`, naming the witnesses whose
        cosignature is missing (or too old), when fewer than ``threshold``
        count; :class:`~sealog.client.errors.InvalidSignatureError` when a line
        by a listed witness does not verify (such as a cosignature copied from
        another checkpoint); NoteFormatError for a malformed note. Does not
        check the log's signature.
        """
        cosignatures = verify_cosignatures(note, self.witnesses)
        oldest = None
        if self.max_age_s is not None:
            oldest = (time.time() if now is None else now) - self.max_age_s
        fresh = [c for c in cosignatures if oldest is None or c.timestamp >= oldest]
        if len(fresh) >= self.threshold:
            return tuple(fresh)
        fresh_keys = {_key(c.name, c.key_hash) for c in fresh}
        all_keys = [_key(c.name, c.key_hash) for c in cosignatures]
        stale = [key for key in all_keys if key not in fresh_keys]
        raise WitnessPolicyError(
            note,
            self.threshold,
            sorted(fresh_keys),
            [name for name in self.names if name not in fresh_keys],
            stale,
        )
