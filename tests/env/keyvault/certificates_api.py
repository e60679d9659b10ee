"""Certificates operations (openapi/2025-07-01/certificates.json): import, get, list, policy,
update, delete (with the certificate's key and secret), deleted/purge/recover.

Import (fact 20) accepts a PFX (standard base64; legacy pbeWithSHA1And3-KeyTripleDES/RC2 or
modern PBES2/AES; `pwd` optional) or PEM text (certificate(s) and a PKCS#8 private key, which
may be encrypted with `pwd`). Each import makes one new version shared by three objects:
  - the certificate (CertificateBundle: cer = DER, x5t = base64url(SHA-1(DER)), fact 21);
  - the key (public JWK, managed);
  - the secret (managed, kid = the key's id, fact 19) whose value follows the policy's
    secret_props.contentType (default application/x-pkcs12):
      application/x-pkcs12  standard base64 PKCS#12 without password, key + whole chain, leaf
                            first, built like the service's (dotnet PFX recording: 3DES bags,
                            SHA-1 MAC, 2000 iterations) with the openssl command;
      application/x-pem-file  PKCS#8 "PRIVATE KEY" block, then the certificates (leaf first
                            unless preserveCertOrder), as in the dotnet PEM recording.
    A policy with key_props.exportable=false gives a secret without the private key (fact 19).
The policy returned is derived from the certificate (subject, SANs, EKUs, key usage, validity,
basic constraints), not from the request (fact 21; dotnet import recording).
CreateCertificate (POST .../create) makes self-signed certificates only (policy.issuer.name
"Self"; any other issuer -> 400 BadParameter): a new key (or the current one with reuse_key) of
the policy's kty/key_size/crv, a certificate with the policy's subject, SANs (dns_names, emails,
upns, uris, ipAddresses), key_usage, ekus (default serverAuth + clientAuth) and validity_months
(default 12; valid from 10 minutes before creation, as recorded), then the key and the secret as
for an import (the secret in the policy's content type; no private key if not exportable). It
completes during the request: the 202 body says `inProgress` with `Location: .../pending?
api-version=...&request_id=...` and `Retry-After: 10` (dotnet create recordings), and GET
.../pending answers `completed` with `target` from then on (DELETE .../pending removes it).
Issuers, contacts, merge, cancelling an operation and backup/restore are not implemented.
"""

import base64
import calendar
import datetime
import hashlib
import ipaddress
import os
import subprocess
import tempfile
import urllib.parse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

import keys_api
from common import (KvError, b64url, bad_parameter, check_attributes, check_name, check_tags,
                    new_version, object_body)
from secrets_api import PEM, PKCS12
import store
from store import Version

PFX_UNREADABLE = ("The specified PKCS#12 X.509 certificate content can not be read. Please check "
                  "if certificate is in valid PKCS#12 format.")  # best reading
PEM_UNREADABLE = ("The specified PEM X.509 certificate content is in an unexpected format. Please "
                  "check if certificate is in valid PEM format.")  # best reading

KEY_USAGE_NAMES = (("digital_signature", "digitalSignature"), ("content_commitment", "nonRepudiation"),
                   ("key_encipherment", "keyEncipherment"), ("data_encipherment", "dataEncipherment"),
                   ("key_agreement", "keyAgreement"), ("key_cert_sign", "keyCertSign"),
                   ("crl_sign", "cRLSign"))


# --- parsing the imported material ----------------------------------------------------------

def parse_import(value, pwd):
    """Returns (private_key, [certificates in the given order])."""
    password = pwd.encode("utf-8") if pwd else None
    text = value.strip()
    if text.startswith("-----BEGIN"):
        return parse_pem(text, password)
    try:
        der = base64.b64decode(text, validate=False)
    except ValueError:
        raise bad_parameter(PFX_UNREADABLE)
    if der.lstrip().startswith(b"-----BEGIN"):
        # The Python SDK always base64-encodes the bytes it is given, PEM included.
        return parse_pem(der.decode("utf-8", "replace").strip(), password)
    try:
        loaded = pkcs12.load_pkcs12(der, password)
    except Exception:
        try:  # an unencrypted PFX given an empty password, or the reverse
            loaded = pkcs12.load_pkcs12(der, b"" if password is None else None)
        except Exception:
            raise bad_parameter(PFX_UNREADABLE)
    if loaded.key is None or loaded.cert is None:
        raise bad_parameter(PFX_UNREADABLE)
    certs = [loaded.cert.certificate] + [c.certificate for c in loaded.additional_certs]
    return loaded.key, certs


