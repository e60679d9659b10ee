"""Secrets operations (openapi/2025-07-01/secrets.json).

Routes (each also with a trailing slash; an empty version means the latest, fact 15):
  PUT    /secrets/{name}                   set                  secrets/set
  GET    /secrets/{name}[/{version}]       get                  secrets/get
  PATCH  /secrets/{name}[/{version}]       update (no value)    secrets/set
  DELETE /secrets/{name}                   delete (soft)        secrets/delete
  GET    /secrets                          list                 secrets/list
  GET    /secrets/{name}/versions          list versions        secrets/list
  GET    /deletedsecrets                   list deleted         secrets/list
  GET    /deletedsecrets/{name}            get deleted          secrets/get
  DELETE /deletedsecrets/{name}            purge                secrets/purge
  POST   /deletedsecrets/{name}/recover    recover              secrets/recover
"""

from common import (MAX_CONTENT_TYPE, MAX_SECRET_VALUE_BYTES, KvError, bad_parameter,
                    check_attributes, check_name, check_tags, new_version, object_body)
import store
from store import Version

PEM = "application/x-pem-file"
PKCS12 = "application/x-pkcs12"


def secret_id(vault, obj, version=None):
    base = f"{vault.base_url()}/secrets/{obj.name}"
    return f"{base}/{version.version}" if version else base


def bundle(req, vault, obj, v, with_value=True, value=None):
    """SecretBundle; for certificate-backed secrets also kid and managed (fact 19)."""
    out = {}
    if with_value:
        out["value"] = value if value is not None else v.data.get("value", "")
    if v.content_type is not None:
        out["contentType"] = v.content_type
    out["id"] = secret_id(vault, obj, v)
    if obj.managed:
        out["managed"] = True
    out["attributes"] = v.attributes()
    if v.tags:
        out["tags"] = v.tags
    if obj.managed and v.data.get("kid"):
        out["kid"] = v.data["kid"]
    if req.api_version == "2025-07-01":
        # previousVersion exists from 2025-07-01 on (reference README, spec deltas).
        idx = obj.versions.index(v)
        if idx > 0:
            out["previousVersion"] = obj.versions[idx - 1].version
    return out


def item(vault, obj, v, versioned=False):
    out = {"id": secret_id(vault, obj, v if versioned else None), "attributes": v.attributes()}
    if v.tags:
        out["tags"] = v.tags
    if v.content_type is not None:
        out["contentType"] = v.content_type
    if obj.managed:
        out["managed"] = True
    return out


def set_secret(req, vault, name):
    check_name(name)
    body = object_body(req.json(), required=True)
    value = body.get("value")
    if not isinstance(value, str):
        raise bad_parameter("The parameter 'value' is required and must be a string.")
    if len(value.encode("utf-8")) > MAX_SECRET_VALUE_BYTES:
        # Fact 13: 25k bytes; the real wording was not found (best reading).
        raise bad_parameter(f"The secret value is too large: {len(value.encode('utf-8'))} bytes; "
                            f"the maximum size is {MAX_SECRET_VALUE_BYTES} bytes.")
    content_type = body.get("contentType")
    if content_type is not None and (not isinstance(content_type, str)
                                     or len(content_type) > MAX_CONTENT_TYPE):
        raise bad_parameter(f"contentType must be a string of at most {MAX_CONTENT_TYPE} characters.")
    tags = check_tags(body.get("tags"))
    attrs = check_attributes(body.get("attributes"))
    existing = vault["secrets"].get(name)
    if existing is not None and existing.managed:
        # Best reading: a certificate's secret is managed by the certificate.
        raise KvError(403, "Forbidden", "Operation set is not allowed on a managed secret.",
                      "SecretManaged")
    v = Version(new_version(), attrs, tags, content_type, {"value": value})
    obj = vault["secrets"].add_version(name, v)
    return 200, bundle(req, vault, obj, v)


def get_secret(req, vault, name, version):
    obj, v = vault["secrets"].lookup(name, version)
    if not v.enabled:
        # Fact 8 (observed wording; the inner code is sent as "innererror").
        raise KvError(403, "Forbidden", "Operation get is not allowed on a disabled secret.",
                      "SecretDisabled")
    out_type = req.query.get("outContentType")
    value = None
    if out_type is not None and req.api_version == "2025-07-01":
        value = convert(obj, v, out_type)
    result = bundle(req, vault, obj, v, value=value)
    if value is not None and out_type == PEM:
        result["contentType"] = PEM
    return 200, result


def convert(obj, v, out_type):
    """Fact 19: outContentType=application/x-pem-file converts a PFX-stored certificate."""
    if out_type not in (PEM, PKCS12):
        raise bad_parameter(f"The value of outContentType '{out_type}' is not supported. Supported "
                            f"values are {PKCS12} and {PEM}.")
    if not obj.managed:
        # Not documented (reference README, open points); best reading.
        raise bad_parameter("outContentType is supported only for secrets that back a certificate.")
    stored = v.content_type
    if out_type == stored:
        return None
    if stored == PKCS12 and out_type == PEM:
        return v.data["pem"]
    # "only PFX to PEM conversion is supported" (secrets.json, outContentType).
    raise bad_parameter("Only PFX to PEM conversion is supported.")


def update_secret(req, vault, name, version):
    obj, v = vault["secrets"].lookup(name, version)
    body = object_body(req.json())
    attrs = check_attributes(body.get("attributes"))
    tags = check_tags(body.get("tags")) if "tags" in body else None
    has_ct = "contentType" in body
    ct = body.get("contentType")
    if has_ct and ct is not None and (not isinstance(ct, str) or len(ct) > MAX_CONTENT_TYPE):
        raise bad_parameter(f"contentType must be a string of at most {MAX_CONTENT_TYPE} characters.")
    v.update(attrs, tags, ct, set_content_type=has_ct and ct is not None)
    # Fact 8: UpdateSecret responses never carry the value.
    return 200, bundle(req, vault, obj, v, with_value=False)


def delete_secret(req, vault, name):
    obj = vault["secrets"].get(name)
    if obj is not None and obj.managed:
        # Best reading: a certificate's secret goes away with the certificate only.
        raise KvError(403, "Forbidden", "Operation delete is not allowed on a managed secret.",
                      "SecretManaged")
    entry = vault["secrets"].delete(name, req.settings.delete_delay)
    return 200, store.deleted_body(vault, "secrets", entry,
                                   lambda o, v: bundle(req, vault, o, v, with_value=False))


def bundle_without_value(req, vault, obj, v):
    return bundle(req, vault, obj, v, with_value=False)


def route(req, parts):
    """parts: the path split on "/" after the vault root. Returns (kind, permission, handler)."""
    if parts[0] == "secrets":
        return store.route_live(req, parts, "secrets", item, get_secret, update_secret,
                                delete_secret, "set", put=("set", set_secret))
    if parts[0] == "deletedsecrets":
        return store.route_deleted(req, parts, "secrets", item, bundle_without_value)
    return None
