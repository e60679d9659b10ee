#!/usr/bin/env python3
"""A local HTTPS token endpoint standing in for Entra ID (Azure AD) in the local environment.

Started by tests/env/keyvault.sh next to the local Key Vault (tests/env/keyvault/server.py), with
the Python of $CACHE_DIR/keyvault-venv (it needs the `cryptography` package to sign tokens).
Facts cited as "fact N" are the numbered facts of the Azure Key Vault reference README
(shared/azure-keyvault-reference/README.md; observed/entra-token-endpoint.json).

Endpoints
  POST /{tenant}/oauth2/v2.0/token   OAuth2 client-credentials grant, as used by the Azure SDKs'
                                     ClientSecretCredential, ClientAssertionCredential and
                                     WorkloadIdentityCredential with a custom authority host (fact 22).
  GET  /{tenant}/v2.0/.well-known/openid-configuration
                                     discovery document (the Rust SDK does not ask for it, other
                                     SDKs may), naming jwks_uri.
  GET  /{tenant}/discovery/v2.0/keys JWKS with the public key that signs the access tokens
                                     (also at /{tenant}/discovery/keys, the v1 location).
  GET  /health                       readiness probe.

Token request form fields
  grant_type=client_credentials, client_id, scope (must end in "/.default"), and either
    client_secret=...                                         (client secret flow), or
    client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer
    client_assertion=<Kubernetes service account JWT>         (federated / workload identity flow).

Registered clients: a JSON file (--clients), re-read on every request, so tests register clients
by rewriting it (write a temporary file and rename it over the old one; `keyvault.sh
register-client` does that under a lock). It maps client ids to registrations; keys starting
with "_" are ignored (use them for comments):

  {
    "vaultsync-local": {"tenant": "vaultsync-tenant", "secret": "vaultsync-local-secret"},
    "some-workload":   {"tenant": "vaultsync-tenant",
                        "federated": {"issuer": "https://kubernetes.default.svc.cluster.local",
                                      "subject": "system:serviceaccount:NS:NAME",
                                      "audience": "api://AzureADTokenExchange"}}
  }

  "federated" may also be a list of such records. "issuer" is optional (omit it, or use "*", to
  accept any issuer); "audience" defaults to "api://AzureADTokenExchange". A client may have both
  a secret and federated records. LOCAL CONVENIENCE: a subject may contain "*" for one whole
  colon-separated segment, e.g. "system:serviceaccount:*:default" (the default service account of
  any namespace). Entra itself matches subjects exactly (its "flexible federated identity
  credentials" use a separate claims-matching expression); the pattern stands in for that.

Federated assertions are verified against the local Kubernetes apiserver with a TokenReview
(audiences = the registered audience), using the admin credentials of the kubeconfig named in the
k8s env file (--k8s-env, `export NAME=value` lines: KUBECONFIG, K8S_API_URL, K8S_CA_FILE), read
when needed (so the endpoint runs without Kubernetes; only the federated flow needs it). The
reviewed user must match the registered subject, and the assertion's own iss/sub/aud claims too.

Issued access tokens are RS256 JWTs signed with --signing-key (an RSA private key in PEM, made at
env-up; generated into --state-dir when not given), header `kid`/`x5t` = the key's RFC 7638
thumbprint, with v1-style claims as Key Vault sees them (fact 23): aud = the scope without
"/.default" (https://vault.azure.net for Key Vault), iss = https://sts.windows.net/{tenant}/,
tid, appid (the client id), appidacr, oid and sub (a stable GUID derived from tenant and client
id), idp, iat, nbf, exp (--token-lifetime seconds), uti, ver "1.0". The local Key Vault verifies
them. `token-endpoint.py mint --signing-key K --tenant T --client-id C [--lifetime S]` prints such
a token without a server (keyvault.sh uses it for the environment's admin token).

Errors use Entra's JSON shape (error, error_description starting with an AADSTS code,
error_codes, timestamp, trace_id, correlation_id, error_uri) with Entra's status codes. The log
names client ids, tenants, scopes and outcomes, never secrets, assertions or tokens.
"""