def parse_pem(text, password):
    if "BEGIN RSA PRIVATE KEY" in text or "BEGIN EC PRIVATE KEY" in text:
        raise bad_parameter(PEM_UNREADABLE)  # fact 20: PKCS#8 only
    certs, key = [], None
    for block in text.split("-----END ")[:-1]:
        start = block.rfind("-----BEGIN ")
        if start < 0:
            continue
        kind = block[start + len("-----BEGIN "):].split("-----", 1)[0]
        pem = (block[start:] + "-----END " + kind + "-----\n").encode()
        try:
            if kind == "CERTIFICATE":
                certs.append(x509.load_pem_x509_certificate(pem))
            elif kind in ("PRIVATE KEY", "ENCRYPTED PRIVATE KEY"):
                key = serialization.load_pem_private_key(pem, password)
        except (ValueError, TypeError):
            raise bad_parameter(PEM_UNREADABLE)
    if key is None or not certs:
        raise bad_parameter(PEM_UNREADABLE)
    return key, certs


def order_chain(key, certs, preserve):
    """Fact 20: preserveCertOrder=false (default) puts the leaf (the key's certificate) first."""
    pub = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    leaf = next((c for c in certs if c.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == pub), None)
    if leaf is None:
        raise bad_parameter("The private key does not match any certificate in the content.")
    if preserve:
        return leaf, list(certs)
    return leaf, [leaf] + [c for c in certs if c is not leaf]


# --- building the secret value (fact 19) ------------------------------------------------------

def pem_value(key, chain, exportable):
    out = b""
    if exportable:
        out += key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    for c in chain:
        out += c.public_bytes(serialization.Encoding.PEM)
    return out.decode("ascii")


def pfx_value(key, leaf, chain, exportable):
    """PKCS#12 with an empty password as the service makes it (3DES, SHA-1 MAC, 2000 rounds).

    The `cryptography` package cannot write an empty-password encrypted PKCS#12, so the openssl
    command (a prerequisite of the environment) does; the key never leaves a private temp dir.
    """
    with tempfile.TemporaryDirectory(prefix="kv-pfx-") as d:
        leaf_file, chain_file = os.path.join(d, "leaf.pem"), os.path.join(d, "chain.pem")
        key_file, out_file = os.path.join(d, "key.pem"), os.path.join(d, "out.pfx")
        with open(leaf_file, "wb") as f:
            f.write(leaf.public_bytes(serialization.Encoding.PEM))
        others = [c for c in chain if c is not leaf]
        with open(chain_file, "wb") as f:
            for c in others:
                f.write(c.public_bytes(serialization.Encoding.PEM))
        cmd = ["openssl", "pkcs12", "-export", "-in", leaf_file, "-out", out_file,
               "-passout", "pass:", "-keypbe", "PBE-SHA1-3DES", "-certpbe", "PBE-SHA1-3DES",
               "-macalg", "sha1", "-iter", "2000"]
        if others:
            cmd += ["-certfile", chain_file]
        if exportable:
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
            cmd += ["-inkey", key_file]
        else:
            cmd += ["-nokeys"]
        run = subprocess.run(cmd, capture_output=True, timeout=30, check=False)
        if run.returncode != 0:
            raise KvError(500, "InternalServerError",
                          "The local Key Vault could not build the PKCS#12 value: "
                          + run.stderr.decode("utf-8", "replace")[:300])
        with open(out_file, "rb") as f:
            return base64.b64encode(f.read()).decode("ascii")


# --- the policy derived from the certificate (fact 21) ---------------------------------------

def validity_months(cert):
    a, b = cert.not_valid_before_utc, cert.not_valid_after_utc
    months = (b.year - a.year) * 12 + (b.month - a.month)
    if (b.day, b.time()) > (a.day, a.time()):
        months += 1
    return months


