//! `vault:` references in environment variables, in Bank-Vaults syntax:
//! `vault:PATH#KEY` or `vault:PATH#KEY#VERSION`.
//!
//! Pure functions only: parsing (strict, so a reference can never reach another endpoint
//! than the one it names), grouping (each distinct `(path, version)` is read once, so the
//! `#username` and `#password` of a dynamic secret come from one lease) and picking the
//! values out of a read's answer. Errors name variables, paths and key names, never a
//! value.

use std::collections::BTreeMap;
use std::ffi::OsString;

use serde_json::Value;

/// What a reference's value starts with.
pub const PREFIX: &str = "vault:";

/// One environment variable's reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// The environment variable that holds it.
    pub var: String,
    /// Vault API path below `/v1/`, such as `secret/data/app/db` or `database/creds/app`.
    pub path: String,
    /// Key of the secret's data.
    pub key: String,
    /// Pinned KV v2 version.
    pub version: Option<u64>,
}

/// A reference that is refused, with a message naming the variable.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidReference(String);

impl Reference {
    /// Parses `value` (which starts with `vault:`), the value of variable `var`.
    pub fn parse(var: &str, value: &str) -> Result<Self, InvalidReference> {
        let fail = |why: &str| {
            InvalidReference(format!(
                "environment variable {var}: {value:?} is not a valid reference ({why}); \
                 expected vault:PATH#KEY or vault:PATH#KEY#VERSION"
            ))
        };
        let rest = value
            .strip_prefix(PREFIX)
            .ok_or_else(|| fail("it does not start with vault:"))?;
        if rest.is_empty() {
            return Err(fail("empty path"));
        }
        if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(fail("whitespace and control characters are not allowed"));
        }
        if rest.contains('?') {
            return Err(fail("'?' is not allowed"));
        }
        let (path, key, version) = match rest.split('#').collect::<Vec<_>>()[..] {
            [path, key] => (path, key, None),
            [path, key, version] => (path, key, Some(version)),
            [_] => return Err(fail("no #KEY")),
            _ => return Err(fail("too many # parts")),
        };
        check_path(path).map_err(|why| fail(&why))?;
        if key.is_empty() {
            return Err(fail("empty key"));
        }
        let version = match version {
            None => None,
            Some(text) => {
                let number = text
                    .bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| text.parse::<u64>().ok())
                    .flatten()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| fail("the version must be a positive integer"))?;
                if !is_kv2(path) {
                    return Err(fail("a version needs a KV v2 path such as secret/data/app"));
                }
                Some(number)
            }
        };
        Ok(Reference {
            var: var.to_string(),
            path: path.to_string(),
            key: key.to_string(),
            version,
        })
    }
}

/// A path is non-empty, relative, and made of segments of `[A-Za-z0-9._-]` other than
/// `.` and `..`: nothing to encode, nothing that walks to another endpoint.
fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty path".into());
    }
    if path.starts_with('/') {
        return Err("the path must not start with /".into());
    }
    for segment in path.split('/') {
        if segment.is_empty() {
            return Err("empty path segment".into());
        }
        if segment == "." || segment == ".." {
            return Err("'.' and '..' path segments are not allowed".into());
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err("path segments may hold only A-Z a-z 0-9 . _ -".into());
        }
    }
    Ok(())
}

/// In file mode a variable's name is its file's name: `[A-Za-z0-9._-]`, not hidden.
pub fn check_file_name(var: &str) -> Result<(), InvalidReference> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"._-".contains(&b);
    if var.is_empty() || var.starts_with('.') || !var.bytes().all(allowed) {
        return Err(InvalidReference(format!(
            "environment variable {var:?} cannot name a file: use A-Z a-z 0-9 . _ - \
             and do not start with ."
        )));
    }
    Ok(())
}

/// Whether a path reads KV v2 data: it has a `data` segment that is neither the first
/// (the mount) nor the last (the secret), as in `secret/data/app`.
pub fn is_kv2(path: &str) -> bool {
    let segments: Vec<&str> = path.split('/').collect();
    segments.len() > 2 && segments[1..segments.len() - 1].contains(&"data")
}

/// The references among environment variables, in order. Values that do not start with
/// `vault:` are left alone, and so are vaultsync's own `VAULTSYNC_` variables.
pub fn from_env(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Vec<Reference>, InvalidReference> {
    let mut refs = Vec::new();
    for (name, value) in vars {
        if !value.as_encoded_bytes().starts_with(PREFIX.as_bytes())
            || name
                .as_encoded_bytes()
                .starts_with(super::ENV_PREFIX.as_bytes())
        {
            continue;
        }
        let (Some(name), Some(value)) = (name.to_str(), value.to_str()) else {
            return Err(InvalidReference(format!(
                "environment variable {}: a vault: reference must be UTF-8",
                name.to_string_lossy()
            )));
        };
        refs.push(Reference::parse(name, value)?);
    }
    Ok(refs)
}

/// The references that one read answers: all those of one path and version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub path: String,
    pub version: Option<u64>,
    /// `(variable, key)` pairs.
    pub refs: Vec<(String, String)>,
}

