"""Keys operations (openapi/2025-07-01/keys.json): create, import, get, list, update, delete,
and the cryptographic operations wrapkey/unwrapkey, encrypt/decrypt, sign/verify.

Only the public part of a key is ever returned (GetKey example, Rust keys recording): RSA
`n`/`e` and EC `crv`/`x`/`y`, base64url without padding, with `key_ops`. The private key stays
in memory (created keys, certificates' keys, and imported JWKs that carry `d`), for the
cryptographic operations (KeyOperationsParameters {alg, value} -> KeyOperationResult {kid,
value}, base64url without padding; kid = the versioned id of the key version used):
  wrapkey/unwrapkey, encrypt/decrypt  RSA keys: RSA-OAEP (SHA-1), RSA-OAEP-256, RSA1_5;
  sign/verify                         RS256/384/512, PS256/384/512 (RSA), ES256/384/512/256K (EC,
                                      signature = r||s); `value`/`digest` is the digest.
The symmetric (oct/AES) algorithms are refused with 400 BadParameter, as are unwrap/decrypt/sign
with a key imported without its private part. The key's key_ops, `enabled` and nbf/exp are
enforced (wordings are best readings; no recording shows these errors).

Routes (a trailing slash / empty version means the latest, fact 15):
  POST   /keys/{name}/create            keys/create      PUT /keys/{name}           keys/import
  GET    /keys/{name}[/{version}]       keys/get         PATCH /keys/{name}[/{v}]   keys/update
  GET    /keys                          keys/list        GET /keys/{name}/versions  keys/list
  DELETE /keys/{name}                   keys/delete      GET /deletedkeys[/{name}]  keys/list|get
  DELETE /deletedkeys/{name}            keys/purge       POST /deletedkeys/{n}/recover keys/recover
  POST   /keys/{name}/{version}/{op}    keys/{op}: wrapkey -> wrapKey, unwrapkey -> unwrapKey,
         encrypt, decrypt, sign, verify (`/keys/{name}//wrapkey`: the latest version, fact 15)
"""

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from common import (KvError, b64url, b64url_decode, bad_parameter, check_attributes,
                    check_name, check_tags, int_to_b64url, new_version, now, object_body)
import store
from store import Version

RSA_OPS = ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"]  # recordings
EC_OPS = ["sign", "verify"]                                                 # recordings
CURVES = {"P-256": (ec.SECP256R1, 32), "P-384": (ec.SECP384R1, 48), "P-521": (ec.SECP521R1, 66),
          "P-256K": (ec.SECP256K1, 32)}
CURVE_BY_NAME = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521",
                 "secp256k1": "P-256K"}
RSA_SIZES = (2048, 3072, 4096)


def public_jwk(public_key):
    """The JWK members of a public key, in the order the service sends them."""
    if isinstance(public_key, rsa.RSAPublicKey):
        n = public_key.public_numbers()
        return {"kty": "RSA", "n": int_to_b64url(n.n), "e": int_to_b64url(n.e)}, n.n.bit_length()
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        crv = CURVE_BY_NAME.get(public_key.curve.name)
        if crv is None:
            raise bad_parameter(f"The curve {public_key.curve.name} is not supported.")
        size = CURVES[crv][1]
        n = public_key.public_numbers()
        return {"kty": "EC", "crv": crv, "x": int_to_b64url(n.x, size),
                "y": int_to_b64url(n.y, size)}, None
    raise bad_parameter("Only RSA and EC keys are supported.")


def key_version(jwk, key_size, key_ops, attrs, tags, private=None):
    """A key Version; data holds the JWK public members, the RSA size for the attributes and
    the private key (never returned; None for a key imported without its private part)."""
    kty = jwk["kty"]
    ops = key_ops or (RSA_OPS if kty.startswith("RSA") else EC_OPS)
    return Version(new_version(), attrs, tags, None,
                   {"jwk": jwk, "key_ops": list(ops), "key_size": key_size, "private": private})


def bundle(vault, obj, v):
    jwk = v.data["jwk"]
    key = {"kid": f"{vault.base_url()}/keys/{obj.name}/{v.version}", "kty": jwk["kty"],
           "key_ops": v.data["key_ops"]}
    key.update({k: val for k, val in jwk.items() if k != "kty"})
    out = {"key": key, "attributes": attributes(v)}
    if v.tags:
        out["tags"] = v.tags
    if obj.managed:
        out["managed"] = True
    return out


def attributes(v):
    # Rust keys recording: RSA keys carry key_size; software keys exportable false, hsmPlatform "0".
    extra = {}
    if v.data.get("key_size"):
        extra["key_size"] = v.data["key_size"]
    attrs = v.attributes(extra)
    attrs["exportable"] = False
    attrs["hsmPlatform"] = "0"
    return attrs


