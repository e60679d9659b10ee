"""Secrets: every operation the operator's clients use, each response validated against the
OpenAPI 2025-07-01 schema (kv.KeyVault.request does it), and the behaviour facts of
reference/README.md that concern secrets (facts 7, 8, 9, 13, 14, 15, 17, 18)."""

import json
import time
import urllib.parse

import pytest

from kv import note, VERSION, unique

NOT_FOUND = (
    "A secret with (name/id) {name} was not found in this key vault. If you recently deleted "
    "this secret you may be able to recover it using the correct recovery command. For help "
    "resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"
)


def id_parts(kv, object_id, kind="secrets"):
    """(name, version) of an object id; checks its vault host (fact 14)."""
    u = urllib.parse.urlsplit(object_id)
    assert u.scheme == "https" and u.hostname == kv.env.vault_host(), (
        f"id {object_id} is not on the vault's host {kv.env.vault_host()}"
    )
    assert u.port in (None, kv.env.port), f"id {object_id}: port is neither absent nor {kv.env.port}"
    parts = u.path.strip("/").split("/")
    assert parts[0] == kind and len(parts) in (2, 3), f"id {object_id} is not /{kind}/name[/version]"
    return parts[1], (parts[2] if len(parts) == 3 else None)


def test_set_get_latest_and_by_version(kv):
    name = unique()
    b1 = kv.set_secret(name, "first", contentType="text/plain", tags={"t": "1"})
    n, v1 = id_parts(kv, b1["id"])
    assert n == name and VERSION.match(v1), f"version ids are 32 lowercase hex (fact 14): {b1['id']}"
    assert b1["value"] == "first" and b1["contentType"] == "text/plain" and b1["tags"] == {"t": "1"}
    a = b1["attributes"]
    assert a["enabled"] is True and isinstance(a["created"], int) and a["created"] == a["updated"]
    assert abs(a["created"] - time.time()) < 120, "created is unix seconds, now"
    b2 = kv.set_secret(name, "second")
    _, v2 = id_parts(kv, b2["id"])
    assert VERSION.match(v2) and v2 != v1
    # Latest: GET /secrets/{name}/ (trailing slash, fact 15), as the Rust and Python SDKs send it.
    latest = kv.get_secret(name).expect(200)
    assert latest["value"] == "second" and latest["id"] == b2["id"]
    old = kv.get_secret(name, v1).expect(200)
    assert old["value"] == "first" and old["id"] == b1["id"]
    assert "kid" not in old and "managed" not in old, "a plain secret has no kid/managed"


def test_previous_version_when_present_names_the_prior_version(kv):
    name = unique()
    b1 = kv.set_secret(name, "a")
    b2 = kv.set_secret(name, "b")
    if "previousVersion" in b2:
        assert b2["previousVersion"] == id_parts(kv, b1["id"])[1]
    else:
        note("SetSecret responses carry no previousVersion (optional in 2025-07-01)")


def test_update_secret_has_no_value_and_keeps_version(kv):
    name = unique()
    b = kv.set_secret(name, "v")
    _, version = id_parts(kv, b["id"])
    for path in (f"/secrets/{name}/", f"/secrets/{name}/{version}"):
        r = kv.request("PATCH", path, json_body={"contentType": "application/x-test", "tags": {"k": "v"}})
        u = r.expect(200)
        assert "value" not in u, f"UpdateSecret never returns value (fact 8): {r!r}"
        assert u["id"] == b["id"] and u["contentType"] == "application/x-test" and u["tags"] == {"k": "v"}
    assert kv.get_secret(name).expect(200)["value"] == "v"


def test_list_secrets_pages_with_maxresults_and_next_link(kv):
    prefix = unique("page")
    names = {f"{prefix}-{i}" for i in range(7)}
    for n in names:
        kv.set_secret(n, "x", tags={"page": prefix})
    items, pages = kv.list_all("/secrets", params={"maxresults": 3})
    assert all(len(p["value"]) <= 3 for p in pages), "a page holds at most maxresults items"
    assert len(pages) >= 3
    for p in pages[:-1]:
        link = urllib.parse.urlsplit(p["nextLink"])
        assert link.scheme == "https" and link.hostname == kv.env.vault_host(), p["nextLink"]
        assert link.path == "/secrets", f"nextLink is an absolute URL of the list (fact 17): {p['nextLink']}"
    assert pages[-1].get("nextLink") in (None, ""), "nextLink is null on the last page"
    ids = [i["id"] for i in items]
    assert len(ids) == len(set(ids)), "paging repeats no item"
    listed = {id_parts(kv, i)[0]: item for i, item in zip(ids, items)}
    for n in names:
        assert n in listed, f"{n} missing from the paged list"
        item = listed[n]
        assert id_parts(kv, item["id"])[1] is None, "list items carry the base id, no version (fact 14)"
        assert "value" not in item and item["tags"] == {"page": prefix}


