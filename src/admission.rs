//! The admission check: the operator does for a tenant only what the tenant's writer
//! could do.
//!
//! The operator reads Secrets, requests service-account tokens and restarts workloads
//! with its own rights, on behalf of whoever wrote the resource. Without this check a user
//! allowed to create a VaultSecret but not to read Secret `admin-token` could name it as
//! the AppRole secret-id and receive what it unlocks. So a validating webhook asks the
//! apiserver (SubjectAccessReview), for the user who creates or changes a resource,
//! whether they may themselves `get` each Secret it references, `create
//! serviceaccounts/token` for the service account it logs in as, and `patch` each
//! workload it restarts; any "no" refuses the request with a message that says which.

use std::net::SocketAddr;
use std::path::Path;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::post;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};

use crate::api::{AzureKeyVaultSecretSpec, SyncPolicy, VaultSecretSpec, WorkloadKind};
use crate::config::Config;

/// Something a resource makes the operator do, which its writer must be allowed to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// The field that names it, for the message.
    pub field: &'static str,
    pub verb: &'static str,
    pub group: &'static str,
    pub resource: &'static str,
    pub subresource: Option<&'static str>,
    pub name: String,
}

impl Reference {
    fn secret(field: &'static str, name: &str) -> Self {
        Self {
            field,
            verb: "get",
            group: "",
            resource: "secrets",
            subresource: None,
            name: name.to_string(),
        }
    }
    fn token(field: &'static str, service_account: &str) -> Self {
        Self {
            field,
            verb: "create",
            group: "",
            resource: "serviceaccounts",
            subresource: Some("token"),
            name: service_account.to_string(),
        }
    }
    fn describe(&self) -> String {
        let resource = match self.subresource {
            Some(sub) => format!("{}/{sub}", self.resource),
            None => self.resource.to_string(),
        };
        format!("{} {resource} {:?}", self.verb, self.name)
    }
}

fn restarts(policy: &SyncPolicy) -> impl Iterator<Item = Reference> + '_ {
    policy
        .rollout_restart_targets
        .iter()
        .flatten()
        .map(|t| Reference {
            field: "spec.rolloutRestartTargets",
            verb: "patch",
            group: "apps",
            resource: match t.kind {
                WorkloadKind::Deployment => "deployments",
                WorkloadKind::StatefulSet => "statefulsets",
                WorkloadKind::DaemonSet => "daemonsets",
            },
            subresource: None,
            name: t.name.clone(),
        })
}

/// Pure: what a VaultSecret makes the operator do in its namespace.
pub fn vault_references(spec: &VaultSecretSpec, config: &Config) -> Vec<Reference> {
    let mut refs = Vec::new();
    match &spec.vault.auth {
        Some(auth) => {
            if let Some(k) = &auth.kubernetes {
                refs.push(Reference::token(
                    "spec.vault.auth.kubernetes.serviceAccountName",
                    k.service_account_name.as_deref().unwrap_or("default"),
                ));
            }
            if let Some(a) = &auth.app_role {
                refs.push(Reference::secret(
                    "spec.vault.auth.appRole.secretIdRef",
                    &a.secret_id_ref.name,
                ));
            }
            if let Some(t) = &auth.token {
                refs.push(Reference::secret(
                    "spec.vault.auth.token.secretRef",
                    &t.secret_ref.name,
                ));
            }
        }
        None => {
            let connection = spec.vault.connection.as_deref().unwrap_or("default");
            if let Some(default) = config
                .vault
                .get(connection)
                .and_then(|c| c.default_auth.as_ref())
            {
                refs.push(Reference::token(
                    "the connection's default auth",
                    &default.kubernetes.service_account_name,
                ));
            }
        }
    }
    refs.extend(restarts(&spec.policy));
    refs
}

