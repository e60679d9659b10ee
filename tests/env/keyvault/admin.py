#!/usr/bin/env python3
"""Edits the local Key Vault's JSON files for tests/env/keyvault.sh (which holds the lock).

  seed             (re)adds the environment's clients and grants, keeping what tests added
  grant VAULT IDENTITY [all | KIND=PERM[,PERM...]...]
  revoke VAULT IDENTITY
  register-client CLIENT_ID [--secret S] [--federated SUBJECT]... [--issuer I] [--audience A]
                  [--tenant T]
  throttle VAULT REQUESTS [SECONDS] | throttle VAULT off

Files: clients (token-endpoint.py format), grants (auth.Grants format), settings (server.py).
Every write goes to a temporary file renamed over the old one, so readers never see half a file.
"""

import argparse
import json
import os
import sys

from auth import PERMISSIONS

CLIENTS_FORMAT = ("client_id -> {tenant, secret?, federated?: {issuer?, subject, audience?} or a "
                  "list of them}; see tests/env/token-endpoint.py")
GRANTS_FORMAT = ("vault or '*' -> client id (token appid) -> 'all' or {secrets|keys|certificates: "
                 "'all' or [permissions]}; see tests/env/keyvault/auth.py")


def load(path):
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        sys.exit(f"{path} does not hold a JSON object")
    return data


def save(path, data):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def parse_permissions(specs):
    """["all"] or ["secrets=get,list", "keys=all", ...] -> "all" or {kind: [perms] | "all"}."""
    if specs == ["all"]:
        return "all"
    out = {}
    for spec in specs:
        kind, sep, perms = spec.partition("=")
        if not sep or kind not in PERMISSIONS:
            sys.exit(f"grant: '{spec}' is not KIND=PERM[,PERM...] with KIND one of "
                     f"{', '.join(PERMISSIONS)} (or the single word all)")
        names = [p.strip() for p in perms.split(",") if p.strip()]
        if names == ["all"]:
            out[kind] = "all"
            continue
        unknown = [p for p in names if p.lower() not in PERMISSIONS[kind]]
        if unknown or not names:
            sys.exit(f"grant: unknown {kind} permission(s) {', '.join(unknown) or '(none)'}; "
                     f"known: {', '.join(PERMISSIONS[kind])}, all")
        out[kind] = [p.lower() for p in names]
    if not out:
        sys.exit("grant: name the permissions, e.g. secrets=get,list (or all)")
    return out


def cmd_grant(a):
    grants = load(a.grants)
    grants.setdefault("_format", GRANTS_FORMAT)
    perms = parse_permissions(a.permissions)
    entry = grants.setdefault(a.vault, {})
    current = entry.get(a.identity)
    if perms != "all" and isinstance(current, dict):
        current.update(perms)  # the kinds named replace; the others stay
    else:
        entry[a.identity] = perms
    save(a.grants, grants)


def cmd_revoke(a):
    grants = load(a.grants)
    if isinstance(grants.get(a.vault), dict):
        grants[a.vault].pop(a.identity, None)
    save(a.grants, grants)


def cmd_register(a):
    clients = load(a.clients)
    clients.setdefault("_format", CLIENTS_FORMAT)
    reg = {"tenant": a.tenant or a.default_tenant}
    if a.secret:
        reg["secret"] = a.secret
    if a.federated:
        records = []
        for subject in a.federated:
            rec = {"subject": subject}
            if a.issuer:
                rec["issuer"] = a.issuer
            if a.audience:
                rec["audience"] = a.audience
            records.append(rec)
        reg["federated"] = records
    if "secret" not in reg and "federated" not in reg:
        sys.exit("register-client: give --secret and/or --federated SUBJECT")
    clients[a.client_id] = reg
    save(a.clients, clients)


def cmd_throttle(a):
    settings = load(a.settings)
    limits = settings.setdefault("rateLimits", {})
    if a.requests == "off":
        limits.pop(a.vault, None)
    else:
        try:
            requests, seconds = int(a.requests), float(a.seconds)
        except ValueError:
            sys.exit("throttle: REQUESTS and SECONDS must be numbers")
        if requests < 1 or seconds <= 0:
            sys.exit("throttle: REQUESTS must be >= 1 and SECONDS > 0")
        limits[a.vault] = {"requests": requests, "seconds": seconds}
    save(a.settings, settings)


def cmd_seed(a):
    clients = load(a.clients)
    clients["_format"] = CLIENTS_FORMAT
    clients[a.client] = {"tenant": a.tenant, "secret": a.secret}
    clients[a.reader] = {"tenant": a.tenant, "federated": [{"subject": a.reader_subject}]}
    save(a.clients, clients)
    grants = load(a.grants)
    grants["_format"] = GRANTS_FORMAT
    every = grants.setdefault("*", {})
    every[a.admin] = "all"
    every[a.client] = "all"
    grants.setdefault("default", {})[a.reader] = {
        "secrets": ["get", "list"], "keys": ["get", "list"], "certificates": ["get", "list"]}
    save(a.grants, grants)
    if not os.path.exists(a.settings):
        save(a.settings, {"_format": "see tests/env/keyvault/server.py", "rateLimits": {},
                          "retryAfter": False, "deleteDelaySeconds": 0})


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", required=True)
    ap.add_argument("--grants", required=True)
    ap.add_argument("--settings", required=True)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("seed")
    for opt in ("--tenant", "--client", "--secret", "--admin", "--reader", "--reader-subject"):
        p.add_argument(opt, required=True)
    for name in ("grant", "revoke", "register-client", "throttle"):
        p = sub.add_parser(name)
        p.add_argument("--default-tenant", required=True)
        if name == "grant":
            p.add_argument("vault")
            p.add_argument("identity")
            p.add_argument("permissions", nargs="+")
        elif name == "revoke":
            p.add_argument("vault")
            p.add_argument("identity")
        elif name == "register-client":
            p.add_argument("client_id")
            p.add_argument("--secret")
            p.add_argument("--federated", action="append", default=[], metavar="SUBJECT")
            p.add_argument("--issuer")
            p.add_argument("--audience")
            p.add_argument("--tenant")
        else:
            p.add_argument("vault")
            p.add_argument("requests")
            p.add_argument("seconds", nargs="?", default="10")
    a = ap.parse_args()
    {"seed": cmd_seed, "grant": cmd_grant, "revoke": cmd_revoke,
     "register-client": cmd_register, "throttle": cmd_throttle}[a.cmd](a)


if __name__ == "__main__":
    main()