def item(vault, obj, v, versioned=False):
    kid = f"{vault.base_url()}/keys/{obj.name}" + (f"/{v.version}" if versioned else "")
    out = {"kid": kid, "attributes": attributes(v)}
    if v.tags:
        out["tags"] = v.tags
    if obj.managed:
        out["managed"] = True
    return out


def check_ops(ops):
    if ops is None:
        return None
    allowed = {"encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey", "import", "export"}
    if not isinstance(ops, list) or not all(o in allowed for o in ops):
        raise bad_parameter(f"key_ops must be a list of: {', '.join(sorted(allowed))}.")
    return ops


def create_key(req, vault, name):
    check_name(name)
    body = object_body(req.json(), required=True)
    kty = body.get("kty")
    attrs = check_attributes(body.get("attributes"))
    tags = check_tags(body.get("tags"))
    ops = check_ops(body.get("key_ops"))
    if kty in ("RSA", "RSA-HSM"):
        size = body.get("key_size") or 2048
        if size not in RSA_SIZES:
            raise bad_parameter(f"The key size {size} is not supported; use one of 2048, 3072, 4096.")
        exponent = body.get("public_exponent") or 65537
        private = rsa.generate_private_key(public_exponent=exponent, key_size=size)
    elif kty in ("EC", "EC-HSM"):
        crv = body.get("crv") or "P-256"
        if crv not in CURVES:
            raise bad_parameter(f"The curve {crv} is not supported; use one of {', '.join(CURVES)}.")
        private = ec.generate_private_key(CURVES[crv][0]())
    else:
        raise bad_parameter(f"The key type {kty} is not supported; use RSA or EC.")
    jwk, size = public_jwk(private.public_key())
    v = key_version(jwk, size, ops, attrs, tags, private)
    obj = vault["keys"].add_version(name, v)
    return 200, bundle(vault, obj, v)


def import_key(req, vault, name):
    check_name(name)
    body = object_body(req.json(), required=True)
    jwk_in = body.get("key")
    if not isinstance(jwk_in, dict):
        raise bad_parameter("The parameter 'key' (a JSON web key) is required.")
    attrs = check_attributes(body.get("attributes"))
    tags = check_tags(body.get("tags"))
    kty = jwk_in.get("kty")
    private = None

    def num(member):
        return int.from_bytes(b64url_decode(jwk_in[member]), "big")

    try:
        if kty in ("RSA", "RSA-HSM"):
            pub_numbers = rsa.RSAPublicNumbers(num("e"), num("n"))
            public = pub_numbers.public_key()
            if jwk_in.get("d"):
                p, q, d = num("p"), num("q"), num("d")
                private = rsa.RSAPrivateNumbers(
                    p, q, d, num("dp") if jwk_in.get("dp") else rsa.rsa_crt_dmp1(d, p),
                    num("dq") if jwk_in.get("dq") else rsa.rsa_crt_dmq1(d, q),
                    num("qi") if jwk_in.get("qi") else rsa.rsa_crt_iqmp(p, q),
                    pub_numbers).private_key()
        elif kty in ("EC", "EC-HSM"):
            crv = jwk_in.get("crv")
            if crv not in CURVES:
                raise bad_parameter(f"The curve {crv} is not supported.")
            pub_numbers = ec.EllipticCurvePublicNumbers(num("x"), num("y"), CURVES[crv][0]())
            public = pub_numbers.public_key()
            if jwk_in.get("d"):
                private = ec.EllipticCurvePrivateNumbers(num("d"), pub_numbers).private_key()
        else:
            raise bad_parameter(f"The key type {kty} is not supported; use RSA or EC.")
    except (KeyError, ValueError, TypeError) as e:
        if isinstance(e, KvError):
            raise
        raise bad_parameter(f"The JSON web key is invalid: {e}")
    jwk, size = public_jwk(public)
    v = key_version(jwk, size, check_ops(jwk_in.get("key_ops")), attrs, tags, private)
    obj = vault["keys"].add_version(name, v)
    return 200, bundle(vault, obj, v)


def add_certificate_key(vault, name, private_key, version, attrs):
    """The key object a certificate import or creation makes, sharing the certificate's
    version (the private key is kept for the cryptographic operations)."""
    jwk, size = public_jwk(private_key.public_key())
    v = key_version(jwk, size, None, attrs, None, private_key)
    v.version = version
    return vault["keys"].add_version(name, v, managed=True)


def get_key(req, vault, name, version):
    obj, v = vault["keys"].lookup(name, version)
    return 200, bundle(vault, obj, v)


def update_key(req, vault, name, version):
    obj, v = vault["keys"].lookup(name, version)
    body = object_body(req.json())
    attrs = check_attributes(body.get("attributes"))
    tags = check_tags(body.get("tags")) if "tags" in body else None
    ops = check_ops(body.get("key_ops"))
    v.update(attrs, tags)
    if ops is not None:
        v.data["key_ops"] = ops
    return 200, bundle(vault, obj, v)


