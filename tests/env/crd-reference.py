#!/usr/bin/env python3
"""Writes docs/crd-reference.md from the generated CRDs (crds/vaultsync.dev.yaml).

The CRDs are generated from the Rust types (`make crds`), so every description here is a
doc comment of src/api/*.rs and every validation message one of its CEL rules: this
page cannot say anything the apiserver does not enforce or `kubectl explain` does not
show.

    tests/env/crd-reference.py [CRDS] [-o OUT]    write the reference (stdout without -o)
    tests/env/crd-reference.py [CRDS] --check OUT  exit 1 if OUT differs from what CRDS gives

`make crds` runs the first form, `make crd-check` the second.

It needs PyYAML (the Python standard library has no YAML parser). When the python3
running it lacks PyYAML, it creates a venv of its own at
$VAULTSYNC_CACHE_DIR/docs-venv (default ~/.cache/vaultsync/docs-venv), installs a pinned
PyYAML there from PyPI once, and re-runs itself with that venv's python. PyYAML only
parses; the output is built here, so it does not depend on PyYAML's version.
"""

import argparse
import difflib
import os
import subprocess
import sys

PYYAML_PIN = "PyYAML==6.0.3"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CRDS = os.path.join(ROOT, "crds", "vaultsync.dev.yaml")
REEXEC_MARK = "VAULTSYNC_CRD_REFERENCE_VENV"


def cache_dir():
    if os.environ.get("VAULTSYNC_CACHE_DIR"):
        return os.environ["VAULTSYNC_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vaultsync")


def import_yaml():
    """PyYAML from this python, else from the generator's own venv (created once)."""
    try:
        import yaml  # noqa: PLC0415

        return yaml
    except ImportError:
        pass
    if os.environ.get(REEXEC_MARK):
        sys.exit(f"crd-reference: PyYAML is still missing in {sys.executable}; remove "
                 f"{os.path.dirname(os.path.dirname(sys.executable))} and rerun")
    venv = os.path.join(cache_dir(), "docs-venv")
    python = os.path.join(venv, "bin", "python")
    ready = os.path.exists(python) and subprocess.run(
        [python, "-c", "import yaml"], capture_output=True).returncode == 0
    if not ready:
        print(f"crd-reference: installing {PYYAML_PIN} into {venv} (once)", file=sys.stderr)
        try:
            subprocess.run([sys.executable, "-m", "venv", venv], check=True)
            subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                            PYYAML_PIN], check=True)
        except (OSError, subprocess.CalledProcessError) as e:
            sys.exit(f"crd-reference: could not install {PYYAML_PIN} into {venv} ({e}); "
                     f"install python3-venv and check access to PyPI, or pip install PyYAML")
    os.environ[REEXEC_MARK] = "1"
    os.execv(python, [python, os.path.abspath(__file__), *sys.argv[1:]])


# --- rendering --------------------------------------------------------------------------

def prose(text):
    """A description as one table cell: lines joined, paragraphs kept, pipes escaped, and
    '<' outside code spans escaped so Markdown does not take it for HTML."""
    paragraphs = [" ".join(p.split()) for p in (text or "").strip().split("\n\n")]
    text = "<br><br>".join(p for p in paragraphs if p)
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # outside code spans
        parts[i] = parts[i].replace("<br>", "\0").replace("<", "&lt;").replace("\0", "<br>")
    return "`".join(parts).replace("|", "\\|")


def code(text):
    """Inline code that survives a table cell."""
    text = str(text).replace("|", "\\|")
    fence = "``" if "`" in text else "`"
    return f"{fence}{text}{fence}"


def enum_values(schema):
    """The allowed values; the null that an optional enum lists is left out (the field
    may be omitted instead)."""
    return ", ".join(code(v) for v in schema["enum"] if v is not None)


def type_of(schema):
    """A short type with its constraints, such as `string, max 253 chars`."""
    if "enum" in schema:
        base = "enum: " + enum_values(schema)
    elif schema.get("type") == "array":
        item = schema.get("items", {})
        base = "[]" + (type_of(item) if "enum" not in item else "string")
        if "enum" in item:
            base += ", items one of " + enum_values(item)
    elif schema.get("type") == "object" and "additionalProperties" in schema:
        base = "map[string]" + schema["additionalProperties"].get("type", "object")
    else:
        base = schema.get("type", "object")
        if schema.get("format"):
            base += f" ({schema['format']})"
    limits = []
    if "minLength" in schema and "maxLength" in schema:
        limits.append(f"{schema['minLength']}–{schema['maxLength']} chars")
    elif "minLength" in schema:
        limits.append(f"min {schema['minLength']} chars")
    elif "maxLength" in schema:
        limits.append(f"max {schema['maxLength']} chars")
    if "minItems" in schema:
        limits.append(f"min {schema['minItems']} items")
    if "maxItems" in schema:
        limits.append(f"max {schema['maxItems']} items")
    if "minimum" in schema:
        limits.append(f"≥ {schema['minimum']}")
    if "maximum" in schema:
        limits.append(f"≤ {schema['maximum']}")
    return ", ".join([base, *limits])


