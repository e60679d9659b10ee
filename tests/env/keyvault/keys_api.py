"""Keys operations (openapi/2025-07-01/keys.json): create, import, get, list, update, delete.

Only the public part of a key is ever returned (GetKey example, Rust keys recording): RSA
`n`/`e` and EC `crv`/`x`/`y`, base64url without padding, with `key_ops`. Cryptographic
operations (wrap, sign, ...) are not implemented: their routes answer 404 (a documented gap).

Routes (a trailing slash / empty version means the latest, fact 15):
  POST   /keys/{name}/create            keys/create      PUT /keys/{name}           keys/import
  GET    /keys/{name}[/{version}]       keys/get         PATCH /keys/{name}[/{v}]   keys/update
  GET    /keys                          keys/list        GET /keys/{name}/versions  keys/list
  DELETE /keys/{name}                   keys/delete      GET /deletedkeys[/{name}]  keys/list|get
  DELETE /deletedkeys/{name}            keys/purge       POST /deletedkeys/{n}/recover keys/recover
"""

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from common import (KvError, b64url_decode, bad_parameter, check_attributes, check_name,
                    check_tags, int_to_b64url, new_version, object_body)
from store import Version, page

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


def key_version(jwk, key_size, key_ops, attrs, tags):
    """A key Version; data holds the JWK public members and the RSA size for the attributes."""
    kty = jwk["kty"]
    ops = key_ops or (RSA_OPS if kty.startswith("RSA") else EC_OPS)
    return Version(new_version(), attrs, tags, None,
                   {"jwk": jwk, "key_ops": list(ops), "key_size": key_size})


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
    v = key_version(jwk, size, ops, attrs, tags)
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
    try:
        if kty in ("RSA", "RSA-HSM"):
            n = int.from_bytes(b64url_decode(jwk_in["n"]), "big")
            e = int.from_bytes(b64url_decode(jwk_in["e"]), "big")
            public = rsa.RSAPublicNumbers(e, n).public_key()
        elif kty in ("EC", "EC-HSM"):
            crv = jwk_in.get("crv")
            if crv not in CURVES:
                raise bad_parameter(f"The curve {crv} is not supported.")
            x = int.from_bytes(b64url_decode(jwk_in["x"]), "big")
            y = int.from_bytes(b64url_decode(jwk_in["y"]), "big")
            public = ec.EllipticCurvePublicNumbers(x, y, CURVES[crv][0]()).public_key()
        else:
            raise bad_parameter(f"The key type {kty} is not supported; use RSA or EC.")
    except (KeyError, ValueError, TypeError) as e:
        if isinstance(e, KvError):
            raise
        raise bad_parameter(f"The JSON web key is invalid: {e}")
    jwk, size = public_jwk(public)
    v = key_version(jwk, size, check_ops(jwk_in.get("key_ops")), attrs, tags)
    obj = vault["keys"].add_version(name, v)
    return 200, bundle(vault, obj, v)


def add_certificate_key(vault, name, public_key, version, attrs):
    """The key object a certificate import creates, sharing the certificate's version."""
    jwk, size = public_jwk(public_key)
    v = key_version(jwk, size, None, attrs, None)
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


def deleted_fields(vault, entry):
    return {"recoveryId": f"{vault.base_url()}/deletedkeys/{entry.obj.name}",
            "deletedDate": entry.deleted_date, "scheduledPurgeDate": entry.scheduled_purge_date}


def delete_key(req, vault, name):
    obj = vault["keys"].get(name)
    if obj is not None and obj.managed:
        raise KvError(403, "Forbidden", "Operation delete is not allowed on a managed key.",
                      "KeyManaged")
    entry = vault["keys"].delete(name, req.settings.delete_delay)
    out = deleted_fields(vault, entry)
    out.update(bundle(vault, entry.obj, entry.obj.latest()))
    return 200, out


def list_keys(req, vault):
    objs = sorted(vault["keys"].live.values(), key=lambda o: o.name.lower())
    chunk, next_link = page(objs, lambda o: o.name.lower(), req.query, req.next_link)
    return 200, {"value": [item(vault, o, o.latest()) for o in chunk], "nextLink": next_link}


def list_versions(req, vault, name):
    obj = vault["keys"].get(name)
    if obj is None:
        raise vault["keys"].not_found(name)
    versions = sorted(obj.versions, key=lambda v: (v.created, v.version))
    chunk, next_link = page(versions, lambda v: [v.created, v.version], req.query, req.next_link)
    return 200, {"value": [item(vault, obj, v, True) for v in chunk], "nextLink": next_link}


def list_deleted(req, vault):
    entries = sorted((e for e in vault["keys"].deleted.values() if e.ready()),
                     key=lambda e: e.obj.name.lower())
    chunk, next_link = page(entries, lambda e: e.obj.name.lower(), req.query, req.next_link)
    out = []
    for e in chunk:
        it = deleted_fields(vault, e)
        it.update(item(vault, e.obj, e.obj.latest()))
        out.append(it)
    return 200, {"value": out, "nextLink": next_link}


def get_deleted(req, vault, name):
    entry = vault["keys"].get_deleted(name)
    out = deleted_fields(vault, entry)
    out.update(bundle(vault, entry.obj, entry.obj.latest()))
    return 200, out


def route(req, parts):
    m = req.command
    if parts[0] == "keys":
        if len(parts) == 1 and m == "GET":
            return "list", lambda r, vt: list_keys(r, vt)
        if len(parts) == 2 or (len(parts) == 3 and parts[2] == ""):
            name = parts[1]
            if m == "PUT" and len(parts) == 2:
                return "import", lambda r, vt: import_key(r, vt, name)
            if m == "GET":
                return "get", lambda r, vt: get_key(r, vt, name, "")
            if m == "PATCH":
                return "update", lambda r, vt: update_key(r, vt, name, "")
            if m == "DELETE" and len(parts) == 2:
                return "delete", lambda r, vt: delete_key(r, vt, name)
        if len(parts) == 3:
            name, sub = parts[1], parts[2]
            if sub == "create" and m == "POST":
                return "create", lambda r, vt: create_key(r, vt, name)
            if sub == "versions" and m == "GET":
                return "list", lambda r, vt: list_versions(r, vt, name)
            if m == "GET":
                return "get", lambda r, vt: get_key(r, vt, name, sub)
            if m == "PATCH":
                return "update", lambda r, vt: update_key(r, vt, name, sub)
    elif parts[0] == "deletedkeys":
        if len(parts) == 1 and m == "GET":
            return "list", lambda r, vt: list_deleted(r, vt)
        if len(parts) == 2:
            name = parts[1]
            if m == "GET":
                return "get", lambda r, vt: get_deleted(r, vt, name)
            if m == "DELETE":
                return "purge", lambda r, vt: (vt["keys"].purge(name), (204, None))[1]
        if len(parts) == 3 and parts[2] == "recover" and m == "POST":
            name = parts[1]
            return "recover", lambda r, vt: (
                lambda obj: (200, bundle(vt, obj, obj.latest())))(vt["keys"].recover(name))
    return None