def delete_key(req, vault, name):
    obj = vault["keys"].get(name)
    if obj is not None and obj.managed:
        raise KvError(403, "Forbidden", "Operation delete is not allowed on a managed key.",
                      "KeyManaged")
    entry = vault["keys"].delete(name, req.settings.delete_delay)
    return 200, store.deleted_body(vault, "keys", entry, lambda o, v: bundle(vault, o, v))


# --- cryptographic operations ---------------------------------------------------------------

# URL segment -> (access-policy permission and key_ops name, needs the private key).
CRYPTO_OPS = {"wrapkey": ("wrapKey", False), "unwrapkey": ("unwrapKey", True),
              "encrypt": ("encrypt", False), "decrypt": ("decrypt", True),
              "sign": ("sign", True), "verify": ("verify", False)}
# keys.json JsonWebKeyEncryptionAlgorithm: the RSA ones (the others are for oct keys).
RSA_ENCRYPTION = {
    "RSA-OAEP": lambda: padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None),
    "RSA-OAEP-256": lambda: padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None),
    "RSA1_5": lambda: padding.PKCS1v15(),
}
SYMMETRIC_ENCRYPTION = ("A128GCM", "A192GCM", "A256GCM", "A128KW", "A192KW", "A256KW", "A128CBC",
                        "A192CBC", "A256CBC", "A128CBCPAD", "A192CBCPAD", "A256CBCPAD",
                        "CKM_AES_KEY_WRAP", "CKM_AES_KEY_WRAP_PAD")
HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
# keys.json JsonWebKeySignatureAlgorithm -> (key type, hash, curve for ES*).
SIGNATURE = {f"RS{n}": ("RSA", h, None) for n, h in HASHES.items()}
SIGNATURE.update({f"PS{n}": ("RSA", h, None) for n, h in HASHES.items()})
SIGNATURE.update({"ES256": ("EC", hashes.SHA256, "P-256"), "ES384": ("EC", hashes.SHA384, "P-384"),
                  "ES512": ("EC", hashes.SHA512, "P-521"), "ES256K": ("EC", hashes.SHA256, "P-256K")})


def usable_key(obj, v, op_name):
    """Refuses an operation the key's state does not allow (best readings, no recording)."""
    if not v.enabled:
        # Modelled on the disabled-secret answer (fact 8).
        raise KvError(403, "Forbidden", f"Operation {op_name} is not allowed on a disabled key.",
                      "KeyDisabled")
    if op_name not in v.data["key_ops"]:
        raise bad_parameter(f"Operation {op_name} is not permitted on this key; its key_ops are: "
                            f"{', '.join(v.data['key_ops'])}.")
    t = now()
    if v.nbf is not None and t < v.nbf:
        raise KvError(403, "Forbidden", f"Operation {op_name} is not allowed on a key that is not "
                      "yet valid.", "KeyNotYetValid")
    # about-keys: an expired key must not encrypt, wrap or sign new data; the reverse
    # operations stay possible.
    if v.exp is not None and t >= v.exp and op_name in ("encrypt", "wrapKey", "sign"):
        raise KvError(403, "Forbidden", f"Operation {op_name} is not allowed on an expired key.",
                      "KeyExpired")


def b64url_param(body, member):
    value = body.get(member)
    if not isinstance(value, str):
        raise bad_parameter(f"The parameter '{member}' (base64url) is required.")
    try:
        return b64url_decode(value)
    except (ValueError, TypeError):
        raise bad_parameter(f"The parameter '{member}' is not valid base64url.")


def crypto_op(req, vault, name, version, segment):
    op_name, needs_private = CRYPTO_OPS[segment]
    obj, v = vault["keys"].lookup(name, version)
    body = object_body(req.json(), required=True)
    alg = body.get("alg")
    if not isinstance(alg, str) or not alg:
        raise bad_parameter("The parameter 'alg' is required.")
    value = b64url_param(body, "value")
    usable_key(obj, v, op_name)
    private = v.data.get("private")
    if needs_private and private is None:
        raise bad_parameter(f"Operation {op_name} needs the private key, and this key was "
                            "imported without it.")
    public = private.public_key() if private is not None else None
    if public is None:
        public = jwk_public_key(v.data["jwk"])
    kid = f"{vault.base_url()}/keys/{obj.name}/{v.version}"
    try:
        if op_name in ("wrapKey", "unwrapKey", "encrypt", "decrypt"):
            return 200, {"kid": kid, "value": b64url(rsa_cipher(op_name, alg, public, private,
                                                                 value))}
        if op_name == "sign":
            return 200, {"kid": kid, "value": b64url(sign(alg, private, value))}
        digest = b64url_param(body, "digest")
        return 200, {"value": verify(alg, public, digest, value)}
    except (ValueError, UnsupportedAlgorithm) as e:
        # e.g. a value too long for the key, a ciphertext of the wrong key, a digest of the
        # wrong size (best reading).
        raise bad_parameter(f"Operation {op_name} with {alg} failed: {e or type(e).__name__}")


