//! The expiry collector: deletes managed Secrets whose `vaultsync.dev/expires-at` mark
//! has passed, so a copy outlives its source's reachability by at most its ttl.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::api::{Api, DeleteParams, Preconditions};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::Store;

use crate::controller::Context;
use crate::events::EventType;
use crate::sync::apply::EXPIRES_AT;

/// How often the collector looks at the managed Secrets (from the watch cache; no
/// apiserver request unless something expired).
const INTERVAL: Duration = Duration::from_secs(2);

/// A managed Secret whose time has passed.
#[derive(Debug, PartialEq)]
pub struct Expired {
    pub namespace: String,
    pub name: String,
    pub resource_version: Option<String>,
    pub owner: Option<ObjectReference>,
}

/// Pure: the Secrets among `secrets` whose mark is at or before `now`.
pub fn expired<'a>(
    secrets: impl IntoIterator<Item = &'a PartialObjectMeta<Secret>>,
    now: Timestamp,
) -> Vec<Expired> {
    secrets
        .into_iter()
        .filter(|s| {
            s.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(EXPIRES_AT))
                .and_then(|v| v.parse::<Timestamp>().ok())
                .is_some_and(|mark| mark <= now)
        })
        .map(|s| {
            let namespace = s.metadata.namespace.clone().unwrap_or_default();
            let owner = s
                .metadata
                .owner_references
                .iter()
                .flatten()
                .find(|r| r.controller == Some(true))
                .map(|r| ObjectReference {
                    api_version: Some(r.api_version.clone()),
                    kind: Some(r.kind.clone()),
                    name: Some(r.name.clone()),
                    uid: Some(r.uid.clone()),
                    namespace: Some(namespace.clone()),
                    ..Default::default()
                });
            Expired {
                namespace,
                name: s.metadata.name.clone().unwrap_or_default(),
                resource_version: s.metadata.resource_version.clone(),
                owner,
            }
        })
        .collect()
}

pub async fn run_collector(ctx: Arc<Context>, stores: Vec<Store<PartialObjectMeta<Secret>>>) {
    let mut tick = tokio::time::interval(INTERVAL);
    loop {
        tick.tick().await;
        let now = Timestamp::now();
        let all: Vec<Arc<PartialObjectMeta<Secret>>> =
            stores.iter().flat_map(|s| s.state()).collect();
        ctx.metrics.managed_secrets.set(all.len() as i64);
        for gone in expired(all.iter().map(|s| s.as_ref()), now) {
            delete(&ctx, gone).await;
        }
    }
}

async fn delete(ctx: &Context, gone: Expired) {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &gone.namespace);
    // The precondition makes a refresh that just moved the mark win over the delete.
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: None,
            resource_version: gone.resource_version.clone(),
        }),
        ..DeleteParams::default()
    };
    match api.delete(&gone.name, &params).await {
        Ok(_) => {
            tracing::info!(namespace = %gone.namespace, secret = %gone.name, "deleted expired Secret");
            ctx.metrics.clear_expiry(&gone.namespace, &gone.name);
            if let Some(owner) = &gone.owner {
                let note = format!(
                    "deleted Secret {}: it expired without a successful refresh",
                    gone.name
                );
                ctx.events
                    .publish(owner, EventType::Warning, "SecretExpired", &note)
                    .await;
            }
        }
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
        Err(e) => {
            tracing::warn!(namespace = %gone.namespace, secret = %gone.name, error = %e, "could not delete expired Secret")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str, mark: Option<&str>) -> PartialObjectMeta<Secret> {
        let mut m = PartialObjectMeta::<Secret>::default();
        m.metadata.name = Some(name.into());
        m.metadata.namespace = Some("ns".into());
        if let Some(mark) = mark {
            m.metadata.annotations = Some([(EXPIRES_AT.to_string(), mark.to_string())].into());
        }
        m
    }

    #[test]
    fn only_passed_marks_expire() {
        let now: Timestamp = "2026-01-01T12:00:00Z".parse().expect("ts");
        let secrets = [
            meta("past", Some("2026-01-01T11:59:59Z")),
            meta("now", Some("2026-01-01T12:00:00Z")),
            meta("future", Some("2026-01-01T12:00:01Z")),
            meta("unmarked", None),
            meta("garbled", Some("tomorrow")),
        ];
        let names: Vec<String> = expired(secrets.iter(), now)
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, vec!["past", "now"]);
    }
}
