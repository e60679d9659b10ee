//! Plan (pure): what to write, given the Secret as it is and the Secret as it should be.
//! The executor in `apply` carries the plan out; every decision is made here and
//! table-tested below.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use super::render::DesiredSecret;
use super::schedule::{RefreshInputs, expiry_mark, next_refresh};
use crate::ownership::{
    EXPIRES_AT, MANAGED_BY_LABEL, MANAGED_BY_VALUE, SOURCE_VERSION, owned_metadata_keys,
};

/// What the plan needs besides the two Secrets.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    pub now: Timestamp,
    pub refresh_interval: Duration,
    pub ttl: Duration,
    pub renewal_percent: u8,
    /// Version of the material, for the annotation and Events.
    pub version: &'a str,
    /// End of the material's validity (lease or certificate end), if it has one.
    pub not_after: Option<Timestamp>,
    /// Start and end of the lease or certificate, for the renewal point.
    pub lifetime: Option<(Timestamp, Timestamp)>,
    /// Jitter in `[0, 1)`.
    pub jitter: f64,
}

/// Which part of the Secret to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// Labels or annotations only (the data is the same).
    Metadata,
    /// The data (and everything else).
    Data,
}

/// Everything the executor does, decided in advance.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Server-side apply of the whole Secret, or nothing.
    pub write: Option<Write>,
    /// The Secret's type changes, which Kubernetes forbids in place: delete it first.
    pub replace: bool,
    /// Data keys someone else added, removed after the write.
    pub strip_keys: Vec<String>,
    /// Labels and annotations the operator wrote that the spec no longer asks for.
    pub strip_labels: Vec<String>,
    pub strip_annotations: Vec<String>,
    /// Labels and annotations to apply, the operator's own included.
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The `expires-at` mark.
    pub expires_at: Timestamp,
    /// `SecretRotated` with its note, when the data of an existing Secret changed; a new
    /// Secret has none.
    pub event: Option<(&'static str, String)>,
    /// Restart the rollout targets (the data of an existing Secret changed).
    pub restart: bool,
    pub next_refresh: Duration,
}

pub fn mark_of(secret: &Secret) -> Option<Timestamp> {
    crate::ownership::expires_at(&secret.metadata)
}