@pytest.mark.parametrize("maxresults", [0, 26])
def test_maxresults_out_of_range_is_refused(kv, maxresults):
    r = kv.request("GET", "/secrets", params={"maxresults": maxresults})
    assert r.status == 400, f"maxresults is 1..25 in the spec: {r!r}"


def test_secret_versions_paging(kv):
    name = unique()
    versions = [id_parts(kv, kv.set_secret(name, str(i))["id"])[1] for i in range(5)]
    items, pages = kv.list_all(f"/secrets/{name}/versions", params={"maxresults": 2})
    assert len(pages) == 3 and all(len(p["value"]) <= 2 for p in pages)
    listed = sorted(id_parts(kv, i["id"])[1] for i in items)
    assert listed == sorted(versions), "every version, each with its version id"
    assert all("value" not in i for i in items)


def test_delete_get_deleted_and_purge(kv):
    name = unique()
    kv.set_secret(name, "v", tags={"a": "b"})
    r = kv.delete_secret(name)
    d = r.expect(200)
    assert d["recoveryId"].endswith(f"/deletedsecrets/{name}")
    days = d["attributes"]["recoverableDays"]
    assert d["scheduledPurgeDate"] == d["deletedDate"] + days * 86400, (
        f"scheduledPurgeDate = deletedDate + recoverableDays*86400 (fact 18): {d}"
    )
    assert "value" not in d or d["value"] is None or d["value"] == "v"
    # The delete completes asynchronously in the real service (fact 18): GET of the deleted
    # secret may 404 "Deleted Secret not found" for a while; the final outcome is 200.
    seen = []
    deadline = time.monotonic() + 20
    while True:
        g = kv.request("GET", f"/deletedsecrets/{name}")
        seen.append(g.status)
        if g.status != 404 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert g.status == 200, f"GetDeletedSecret: {g!r}"
    assert g.body["recoveryId"] == d["recoveryId"] and g.body["tags"] == {"a": "b"}
    note(f"GET /deletedsecrets right after DELETE answered {seen} (real service: 404 then 200)")
    gone = kv.get_secret(name)
    assert gone.status == 404 and gone.error()["code"] == "SecretNotFound"
    listed = [id_parts(kv, i["recoveryId"], "deletedsecrets")[0] for i in kv.list_all("/deletedsecrets")[0]]
    assert name in listed, "GetDeletedSecrets lists it"
    p, statuses = kv.purge_when_deleted("secrets", name)
    assert p.status == 204 and not p.raw.content, f"PurgeDeletedSecret: {p!r}"
    note(f"purge right after delete answered {statuses} (real service: 409 ObjectIsBeingDeleted, then 204)")
    after = kv.request("GET", f"/deletedsecrets/{name}")
    assert after.status == 404 and after.error() == {
        "code": "SecretNotFound", "message": f"Deleted Secret not found: {name}"
    }


def test_recover_deleted_secret(kv):
    name = unique()
    kv.set_secret(name, "keep")
    kv.delete_secret(name).expect(200)
    deadline = time.monotonic() + 20
    while True:
        r = kv.request("POST", f"/deletedsecrets/{name}/recover")
        if r.status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.status == 200 and "value" not in r.body, f"RecoverDeletedSecret: {r!r}"
    deadline = time.monotonic() + 20
    while True:  # recovery is asynchronous too (fact 18): the GET may 404 for a while
        g = kv.get_secret(name)
        if g.status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert g.status == 200 and g.body["value"] == "keep"


def test_missing_secret_404_wording(kv):
    name = unique("missing")
    for path in (f"/secrets/{name}/", f"/secrets/{name}/{'0' * 32}"):
        r = kv.request("GET", path)
        assert r.status == 404, repr(r)
        err = r.error()
        assert err["code"] == "SecretNotFound" and err["message"] == NOT_FOUND.format(name=name), (
            f"fact 7 wording: {r!r}"
        )
    r = kv.request("GET", f"/deletedsecrets/{name}")
    assert r.status == 404 and r.error() == {
        "code": "SecretNotFound", "message": f"Deleted Secret not found: {name}"
    }, f"fact 7: {r!r}"