def derived_policy(cert, key, request_policy, content_type):
    req_key = request_policy.get("key_props") or {}
    key_props = {"exportable": req_key.get("exportable", True)}
    if isinstance(key, rsa.RSAPrivateKey):
        key_props.update({"kty": "RSA", "key_size": key.key_size})
    else:
        key_props.update({"kty": "EC", "crv": keys_api.CURVE_BY_NAME.get(key.curve.name)})
    key_props["reuse_key"] = req_key.get("reuse_key", False)
    x509_props = {"subject": ", ".join(cert.subject.rfc4514_string().split(","))}
    ext = cert.extensions
    try:
        san = ext.get_extension_for_class(x509.SubjectAlternativeName).value
        x509_props["sans"] = {
            "emails": san.get_values_for_type(x509.RFC822Name),
            "dns_names": san.get_values_for_type(x509.DNSName),
            "upns": [u for u in (der_utf8_decode(o.value) for o in
                                 san.get_values_for_type(x509.OtherName) if o.type_id == UPN_OID)
                     if u is not None],
            "uris": san.get_values_for_type(x509.UniformResourceIdentifier),
            "ipAddresses": [str(ip) for ip in san.get_values_for_type(x509.IPAddress)],
        }
    except x509.ExtensionNotFound:
        pass
    try:
        x509_props["ekus"] = [o.dotted_string for o in
                              ext.get_extension_for_class(x509.ExtendedKeyUsage).value]
    except x509.ExtensionNotFound:
        x509_props["ekus"] = []
    try:
        ku = ext.get_extension_for_class(x509.KeyUsage).value
        names = [name for attr, name in KEY_USAGE_NAMES if getattr(ku, attr)]
        if ku.key_agreement:
            names += [n for a, n in (("encipher_only", "encipherOnly"),
                                     ("decipher_only", "decipherOnly")) if getattr(ku, a)]
        x509_props["key_usage"] = sorted(names)  # the recording lists them alphabetically
    except x509.ExtensionNotFound:
        x509_props["key_usage"] = []
    x509_props["validity_months"] = validity_months(cert)
    try:
        x509_props["basic_constraints"] = {
            "ca": ext.get_extension_for_class(x509.BasicConstraints).value.ca}
    except x509.ExtensionNotFound:
        pass
    issuer = dict(request_policy.get("issuer") or {"name": "Unknown"})
    action = "AutoRenew" if issuer.get("name") == "Self" else "EmailContacts"
    return {"key_props": key_props, "secret_props": {"contentType": content_type},
            "x509_props": x509_props,
            "lifetime_actions": request_policy.get("lifetime_actions") or [
                {"trigger": {"lifetime_percentage": 80}, "action": {"action_type": action}}],
            "issuer": issuer}


# --- operations -----------------------------------------------------------------------------

def ids(vault, name, version):
    base = vault.base_url()
    return (f"{base}/certificates/{name}/{version}", f"{base}/keys/{name}/{version}",
            f"{base}/secrets/{name}/{version}")


def bundle(vault, obj, v):
    cid, kid, sid = ids(vault, obj.name, v.version)
    out = {"id": cid, "kid": kid, "sid": sid, "x5t": v.data["x5t"], "cer": v.data["cer"],
           "attributes": v.attributes(), "policy": policy_body(vault, obj, v)}
    if v.tags:
        out["tags"] = v.tags
    if v.data.get("preserve"):
        out["preserveCertOrder"] = True
    if v.data.get("created"):
        out["pending"] = {"id": f"{vault.base_url()}/certificates/{obj.name}/pending"}  # recorded
    return out


def policy_body(vault, obj, v):
    pol = {"id": f"{vault.base_url()}/certificates/{obj.name}/policy"}
    pol.update(v.data["policy"])
    pol["attributes"] = {"enabled": True, "created": v.created, "updated": v.created}
    return pol


def item(vault, obj, v, versioned=False):
    cid = f"{vault.base_url()}/certificates/{obj.name}" + (f"/{v.version}" if versioned else "")
    out = {"id": cid, "attributes": v.attributes()}
    if v.tags:
        out["tags"] = v.tags
    out["x5t"] = v.data["x5t"]
    return out