import argparse
import base64
import binascii
import datetime
import hashlib
import http.server
import json
import os
import re
import secrets
import shlex
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DEFAULT_AUDIENCE = "api://AzureADTokenExchange"
TOKEN_PATH = re.compile(r"^/([A-Za-z0-9.\-]+)/oauth2/v2\.0/token/?$")
DISCOVERY_PATH = re.compile(r"^/([A-Za-z0-9.\-]+)/v2\.0/\.well-known/openid-configuration/?$")
JWKS_PATH = re.compile(r"^/([A-Za-z0-9.\-]+)/discovery(?:/v2\.0)?/keys/?$")
MAX_BODY = 1 << 20

_log_lock = threading.Lock()


def fmt_fields(fields):
    """key=value pairs for the log; values come from requests, so no spaces or control chars."""
    return " ".join(f"{k}={re.sub(r'[^!-~]', '_', str(v))[:200]}" for k, v in (fields or {}).items())


def log(msg):
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    with _log_lock:
        sys.stderr.write(f"{stamp} {msg}\n")
        sys.stderr.flush()


class EntraError(Exception):
    """An error answered to the client in Entra's JSON shape."""

    def __init__(self, status, error, code, description):
        super().__init__(description)
        self.status = status
        self.error = error
        self.code = code
        self.description = description


# ---------------------------------------------------------------------------------------------
# Registered clients


def load_clients(path):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise EntraError(500, "server_error", 50000,
                         f"The local token endpoint has no clients file at {path}.")
    except (OSError, ValueError) as e:
        raise EntraError(500, "server_error", 50000,
                         f"The local token endpoint could not read its clients file {path}: {e}")
    if not isinstance(data, dict):
        raise EntraError(500, "server_error", 50000,
                         f"The clients file {path} must hold a JSON object of client_id -> registration.")
    return {k: v for k, v in data.items() if not k.startswith("_") and isinstance(v, dict)}


def federated_records(reg):
    fed = reg.get("federated")
    if fed is None:
        return []
    if isinstance(fed, dict):
        return [fed]
    if isinstance(fed, list):
        return [r for r in fed if isinstance(r, dict)]
    return []


# ---------------------------------------------------------------------------------------------
# Kubernetes access for TokenReview


def parse_env_file(path):
    values = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                if line.startswith("export "):
                    line = line[len("export "):]
                try:
                    parts = shlex.split(line)
                except ValueError:
                    continue
                for part in parts:
                    if "=" in part:
                        name, value = part.split("=", 1)
                        values[name] = value
    except OSError:
        pass
    return values


