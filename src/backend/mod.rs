//! Backends: where secret material comes from. Each backend module reads its source as
//! the tenant and returns [`Fetched`] material; everything after that is shared.

use std::collections::BTreeMap;
use std::fmt;

/// A secret value. It has no `Display`, and its `Debug` shows only the length, so it
/// cannot reach a log line or an error message by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Vec<u8>);

impl SecretValue {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValue(<{} bytes redacted>)", self.0.len())
    }
}

impl From<&str> for SecretValue {
    fn from(s: &str) -> Self {
        Self(s.as_bytes().to_vec())
    }
}

/// A lease on dynamic credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: String,
    pub duration: std::time::Duration,
    pub renewable: bool,
}

/// What a backend read: the key/value material and where it came from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fetched {
    pub data: BTreeMap<String, SecretValue>,
    /// Version of the source: KV version, Key Vault object version, lease or serial.
    pub version: String,
    /// Lease of dynamic credentials.
    pub lease: Option<Lease>,
    /// End of validity of the material itself (a certificate's notAfter), if it has one.
    pub not_after: Option<jiff::Timestamp>,
}
pub mod vault;
