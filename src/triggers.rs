//! What makes a resource reconcile: a new generation of its spec, or its deletion.
//!
//! kube-runtime's `predicate_filter` does the first but keeps an entry per object for an
//! hour after the object is gone, and a deleted object's scheduled refresh (up to an hour
//! away) stays queued until it fires. After thousands of resources come and go, those
//! small leftovers pin memory the allocator cannot give back. Here an object is forgotten
//! when it is deleted (or missing from a relist), and the deletion itself is passed on, so
//! the controller replaces the pending refresh with an immediate reconcile that finds the
//! object gone and drops it.

use std::collections::{HashMap, HashSet};

use futures::{Stream, StreamExt, stream};
use kube::Resource;
use kube::runtime::watcher;

type Key = (Option<String>, String);

fn key<K: Resource>(obj: &K) -> Key {
    (
        obj.meta().namespace.clone(),
        obj.meta().name.clone().unwrap_or_default(),
    )
}

/// The objects of `events` whose generation changed, and those deleted.
pub fn spec_changes<K, S>(events: S) -> impl Stream<Item = Result<K, watcher::Error>> + Send
where
    K: Resource + Send + 'static,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
{
    let mut seen: HashMap<Key, Option<i64>> = HashMap::new();
    let mut relisted: Option<HashSet<Key>> = None;
    events.flat_map(move |event| {
        let out = match event {
            Err(e) => Some(Err(e)),
            Ok(watcher::Event::Init) => {
                relisted = Some(HashSet::new());
                None
            }
            Ok(watcher::Event::InitApply(obj) | watcher::Event::Apply(obj)) => {
                let key = key(&obj);
                if let Some(listed) = relisted.as_mut() {
                    listed.insert(key.clone());
                }
                let generation = obj.meta().generation;
                (seen.insert(key, generation) != Some(generation)).then_some(Ok(obj))
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(listed) = relisted.take() {
                    seen.retain(|k, _| listed.contains(k));
                    crate::janitor::shrink(&mut seen);
                }
                None
            }
            Ok(watcher::Event::Delete(obj)) => {
                seen.remove(&key(&obj));
                crate::janitor::shrink(&mut seen);
                Some(Ok(obj))
            }
        };
        stream::iter(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn object(name: &str, generation: i64) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(name.into());
        cm.metadata.namespace = Some("ns".into());
        cm.metadata.generation = Some(generation);
        cm
    }

    #[tokio::test]
    async fn new_generations_and_deletions_trigger_and_nothing_else() {
        use watcher::Event::*;
        let events = vec![
            Init,
            InitApply(object("a", 1)),
            InitApply(object("b", 1)),
            InitDone,
            Apply(object("a", 1)), // a status write: same generation
            Apply(object("a", 2)), // a spec change
            Delete(object("b", 1)),
            Apply(object("b", 1)), // created again under the same name
            Init,
            InitApply(object("b", 1)), // a relist without "a": forgotten
            InitDone,
            Apply(object("a", 2)), // seen as new, since it was forgotten
        ];
        let out: Vec<(String, i64)> = spec_changes(stream::iter(events.into_iter().map(Ok)))
            .map(|r| {
                let o = r.expect("event");
                (o.metadata.name.unwrap(), o.metadata.generation.unwrap())
            })
            .collect()
            .await;
        let names: Vec<(&str, i64)> = out.iter().map(|(n, g)| (n.as_str(), *g)).collect();
        assert_eq!(
            names,
            [("a", 1), ("b", 1), ("a", 2), ("b", 1), ("b", 1), ("a", 2)]
        );
    }
}