def parse_kubeconfig(path):
    """Returns (server, ca_file_or_None, ca_data_or_None, user_dict) for the current context."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        cfg = json.loads(text)
    except ValueError:
        cfg = None
    if cfg is None:
        kubectl = shutil.which("kubectl")
        if kubectl:
            out = subprocess.run(
                [kubectl, "config", "view", "--raw", "--minify", "-o", "json", "--kubeconfig", path],
                capture_output=True, text=True, timeout=20, check=False)
            if out.returncode == 0:
                cfg = json.loads(out.stdout)
    if cfg is None:
        cfg = _parse_simple_kubeconfig_yaml(text)
    base = os.path.dirname(os.path.abspath(path))

    def resolve(p):
        return p if not p or os.path.isabs(p) else os.path.join(base, p)

    def named(items, name):
        for item in items or []:
            if name is None or item.get("name") == name:
                return item
        return {}

    ctx_name = cfg.get("current-context")
    ctx = named(cfg.get("contexts"), ctx_name).get("context", {}) if ctx_name else {}
    cluster = named(cfg.get("clusters"), ctx.get("cluster")).get("cluster", {})
    user = dict(named(cfg.get("users"), ctx.get("user")).get("user", {}))
    for key in ("client-certificate", "client-key", "tokenFile"):
        if user.get(key):
            user[key] = resolve(user[key])
    return (cluster.get("server"), resolve(cluster.get("certificate-authority")),
            cluster.get("certificate-authority-data"), user)


def _parse_simple_kubeconfig_yaml(text):
    """Fallback for a plain kubectl-style YAML kubeconfig with one cluster and one user."""
    found = {}
    for line in text.splitlines():
        m = re.match(r"^\s*(?:-\s+)?([A-Za-z-]+):\s*(\S.*?)\s*$", line)
        if m and m.group(1) not in found:
            found[m.group(1)] = m.group(2).strip("'\"")
    cluster = {k: found[k] for k in ("server", "certificate-authority", "certificate-authority-data")
               if k in found}
    user = {k: found[k] for k in ("client-certificate", "client-key", "client-certificate-data",
                                  "client-key-data", "token") if k in found}
    return {"clusters": [{"cluster": cluster}], "users": [{"user": user}], "contexts": []}


class Kubernetes:
    """Builds (and caches) an HTTPS context for the apiserver from the k8s env file."""

    def __init__(self, env_file, state_dir):
        self.env_file = env_file
        self.state_dir = state_dir
        self.lock = threading.Lock()
        self.cache_key = None
        self.cache = None

    def _settings(self):
        env = parse_env_file(self.env_file) if self.env_file else {}
        for name in ("KUBECONFIG", "K8S_API_URL", "K8S_CA_FILE"):
            if not env.get(name) and os.environ.get(name):
                env[name] = os.environ[name]
        if not env.get("KUBECONFIG"):
            raise EntraError(500, "server_error", 50000,
                             "The local token endpoint cannot verify federated assertions: no "
                             f"KUBECONFIG in {self.env_file} (is the Kubernetes environment up? "
                             "run `make env-up`).")
        return env

    def _write_private(self, name, data):
        path = os.path.join(self.state_dir, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path

    def client(self):
        env = self._settings()
        kubeconfig = env["KUBECONFIG"].split(os.pathsep)[0]
        try:
            st = os.stat(kubeconfig)
        except OSError as e:
            raise EntraError(500, "server_error", 50000,
                             f"The local token endpoint cannot read the kubeconfig {kubeconfig}: {e}")
        key = (kubeconfig, st.st_mtime_ns, env.get("K8S_API_URL"), env.get("K8S_CA_FILE"))
        with self.lock:
            if key == self.cache_key:
                return self.cache
            server, ca_file, ca_data, user = parse_kubeconfig(kubeconfig)
            server = env.get("K8S_API_URL") or server
            ca_file = env.get("K8S_CA_FILE") or ca_file
            if not server:
                raise EntraError(500, "server_error", 50000,
                                 f"No apiserver URL in K8S_API_URL or {kubeconfig}.")
            ctx = ssl.create_default_context()
            if ca_file:
                ctx.load_verify_locations(cafile=ca_file)
            elif ca_data:
                ctx.load_verify_locations(cadata=base64.b64decode(ca_data).decode())
            digest = hashlib.sha256(repr(key).encode()).hexdigest()[:12]
            cert = user.get("client-certificate")
            keyf = user.get("client-key")
            if user.get("client-certificate-data"):
                cert = self._write_private(f"k8s-client-{digest}.crt",
                                           base64.b64decode(user["client-certificate-data"]))
            if user.get("client-key-data"):
                keyf = self._write_private(f"k8s-client-{digest}.key",
                                           base64.b64decode(user["client-key-data"]))
            headers = {}
            if cert and keyf:
                ctx.load_cert_chain(cert, keyf)
            elif user.get("token"):
                headers["Authorization"] = "Bearer " + user["token"]
            elif user.get("tokenFile"):
                with open(user["tokenFile"], encoding="utf-8") as f:
                    headers["Authorization"] = "Bearer " + f.read().strip()
            else:
                raise EntraError(500, "server_error", 50000,
                                 f"No client certificate or token for the current user in {kubeconfig}.")
            self.cache_key = key
            self.cache = (server.rstrip("/"), ctx, headers)
            return self.cache

    def token_review(self, token, audience):
        server, ctx, headers = self.client()
        body = json.dumps({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [audience]},
        }).encode()
        req = urllib.request.Request(
            server + "/apis/authentication.k8s.io/v1/tokenreviews", data=body, method="POST",
            headers={"Content-Type": "application/json", "Accept": "application/json", **headers})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=15) as resp:
                return json.load(resp).get("status", {})
        except urllib.error.HTTPError as e:
            detail = e.read(2000).decode("utf-8", "replace")
            raise EntraError(500, "server_error", 50000,
                             f"The TokenReview at {server} failed with HTTP {e.code}: {detail}")
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise EntraError(500, "server_error", 50000,
                             f"The TokenReview at {server} failed: {e}")


# ---------------------------------------------------------------------------------------------
# Token endpoint logic


def b64url_json(part):
    pad = "=" * (-len(part) % 4)
    return json.loads(base64.urlsafe_b64decode(part + pad))


def decode_jwt_claims(assertion):
    parts = assertion.split(".")
    if len(parts) != 3:
        raise EntraError(400, "invalid_client", 50027,
                         "JWT token is invalid or malformed: the client assertion is not a JWS.")
    try:
        claims = b64url_json(parts[1])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise EntraError(400, "invalid_client", 50027,
                         "JWT token is invalid or malformed: the client assertion payload is not JSON.")
    if not isinstance(claims, dict):
        raise EntraError(400, "invalid_client", 50027,
                         "JWT token is invalid or malformed: the client assertion payload is not an object.")
    return claims


# ---------------------------------------------------------------------------------------------
# Access tokens: RS256 JWTs with v1-style claims (fact 23)


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_bytes(n):
    return n.to_bytes((n.bit_length() + 7) // 8 or 1, "big")


class Signer:
    """Signs access tokens with an RSA key; publishes its public half as a JWKS."""

    def __init__(self, key_file, state_dir=None):
        # Imported here so that a missing package gives a clear message, not a traceback.
        try:
            from cryptography.hazmat.primitives import hashes, serialization
            from cryptography.hazmat.primitives.asymmetric import padding, rsa
        except ImportError:
            sys.exit("token-endpoint.py needs the Python package 'cryptography' (keyvault.sh "
                     "installs it into $CACHE_DIR/keyvault-venv; run it with that venv's python)")
        self._hashes, self._padding = hashes, padding
        if not key_file:
            key_file = os.path.join(state_dir or tempfile.mkdtemp(prefix="token-endpoint-"),
                                    "jwt-signing.key")
            if not os.path.exists(key_file):
                key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
                pem = key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
                fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(pem)
        with open(key_file, "rb") as f:
            self.key = serialization.load_pem_private_key(f.read(), password=None)
        if not isinstance(self.key, rsa.RSAPrivateKey):
            sys.exit(f"{key_file} is not an RSA private key")
        numbers = self.key.public_key().public_numbers()
        n, e = b64url(_int_bytes(numbers.n)), b64url(_int_bytes(numbers.e))
        # RFC 7638 thumbprint: SHA-256 over the required members in lexicographic order.
        canonical = json.dumps({"e": e, "kty": "RSA", "n": n}, separators=(",", ":"), sort_keys=True)
        self.kid = b64url(hashlib.sha256(canonical.encode()).digest())
        self.jwk = {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid, "x5t": self.kid,
                    "n": n, "e": e}

    def jwks(self):
        return {"keys": [self.jwk]}

    def sign(self, claims):
        header = {"typ": "JWT", "alg": "RS256", "kid": self.kid, "x5t": self.kid}
        signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode()) + "." +
                         b64url(json.dumps(claims, separators=(",", ":")).encode()))
        signature = self.key.sign(signing_input.encode("ascii"), self._padding.PKCS1v15(),
                                  self._hashes.SHA256())
        return signing_input + "." + b64url(signature)


def object_id(tenant, client_id):
    """A stable GUID per (tenant, client): the service principal's object id."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://login.microsoftonline.com/{tenant}/{client_id}"))


