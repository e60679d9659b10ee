"""Replays the real service's recorded interactions (reference/recordings/) against the local
vault and compares: the same status, the challenge header on the 401, and the same body shape
(same JSON keys recursively, same value types; ids, versions, timestamps and values differ).

How a recording is replayed:
- the vault host becomes the local `default` vault; object names get a fresh unique name each
  run (soft-deleted names would otherwise collide); the recorded api-version is kept;
- the first request goes WITHOUT Authorization and, like the Rust SDK, with no body (fact 2);
  the others carry the admin token and the recorded body;
- values the service made (versions in later URIs, the wrapped key of the unwrap request) are
  carried over from the local responses, as a client would;
- consecutive identical requests form one step. Where the real service answered a transient
  status first because of its asynchronous work (409 ObjectIsBeingDeleted on a purge, 404 while
  a delete or a recover completes), the local vault may answer the transient status or go
  straight to the final one: the final outcome is asserted and the choice printed in the notes;
- lists: the local vault holds other objects too, so the replayed object is looked up through
  the pages, its item compared with the recorded item, and `nextLink` may be null or a link;
- certificate creation (202, pending operation): polled until completed, as a client does.
"""

import json
import os
import time
import urllib.parse

import pytest

from kv import note, CHALLENGE, UNAUTHORIZED_MESSAGES, unique, with_api_version
from kvschema import REFERENCE, SPEC
from shape import shape_diff

RECORDINGS = [
    "rust/azure_security_keyvault_secrets.readme.json",
    "rust/azure_security_keyvault_keys.readme.json",
    "python/test_samples_secrets.pyTestExamplesKeyVaulttest_example_secrets_recover[2025-07-01].json",
    "dotnet/ImportCertificateWithPreserveCertificateOrder(True).json",
    "dotnet/DownloadLatestCertificate(application-x-pem-file).json",
    "dotnet/DownloadLatestCertificate(application-x-pkcs12).json",
]
KINDS = {"secrets", "keys", "certificates", "deletedsecrets", "deletedkeys", "deletedcertificates"}
LISTS = {"GetSecrets", "GetKeys", "GetCertificates", "GetDeletedSecrets", "GetDeletedKeys",
         "GetDeletedCertificates", "GetSecretVersions", "GetKeyVersions", "GetCertificateVersions"}
WAIT = 30.0
# A preview api-version of 2024 that the local vault (emulating 2025-07-01) does not know; the
# recording is replayed at 2025-07-01 instead (whether the real service still accepts
# 7.6-preview.1 today is not recorded).
REPLAY_API_VERSION = {"7.6-preview.1": "2025-07-01"}


