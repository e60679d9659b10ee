"""Certificates (facts 19, 20, 21): ImportCertificate of PFX (openssl legacy 3DES and default
AES-256, with and without a password) and PEM (PKCS#8 key + the chain), the chain root ->
intermediate -> leaf given in a shuffled order; GetCertificate; the certificate's secret in PFX
and PEM with the leaf first (preserveCertOrder defaults to false), the PFX -> PEM conversion of
api 2025-07-01, x5t, cer, and the shared version of id/kid/sid."""

import base64
import datetime
import urllib.parse

import pytest
from cryptography import x509

import pki
from kv import VERSION, unique

PFX = "application/x-pkcs12"
PEM = "application/x-pem-file"


@pytest.fixture(scope="module")
def chain():
    return pki.Chain(unique("ca"))


def policy(content_type):
    # The subject asked for is not the certificate's: import derives the policy's x509
    # properties from the certificate (fact 21; .NET import recording).
    return {
        "key_props": {"exportable": True, "kty": "RSA", "key_size": 2048, "reuse_key": False},
        "secret_props": {"contentType": content_type},
        "x509_props": {"subject": "CN=contoso.com"},
    }


def versioned(kv, object_id, kind):
    u = urllib.parse.urlsplit(object_id)
    assert u.hostname == kv.env.vault_host(), object_id
    parts = u.path.strip("/").split("/")
    assert len(parts) == 3 and parts[0] == kind, f"{object_id} is not /{kind}/name/version"
    assert VERSION.match(parts[2]), f"version of {object_id} is 32 lowercase hex"
    return parts[1], parts[2]


def import_cert(kv, chain, name, value, content_type, password=None, **extra):
    body = {"value": value, "policy": policy(content_type), **extra}
    if password:
        body["pwd"] = password
    r = kv.request("POST", f"/certificates/{name}/import", json_body=body)
    assert r.status == 200, f"ImportCertificate ({content_type}): {r!r}"
    return r.body


def check_bundle(kv, chain, name, bundle, content_type):
    n, version = versioned(kv, bundle["id"], "certificates")
    assert n == name
    assert versioned(kv, bundle["kid"], "keys") == (name, version), "kid shares the version (fact 21)"
    assert versioned(kv, bundle["sid"], "secrets") == (name, version), "sid shares the version (fact 21)"
    assert bundle["x5t"] == chain.x5t, "x5t = base64url(SHA-1(DER of the leaf)) (fact 21)"
    assert base64.b64decode(bundle["cer"]) == chain.leaf_der, "cer = DER of the leaf (fact 21)"
    p = bundle["policy"]
    assert p["secret_props"]["contentType"] == content_type
    assert p["x509_props"]["subject"] == f"CN={chain.leaf_cn}", (
        f"the policy's subject is the imported certificate's (fact 21): {p['x509_props']}"
    )
    assert chain.leaf_cn in p["x509_props"].get("sans", {}).get("dns_names", []), p["x509_props"]
    assert "1.3.6.1.5.5.7.3.1" in p["x509_props"].get("ekus", []), p["x509_props"]
    a = bundle["attributes"]
    nbf = int(chain.leaf.not_valid_before_utc.timestamp())
    exp = int(chain.leaf.not_valid_after_utc.timestamp())
    assert (a.get("nbf"), a.get("exp")) == (nbf, exp), f"nbf/exp are the leaf's validity: {a}"
    return version


def check_leaf_first_pem(chain, text, key_first):
    blocks = pki.pem_blocks(text)
    labels = [label for label, _ in blocks]
    assert labels.count("PRIVATE KEY") == 1, f"one PKCS#8 PRIVATE KEY block (fact 19): {labels}"
    assert not any("RSA PRIVATE KEY" == l or "ENCRYPTED" in l for l in labels), labels
    if key_first:
        assert labels[0] == "PRIVATE KEY", f"PKCS#8 key first, then the certificates (fact 19): {labels}"
    certs = [der for label, der in blocks if label == "CERTIFICATE"]
    assert certs and certs[0] == chain.leaf_der, "leaf certificate first (fact 20: preserveCertOrder false)"
    assert sorted(certs) == sorted(chain.ders), "the whole chain as imported (fact 20)"
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_der_private_key(dict(blocks)["PRIVATE KEY"], None)
    assert pki.public_der(key) == pki.public_der(chain.leaf_key), "the key is the leaf's"


def check_pfx_secret(chain, value):
    data = base64.b64decode(value, validate=True)  # standard base64 (fact 19)
    p = pki.load_pfx(data)
    assert p.key is not None, "the PFX holds the private key"
    assert pki.public_der(p.key) == pki.public_der(chain.leaf_key)
    from cryptography.hazmat.primitives import serialization

    order = pki.pfx_cert_order(data)
    assert order and order[0] == chain.leaf_der, "leaf first in the PFX (fact 20)"
    assert sorted(order) == sorted(chain.ders), "the whole chain as imported (fact 20)"
    assert p.cert.certificate.public_bytes(serialization.Encoding.DER) == chain.leaf_der