impl Group {
    /// The request path below `/v1/`, with `?version=N` for a pinned version.
    pub fn url_path(&self) -> String {
        match self.version {
            Some(v) => format!("{}?version={v}", self.path),
            None => self.path.clone(),
        }
    }

    /// The path (and version) for messages.
    pub fn describe(&self) -> String {
        match self.version {
            Some(v) => format!("{} version {v}", self.path),
            None => self.path.clone(),
        }
    }
}

/// What identifies a group: its path and pinned version.
pub type GroupId = (String, Option<u64>);

/// Groups references by `(path, version)`, so each distinct secret is read once.
pub fn group(refs: Vec<Reference>) -> Vec<Group> {
    let mut groups: BTreeMap<GroupId, Vec<(String, String)>> = BTreeMap::new();
    for r in refs {
        groups
            .entry((r.path, r.version))
            .or_default()
            .push((r.var, r.key));
    }
    groups
        .into_iter()
        .map(|((path, version), refs)| Group {
            path,
            version,
            refs,
        })
        .collect()
}

/// The value of each of the group's variables, from Vault's answer to reading the group
/// (`data.data` for KV v2, `data` otherwise). Strings are taken as they are, anything
/// else as JSON. A missing key is an error naming the keys that exist (names only).
pub fn values(group: &Group, body: &Value) -> Result<Vec<(String, Vec<u8>)>, String> {
    let what = group.describe();
    let data = if is_kv2(&group.path) && body["data"]["metadata"].is_object() {
        match &body["data"]["data"] {
            Value::Null => return Err(format!("{what} is deleted or destroyed")),
            data => data,
        }
    } else {
        &body["data"]
    };
    let Value::Object(map) = data else {
        return Err(format!("{what} holds no key/value data"));
    };
    let mut out = Vec::new();
    for (var, key) in &group.refs {
        let Some(value) = map.get(key) else {
            let keys: Vec<&str> = map.keys().map(String::as_str).collect();
            return Err(format!(
                "{what} has no key {key:?} (variable {var}); its keys are: {}",
                keys.join(", ")
            ));
        };
        let bytes = match value {
            Value::String(s) => s.clone().into_bytes(),
            Value::Null => Vec::new(),
            other => other.to_string().into_bytes(),
        };
        out.push((var.clone(), bytes));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: &str) -> Result<Reference, String> {
        Reference::parse("VAR", value).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_kv_dynamic_and_versions() {
        let r = parse("vault:secret/data/app/db#password").unwrap();
        assert_eq!(
            (r.path.as_str(), r.key.as_str(), r.version),
            ("secret/data/app/db", "password", None)
        );
        assert_eq!(parse("vault:secret/data/app#k#3").unwrap().version, Some(3));
        assert_eq!(parse("vault:kv1/app/db#user").unwrap().path, "kv1/app/db");
        assert_eq!(
            parse("vault:database/creds/my-role#username").unwrap().key,
            "username"
        );
        assert_eq!(
            parse("vault:team/kv/data/a.b_c-d#tls.crt#12")
                .unwrap()
                .version,
            Some(12)
        );
    }

    #[test]
    fn refuses_hostile_and_malformed_references() {
        for (value, why) in [
            ("vault:", "empty path"),
            ("vault:#key", "empty path"),
            ("vault:secret/data/app", "no #KEY"),
            ("vault:secret/data/app#", "empty key"),
            ("vault:secret/data/../other/app#k", "'..'"),
            ("vault:secret/./app#k", "'.'"),
            ("vault:/secret/data/app#k", "must not start with /"),
            ("vault:secret//app#k", "empty path segment"),
            ("vault:secret/data/app/#k", "empty path segment"),
            ("vault:secret/data/app?version=2#k", "'?'"),
            ("vault:secret/data/app#k?x", "'?'"),
            ("vault:secret/data/app#k#1#2", "too many # parts"),
            ("vault:secret/data/my app#k", "whitespace"),
            ("vault:secret/data/app#k\n", "whitespace"),
            ("vault: secret/data/app#k", "whitespace"),
            ("vault:secret/data/app#k\u{0}", "control"),
            ("vault:secret/data/app%2F..#k", "may hold only"),
            ("vault:secret/data/ápp#k", "may hold only"),
            ("vault:secret/data/app\\..#k", "may hold only"),
            ("vault:secret/data/app#k#0", "positive integer"),
            ("vault:secret/data/app#k#-1", "positive integer"),
            ("vault:secret/data/app#k#+1", "positive integer"),
            ("vault:secret/data/app#k#1.5", "positive integer"),
            ("vault:secret/data/app#k#latest", "positive integer"),
            (
                "vault:secret/data/app#k#99999999999999999999999",
                "positive integer",
            ),
            ("vault:kv1/app#k#2", "KV v2 path"),
            ("vault:database/creds/data#k#2", "KV v2 path"),
            ("secret/data/app#k", "does not start with vault:"),
        ] {
            let error = parse(value).expect_err(value);
            assert!(error.contains(why), "{value:?}: {error}");
            assert!(error.starts_with("environment variable VAR: "), "{error}");
        }
    }

    #[test]
    fn file_names_are_plain() {
        assert!(check_file_name("DB_PASSWORD").is_ok());
        for hostile in ["", ".", "..", ".hidden", "a/b", "../x", "A B", "É"] {
            assert!(check_file_name(hostile).is_err(), "{hostile:?}");
        }
    }

    #[test]
    fn kv2_paths_have_a_data_segment_inside() {
        assert!(is_kv2("secret/data/app"));
        assert!(is_kv2("team/kv/data/app/db"));
        assert!(!is_kv2("kv1/app/db"));
        assert!(!is_kv2("database/creds/data"));
        assert!(!is_kv2("data/app"));
    }

    #[test]
    fn collects_references_from_the_environment_only() {
        let vars = [
            ("PLAIN", "hello"),
            ("PASSWORD", "vault:secret/data/app#password"),
            ("VAULTSYNC_VAULT_ROLE", "vault:not/a#reference"),
            ("ALMOST", " vault:secret/data/app#x"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let refs = from_env(vars).unwrap();
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0].var, "PASSWORD");
        let bad = [("BROKEN", "vault:secret/data/../x#k")].map(|(k, v)| (k.into(), v.into()));
        assert!(from_env(bad).unwrap_err().to_string().contains("BROKEN"));
    }

    #[test]
    fn groups_by_path_and_version() {
        let refs = vec![
            Reference::parse("USER", "vault:database/creds/app#username").unwrap(),
            Reference::parse("PASS", "vault:database/creds/app#password").unwrap(),
            Reference::parse("OLD", "vault:secret/data/app#k#1").unwrap(),
            Reference::parse("NEW", "vault:secret/data/app#k").unwrap(),
            Reference::parse("ALSO_NEW", "vault:secret/data/app#other").unwrap(),
        ];
        let groups = group(refs);
        assert_eq!(groups.len(), 3);
        let db = groups
            .iter()
            .find(|g| g.path == "database/creds/app")
            .unwrap();
        assert_eq!(
            db.refs,
            vec![
                ("USER".into(), "username".into()),
                ("PASS".into(), "password".into())
            ]
        );
        let old = groups.iter().find(|g| g.version == Some(1)).unwrap();
        assert_eq!(
            (old.url_path().as_str(), old.describe().as_str()),
            ("secret/data/app?version=1", "secret/data/app version 1")
        );
        let new = groups
            .iter()
            .find(|g| g.path == "secret/data/app" && g.version.is_none())
            .unwrap();
        assert_eq!(new.refs.len(), 2);
    }

    #[test]
    fn picks_values_from_kv2_kv1_and_dynamic_answers() {
        let group = |path: &str, keys: &[&str]| Group {
            path: path.into(),
            version: None,
            refs: keys
                .iter()
                .map(|k| (k.to_uppercase(), k.to_string()))
                .collect(),
        };
        let kv2 = json!({"data": {"data": {"password": "s3cret", "port": 5432}, "metadata": {"version": 2}}});
        let got = values(&group("secret/data/app", &["password", "port"]), &kv2).unwrap();
        assert_eq!(
            got,
            vec![
                ("PASSWORD".into(), b"s3cret".to_vec()),
                ("PORT".into(), b"5432".to_vec())
            ]
        );
        let deleted = json!({"data": {"data": null, "metadata": {"deletion_time": "x"}}});
        assert!(
            values(&group("secret/data/app", &["k"]), &deleted)
                .unwrap_err()
                .contains("deleted")
        );
        let kv1 = json!({"data": {"user": "u"}});
        assert_eq!(
            values(&group("kv1/app", &["user"]), &kv1).unwrap()[0].1,
            b"u"
        );
        let creds = json!({"lease_id": "database/creds/app/x", "data": {"username": "v-u", "password": "p"}});
        assert_eq!(
            values(
                &group("database/creds/app", &["username", "password"]),
                &creds
            )
            .unwrap()
            .len(),
            2
        );
        assert!(
            values(&group("kv1/app", &["k"]), &json!(null))
                .unwrap_err()
                .contains("no key/value data")
        );
    }

    #[test]
    fn a_missing_key_names_keys_never_values() {
        let body = json!({"data": {"data": {"password": "canary-value-123", "user": "canary-user"}, "metadata": {}}});
        let error = values(
            &Group {
                path: "secret/data/app".into(),
                version: Some(4),
                refs: vec![("PW".into(), "pasword".into())],
            },
            &body,
        )
        .unwrap_err();
        assert!(
            error.contains("\"pasword\"")
                && error.contains("PW")
                && error.contains("password, user"),
            "{error}"
        );
        assert!(error.contains("secret/data/app version 4"), "{error}");
        assert!(!error.contains("canary"), "{error}");
    }
}
