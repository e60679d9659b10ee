//! The shape of the operator's writes, against a mocked apiserver (`tower_test::mock`, in
//! the style of kube-rs controller-rs `fixtures.rs`): each test calls one public function
//! of the pipeline and answers its requests, asserting method, path, query and body.
//! The behaviour behind these writes is proven against the real apiserver in the
//! end-to-end tests; these pin down what goes over the wire.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};
use vaultsync::api::{SyncStatus, VaultSecret};
use vaultsync::backend::{Lease, SecretValue};
use vaultsync::config::Config;
use vaultsync::context::Context;
use vaultsync::metrics::Metrics;
use vaultsync::sync::plan::{self, Write};
use vaultsync::sync::render::DesiredSecret;
use vaultsync::sync::{apply, status};

const NS: &str = "team-a";
const STATUS_PATH: &str = "/apis/vaultsync.dev/v1alpha1/namespaces/team-a/vaultsecrets/db/status";
const FINALIZER: &str = "vaultsync.dev/revoke-lease";

/// One request as the apiserver received it.
#[derive(Debug)]
struct Seen {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    content_type: String,
    body: Value,
}

/// The apiserver side of the mock: takes the client's requests in order and answers them.
struct ApiServerVerifier(Handle<Request<Body>, Response<Body>>);

impl ApiServerVerifier {
    /// The next request, answered with `status` and `response`.
    async fn answer(&mut self, status: u16, response: Value) -> Seen {
        let (request, send) = tokio::time::timeout(Duration::from_secs(5), self.0.next_request())
            .await
            .expect("the operator sent a request within 5 s")
            .expect("the client is alive");
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.expect("request body");
        let query = parts
            .uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        send.send_response(
            Response::builder()
                .status(status)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(&response).expect("json")))
                .expect("response"),
        );
        Seen {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            query,
            content_type,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }
}

/// A context whose client talks to the mock; the Vault connection is never reached.
fn context() -> (Context, ApiServerVerifier) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let config =
        Config::parse("vault:\n  default:\n    address: http://127.0.0.1:9\n").expect("config");
    let ctx =
        Context::new(client, config, Arc::new(Metrics::default()), vec![7; 32]).expect("context");
    (ctx, ApiServerVerifier(handle))
}

/// VaultSecret `team-a/db`, generation 3, reading database credentials.
fn resource(status: Option<&SyncStatus>, finalizers: &[&str]) -> VaultSecret {
    serde_json::from_value(json!({
        "apiVersion": "vaultsync.dev/v1alpha1",
        "kind": "VaultSecret",
        "metadata": {
            "name": "db", "namespace": NS, "uid": "uid-db", "generation": 3,
            "resourceVersion": "100", "finalizers": finalizers,
        },
        "spec": {"vault": {
            "auth": {"kubernetes": {"role": "team-a", "serviceAccountName": "app"}},
            "database": {"mount": "database", "role": "app"},
        }},
        "status": status,
    }))
    .expect("VaultSecret")
}

fn lease(id: &str) -> Lease {
    Lease {
        id: id.into(),
        duration: Duration::from_secs(3600),
        renewable: true,
        expires_at: Timestamp::now()
            .checked_add(jiff::SignedDuration::from_hours(1))
            .expect("time"),
    }
}

fn ready(status: &str, reason: &str) -> Value {
    json!({"type": "Ready", "status": status, "reason": reason, "message": "m",
           "observedGeneration": 2, "lastTransitionTime": "2026-01-01T00:00:00Z"})
}

/// A status as a previous sync left it: Ready, under `current`, maybe with a pending lease.
fn previous(current: &Lease, pending: Option<&Lease>) -> SyncStatus {
    let mut value = json!({
        "conditions": [ready("True", "Synced")],
        "observedGeneration": 2,
        "secretName": "db",
        "lease": status::lease_status(current),
        "dataHmac": "hmac-sha256:old",
    });
    if let Some(p) = pending {
        let mut pending = serde_json::to_value(status::lease_status(p)).expect("lease");
        pending["dataHmac"] = json!("hmac-sha256:new");
        value["pendingLease"] = pending;
    }
    serde_json::from_value(value).expect("status")
}