PFX_CASES = {
    "openssl-aes256-nopass": dict(legacy=False, password=""),
    "openssl-aes256-pass": dict(legacy=False, password="Pfx-pass-1"),
    "openssl-legacy3des-nopass": dict(legacy=True, password=""),
    "openssl-legacy3des-pass": dict(legacy=True, password="Pfx-pass-2"),
}


@pytest.mark.parametrize("case", list(PFX_CASES) + ["cryptography-leaf-last-nopass"])
def test_import_pfx_and_read_its_secret(kv, chain, case):
    if case in PFX_CASES:
        data = chain.pfx(**PFX_CASES[case])
        password = PFX_CASES[case]["password"]
    else:
        data, password = chain.pfx_leaf_last(), ""
    name = unique("pfx")
    bundle = import_cert(kv, chain, name, base64.b64encode(data).decode(), PFX, password or None)
    version = check_bundle(kv, chain, name, bundle, PFX)

    for path in (f"/certificates/{name}/", f"/certificates/{name}/{version}"):
        got = kv.request("GET", path).expect(200)
        assert got["id"] == bundle["id"] and got["x5t"] == bundle["x5t"] and got["cer"] == bundle["cer"]

    s = kv.request("GET", f"/secrets/{name}/{version}").expect(200)
    assert s["contentType"] == PFX and s["managed"] is True, s.keys()
    assert s["kid"] == bundle["kid"] and s["id"] == bundle["sid"]
    check_pfx_secret(chain, s["value"])
    latest = kv.request("GET", f"/secrets/{name}/").expect(200)
    assert latest["id"] == bundle["sid"]

    # api 2025-07-01: outContentType converts a PFX-stored certificate to PEM (fact 19).
    conv = kv.request("GET", f"/secrets/{name}/{version}", params={"outContentType": PEM}).expect(200)
    assert conv["contentType"] == PEM, f"converted secret's contentType (spec example): {conv['contentType']}"
    check_leaf_first_pem(chain, conv["value"], key_first=False)
    same = kv.request("GET", f"/secrets/{name}/", params={"outContentType": PFX}).expect(200)
    assert same["contentType"] == PFX
    check_pfx_secret(chain, same["value"])


def test_import_pem_and_read_its_secret(kv, chain):
    name = unique("pem")
    bundle = import_cert(kv, chain, name, chain.pem_bundle(), PEM)
    version = check_bundle(kv, chain, name, bundle, PEM)
    s = kv.request("GET", f"/secrets/{name}/{version}").expect(200)
    assert s["contentType"] == PEM and s["managed"] is True and s["kid"] == bundle["kid"]
    check_leaf_first_pem(chain, s["value"], key_first=True)


def test_import_pem_with_preserve_cert_order_keeps_the_order(kv, chain):
    name = unique("pem")
    bundle = import_cert(kv, chain, name, chain.pem_bundle(), PEM, preserveCertOrder=True)
    assert bundle.get("preserveCertOrder") is True, "echoed as in the .NET import recording"
    s = kv.request("GET", f"/secrets/{bundle['sid'].rsplit('/', 2)[1]}/").expect(200)
    certs = [der for label, der in pki.pem_blocks(s["value"]) if label == "CERTIFICATE"]
    from cryptography.hazmat.primitives import serialization

    assert certs == [c.public_bytes(serialization.Encoding.DER) for c in chain.shuffled()], (
        "preserveCertOrder true keeps the imported order (openapi preserveCertOrder)"
    )


def test_unsupported_out_content_type_is_rejected(kv, chain):
    name = unique("pfx")
    import_cert(kv, chain, name, base64.b64encode(chain.pfx()).decode(), PFX)
    r = kv.request("GET", f"/secrets/{name}/", params={"outContentType": "text/plain"})
    assert r.status == 400, f"an unsupported outContentType is rejected (openapi GetSecret): {r!r}"


def test_wrong_pfx_password_is_refused(kv, chain):
    data = chain.pfx(password="right-one")
    r = kv.request(
        "POST",
        f"/certificates/{unique('pfx')}/import",
        json_body={"value": base64.b64encode(data).decode(), "pwd": "wrong-one", "policy": policy(PFX)},
    )
    assert r.status == 400, f"a PFX that does not open with pwd: {r!r}"


def test_pem_without_key_is_refused(kv, chain):
    from cryptography.hazmat.primitives import serialization

    only_certs = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in chain.shuffled())
    r = kv.request(
        "POST", f"/certificates/{unique('pem')}/import",
        json_body={"value": only_certs, "policy": policy(PEM)},
    )
    assert r.status == 400, f"PEM import must hold the key (fact 20): {r!r}"
