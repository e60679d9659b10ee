"""The local Key Vault as the suite sees it: the environment contract, a raw REST client whose
every response is validated against the OpenAPI 2025-07-01 schemas, and the local token endpoint.

Nothing here reads the double's implementation: only its environment contract (the variables
that `source target/env/env.sh` exports after `make env-up`) and the reference data.
"""

import base64
import json
import os
import re
import secrets
import socket
import time
import urllib.parse

import pytest
import requests
import urllib3.util.connection

from kvschema import SPEC

API_VERSION = "2025-07-01"
HINT = "run `make env-up`, then `source target/env/env.sh` (or use `make keyvault-conformance`)"
REQUIRED = (
    "AZURE_KEYVAULT_URL",
    "AZURE_KEYVAULT_CA_FILE",
    "AZURE_KEYVAULT_ADMIN_TOKEN",
    "AZURE_AUTHORITY_HOST",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_KEYVAULT_SH",
)
# Fact 1: the challenge of every recorded 401; the tenant differs between vaults.
CHALLENGE = re.compile(
    r'^Bearer authorization="https://login\.microsoftonline\.com/[0-9A-Za-z.\-]+", '
    r'resource="https://vault\.azure\.net"$'
)
UNAUTHORIZED_MESSAGES = (
    "AKV10000: Request is missing a Bearer or PoP token.",
    "AKV10000: Request is missing a Bearer, PoP, or MTLS_POP token.",
)
VERSION = re.compile(r"^[0-9a-f]{32}$")

NOTES = []


def note(text):
    """A behaviour the local vault chose where the real service's is timing-dependent, or an
    observation worth reporting; printed at the end of the run."""
    if text not in NOTES:
        NOTES.append(text)


ADMIN = object()  # sentinel: the admin bearer token
_NO_BODY = object()


def fail(msg):
    pytest.fail(msg, pytrace=False)


class Env:
    def __init__(self):
        missing = [n for n in REQUIRED if not os.environ.get(n)]
        if missing:
            fail(
                f"{', '.join(missing)} not set: the local Azure Key Vault environment is not up "
                f"or its env is not loaded; {HINT}"
            )
        e = os.environ
        self.url = e["AZURE_KEYVAULT_URL"].rstrip("/")
        self.ca_file = e["AZURE_KEYVAULT_CA_FILE"]
        self.admin_token = e["AZURE_KEYVAULT_ADMIN_TOKEN"]
        self.authority = e["AZURE_AUTHORITY_HOST"].rstrip("/")
        self.tenant = e["AZURE_TENANT_ID"]
        self.client_id = e["AZURE_CLIENT_ID"]
        self.client_secret = e["AZURE_CLIENT_SECRET"]
        self.sh = e["AZURE_KEYVAULT_SH"]
        self.resolve = e.get("AZURE_KEYVAULT_RESOLVE", "")
        if not os.path.isfile(self.ca_file):
            fail(f"AZURE_KEYVAULT_CA_FILE {self.ca_file} does not exist; {HINT}")
        if not os.path.isfile(self.sh):
            fail(f"AZURE_KEYVAULT_SH {self.sh} does not exist; {HINT}")
        u = urllib.parse.urlsplit(self.url)
        if u.scheme != "https":
            fail(f"AZURE_KEYVAULT_URL {self.url} must be https (fact 5)")
        self.vault_name, self.host_suffix = u.hostname.split(".", 1)
        self.port = u.port
        self._install_resolve()

    def vault_url(self, vault="default"):
        port = f":{self.port}" if self.port else ""
        return f"https://{vault}.{self.host_suffix}{port}"

    def vault_host(self, vault="default"):
        return f"{vault}.{self.host_suffix}"

    def _install_resolve(self):
        """AZURE_KEYVAULT_RESOLVE, when not empty: curl-style `host:port:address` entries
        (separated by spaces or commas) that override name resolution for this process."""
        entries = {}
        for item in re.split(r"[\s,]+", self.resolve.strip()):
            if not item:
                continue
            parts = item.split(":", 2)
            if len(parts) != 3:
                fail(f"AZURE_KEYVAULT_RESOLVE entry {item!r} is not host:port:address")
            entries[(parts[0].lower(), int(parts[1]))] = parts[2].strip("[]")
        if not entries:
            return
        original = urllib3.util.connection.create_connection

        def create_connection(address, *args, **kwargs):
            host, port = address
            return original((entries.get((host.lower(), port), host), port), *args, **kwargs)

        urllib3.util.connection.create_connection = create_connection
        orig_getaddrinfo = socket.getaddrinfo

        def getaddrinfo(host, port, *args, **kwargs):
            key = (str(host).lower(), int(port) if port else 0)
            return orig_getaddrinfo(entries.get(key, host), port, *args, **kwargs)

        socket.getaddrinfo = getaddrinfo


