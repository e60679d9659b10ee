"""Shared helpers of the local Key Vault: errors, validation, small utilities.

"Fact N" in comments refers to the numbered facts of shared/azure-keyvault-reference/README.md;
wording quoted from observed/keyvault-error-responses.json is marked "observed".
"""

import base64
import os
import re
import time
import uuid

# Fact 16 and the reference README's table: the Rust 1.x SDK sends 2025-07-01; the Python SDK's
# recordings show 7.4-7.6 too. Everything the double does is the same for these versions, except
# that outContentType and previousVersion exist only from 2025-07-01 on.
SUPPORTED_API_VERSIONS = ("7.4", "7.5", "7.6", "2025-07-01")
LATEST_API_VERSION = "2025-07-01"

# Fact 14: object names are 1-127 characters of 0-9 a-z A-Z -.
NAME_RE = re.compile(r"^[0-9a-zA-Z-]{1,127}$")
VERSION_RE = re.compile(r"^[0-9a-zA-Z]{1,64}$")

# Fact 13.
MAX_SECRET_VALUE_BYTES = 25 * 1024
MAX_CONTENT_TYPE = 255
MAX_TAGS = 15
MAX_TAG_PART = 512

# Soft delete (fact 18): the recordings show both "Recoverable+Purgeable"/90 days and
# "CustomizedRecoverable+Purgeable"/7 days; the vault default (90 days) is used.
RECOVERY_LEVEL = "Recoverable+Purgeable"
RECOVERABLE_DAYS = 90

FWLINK_NOT_FOUND = "https://go.microsoft.com/fwlink/?linkid=2125182"
FWLINK_ACCESS_DENIED = "https://go.microsoft.com/fwlink/?linkid=2125287"


class KvError(Exception):
    """An error answered in Key Vault's shape (fact 6): {"error":{"code","message","innererror"}}."""

    def __init__(self, status, code, message, inner=None, headers=None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.inner = inner
        self.headers = headers or {}

    def body(self):
        err = {"code": self.code, "message": self.message}
        if self.inner:
            # The OpenAPI wire name is "innererror" (observed: the recorded 409 uses it).
            err["innererror"] = {"code": self.inner}
        return {"error": err}


def bad_parameter(message):
    return KvError(400, "BadParameter", message)


def now():
    return int(time.time())


def new_version():
    """Fact 14: a system-generated 32-character version, observed always lowercase hex."""
    return uuid.uuid4().hex


def check_name(name):
    # Best reading: the real service's wording for an invalid name in the URI.
    if not NAME_RE.match(name or ""):
        raise bad_parameter(f"The request URI contains an invalid name: {name}")


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def int_to_b64url(n, length=None):
    if length is None:
        length = max(1, (n.bit_length() + 7) // 8)
    return b64url(n.to_bytes(length, "big"))


def check_tags(tags):
    """Fact 13: at most 15 tags, names and values of at most 512 characters."""
    if tags is None:
        return None
    if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
        raise bad_parameter("Tags must be an object of string names to string values.")
    if len(tags) > MAX_TAGS:
        raise bad_parameter(f"The number of tags ({len(tags)}) exceeds the maximum of {MAX_TAGS}.")
    for k, v in tags.items():
        if len(k) > MAX_TAG_PART or len(v) > MAX_TAG_PART:
            raise bad_parameter(f"Tag names and values may have at most {MAX_TAG_PART} characters.")
    return dict(tags)


def check_attributes(attrs):
    """The writable part of an attributes object: enabled, nbf, exp."""
    if attrs is None:
        return {}
    if not isinstance(attrs, dict):
        raise bad_parameter("Attributes must be an object.")
    out = {}
    if "enabled" in attrs and attrs["enabled"] is not None:
        if not isinstance(attrs["enabled"], bool):
            raise bad_parameter("Attribute 'enabled' must be a boolean.")
        out["enabled"] = attrs["enabled"]
    for k in ("nbf", "exp"):
        if k in attrs and attrs[k] is not None:
            if not isinstance(attrs[k], int) or isinstance(attrs[k], bool):
                raise bad_parameter(f"Attribute '{k}' must be an integer (seconds since 1970).")
            out[k] = attrs[k]
    return out


def object_body(body, required=False):
    if body is None:
        if required:
            raise bad_parameter("The request body is missing.")
        return {}
    if not isinstance(body, dict):
        raise bad_parameter("The request body must be a JSON object.")
    return body


def file_stamp(path):
    """What tells a re-read file has changed: (mtime, size, inode), or None if it is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
