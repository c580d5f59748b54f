"""Certificates generated at test time: CAs, intermediates and leaves.

Nothing here is committed as a key: every run makes its own.
"""
import datetime
import hashlib
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

UTC = datetime.timezone.utc


def _now():
    return datetime.datetime.now(UTC).replace(microsecond=0)


class Cert:
    """A certificate, its key, and the chain above it (issuer first, root last)."""

    def __init__(self, cert, key, chain):
        self.cert = cert
        self.key = key
        self.chain = chain  # list[Cert] above this one, root last

    @property
    def der(self):
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def pem(self):
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def fingerprint(self):
        return hashlib.sha256(self.der).hexdigest()

    @property
    def chain_fingerprints(self):
        return [c.fingerprint for c in self.chain]

    @property
    def not_before(self):
        return int(self.cert.not_valid_before.replace(tzinfo=UTC).timestamp())

    @property
    def not_after(self):
        return int(self.cert.not_valid_after.replace(tzinfo=UTC).timestamp())

    def der_chain_pem(self):
        return "".join(c.pem.decode() for c in self.chain)

    def key_pem(self):
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def write(self, directory, name, send_chain=None, include_root=True):
        """Write NAME.pem (leaf + chain as the client sends it) and NAME.key."""
        chain = self.chain if send_chain is None else send_chain
        if not include_root:
            chain = [c for c in chain if c.cert.issuer != c.cert.subject]
        cert_path = os.path.join(directory, name + ".pem")
        key_path = os.path.join(directory, name + ".key")
        with open(cert_path, "wb") as f:
            f.write(self.pem + b"".join(c.pem for c in chain))
        with open(key_path, "wb") as f:
            f.write(self.key_pem())
        os.chmod(cert_path, 0o644)
        os.chmod(key_path, 0o644)  # test-only keys; httpd children may read them
        return cert_path, key_path


def _key(kind, rsa_bits=2048):
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ec-k1":
        return ec.generate_private_key(ec.SECP256K1())
    return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)


def make_cert(cn, issuer=None, ca=False, days=365, not_before=None, key_kind="ec",
              client=True, server_names=None, rsa_bits=2048, ca_client_eku=False, key=None):
    key = key or _key(key_kind, rsa_bits)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "certgate tests")])
    start = not_before if not_before is not None else _now() - datetime.timedelta(hours=1)
    issuer_name = issuer.cert.subject if issuer else subject
    signing_key = issuer.key if issuer else key
    b = (x509.CertificateBuilder()
         .subject_name(subject)
         .issuer_name(issuer_name)
         .public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(start)
         .not_valid_after(start + datetime.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                          key_encipherment=False, data_encipherment=False,
                                          key_agreement=False, key_cert_sign=True,
                                          crl_sign=True, encipher_only=False,
                                          decipher_only=False), critical=True)
        if ca_client_eku:
            b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                                critical=False)
    elif server_names:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(n) for n in server_names]), critical=False)
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                            critical=False)
    elif client:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                            critical=False)
    cert = b.sign(signing_key, hashes.SHA256())
    chain = ([issuer] + issuer.chain) if issuer else []
    return Cert(cert, key, chain)


class PKI:
    """The set of certificates the suites use."""

    def __init__(self):
        now = _now()
        self.server_ca = make_cert("certgate test server CA", ca=True, days=30)
        self.server = make_cert("localhost", issuer=self.server_ca, days=30,
                                server_names=["localhost"])
        self.root = make_cert("certgate test root CA", ca=True, days=3650)
        self.inter = make_cert("certgate test intermediate", issuer=self.root, ca=True, days=1000)
        self.inter2 = make_cert("certgate other intermediate", issuer=self.root, ca=True, days=1000)
        self.app_root = make_cert("acme app root (self-signed)", ca=True, days=1000)
        self.leaf = self.leaf_of("app1 client")
        self.leaf_b = self.leaf_of("app1 client next")
        self.leaf_other = self.leaf_of("app2 client")
        self.app_leaf = make_cert("acme app client", issuer=self.app_root, days=400)
        # The same key name under another intermediate: a different chain.
        self.leaf_inter2 = make_cert("app1 client via inter2", issuer=self.inter2, days=400)
        self.expired = make_cert("expired client", issuer=self.inter, days=1,
                                 not_before=now - datetime.timedelta(days=10))
        self.future = make_cert("not yet valid client", issuer=self.inter, days=400,
                                not_before=now + datetime.timedelta(days=10))

    def leaf_of(self, cn, issuer=None, days=400):
        return make_cert(cn, issuer=issuer or self.inter, days=days)
