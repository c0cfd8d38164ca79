"""The access policy file, API keys and per-identity quotas."""

from __future__ import annotations

from pathlib import Path

import pytest
from pki import TestCA

from sealog.client.identity import identity_from_certificate
from sealog.server.errors import ResourceExhaustedError
from sealog.server.policy import Policy, PolicyError, hash_api_key, new_api_key
from sealog.server.quota import AppendQuota


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


def test_policy_maps_api_keys_to_identities_and_roles(tmp_path: Path) -> None:
    token = new_api_key()
    path = _write(
        tmp_path,
        f"""
public_read = false
[[identity]]
name = "ci-bot"
roles = ["append"]
appends_per_second = 5
[[api_key]]
identity = "ci-bot"
sha256 = "{hash_api_key(token)}"
""",
    )
    policy = Policy.load(path)
    assert not policy.public_read
    assert policy.identity_for_api_key(token) == "ci-bot"
    assert policy.identity_for_api_key(token + "x") is None
    assert policy.roles_of("ci-bot", "api_key") == {"append"}
    assert policy.roles_of("someone else", "api_key") == frozenset()
    assert token not in path.read_text()  # only the hash is stored


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('public_read = "yes"', "public_read"),
        ('[[identity]]\nname = "a"\nroles = ["root"]', "roles"),
        ('[[identity]]\nname = ""', "name"),
        ('[[identity]]\nname = "a"\n[[identity]]\nname = "a"', "listed twice"),
        ('[[api_key]]\nidentity = "nobody"\nsha256 = "' + "0" * 64 + '"', r"not an \[\[identity"),
        ('[[identity]]\nname = "a"\n[[api_key]]\nidentity = "a"\nsha256 = "abc"', "sha256"),
        ('[[identity]]\nname = "a"\nburst = 3', "burst without"),
        ('[[identity]]\nname = "a"\nappends_per_second = 0', "appends_per_second"),
        ("typo = 1", "unknown keys"),
        ('[[identity]]\nname = "a"\nauth = "password"', "auth 'password', want one of"),
        (
            '[[identity]]\nname = "a"\nauth = "mtls"\n[[api_key]]\nidentity = "a"\n'
            'sha256 = "' + "0" * 64 + '"',
            "may only stand for an identity with auth",
        ),
        ("not toml [", "policy.toml"),
    ],
)
def test_bad_policies_are_refused_naming_the_entry(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        Policy.load(_write(tmp_path, text))


def test_quota_allows_bursts_then_says_when_to_retry() -> None:
    now = [100.0]
    quota = AppendQuota(clock=lambda: now[0])
    quota.take("bot", 10, rate=5, burst=10)
    with pytest.raises(ResourceExhaustedError) as info:
        quota.take("bot", 1, rate=5, burst=10)
    assert info.value.retry_after_s == pytest.approx(0.2)
    quota.take("other", 10, rate=5, burst=10)  # one runaway bot does not starve others
    now[0] += 1.0
    quota.take("bot", 5, rate=5, burst=10)
    with pytest.raises(ResourceExhaustedError, match="exceed the quota burst"):
        quota.take("bot", 11, rate=5, burst=10)


def test_certificate_identity_is_the_spiffe_id_else_the_cn(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    spiffe = "spiffe://example.org/ns/payments/sa/billing"
    with_uri = ca.issue("a", cn="billing", uri=spiffe, dns=("billing.local",))
    plain = ca.issue("b", cn="deploy-bot")
    assert identity_from_certificate(with_uri.cert_file.read_bytes()) == spiffe
    assert identity_from_certificate(plain.cert_file.read_bytes()) == "deploy-bot"


def test_each_identity_authenticates_one_way(tmp_path: Path) -> None:
    """Certificate names and API-key names are separate: roles depend on the method."""
    path = _write(
        tmp_path,
        f"""
[[identity]]
name = "ops"
roles = ["admin"]
[[identity]]
name = "deploy-bot"
roles = ["append"]
[[identity]]
name = "reporter"
roles = ["read"]
auth = "api_key"
[[api_key]]
identity = "ops"
sha256 = "{hash_api_key(new_api_key())}"
""",
    )
    policy = Policy.load(path)
    assert {name: i.auth for name, i in policy.identities.items()} == {
        "ops": "api_key",  # an [[api_key]] names it
        "deploy-bot": "mtls",  # none does
        "reporter": "api_key",  # said so (its key may come later)
    }
    assert policy.roles_of("ops", "api_key") == {"admin"}
    assert policy.roles_of("ops", "mtls") == frozenset()
    assert policy.roles_of("deploy-bot", "mtls") == {"append"}
    assert policy.roles_of("deploy-bot", "api_key") == frozenset()
    assert policy.roles_of("reporter", "mtls") == frozenset()
