//! Secret values: a multi-key-value secret expanded to one Secret key per entry, and the
//! transforms of single values. Neither quotes a value in its errors.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::api::{AzureContentType, Transform};
use crate::backend::SecretValue;
use crate::error::{Error, Result};
use crate::sync::render::is_valid_key;

/// A JSON or YAML object becomes one Secret key per entry. Values are strings, or numbers
/// and booleans written as their text; null, nested objects and arrays are refused naming
/// the key, and so are keys that are not valid Secret keys and, in JSON, repeated keys.
/// Parse errors give only a line and column: the value's text is never quoted.
pub fn multi_key_value(
    value: &str,
    content_type: AzureContentType,
) -> Result<BTreeMap<String, SecretValue>> {
    let entries: Vec<(String, Scalar)> = match content_type {
        AzureContentType::Json => json_entries(value)?,
        AzureContentType::Yaml => yaml_entries(value)?,
    };
    let mut data = BTreeMap::new();
    for (key, scalar) in entries {
        let shown: String = key.chars().take(64).collect();
        if !is_valid_key(&key) {
            return Err(Error::InvalidData(format!(
                "entry {shown:?} is not a valid Secret key (letters, digits, '-', '_' and '.', at \
                 most 253 characters)"
            )));
        }
        let text = match scalar {
            Scalar::Text(text) => text,
            Scalar::Refused(what) => {
                return Err(Error::InvalidData(format!(
                    "entry {shown:?} is {what}: each entry must be a string, number or boolean"
                )));
            }
        };
        if data.insert(key, SecretValue::new(text)).is_some() {
            return Err(Error::InvalidData(format!(
                "entry {shown:?} appears more than once"
            )));
        }
    }
    Ok(data)
}

