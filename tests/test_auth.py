"""Machine identities: TLS, mutual TLS, API keys, roles, and the identity stamped into leaves."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from e2e_support import tls_log_server
from pki import Issued, TestCA

from sealog.client.errors import SealogError
from sealog.client.event import AuditEvent
from sealog.client.keyfile import write_private_key_file
from sealog.client.log_client import LogClient
from sealog.client.note import Ed25519Signer
from sealog.client.tls import channel_credentials
from sealog.server.app import LogServer, TlsFiles
from sealog.server.policy import hash_api_key, new_api_key

SPIFFE_BILLING = "spiffe://example.org/ns/payments/sa/billing"


class World:
    """A log behind TLS with a policy, its CA, and credentials for several identities."""

    def __init__(self, tmp_path: Path) -> None:
        self.ca = TestCA(tmp_path / "pki")
        server_cert = self.ca.issue(
            "server", cn="localhost", dns=("localhost",), ips=("127.0.0.1",), server=True
        )
        self.billing = self.ca.issue("billing", cn="billing", uri=SPIFFE_BILLING)
        self.reader = self.ca.issue("reader", cn="auditor-bot")
        self.stranger = self.ca.issue("stranger", cn="not-in-policy")
        self.ci_key = new_api_key()
        self.witness_key = new_api_key()
        self.admin_key = new_api_key()
        self.policy_file = tmp_path / "policy.toml"
        self.write_policy(public_read=False, with_ci_key=True)
        self.server = LogServer.open(
            tmp_path / "data",
            address="localhost:0",
            mtls_address="localhost:0",
            policy_file=self.policy_file,
            tls=TlsFiles(server_cert.cert_file, server_cert.key_file, self.ca.ca_file),
        )
        self.vkey = self.server.signer.verifier().vkey
        self.clients: list[LogClient] = []

    def write_policy(self, *, public_read: bool, with_ci_key: bool) -> None:
        keys = []
        if with_ci_key:
            keys.append(("ci-bot", self.ci_key))
        keys += [("witness-1", self.witness_key), ("ops", self.admin_key)]
        text = f"public_read = {'true' if public_read else 'false'}\n"
        for name, roles, extra in [
            (SPIFFE_BILLING, ["append", "read"], ""),
            ("auditor-bot", ["read"], ""),
            ("ci-bot", ["append"], "appends_per_second = 2\nburst = 3\n"),
            ("witness-1", ["witness", "read"], ""),
            ("ops", ["admin"], ""),
        ]:
            text += f'[[identity]]\nname = "{name}"\nroles = {roles!r}\n{extra}'.replace("'", '"')
        for identity, token in keys:
            text += f'[[api_key]]\nidentity = "{identity}"\nsha256 = "{hash_api_key(token)}"\n'
        self.policy_file.write_text(text)

    def client(self, cert: Issued | None = None, api_key: str | None = None) -> LogClient:
        creds = channel_credentials(
            self.ca.ca_file,
            cert.cert_file if cert else None,
            cert.key_file if cert else None,
        )
        port = self.server.mtls_port if cert else self.server.port
        c = LogClient(
            f"localhost:{port}",
            self.vkey,
            credentials=creds,
            api_key=api_key,
            timeout=10,
            max_attempts=1,
        )
        self.clients.append(c)
        return c

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.server.stop()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    try:
        yield w
    finally:
        w.close()


def _code(info: pytest.ExceptionInfo[BaseException]) -> grpc.StatusCode:
    assert isinstance(info.value, grpc.RpcError)
    return info.value.code()


def _details(info: pytest.ExceptionInfo[BaseException]) -> str:
    assert isinstance(info.value, grpc.RpcError)
    details = info.value.details()
    assert details is not None
    return details


def test_an_unauthenticated_append_is_refused(world: World) -> None:
    with pytest.raises(grpc.RpcError) as info:
        world.client().append(b"who am I?")
    assert _code(info) == grpc.StatusCode.UNAUTHENTICATED
    assert "client certificate or an API key" in _details(info)


def test_mtls_append_is_stamped_with_the_spiffe_id(world: World) -> None:
    client = world.client(world.billing)
    receipt = client.append(AuditEvent("charge", "invoice/42", "success").to_payload())
    leaf = client.entry_and_proof(receipt.index)[0].parse()
    assert leaf.identity == SPIFFE_BILLING
    assert AuditEvent.from_payload(leaf.payload).action == "charge"


def test_api_key_append_is_stamped_with_the_keys_identity(world: World) -> None:
    receipt = world.client(api_key=world.ci_key).append(b"build 17 deployed")
    assert world.client(world.reader).entry_and_proof(receipt.index)[0].parse().identity == "ci-bot"


def test_a_client_cannot_claim_another_identity(world: World) -> None:
    # The payload may say anything; the identity in the leaf is what the server established.
    event = AuditEvent("deploy", attributes={"identity": SPIFFE_BILLING})
    receipt = world.client(api_key=world.ci_key).append(event.to_payload())
    leaf = world.client(world.reader).entry_and_proof(receipt.index)[0].parse()
    assert leaf.identity == "ci-bot"
    # An identity the policy does not know gets no roles, whatever its certificate.
    with pytest.raises(grpc.RpcError) as info:
        world.client(world.stranger).append(b"let me in")
    assert _code(info) == grpc.StatusCode.PERMISSION_DENIED


def test_a_read_only_identity_cannot_append_but_can_read(world: World) -> None:
    reader = world.client(world.reader)
    with pytest.raises(grpc.RpcError) as info:
        reader.append(b"not allowed")
    assert _code(info) == grpc.StatusCode.PERMISSION_DENIED
    assert "needs role 'append'" in _details(info)
    assert reader.checkpoint().checkpoint.size == 0


def test_reads_need_an_identity_when_not_public(world: World) -> None:
    with pytest.raises(grpc.RpcError) as info:
        world.client().checkpoint()
    assert _code(info) == grpc.StatusCode.UNAUTHENTICATED


def test_a_witness_identity_can_only_cosign(world: World) -> None:
    witness = world.client(api_key=world.witness_key)
    with pytest.raises(grpc.RpcError) as info:
        witness.append(b"witnesses do not append")
    assert _code(info) == grpc.StatusCode.PERMISSION_DENIED
    # AddCosignature passes authorization; this log accepts no witness keys, so the
    # cosignature itself is refused by the log's own rule, not for lack of a role.
    note = witness.checkpoint().note
    with pytest.raises((grpc.RpcError, SealogError)) as cosign:
        witness.add_cosignature(note)
    if isinstance(cosign.value, grpc.RpcError):
        assert "needs role" not in _details(cosign)
    with pytest.raises(grpc.RpcError) as admin:
        witness.reload_policy()
    assert _code(admin) == grpc.StatusCode.PERMISSION_DENIED


def test_a_revoked_key_is_refused_after_reload(world: World) -> None:
    ci = world.client(api_key=world.ci_key)
    ci.append(b"before revocation")
    world.write_policy(public_read=False, with_ci_key=False)
    assert world.client(api_key=world.admin_key).reload_policy() == (5, 2)
    with pytest.raises(grpc.RpcError) as info:
        ci.append(b"after revocation")
    assert _code(info) == grpc.StatusCode.UNAUTHENTICATED
    assert "not valid" in _details(info)
    assert world.ci_key not in _details(info)


def test_a_broken_policy_file_keeps_the_old_policy(world: World) -> None:
    world.policy_file.write_text("public_read = maybe")
    with pytest.raises(grpc.RpcError) as info:
        world.client(api_key=world.admin_key).reload_policy()
    assert _code(info) == grpc.StatusCode.FAILED_PRECONDITION
    world.client(api_key=world.ci_key).append(b"old policy still in force")


def test_per_identity_quota(world: World) -> None:
    ci = world.client(api_key=world.ci_key)
    billing = world.client(world.billing)
    ci.append_batch([b"1", b"2", b"3"])  # the burst
    with pytest.raises(grpc.RpcError) as info:
        ci.append(b"4")
    assert _code(info) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "quota" in _details(info)
    billing.append(b"others are not starved")


def test_plaintext_on_a_non_loopback_address_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a loopback"):
        LogServer.open(tmp_path / "data", address="0.0.0.0:0")


def test_the_mutual_tls_port_refuses_clients_without_a_certificate(world: World) -> None:
    creds = channel_credentials(world.ca.ca_file)
    target = f"localhost:{world.server.mtls_port}"
    client = LogClient(target, world.vkey, credentials=creds, timeout=5, max_attempts=1)
    world.clients.append(client)
    with pytest.raises(grpc.RpcError) as info:
        client.checkpoint()
    assert _code(info) == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails


def test_search_finds_one_identitys_events_in_a_time_window(world: World) -> None:
    ci = world.client(api_key=world.ci_key)
    billing = world.client(world.billing)
    for i in range(3):
        ci.append(b"ci %d" % i)
        billing.append(b"billing %d" % i)
        time.sleep(0.003)  # distinct acceptance times
    reader = world.client(world.reader)
    found = list(reader.search("ci-bot", page_size=2))  # pages of two
    assert [e.parse().payload for e in found] == [b"ci 0", b"ci 1", b"ci 2"]
    assert all(e.parse().identity == "ci-bot" for e in found)
    times = [e.parse().accepted_at_ms for e in found]
    window = list(reader.search("ci-bot", since_ms=times[1], until_ms=times[1]))
    assert [e.index for e in window] == [found[1].index]
    assert list(reader.search("nobody")) == []
    billing_found = list(reader.search(SPIFFE_BILLING))
    assert [e.parse().payload for e in billing_found] == [b"billing 0", b"billing 1", b"billing 2"]


@pytest.mark.slow
def test_signing_key_rotation_keeps_every_client_verifying(tmp_path: Path) -> None:
    data = tmp_path / "data"
    old = LogServer.open(data)  # generates data/log.key
    old_vkey = old.signer.verifier().vkey
    with LogClient(f"127.0.0.1:{old.port}", old_vkey) as c:
        c.append(b"signed by the old key")
    old.stop()
    new = Ed25519Signer.generate(old.signer.name)
    new_file = tmp_path / "new.key"
    write_private_key_file(new_file, new.skey)
    both = LogServer.open(data, extra_key_files=[new_file])  # step 2: sign with both keys
    try:
        for size, vkey in enumerate((old_vkey, new.verifier().vkey), start=2):
            with LogClient(f"127.0.0.1:{both.port}", vkey) as c:  # either key verifies
                c.append(b"both keys")
                assert c.checkpoint().checkpoint.size == size
        with LogClient(f"127.0.0.1:{both.port}", old_vkey) as c:
            trusted_by_old_client = c.checkpoint()
    finally:
        both.stop()
    (data / "log.vkey").unlink()  # step 4: the new verifier key in place (never rewritten
    (data / "log.vkey").write_text(new.verifier().vkey + "\n")  # by start-up), the new key alone
    only_new = LogServer.open(data, key_file=new_file)
    try:
        with LogClient(f"127.0.0.1:{only_new.port}", new.verifier().vkey) as c:
            c.append(b"new key only")
            later = c.checkpoint(trusted_by_old_client)  # consistent across the rotation
            assert later.checkpoint.size == 4
    finally:
        only_new.stop()


def test_a_certificate_cannot_take_an_api_key_identitys_name(world: World) -> None:
    """A CA-signed certificate with CN=ops (no SAN) is not the API-key identity ``ops``."""
    fake_ops = world.ca.issue("fake-ops", cn="ops")
    with pytest.raises(grpc.RpcError) as info:
        world.client(fake_ops).reload_policy()
    assert _code(info) == grpc.StatusCode.PERMISSION_DENIED
    assert "authenticates with an API key" in _details(info)
    fake_ci = world.ca.issue("fake-ci", cn="ci-bot")
    with pytest.raises(grpc.RpcError) as append:
        world.client(fake_ci).append(b"stamped as ci-bot?")
    assert _code(append) == grpc.StatusCode.PERMISSION_DENIED
    assert world.client(api_key=world.admin_key).reload_policy() == (5, 3)  # the real ops


def test_an_api_key_cannot_take_a_certificate_identitys_name(world: World) -> None:
    """The other way round: an API key may only stand for an identity with auth = "api_key"."""
    token = new_api_key()
    text = world.policy_file.read_text()
    text += f'[[api_key]]\nidentity = "auditor-bot"\nsha256 = "{hash_api_key(token)}"\n'
    text = text.replace('name = "auditor-bot"\n', 'name = "auditor-bot"\nauth = "mtls"\n')
    world.policy_file.write_text(text)
    with pytest.raises(grpc.RpcError) as info:
        world.client(api_key=world.admin_key).reload_policy()
    assert _code(info) == grpc.StatusCode.FAILED_PRECONDITION
    assert "auth = 'mtls'" in _details(info)


@pytest.fixture
def open_mtls(tmp_path: Path) -> Iterator[tuple[LogServer, TestCA]]:
    """A log with mutual TLS and no policy: certificate identities are stamped as they are."""
    with tls_log_server(tmp_path) as served:
        yield served


@pytest.mark.slow
def test_an_overlong_certificate_identity_is_refused_and_harms_no_other_append(
    open_mtls: tuple[LogServer, TestCA],
) -> None:
    server, ca = open_mtls
    long_uri = "spiffe://example.org/" + "a" * 1100  # over MAX_IDENTITY_BYTES
    bad = ca.issue("long", cn="long", uri=long_uri)
    good = ca.issue("good", cn="good", uri=SPIFFE_BILLING)
    vkey = server.signer.verifier().vkey

    def client(cert: Issued) -> LogClient:
        creds = channel_credentials(ca.ca_file, cert.cert_file, cert.key_file)
        return LogClient(
            f"localhost:{server.port}", vkey, credentials=creds, timeout=10, max_attempts=1
        )

    errors: list[grpc.RpcError] = []
    receipts = []
    with client(bad) as offender, client(good) as innocent:

        def attack() -> None:
            for _ in range(20):
                try:
                    offender.append(b"from a very long identity")
                except grpc.RpcError as e:
                    errors.append(e)

        thread = threading.Thread(target=attack)
        thread.start()
        for i in range(50):
            receipts.append(innocent.append(b"innocent %d" % i))
        thread.join()
        assert len(errors) == 20
        assert {e.code() for e in errors} == {grpc.StatusCode.UNAUTHENTICATED}
        assert "1024" in (errors[0].details() or "")
        assert "shorter SPIFFE ID" in (errors[0].details() or "")
        assert innocent.checkpoint().checkpoint.size == 50
        assert [r.index for r in receipts] == list(range(50))
