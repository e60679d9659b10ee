"""Comparing the shape of two JSON values: same object keys recursively and the same value
types; ids, versions, timestamps and values may differ."""


def _type(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def shape_diff(recorded, local, path="$", nullable=()):
    """Differences in shape, as a list of strings (empty when alike). Keys named in `nullable`
    may be null on one side and a string on the other (nextLink)."""
    tr, tl = _type(recorded), _type(local)
    if tr != tl:
        key = path.rsplit(".", 1)[-1]
        if key in nullable and {tr, tl} <= {"null", "string"}:
            return []
        return [f"{path}: recorded {tr}, local {tl}"]
    diffs = []
    if tr == "object":
        for k in sorted(set(recorded) - set(local)):
            diffs.append(f"{path}.{k}: missing locally")
        for k in sorted(set(local) - set(recorded)):
            diffs.append(f"{path}.{k}: not in the recording")
        for k in sorted(set(recorded) & set(local)):
            diffs += shape_diff(recorded[k], local[k], f"{path}.{k}", nullable)
    elif tr == "array":
        for i, (r, l) in enumerate(zip(recorded, local)):
            diffs += shape_diff(r, l, f"{path}[{i}]", nullable)
    return diffs