/// Pure: what an AzureKeyVaultSecret makes the operator do in its namespace.
pub fn azure_references(spec: &AzureKeyVaultSecretSpec, config: &Config) -> Vec<Reference> {
    let mut refs = Vec::new();
    if spec.vault.auth.is_none() {
        let connection = spec.vault.connection.as_deref().unwrap_or("default");
        if let Some(default) = config
            .azure
            .get(connection)
            .and_then(|c| c.default_auth.as_ref())
        {
            refs.push(Reference::token(
                "the connection's default auth",
                &default.workload_identity.service_account_name,
            ));
        }
    }
    if let Some(auth) = &spec.vault.auth {
        if let Some(w) = &auth.workload_identity {
            refs.push(Reference::token(
                "spec.vault.auth.workloadIdentity.serviceAccountName",
                &w.service_account_name,
            ));
        }
        if let Some(c) = &auth.client_secret {
            refs.push(Reference::secret(
                "spec.vault.auth.clientSecret.secretRef",
                &c.secret_ref.name,
            ));
        }
    }
    if let Some(config_map) = spec.output.as_ref().and_then(|o| o.config_map.as_ref()) {
        // A ConfigMap its writer could not create (a name another release will need, a
        // CA bundle a workload mounts): the operator does not create it either.
        refs.push(Reference {
            field: "spec.output.configMap.name",
            verb: "create",
            group: "",
            resource: "configmaps",
            subresource: None,
            name: config_map.name.clone(),
        });
    }
    refs.extend(restarts(&spec.policy));
    refs
}

struct Webhook {
    client: kube::Client,
    config: Config,
}

/// Serves `POST /validate` over TLS on `address` until the process ends.
pub async fn serve(
    address: SocketAddr,
    cert: &Path,
    key: &Path,
    client: kube::Client,
    config: Config,
) -> anyhow::Result<()> {
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "admission webhook: cannot load the certificate {} and key {}: {e}",
                cert.display(),
                key.display()
            )
        })?;
    let state = std::sync::Arc::new(Webhook { client, config });
    let mut app = Router::new().route("/validate", post(validate));
    if state.config.injection.enabled {
        app = app.route("/mutate-pods", post(mutate_pods));
    }
    let app = app.with_state(state);
    tracing::info!(%address, "serving the admission webhook at /validate (and /mutate-pods when injection is enabled)");
    axum_server::bind_rustls(address, tls)
        .serve(app.into_make_service())
        .await?;
    Ok(())
}

async fn mutate_pods(
    State(webhook): State<std::sync::Arc<Webhook>>,
    Json(review): Json<AdmissionReview<DynamicObject>>,
) -> Json<AdmissionReview<DynamicObject>> {
    Json(crate::inject::webhook::review(&webhook.client, &webhook.config, review).await)
}

async fn validate(
    State(webhook): State<std::sync::Arc<Webhook>>,
    Json(review): Json<AdmissionReview<DynamicObject>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(request) => request,
        Err(e) => {
            return Json(
                AdmissionResponse::invalid(format!("not an AdmissionReview: {e}")).into_review(),
            );
        }
    };
    let response = AdmissionResponse::from(&request);
    let verdict = review_request(&webhook, &request).await;
    Json(
        match verdict {
            Ok(()) => response,
            Err(message) => {
                let mut denied = response.deny(message);
                denied.result.code = 403;
                denied.result.reason = "Forbidden".into();
                denied
            }
        }
        .into_review(),
    )
}

/// The references of the object; none when an update leaves the spec as it was.
fn references(
    webhook: &Webhook,
    request: &AdmissionRequest<DynamicObject>,
) -> Result<Vec<Reference>, String> {
    let Some(object) = &request.object else {
        return Ok(Vec::new());
    };
    if request.operation == Operation::Update
        && request
            .old_object
            .as_ref()
            .is_some_and(|old| old.data.get("spec") == object.data.get("spec"))
    {
        // Metadata and status changes (finalizers, labels) name nothing new.
        return Ok(Vec::new());
    }
    let spec = object.data.get("spec").cloned().unwrap_or_default();
    let parse_error = |e: serde_json::Error| format!("spec does not parse: {e}");
    match request.kind.kind.as_str() {
        "VaultSecret" => Ok(vault_references(
            &serde_json::from_value(spec).map_err(parse_error)?,
            &webhook.config,
        )),
        "AzureKeyVaultSecret" => Ok(azure_references(
            &serde_json::from_value(spec).map_err(parse_error)?,
            &webhook.config,
        )),
        other => Err(format!("vaultsync does not review {other} objects")),
    }
}