def access_token_claims(tenant, client_id, scope, lifetime, appidacr="1", now=None):
    """v1-style claims of an app-only token (fact 23): aud is the scope's resource."""
    now = int(now if now is not None else time.time())
    resource = scope[: -len("/.default")] if scope.endswith("/.default") else scope
    oid = object_id(tenant, client_id)
    iss = f"https://sts.windows.net/{tenant}/"
    return {
        "aud": resource,
        "iss": iss,
        "iat": now,
        "nbf": now,
        "exp": now + int(lifetime),
        "aio": b64url(secrets.token_bytes(24)),
        "appid": client_id,
        "appidacr": appidacr,
        "idp": iss,
        "oid": oid,
        "rh": "0.local.",
        "sub": oid,
        "tid": tenant,
        "uti": b64url(secrets.token_bytes(16)),
        "ver": "1.0",
    }


def subject_matches(pattern, subject):
    """Exact match, or "*" standing for one whole colon-separated segment (local convenience)."""
    if not isinstance(pattern, str) or not subject:
        return False
    if "*" not in pattern:
        return pattern == subject
    regex = "^" + ":".join("[^:]+" if part == "*" else re.escape(part)
                           for part in pattern.split(":")) + "$"
    return re.match(regex, subject) is not None


class TokenService:
    def __init__(self, clients_file, kubernetes, lifetime, signer):
        self.clients_file = clients_file
        self.kubernetes = kubernetes
        self.lifetime = lifetime
        self.signer = signer

    def issue(self, tenant, form, fields):
        """Returns the token response or raises EntraError; fills `fields` for the log line."""

        def param(name):
            values = form.get(name)
            return values[0] if values else ""

        client_id = param("client_id")
        fields["client_id"] = client_id or "-"
        grant_type = param("grant_type")
        if not grant_type:
            raise EntraError(400, "invalid_request", 900144,
                             "The request body must contain the following parameter: 'grant_type'.")
        if grant_type != "client_credentials":
            raise EntraError(400, "unsupported_grant_type", 70003,
                             f"The app requested an unsupported grant type '{grant_type}'.")
        if not client_id:
            raise EntraError(400, "invalid_request", 900144,
                             "The request body must contain the following parameter: 'client_id'.")
        scope = param("scope")
        fields["scope"] = scope or "-"
        if not scope:
            raise EntraError(400, "invalid_request", 900144,
                             "The request body must contain the following parameter: 'scope'.")
        scopes = scope.split()
        if len(scopes) != 1 or not scopes[0].endswith("/.default"):
            raise EntraError(400, "invalid_scope", 1002012,
                             f"The provided value for scope {scope} is not valid. Client credential "
                             "flows must have a scope value with /.default suffixed to the resource "
                             "identifier (application ID URI).")

        clients = load_clients(self.clients_file)
        if not any(reg.get("tenant") == tenant for reg in clients.values()):
            raise EntraError(400, "invalid_request", 90002,
                             f"Tenant '{tenant}' not found. Check to make sure you have the correct "
                             "tenant ID and are signing into the correct cloud.")
        reg = clients.get(client_id)
        if reg is None or reg.get("tenant") != tenant:
            raise EntraError(400, "unauthorized_client", 700016,
                             f"Application with identifier '{client_id}' was not found in the "
                             f"directory '{tenant}'.")

        secret = param("client_secret")
        assertion = param("client_assertion")
        assertion_type = param("client_assertion_type")
        if secret and assertion:
            raise EntraError(400, "invalid_request", 9002313,
                             "Invalid request. Request is malformed or invalid: present exactly "
                             "one of client_secret and client_assertion.")
        if secret:
            fields["flow"] = "client_secret"
            expected = reg.get("secret")
            if not expected or not secrets.compare_digest(secret.encode(), str(expected).encode()):
                raise EntraError(401, "invalid_client", 7000215,
                                 "Invalid client secret provided. Ensure the secret being sent in "
                                 f"the request is the client secret value, not the client secret "
                                 f"ID, for a secret added to app '{client_id}'.")
        elif assertion or assertion_type:
            fields["flow"] = "client_assertion"
            if assertion_type != ASSERTION_TYPE:
                raise EntraError(400, "invalid_request", 50027 if assertion_type else 900144,
                                 f"client_assertion_type must be '{ASSERTION_TYPE}'.")
            if not assertion:
                raise EntraError(400, "invalid_request", 900144,
                                 "The request body must contain the following parameter: "
                                 "'client_assertion'.")
            fields["subject"] = self.verify_assertion(client_id, reg, assertion)
        else:
            raise EntraError(401, "invalid_client", 7000218,
                             "The request body must contain the following parameter: "
                             "'client_assertion' or 'client_secret'.")

        appidacr = "1" if fields.get("flow") == "client_secret" else "2"
        token = self.signer.sign(access_token_claims(tenant, client_id, scopes[0], self.lifetime,
                                                     appidacr))
        return {
            "token_type": "Bearer",
            "expires_in": self.lifetime,
            "ext_expires_in": self.lifetime,
            "access_token": token,
        }

    def verify_assertion(self, client_id, reg, assertion):
        records = federated_records(reg)
        if not records:
            raise EntraError(400, "invalid_client", 70021,
                             f"No matching federated identity record found for presented assertion: "
                             f"app '{client_id}' has no federated identity credentials.")
        claims = decode_jwt_claims(assertion)
        iss = claims.get("iss", "")
        sub = claims.get("sub", "")
        aud = claims.get("aud", [])
        auds = [aud] if isinstance(aud, str) else [a for a in aud if isinstance(a, str)]
        exp = claims.get("exp")
        now = time.time()
        if not isinstance(exp, (int, float)) or exp < now or claims.get("nbf", 0) > now + 300:
            raise EntraError(400, "invalid_client", 700024,
                             "Client assertion is not within its valid time range.")
        match = None
        for rec in records:
            want_iss = rec.get("issuer", "*") or "*"
            if ((want_iss == "*" or want_iss == iss) and subject_matches(rec.get("subject"), sub)
                    and (rec.get("audience") or DEFAULT_AUDIENCE) in auds):
                match = rec
                break
        if match is None:
            raise EntraError(400, "invalid_client", 70021,
                             "No matching federated identity record found for presented assertion. "
                             f"Assertion Issuer: '{iss}'. Assertion Subject: '{sub}'. "
                             f"Assertion Audience: '{','.join(auds)}'.")
        audience = match.get("audience") or DEFAULT_AUDIENCE
        status = self.kubernetes.token_review(assertion, audience)
        if not status.get("authenticated"):
            reason = status.get("error") or "not authenticated"
            raise EntraError(401, "invalid_client", 700027,
                             f"Client assertion failed signature validation: the Kubernetes "
                             f"TokenReview rejected it ({reason}).")
        username = status.get("user", {}).get("username", "")
        if username != sub or not subject_matches(match.get("subject"), username):
            raise EntraError(400, "invalid_client", 70021,
                             "No matching federated identity record found for presented assertion: "
                             f"the Kubernetes TokenReview names '{username}', the registered subject "
                             f"is '{match.get('subject')}'.")
        reviewed_auds = status.get("audiences")
        if reviewed_auds is not None and audience not in reviewed_auds:
            raise EntraError(400, "invalid_client", 700212,
                             f"No matching federated identity record found for presented assertion "
                             f"audience '{audience}'.")
        return username


