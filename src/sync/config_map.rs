//! The ConfigMap output (akv2k8s' `output.configMap`): public material only, a
//! certificate's chain or a key's public key, which the backend shapes and nothing else.
//! The ConfigMap is owner-referenced like a managed Secret and labelled managed-by
//! vaultsync; it is created only if absent and replaced only at the version read, so a
//! ConfigMap someone else made is never taken over. It does not expire (nothing in it is
//! secret); it goes with its resource, and is rewritten when the object changes.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use serde_json::json;

use super::{SyncedResource, apply, status, timing};
use crate::backend::Backend;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::events::EventType;
use crate::ownership::{
    MANAGED_BY_LABEL, MANAGED_BY_VALUE, SOURCE_VERSION, data_hmac, is_owned_by,
};

/// Reads the source and writes ConfigMap `name`.
pub async fn run<K: SyncedResource>(obj: &K, ctx: &Context, name: &str) -> Result<Action> {
    let timing = timing(obj, ctx)?;
    let namespace = obj.namespace().unwrap_or_default();
    let backend = K::backend(ctx);
    let request = backend.resolve(&namespace, obj.source())?;
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    let existing = api.get_opt(name).await?;
    let uid = obj.meta().uid.clone().unwrap_or_default();
    if let Some(cm) = &existing
        && !is_owned_by(cm, obj)
    {
        return Err(Error::Conflict(format!(
            "ConfigMap {name} already exists and is not this resource's; vaultsync never overwrites a ConfigMap it does not own: choose another spec.output.configMap.name or delete that ConfigMap"
        )));
    }
    let fresh = crate::sync::read_fresh(obj, ctx, &request).await?;
    let mut data = BTreeMap::new();
    for (key, value) in &fresh.data {
        let text = String::from_utf8(value.expose().to_vec())
            .map_err(|_| Error::InvalidData(format!("ConfigMap key {key} is not text")))?;
        data.insert(key.clone(), text);
    }
    let desired: ConfigMap = serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE},
            "annotations": {SOURCE_VERSION: fresh.version},
            "ownerReferences": [{
                "apiVersion": K::api_version(&()), "kind": K::kind(&()), "name": obj.name_any(),
                "uid": uid, "controller": true,
            }],
        },
        "data": data,
    }))
    .map_err(|e| Error::unavailable(format!("cannot build ConfigMap {name}: {e}")))?;
    let same = existing.as_ref().is_some_and(|cm| {
        cm.data == desired.data
            && cm.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY_VALUE)
            && cm.annotations().get(SOURCE_VERSION) == Some(&fresh.version)
    });
    let now = Timestamp::now();
    if !same {
        let written = match &existing {
            // Fails if someone created it meanwhile: it is then theirs.
            None => api.create(&PostParams::default(), &desired).await,
            // Fails if it changed since it was read (its owner checked above).
            Some(old) => {
                let mut replacement = desired.clone();
                replacement.metadata.resource_version = old.resource_version();
                api.replace(name, &PostParams::default(), &replacement)
                    .await
            }
        };
        written.map_err(|e| match e {
            kube::Error::Api(s) if s.code == 409 => Error::Conflict(format!(
                "ConfigMap {name} changed while it was written ({}); retrying",
                s.message
            )),
            kube::Error::Api(s) if s.code == 400 || s.code == 422 => Error::InvalidSpec(format!(
                "the apiserver refused to write ConfigMap {name} ({}): {}; fix spec.output.configMap",
                s.code, s.message
            )),
            other => Error::Kube(other),
        })?;
        if let Some(old) = &existing
            && old.data != desired.data
        {
            let note = format!("updated ConfigMap {name} to version {}", fresh.version);
            ctx.publish(obj, EventType::Normal, "ConfigMapUpdated", note)
                .await;
            apply::restart_targets(obj, ctx, now).await;
        }
    }
    let next = timing.refresh_interval;
    let recorded = obj.status().cloned().unwrap_or_default();
    let status = status::config_map_status(
        &recorded,
        obj.meta().generation,
        name,
        &fresh.version,
        data_hmac(&ctx.hmac_key, "ConfigMap", &fresh.data),
        next,
        now,
    );
    status::report(obj, ctx, &recorded, status, ctx.failed_since_success(obj)).await?;
    Ok(Action::requeue(next))
}
