"""The access policy: which identities exist, what each may do, and which API keys stand for whom.

A TOML file (docs/authentication.md)::

    public_read = true            # reads (checkpoints, proofs, entries) need no identity

    [[identity]]
    name = "spiffe://example.org/ns/payments/sa/billing"
    roles = ["append", "read"]
    appends_per_second = 200      # optional quota (entries/s); burst defaults to 2 s worth
    burst = 400

    [[identity]]
    name = "ci-bot"
    roles = ["append"]
    auth = "api_key"              # optional: how this identity authenticates (below)

    [[api_key]]
    identity = "ci-bot"
    sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

Each identity authenticates one way, its ``auth``: ``"mtls"`` (a client
certificate whose URI SAN, else CN, is the name) or ``"api_key"``. A caller
holds an identity's roles only if it authenticated that way, so a certificate
whose CN is the name of an API-key identity gets nothing. Without ``auth`` an
identity that some ``[[api_key]]`` names is ``"api_key"``, any other ``"mtls"``.

API keys are stored only as the SHA-256 of the token. Writes are denied unless
a role grants them. The file is re-read on SIGHUP or the admin Reload RPC;
a key removed from it is refused from the next request on.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sealog.client.errors import SealogError
from sealog.client.leaf import MAX_IDENTITY_BYTES

__all__ = [
    "AUTH_METHODS",
    "ROLES",
    "IdentityPolicy",
    "Policy",
    "PolicyError",
    "hash_api_key",
    "new_api_key",
]

ROLES = ("append", "read", "witness", "admin")
AUTH_METHODS = ("mtls", "api_key")
"""How an identity authenticates; the same words as :attr:`~sealog.server.auth.Principal.method`."""
API_KEY_PREFIX = "sealog_"


class PolicyError(SealogError):
    """A policy file that cannot be used; the message names the entry and the rule."""


def new_api_key() -> str:
    """A fresh random API key token (shown once; store only its hash)."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(token: str) -> str:
    """The hex SHA-256 under which a policy stores an API key."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class IdentityPolicy:
    """What one identity may do."""

    name: str
    roles: frozenset[str]
    appends_per_second: float | None = None
    burst: float | None = None
    auth: str = "mtls"
    """How a caller proves it is this identity: one of :data:`AUTH_METHODS`."""


@dataclass(frozen=True)
class Policy:
    """An immutable snapshot of the policy file; replaced whole on reload."""

    public_read: bool = True
    identities: Mapping[str, IdentityPolicy] = field(default_factory=dict)
    api_keys: Mapping[str, str] = field(default_factory=dict)
    """SHA-256 hex of a token -> identity name."""
    source: str = ""

    def identity_for_api_key(self, token: str) -> str | None:
        """The identity an API key token stands for, or None if it is not (or no longer) valid."""
        digest = hash_api_key(token)
        for stored, identity in self.api_keys.items():
            if hmac.compare_digest(stored, digest):
                return identity
        return None

    def roles_of(self, identity: str, method: str) -> frozenset[str]:
        """The roles of ``identity`` for a caller that authenticated by ``method``.

        None if the policy does not list the identity, or lists it with another
        ``auth``: one kind of credential never takes another kind's name.
        """
        entry = self.identities.get(identity)
        if entry is None or entry.auth != method:
            return frozenset()
        return entry.roles

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """Read and validate a policy file; raise :class:`PolicyError` naming what is wrong."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise PolicyError(f"{path}: {e}") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "") -> Policy:
        """Build a policy from parsed TOML."""
        where = source or "policy"
        unknown = set(data) - {"public_read", "identity", "api_key"}
        if unknown:
            raise PolicyError(f"{where}: unknown keys {sorted(unknown)}")
        public_read = data.get("public_read", True)
        if not isinstance(public_read, bool):
            raise PolicyError(f"{where}: public_read: {public_read!r}, want true or false")
        identities: dict[str, IdentityPolicy] = {}
        declared: dict[str, str | None] = {}
        for i, entry in enumerate(_tables(data, "identity", where)):
            ident, auth = _identity(entry, f"{where}: identity[{i}]")
            if ident.name in identities:
                raise PolicyError(f"{where}: identity[{i}]: {ident.name!r} listed twice")
            identities[ident.name] = ident
            declared[ident.name] = auth
        api_keys: dict[str, str] = {}
        for i, entry in enumerate(_tables(data, "api_key", where)):
            at = f"{where}: api_key[{i}]"
            unknown = set(entry) - {"identity", "sha256", "comment"}
            if unknown:
                raise PolicyError(f"{at}: unknown keys {sorted(unknown)}")
            identity = entry.get("identity")
            digest = entry.get("sha256")
            if not isinstance(identity, str) or identity not in identities:
                raise PolicyError(
                    f"{at}: identity {identity!r} is not an [[identity]] of the policy"
                )
            if not isinstance(digest, str) or len(digest) != 64 or not _is_hex(digest):
                raise PolicyError(f"{at}: sha256 {digest!r}, want 64 lowercase hex digits")
            if digest in api_keys:
                raise PolicyError(f"{at}: the same key is listed twice")
            if declared[identity] not in (None, "api_key"):
                raise PolicyError(
                    f"{at}: identity {identity!r} has auth = {declared[identity]!r}; an API "
                    'key may only stand for an identity with auth = "api_key" (or no auth)'
                )
            api_keys[digest] = identity
        keyed = set(api_keys.values())
        for name, ident in identities.items():
            auth = declared[name] or ("api_key" if name in keyed else "mtls")
            if auth != ident.auth:
                identities[name] = replace(ident, auth=auth)
        return cls(public_read, identities, api_keys, source)


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def _tables(data: Mapping[str, Any], key: str, where: str) -> list[Mapping[str, Any]]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise PolicyError(f"{where}: {key}: want [[{key}]] tables")
    return value


def _identity(entry: Mapping[str, Any], at: str) -> tuple[IdentityPolicy, str | None]:
    """The identity an [[identity]] table describes, and its ``auth`` if it says one."""
    unknown = set(entry) - {"name", "roles", "appends_per_second", "burst", "auth", "comment"}
    if unknown:
        raise PolicyError(f"{at}: unknown keys {sorted(unknown)}")
    name = entry.get("name")
    if not isinstance(name, str) or not name or len(name.encode()) > MAX_IDENTITY_BYTES:
        raise PolicyError(f"{at}: name {name!r}, want 1..{MAX_IDENTITY_BYTES} bytes of text")
    roles = entry.get("roles", [])
    if not isinstance(roles, list) or not all(r in ROLES for r in roles):
        raise PolicyError(f"{at}: roles {roles!r}, want a list of {', '.join(ROLES)}")
    rate = entry.get("appends_per_second")
    burst = entry.get("burst")
    for label, value in (("appends_per_second", rate), ("burst", burst)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
        ):
            raise PolicyError(f"{at}: {label} {value!r}, want a number > 0")
    if burst is not None and rate is None:
        raise PolicyError(f"{at}: burst without appends_per_second")
    auth = entry.get("auth")
    if auth is not None and auth not in AUTH_METHODS:
        raise PolicyError(
            f"{at}: auth {auth!r}, want one of {', '.join(repr(m) for m in AUTH_METHODS)}"
        )
    ident = IdentityPolicy(
        name,
        frozenset(roles),
        float(rate) if rate is not None else None,
        float(burst) if burst is not None else None,
    )
    return ident, auth