def content_type_of(policy):
    content_type = (policy.get("secret_props") or {}).get("contentType") or PKCS12
    if content_type not in (PKCS12, PEM):
        raise bad_parameter(f"The content type {content_type} is not supported; use {PKCS12} or {PEM}.")
    return content_type


def import_certificate(req, vault, name):
    check_name(name)
    body = object_body(req.json(), required=True)
    value = body.get("value")
    if not isinstance(value, str) or not value.strip():
        raise bad_parameter("The parameter 'value' is required.")
    pwd = body.get("pwd")
    policy = body.get("policy") or {}
    if not isinstance(policy, dict):
        raise bad_parameter("The parameter 'policy' must be an object.")
    content_type = content_type_of(policy)
    attrs = check_attributes(body.get("attributes"))
    tags = check_tags(body.get("tags"))
    preserve = bool(body.get("preserveCertOrder", False))
    key, certs = parse_import(value, pwd if isinstance(pwd, str) else None)
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise bad_parameter("Only RSA and EC keys are supported.")
    leaf, chain = order_chain(key, certs, preserve)
    obj, cert_v = store_certificate(vault, name, key, leaf, chain, policy,
                                    derived_policy(leaf, key, policy, content_type), content_type,
                                    attrs, tags, preserve)
    return 200, bundle(vault, obj, cert_v)


def store_certificate(vault, name, key, leaf, chain, request_policy, policy, content_type, attrs,
                      tags, preserve, created=False):
    """One new version of the certificate, its key and its secret (import and create)."""
    exportable = (request_policy.get("key_props") or {}).get("exportable", True) is not False
    der = leaf.public_bytes(serialization.Encoding.DER)
    version = new_version()
    cert_attrs = dict(attrs)
    cert_attrs["nbf"] = int(leaf.not_valid_before_utc.timestamp())
    cert_attrs["exp"] = int(leaf.not_valid_after_utc.timestamp())
    secrets_c = vault["secrets"]
    existing = secrets_c.get(name)
    if existing is not None and not existing.managed:
        raise KvError(409, "Conflict", f"A secret named {name} already exists and does not back "
                      "a certificate.")  # best reading
    secret_value = (pem_value(key, chain, exportable) if content_type == PEM
                    else pfx_value(key, leaf, chain, exportable))
    pem_form = pem_value(key, chain, exportable)
    cert_v = Version(version, cert_attrs, tags, None, {
        "cer": base64.b64encode(der).decode("ascii"),
        "x5t": b64url(hashlib.sha1(der).digest()),
        "policy": policy,
        "preserve": preserve,
        "created": created,  # made by CreateCertificate: the bundle names its pending operation
    })
    kid = f"{vault.base_url()}/keys/{name}/{version}"
    secret_v = Version(version, cert_attrs, tags, content_type,
                       {"value": secret_value, "pem": pem_form, "kid": kid},
                       created=cert_v.created)
    obj = vault["certificates"].add_version(name, cert_v)
    secrets_c.add_version(obj.name, secret_v, managed=True)
    key_obj = keys_api.add_certificate_key(vault, obj.name, key, version, cert_attrs)
    key_obj.latest().created = key_obj.latest().updated = cert_v.created
    return obj, cert_v


# --- CreateCertificate with the self-signed issuer --------------------------------------------

# Policy key_usage names (certificates.json KeyUsageType) -> x509.KeyUsage arguments.
KEY_USAGE_ARGS = {name: attr for attr, name in KEY_USAGE_NAMES}
KEY_USAGE_ARGS.update({"encipherOnly": "encipher_only", "decipherOnly": "decipher_only"})
DEFAULT_EKUS = ["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"]  # dotnet create recordings
UPN_OID = x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")
MAX_VALIDITY_MONTHS = 1200  # best reading
IN_PROGRESS = ("Pending certificate created. Certificate request is in progress. This may take "
               "some time based on the issuer provider. Please check again later.")  # recorded