fn assert_server_side_apply(seen: &Seen, path: &str) {
    assert_eq!(seen.method, "PATCH", "{seen:?}");
    assert_eq!(seen.path, path, "{seen:?}");
    assert_eq!(
        seen.content_type, "application/apply-patch+yaml",
        "server-side apply: {seen:?}"
    );
    assert_eq!(
        seen.query.get("fieldManager").map(String::as_str),
        Some("vaultsync"),
        "{seen:?}"
    );
    assert_eq!(
        seen.query.get("force").map(String::as_str),
        Some("true"),
        "{seen:?}"
    );
}

fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn record_pending_applies_the_status_with_the_new_lease_beside_the_current_one() {
    let (ctx, mut server) = context();
    let (old, new) = (
        lease("database/creds/app/old"),
        lease("database/creds/app/new"),
    );
    let base = previous(&old, None);
    let obj = resource(Some(&base), &[FINALIZER]);
    let (result, seen) = tokio::join!(
        status::record_pending(&obj, &ctx, &base, &new, "hmac-sha256:new"),
        server.answer(200, serde_json::to_value(&obj).expect("obj")),
    );
    result.expect("record_pending");
    assert_server_side_apply(&seen, STATUS_PATH);
    assert_eq!(seen.body["apiVersion"], "vaultsync.dev/v1alpha1");
    assert_eq!(seen.body["kind"], "VaultSecret");
    let status = &seen.body["status"];
    assert_eq!(status["pendingLease"]["id"], json!(new.id));
    assert_eq!(status["pendingLease"]["dataHmac"], "hmac-sha256:new");
    assert_eq!(
        status["lease"]["id"],
        json!(old.id),
        "the current lease stays recorded until the re-issue commits"
    );
    assert_eq!(status["dataHmac"], "hmac-sha256:old");
}

#[tokio::test]
async fn success_applies_a_whole_status_without_the_pending_lease() {
    let (ctx, mut server) = context();
    let (old, new) = (
        lease("database/creds/app/old"),
        lease("database/creds/app/new"),
    );
    let before = previous(&old, Some(&new));
    let obj = resource(Some(&before), &[FINALIZER]);
    let expires_at = new.expires_at;
    let synced = status::Synced {
        secret_name: "db",
        version: "new",
        lease: Some(&new),
        expires_at,
        next_refresh: Duration::from_secs(60),
        data_hmac: "hmac-sha256:new".into(),
        after_failure: false,
    };
    let (result, seen) = tokio::join!(
        status::report_success(&obj, &ctx, &before, &synced),
        server.answer(200, serde_json::to_value(&obj).expect("obj")),
    );
    result.expect("report_success");
    assert_server_side_apply(&seen, STATUS_PATH);
    let status = &seen.body["status"];
    assert!(
        status["pendingLease"].is_null(),
        "a committed re-issue leaves no pending lease: {status}"
    );
    assert_eq!(status["lease"]["id"], json!(new.id));
    assert_eq!(status["lease"]["renewable"], true);
    assert_eq!(status["lease"]["durationSeconds"], 3600);
    assert_eq!(status["dataHmac"], "hmac-sha256:new");
    assert_eq!(status["observedGeneration"], 3);
    assert_eq!(status["secretName"], "db");
    let conditions = status["conditions"].as_array().expect("conditions");
    assert_eq!(conditions.len(), 1);
    assert_eq!(conditions[0]["type"], "Ready");
    assert_eq!(conditions[0]["status"], "True");
    assert_eq!(conditions[0]["reason"], "Synced");
    assert_eq!(conditions[0]["observedGeneration"], 3);
    assert_eq!(
        conditions[0]["lastTransitionTime"], "2026-01-01T00:00:00Z",
        "Ready stays True: the transition time is kept"
    );
}

