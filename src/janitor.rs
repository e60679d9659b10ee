//! Per-process state follows the resources: a periodic pass forgets the failure counts,
//! and cached backend state (Vault tokens, which are also revoked; detected mount
//! versions) of resources that are gone (metric series per Secret are read from the
//! Secret cache at each scrape, so they need no pass), so creating and deleting resources,
//! namespaces included, leaves the operator's memory where it was.
//!
//! The live set comes from the controllers' own watch caches; backend state is matched
//! through `Backend::resolve`, which is pure, so no request is made to find it.

use std::collections::HashSet;
use std::sync::Arc;

use kube::ResourceExt;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::Store;

use crate::api::{AzureKeyVaultSecret, VaultSecret};
use crate::backend::Backend;
use crate::context::Context;
use crate::sync::SyncedResource;

/// Gives a map's spare capacity back once it holds under a quarter of it: `retain` and
/// `remove` keep a map's capacity, so after thousands of resources come and go the
/// operator would otherwise hold their slots for good.
pub fn shrink<K: Eq + std::hash::Hash, V>(map: &mut std::collections::HashMap<K, V>) {
    if map.capacity() > 64 && map.len() * 4 < map.capacity() {
        map.shrink_to_fit();
    }
}

/// [`shrink`] for sets.
pub fn shrink_set<K: Eq + std::hash::Hash>(set: &mut std::collections::HashSet<K>) {
    if set.capacity() > 64 && set.len() * 4 < set.capacity() {
        set.shrink_to_fit();
    }
}

/// One pass for kind `K` over `stores` (one per watched scope): forgets what belongs to
/// resources that are gone.
pub async fn sweep<K: SyncedResource>(ctx: &Context, stores: &[Store<DeserializeGuard<K>>]) {
    // The cache's own objects, not copies: at 10,000 resources a copy of each is a peak.
    let cached: Vec<Arc<DeserializeGuard<K>>> = stores.iter().flat_map(|s| s.state()).collect();
    let objects: Vec<&K> = cached.iter().filter_map(|o| o.0.as_ref().ok()).collect();
    let backend = K::backend(ctx);
    let requests: Vec<_> = objects
        .iter()
        .filter_map(|o| {
            backend
                .resolve(&o.namespace().unwrap_or_default(), o.source())
                .ok()
        })
        .collect();
    backend.retain(&requests).await;
    let resources: HashSet<(String, String)> = objects
        .iter()
        .map(|o| (o.namespace().unwrap_or_default(), o.name_any()))
        .collect();
    ctx.retain_backoff::<K>(&resources);
    ctx.lanes.retain(K::KIND, &resources);
    tracing::debug!(kind = K::KIND, live = objects.len(), "housekeeping pass");
}

/// Runs the pass every `housekeepingInterval`, once every cache in `listed` has its first
/// complete listing: the state it forgets outlives a generation of controllers
/// (`crate::rebuild`), and a cache still listing would make every resource look gone
/// (failure counts forgotten, every Vault token one pass from revocation). A token is
/// revoked only when unused at two passes in a row.
pub async fn run(
    ctx: Arc<Context>,
    vault: Vec<Store<DeserializeGuard<VaultSecret>>>,
    azure: Vec<Store<DeserializeGuard<AzureKeyVaultSecret>>>,
    listed: Vec<crate::rebuild::Listed>,
) {
    for cache in &listed {
        cache.wait().await;
    }
    let mut tick = tokio::time::interval(ctx.config.housekeeping_interval);
    loop {
        tick.tick().await;
        sweep(&ctx, &vault).await;
        sweep(&ctx, &azure).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_map_that_emptied_gives_its_capacity_back() {
        let mut map: std::collections::HashMap<u32, String> =
            (0..5000).map(|i| (i, i.to_string())).collect();
        map.retain(|k, _| *k < 10);
        assert!(map.capacity() >= 5000, "retain keeps the capacity");
        super::shrink(&mut map);
        assert!(map.capacity() < 64, "{}", map.capacity());
        assert_eq!(map.len(), 10);
        // A full map is left alone.
        let mut full: std::collections::HashMap<u32, u32> = (0..1000).map(|i| (i, i)).collect();
        let capacity = full.capacity();
        super::shrink(&mut full);
        assert_eq!(full.capacity(), capacity);
    }
}
