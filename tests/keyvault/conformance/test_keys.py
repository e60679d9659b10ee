"""Keys: CreateKey RSA-2048 and EC P-256, GetKey (latest `/keys/{name}/` and by version), the
JWK as in examples/2025-07-01/GetKey-example.json and the Rust keys recording."""

import json
import urllib.parse

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from kv import VERSION, b64url_decode, unique
from kvschema import REFERENCE
from shape import shape_diff

PRIVATE = {"d", "p", "q", "dp", "dq", "qi", "k", "t"}


def recorded_key(kty):
    with open(REFERENCE / "recordings/rust/azure_security_keyvault_keys.readme.json") as f:
        entries = json.load(f)["Entries"]
    for e in entries:
        if e["RequestMethod"] == "GET" and "/keys/key-name/" in e["RequestUri"]:
            if e["ResponseBody"]["key"]["kty"] == kty:
                return e["ResponseBody"]
    raise AssertionError(kty)


def kid_parts(kv, kid):
    u = urllib.parse.urlsplit(kid)
    assert u.hostname == kv.env.vault_host(), kid
    parts = u.path.strip("/").split("/")
    assert len(parts) == 3 and parts[0] == "keys" and VERSION.match(parts[2]), kid
    return parts[1], parts[2]


def b64url(value):
    assert isinstance(value, str) and "=" not in value and "+" not in value and "/" not in value, value
    return b64url_decode(value)


@pytest.mark.parametrize("kty,request_body", [
    ("RSA", {"kty": "RSA", "key_size": 2048}),
    ("EC", {"kty": "EC", "crv": "P-256"}),
])
def test_create_and_get_key(kv, kty, request_body):
    name = unique("key")
    created = kv.request("POST", f"/keys/{name}/create", json_body=request_body).expect(200)
    jwk = created["key"]
    n, version = kid_parts(kv, jwk["kid"])
    assert n == name and jwk["kty"] == kty
    assert not PRIVATE & set(jwk), f"no private key material in a JWK: {sorted(jwk)}"
    recorded = recorded_key(kty)
    assert jwk["key_ops"] == recorded["key"]["key_ops"], "default key_ops as the real service"
    if kty == "RSA":
        modulus = b64url(jwk["n"])
        assert len(modulus) == 256 and modulus[0] & 0x80, "a 2048-bit modulus, big-endian, no padding byte"
        assert jwk["e"] == "AQAB"
        rsa.RSAPublicNumbers(65537, int.from_bytes(modulus, "big")).public_key()
    else:
        assert jwk["crv"] == "P-256"
        x, y = b64url(jwk["x"]), b64url(jwk["y"])
        assert len(x) == 32 and len(y) == 32
        ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
        ).public_key()  # raises unless the point is on the curve
    a = created["attributes"]
    assert a["enabled"] is True and a["created"] == a["updated"]
    diffs = shape_diff(recorded, created)
    assert not diffs, f"CreateKey {kty} shape differs from the recorded GetKey: {diffs}"

    for path in (f"/keys/{name}/", f"/keys/{name}/{version}"):
        got = kv.request("GET", path).expect(200)
        assert got["key"] == jwk, f"GET {path} returns the created key"
        diffs = shape_diff(recorded, got)
        assert not diffs, f"GetKey {kty} shape differs from the recording: {diffs}"


def test_get_key_example_shape(kv):
    """The spec's GetKey example: an RSA JWK with kid, kty, key_ops, n, e."""
    with open(REFERENCE / "examples/2025-07-01/GetKey-example.json") as f:
        example = json.load(f)["responses"]["200"]["body"]
    name = unique("key")
    kv.request("POST", f"/keys/{name}/create", json_body={"kty": "RSA", "key_size": 2048}).expect(200)
    got = kv.request("GET", f"/keys/{name}/").expect(200)
    assert set(example["key"]) <= set(got["key"]) | {"key_hsm"}, (sorted(example["key"]), sorted(got["key"]))
    assert set(got["attributes"]) >= {"enabled", "created", "updated", "recoveryLevel"}


def test_missing_key_is_404(kv):
    name = unique("nokey")
    r = kv.request("GET", f"/keys/{name}/")
    assert r.status == 404 and r.error()["code"], repr(r)


def test_unsupported_key_request_is_refused(kv):
    r = kv.request("POST", f"/keys/{unique('key')}/create", json_body={"kty": "EC", "crv": "P-999"})
    assert r.status == 400, repr(r)


def test_update_delete_and_purge_key(kv):
    """The tail of the Rust keys README recording (PATCH tags, DELETE, purge), checked on its
    own so that it runs even where the replay stops earlier."""
    name = unique("key")
    created = kv.request("POST", f"/keys/{name}/create", json_body={"kty": "EC", "crv": "P-256"}).expect(200)
    upd = kv.request("PATCH", f"/keys/{name}/", json_body={"tags": {"tag-name": "tag-value"}}).expect(200)
    assert upd["key"] == created["key"] and upd["tags"] == {"tag-name": "tag-value"}
    d = kv.request("DELETE", f"/keys/{name}").expect(200)
    assert d["recoveryId"].endswith(f"/deletedkeys/{name}") and d["key"]["kid"] == created["key"]["kid"]
    assert d["scheduledPurgeDate"] == d["deletedDate"] + d["attributes"]["recoverableDays"] * 86400
    p, seen = kv.purge_when_deleted("keys", name)
    assert p.status == 204, repr(p)
    assert kv.request("GET", f"/keys/{name}/").status == 404
