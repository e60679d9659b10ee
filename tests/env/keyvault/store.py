"""In-memory state of the local Key Vault: vaults, versioned objects, soft delete, paging.

Everything lives in memory: a restart of the server empties every vault (documented in
README.md). One lock per vault serialises the operations on it.
"""

import base64
import json
import threading
import time

from common import (FWLINK_NOT_FOUND as FWLINK, RECOVERABLE_DAYS, RECOVERY_LEVEL, KvError,
                    bad_parameter, now)

KINDS = ("secrets", "keys", "certificates")
# Singular, capitalised names as they appear in the service's messages (observed: "Secret is
# currently being deleted.", "Key is currently being deleted.").
NOUN = {"secrets": "Secret", "keys": "Key", "certificates": "Certificate"}
NOT_FOUND_CODE = {"secrets": "SecretNotFound", "keys": "KeyNotFound",
                  "certificates": "CertificateNotFound"}


class Version:
    """One version of a secret, key or certificate."""

    def __init__(self, version, attrs, tags, content_type=None, data=None, created=None):
        t = created if created is not None else now()
        self.version = version
        self.enabled = attrs.get("enabled", True)
        self.nbf = attrs.get("nbf")
        self.exp = attrs.get("exp")
        self.created = t
        self.updated = t
        self.tags = tags
        self.content_type = content_type
        self.data = data or {}  # kind-specific payload

    def attributes(self, extra=None):
        out = {"enabled": self.enabled}
        if self.nbf is not None:
            out["nbf"] = self.nbf
        if self.exp is not None:
            out["exp"] = self.exp
        out["created"] = self.created
        out["updated"] = self.updated
        if extra:
            out.update(extra)
        out["recoveryLevel"] = RECOVERY_LEVEL
        out["recoverableDays"] = RECOVERABLE_DAYS
        return out

    def update(self, attrs, tags=None, content_type=None, set_content_type=False):
        if "enabled" in attrs:
            self.enabled = attrs["enabled"]
        if "nbf" in attrs:
            self.nbf = attrs["nbf"]
        if "exp" in attrs:
            self.exp = attrs["exp"]
        if tags is not None:
            self.tags = tags
        if set_content_type:
            self.content_type = content_type
        self.updated = now()


class Obj:
    """A named object with its versions, oldest first; `name` keeps the first spelling."""

    def __init__(self, name):
        self.name = name
        self.versions = []
        self.managed = False  # backs a certificate (fact 19)

    def latest(self):
        return self.versions[-1]

    def find(self, version):
        version = version.lower()
        for v in self.versions:
            if v.version == version:
                return v
        return None


class Deleted:
    def __init__(self, obj, delete_delay):
        self.obj = obj
        self.deleted_date = now()
        self.scheduled_purge_date = self.deleted_date + RECOVERABLE_DAYS * 86400
        # Fact 18: deletion completes asynchronously on the real service. With a delay of 0
        # (the default) it is complete at once; a settings file can make it take a while.
        self.ready_at = time.monotonic() + delete_delay

    def ready(self):
        return time.monotonic() >= self.ready_at