#[tokio::test]
async fn a_success_that_brings_no_news_sends_nothing() {
    let (ctx, _server) = context();
    let current = lease("database/creds/app/current");
    let synced = status::Synced {
        secret_name: "db",
        version: "current",
        lease: Some(&current),
        expires_at: current.expires_at,
        next_refresh: Duration::from_secs(60),
        data_hmac: "hmac-sha256:old".into(),
        after_failure: false,
    };
    // The status the last sync wrote, as the apiserver stores it.
    let written =
        status::success_status(&SyncStatus::default(), Some(3), &synced, Timestamp::now());
    let recorded: SyncStatus =
        serde_json::from_value(serde_json::to_value(&written).expect("json")).expect("status");
    let obj = resource(Some(&recorded), &[FINALIZER]);
    // Nothing answers: a request would wait until the timeout.
    tokio::time::timeout(
        Duration::from_secs(2),
        status::report_success(&obj, &ctx, &recorded, &synced),
    )
    .await
    .expect("no request: only the sync times would have moved")
    .expect("report_success");

    // After a failure the cached status may lag a Ready=False the apiserver holds: written.
    let (ctx, mut server) = context();
    let synced = status::Synced {
        after_failure: true,
        ..synced
    };
    let (result, seen) = tokio::join!(
        status::report_success(&obj, &ctx, &recorded, &synced),
        server.answer(200, serde_json::to_value(&obj).expect("obj")),
    );
    result.expect("report_success");
    assert_server_side_apply(&seen, STATUS_PATH);
}

#[tokio::test]
async fn a_failure_publishes_an_event_and_merges_only_the_condition_and_generation() {
    let (ctx, mut server) = context();
    let old = lease("database/creds/app/old");
    let before = previous(&old, None);
    let obj = resource(Some(&before), &[FINALIZER]);
    let error = vaultsync::error::Error::InvalidSpec("spec.output.secret: a bad label".into());
    let (result, (event, patch)) =
        tokio::join!(status::report_failure(&obj, &ctx, &error), async {
            let event = server.answer(201, json!({})).await;
            let patch = server
                .answer(200, serde_json::to_value(&obj).expect("obj"))
                .await;
            (event, patch)
        },);
    result.expect("report_failure");

    assert_eq!(event.method, "POST", "{event:?}");
    assert_eq!(
        event.path,
        "/apis/events.k8s.io/v1/namespaces/team-a/events"
    );
    assert_eq!(event.body["reason"], "SyncFailed");
    assert_eq!(event.body["type"], "Warning");
    assert_eq!(event.body["regarding"]["kind"], "VaultSecret");
    assert_eq!(event.body["regarding"]["name"], "db");
    assert_eq!(event.body["regarding"]["uid"], "uid-db");

    assert_eq!(patch.method, "PATCH", "{patch:?}");
    assert_eq!(patch.path, STATUS_PATH);
    assert_eq!(
        patch.content_type, "application/merge-patch+json",
        "a merge patch, never an apply that could roll back the lease fields: {patch:?}"
    );
    assert_eq!(
        patch.query.get("fieldManager").map(String::as_str),
        Some("vaultsync")
    );
    assert!(!patch.query.contains_key("force"), "{patch:?}");
    assert_eq!(keys(&patch.body), BTreeSet::from(["status".to_string()]));
    let status = &patch.body["status"];
    assert_eq!(
        keys(status),
        BTreeSet::from(["conditions".to_string(), "observedGeneration".to_string()]),
        "only the condition and the generation: {status}"
    );
    assert_eq!(status["observedGeneration"], 3);
    let condition = &status["conditions"][0];
    assert_eq!(condition["type"], "Ready");
    assert_eq!(condition["status"], "False");
    assert_eq!(condition["reason"], "InvalidSpec");
    assert_eq!(condition["observedGeneration"], 3);
    assert!(
        condition["message"]
            .as_str()
            .is_some_and(|m| m.contains("bad label")),
        "{condition}"
    );
}