def der_utf8(text):
    data = text.encode("utf-8")
    n = len(data)
    length = bytes([n]) if n < 128 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes(
        (n.bit_length() + 7) // 8, "big")
    return b"\x0c" + length + data


def der_utf8_decode(der):
    if len(der) < 2 or der[0] != 0x0C:
        return None
    n, i = der[1], 2
    if n & 0x80:
        k = n & 0x7F
        n, i = int.from_bytes(der[2:2 + k], "big"), 2 + k
    return der[i:i + n].decode("utf-8", "replace")


def add_months(t, months):
    month = t.month - 1 + months
    year, month = t.year + month // 12, month % 12 + 1
    day = min(t.day, calendar.monthrange(year, month)[1])
    return t.replace(year=year, month=month, day=day)


def string_list(value, what):
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_parameter(f"The parameter '{what}' must be a list of strings.")
    return value


def new_private_key(key_props, vault, name):
    kty = key_props.get("kty") or "RSA"
    if key_props.get("reuse_key"):
        key_obj = vault["keys"].get(name)
        private = key_obj.latest().data.get("private") if key_obj else None
        if private is not None and (isinstance(private, rsa.RSAPrivateKey) == kty.startswith("RSA")):
            return private
    if kty in ("RSA", "RSA-HSM"):
        size = key_props.get("key_size") or 2048
        if size not in keys_api.RSA_SIZES:
            raise bad_parameter(f"The key size {size} is not supported; use one of 2048, 3072, 4096.")
        return rsa.generate_private_key(public_exponent=65537, key_size=size)
    if kty in ("EC", "EC-HSM"):
        crv = key_props.get("crv") or "P-256"
        if crv not in keys_api.CURVES:
            raise bad_parameter(f"The curve {crv} is not supported; use one of "
                                f"{', '.join(keys_api.CURVES)}.")
        return ec.generate_private_key(keys_api.CURVES[crv][0]())
    raise bad_parameter(f"The key type {kty} is not supported for certificates; use RSA or EC.")


def self_signed(key, x509_props):
    """The certificate and its CSR (the operation's `csr`) for a policy's x509_props."""
    subject_text = x509_props.get("subject") or ""
    if not isinstance(subject_text, str):
        raise bad_parameter("The parameter 'x509_props.subject' must be a string.")
    sans_in = x509_props.get("sans") or {}
    if not isinstance(sans_in, dict):
        raise bad_parameter("The parameter 'x509_props.sans' must be an object.")
    try:
        # The service's form "CN=a, O=b" is RFC 4514 with blanks after the commas.
        subject = x509.Name.from_rfc4514_string(
            ",".join(p.strip() for p in subject_text.split(","))) if subject_text.strip() \
            else x509.Name([])
    except ValueError as e:
        raise bad_parameter(f"The subject name {subject_text!r} is invalid: {e}")
    sans = [x509.DNSName(d) for d in string_list(sans_in.get("dns_names"), "dns_names")]
    sans += [x509.RFC822Name(e) for e in string_list(sans_in.get("emails"), "emails")]
    sans += [x509.OtherName(UPN_OID, der_utf8(u)) for u in string_list(sans_in.get("upns"), "upns")]
    sans += [x509.UniformResourceIdentifier(u) for u in string_list(sans_in.get("uris"), "uris")]
    try:
        sans += [x509.IPAddress(ipaddress.ip_address(a))
                 for a in string_list(sans_in.get("ipAddresses"), "ipAddresses")]
    except ValueError as e:
        raise bad_parameter(f"Invalid IP address in the subject alternative names: {e}")
    if not len(subject) and not sans:
        raise bad_parameter("The policy's x509_props need a subject or subject alternative names.")
    usages = string_list(x509_props.get("key_usage"), "key_usage")
    if "key_usage" not in x509_props or x509_props.get("key_usage") is None:
        # Best reading of the service's defaults.
        usages = ["digitalSignature", "keyEncipherment"] if isinstance(key, rsa.RSAPrivateKey) \
            else ["digitalSignature"]
    unknown = [u for u in usages if u not in KEY_USAGE_ARGS]
    if unknown:
        raise bad_parameter(f"Unknown key usage(s) {', '.join(unknown)}; use "
                            f"{', '.join(KEY_USAGE_ARGS)}.")
    ku_args = {attr: False for attr in KEY_USAGE_ARGS.values()}
    ku_args.update({KEY_USAGE_ARGS[u]: True for u in usages})
    ekus = x509_props.get("ekus")
    ekus = DEFAULT_EKUS if ekus is None else string_list(ekus, "ekus")
    months = x509_props.get("validity_months") or 12
    if not isinstance(months, int) or isinstance(months, bool) or \
            not 1 <= months <= MAX_VALIDITY_MONTHS:
        raise bad_parameter(f"validity_months must be an integer from 1 to {MAX_VALIDITY_MONTHS}.")
    t = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    h = hashes.SHA256()
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        h = hashes.SHA384() if key.curve.key_size <= 384 else hashes.SHA512()
    try:
        extensions = [(x509.KeyUsage(**ku_args), True),
                      (x509.BasicConstraints(ca=False, path_length=None), False)]
        if ekus:
            extensions.append((x509.ExtendedKeyUsage([x509.ObjectIdentifier(o) for o in ekus]),
                               False))
        if sans:
            extensions.append((x509.SubjectAlternativeName(sans), not len(subject)))
        csr = x509.CertificateSigningRequestBuilder().subject_name(subject)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   # The recordings: valid from 10 minutes before creation, for validity_months.
                   .not_valid_before(t - datetime.timedelta(minutes=10))
                   .not_valid_after(add_months(t, months)))
        for ext, critical in extensions:
            builder = builder.add_extension(ext, critical)
            csr = csr.add_extension(ext, critical)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False)
        builder = builder.add_extension(ski, False)
        cert = builder.sign(key, h)
        csr = csr.sign(key, h)
    except (ValueError, TypeError) as e:
        raise bad_parameter(f"The certificate policy is invalid: {e}")
    return cert, csr, months


