"""Authentication (bearer challenge and JWT verification) and authorization (access policies).

Authentication follows facts 1-3 and 23:
  - no `Authorization: Bearer ...` -> 401 with the challenge header, before the body is looked at;
  - a bearer token must be an RS256 JWT signed by the local token endpoint's key (kid checked),
    with aud == https://vault.azure.net, iss == https://sts.windows.net/{tid}/ for a configured
    tenant, and nbf/exp around now (5 minutes of clock skew, as Entra-issued tokens get).
Authorization is the access-policy model: identity = the token's `appid` (client id); a grants
file maps vault -> identity -> permissions per object kind (format in keyvault.sh and README.md).
A denial is a 403 with inner code AccessDenied (fact 10).
"""

import json
import threading
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from common import (FWLINK_ACCESS_DENIED, KvError, b64url, b64url_decode, file_stamp,
                    int_to_b64url)

RESOURCE = "https://vault.azure.net"
CLOCK_SKEW = 300

# Fact 1 (observed, 2024-2025 wording; the recordings show the newer "Bearer, PoP, or MTLS_POP"
# wording from 2026 on, selectable with --challenge-wording 2026).
MISSING_TOKEN = {
    "2025": "AKV10000: Request is missing a Bearer or PoP token.",
    "2026": "AKV10000: Request is missing a Bearer, PoP, or MTLS_POP token.",
}

PERMISSIONS = {
    "secrets": ("get", "list", "set", "delete", "recover", "backup", "restore", "purge"),
    "keys": ("get", "list", "update", "create", "import", "delete", "recover", "backup",
             "restore", "purge", "decrypt", "encrypt", "unwrapkey", "wrapkey", "verify", "sign",
             "release", "rotate", "getrotationpolicy", "setrotationpolicy"),
    "certificates": ("get", "list", "update", "create", "import", "delete", "recover", "backup",
                     "restore", "purge", "managecontacts", "manageissuers", "getissuers",
                     "listissuers", "setissuers", "deleteissuers"),
}


class Identity:
    def __init__(self, claims):
        self.appid = claims.get("appid") or claims.get("azp") or "-"
        self.oid = claims.get("oid", "-")
        self.iss = claims.get("iss", "-")

    def describe(self):
        # Observed form of the caller in an access-policy denial (fact 10).
        return f"appid={self.appid};oid={self.oid};iss={self.iss}"