class Replay:
    def __init__(self, kv, label):
        self.kv = kv
        self.label = label
        self.names = {}
        self.values = {}
        self.imported_instead = False  # certificate create not implemented: imported instead

    def name(self, recorded):
        if recorded not in self.names:
            self.names[recorded] = unique("rp")
        return self.names[recorded]

    def path(self, uri):
        u = urllib.parse.urlsplit(uri)
        segs = u.path.split("/")
        for i, s in enumerate(segs):
            if i == 2 and segs[1] in KINDS and s not in ("contacts", "issuers", "restore"):
                segs[i] = self.name(s)
            elif s in self.values:
                segs[i] = self.values[s]
        params = dict(urllib.parse.parse_qsl(u.query, keep_blank_values=True))
        return "/".join(segs), params

    def body(self, value):
        if isinstance(value, dict):
            return {k: self.body(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.body(v) for v in value]
        if isinstance(value, str):
            return self.values.get(value, value)
        return value

    def learn(self, recorded, local):
        if isinstance(recorded, dict) and isinstance(local, dict):
            for k in set(recorded) & set(local):
                self.learn(recorded[k], local[k])
        elif isinstance(recorded, list) and isinstance(local, list):
            for r, l in zip(recorded, local):
                self.learn(r, l)
        elif isinstance(recorded, str) and isinstance(local, str) and recorded != local:
            if recorded.startswith("https://") and local.startswith("https://"):
                rs = urllib.parse.urlsplit(recorded).path.split("/")
                ls = urllib.parse.urlsplit(local).path.split("/")
                if len(rs) == len(ls):
                    for r, l in zip(rs, ls):
                        if r != l and len(r) >= 8:
                            self.values.setdefault(r, l)
            elif len(recorded) >= 4:
                self.values.setdefault(recorded, local)


def steps_of(entries):
    steps = []
    for e in entries:
        key = (e["RequestMethod"], e["RequestUri"], json.dumps(e.get("RequestBody"), sort_keys=True))
        if steps and steps[-1][0] == key:
            steps[-1][1].append(e)
        else:
            steps.append((key, [e]))
    return [s for _, s in steps]


def assert_shape(recorded, local, what):
    diffs = shape_diff(recorded, local, nullable=("nextLink",))
    assert not diffs, f"{what}: body shape differs from the recording:\n  " + "\n  ".join(diffs[:20]) + (
        f"\nlocal body: {json.dumps(local)[:1500]}"
    )


def find_in_list(rp, first, recorded_item, what):
    """Follows the pages of a list until the item of the replayed object; returns it."""
    rec_id = recorded_item["id"] if "id" in recorded_item else recorded_item.get("kid")
    rec_name = urllib.parse.urlsplit(rec_id).path.strip("/").split("/")[1]
    want = rp.name(rec_name)
    r = first
    for _ in range(400):
        for item in r.body.get("value") or []:
            item_id = item.get("id") or item.get("kid") or ""
            if urllib.parse.urlsplit(item_id).path.strip("/").split("/")[1:2] == [want]:
                return item
        link = r.body.get("nextLink")
        if not link:
            break
        r = rp.kv.request("GET", "", url=with_api_version(link, urllib.parse.parse_qs(
            urllib.parse.urlsplit(first.url).query)["api-version"][0]), api_version=None)
        assert r.status == 200, f"{what}: next page: {r!r}"
    raise AssertionError(f"{what}: {want} not found in any page of the list")


def run_step(rp, index, step, what):
    first = step[0]
    method = first["RequestMethod"]
    path, params = rp.path(first["RequestUri"])
    api_version = params.pop("api-version", None)
    api_version = REPLAY_API_VERSION.get(api_version, api_version)
    op = SPEC.operation(method, path)
    if rp.imported_instead and op.operation_id == "GetCertificateOperation":
        return
    final = step[-1]
    by_status = {}
    for e in step:
        by_status.setdefault(e["StatusCode"], e)

    if index == 0:
        assert final["StatusCode"] == 401, f"{what}: the recording starts with the challenge"
        r = rp.kv.request(method, path, token=None, data=b"", params=params, api_version=api_version)
        assert r.status == 401, f"{what}: the first request (no token, no body) got {r!r}"
        header = r.headers.get("WWW-Authenticate", "")
        assert CHALLENGE.match(header), f"{what}: challenge header {header!r} (fact 1)"
        assert r.error()["message"] in UNAUTHORIZED_MESSAGES, r
        assert_shape(final["ResponseBody"], r.body, what)
        return

    body = first.get("RequestBody")
    kwargs = {} if body is None else {"json_body": rp.body(body)}
    seen = []
    deadline = time.monotonic() + WAIT
    while True:
        r = rp.kv.request(method, path, params=params, api_version=api_version, **kwargs)
        seen.append(r.status)
        if op.operation_id == "CreateCertificate" and r.status != 202:
            create_not_implemented(rp, r, path, body, api_version, what)
            return
        if op.operation_id == "GetCertificateOperation" and r.status == 200:
            status = r.body.get("status")
            assert status in ("inProgress", "completed"), f"{what}: operation status {status!r}"
            if status == "inProgress":
                assert_shape(final["ResponseBody"], r.body, what)
                assert time.monotonic() < deadline, f"{what}: still inProgress after {WAIT}s"
                time.sleep(0.5)
                continue
            assert r.body.get("target") or r.body.get("error") is None, r
            note(f"{rp.label}: the pending certificate operation answered {seen} polls, then "
                 f"'completed' (recorded: inProgress x{len(step)})")
            return
        if r.status == final["StatusCode"]:
            break
        assert r.status in by_status, (
            f"{what}: got {r.status}, the real service answered {[e['StatusCode'] for e in step]}: {r!r}"
        )
        assert_shape(by_status[r.status]["ResponseBody"], r.body, f"{what} (transient {r.status})")
        assert time.monotonic() < deadline, f"{what}: still {r.status} after {WAIT}s"
        time.sleep(0.2)
    if len(step) > 1 or len(by_status) > 1:
        note(f"{rp.label}: {method} {first['RequestUri'].split('.net', 1)[1].split('?')[0]} answered "
             f"{seen} (recorded {[e['StatusCode'] for e in step]})")

    recorded = final["ResponseBody"]
    if op.operation_id in LISTS and recorded:
        assert set(r.body) == set(recorded), f"{what}: list keys {sorted(r.body)} vs {sorted(recorded)}"
        for rec_item in recorded.get("value") or []:
            item = find_in_list(rp, r, rec_item, what)
            assert_shape(rec_item, item, f"{what} (item)")
        return
    if op.operation_id == "CreateCertificate":
        location = r.headers.get("Location", "")
        loc = urllib.parse.urlsplit(location)
        assert loc.hostname == rp.kv.env.vault_host() and loc.path == path.replace("/create", "/pending"), (
            f"{what}: Location {location!r} (fact 24)"
        )
        if r.body.get("status") != "inProgress":
            note(f"{rp.label}: CreateCertificate answered 202 with status {r.body.get('status')!r} "
                 f"(recorded inProgress)")
            return
    if rp.imported_instead and op.operation_id == "GetCertificate":
        rp.learn(recorded, r.body)  # its version, for the secret's URI
        return  # an imported certificate's bundle differs from a created one's (no `pending`)
    if recorded is None:
        assert not r.raw.content, f"{what}: the recording has no body: {r!r}"
        return
    assert_shape(recorded, r.body, what)
    rp.learn(recorded, r.body)


def create_not_implemented(rp, r, path, body, api_version, what):
    """The brief allows the local vault not to implement CreateCertificate (202 + pending
    operation, as recorded), if it says so clearly: a 4xx or 501 KeyVaultError, not a crash.
    The rest of the recording (GetCertificate, then the certificate's secret in the policy's
    content type) is then replayed on an imported certificate of that name."""
    import base64

    import pki

    assert 400 <= r.status < 500 or r.status == 501, f"{what}: not a clear refusal: {r!r}"
    err = r.error()
    assert err["message"], r
    note(f"{rp.label}: CreateCertificate is not implemented by the local vault: {r.status} "
         f"{err['code']}: {err['message']} (real service: 202 + pending operation)")
    content_type = body["policy"]["secret_props"]["contentType"]
    chain = pki.Chain(unique("rp"))
    value = chain.pem_bundle() if content_type == "application/x-pem-file" else base64.b64encode(chain.pfx()).decode()
    imp = rp.kv.request(
        "POST", path.replace("/create", "/import"), api_version=api_version,
        json_body={"value": value, "policy": {"secret_props": {"contentType": content_type}}},
    )
    assert imp.status == 200, f"{what}: importing instead: {imp!r}"
    rp.imported_instead = True


@pytest.mark.parametrize("recording", RECORDINGS, ids=lambda p: os.path.basename(p)[:60])
def test_replay_recording(kv, recording):
    with open(REFERENCE / "recordings" / recording, encoding="utf-8-sig") as f:
        entries = json.load(f)["Entries"]
    rp = Replay(kv, os.path.basename(recording))
    for i, step in enumerate(steps_of(entries)):
        e = step[0]
        what = f"{rp.label} step {i} ({e['RequestMethod']} {e['RequestUri'].split('.net', 1)[1]})"
        run_step(rp, i, step, what)