async fn review_request(
    webhook: &Webhook,
    request: &AdmissionRequest<DynamicObject>,
) -> Result<(), String> {
    if !matches!(request.operation, Operation::Create | Operation::Update) {
        return Ok(());
    }
    let namespace = request.namespace.clone().unwrap_or_default();
    let user = &request.user_info;
    let who = user
        .username
        .clone()
        .unwrap_or_else(|| "the requesting user".into());
    for reference in references(webhook, request)? {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username.clone(),
                groups: user.groups.clone(),
                uid: user.uid.clone(),
                extra: user.extra.clone(),
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(namespace.clone()),
                    verb: Some(reference.verb.to_string()),
                    group: Some(reference.group.to_string()),
                    resource: Some(reference.resource.to_string()),
                    subresource: reference.subresource.map(str::to_string),
                    name: Some(reference.name.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(webhook.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                format!(
                    "vaultsync could not check whether {who} may {} ({e}); try again",
                    reference.describe()
                )
            })?;
        if !answer.status.is_some_and(|s| s.allowed) {
            return Err(format!(
                "{who} may not {} in namespace {namespace}, which {} names: vaultsync acts on a resource's references only when its writer could use them directly (ask for that permission, or reference something you can use)",
                reference.describe(),
                reference.field,
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_follow_auth_and_restarts() {
        let spec: VaultSecretSpec = serde_json::from_value(serde_json::json!({
            "vault": {
                "auth": {"appRole": {"roleId": "r", "secretIdRef": {"name": "admin-token", "key": "id"}}},
                "kv": {"mount": "secret", "path": "app"}
            },
            "rolloutRestartTargets": [{"kind": "StatefulSet", "name": "db"}]
        }))
        .expect("spec");
        let refs = vault_references(&spec, &Config::parse("{}").expect("config"));
        assert_eq!(refs.len(), 2);
        assert_eq!(refs[0].describe(), "get secrets \"admin-token\"");
        assert_eq!(refs[1].describe(), "patch statefulsets \"db\"");
        let spec: VaultSecretSpec = serde_json::from_value(serde_json::json!({
            "vault": {"auth": {"kubernetes": {"role": "r"}}, "kv": {"mount": "secret", "path": "app"}}
        }))
        .expect("spec");
        assert_eq!(
            vault_references(&spec, &Config::parse("{}").expect("config"))[0].describe(),
            "create serviceaccounts/token \"default\""
        );
    }

    #[test]
    fn an_azure_resource_without_auth_uses_the_default_account() {
        let spec: AzureKeyVaultSecretSpec = serde_json::from_value(serde_json::json!({
            "vault": {"name": "kv", "object": {"name": "x", "type": "secret"}}
        }))
        .expect("spec");
        let config = Config::parse(
            "azure:\n  default:\n    vaultUrlTemplate: https://{name}.vault.azure.net\n    tenantId: t\n    defaultAuth:\n      workloadIdentity: {serviceAccountName: reader}\n",
        )
        .expect("config");
        let refs = azure_references(&spec, &config);
        assert_eq!(refs.len(), 1);
        assert_eq!(
            refs[0].describe(),
            "create serviceaccounts/token \"reader\""
        );
        // Without a default auth the resource cannot sync; nothing is referenced.
        assert!(azure_references(&spec, &Config::parse("{}").expect("config")).is_empty());
    }

    #[test]
    fn a_config_map_output_needs_its_writer_to_create_config_maps() {
        let spec: AzureKeyVaultSecretSpec = serde_json::from_value(serde_json::json!({
            "vault": {"name": "kv", "object": {"name": "c", "type": "certificate"},
                      "auth": {"workloadIdentity": {"serviceAccountName": "app", "clientId": "c"}}},
            "output": {"configMap": {"name": "ca-bundle", "dataKey": "ca.crt"}}
        }))
        .expect("spec");
        let refs = azure_references(&spec, &Config::parse("{}").expect("config"));
        let described: Vec<String> = refs.iter().map(Reference::describe).collect();
        assert!(
            described.contains(&"create configmaps \"ca-bundle\"".to_string()),
            "{described:?}"
        );
    }
}