enum Scalar {
    Text(String),
    Refused(&'static str),
}

fn json_entries(value: &str) -> Result<Vec<(String, Scalar)>> {
    // serde_json's own messages can quote the input; keep only the position.
    let parse_error = |e: serde_json::Error| {
        Error::InvalidData(format!(
            "the secret is not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    };
    let parsed: serde_json::Value = serde_json::from_str(value).map_err(parse_error)?;
    let serde_json::Value::Object(map) = parsed else {
        return Err(Error::InvalidData(
            "the secret's JSON is not an object of keys and values".into(),
        ));
    };
    // A JSON map keeps the last of repeated keys silently; count them to refuse instead.
    let keys: KeyCount = serde_json::from_str(value).map_err(parse_error)?;
    if keys.0 != map.len() {
        return Err(Error::InvalidData(
            "the secret's JSON object repeats a key".into(),
        ));
    }
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let scalar = match v {
                serde_json::Value::String(s) => Scalar::Text(s),
                serde_json::Value::Number(n) => Scalar::Text(n.to_string()),
                serde_json::Value::Bool(b) => Scalar::Text(b.to_string()),
                serde_json::Value::Null => Scalar::Refused("null"),
                serde_json::Value::Array(_) => Scalar::Refused("an array"),
                serde_json::Value::Object(_) => Scalar::Refused("a nested object"),
            };
            (k, scalar)
        })
        .collect())
}

/// The number of entries of a top-level object, repeated keys included.
struct KeyCount(usize);

impl<'de> serde::Deserialize<'de> for KeyCount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = KeyCount;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<KeyCount, A::Error> {
                let mut n = 0;
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {
                    n += 1;
                }
                Ok(KeyCount(n))
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// Marks the error a nested value raises, so the entry can be named.
const NESTED: &str = "vaultsync: nested value";

/// Streams the YAML document's top-level mapping. A sequence or mapping value is refused
/// at its first event, before anything in it (an alias to a large anchor included) is
/// read: building the whole tree first would let a 25 KB document of aliases expand to
/// gigabytes.
fn yaml_entries(value: &str) -> Result<Vec<(String, Scalar)>> {
    use serde::Deserialize as _;
    let position = |e: &serde_yaml::Error| match e.location() {
        Some(at) => format!(" (line {}, column {})", at.line(), at.column()),
        None => String::new(),
    };
    let entries = YamlEntries::deserialize(serde_yaml::Deserializer::from_str(value))
        .map_err(|e| {
            let text = e.to_string();
            if let Some(rest) = text.split_once(NESTED).map(|(_, r)| r) {
                // "<NESTED>: <key>"; the key is a name, never a value.
                let key = rest.trim_start_matches(": ").split(" at line").next().unwrap_or("");
                let shown: String = key.chars().take(64).collect();
                Error::InvalidData(format!(
                    "entry {shown:?} is a nested value (a sequence or mapping): each entry must                      be a string, number or boolean"
                ))
            } else if text.contains("not a mapping") {
                Error::InvalidData("the secret's YAML is not a mapping of keys and values".into())
            } else {
                Error::InvalidData(format!(
                    "the secret is not a valid YAML document{}",
                    position(&e)
                ))
            }
        })?;
    Ok(entries.0)
}

/// The entries of a top-level YAML mapping, values as scalars only.
struct YamlEntries(Vec<(String, Scalar)>);

impl<'de> serde::Deserialize<'de> for YamlEntries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = YamlEntries;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("not a mapping")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<YamlEntries, A::Error> {
                use serde::de::Error as _;
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<YamlScalar>()? {
                    let key = match key.0 {
                        Scalar::Text(k) => k,
                        Scalar::Refused(_) => {
                            return Err(A::Error::custom(
                                "the secret's YAML has a key that is not a string",
                            ));
                        }
                    };
                    match map.next_value::<YamlScalar>() {
                        Ok(v) => entries.push((key, v.0)),
                        Err(e) if e.to_string().contains(NESTED) => {
                            return Err(A::Error::custom(format!("{NESTED}: {key}")));
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(YamlEntries(entries))
            }
        }
        d.deserialize_map(Entries)
    }
}

/// One YAML scalar as text; null and tags are refused, sequences and mappings stop the
/// parse at once.
struct YamlScalar(Scalar);

impl<'de> serde::Deserialize<'de> for YamlScalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct One;
        impl<'de> serde::de::Visitor<'de> for One {
            type Value = YamlScalar;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<YamlScalar, E> {
                Ok(YamlScalar(Scalar::Text(v.to_string())))
            }
            fn visit_bool<E: serde::de::Error>(
                self,
                v: bool,
            ) -> std::result::Result<YamlScalar, E> {
                Ok(YamlScalar(Scalar::Text(v.to_string())))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<YamlScalar, E> {
                Ok(YamlScalar(Scalar::Text(v.to_string())))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<YamlScalar, E> {
                Ok(YamlScalar(Scalar::Text(v.to_string())))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<YamlScalar, E> {
                Ok(YamlScalar(Scalar::Text(
                    serde_yaml::Number::from(v).to_string(),
                )))
            }
            fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<YamlScalar, E> {
                Ok(YamlScalar(Scalar::Refused("null")))
            }
            fn visit_none<E: serde::de::Error>(self) -> std::result::Result<YamlScalar, E> {
                Ok(YamlScalar(Scalar::Refused("null")))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                _: A,
            ) -> std::result::Result<YamlScalar, A::Error> {
                Err(serde::de::Error::custom(NESTED))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                _: A,
            ) -> std::result::Result<YamlScalar, A::Error> {
                Err(serde::de::Error::custom(NESTED))
            }
            fn visit_enum<A: serde::de::EnumAccess<'de>>(
                self,
                _: A,
            ) -> std::result::Result<YamlScalar, A::Error> {
                Ok(YamlScalar(Scalar::Refused("a tagged value")))
            }
        }
        d.deserialize_any(One)
    }
}

/// Applies `output.transform` in order, as akv2k8s does: `trim` removes leading and
/// trailing whitespace (Unicode whitespace for UTF-8 text, ASCII otherwise),
/// `base64encode` writes standard base64 with padding, `base64decode` reads standard
/// base64 (padding optional, line breaks ignored; URL-safe base64 is refused).
pub fn apply_transforms(value: Vec<u8>, transforms: &[Transform]) -> Result<Vec<u8>> {
    transforms
        .iter()
        .enumerate()
        .try_fold(value, |value, (i, transform)| match transform {
            Transform::Trim => Ok(match std::str::from_utf8(&value) {
                Ok(text) => text.trim().as_bytes().to_vec(),
                Err(_) => value.trim_ascii().to_vec(),
            }),
            Transform::Base64encode => Ok(STANDARD.encode(&value).into_bytes()),
            Transform::Base64decode => {
                let compact: Vec<u8> = value
                    .iter()
                    .copied()
                    .filter(|b| !matches!(b, b'\r' | b'\n'))
                    .collect();
                base64::engine::general_purpose::GeneralPurpose::new(
                    &base64::alphabet::STANDARD,
                    base64::engine::GeneralPurposeConfig::new()
                        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
                )
                .decode(&compact)
                .map_err(|_| {
                    Error::InvalidData(format!(
                        "transform {} (base64decode): the value ({} bytes) is not standard base64",
                        i + 1,
                        value.len()
                    ))
                })
            }
        })
}