def create_certificate(req, vault, name):
    """POST /certificates/{name}/create: only the self-signed issuer ("Self").

    The certificate, its key and its secret are made during the request; the 202 answer says
    `inProgress` as the service's does (with Location and Retry-After: 10), and every later
    GET .../pending answers `completed` with the target.
    """
    check_name(name)
    body = object_body(req.json(), required=True)
    policy = body.get("policy")
    existing = vault["certificates"].get(name)
    if policy is None and existing is not None:
        policy = existing.latest().data["policy"]  # a new version with the current policy
    if not isinstance(policy, dict):
        raise bad_parameter("The parameter 'policy' is required.")
    issuer = policy.get("issuer") or {}
    issuer_name = issuer.get("name") if isinstance(issuer, dict) else None
    if not isinstance(issuer_name, str) or issuer_name.lower() != "self":
        # The real service also creates with "Unknown" (a pending CSR to merge) and with the
        # issuers of its partner CAs; the local vault only self-signs.
        raise bad_parameter(f"The issuer '{issuer_name}' is not supported by the local Key Vault: "
                            "it creates self-signed certificates only (policy.issuer.name "
                            "\"Self\"). Import a certificate issued elsewhere with POST "
                            f"/certificates/{name}/import.")
    content_type = content_type_of(policy)
    key_props = policy.get("key_props") or {}
    x509_props = policy.get("x509_props") or {}
    if not isinstance(key_props, dict) or not isinstance(x509_props, dict):
        raise bad_parameter("The policy's key_props and x509_props must be objects.")
    attrs = check_attributes(body.get("attributes"))
    tags = check_tags(body.get("tags"))
    preserve = bool(body.get("preserveCertOrder", False))
    key = new_private_key(key_props, vault, name)
    cert, csr, months = self_signed(key, x509_props)
    stored_policy = derived_policy(cert, key, policy, content_type)
    stored_policy["x509_props"]["validity_months"] = months
    if key_props.get("kty") in ("RSA-HSM", "EC-HSM"):
        stored_policy["key_props"]["kty"] = key_props["kty"]
    obj, cert_v = store_certificate(vault, name, key, cert, [cert], policy, stored_policy,
                                    content_type, attrs, tags, preserve, created=True)
    request_id = new_version()
    base = f"{vault.base_url()}/certificates/{obj.name}"
    operation = {"id": f"{base}/pending", "issuer": {"name": issuer_name},
                 "csr": base64.b64encode(csr.public_bytes(serialization.Encoding.DER)).decode(),
                 "cancellation_requested": False, "status": "completed", "target": base,
                 "request_id": request_id}
    if preserve:
        operation["preserveCertOrder"] = True
    vault.operations[obj.name.lower()] = operation
    answer = {k: v for k, v in operation.items() if k != "target"}
    answer.update({"status": "inProgress", "status_details": IN_PROGRESS})
    location = (f"{req.origin()}/certificates/{obj.name}/pending?"
                + urllib.parse.urlencode({"api-version": req.api_version,
                                          "request_id": request_id}))
    return 202, answer, {"Location": location, "Retry-After": "10"}


