"""Certificates made at test time (nothing committed): a three-level chain root -> intermediate
-> leaf with the `cryptography` package, PFX files made by the openssl command line (legacy 3DES
and the OpenSSL 3 default AES-256 PBES2, with and without a password) and PEM bundles, and the
helpers that take a PFX or PEM apart again."""

import base64
import datetime
import hashlib
import os
import re
import subprocess
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.S)


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class Chain:
    def __init__(self, tag):
        now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
        later = now + datetime.timedelta(days=400)
        self.root_key = rsa.generate_private_key(65537, 2048)
        self.inter_key = rsa.generate_private_key(65537, 2048)
        self.leaf_key = rsa.generate_private_key(65537, 2048)
        self.leaf_cn = f"leaf-{tag}.vaultsync.test"

        def cert(subject, issuer, key, signer, ca, extra=()):
            b = (
                x509.CertificateBuilder()
                .subject_name(_name(subject))
                .issuer_name(_name(issuer))
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now)
                .not_valid_after(later)
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            )
            for ext, critical in extra:
                b = b.add_extension(ext, critical=critical)
            return b.sign(signer, hashes.SHA256())

        self.root = cert(f"Root {tag}", f"Root {tag}", self.root_key, self.root_key, True)
        self.intermediate = cert(
            f"Intermediate {tag}", f"Root {tag}", self.inter_key, self.root_key, True
        )
        self.leaf = cert(
            self.leaf_cn,
            f"Intermediate {tag}",
            self.leaf_key,
            self.inter_key,
            False,
            extra=[
                (x509.SubjectAlternativeName([x509.DNSName(self.leaf_cn)]), False),
                (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
            ],
        )

    @property
    def leaf_der(self):
        return self.leaf.public_bytes(serialization.Encoding.DER)

    @property
    def x5t(self):
        """base64url(SHA-1(DER of the leaf)), no padding (fact 21)."""
        return base64.urlsafe_b64encode(hashlib.sha1(self.leaf_der).digest()).decode().rstrip("=")

    @property
    def ders(self):
        """DER of leaf, intermediate, root."""
        return [c.public_bytes(serialization.Encoding.DER) for c in (self.leaf, self.intermediate, self.root)]

    def shuffled(self):
        """The chain in a shuffled order: root, leaf, intermediate."""
        return [self.root, self.leaf, self.intermediate]

    def pem_bundle(self):
        """PKCS#8 key, then the certificates in the shuffled order."""
        key = self.leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        certs = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in self.shuffled())
        return key + certs

    def pfx_leaf_last(self):
        """A PFX without password whose certificate bags are intermediate, root, leaf (made with
        `cryptography`; the key bag is matched to the leaf by its public key)."""
        return pkcs12.serialize_key_and_certificates(
            None, self.leaf_key, None, [self.intermediate, self.root, self.leaf],
            serialization.NoEncryption(),
        )

    def pfx(self, password="", legacy=False):
        """A PFX made by `openssl pkcs12 -export`, the certificates given in the shuffled order
        (the leaf is found by its key). legacy: pbeWithSHA1And3-KeyTripleDES-CBC for key and
        certificates, SHA-1 MAC (as in the real service's own PFX); else OpenSSL 3's default
        (AES-256-CBC PBES2, SHA-256 MAC)."""
        with tempfile.TemporaryDirectory() as d:
            key = os.path.join(d, "key.pem")
            certs = os.path.join(d, "certs.pem")
            out = os.path.join(d, "out.pfx")
            with open(key, "wb") as f:
                f.write(
                    self.leaf_key.private_bytes(
                        serialization.Encoding.PEM,
                        serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption(),
                    )
                )
            with open(certs, "wb") as f:
                for c in self.shuffled():
                    f.write(c.public_bytes(serialization.Encoding.PEM))
            cmd = ["openssl", "pkcs12", "-export", "-inkey", key, "-in", certs, "-out", out,
                   "-passout", f"pass:{password}"]
            if legacy:
                cmd += ["-legacy", "-keypbe", "PBE-SHA1-3DES", "-certpbe", "PBE-SHA1-3DES",
                        "-macalg", "sha1"]
            subprocess.run(cmd, check=True, capture_output=True)
            with open(out, "rb") as f:
                return f.read()


def pem_blocks(text):
    """[(label, DER bytes)] of a PEM text, in order."""
    return [(m.group(1), base64.b64decode("".join(m.group(2).split()))) for m in PEM_BLOCK.finditer(text)]


def pfx_cert_order(data):
    """DER of the certificates of a PFX in the order of its bags (openssl prints them in order).
    Tries an empty password (the real service's PFX has no password, fact 19)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "in.pfx")
        with open(path, "wb") as f:
            f.write(data)
        last = None
        for extra in ([], ["-legacy"]):
            p = subprocess.run(
                ["openssl", "pkcs12", "-in", path, "-nokeys", "-passin", "pass:", *extra],
                capture_output=True,
                text=True,
            )
            if p.returncode == 0:
                return [der for label, der in pem_blocks(p.stdout) if label == "CERTIFICATE"]
            last = p.stderr
        raise AssertionError(f"openssl cannot read the PFX with an empty password: {last}")


def load_pfx(data):
    """(key, cert, additional certs) of a PFX without password; a cryptography object."""
    errors = []
    for password in (None, b""):
        try:
            return pkcs12.load_pkcs12(data, password)
        except ValueError as e:
            errors.append(str(e))
    raise AssertionError(f"the PFX does not open without a password: {errors}")


def public_der(key):
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
