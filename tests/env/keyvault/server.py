#!/usr/bin/env python3
"""The project's local Azure Key Vault: a test double of the data plane, HTTPS on loopback.

One process serves several vaults, chosen by the Host header: `<vault>.vault.azure.net[:port]`
for each --vault (the environment's /etc/hosts block makes those names resolve to 127.0.0.1, so
the SDKs' challenge-resource check, fact 4, stays on). Any other Host (e.g. 127.0.0.1) only
answers GET /healthz; a request for a vault name that is not served gets 404 VaultNotFound (best
reading: the real service has no such answer, an unknown vault simply does not resolve in DNS).

Per request, in the order the real service shows (facts 1, 2, 6, 16, 24):
  1. vault from the Host header; throttling per vault (fact 11: 429 Throttled, 429s don't count);
  2. authentication: no bearer token -> 401 + challenge, before the body is looked at; the JWT is
     verified (auth.py);
  3. api-version: missing or not one of common.SUPPORTED_API_VERSIONS -> 400 BadParameter;
  4. route -> required permission -> access policy check (403 AccessDenied, fact 10);
  5. the operation (secrets_api.py, keys_api.py, certificates_api.py) on the in-memory store.
Every response carries the fact-24 headers; x-ms-client-request-id is echoed. The log has one
line per request: client, method, vault, path, status, identity, request id; never values,
tokens or certificates.

State is in memory only: restarting the server empties every vault.

Settings file (--settings, JSON, re-read when it changes; `keyvault.sh throttle` edits it):
  {"rateLimits": {"<vault>|*": {"requests": 4000, "seconds": 10}},
   "retryAfter": false,          # send Retry-After on 429 (the real service apparently does not)
   "deleteDelaySeconds": 0}      # > 0 emulates the asynchronous soft delete (fact 18)
"""

import argparse
import collections
import datetime
import http.server
import json
import os
import re
import ssl
import sys
import threading
import time
import urllib.parse
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import certificates_api  # noqa: E402
import keys_api  # noqa: E402
import secrets_api  # noqa: E402
from auth import Authenticator, Grants  # noqa: E402
from common import (LATEST_API_VERSION, SUPPORTED_API_VERSIONS, KvError,  # noqa: E402
                    bad_parameter, file_stamp)
from store import Store  # noqa: E402

HOST_RE = re.compile(r"^([a-z0-9-]{1,63})\.vault\.azure\.net$")
MAX_BODY = 8 << 20
DEFAULT_RATE = (4000, 10.0)  # fact 12: 4,000 transactions per vault per 10 s
_log_lock = threading.Lock()


def log(msg):
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    with _log_lock:
        sys.stderr.write(f"{stamp} {msg}\n")
        sys.stderr.flush()


class Settings:
    """Rate limits and behaviour switches, re-read from --settings when the file changes."""

    def __init__(self, path, cli_limits, retry_after):
        self.path = path
        self.cli_limits = cli_limits
        self.cli_retry_after = retry_after
        self.stamp = None
        self.data = {}
        self.lock = threading.Lock()

    def _load(self):
        if not self.path:
            return self.data
        stamp = file_stamp(self.path)
        with self.lock:
            if stamp != self.stamp:
                try:
                    data = {}
                    if stamp is not None:
                        with open(self.path, encoding="utf-8") as f:
                            data = json.load(f)
                    self.data = data if isinstance(data, dict) else {}
                except (OSError, ValueError) as e:
                    log(f"settings file {self.path} unreadable, keeping the previous one: {e}")
                self.stamp = stamp
            return self.data

    def rate(self, vault):
        limits = self._load().get("rateLimits") or {}
        for key in (vault, "*"):
            entry = limits.get(key)
            if isinstance(entry, dict) and entry.get("requests"):
                return int(entry["requests"]), float(entry.get("seconds", 10))
        return self.cli_limits.get(vault) or self.cli_limits.get("*") or DEFAULT_RATE

    @property
    def retry_after(self):
        return bool(self._load().get("retryAfter", self.cli_retry_after))

    @property
    def delete_delay(self):
        return float(self._load().get("deleteDelaySeconds", 0) or 0)


class Throttle:
    """A sliding window per vault; throttled requests are not counted (fact 11)."""

    def __init__(self, settings):
        self.settings = settings
        self.lock = threading.Lock()
        self.windows = collections.defaultdict(collections.deque)

    def admit(self, vault):
        """Returns None when admitted, else the seconds until a slot frees up."""
        limit, seconds = self.settings.rate(vault)
        t = time.monotonic()
        with self.lock:
            window = self.windows[vault]
            while window and window[0] <= t - seconds:
                window.popleft()
            if len(window) >= limit:
                return max(0.0, window[0] + seconds - t)
            window.append(t)
            return None