PREFIX = "cf-"  # every object the suite makes; removed at the end of the run (KeyVault.cleanup)


def unique(prefix="x"):
    """A fresh object name (names are [0-9a-zA-Z-], fact 14)."""
    return f"{PREFIX}{prefix}-{secrets.token_hex(5)}"


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jwt_claims(token):
    try:
        return json.loads(b64url_decode(token.split(".")[1]))
    except Exception as e:  # noqa: BLE001
        raise AssertionError(f"not a JWT: {e}") from None


def with_api_version(link, version=API_VERSION):
    """A nextLink with api-version set, as the Rust pager does (fact 17)."""
    u = urllib.parse.urlsplit(link)
    q = [(k, v) for k, v in urllib.parse.parse_qsl(u.query, keep_blank_values=True)]
    q = [(k, v) for k, v in q if k != "api-version"] + [("api-version", version)]
    return urllib.parse.urlunsplit(u._replace(query=urllib.parse.urlencode(q, safe="$")))


class Response:
    """A requests response with its JSON body parsed (None when empty)."""

    def __init__(self, method, url, raw):
        self.method = method
        self.url = url
        self.raw = raw
        self.status = raw.status_code
        self.headers = raw.headers
        self.text = raw.text
        self.body = None
        if raw.content:
            try:
                self.body = raw.json()
            except ValueError:
                self.body = None

    def __repr__(self):
        return f"{self.method} {self.url} -> {self.status} {self.text[:600]}"

    def expect(self, status):
        assert self.status == status, f"expected {status}: {self!r}"
        return self.body

    def error(self):
        assert isinstance(self.body, dict) and isinstance(self.body.get("error"), dict), (
            f"not a KeyVaultError body: {self!r}"
        )
        return self.body["error"]


