//! Apply (IO): write the desired Secret with server-side apply, only when something
//! changed, and restart workloads when its data did.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::events::EventType;
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::render::DesiredSecret;
use super::schedule::{RefreshInputs, expiry_mark, next_refresh};
use super::{SyncedResource, Timing};
use crate::api::WorkloadKind;
use crate::backend::Fetched;
use crate::controller::Context;
use crate::error::{Error, Result};

/// The one field manager of every write.
pub const MANAGER: &str = "vaultsync";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "vaultsync";
pub const EXPIRES_AT: &str = "vaultsync.dev/expires-at";
pub const SOURCE_VERSION: &str = "vaultsync.dev/source-version";
pub const RESTARTED_AT: &str = "vaultsync.dev/restartedAt";

/// Parameters of the operator's patches that are not server-side apply (drift clean-up,
/// restarts, finalizers): the same field manager, so every write is attributable.
pub fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(MANAGER.into()),
        ..PatchParams::default()
    }
}

/// What the apply step did.
pub struct Outcome {
    pub secret_name: String,
    pub expires_at: Timestamp,
    pub next_refresh: Duration,
    pub data_hmac: String,
    /// The data differed from what the Secret held before (or it did not exist).
    pub data_changed: bool,
}

/// Whether `secret` is controlled by `obj` (a controller ownerReference with its uid).
pub fn is_owned_by<K: Resource>(secret: &Secret, obj: &K) -> bool {
    let uid = obj.meta().uid.as_deref();
    secret
        .owner_references()
        .iter()
        .any(|r| Some(r.uid.as_str()) == uid && r.controller == Some(true))
}

/// The current Secret named `name`, if it is ours. A Secret that exists but belongs to
/// someone else is a conflict, and it is never touched.
pub async fn existing_secret<K: SyncedResource>(
    obj: &K,
    ctx: &Context,
    name: &str,
) -> Result<Option<Secret>> {
    let namespace = obj.meta().namespace.as_deref().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    match api.get_opt(name).await? {
        Some(secret) if !is_owned_by(&secret, obj) => {
            let owner = secret
                .owner_references()
                .iter()
                .find(|r| r.controller == Some(true))
                .map(|r| format!("{} {}", r.kind, r.name))
                .unwrap_or_else(|| "no vaultsync resource".into());
            Err(Error::Conflict(format!(
                "Secret {name} already exists and is controlled by {owner}; vaultsync never overwrites a Secret it does not own: choose another spec.output.secret.name or delete that Secret"
            )))
        }
        other => Ok(other),
    }
}

/// Keyed HMAC-SHA256 of a Secret's type and data, so status can show whether content
/// changed without revealing anything about it.
pub fn data_hmac(
    key: &[u8],
    type_: &str,
    data: &BTreeMap<String, crate::backend::SecretValue>,
) -> String {
    use hmac::{Hmac, Mac};
    let mut mac =
        <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(type_.as_bytes());
    for (k, v) in data {
        mac.update(&[0]);
        mac.update(k.as_bytes());
        mac.update(&(v.len() as u64).to_be_bytes());
        mac.update(v.expose());
    }
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("hmac-sha256:{hex}")
}

fn parse_mark(secret: &Secret) -> Option<Timestamp> {
    secret
        .annotations()
        .get(EXPIRES_AT)
        .and_then(|v| v.parse().ok())
}

