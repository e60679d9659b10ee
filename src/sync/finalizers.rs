//! Adding and removing a finalizer, with a JSON patch guarded by a test of the list so
//! that concurrent writers cannot lose each other's entries.

use kube::ResourceExt;
use kube::api::{Api, Patch};
use serde_json::json;

use super::SyncedResource;
use crate::context::Context;
use crate::error::Result;
use crate::ownership::patch_params;

pub async fn add<K: SyncedResource>(obj: &K, ctx: &Context, name: &str) -> Result<()> {
    let patch = match &obj.meta().finalizers {
        Some(list) => json!([
            {"op": "test", "path": "/metadata/finalizers", "value": list},
            {"op": "add", "path": "/metadata/finalizers/-", "value": name},
        ]),
        None => json!([{"op": "add", "path": "/metadata/finalizers", "value": [name]}]),
    };
    write(obj, ctx, patch).await
}

pub async fn remove<K: SyncedResource>(obj: &K, ctx: &Context, name: &str) -> Result<()> {
    let list = obj.meta().finalizers.clone().unwrap_or_default();
    let Some(index) = list.iter().position(|f| f == name) else {
        return Ok(());
    };
    let patch = json!([
        {"op": "test", "path": "/metadata/finalizers", "value": list},
        {"op": "remove", "path": format!("/metadata/finalizers/{index}")},
    ]);
    write(obj, ctx, patch).await
}

async fn write<K: SyncedResource>(obj: &K, ctx: &Context, patch: serde_json::Value) -> Result<()> {
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let patch: json_patch::Patch = serde_json::from_value(patch)
        .map_err(|e| crate::error::Error::InvalidSpec(e.to_string()))?;
    api.patch(&obj.name_any(), &patch_params(), &Patch::Json::<()>(patch))
        .await?;
    Ok(())
}
