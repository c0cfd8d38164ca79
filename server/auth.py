"""Who is calling, and may they: authentication and authorization for every RPC.

Two ways to authenticate (docs/authentication.md):

- **Mutual TLS**: the client certificate's first URI SAN (a SPIFFE ID such as
  ``spiffe://example.org/ns/payments/sa/billing``), else its subject CN.
- **API keys**: ``authorization: Bearer sealog_...`` metadata; the policy maps the
  key's SHA-256 to an identity.

An API key wins over a certificate when both are presented. The method is part
of who the caller is: the policy says how each identity authenticates, and a
caller holds an identity's roles only if it used that method (a certificate
with CN=ops is not the API-key identity ``ops``). An identity longer than a
leaf can hold (MAX_IDENTITY_BYTES) is refused here, UNAUTHENTICATED, before
any request of it reaches the sequencer. With no policy the log runs open
(every RPC allowed; identities from certificates are still stamped into
leaves); with a policy, writes are denied unless a role grants them, and reads
are public or not as the policy says.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from sealog.client.identity import identity_from_certificate
from sealog.client.leaf import MAX_IDENTITY_BYTES
from sealog.server.errors import PermissionDeniedError, UnauthenticatedError
from sealog.server.policy import Policy

__all__ = ["Authenticator", "Principal"]

_BEARER = "bearer "


@dataclass(frozen=True)
class Principal:
    """The caller as the server established it. ``identity`` is "" when anonymous."""

    identity: str
    method: str
    """"api_key", "mtls" or "anonymous"."""


class Authenticator:
    """Resolves callers against the current policy; :meth:`reload` swaps the policy atomically."""

    def __init__(self, policy_file: str | Path | None = None) -> None:
        self._path = Path(policy_file) if policy_file is not None else None
        self._lock = threading.Lock()
        self._policy = Policy.load(self._path) if self._path is not None else None

    @property
    def policy(self) -> Policy | None:
        """The policy in force, or None when the log runs open."""
        return self._policy

    def reload(self) -> Policy | None:
        """Re-read the policy file; on error keep the old policy and raise PolicyError."""
        if self._path is None:
            return None
        policy = Policy.load(self._path)
        with self._lock:
            self._policy = policy
        return policy

    def authenticate(
        self, context: grpc.ServicerContext | grpc.aio.ServicerContext[Any, Any]
    ) -> Principal:
        """Establish who is calling; raise :class:`UnauthenticatedError` for a bad API key."""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str):
                return self.authenticate_credentials(value, None)
        certs = context.auth_context().get("x509_pem_cert")
        first = (certs if isinstance(certs, bytes) else next(iter(certs))) if certs else None
        return self.authenticate_credentials(None, first)

    def authenticate_credentials(
        self, authorization: str | None, certificate_pem: bytes | None
    ) -> Principal:
        """Who presents this ``authorization`` value (gRPC metadata or the HTTP header of
        that name: ``Bearer <API key>``) or, without one, this verified client certificate."""
        if authorization is not None:
            if not authorization.lower().startswith(_BEARER):
                raise UnauthenticatedError("authorization metadata: want 'Bearer <API key>'")
            token = authorization[len(_BEARER) :].strip()
            policy = self._policy
            identity = policy.identity_for_api_key(token) if policy is not None else None
            if identity is None:
                raise UnauthenticatedError("the API key is not valid for this log")
            return Principal(identity, "api_key")
        if certificate_pem:
            identity = identity_from_certificate(certificate_pem)
            _check_certificate_identity(identity)
            return Principal(identity, "mtls")
        return Principal("", "anonymous")

    def authorize(self, principal: Principal, role: str, action: str) -> None:
        """Allow ``principal`` to perform ``action`` if it holds ``role``; raise otherwise."""
        policy = self._policy
        if policy is None:
            return
        if role == "read" and policy.public_read:
            return
        if not principal.identity:
            raise UnauthenticatedError(
                f"{action} needs an identity: present a client certificate or an API key "
                "('authorization: Bearer ...')"
            )
        if role not in policy.roles_of(principal.identity, principal.method):
            entry = policy.identities.get(principal.identity)
            if entry is not None and entry.auth != principal.method:
                raise PermissionDeniedError(
                    f"identity {principal.identity!r} authenticates with "
                    f"{_METHOD_NAMES[entry.auth]} (policy auth = {entry.auth!r}); "
                    f"{_METHOD_NAMES[principal.method]} cannot act as it"
                )
            raise PermissionDeniedError(
                f"identity {principal.identity!r} may not {action} (it needs role {role!r})"
            )


_METHOD_NAMES = {"mtls": "a client certificate", "api_key": "an API key", "anonymous": "nothing"}


def _check_certificate_identity(identity: str) -> None:
    """Refuse a certificate whose identity no leaf can hold: nothing it sends is usable."""
    try:
        size = len(identity.encode("utf-8"))
    except UnicodeError:
        raise UnauthenticatedError(
            "the client certificate's identity (URI SAN, else CN) is not valid UTF-8 text"
        ) from None
    if size > MAX_IDENTITY_BYTES:
        raise UnauthenticatedError(
            f"the client certificate's identity (URI SAN, else CN) is {size} bytes, longer "
            f"than the {MAX_IDENTITY_BYTES} a leaf can hold: use a certificate with a "
            "shorter SPIFFE ID"
        )