/// Writes the desired Secret if anything differs, and reports what happened.
pub async fn apply<K: SyncedResource>(
    obj: &K,
    ctx: &Context,
    desired: &DesiredSecret,
    fetched: &Fetched,
    timing: &Timing,
    existing: Option<Secret>,
) -> Result<Outcome> {
    let namespace = obj.meta().namespace.clone().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let now = Timestamp::now();
    let mark = expiry_mark(
        now,
        timing.ttl,
        existing.as_ref().and_then(parse_mark),
        fetched.not_after,
    );

    let mut labels = desired.labels.clone();
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
    let mut annotations = desired.annotations.clone();
    annotations.insert(EXPIRES_AT.into(), mark.to_string());
    annotations.insert(SOURCE_VERSION.into(), fetched.version.clone());
    let data: BTreeMap<String, ByteString> = desired
        .data
        .iter()
        .map(|(k, v)| (k.clone(), ByteString(v.expose().to_vec())))
        .collect();

    let data_same = existing.as_ref().is_some_and(|s| {
        s.data
            .as_ref()
            .map(|d| d == &data)
            .unwrap_or(data.is_empty())
            && s.type_.as_deref().unwrap_or("Opaque") == desired.type_
    });
    let meta_same = existing.as_ref().is_some_and(|s| {
        labels.iter().all(|(k, v)| s.labels().get(k) == Some(v))
            && annotations
                .iter()
                .all(|(k, v)| s.annotations().get(k) == Some(v))
    });

    if let Some(old) = &existing
        && old.type_.as_deref().unwrap_or("Opaque") != desired.type_
    {
        // The type of a Secret is immutable: replace the Secret.
        let uid = old.metadata.uid.clone();
        api.delete(
            &desired.name,
            &DeleteParams {
                preconditions: Some(Preconditions {
                    uid,
                    resource_version: None,
                }),
                ..DeleteParams::default()
            },
        )
        .await?;
    }

    if !(data_same && meta_same) {
        let owner = OwnerReference {
            api_version: K::api_version(&()).into_owned(),
            kind: K::kind(&()).into_owned(),
            name: obj.name_any(),
            uid: obj.meta().uid.clone().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: None,
        };
        let secret = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": desired.name,
                "namespace": namespace,
                "labels": labels,
                "annotations": annotations,
                "ownerReferences": [owner],
            },
            "type": desired.type_,
            "data": data,
        });
        api.patch(
            &desired.name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await?;
        // Keys someone else added are not ours under server-side apply; drop them so
        // the copy is exactly the source.
        if let Some(old) = &existing {
            let extra: BTreeMap<&String, Option<()>> = old
                .data
                .iter()
                .flatten()
                .filter(|(k, _)| !data.contains_key(*k))
                .map(|(k, _)| (k, None))
                .collect();
            if !extra.is_empty() {
                api.patch(
                    &desired.name,
                    &patch_params(),
                    &Patch::Merge(json!({"data": extra})),
                )
                .await?;
            }
        }
        ctx.metrics
            .secret_write(if data_same { "metadata" } else { "data" });
    }

    let created = existing.is_none();
    let data_changed = !data_same;
    if data_changed {
        let (reason, note) = if created {
            (
                "SecretSynced",
                format!(
                    "created Secret {} from version {}",
                    desired.name, fetched.version
                ),
            )
        } else {
            (
                "SecretRotated",
                format!(
                    "updated Secret {} to version {}",
                    desired.name, fetched.version
                ),
            )
        };
        ctx.publish(obj, EventType::Normal, reason, note).await;
        if !created {
            restart_targets(obj, ctx, now).await;
        }
    }

    let lifetime = fetched.lease.as_ref().map(|l| {
        let start = l
            .expires_at
            .saturating_sub(jiff::SignedDuration::try_from(l.duration).unwrap_or_default())
            .unwrap_or(l.expires_at);
        (start, l.expires_at)
    });
    let next = next_refresh(
        &RefreshInputs {
            now,
            refresh_interval: timing.refresh_interval,
            expires_at: mark,
            ttl: timing.ttl,
            lifetime,
            renewal_percent: obj.renewal_percent(),
        },
        rand::random::<f64>(),
    );
    ctx.metrics.set_expiry(
        &namespace,
        &desired.name,
        mark.as_millisecond() as f64 / 1000.0,
    );
    Ok(Outcome {
        secret_name: desired.name.clone(),
        expires_at: mark,
        next_refresh: next,
        data_hmac: data_hmac(&ctx.hmac_key, &desired.type_, &desired.data),
        data_changed,
    })
}

/// Bumps a pod-template annotation of each target, as `kubectl rollout restart` does.
async fn restart_targets<K: SyncedResource>(obj: &K, ctx: &Context, now: Timestamp) {
    let namespace = obj.meta().namespace.clone().unwrap_or_default();
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: now.to_string()}}}}});
    for target in obj.policy().rollout_restart_targets.iter().flatten() {
        let client = ctx.client.clone();
        let result = match target.kind {
            WorkloadKind::Deployment => {
                bump::<Deployment>(client, &namespace, &target.name, &patch).await
            }
            WorkloadKind::StatefulSet => {
                bump::<StatefulSet>(client, &namespace, &target.name, &patch).await
            }
            WorkloadKind::DaemonSet => {
                bump::<DaemonSet>(client, &namespace, &target.name, &patch).await
            }
        };
        let (type_, reason, note) = match result {
            Ok(()) => (
                EventType::Normal,
                "WorkloadRestarted",
                format!(
                    "restarted {:?} {} after the Secret changed",
                    target.kind, target.name
                ),
            ),
            Err(e) => (
                EventType::Warning,
                "RestartFailed",
                format!(
                    "could not restart {:?} {}: {}",
                    target.kind,
                    target.name,
                    short_kube_error(&e)
                ),
            ),
        };
        ctx.publish(obj, type_, reason, note).await;
    }
}

/// Merge-patches a workload's pod template.
async fn bump<W>(
    client: kube::Client,
    namespace: &str,
    name: &str,
    patch: &serde_json::Value,
) -> kube::Result<()>
where
    W: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<W>::namespaced(client, namespace)
        .patch(name, &patch_params(), &Patch::Merge(patch))
        .await
        .map(|_| ())
}

fn short_kube_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => other.to_string(),
    }
}
