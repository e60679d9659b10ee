//! The expiry collector: deletes managed Secrets whose `vaultsync.dev/expires-at` mark
//! has passed, so a copy outlives its source's reachability by at most its ttl.
//!
//! A label and an annotation are anyone's to set, so they are not enough: a Secret is
//! collected only when its controller ownerReference names a vaultsync resource that the
//! operator sees (by uid), and the delete carries the Secret's uid and resourceVersion.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::api::{Api, DeleteParams, Preconditions};
use kube::core::PartialObjectMeta;

use crate::context::Context;
use crate::events::EventType;
use crate::metrics::SecretCache;

/// How often the collector looks at the managed Secrets (from the watch cache; no
/// apiserver request unless something expired).
const INTERVAL: Duration = Duration::from_secs(2);

/// A managed Secret whose time has passed.
#[derive(Debug, PartialEq)]
pub struct Expired {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub owner: Option<ObjectReference>,
}

/// The uids of the vaultsync resources the operator sees, read when the collector runs.
pub type Owners = Box<dyn Fn() -> HashSet<String> + Send + Sync>;

/// The controller ownerReference of `secret`, if it is one of `owners`.
fn vaultsync_owner<'a>(
    secret: &'a PartialObjectMeta<Secret>,
    owners: &HashSet<String>,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    crate::ownership::vaultsync_controller(&secret.metadata).filter(|r| owners.contains(&r.uid))
}

/// Whether `secret`'s expires-at mark is at or before `now`.
fn mark_passed(secret: &PartialObjectMeta<Secret>, now: Timestamp) -> bool {
    crate::ownership::expires_at(&secret.metadata).is_some_and(|mark| mark <= now)
}

/// Pure: the Secrets among `secrets` whose mark is at or before `now` and that a
/// vaultsync resource among `owners` controls.
pub fn expired<'a>(
    secrets: impl IntoIterator<Item = &'a PartialObjectMeta<Secret>>,
    owners: &HashSet<String>,
    now: Timestamp,
) -> Vec<Expired> {
    secrets
        .into_iter()
        .filter(|s| mark_passed(s, now))
        .filter(|s| vaultsync_owner(s, owners).is_some())
        .map(|s| {
            let namespace = s.metadata.namespace.clone().unwrap_or_default();
            let owner = vaultsync_owner(s, owners).map(|r| ObjectReference {
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
                uid: s.metadata.uid.clone(),
                resource_version: s.metadata.resource_version.clone(),
                owner,
            }
        })
        .collect()
}

pub async fn run_collector(ctx: Arc<Context>, caches: Vec<SecretCache>, owners: Vec<Owners>) {
    // Counted once listed: a new generation's empty caches are not "no managed Secrets".
    for (_, listed) in &caches {
        listed.wait().await;
    }
    let mut tick = tokio::time::interval(INTERVAL);
    loop {
        tick.tick().await;
        let now = Timestamp::now();
        let all: Vec<Arc<PartialObjectMeta<Secret>>> =
            caches.iter().flat_map(|(s, _)| s.state()).collect();
        ctx.metrics.managed_secrets.set(all.len() as i64);
        // The owners' uids are gathered only when a mark has passed: at 10,000 Secrets
        // that is 10,000 strings a pass saved.
        let due: Vec<&PartialObjectMeta<Secret>> = all
            .iter()
            .map(|s| s.as_ref())
            .filter(|s| mark_passed(s, now))
            .collect();
        if due.is_empty() {
            continue;
        }
        let known: HashSet<String> = owners.iter().flat_map(|o| o()).collect();
        for gone in expired(due, &known, now) {
            delete(&ctx, gone).await;
        }
    }
}

async fn delete(ctx: &Context, gone: Expired) {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &gone.namespace);
    // The preconditions make a refresh that just moved the mark win over the delete, and
    // keep a Secret recreated under the same name by someone else out of reach.
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: gone.uid.clone(),
            resource_version: gone.resource_version.clone(),
        }),
        ..DeleteParams::default()
    };
    match api.delete(&gone.name, &params).await {
        Ok(_) => {
            tracing::info!(namespace = %gone.namespace, secret = %gone.name, "deleted expired Secret");
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
    use crate::ownership::EXPIRES_AT;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn meta(
        name: &str,
        mark: Option<&str>,
        owner: Option<(&str, &str, bool)>,
    ) -> PartialObjectMeta<Secret> {
        let mut m = PartialObjectMeta::<Secret>::default();
        m.metadata.name = Some(name.into());
        m.metadata.namespace = Some("ns".into());
        if let Some(mark) = mark {
            m.metadata.annotations = Some([(EXPIRES_AT.to_string(), mark.to_string())].into());
        }
        m.metadata.owner_references = owner.map(|(api_version, uid, controller)| {
            vec![OwnerReference {
                api_version: api_version.into(),
                kind: "VaultSecret".into(),
                name: "owner".into(),
                uid: uid.into(),
                controller: Some(controller),
                block_owner_deletion: None,
            }]
        });
        m
    }

    #[test]
    fn only_passed_marks_of_secrets_a_known_resource_controls_expire() {
        let now: Timestamp = "2026-01-01T12:00:00Z".parse().expect("ts");
        let ours = Some(("vaultsync.dev/v1alpha1", "uid-1", true));
        let secrets = [
            meta("past", Some("2026-01-01T11:59:59Z"), ours),
            meta("now", Some("2026-01-01T12:00:00Z"), ours),
            meta("future", Some("2026-01-01T12:00:01Z"), ours),
            meta("unmarked", None, ours),
            meta("garbled", Some("tomorrow"), ours),
            meta("no-owner", Some("2026-01-01T11:00:00Z"), None),
            meta(
                "configmap-owned",
                Some("2026-01-01T11:00:00Z"),
                Some(("v1", "uid-1", true)),
            ),
            meta(
                "unknown-uid",
                Some("2026-01-01T11:00:00Z"),
                Some(("vaultsync.dev/v1alpha1", "uid-2", true)),
            ),
            meta(
                "not-controller",
                Some("2026-01-01T11:00:00Z"),
                Some(("vaultsync.dev/v1alpha1", "uid-1", false)),
            ),
        ];
        let owners = HashSet::from(["uid-1".to_string()]);
        let names: Vec<String> = expired(secrets.iter(), &owners, now)
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, vec!["past", "now"]);
    }
}
