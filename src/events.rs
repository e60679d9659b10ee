//! Kubernetes Events on the custom resources. Each call creates one `events.k8s.io/v1`
//! Event: kube-runtime's `Recorder` folds events of the same reason into a series that
//! keeps the first note, which would show a stale version after a second rotation.
//! Events are rare here (creation, rotation, a change of failure, expiry), so one object
//! each is cheap. Notes never carry values.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};

use crate::ownership::MANAGER;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

pub struct EventSink {
    client: kube::Client,
    instance: String,
}

impl EventSink {
    pub fn new(client: kube::Client) -> Self {
        let instance = std::env::var("POD_NAME").unwrap_or_else(|_| MANAGER.to_string());
        Self { client, instance }
    }

    /// Records an Event about `regarding`. A failure is logged and otherwise ignored:
    /// Events are for people, not for correctness.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: &str,
    ) {
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        // Named like the apiserver names its own: the object's name and a unique suffix.
        let name = format!(
            "{}.{:016x}",
            regarding.name.as_deref().unwrap_or("vaultsync"),
            rand::random::<u64>()
        );
        // The API limits notes to 1 kB.
        let note: String = note.chars().take(1000).collect();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(Timestamp::now())),
            action: Some("Sync".into()),
            reason: Some(reason.into()),
            note: Some(note),
            type_: Some(format!("{type_:?}")),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(format!("vaultsync.dev/{MANAGER}")),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        if let Err(e) = api.create(&PostParams::default(), &event).await {
            tracing::warn!(error = %e, reason, "could not publish event");
        }
    }
}
