//! Apply (IO): carry out a [`Plan`]: write the Secret with server-side apply, strip keys
//! someone else added, publish the Event, and restart workloads.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::SyncedResource;
use super::plan::{Plan, Write};
use super::render::DesiredSecret;
use crate::api::WorkloadKind;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::events::EventType;
use crate::ownership::{MANAGER, RESTARTED_AT, is_owned_by, patch_params};

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

/// Writes the Secret as planned and publishes the plan's Event.
pub async fn execute<K: SyncedResource>(
    obj: &K,
    ctx: &Context,
    desired: &DesiredSecret,
    plan: &Plan,
    existing: Option<&Secret>,
) -> Result<()> {
    let namespace = obj.meta().namespace.clone().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    if plan.replace
        && let Some(old) = existing
    {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: old.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        api.delete(&desired.name, &params)
            .await
            .map_err(|e| refused(&desired.name, e))?;
    }
    let Some(write) = plan.write else {
        return Ok(());
    };
    let owner = OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: obj.name_any(),
        uid: obj.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: None,
    };
    let data: BTreeMap<&String, ByteString> = desired
        .data
        .iter()
        .map(|(k, v)| (k, ByteString(v.expose().to_vec())))
        .collect();
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": desired.name,
            "namespace": namespace,
            "labels": plan.labels,
            "annotations": plan.annotations,
            "ownerReferences": [owner],
        },
        "type": desired.type_,
        "data": data,
    });
    let mut written = match existing.filter(|_| !plan.replace) {
        // A create fails if the Secret exists: someone else created it since ownership
        // was checked, or the cache that let the check be skipped was behind. Either way
        // ownership is checked again, and only a Secret of this resource is written.
        None => match create(&api, &secret).await? {
            Some(created) => created,
            None => match existing_secret(obj, ctx, &desired.name).await? {
                Some(ours) => update(&api, &desired.name, secret, &ours).await?,
                None => {
                    return Err(Error::Conflict(format!(
                        "Secret {} was created and deleted by someone else while vaultsync wrote it; retrying",
                        desired.name
                    )));
                }
            },
        },
        Some(old) => update(&api, &desired.name, secret, old).await?,
    };
    if !(plan.strip_keys.is_empty()
        && plan.strip_labels.is_empty()
        && plan.strip_annotations.is_empty())
    {
        // Keys someone else added, and labels or annotations the spec dropped, are removed
        // so the copy is exactly what the spec and the source say.
        let nulls = |keys: &[String]| -> serde_json::Value {
            keys.iter()
                .map(|k| (k.clone(), serde_json::Value::Null))
                .collect()
        };
        // The resourceVersion makes the patch apply to the Secret just written, or fail.
        let mut metadata = json!({"resourceVersion": written.metadata.resource_version});
        if !plan.strip_labels.is_empty() {
            metadata["labels"] = nulls(&plan.strip_labels);
        }
        if !plan.strip_annotations.is_empty() {
            metadata["annotations"] = nulls(&plan.strip_annotations);
        }
        let mut patch = json!({"metadata": metadata});
        if !plan.strip_keys.is_empty() {
            patch["data"] = nulls(&plan.strip_keys);
        }
        written = api
            .patch(&desired.name, &patch_params(), &Patch::Merge(patch))
            .await
            .map_err(|e| refused(&desired.name, e))?;
    }
    ctx.record_write(&namespace, &desired.name, written.metadata.resource_version);
    ctx.metrics.secret_write(match write {
        Write::Metadata => "metadata",
        Write::Data => "data",
    });
    if let Some((reason, note)) = &plan.event {
        ctx.publish(obj, EventType::Normal, reason, note.clone())
            .await;
    }
    Ok(())
}

/// Creates the Secret; `None` if one of that name exists.
async fn create(api: &Api<Secret>, secret: &serde_json::Value) -> Result<Option<Secret>> {
    // The serde error is reduced to its class and place: its text may quote a value.
    let new: Secret = serde_json::from_value(secret.clone()).map_err(|e| {
        Error::InvalidData(format!(
            "cannot build Secret {} ({:?} error at column {})",
            secret["metadata"]["name"].as_str().unwrap_or_default(),
            e.classify(),
            e.column()
        ))
    })?;
    let params = PostParams {
        field_manager: Some(MANAGER.into()),
        ..PostParams::default()
    };
    match api.create(&params, &new).await {
        Ok(created) => Ok(Some(created)),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
        Err(e) => Err(refused(&new.name_any(), e)),
    }
}

/// Applies the Secret over `old`, whose ownership was checked: the resourceVersion makes
/// the write fail if the Secret changed since.
async fn update(
    api: &Api<Secret>,
    name: &str,
    mut secret: serde_json::Value,
    old: &Secret,
) -> Result<Secret> {
    secret["metadata"]["resourceVersion"] = json!(old.metadata.resource_version);
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&secret),
    )
    .await
    .map_err(|e| refused(name, e))
}

/// A write the apiserver refuses as invalid (400, 422: an invalid label, say) is the
/// spec's to fix: it becomes `InvalidSpec`, so Ready turns False for this generation.
fn refused(name: &str, e: kube::Error) -> Error {
    match e {
        kube::Error::Api(s) if s.code == 400 || s.code == 422 => Error::InvalidSpec(format!(
            "the apiserver refused to write Secret {name} ({}): {}; fix spec.output.secret",
            s.code, s.message
        )),
        other => Error::Kube(other),
    }
}

/// Bumps a pod-template annotation of each target, as `kubectl rollout restart` does.
pub async fn restart_targets<K: SyncedResource>(obj: &K, ctx: &Context, now: Timestamp) {
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