def walk(path, schema, required, rows, rules):
    """Rows (path, type, required, description) for `schema` and everything under it,
    and the CEL rules (path, message, rule) met on the way."""
    description = schema.get("description", "")
    items = schema.get("items")
    if isinstance(items, dict) and items.get("properties") and items.get("description"):
        description += "\n\nEach item: " + items["description"]
    rows.append((path, type_of(schema), required, description))
    for rule in schema.get("x-kubernetes-validations") or []:
        rules.append((path, rule.get("message", ""), rule.get("rule", "")))
    needed = set(schema.get("required") or [])
    for name, sub in (schema.get("properties") or {}).items():
        walk(f"{path}.{name}", sub, name in needed, rows, rules)
    if isinstance(items, dict) and (items.get("properties") or items.get("x-kubernetes-validations")):
        needed_items = set(items.get("required") or [])
        for rule in items.get("x-kubernetes-validations") or []:
            rules.append((f"{path}[]", rule.get("message", ""), rule.get("rule", "")))
        for name, sub in (items.get("properties") or {}).items():
            walk(f"{path}[].{name}", sub, name in needed_items, rows, rules)


def field_table(rows):
    out = ["| Field | Type | Required | Description |", "|---|---|---|---|"]
    for path, typ, required, description in rows:
        out.append(f"| {code(path)} | {typ} | {'yes' if required else ''} | {prose(description)} |")
    return out


def render_kind(crd):
    names = crd["spec"]["names"]
    group = crd["spec"]["group"]
    out = []
    for version in crd["spec"]["versions"]:
        schema = version["schema"]["openAPIV3Schema"]
        kind = names["kind"]
        out += [f"## {kind}", ""]
        facts = [f"`{group}/{version['name']}`", crd["spec"]["scope"].lower()]
        if names.get("shortNames"):
            facts.append("short name " + ", ".join(code(n) for n in names["shortNames"]))
        if names.get("categories"):
            facts.append("category " + ", ".join(code(c) for c in names["categories"]))
        if "status" in (version.get("subresources") or {}):
            facts.append("status subresource")
        out += [", ".join(facts) + ".", "", prose(schema.get("description", "")), ""]
        columns = version.get("additionalPrinterColumns") or []
        if columns:
            shown = [c["name"] for c in columns if not c.get("priority")]
            wide = [c["name"] for c in columns if c.get("priority")]
            line = "`kubectl get` columns: " + ", ".join(shown)
            if wide:
                line += " (with `-o wide` also " + ", ".join(wide) + ")"
            out += [line + ".", ""]
        needed = set(schema.get("required") or [])
        rules = []
        for part, title in (("spec", "Spec"), ("status", "Status (written by the operator)")):
            if part not in schema.get("properties", {}):
                continue
            rows = []
            walk(part, schema["properties"][part], part in needed, rows, rules)
            out += [f"### {title}", ""] + field_table(rows) + [""]
        out += [f"### Validation rules ({kind})", "",
                "Checked by the apiserver at admission (CEL, `x-kubernetes-validations`); the "
                "message is what `kubectl apply` reports when the rule fails. Types, enums "
                "and lengths in the tables above are checked too, and unknown fields are "
                "refused under strict field validation (kubectl's default).", "",
                "| Field | Message | Rule |", "|---|---|---|"]
        for path, message, rule in rules:
            out.append(f"| {code(path)} | {prose(message)} | {code(rule)} |")
        out.append("")
    return out


def render(crds_path, yaml):
    with open(crds_path, encoding="utf-8") as f:
        crds = [d for d in yaml.safe_load_all(f) if d]
    if not crds or any(d.get("kind") != "CustomResourceDefinition" for d in crds):
        sys.exit(f"crd-reference: {crds_path} does not hold CustomResourceDefinitions: run make crds")
    rel = os.path.relpath(os.path.abspath(crds_path), ROOT)
    kinds = [d["spec"]["names"]["kind"] for d in crds]
    out = [
        "# CRD reference",
        "",
        f"<!-- Generated from {rel} by tests/env/crd-reference.py (`make crds`); do not edit. -->",
        "",
        "Every field of the custom resources, with the descriptions that `kubectl explain` "
        "shows and the admission rules the apiserver enforces. Both are generated from the "
        "Rust types in `src/api/`; `make crd-check` fails when this page is stale.",
        "",
        "Field paths are relative to the resource; `[]` marks the items of a list. "
        "\"Required\" means required within its parent object, when that is present.",
        "",
    ]
    out += [f"- [{k}](#{k.lower()})" for k in kinds] + [""]
    for crd in crds:
        out += render_kind(crd)
    return "\n".join(out).rstrip("\n") + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("crds", nargs="?", default=DEFAULT_CRDS, help="the CRD YAML (default: crds/vaultsync.dev.yaml)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-o", "--output", help="write here instead of stdout")
    group.add_argument("--check", metavar="FILE", help="compare with FILE; exit 1 when it differs")
    args = parser.parse_args()
    text = render(args.crds, import_yaml())
    if args.check:
        try:
            with open(args.check, encoding="utf-8") as f:
                current = f.read()
        except FileNotFoundError:
            current = ""
        if current != text:
            diff = list(difflib.unified_diff(current.splitlines(True), text.splitlines(True),
                                             args.check, "generated", n=1))
            sys.stderr.writelines(diff[:40])
            if len(diff) > 40:
                print(f"... ({len(diff) - 40} more diff lines)", file=sys.stderr)
            print(f"{args.check} is stale: run make crds", file=sys.stderr)
            sys.exit(1)
    elif args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        tmp = args.output + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, args.output)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