# ---------------------------------------------------------------------------------------------
# HTTP plumbing


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "vaultsync-local-entra/1"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # the default access log is replaced by log_request_line
        pass

    def log_request_line(self, status, extra=""):
        path = urllib.parse.urlsplit(self.path).path
        log(f"{self.client_address[0]} {self.command} {path} {status}{(' ' + extra) if extra else ''}")

    def send_json(self, status, payload, extra_headers=None):
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store, no-cache")
        self.send_header("Pragma", "no-cache")
        for k, v in (extra_headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_entra_error(self, err, fields=None):
        now = datetime.datetime.now(datetime.timezone.utc)
        trace_id, correlation_id = str(uuid.uuid4()), str(uuid.uuid4())
        stamp = now.strftime("%Y-%m-%d %H:%M:%SZ")
        # No character that JSON must escape: azure_identity 1.0 deserializes error_description
        # as a borrowed &str, which fails on any escape sequence (Entra's own "\r\n" included).
        text = re.sub(r'[\x00-\x1f"\\]', " ", err.description.replace('"', "'"))
        description = (f"AADSTS{err.code}: {text} Trace ID: {trace_id} "
                       f"Correlation ID: {correlation_id} Timestamp: {stamp}")
        self.send_json(err.status, {
            "error": err.error,
            "error_description": description,
            "error_codes": [err.code],
            "timestamp": stamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"https://127.0.0.1/error?code={err.code}",
        })
        self.log_request_line(err.status, f"{fmt_fields(fields)} error=AADSTS{err.code}".strip())

    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path
        if path in ("/health", "/healthz"):
            body = b"ok\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        m = DISCOVERY_PATH.match(path)
        if m:
            tenant = m.group(1)
            base = self.server.public_url
            self.send_json(200, {
                "issuer": f"{base}/{tenant}/v2.0",
                "authorization_endpoint": f"{base}/{tenant}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/{tenant}/oauth2/v2.0/token",
                "jwks_uri": f"{base}/{tenant}/discovery/v2.0/keys",
                "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
                "grant_types_supported": ["client_credentials"],
                "response_types_supported": ["token"],
                "tenant_region_scope": None,
                "cloud_instance_name": "vaultsync.local",
            })
            self.log_request_line(200, fmt_fields({"tenant": tenant}))
            return
        m = JWKS_PATH.match(path)
        if m:
            self.send_json(200, self.server.tokens.signer.jwks())
            self.log_request_line(200, fmt_fields({"tenant": m.group(1)}))
            return
        self.send_json(404, {"error": "not_found", "error_description": f"No route for GET {path}."})
        self.log_request_line(404)

    do_HEAD = do_GET

    def do_POST(self):
        path = urllib.parse.urlsplit(self.path).path
        m = TOKEN_PATH.match(path)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.send_json(413, {"error": "invalid_request", "error_description": "Body too large."})
            self.log_request_line(413)
            self.close_connection = True
            return
        raw = self.rfile.read(length) if length else b""
        if not m:
            self.send_json(404, {"error": "not_found", "error_description": f"No route for POST {path}."})
            self.log_request_line(404)
            return
        tenant = m.group(1)
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            self.send_entra_error(EntraError(400, "invalid_request", 900144,
                                             "The request body must be application/x-www-form-urlencoded."),
                                  {"tenant": tenant})
            return
        form = urllib.parse.parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
        fields = {"tenant": tenant}
        try:
            payload = self.server.tokens.issue(tenant, form, fields)
        except EntraError as err:
            self.send_entra_error(err, fields)
            return
        except Exception as e:  # never let a bug turn into a hung client
            log(f"internal error: {type(e).__name__}: {e}")
            self.send_entra_error(EntraError(500, "server_error", 50000,
                                             f"Internal error in the local token endpoint: {type(e).__name__}."),
                                  fields)
            return
        self.send_json(200, payload)
        self.log_request_line(200, fmt_fields(fields) + " issued")


class TLSThreadingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, handler, ssl_context, tokens, public_url):
        super().__init__(addr, handler)
        self.ssl_context = ssl_context
        self.tokens = tokens
        self.public_url = public_url

    def finish_request(self, request, client_address):
        # The TLS handshake runs in the connection's own thread, so a slow client cannot stall
        # the accept loop.
        request.settimeout(30)
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            log(f"{client_address[0]} TLS handshake failed: {e}")
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            try:
                tls.close()
            except OSError:
                pass


