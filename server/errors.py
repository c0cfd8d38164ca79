"""Domain errors of the log server; the servicer maps each to one gRPC status code."""

from __future__ import annotations

from sealog.client.errors import SealogError

__all__ = [
    "AlreadyExistsError",
    "InvalidArgumentError",
    "LogError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "ProofPreconditionError",
    "QuotaExceededError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
]


class LogError(SealogError):
    """A request the log cannot serve, for a reason the client can act on.

    ``retry_after_s``, when set, tells the client when trying again makes
    sense; it travels as google.rpc.RetryInfo in the status details.
    """

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InvalidArgumentError(LogError):
    """A request field breaks a rule; the message names the field, the value and the rule."""


class AlreadyExistsError(LogError):
    """What the request would create already stands for something else: an idempotency
    key the caller used before for another event (docs/api.md, "Idempotency keys")."""


class OutOfRangeError(LogError):
    """A tree size or index the log has not reached (yet)."""


class ProofPreconditionError(LogError):
    """Sizes or indexes for which no proof exists (RFC 6962 §2.1.1, §2.1.2): a leaf index
    not below the tree size, a first tree size of 0 or above the second, an empty range.

    The message is the rule broken, as :mod:`sealog.client.proof` states it.
    """


class NotFoundError(LogError):
    """Nothing in the log matches (an unknown leaf hash)."""


class ResourceExhaustedError(LogError):
    """A size limit or the sequencer's queue is exceeded; the message says the limit."""


class QuotaExceededError(ResourceExhaustedError):
    """The caller's identity is over its append quota (the policy's ``appends_per_second``)."""


class UnavailableError(LogError):
    """The log cannot take the request now (storage full, shutting down); retry later."""


class UnauthenticatedError(LogError):
    """The caller must authenticate (or presented credentials that are not valid)."""


class PermissionDeniedError(LogError):
    """The caller's identity lacks the role the request needs."""