def get_operation(req, vault, name):
    operation = vault.operations.get(name.lower())
    if operation is None:
        # Best reading of the service's answer.
        raise KvError(404, "PendingCertificateNotFound", f"Pending certificate not found: {name}")
    return 200, dict(operation)


def delete_operation(req, vault, name):
    status, operation = get_operation(req, vault, name)
    del vault.operations[name.lower()]
    return status, operation


def get_certificate(req, vault, name, version):
    obj, v = vault["certificates"].lookup(name, version)
    return 200, bundle(vault, obj, v)


def get_policy(req, vault, name):
    obj, v = vault["certificates"].lookup(name)
    return 200, policy_body(vault, obj, v)


def update_certificate(req, vault, name, version):
    obj, v = vault["certificates"].lookup(name, version)
    body = object_body(req.json())
    attrs = check_attributes(body.get("attributes"))
    tags = check_tags(body.get("tags")) if "tags" in body else None
    v.update(attrs, tags)
    # The certificate's key and secret versions follow its attributes.
    for kind in ("keys", "secrets"):
        other = vault[kind].get(name)
        ov = other.find(v.version) if other else None
        if ov is not None:
            ov.update(attrs, tags)
    return 200, bundle(vault, obj, v)


def delete_certificate(req, vault, name):
    entry = vault["certificates"].delete(name, req.settings.delete_delay)
    vault.operations.pop(name.lower(), None)
    for kind in ("keys", "secrets"):
        if vault[kind].get(name) is not None:
            vault[kind].delete(name, req.settings.delete_delay)
    return 200, store.deleted_body(vault, "certificates", entry, lambda o, v: bundle(vault, o, v))


def purge_certificate(req, vault, name):
    vault["certificates"].purge(name)
    for kind in ("keys", "secrets"):
        if name.lower() in vault[kind].deleted:
            vault[kind].purge(name)
    return 204, None


def recover_certificate(req, vault, name):
    obj = vault["certificates"].recover(name)
    for kind in ("keys", "secrets"):
        if name.lower() in vault[kind].deleted:
            vault[kind].recover(name)
    return 200, bundle(vault, obj, obj.latest())


# /certificates/{name}/{sub} that are not versions.
NOT_VERSIONS = ("create", "pending", "backup", "policy")


def subroute(name, sub, m):
    """The certificate's own /certificates/{name}/{sub} routes."""
    if sub == "import" and m == "POST":
        return "import", lambda r, vt: import_certificate(r, vt, name)
    if sub == "create" and m == "POST":
        return "create", lambda r, vt: create_certificate(r, vt, name)
    if sub == "pending" and m == "GET":
        return "get", lambda r, vt: get_operation(r, vt, name)
    if sub == "pending" and m == "DELETE":
        return "delete", lambda r, vt: delete_operation(r, vt, name)
    if sub == "policy" and m == "GET":
        return "get", lambda r, vt: get_policy(r, vt, name)
    return None


def route(req, parts):
    if parts[0] == "certificates":
        return store.route_live(req, parts, "certificates", item, get_certificate,
                                update_certificate, delete_certificate, subroute=subroute,
                                is_version=lambda sub: sub not in NOT_VERSIONS)
    if parts[0] == "deletedcertificates":
        return store.route_deleted(req, parts, "certificates", item,
                                   lambda r, vt, o, v: bundle(vt, o, v),
                                   purge_certificate, recover_certificate)
    return None