def mint(argv):
    """`mint`: prints one access token (the environment's long-lived admin token)."""
    ap = argparse.ArgumentParser(prog="token-endpoint.py mint",
                                 description="Print a signed access token without a server.")
    ap.add_argument("--signing-key", required=True, help="PEM RSA private key (as for the server)")
    ap.add_argument("--tenant", required=True)
    ap.add_argument("--client-id", required=True)
    ap.add_argument("--scope", default="https://vault.azure.net/.default")
    ap.add_argument("--lifetime", type=int, default=30 * 86400, help="seconds (default 30 days)")
    args = ap.parse_args(argv)
    signer = Signer(args.signing_key)
    print(signer.sign(access_token_claims(args.tenant, args.client_id, args.scope, args.lifetime)))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "mint":
        mint(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description="Local Entra ID token endpoint (see module docstring).")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cert", required=True, help="PEM server certificate (chain)")
    ap.add_argument("--key", required=True, help="PEM server private key")
    ap.add_argument("--clients", required=True, help="JSON clients file, re-read on each request")
    ap.add_argument("--k8s-env", default="", help="env file with KUBECONFIG, K8S_API_URL, K8S_CA_FILE")
    ap.add_argument("--state-dir", default=None, help="private directory for derived files")
    ap.add_argument("--signing-key", default=None,
                    help="PEM RSA private key that signs access tokens (default: generated in --state-dir)")
    ap.add_argument("--token-lifetime", type=int, default=3599)
    args = ap.parse_args()

    state_dir = args.state_dir or tempfile.mkdtemp(prefix="token-endpoint-")
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(args.cert, args.key)
    signer = Signer(args.signing_key, state_dir)
    tokens = TokenService(args.clients, Kubernetes(args.k8s_env, state_dir), args.token_lifetime,
                          signer)
    server = TLSThreadingServer((args.host, args.port), Handler, ctx, tokens,
                                f"https://{args.host}:{args.port}")
    log(f"local Entra ID token endpoint listening on https://{args.host}:{args.port} "
        f"(clients: {args.clients}, k8s env: {args.k8s_env or '-'}, signing key kid {signer.kid})")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