def jwk_public_key(jwk):
    if jwk["kty"] == "RSA":
        return rsa.RSAPublicNumbers(int.from_bytes(b64url_decode(jwk["e"]), "big"),
                                    int.from_bytes(b64url_decode(jwk["n"]), "big")).public_key()
    return ec.EllipticCurvePublicNumbers(int.from_bytes(b64url_decode(jwk["x"]), "big"),
                                         int.from_bytes(b64url_decode(jwk["y"]), "big"),
                                         CURVES[jwk["crv"]][0]()).public_key()


def rsa_cipher(op_name, alg, public, private, value):
    if alg not in RSA_ENCRYPTION:
        if alg in SYMMETRIC_ENCRYPTION:
            raise bad_parameter(f"The algorithm {alg} is only for symmetric (oct) keys; use "
                                f"{', '.join(RSA_ENCRYPTION)} with an RSA key.")
        raise bad_parameter(f"The algorithm {alg} is not supported; use one of "
                            f"{', '.join(RSA_ENCRYPTION)}.")
    if not isinstance(public, rsa.RSAPublicKey):
        raise bad_parameter(f"The algorithm {alg} needs an RSA key; this key is EC.")
    pad = RSA_ENCRYPTION[alg]()
    if op_name in ("wrapKey", "encrypt"):
        return public.encrypt(value, pad)
    return private.decrypt(value, pad)


def signature_alg(alg, key):
    if alg not in SIGNATURE:
        raise bad_parameter(f"The algorithm {alg} is not supported; use one of "
                            f"{', '.join(SIGNATURE)}.")
    kty, hash_cls, crv = SIGNATURE[alg]
    is_rsa = isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey))
    if kty == "RSA" and not is_rsa:
        raise bad_parameter(f"The algorithm {alg} needs an RSA key; this key is EC.")
    if kty == "EC":
        key_crv = None if is_rsa else CURVE_BY_NAME.get(key.curve.name)
        if key_crv != crv:
            raise bad_parameter(f"The algorithm {alg} needs an EC key on curve {crv}.")
    return hash_cls(), crv


def rsa_padding(alg, h):
    if alg.startswith("PS"):
        return padding.PSS(padding.MGF1(h), h.digest_size)
    return padding.PKCS1v15()


def sign(alg, private, digest):
    h, crv = signature_alg(alg, private)
    if len(digest) != h.digest_size:
        raise ValueError(f"the digest has {len(digest)} bytes, {alg} needs {h.digest_size}")
    if crv is None:
        return private.sign(digest, rsa_padding(alg, h), utils.Prehashed(h))
    r, s = utils.decode_dss_signature(private.sign(digest, ec.ECDSA(utils.Prehashed(h))))
    size = CURVES[crv][1]
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")  # JWS form: r || s


def verify(alg, public, digest, signature):
    h, crv = signature_alg(alg, public)
    if len(digest) != h.digest_size:
        raise ValueError(f"the digest has {len(digest)} bytes, {alg} needs {h.digest_size}")
    try:
        if crv is None:
            public.verify(signature, digest, rsa_padding(alg, h), utils.Prehashed(h))
        else:
            size = CURVES[crv][1]
            if len(signature) != 2 * size:
                return False
            der = utils.encode_dss_signature(int.from_bytes(signature[:size], "big"),
                                             int.from_bytes(signature[size:], "big"))
            public.verify(der, digest, ec.ECDSA(utils.Prehashed(h)))
    except InvalidSignature:
        return False
    return True


def key_subroute(name, sub, method):
    """The key's own /keys/{name}/{sub} route: create."""
    if sub == "create" and method == "POST":
        return "create", lambda r, vt: create_key(r, vt, name)
    return None


def route(req, parts):
    if parts[0] == "keys":
        if len(parts) == 4 and parts[3] in CRYPTO_OPS and req.command == "POST":
            # An empty version ("/keys/{name}//wrapkey", fact 15) means the latest.
            name, version, segment = parts[1], parts[2], parts[3]
            return CRYPTO_OPS[segment][0], (
                lambda r, vt: crypto_op(r, vt, name, version, segment))
        return store.route_live(req, parts, "keys", item, get_key, update_key, delete_key,
                                put=("import", import_key), subroute=key_subroute)
    if parts[0] == "deletedkeys":
        return store.route_deleted(req, parts, "keys", item, lambda r, vt, o, v: bundle(vt, o, v))
    return None
