"""The validator itself, held to the real service: every recorded response and every x-ms-example
of the 2025-07-01 OpenAPI passes it, and it refuses bodies that break the schema. Needs no
local vault."""

import glob
import json
import os
import urllib.parse

import pytest

from kvschema import REFERENCE, SPEC

RECORDINGS = sorted(glob.glob(str(REFERENCE / "recordings" / "*" / "*.json")))
EXAMPLES = sorted(glob.glob(str(REFERENCE / "examples" / "2025-07-01" / "*.json")))


@pytest.mark.parametrize("path", RECORDINGS, ids=os.path.basename)
def test_validator_accepts_every_recorded_response(path):
    with open(path, encoding="utf-8-sig") as f:
        entries = json.load(f)["Entries"]
    for e in entries:
        u = urllib.parse.urlsplit(e["RequestUri"])
        body = e["ResponseBody"]
        SPEC.check_response(e["RequestMethod"], u.path, e["StatusCode"], body, body not in (None, ""))


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_validator_accepts_the_spec_examples(path):
    with open(path, encoding="utf-8") as f:
        example = json.load(f)
    op = SPEC.by_id[example["operationId"]]
    for status, response in example["responses"].items():
        definition, declared = SPEC.schema_ref(op, int(status))
        assert declared
        if "body" in response:
            SPEC.check_body(op.spec, definition, response["body"], path)


@pytest.mark.parametrize(
    "body",
    [
        {"value": "v", "id": "x", "attributes": {"enabled": "yes"}},  # wrong type
        {"value": "v", "id": "x", "secretValue": "typo"},  # undeclared property
        {"value": "v", "attributes": {"created": "2025-01-01"}},  # unixtime is an integer
    ],
)
def test_validator_refuses_bad_secret_bundles(body):
    with pytest.raises(AssertionError):
        SPEC.check_response("GET", "/secrets/a/", 200, body, True)


def test_validator_refuses_bad_error_bodies():
    for body in ({"error": {"code": 5, "message": "m"}}, {"error": {}}, {"message": "x"}):
        with pytest.raises(AssertionError):
            SPEC.check_response("GET", "/secrets/a/", 404, body, True)


def test_validator_refuses_an_undeclared_success_status_or_a_204_body():
    with pytest.raises(AssertionError):
        SPEC.check_response("DELETE", "/deletedsecrets/a", 200, {}, True)
    with pytest.raises(AssertionError):
        SPEC.check_response("DELETE", "/deletedsecrets/a", 204, {"x": 1}, True)


def test_operations_are_matched_by_literal_segments_first():
    assert SPEC.operation("GET", "/secrets/a/versions").operation_id == "GetSecretVersions"
    assert SPEC.operation("GET", "/secrets/a/").operation_id == "GetSecret"
    assert SPEC.operation("POST", "/keys/a//wrapkey").operation_id == "wrapKey"
    assert SPEC.operation("GET", "/certificates/a").operation_id == "GetCertificate"
    assert SPEC.operation("GET", "/certificates/contacts").operation_id == "GetCertificateContacts"