class Collection:
    """All objects of one kind in one vault: live ones and soft-deleted ones."""

    def __init__(self, kind):
        self.kind = kind
        self.live = {}     # lower-case name -> Obj (names are case-insensitive, fact 14)
        self.deleted = {}  # lower-case name -> Deleted

    def get(self, name):
        return self.live.get(name.lower())

    def not_found(self, name, version=None):
        if self.kind == "secrets":
            ident = f"{name}/{version}" if version else name
            # Fact 7 (observed wording).
            return KvError(404, "SecretNotFound",
                           f"A secret with (name/id) {ident} was not found in this key vault. If "
                           "you recently deleted this secret you may be able to recover it using "
                           "the correct recovery command. For help resolving this issue, please "
                           f"see {FWLINK}")
        noun = NOUN[self.kind].lower()
        ident = f"{name}/{version}" if version else name
        # Best reading, modelled on the secret wording.
        return KvError(404, NOT_FOUND_CODE[self.kind],
                       f"A {noun} with (name/id) {ident} was not found in this key vault. If you "
                       f"recently deleted this {noun} you may be able to recover it using the "
                       f"correct recovery command. For help resolving this issue, please see {FWLINK}")

    def lookup(self, name, version=None):
        """The named object and the wanted version (latest for None/empty), or 404."""
        obj = self.get(name)
        if obj is None:
            raise self.not_found(name)
        if not version:
            return obj, obj.latest()
        v = obj.find(version)
        if v is None:
            raise self.not_found(name, version)
        return obj, v

    def add_version(self, name, version_obj, managed=False):
        """Adds a new version, creating the object; refuses names in the deleted state."""
        key = name.lower()
        gone = self.deleted.get(key)
        if gone is not None:
            noun = NOUN[self.kind]
            if not gone.ready():
                raise KvError(409, "Conflict", f"{noun} is currently being deleted.",
                              "ObjectIsBeingDeleted")
            # Best reading of the real conflict for a name that is soft-deleted.
            raise KvError(409, "Conflict",
                          f"{noun} {gone.obj.name} is currently in a deleted but recoverable "
                          f"state, and its name cannot be reused; in this state, the "
                          f"{noun.lower()} can only be recovered or purged.",
                          "ObjectIsDeletedButRecoverable")
        obj = self.live.get(key)
        if obj is None:
            obj = self.live[key] = Obj(name)
        obj.managed = managed
        obj.versions.append(version_obj)
        return obj

    def delete(self, name, delete_delay):
        obj = self.get(name)
        if obj is None:
            raise self.not_found(name)
        del self.live[name.lower()]
        entry = self.deleted[name.lower()] = Deleted(obj, delete_delay)
        return entry

    def get_deleted(self, name):
        entry = self.deleted.get(name.lower())
        if entry is None or not entry.ready():
            # Observed: "Deleted Secret not found: {name}" (also while the delete is in progress).
            raise KvError(404, NOT_FOUND_CODE[self.kind], f"Deleted {NOUN[self.kind]} not found: {name}")
        return entry

    def purge(self, name):
        entry = self.deleted.get(name.lower())
        if entry is None:
            raise KvError(404, NOT_FOUND_CODE[self.kind], f"Deleted {NOUN[self.kind]} not found: {name}")
        if not entry.ready():
            # Fact 18 / observed 409.
            raise KvError(409, "Conflict", f"{NOUN[self.kind]} is currently being deleted.",
                          "ObjectIsBeingDeleted")
        del self.deleted[name.lower()]

    def recover(self, name):
        """Recovery is synchronous here (the real one completes asynchronously, fact 18)."""
        entry = self.get_deleted(name)
        del self.deleted[name.lower()]
        self.live[name.lower()] = entry.obj
        return entry.obj


class Vault:
    def __init__(self, name):
        self.name = name
        self.lock = threading.RLock()
        self.collections = {kind: Collection(kind) for kind in KINDS}
        # Certificate operations by lower-case certificate name (certificates_api.py).
        self.operations = {}

    def __getitem__(self, kind):
        return self.collections[kind]

    def base_url(self):
        # Fact 14: ids name the vault host without a port, as on the real service.
        return f"https://{self.name}.vault.azure.net"


class Store:
    def __init__(self, vault_names):
        self.vaults = {name: Vault(name) for name in vault_names}

    def vault(self, name):
        return self.vaults.get(name)


# --- paging (fact 17) -----------------------------------------------------------------------

def page(items, sort_key, query, make_next_link):
    """Slices `items` (already sorted by sort_key) by $skiptoken / maxresults.

    Returns (page_items, next_link or None). The skiptoken is an opaque encoding of the last
    returned item's sort key, so a page is stable even when objects are added meanwhile.
    """
    raw = query.get("maxresults")
    limit = 25
    if raw is not None:
        try:
            limit = int(raw)
        except ValueError:
            limit = 0
        if not 1 <= limit <= 25:
            # Best reading: the value is checked against the spec's 1..25 range.
            raise bad_parameter(f"Invalid value for maxresults: {raw}. It must be between 1 and 25.")
    token = query.get("$skiptoken")
    start = 0
    if token:
        try:
            after = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        except (ValueError, TypeError):
            raise bad_parameter("The $skiptoken is invalid.")
        after = tuple(after) if isinstance(after, list) else after
        while start < len(items) and _key(sort_key(items[start])) <= _key(after):
            start += 1
    chunk = items[start:start + limit]
    if start + limit >= len(items):
        return chunk, None
    last = sort_key(chunk[-1])
    token = base64.urlsafe_b64encode(json.dumps(last).encode()).rstrip(b"=").decode()
    return chunk, make_next_link(token, raw)


def _key(k):
    return tuple(k) if isinstance(k, (list, tuple)) else (k,)


# --- listing and deleted objects, shared by secrets_api, keys_api and certificates_api -------
# `item(vault, obj, v, versioned=False)` builds a *Item and `bundle(req, vault, obj, v)` a
# *Bundle of the kind; both are the API module's own.

def deleted_body(vault, kind, entry, body):
    """A Deleted*Bundle / Deleted*Item: recoveryId and the dates, then body(obj, latest)."""
    out = {"recoveryId": f"{vault.base_url()}/deleted{kind}/{entry.obj.name}",
           "deletedDate": entry.deleted_date, "scheduledPurgeDate": entry.scheduled_purge_date}
    out.update(body(entry.obj, entry.obj.latest()))
    return out