class Authenticator:
    def __init__(self, public_key_file, tenants, wording="2025"):
        with open(public_key_file, "rb") as f:
            data = f.read()
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise SystemExit(f"{public_key_file}: not an RSA key")
        self.key = key
        numbers = key.public_numbers()
        canonical = json.dumps({"e": int_to_b64url(numbers.e), "kty": "RSA",
                                "n": int_to_b64url(numbers.n)}, separators=(",", ":"),
                               sort_keys=True)
        digest = hashes.Hash(hashes.SHA256())
        digest.update(canonical.encode())
        self.kid = b64url(digest.finalize())  # RFC 7638, as token-endpoint.py computes it
        self.tenants = list(tenants)
        self.wording = wording

    def challenge_header(self):
        # Fact 1: exactly this form, no scope parameter; the environment's tenant id.
        return (f'Bearer authorization="https://login.microsoftonline.com/{self.tenants[0]}", '
                f'resource="{RESOURCE}"')

    def unauthorized(self, message):
        return KvError(401, "Unauthorized", message,
                       headers={"WWW-Authenticate": self.challenge_header()})

    def authenticate(self, authorization_header):
        """Returns the caller's Identity or raises the 401 KvError."""
        value = (authorization_header or "").strip()
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise self.unauthorized(MISSING_TOKEN[self.wording])
        claims = self._verify(token.strip())
        return Identity(claims)

    def _verify(self, token):
        parts = token.split(".")
        if len(parts) != 3:
            # Best reading: the real service answers malformed tokens with an IDX validation text.
            raise self.unauthorized("Error validating token: IDX12741: JWT is malformed.")
        try:
            header = json.loads(b64url_decode(parts[0]))
            claims = json.loads(b64url_decode(parts[1]))
            signature = b64url_decode(parts[2])
        except (ValueError, TypeError):
            raise self.unauthorized("Error validating token: IDX12741: JWT is malformed.")
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise self.unauthorized("Error validating token: IDX12741: JWT is malformed.")
        if header.get("alg") != "RS256" or header.get("kid") not in (None, self.kid):
            raise self.unauthorized("Error validating token: IDX10503: Signature validation failed. "
                                    "The token's kid is not one of the issuer's keys.")
        try:
            self.key.verify(signature, f"{parts[0]}.{parts[1]}".encode("ascii"),
                            padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError):
            raise self.unauthorized("Error validating token: IDX10511: Signature validation failed.")
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if RESOURCE not in auds and RESOURCE + "/" not in auds:
            # Wording seen from the real service (MicrosoftDocs/azure-docs#109562 and others).
            raise self.unauthorized(f"AKV10022: Invalid audience. Expected {RESOURCE}, found: {aud}.")
        tid = claims.get("tid")
        issuers = [f"https://sts.windows.net/{t}/" for t in self.tenants]
        if tid not in self.tenants or claims.get("iss") != f"https://sts.windows.net/{tid}/":
            # Wording seen from the real service (MicrosoftDocs/azure-docs#75410).
            raise self.unauthorized(f"AKV10032: Invalid issuer. Expected one of "
                                    f"{', '.join(issuers)}, found {claims.get('iss')}.")
        t = time.time()
        exp, nbf = claims.get("exp"), claims.get("nbf", 0)
        if not isinstance(exp, (int, float)) or exp + CLOCK_SKEW < t:
            raise self.unauthorized("The token is expired.")  # fact 23 wording
        if isinstance(nbf, (int, float)) and nbf - CLOCK_SKEW > t:
            raise self.unauthorized("The token is not yet valid.")
        return claims


class Grants:
    """The access policies: a JSON file, re-read when its modification time changes.

    {"<vault>|*": {"<client id>": "all" | {"secrets": ["get", ...] | "all", "keys": ..., ...}}}
    Keys starting with "_" are comments. "*" as vault applies to every vault.
    """

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self.stamp = None
        self.data = {}

    def _load(self):
        stamp = file_stamp(self.path)
        with self.lock:
            if stamp != self.stamp:
                data = {}
                if stamp is not None:
                    try:
                        with open(self.path, encoding="utf-8") as f:
                            data = json.load(f)
                    except (OSError, ValueError) as e:
                        raise KvError(500, "InternalServerError",
                                      f"The local Key Vault cannot read its grants file {self.path}: {e}")
                self.data = data if isinstance(data, dict) else {}
                self.stamp = stamp
            return self.data

    def allowed(self, vault, identity, kind, permission):
        data = self._load()
        for vault_key in (vault, "*"):
            entry = data.get(vault_key)
            if not isinstance(entry, dict):
                continue
            perms = entry.get(identity.appid)
            if perms == "all":
                return True
            if not isinstance(perms, dict):
                continue
            granted = perms.get(kind)
            if granted == "all":
                return True
            if isinstance(granted, list):
                granted = {str(p).lower() for p in granted}
                if "all" in granted or permission.lower() in granted:
                    return True
        return False

    def check(self, vault, region, identity, kind, permission):
        if not self.allowed(vault, identity, kind, permission):
            # Fact 10 (observed wording; "numgroups" is left out: local clients have no groups).
            raise KvError(403, "Forbidden",
                          f"The user, group or application '{identity.describe()}' does not have "
                          f"{kind} {permission} permission on key vault '{vault};location={region}'. "
                          f"For help resolving this issue, please see {FWLINK_ACCESS_DENIED}",
                          "AccessDenied")