/// The managed Secret as the apiserver holds it: owned by `db`, resourceVersion 42.
fn existing_secret(data: Value) -> Secret {
    serde_json::from_value(json!({
        "metadata": {
            "name": "db", "namespace": NS, "resourceVersion": "42", "uid": "uid-secret",
            "labels": {"app.kubernetes.io/managed-by": "vaultsync"},
            "annotations": {"vaultsync.dev/expires-at": "2030-01-01T00:00:00Z", "vaultsync.dev/source-version": "old"},
            "ownerReferences": [{"apiVersion": "vaultsync.dev/v1alpha1", "kind": "VaultSecret",
                                  "name": "db", "uid": "uid-db", "controller": true}],
        },
        "type": "Opaque",
        "data": data,
    }))
    .expect("secret")
}

fn desired(password: &str) -> DesiredSecret {
    DesiredSecret {
        name: "db".into(),
        type_: "Opaque".into(),
        data: BTreeMap::from([
            ("username".to_string(), SecretValue::from("v-app")),
            ("password".to_string(), SecretValue::from(password)),
        ]),
        labels: BTreeMap::from([("team".to_string(), "a".to_string())]),
        annotations: BTreeMap::new(),
    }
}

fn inputs(version: &str) -> plan::Inputs<'_> {
    plan::Inputs {
        now: Timestamp::now(),
        refresh_interval: Duration::from_secs(1800),
        ttl: Duration::from_secs(3600),
        renewal_percent: 67,
        version,
        not_after: None,
        lifetime: None,
        jitter: 0.0,
    }
}

/// "v-app" and "old" in base64, as the existing Secret holds them.
fn old_data() -> Value {
    json!({"username": "di1hcHA=", "password": "b2xk"})
}

#[tokio::test]
async fn the_secret_apply_is_controller_owned_and_pinned_to_the_checked_version() {
    let (ctx, mut server) = context();
    let obj = resource(None, &[FINALIZER]);
    let existing = existing_secret(old_data());
    let want = desired("new");
    let planned = plan::plan(Some(&existing), &want, &inputs("new"));
    assert_eq!(planned.write, Some(Write::Data));
    assert!(planned.strip_keys.is_empty());
    let (result, (write, event)) = tokio::join!(
        apply::execute(&obj, &ctx, &want, &planned, Some(&existing)),
        async {
            let write = server
                .answer(200, serde_json::to_value(&existing).expect("secret"))
                .await;
            let event = server.answer(201, json!({})).await;
            (write, event)
        },
    );
    result.expect("execute");

    assert_server_side_apply(&write, "/api/v1/namespaces/team-a/secrets/db");
    let metadata = &write.body["metadata"];
    assert_eq!(
        metadata["resourceVersion"], "42",
        "the write applies to the Secret whose ownership was checked, or fails"
    );
    assert_eq!(
        metadata["ownerReferences"],
        json!([{"apiVersion": "vaultsync.dev/v1alpha1", "kind": "VaultSecret",
                "name": "db", "uid": "uid-db", "controller": true}])
    );
    assert_eq!(metadata["labels"]["team"], "a");
    assert_eq!(
        metadata["labels"]["app.kubernetes.io/managed-by"],
        "vaultsync"
    );
    assert!(metadata["annotations"]["vaultsync.dev/expires-at"].is_string());
    assert_eq!(
        metadata["annotations"]["vaultsync.dev/source-version"],
        "new"
    );
    assert_eq!(write.body["type"], "Opaque");
    assert_eq!(
        write.body["data"],
        json!({"username": "di1hcHA=", "password": "bmV3"})
    );

    assert_eq!(event.method, "POST");
    assert_eq!(event.body["reason"], "SecretRotated");
    assert_eq!(event.body["type"], "Normal");
}