pub fn plan(existing: Option<&Secret>, desired: &DesiredSecret, inputs: &Inputs<'_>) -> Plan {
    let expires_at = expiry_mark(
        inputs.now,
        inputs.ttl,
        existing.and_then(mark_of),
        inputs.not_after,
    );
    let mut labels = desired.labels.clone();
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
    let mut annotations = desired.annotations.clone();
    annotations.insert(EXPIRES_AT.into(), expires_at.to_string());
    annotations.insert(SOURCE_VERSION.into(), inputs.version.to_string());

    let type_of = |s: &Secret| s.type_.clone().unwrap_or_else(|| "Opaque".into());
    let replace = existing.is_some_and(|s| type_of(s) != desired.type_);
    let current = existing.filter(|_| !replace);
    let data: BTreeMap<String, ByteString> = desired
        .data
        .iter()
        .map(|(k, v)| (k.clone(), ByteString(v.expose().to_vec())))
        .collect();
    let data_same = current.is_some_and(|s| s.data.clone().unwrap_or_default() == data);
    // What the spec no longer asks for leaves at once.
    let (owned_labels, owned_annotations) = current.map(owned_metadata_keys).unwrap_or_default();
    let present = |s: &Secret, key: &String, labels: bool| {
        if labels {
            s.labels().contains_key(key)
        } else {
            s.annotations().contains_key(key)
        }
    };
    let strip_labels: Vec<String> = owned_labels
        .into_iter()
        .filter(|k| !labels.contains_key(k) && current.is_some_and(|s| present(s, k, true)))
        .collect();
    let strip_annotations: Vec<String> = owned_annotations
        .into_iter()
        .filter(|k| !annotations.contains_key(k) && current.is_some_and(|s| present(s, k, false)))
        .collect();
    let meta_same = current.is_some_and(|s| {
        labels.iter().all(|(k, v)| s.labels().get(k) == Some(v))
            && annotations
                .iter()
                .all(|(k, v)| s.annotations().get(k) == Some(v))
    }) && strip_labels.is_empty()
        && strip_annotations.is_empty();
    let write = match (data_same, meta_same) {
        (true, true) => None,
        (true, false) => Some(Write::Metadata),
        (false, _) => Some(Write::Data),
    };
    let strip_keys = current
        .iter()
        .flat_map(|s| s.data.iter().flatten())
        .map(|(k, _)| k)
        .filter(|k| !data.contains_key(*k))
        .cloned()
        .collect();
    let created = existing.is_none();
    // A first write needs no Event: the Ready condition says it. Changed data does.
    let event = (!data_same && !created).then(|| {
        (
            "SecretRotated",
            format!(
                "updated Secret {} to version {}",
                desired.name, inputs.version
            ),
        )
    });
    let next_refresh = next_refresh(
        &RefreshInputs {
            now: inputs.now,
            refresh_interval: inputs.refresh_interval,
            expires_at,
            ttl: inputs.ttl,
            lifetime: inputs.lifetime,
            renewal_percent: inputs.renewal_percent,
        },
        inputs.jitter,
    );
    Plan {
        write,
        replace,
        strip_keys,
        strip_labels,
        strip_annotations,
        labels,
        annotations,
        expires_at,
        event,
        restart: !data_same && !created,
        next_refresh,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::SecretValue;
    use serde_json::json;

    fn now() -> Timestamp {
        "2026-06-01T12:00:00Z".parse().expect("ts")
    }

    fn inputs() -> Inputs<'static> {
        Inputs {
            now: now(),
            refresh_interval: Duration::from_secs(1800),
            ttl: Duration::from_secs(3600),
            renewal_percent: 67,
            version: "3",
            not_after: None,
            lifetime: None,
            jitter: 0.0,
        }
    }

    fn desired(password: &str, labels: &[(&str, &str)]) -> DesiredSecret {
        DesiredSecret {
            name: "app".into(),
            type_: "Opaque".into(),
            data: BTreeMap::from([("password".into(), SecretValue::from(password))]),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            annotations: BTreeMap::new(),
        }
    }

    /// The Secret as the operator would have written it for `d`, with `extra` merged in.
    fn written(d: &DesiredSecret, extra: serde_json::Value) -> Secret {
        let p = plan(None, d, &inputs());
        let owned: serde_json::Map<String, serde_json::Value> = p
            .labels
            .keys()
            .map(|k| (format!("f:{k}"), json!({})))
            .collect();
        let owned_annotations: serde_json::Map<String, serde_json::Value> = p
            .annotations
            .keys()
            .map(|k| (format!("f:{k}"), json!({})))
            .collect();
        let mut secret = json!({
            "metadata": {
                "name": "app",
                "labels": p.labels,
                "annotations": p.annotations,
                "managedFields": [{"manager": "vaultsync", "operation": "Apply", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {"f:labels": owned, "f:annotations": owned_annotations}}}],
            },
            "type": d.type_,
            "data": d.data.iter().map(|(k, v)| (k.clone(), ByteString(v.expose().to_vec()))).collect::<BTreeMap<_, _>>(),
        });
        json_patch::merge(&mut secret, &extra);
        serde_json::from_value(secret).expect("secret")
    }

    #[test]
    fn a_new_secret_is_written_without_an_event_or_a_restart() {
        let p = plan(None, &desired("a", &[]), &inputs());
        assert_eq!(p.write, Some(Write::Data));
        assert_eq!(p.event, None, "the Ready condition says it");
        assert!(!p.restart && !p.replace);
        assert_eq!(p.labels[MANAGED_BY_LABEL], MANAGED_BY_VALUE);
        assert_eq!(p.annotations[SOURCE_VERSION], "3");
        assert_eq!(p.expires_at, "2026-06-01T13:00:00Z".parse().expect("ts"));
    }

    #[test]
    fn unchanged_data_writes_nothing() {
        let d = desired("a", &[("team", "x")]);
        let p = plan(Some(&written(&d, json!({}))), &d, &inputs());
        assert_eq!(p.write, None);
        assert_eq!(p.event, None);
        assert!(!p.restart);
    }

    #[test]
    fn changed_data_rotates_and_restarts() {
        let old = written(&desired("a", &[]), json!({}));
        let p = plan(Some(&old), &desired("b", &[]), &inputs());
        assert_eq!(p.write, Some(Write::Data));
        assert_eq!(p.event.map(|e| e.0), Some("SecretRotated"));
        assert!(p.restart);
    }

    #[test]
    fn a_removed_label_leaves_at_once_but_foreign_labels_stay_alone() {
        let old = written(&desired("a", &[("team", "x")]), json!({}));
        let p = plan(Some(&old), &desired("a", &[]), &inputs());
        assert_eq!(p.write, Some(Write::Metadata), "the spec dropped a label");
        assert_eq!(p.strip_labels, vec!["team".to_string()]);
        // A label someone else added is not the operator's to remove: no write.
        let d = desired("a", &[]);
        let foreign = written(&d, json!({"metadata": {"labels": {"mine": "y"}}}));
        assert_eq!(plan(Some(&foreign), &d, &inputs()).write, None);
    }

    #[test]
    fn an_edited_label_value_is_put_back() {
        let d = desired("a", &[("team", "x")]);
        let edited = written(&d, json!({"metadata": {"labels": {"team": "evil"}}}));
        assert_eq!(
            plan(Some(&edited), &d, &inputs()).write,
            Some(Write::Metadata)
        );
    }

    #[test]
    fn added_keys_are_stripped_and_count_as_a_data_change() {
        let d = desired("a", &[]);
        let planted = written(&d, json!({"data": {"extra": "eA=="}}));
        let p = plan(Some(&planted), &d, &inputs());
        assert_eq!(p.write, Some(Write::Data));
        assert_eq!(p.strip_keys, vec!["extra".to_string()]);
    }

    #[test]
    fn a_type_change_replaces_the_secret() {
        let old = written(&desired("a", &[]), json!({}));
        let mut d = desired("a", &[]);
        d.type_ = "kubernetes.io/basic-auth".into();
        let p = plan(Some(&old), &d, &inputs());
        assert!(p.replace);
        assert_eq!(p.write, Some(Write::Data));
        assert_eq!(p.event.map(|e| e.0), Some("SecretRotated"));
        assert!(p.strip_keys.is_empty());
    }

    #[test]
    fn the_mark_is_capped_by_the_lease_and_the_refresh_by_its_renewal_point() {
        let end: Timestamp = "2026-06-01T12:10:00Z".parse().expect("ts");
        let start: Timestamp = "2026-06-01T11:50:00Z".parse().expect("ts");
        let p = plan(
            None,
            &desired("a", &[]),
            &Inputs {
                not_after: Some(end),
                lifetime: Some((start, end)),
                renewal_percent: 50,
                ..inputs()
            },
        );
        assert_eq!(p.expires_at, end);
        // Half of the 20 minute lease has passed: renew now (the floor is one second).
        assert_eq!(p.next_refresh, Duration::from_secs(1));
    }
}
