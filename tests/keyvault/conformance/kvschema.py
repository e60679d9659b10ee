"""Validation of Key Vault responses against the OpenAPI 2025-07-01 definitions.

The three Swagger 2.0 files under reference/openapi/2025-07-01/ (secrets, keys, certificates) are
loaded as JSON Schema (draft 4) resources of a `referencing` registry, so `#/definitions/...`
references resolve inside each file. A response is matched to its operation by method and path
(the path templates of the spec, literal segments winning over parameters), then its body is
validated against the schema of that status (or `default`, the KeyVaultError, for errors).

Strictness beyond the plain schema, each justified by the reference data:
- every object definition that lists `properties` gets `additionalProperties: false`, so an
  undeclared or misspelt property is an error, except the few undeclared properties the real
  service was recorded sending (OBSERVED_UNDECLARED); every recorded response and every spec
  example passes this (test_validator.py);
- `null` values are dropped before validation: the real service sends `"nextLink": null` on a
  last page (recordings), and generated clients read a null as "absent";
- formats: `unixtime` (integer seconds), `base64url` (no padding, URL alphabet), `byte`
  (standard base64);
- an error body must carry `error.code` and `error.message` as strings (fact 6).
"""

import base64
import binascii
import copy
import json
import pathlib
import re

import jsonschema
import referencing
import referencing.jsonschema

REFERENCE = pathlib.Path(__file__).resolve().parent / "reference"
SPEC_DIR = REFERENCE / "openapi" / "2025-07-01"
SPECS = ("secrets", "keys", "certificates")
METHODS = ("get", "put", "post", "patch", "delete")


# Properties the real service sends that the 2025-07-01 definitions do not declare, as seen in
# the recordings (reference/recordings/): accepted, with the type they have there.
OBSERVED_UNDECLARED = {
    "CertificateBundle": {"pending": {"type": "object", "properties": {"id": {"type": "string"}}}},
    "X509CertificateProperties": {
        "basic_constraints": {"type": "object", "properties": {"ca": {"type": "boolean"}}}
    },
    "KeyAttributes": {"key_size": {"type": "integer"}},
}


def _strict(node):
    """Adds additionalProperties: false to every object schema with declared properties."""
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            _strict(value)
    elif isinstance(node, list):
        for value in node:
            _strict(value)


def _drop_nulls(value):
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


_FORMATS = jsonschema.FormatChecker()


@_FORMATS.checks("base64url")
def _is_base64url(value):
    return not isinstance(value, str) or re.fullmatch(r"[A-Za-z0-9_-]*", value) is not None


@_FORMATS.checks("byte", raises=(binascii.Error, ValueError))
def _is_base64(value):
    if isinstance(value, str):
        base64.b64decode(value, validate=True)
    return True


@_FORMATS.checks("unixtime")
def _is_unixtime(value):
    return not isinstance(value, (str, float)) and (not isinstance(value, int) or value >= 0)


class Operation:
    def __init__(self, spec, path, method, op):
        self.spec = spec
        self.path = path
        self.method = method.upper()
        self.operation_id = op["operationId"]
        self.responses = op["responses"]
        segments = path.strip("/").split("/")
        self.literals = sum(1 for s in segments if not s.startswith("{"))
        parts = [("[^/]*" if s.startswith("{") else re.escape(s)) for s in segments]
        self.regex = re.compile("^/" + "/".join(parts) + "$")

    def __repr__(self):
        return f"{self.operation_id} ({self.method} {self.path}, {self.spec}.json)"


class Spec:
    """The three OpenAPI files and a validator for any response of theirs."""

    def __init__(self):
        self.documents = {}
        resources = []
        for name in SPECS:
            with open(SPEC_DIR / f"{name}.json", encoding="utf-8") as f:
                doc = json.load(f)
            self.documents[name] = doc
            strict = copy.deepcopy(doc)
            definitions = strict.get("definitions", {})
            for definition, extra in OBSERVED_UNDECLARED.items():
                if definition in definitions:
                    definitions[definition]["properties"].update(copy.deepcopy(extra))
            _strict(definitions)
            resources.append(
                (
                    f"urn:keyvault:{name}",
                    referencing.Resource.from_contents(
                        strict, default_specification=referencing.jsonschema.DRAFT4
                    ),
                )
            )
        self.registry = referencing.Registry().with_resources(resources)
        self.operations = []
        for name, doc in self.documents.items():
            for path, item in doc["paths"].items():
                for method, op in item.items():
                    if method in METHODS:
                        self.operations.append(Operation(name, path, method, op))
        # Literal segments win: /secrets/{name}/versions before /secrets/{name}/{version}.
        self.operations.sort(key=lambda o: -o.literals)
        self.by_id = {o.operation_id: o for o in self.operations}

    def operation(self, method, path):
        """The operation of a request (path without query). A GET of a bare object path
        (`/certificates/{name}`, as the .NET recordings send it) is the latest version's GET."""
        method = method.upper()
        for candidate in (path, path + "/"):
            for op in self.operations:
                if op.method == method and op.regex.match(candidate):
                    return op
            if method != "GET":
                break
        raise AssertionError(f"no operation of the 2025-07-01 OpenAPI matches {method} {path}")

    def validator(self, spec, definition):
        schema = {"$ref": f"urn:keyvault:{spec}#/definitions/{definition}"}
        return jsonschema.Draft4Validator(
            schema, registry=self.registry, format_checker=_FORMATS
        )

    def schema_ref(self, op, status):
        """(definition name or None, whether the status is declared) for a response status."""
        response = op.responses.get(str(status))
        declared = response is not None
        if response is None:
            response = op.responses.get("default")
        if response is None:
            return None, False
        ref = (response.get("schema") or {}).get("$ref")
        return (ref.rsplit("/", 1)[-1] if ref else None), declared

    def check_body(self, spec, definition, body, where=""):
        errors = sorted(
            self.validator(spec, definition).iter_errors(_drop_nulls(body)),
            key=lambda e: list(e.absolute_path),
        )
        if errors:
            lines = [
                f"  at /{'/'.join(str(p) for p in e.absolute_path)}: {e.message[:300]}"
                for e in errors[:10]
            ]
            raise AssertionError(
                f"{where}: body does not validate against #/definitions/{definition} "
                f"({spec}.json 2025-07-01):\n" + "\n".join(lines)
                + f"\nbody: {json.dumps(body)[:1500]}"
            )

    def check_response(self, method, path, status, body, has_body):
        """Validates one response; returns the operation. `body` is the parsed JSON or None."""
        op = self.operation(method, path)
        where = f"{op} answered {status}"
        definition, declared = self.schema_ref(op, status)
        if 200 <= status < 300 and not declared:
            raise AssertionError(
                f"{where}: the spec declares only {sorted(op.responses)} for this operation"
            )
        if definition is None:
            if has_body:
                raise AssertionError(f"{where}: the spec declares no body, got {body!r:.300}")
            return op
        if body is None:
            raise AssertionError(f"{where}: expected a JSON body ({definition}), got none")
        self.check_body(op.spec, definition, body, where)
        if definition == "KeyVaultError":
            err = body.get("error") if isinstance(body, dict) else None
            assert isinstance(err, dict) and isinstance(err.get("code"), str) and isinstance(
                err.get("message"), str
            ), f"{where}: an error body needs error.code and error.message strings: {body!r:.500}"
        return op


SPEC = Spec()