#[tokio::test]
async fn keys_someone_added_are_stripped_by_a_merge_patch_after_the_apply() {
    let (ctx, mut server) = context();
    let obj = resource(None, &[FINALIZER]);
    let mut data = old_data();
    data["planted"] = json!("eA==");
    let existing = existing_secret(data);
    let want = desired("old");
    let planned = plan::plan(Some(&existing), &want, &inputs("old"));
    assert_eq!(planned.strip_keys, vec!["planted".to_string()]);
    let answer = serde_json::to_value(&existing).expect("secret");
    let (result, (write, strip)) = tokio::join!(
        apply::execute(&obj, &ctx, &want, &planned, Some(&existing)),
        async {
            let write = server.answer(200, answer.clone()).await;
            let strip = server.answer(200, answer.clone()).await;
            // The data changed (a key went), so an Event follows.
            server.answer(201, json!({})).await;
            (write, strip)
        },
    );
    result.expect("execute");
    assert_server_side_apply(&write, "/api/v1/namespaces/team-a/secrets/db");
    assert_eq!(strip.method, "PATCH");
    assert_eq!(strip.path, "/api/v1/namespaces/team-a/secrets/db");
    assert_eq!(strip.content_type, "application/merge-patch+json");
    assert_eq!(
        strip.query.get("fieldManager").map(String::as_str),
        Some("vaultsync")
    );
    assert_eq!(
        strip.body,
        json!({
            "metadata": {"resourceVersion": answer["metadata"]["resourceVersion"]},
            "data": {"planted": null},
        }),
        "only the planted key goes, on the version just written"
    );
}

#[tokio::test]
async fn a_secret_write_the_apiserver_refuses_is_an_invalid_spec() {
    let (ctx, mut server) = context();
    let obj = resource(None, &[FINALIZER]);
    let want = desired("new");
    let planned = plan::plan(None, &want, &inputs("new"));
    let refusal = json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Invalid", "code": 422,
        "message": "Secret \"db\" is invalid: metadata.labels: Invalid value: \"bad key!\"",
    });
    let (result, write) = tokio::join!(
        apply::execute(&obj, &ctx, &want, &planned, None),
        server.answer(422, refusal),
    );
    // A new Secret is a create, which fails if someone else created it meanwhile.
    assert_eq!(write.method, "POST", "{write:?}");
    assert_eq!(write.path, "/api/v1/namespaces/team-a/secrets");
    assert_eq!(
        write.query.get("fieldManager").map(String::as_str),
        Some("vaultsync")
    );
    assert!(
        write.body["metadata"]["resourceVersion"].is_null(),
        "a new Secret is created, not pinned: {write:?}"
    );
    let error = result.expect_err("the refusal is an error");
    assert_eq!(error.reason(), "InvalidSpec");
    let message = error.to_string();
    assert!(
        message.contains("refused") && message.contains("Secret db"),
        "{message}"
    );
}

#[tokio::test]
async fn the_first_reconcile_of_a_database_resource_adds_the_finalizer_before_anything_else() {
    for (present, expected) in [
        (
            vec![],
            json!([{"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}]),
        ),
        (
            vec!["example.com/other"],
            json!([
                {"op": "test", "path": "/metadata/finalizers", "value": ["example.com/other"]},
                {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
            ]),
        ),
    ] {
        let (ctx, mut server) = context();
        let mut obj = resource(None, &present);
        if present.is_empty() {
            obj.metadata.finalizers = None;
        }
        let answer = serde_json::to_value(&obj).expect("obj");
        // After the finalizer the mock goes away: the reconcile fails on its next request,
        // which this test does not look at.
        let (_, seen) = tokio::join!(vaultsync::sync::reconcile(&obj, &ctx), async move {
            server.answer(200, answer).await
        });
        assert_eq!(seen.method, "PATCH", "{seen:?}");
        assert_eq!(
            seen.path,
            "/apis/vaultsync.dev/v1alpha1/namespaces/team-a/vaultsecrets/db"
        );
        assert_eq!(seen.content_type, "application/json-patch+json");
        assert_eq!(
            seen.query.get("fieldManager").map(String::as_str),
            Some("vaultsync")
        );
        assert_eq!(seen.body, expected, "finalizers before: {present:?}");
    }
}