class Request:
    """What the operations see of a request."""

    def __init__(self, handler, vault, query, api_version, raw_body, settings):
        self.command = handler.command
        self.query = query
        self.api_version = api_version
        self.settings = settings
        self._raw = raw_body
        self._path = urllib.parse.urlsplit(handler.path).path
        self.vault = vault
        # The vault host and port as the client named them in its Host header (the port is
        # absent for 443 from most clients). Links the vault hands out are built from these,
        # not from the port the server listens on, so they work through a port forward too.
        host = (handler.headers.get("Host") or "").strip().lower()
        name, sep, port = host.rpartition(":")
        if sep and port.isdigit():
            host = name
        else:
            port = None
        self.host, self.port = host, port

    def origin(self):
        """https://{host}[:{port}] as the client reached the vault; no port for 443."""
        port = f":{self.port}" if self.port and self.port != "443" else ""
        return f"https://{self.host}{port}"

    def json(self):
        if not self._raw:
            return None
        try:
            return json.loads(self._raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            # Best reading; the real wording for malformed JSON was not found.
            raise bad_parameter("The request body is not valid JSON.")

    def next_link(self, token, maxresults):
        # Fact 17: an absolute nextLink naming the port, `https://{vault}.vault.azure.net:443/...`
        # on 443 as the real one does; built from the Host header, so a client that reached the
        # vault on another port (its Host header names it) gets a link to that port.
        q = {"api-version": self.api_version, "$skiptoken": token}
        if maxresults is not None:
            q["maxresults"] = maxresults
        return (f"https://{self.host}:{self.port or '443'}{self._path}?"
                + urllib.parse.urlencode(q, safe="$"))


ROUTERS = {"secrets": secrets_api.route, "keys": keys_api.route,
           "certificates": certificates_api.route}
KIND_OF_ROOT = {"secrets": "secrets", "deletedsecrets": "secrets", "keys": "keys",
                "deletedkeys": "keys", "certificates": "certificates",
                "deletedcertificates": "certificates"}


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "vaultsync-local-keyvault/1"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # replaced by one line per request in handle_any
        pass

    def send_response(self, code, message=None):
        # Like the base class, but without a Server header (the service sends none, fact 24).
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def common_headers(self, request_id):
        # Fact 24 / observed common_response_headers.
        h = {"Cache-Control": "no-cache", "Pragma": "no-cache", "Expires": "-1",
             "Strict-Transport-Security": "max-age=31536000;includeSubDomains",
             "X-Content-Type-Options": "nosniff",
             "x-ms-keyvault-region": self.server.region,
             "x-ms-keyvault-service-version": self.server.service_version,
             "x-ms-keyvault-network-info":
                 f"conn_type=Ipv4;addr={self.client_address[0]};act_addr_fam=InterNetwork;",
             "x-ms-request-id": request_id}
        client_id = self.headers.get("x-ms-client-request-id")
        if client_id:
            h["x-ms-client-request-id"] = client_id
        return h

    def reply(self, status, payload, headers):
        body = b""
        if payload is not None:
            body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if status != 204:
            if payload is not None:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def read_body(self):
        if (self.headers.get("Transfer-Encoding") or "").lower() == "chunked":
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY:
                    raise KvError(413, "BadParameter", "The request body is too large.")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.close_connection = True
            raise KvError(413, "BadParameter", "The request body is too large.")
        return self.rfile.read(length) if length else b""

    def handle_any(self):
        request_id = str(uuid.uuid4())
        headers = self.common_headers(request_id)
        split = urllib.parse.urlsplit(self.path)
        host = (self.headers.get("Host") or "").split(":")[0].lower()
        vault_name, identity, status = "-", "-", 500
        try:
            try:
                raw = self.read_body()  # always consumed, so keep-alive stays in step
            except (ValueError, OSError):
                self.close_connection = True
                raise bad_parameter("The request body could not be read.")
            m = HOST_RE.match(host)
            if not m:
                if split.path in ("/healthz", "/health") and self.command in ("GET", "HEAD"):
                    status = 200
                    self.reply(200, {"status": "ok", "vaults": sorted(self.server.store.vaults)}, {})
                    return
                raise KvError(404, "NotFound", f"No vault is served for the host '{host}'; use "
                              f"https://<vault>.vault.azure.net:{self.server.server_address[1]}.")
            vault_name = m.group(1)
            vault = self.server.store.vault(vault_name)
            if vault is None:
                raise KvError(404, "VaultNotFound",
                              f"The vault '{vault_name}' does not exist in the local Key Vault "
                              f"(served: {', '.join(sorted(self.server.store.vaults))}).")
            wait = self.server.throttle.admit(vault_name)
            if wait is not None:
                extra = {"Retry-After": str(max(1, int(wait + 0.999)))} \
                    if self.server.settings.retry_after else {}
                # Fact 11 body.
                raise KvError(429, "Throttled", "Request was not processed because too many "
                              "requests were received. Reason: VaultRequestTypeLimitReached",
                              headers=extra)
            who = self.server.auth.authenticate(self.headers.get("Authorization"))
            identity = who.appid
            query = {k: v[0] for k, v in urllib.parse.parse_qs(split.query,
                                                               keep_blank_values=True).items()}
            api_version = query.get("api-version")
            if not api_version:
                # Fact 16: required, "there is no default"; the wording is a best reading.
                raise bad_parameter("The api-version query parameter (?api-version=) is required "
                                    "for all requests.")
            if api_version not in SUPPORTED_API_VERSIONS:
                raise bad_parameter(f"The specified version ({api_version}) is not recognized. "
                                    f"Consider using the latest supported version "
                                    f"({LATEST_API_VERSION}).")
            parts = split.path.strip("/").split("/") if split.path.strip("/") else []
            if split.path.endswith("/") and len(parts) == 2:
                parts.append("")  # "/secrets/{name}/" = latest version (fact 15)
            # "/keys/{name}//op" (empty version, fact 15) keeps the empty segment: the routers
            # read an empty version as the latest.
            kind = KIND_OF_ROOT.get(parts[0]) if parts else None
            found = ROUTERS[kind](self, parts) if kind else None
            if not found:
                raise KvError(404, "NotFound", f"The operation {self.command} {split.path} is not "
                              "supported by the local Key Vault.")
            permission, op = found
            self.server.grants.check(vault_name, self.server.region, who, kind, permission)
            req = Request(self, vault, query, api_version, raw, self.server.settings)
            with vault.lock:
                result = op(req, vault)  # (status, payload[, extra headers])
            status, payload = result[0], result[1]
            if len(result) > 2:
                headers.update(result[2])
            self.reply(status, payload, headers)
        except KvError as e:
            status = e.status
            headers.update(e.headers)
            self.reply(e.status, e.body(), headers)
        except Exception as e:  # a bug must not hang the client
            status = 500
            log(f"internal error: {type(e).__name__}: {e}")
            self.reply(500, {"error": {"code": "InternalServerError",
                                       "message": f"Internal error in the local Key Vault: "
                                                  f"{type(e).__name__}"}}, headers)
        finally:
            log(f"{self.client_address[0]} {self.command} vault={vault_name} {split.path} "
                f"{status} identity={identity} request-id={request_id}")

    do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = do_HEAD = handle_any


class TLSThreadingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def finish_request(self, request, client_address):
        # The TLS handshake runs in the connection's thread, not in the accept loop.
        request.settimeout(60)
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


def parse_rate(text):
    """VAULT=REQUESTS/SECONDS, e.g. bench=20/10."""
    vault, _, spec = text.partition("=")
    requests, _, seconds = spec.partition("/")
    try:
        return vault, (int(requests), float(seconds or 10))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rate-limit {text}: use VAULT=REQUESTS/SECONDS")


def main():
    ap = argparse.ArgumentParser(description="Local Azure Key Vault (see the module docstring).")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cert", required=True, help="PEM server certificate (chain)")
    ap.add_argument("--key", required=True, help="PEM server private key")
    ap.add_argument("--vault", action="append", required=True, help="a vault name (repeat)")
    ap.add_argument("--tenant", action="append", required=True,
                    help="accepted tenant id (repeat); the first is named in the challenge")
    ap.add_argument("--token-key", required=True,
                    help="PEM public (or private) RSA key of the token endpoint's signing key")
    ap.add_argument("--grants", required=True, help="JSON access policies, re-read when changed")
    ap.add_argument("--settings", default="", help="JSON settings file, re-read when changed")
    ap.add_argument("--rate-limit", action="append", type=parse_rate, default=[],
                    metavar="VAULT=REQUESTS/SECONDS", help="per-vault limit ('*' for all)")
    ap.add_argument("--retry-after", action="store_true", help="send Retry-After on 429")
    ap.add_argument("--region", default="local")
    ap.add_argument("--challenge-wording", choices=("2025", "2026"), default="2025")
    args = ap.parse_args()

    for name in args.vault:
        if not re.match(r"^[a-z0-9-]{3,24}$", name):  # fact 14: vault names of 3-24 characters
            ap.error(f"vault name {name!r}: use 3-24 lowercase letters, digits and '-'")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(args.cert, args.key)
    server = TLSThreadingServer((args.host, args.port), Handler)
    server.ssl_context = ctx
    server.store = Store(args.vault)
    server.auth = Authenticator(args.token_key, args.tenant, args.challenge_wording)
    server.grants = Grants(args.grants)
    server.settings = Settings(args.settings, dict(args.rate_limit), args.retry_after)
    server.throttle = Throttle(server.settings)
    server.region = args.region
    server.service_version = "1.9.0.0-local"
    log(f"local Key Vault listening on https://{args.host}:{args.port} for vaults "
        f"{', '.join(args.vault)} (tenants {', '.join(args.tenant)}, grants {args.grants})")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
