//! Which watches serve `watchNamespaces`.
//!
//! The apiserver cannot watch a list of namespaces in one request, and kube-client speaks
//! HTTP/1.1, so a watch per namespace is a connection per namespace: at 500 namespaces,
//! 1,500 connections and hundreds of MiB. When the operator may list and watch its kinds
//! and Secrets in every namespace (the chart's default `rbac.scope: cluster`), it watches
//! once, cluster-wide, and drops what lies outside the list before anything is cached.
//! With namespaced RBAC it watches each namespace on its own.

use std::collections::HashSet;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use kube::{Client, Resource};

/// The watches to run, and the namespaces their events are kept for (`None`: all).
pub struct Scopes {
    pub watches: Vec<Option<String>>,
    pub only: Option<Arc<HashSet<String>>>,
}

/// What to watch for `namespaces` (empty: all namespaces).
pub async fn plan(client: &Client, namespaces: &[String]) -> Scopes {
    if namespaces.is_empty() {
        return Scopes {
            watches: vec![None],
            only: None,
        };
    }
    if may_watch_everywhere(client).await {
        return Scopes {
            watches: vec![None],
            only: Some(Arc::new(namespaces.iter().cloned().collect())),
        };
    }
    Scopes {
        watches: namespaces.iter().cloned().map(Some).collect(),
        only: None,
    }
}

/// Whether the operator may list and watch both kinds and Secrets in every namespace.
async fn may_watch_everywhere(client: &Client) -> bool {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    for (group, resource) in [
        ("vaultsync.dev", "vaultsecrets"),
        ("vaultsync.dev", "azurekeyvaultsecrets"),
        ("", "secrets"),
    ] {
        for verb in ["list", "watch"] {
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        group: Some(group.into()),
                        resource: Some(resource.into()),
                        verb: Some(verb.into()),
                        ..ResourceAttributes::default()
                    }),
                    ..SelfSubjectAccessReviewSpec::default()
                },
                ..SelfSubjectAccessReview::default()
            };
            let allowed = api
                .create(&PostParams::default(), &review)
                .await
                .ok()
                .and_then(|r| r.status)
                .is_some_and(|s| s.allowed);
            if !allowed {
                return false;
            }
        }
    }
    true
}

/// Keeps the events of a watch stream that [`keep`] keeps (errors pass, for the backoff).
pub fn filter<K, S>(events: S, only: Option<Arc<HashSet<String>>>) -> impl Stream<Item = S::Item>
where
    K: Resource,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    events.filter(move |e| {
        futures::future::ready(e.as_ref().map_or(true, |e| keep(only.as_deref(), e)))
    })
}

/// Whether a watch event is kept: events of objects outside `only` are dropped (the
/// list's start and end markers always pass).
pub fn keep<K: Resource>(only: Option<&HashSet<String>>, event: &watcher::Event<K>) -> bool {
    let Some(only) = only else {
        return true;
    };
    match event {
        watcher::Event::Apply(obj)
        | watcher::Event::InitApply(obj)
        | watcher::Event::Delete(obj) => obj
            .meta()
            .namespace
            .as_ref()
            .is_some_and(|ns| only.contains(ns)),
        watcher::Event::Init | watcher::Event::InitDone => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn in_ns(ns: &str) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.namespace = Some(ns.into());
        cm
    }

    #[test]
    fn events_outside_the_list_are_dropped() {
        let only: HashSet<String> = ["a".to_string()].into();
        let keep = |e: &watcher::Event<ConfigMap>| keep(Some(&only), e);
        assert!(keep(&watcher::Event::Apply(in_ns("a"))));
        assert!(!keep(&watcher::Event::Apply(in_ns("b"))));
        assert!(!keep(&watcher::Event::InitApply(in_ns("b"))));
        assert!(!keep(&watcher::Event::Delete(in_ns("b"))));
        assert!(keep(&watcher::Event::Init));
        assert!(keep(&watcher::Event::InitDone));
        assert!(super::keep(None, &watcher::Event::Apply(in_ns("b"))));
    }
}