class KeyVault:
    """Raw REST access to the local vaults; every response is checked against the OpenAPI
    2025-07-01 schema of its operation and status (see kvschema.py)."""

    def __init__(self, env):
        self.env = env
        self.session = requests.Session()
        self.session.trust_env = False  # no proxies, no netrc: only the local CA
        self.session.verify = env.ca_file
        self.validated = []  # (operationId, status) of every validated response

    def url(self, path, vault="default"):
        return self.env.vault_url(vault) + path

    def request(
        self,
        method,
        path,
        *,
        vault="default",
        token=ADMIN,
        json_body=_NO_BODY,
        data=None,
        params=None,
        api_version=API_VERSION,
        headers=None,
        validate=True,
        url=None,
    ):
        url = url or self.url(path, vault)
        hdrs = {"Accept": "application/json"}
        if token is ADMIN:
            token = self.env.admin_token
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        q = dict(params or {})
        if api_version is not None:
            q["api-version"] = api_version
        kwargs = {}
        if json_body is not _NO_BODY:
            kwargs["data"] = json.dumps(json_body)
            hdrs["Content-Type"] = "application/json"
        elif data is not None:
            kwargs["data"] = data
        hdrs.update(headers or {})
        try:
            raw = self.session.request(
                method, url, params=q or None, headers=hdrs, timeout=30, **kwargs
            )
        except requests.exceptions.ConnectionError as e:
            fail(f"the local Key Vault at {url} is unreachable ({e}); {HINT}")
        resp = Response(method, raw.url, raw)
        if validate:
            self.validate(resp)
        return resp

    def validate(self, resp):
        path = urllib.parse.urlsplit(resp.url).path
        has_body = bool(resp.raw.content)
        if has_body:
            ctype = resp.headers.get("Content-Type", "")
            assert ctype.lower().startswith("application/json"), (
                f"{resp.method} {resp.url} -> {resp.status}: Content-Type {ctype!r} is not "
                f"application/json (fact 6)"
            )
            assert resp.body is not None, f"body is not JSON: {resp!r}"
        op = SPEC.check_response(resp.method, path, resp.status, resp.body, has_body)
        self.validated.append((op.operation_id, resp.status))
        return op

    # Convenience wrappers used by several tests -------------------------------------------

    def set_secret(self, name, value, vault="default", **extra):
        body = {"value": value, **extra}
        return self.request("PUT", f"/secrets/{name}", vault=vault, json_body=body).expect(200)

    def get_secret(self, name, version="", vault="default", **kw):
        return self.request("GET", f"/secrets/{name}/{version}", vault=vault, **kw)

    def delete_secret(self, name, vault="default"):
        return self.request("DELETE", f"/secrets/{name}", vault=vault)

    def purge_when_deleted(self, kind, name, vault="default", timeout=20.0):
        """Purges a soft-deleted object, waiting through 409 ObjectIsBeingDeleted (fact 18).
        Returns the statuses seen."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            r = self.request("DELETE", f"/deleted{kind}/{name}", vault=vault)
            seen.append(r.status)
            if r.status != 409 or time.monotonic() > deadline:
                return r, seen
            time.sleep(0.2)

    def list_all(self, path, vault="default", params=None, max_pages=400):
        """Every item of a paged list, following nextLink; returns (items, pages)."""
        items, pages = [], []
        r = self.request("GET", path, vault=vault, params=params)
        while True:
            body = r.expect(200)
            pages.append(body)
            items.extend(body.get("value") or [])
            link = body.get("nextLink")
            if not link or len(pages) >= max_pages:
                return items, pages
            r = self.request("GET", "", url=with_api_version(link), api_version=None)


    def cleanup(self, vaults=("default", "team-a", "team-b")):
        """Deletes and purges what the suite made (names starting with PREFIX), so the shared
        vaults do not grow run after run. Best effort, unvalidated."""
        for vault in vaults:
            for kind in ("certificates", "keys", "secrets"):
                try:
                    items, _ = self.list_all(f"/{kind}", vault=vault)
                except (AssertionError, pytest.fail.Exception):
                    continue
                for item in items:
                    object_id = item.get("id") or item.get("kid") or ""
                    name = urllib.parse.urlsplit(object_id).path.strip("/").split("/")[-1]
                    if name.lower().startswith(PREFIX) and not item.get("managed"):
                        self.request("DELETE", f"/{kind}/{name}", vault=vault, validate=False)
                        self.request("DELETE", f"/deleted{kind}/{name}", vault=vault, validate=False)


class TokenEndpoint:
    """The local Entra ID token endpoint (AZURE_AUTHORITY_HOST)."""

    def __init__(self, env):
        self.env = env
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.verify = env.ca_file

    def token(self, client_id=None, client_secret=None, scope="https://vault.azure.net/.default"):
        url = f"{self.env.authority}/{self.env.tenant}/oauth2/v2.0/token"
        form = {
            "grant_type": "client_credentials",
            "client_id": client_id or self.env.client_id,
            "client_secret": client_secret or self.env.client_secret,
            "scope": scope,
        }
        try:
            r = self.session.post(url, data=form, timeout=30)
        except requests.exceptions.ConnectionError as e:
            fail(f"the local token endpoint {url} is unreachable ({e}); {HINT}")
        assert r.status_code == 200, f"token endpoint refused {client_id}: {r.status_code} {r.text}"
        body = r.json()
        assert body.get("token_type") == "Bearer", body
        return body["access_token"]
