//! How the operator marks and recognises what it owns: the one field manager, the labels
//! and annotations it sets, controller ownerReferences, and the keyed HMAC of a Secret's
//! data that status records.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Secret;
use kube::api::PatchParams;
use kube::{Resource, ResourceExt};

use crate::backend::SecretValue;

/// The one field manager of every write.
pub const MANAGER: &str = "vaultsync";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "vaultsync";
pub const EXPIRES_AT: &str = "vaultsync.dev/expires-at";
pub const SOURCE_VERSION: &str = "vaultsync.dev/source-version";
pub const RESTARTED_AT: &str = "vaultsync.dev/restartedAt";
/// Finalizer of resources whose leases are revoked before the resource goes.
pub const REVOKE_FINALIZER: &str = "vaultsync.dev/revoke-lease";

/// Parameters of the operator's patches that are not server-side apply (drift clean-up,
/// restarts, finalizers, failure conditions): the same field manager, so every write is
/// attributable.
pub fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(MANAGER.into()),
        ..PatchParams::default()
    }
}

/// Whether `object` (a Secret or ConfigMap) is controlled by `obj` (a controller
/// ownerReference with its uid).
pub fn is_owned_by<R: Resource, K: Resource>(object: &R, obj: &K) -> bool {
    let uid = obj.meta().uid.as_deref();
    object
        .owner_references()
        .iter()
        .any(|r| Some(r.uid.as_str()) == uid && r.controller == Some(true))
}

/// The `expires-at` mark of a managed Secret, if it carries a valid one.
pub fn expires_at(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<jiff::Timestamp> {
    meta.annotations.as_ref()?.get(EXPIRES_AT)?.parse().ok()
}

/// The controller ownerReference of an object, if it names a vaultsync resource (whose
/// uid the caller still has to check when it matters).
pub fn vaultsync_controller(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
        .filter(|r| r.api_version.starts_with("vaultsync.dev/"))
}

/// Keyed HMAC-SHA256 of a Secret's type and data, so status can show whether content
/// changed without revealing anything about it.
pub fn data_hmac(key: &[u8], type_: &str, data: &BTreeMap<String, SecretValue>) -> String {
    hmac_of(
        key,
        type_,
        data.iter().map(|(k, v)| (k.as_str(), v.expose())),
    )
}

/// The same HMAC over what a Secret in the cluster holds.
pub fn secret_hmac(key: &[u8], secret: &Secret) -> String {
    let type_ = secret.type_.as_deref().unwrap_or("Opaque");
    hmac_of(
        key,
        type_,
        secret
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.0.as_slice())),
    )
}

fn hmac_of<'a>(key: &[u8], type_: &str, data: impl Iterator<Item = (&'a str, &'a [u8])>) -> String {
    use hmac::{Hmac, Mac};
    let mut mac =
        <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(type_.as_bytes());
    for (k, v) in data {
        mac.update(&[0]);
        mac.update(k.as_bytes());
        mac.update(&(v.len() as u64).to_be_bytes());
        mac.update(v);
    }
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("hmac-sha256:{hex}")
}

/// The label and annotation keys the operator owns on `secret` (written by its field
/// manager, at creation or by server-side apply), from its managed fields.
pub fn owned_metadata_keys(secret: &Secret) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut labels = BTreeSet::new();
    let mut annotations = BTreeSet::new();
    for entry in secret.metadata.managed_fields.iter().flatten() {
        if entry.manager.as_deref() != Some(MANAGER) {
            continue;
        }
        let Some(fields) = &entry.fields_v1 else {
            continue;
        };
        let metadata = &fields.0["f:metadata"];
        for (set, field) in [
            (&mut labels, "f:labels"),
            (&mut annotations, "f:annotations"),
        ] {
            if let Some(map) = metadata[field].as_object() {
                set.extend(
                    map.keys()
                        .filter_map(|k| k.strip_prefix("f:"))
                        .map(str::to_string),
                );
            }
        }
    }
    (labels, annotations)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_of_desired_and_written_data_agree() {
        let data = BTreeMap::from([("password".to_string(), SecretValue::from("s3cret"))]);
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "type": "Opaque",
            "data": {"password": k8s_openapi::ByteString(b"s3cret".to_vec())},
        }))
        .expect("secret");
        assert_eq!(data_hmac(b"k", "Opaque", &data), secret_hmac(b"k", &secret));
        assert_ne!(
            data_hmac(b"other", "Opaque", &data),
            secret_hmac(b"k", &secret)
        );
    }

    #[test]
    fn owned_keys_come_from_the_operators_apply_entry() {
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"managedFields": [
                {"manager": "vaultsync", "operation": "Apply", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:metadata": {"f:labels": {"f:team": {}, "f:app.kubernetes.io/managed-by": {}},
                                             "f:annotations": {"f:vaultsync.dev/expires-at": {}}}}},
                {"manager": "kubectl", "operation": "Update", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:metadata": {"f:labels": {"f:mine": {}}}}}
            ]}
        }))
        .expect("secret");
        let (labels, annotations) = owned_metadata_keys(&secret);
        assert_eq!(
            labels.into_iter().collect::<Vec<_>>(),
            vec!["app.kubernetes.io/managed-by", "team"]
        );
        assert_eq!(
            annotations.into_iter().collect::<Vec<_>>(),
            vec!["vaultsync.dev/expires-at"]
        );
    }
}