def _paged(req, items, sort_key, make_item):
    chunk, next_link = page(items, sort_key, req.query, req.next_link)
    return 200, {"value": [make_item(x) for x in chunk], "nextLink": next_link}


def list_live(req, vault, kind, item):
    """GET /{kind}: the latest version of every live object, by name."""
    objs = sorted(vault[kind].live.values(), key=lambda o: o.name.lower())
    return _paged(req, objs, lambda o: o.name.lower(), lambda o: item(vault, o, o.latest()))


def list_versions(req, vault, kind, name, item):
    """GET /{kind}/{name}/versions: every version, oldest first, with versioned ids."""
    obj = vault[kind].get(name)
    if obj is None:
        raise vault[kind].not_found(name)
    versions = sorted(obj.versions, key=lambda v: (v.created, v.version))
    return _paged(req, versions, lambda v: [v.created, v.version],
                  lambda v: item(vault, obj, v, True))


def list_deleted(req, vault, kind, item):
    """GET /deleted{kind}: the objects whose deletion is complete, by name."""
    entries = sorted((e for e in vault[kind].deleted.values() if e.ready()),
                     key=lambda e: e.obj.name.lower())
    return _paged(req, entries, lambda e: e.obj.name.lower(),
                  lambda e: deleted_body(vault, kind, e, lambda o, v: item(vault, o, v)))


def get_deleted(req, vault, kind, name, bundle):
    entry = vault[kind].get_deleted(name)
    return 200, deleted_body(vault, kind, entry, lambda o, v: bundle(req, vault, o, v))


def purge_deleted(req, vault, kind, name):
    vault[kind].purge(name)
    return 204, None


def recover_deleted(req, vault, kind, name, bundle):
    obj = vault[kind].recover(name)
    return 200, bundle(req, vault, obj, obj.latest())


def route_live(req, parts, kind, item, get, update, delete, update_permission="update",
               put=None, subroute=None, is_version=lambda sub: True):
    """Routes of /{kind}[/{name}[/{version}]] -> (permission, handler), or None.

    get / update (req, vault, name, version) and delete (req, vault, name) are the kind's;
    put is (permission, handler(req, vault, name)) for PUT /{kind}/{name}; subroute(name, sub,
    method) routes the kind's own /{kind}/{name}/{sub} first; is_version(sub) says whether
    GET/PATCH /{kind}/{name}/{sub} address a version."""
    m = req.command
    if len(parts) == 1 and m == "GET":
        return "list", lambda r, vt: list_live(r, vt, kind, item)
    if len(parts) == 2 or (len(parts) == 3 and parts[2] == ""):
        name = parts[1]
        if put is not None and m == "PUT" and len(parts) == 2:
            return put[0], lambda r, vt: put[1](r, vt, name)
        if m == "GET":
            return "get", lambda r, vt: get(r, vt, name, "")
        if m == "PATCH":
            return update_permission, lambda r, vt: update(r, vt, name, "")
        if m == "DELETE" and len(parts) == 2:
            return "delete", lambda r, vt: delete(r, vt, name)
    if len(parts) == 3:
        name, sub = parts[1], parts[2]
        found = subroute(name, sub, m) if subroute is not None else None
        if found is not None:
            return found
        if sub == "versions" and m == "GET":
            return "list", lambda r, vt: list_versions(r, vt, kind, name, item)
        if is_version(sub) and m == "GET":
            return "get", lambda r, vt: get(r, vt, name, sub)
        if is_version(sub) and m == "PATCH":
            return update_permission, lambda r, vt: update(r, vt, name, sub)
    return None


def route_deleted(req, parts, kind, item, bundle, purge=None, recover=None):
    """Routes of /deleted{kind}[/{name}[/recover]] -> (permission, handler), or None.

    purge / recover (req, vault, name) replace the plain ones (certificates cascade)."""
    purge = purge or (lambda r, vt, name: purge_deleted(r, vt, kind, name))
    recover = recover or (lambda r, vt, name: recover_deleted(r, vt, kind, name, bundle))
    m = req.command
    if len(parts) == 1 and m == "GET":
        return "list", lambda r, vt: list_deleted(r, vt, kind, item)
    if len(parts) == 2:
        name = parts[1]
        if m == "GET":
            return "get", lambda r, vt: get_deleted(r, vt, kind, name, bundle)
        if m == "DELETE":
            return "purge", lambda r, vt: purge(r, vt, name)
    if len(parts) == 3 and parts[2] == "recover" and m == "POST":
        name = parts[1]
        return "recover", lambda r, vt: recover(r, vt, name)
    return None