def test_disabled_secret_is_forbidden_but_listed(kv):
    name = unique()
    b = kv.set_secret(name, "hidden")
    _, version = id_parts(kv, b["id"])
    u = kv.request("PATCH", f"/secrets/{name}/{version}", json_body={"attributes": {"enabled": False}})
    assert u.status == 200 and u.body["attributes"]["enabled"] is False and "value" not in u.body
    for path in (f"/secrets/{name}/", f"/secrets/{name}/{version}"):
        r = kv.request("GET", path)
        assert r.status == 403, f"GET of a disabled secret (fact 8): {r!r}"
        err = r.error()
        assert err["code"] == "Forbidden", repr(r)
        assert err["message"] == "Operation get is not allowed on a disabled secret.", repr(r)
        assert err.get("innererror", {}).get("code") == "SecretDisabled", (
            f"inner code SecretDisabled, wire property 'innererror' (fact 8, openapi Error): {r!r}"
        )
    items, _ = kv.list_all("/secrets")
    mine = [i for i in items if id_parts(kv, i["id"])[0] == name]
    assert len(mine) == 1 and mine[0]["attributes"]["enabled"] is False, "still listed, enabled=false"
    versions, _ = kv.list_all(f"/secrets/{name}/versions")
    assert [v["attributes"]["enabled"] for v in versions] == [False]
    kv.request("PATCH", f"/secrets/{name}/", json_body={"attributes": {"enabled": True}}).expect(200)
    assert kv.get_secret(name).expect(200)["value"] == "hidden"


def test_nbf_and_exp_are_informational(kv):
    now = int(time.time())
    future = unique()
    kv.set_secret(future, "later", attributes={"nbf": now + 86400, "exp": now + 2 * 86400})
    past = unique()
    kv.set_secret(past, "earlier", attributes={"exp": now - 86400})
    f = kv.get_secret(future).expect(200)
    assert f["value"] == "later" and f["attributes"]["nbf"] == now + 86400
    p = kv.get_secret(past).expect(200)
    assert p["value"] == "earlier" and p["attributes"]["exp"] == now - 86400


def test_value_size_limit(kv):
    ok = unique()
    kv.set_secret(ok, "a" * 25000)
    assert len(kv.get_secret(ok).expect(200)["value"]) == 25000
    r = kv.request("PUT", f"/secrets/{unique()}", json_body={"value": "a" * 26000})
    assert r.status == 400, f"a value over 25k bytes is refused (fact 13): {r.status} {r.text[:300]}"


@pytest.mark.parametrize("bad", ["bad_name", "dots.not.allowed", "a" * 128, "sp%20ace"])
def test_invalid_names_are_refused(kv, bad):
    r = kv.request("PUT", f"/secrets/{bad}", json_body={"value": "v"})
    assert r.status == 400, f"names are 1-127 of [0-9a-zA-Z-] (fact 14): {r!r}"


def test_longest_name_is_accepted(kv):
    name = unique("l") + "a" * (127 - len(unique("l")))
    assert len(name) == 127
    kv.set_secret(name, "v")
    assert kv.get_secret(name).expect(200)["value"] == "v"


def test_names_are_case_insensitive(kv):
    name = unique("CaseMix")
    kv.set_secret(name, "one")
    assert kv.get_secret(name.lower()).expect(200)["value"] == "one"
    assert kv.get_secret(name.upper()).expect(200)["value"] == "one"
    kv.set_secret(name.upper(), "two")
    assert kv.get_secret(name.lower()).expect(200)["value"] == "two"
    versions, _ = kv.list_all(f"/secrets/{name.lower()}/versions")
    assert len(versions) == 2, "a differently cased name is a new version of the same secret"
    matching = [
        i for i in kv.list_all("/secrets")[0] if id_parts(kv, i["id"])[0].lower() == name.lower()
    ]
    assert len(matching) == 1, "one secret, whatever the case"


def test_set_secret_without_value_is_refused(kv):
    r = kv.request("PUT", f"/secrets/{unique()}", json_body={"contentType": "x"})
    assert r.status == 400, f"SecretSetParameters requires value: {r!r}"
    r = kv.request("PUT", f"/secrets/{unique()}", data=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status == 400, f"malformed JSON: {r!r}"


def test_common_response_headers(kv):
    rid = "conformance-" + unique()
    for r in (
        kv.request("PUT", f"/secrets/{unique()}", json_body={"value": "h"}, headers={"x-ms-client-request-id": rid}),
        kv.request("GET", f"/secrets/{unique('missing')}/", headers={"x-ms-client-request-id": rid}),
        kv.request("GET", "/secrets", token=None, headers={"x-ms-client-request-id": rid}),
    ):
        h = r.headers
        assert h.get("Content-Type", "").lower() == "application/json; charset=utf-8", (r, h)
        assert h.get("Cache-Control") == "no-cache" and h.get("Pragma") == "no-cache", (r, dict(h))
        assert h.get("Expires") == "-1" and h.get("X-Content-Type-Options") == "nosniff", (r, dict(h))
        assert h.get("Strict-Transport-Security"), (r, dict(h))
        for name in ("x-ms-request-id", "x-ms-keyvault-region", "x-ms-keyvault-service-version"):
            assert h.get(name), f"{name} missing (fact 24): {r!r} {dict(h)}"
        assert h.get("x-ms-client-request-id") == rid, f"x-ms-client-request-id echoed (fact 24): {dict(h)}"
