"""Which machine identity a credential stands for."""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID

__all__ = ["identity_from_certificate"]


def identity_from_certificate(pem: bytes) -> str:
    """The identity an X.509 certificate stands for: its first URI SAN, else its subject CN.

    A SPIFFE X.509-SVID carries its SPIFFE ID (``spiffe://trust-domain/path``)
    as its one URI SAN. Returns "" when the certificate has neither.
    """
    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        pass
    else:
        uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
        if uris:
            return str(uris[0])
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else ""
