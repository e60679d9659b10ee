//! The mutating webhook of pod injection: a pure function from a pod to the pod it becomes.
//!
//! A pod opts in with the annotation `vaultsync.dev/inject: "true"`. Each container with
//! an environment variable whose literal value is a `vault:` reference gets its command
//! wrapped in `vaultsync env --`, the binary from an in-memory volume an init container
//! fills, and a projected service-account token of the pod's own account for the
//! connection's audience. Everything the wrapper is told (address, CA, auth mount) comes
//! from the operator's configuration; a pod chooses only a connection by name, a Vault
//! role (Vault binds roles to service accounts), the file mode and its refresh.
//! No value is read here: the mutated pod holds references, never secrets.

use std::collections::BTreeMap;

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use serde_json::{Value, json};

use crate::config::Config;
use crate::inject::{
    ENV_AUTH_MOUNT, ENV_CA_BUNDLE, ENV_PREFIX, ENV_ROLE, ENV_TOKEN_FILE, ENV_VAULT_ADDR,
    ENV_VAULT_CACERT, ENV_VAULT_NAMESPACE,
};

/// Opt-in annotation; any value but `"true"` leaves the pod alone.
pub const INJECT: &str = "vaultsync.dev/inject";
/// Vault role to log in with; the connection's default auth role when absent.
pub const ROLE: &str = "vaultsync.dev/role";
/// Name of a Vault connection of the operator config; `default` when absent.
pub const CONNECTION: &str = "vaultsync.dev/connection";
/// `env` (the default): values in the process environment; `files`: values in files
/// under [`SECRETS_DIR`], the variables holding the files' paths.
pub const MODE: &str = "vaultsync.dev/inject-mode";
/// With the file mode: a sidecar rewrites the files this often (such as `5m`).
pub const REFRESH: &str = "vaultsync.dev/refresh";
/// JSON object, container name to the image's entrypoint, for containers without a
/// `command` (the webhook cannot read images).
pub const ENTRYPOINTS: &str = "vaultsync.dev/entrypoints";

const INIT: &str = "vaultsync-install";
const SIDECAR: &str = "vaultsync-refresh";
const BIN_VOLUME: &str = "vaultsync-bin";
const TOKEN_VOLUME: &str = "vaultsync-token";
const SECRETS_VOLUME: &str = "vaultsync-secrets";
const BIN_DIR: &str = "/var/run/vaultsync/bin";
const TOKEN_DIR: &str = "/var/run/vaultsync/token";
/// The projected token for Azure's federated flow, in [`TOKEN_DIR`].
const AZURE_TOKEN: &str = "azure-token";
/// Where the file mode writes values.
pub const SECRETS_DIR: &str = "/var/run/vaultsync/secrets";

/// Whether the pod opted in, and the AzureKeyVaultSecrets its containers reference
/// (what [`review`] reads before [`mutate`]).
pub fn azure_names(pod: &Value) -> Result<Vec<String>, String> {
    if pod["metadata"]["annotations"][INJECT] != "true" {
        return Ok(Vec::new());
    }
    let mut names = Vec::new();
    for kind in ["containers", "initContainers"] {
        for container in containers(&pod["spec"], kind) {
            for r in reference_vars(container)?.azure {
                names.push(r.name);
            }
        }
    }
    names.sort_unstable();
    names.dedup();
    Ok(names)
}

/// The pod as it should be admitted: `Ok(None)` leaves it unchanged, `Err` refuses it with
/// a message for the person who applied it. `azure` is the wrapper's `VAULTSYNC_AZURE_*`
/// environment ([`crate::inject::azure::plan`]), for pods with `@azurekeyvault` references.
pub fn mutate(
    pod: &Value,
    namespace: &str,
    config: &Config,
    azure: &[Value],
) -> Result<Option<Value>, String> {
    let annotations = &pod["metadata"]["annotations"];
    let annotation = |key: &str| annotations.get(key).and_then(Value::as_str);
    if annotation(INJECT) != Some("true") {
        return Ok(None);
    }
    let injection = &config.injection;
    let Some(image) = injection.image.as_deref().filter(|_| injection.enabled) else {
        return Err("vaultsync injection is not enabled in the operator's configuration (injection.enabled, injection.image)".into());
    };
    let spec = &pod["spec"];
    // Already injected (the apiserver may call a webhook again): nothing more to do.
    if containers(spec, "initContainers").any(|c| c["name"] == INIT) {
        return Ok(None);
    }
    let mut has = (false, false);
    for kind in ["containers", "initContainers"] {
        for container in containers(spec, kind) {
            let refs = reference_vars(container)?;
            has = (has.0 || refs.vault, has.1 || !refs.azure.is_empty());
        }
    }
    let (has_vault, has_azure) = has;
    if has_azure && azure.is_empty() {
        return Err("the pod's @azurekeyvault references were not resolved".into());
    }
    let files = match annotation(MODE).unwrap_or("env") {
        "env" => false,
        "files" => true,
        other => return Err(format!("{MODE} {other:?}: use env or files")),
    };
    let refresh = annotation(REFRESH)
        .map(|r| {
            if !files {
                return Err(format!("{REFRESH} needs {MODE}: files"));
            }
            crate::config::parse_duration(r)
                .map(|_| r.to_string())
                .map_err(|e| format!("{REFRESH}: {e}"))
        })
        .transpose()?;
    let entrypoints: BTreeMap<String, Vec<String>> = match annotation(ENTRYPOINTS) {
        Some(text) => serde_json::from_str(text).map_err(|_| {
            format!("{ENTRYPOINTS} must be a JSON object of container name to command array")
        })?,
        None => BTreeMap::new(),
    };
    let (mut wrapper_env, mut tokens) = match has_vault {
        true => vault_env(config, namespace, &annotation)?,
        false => (Vec::new(), Vec::new()),
    };
    if has_azure {
        wrapper_env.extend(azure.iter().cloned());
        wrapper_env.push(json!({"name": crate::inject::azure::ENV_TOKEN_FILE,
                                "value": format!("{TOKEN_DIR}/{AZURE_TOKEN}")}));
        tokens.push(json!({"serviceAccountToken": {"audience": crate::backend::azure::FEDERATED_AUDIENCE,
                                                   "expirationSeconds": 3600, "path": AZURE_TOKEN}}));
    }
    wrapper_env.push(
        json!({"name": ENV_CA_BUNDLE, "value": format!("{BIN_DIR}/{}", crate::inject::CA_BUNDLE)}),
    );
    // Every variable the wrapper reads is set here, empty when unused: `env` wins over
    // `envFrom`, so a ConfigMap the pod imports cannot add a CA or a namespace.
    for name in crate::inject::RESERVED {
        if !wrapper_env.iter().any(|v| v["name"] == name) {
            wrapper_env.push(json!({"name": name, "value": ""}));
        }
    }

    let mut out = pod.clone();
    let mut injected = Vec::new();
    let mut first_user = None;
    let pod_context = &pod["spec"]["securityContext"];
    for kind in ["containers", "initContainers"] {
        let Some(list) = out["spec"][kind].as_array_mut() else {
            continue;
        };
        for container in list.iter_mut() {
            let name = container["name"].as_str().unwrap_or_default().to_string();
            let refs = reference_vars(container)?.vars;
            if refs.is_empty() {
                continue;
            }
            let command = match container["command"].as_array().filter(|c| !c.is_empty()) {
                Some(c) => c.clone(),
                None => match entrypoints.get(&name) {
                    Some(e) if !e.is_empty() => e.iter().map(|s| json!(s)).collect(),
                    _ => {
                        return Err(format!(
                            "container {name:?} has references but no command, so vaultsync env cannot know what to run: set its command (the image's entrypoint), or annotate the pod with {ENTRYPOINTS}: '{{\"{name}\": [\"/path/to/entrypoint\"]}}'"
                        ));
                    }
                },
            };
            // Through the copied loader, so the image needs no glibc of its own.
            let mut wrapped = vec![
                json!(format!("{BIN_DIR}/{}", crate::inject::LOADER)),
                json!("--library-path"),
                json!(BIN_DIR),
                json!(format!("{BIN_DIR}/vaultsync")),
                json!("env"),
            ];
            if files {
                wrapped.extend([json!("--files"), json!(SECRETS_DIR)]);
            }
            wrapped.push(json!("--"));
            wrapped.extend(command);
            container["command"] = Value::Array(wrapped);
            push(container, "env", wrapper_env.iter().cloned());
            push(container, "volumeMounts", mounts(files, false));
            let user = |field: &str| {
                container["securityContext"][field]
                    .as_i64()
                    .or(pod_context[field].as_i64())
            };
            if first_user.is_none()
                && let Some(uid) = user("runAsUser")
            {
                first_user = Some((uid, user("runAsGroup").unwrap_or(uid)));
            }
            injected.push((name, refs));
        }
    }
    if injected.is_empty() {
        return Ok(None);
    }

    let restricted = json!({
        "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
        "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
    });
    let resources =
        json!({"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}});
    let init = json!({
        "name": INIT, "image": image, "imagePullPolicy": injection.image_pull_policy,
        "command": ["/vaultsync", "install-self", BIN_DIR],
        "volumeMounts": [{"name": BIN_VOLUME, "mountPath": BIN_DIR}],
        "securityContext": restricted, "resources": resources,
    });
    let spec = &mut out["spec"];
    let mut inits = vec![init];
    inits.extend(
        spec["initContainers"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
    );
    spec["initContainers"] = Value::Array(inits);
    if let Some(every) = refresh {
        // The sidecar resolves every reference of the pod and rewrites the shared files,
        // as the user of the first injected container, so that container can read them
        // (they are written with mode 0400).
        let mut sidecar_context = restricted.clone();
        if let Some((uid, gid)) = first_user {
            sidecar_context["runAsUser"] = json!(uid);
            sidecar_context["runAsGroup"] = json!(gid);
            sidecar_context["runAsNonRoot"] = json!(uid != 0);
        }
        let mut env = wrapper_env.clone();
        for (_, refs) in &injected {
            env.extend(refs.iter().cloned());
        }
        let sidecar = json!({
            "name": SIDECAR, "image": image, "imagePullPolicy": injection.image_pull_policy,
            "command": ["/vaultsync", "env", "--files", SECRETS_DIR, "--refresh", every],
            "env": env, "volumeMounts": mounts(true, true),
            "securityContext": sidecar_context, "resources": resources,
        });
        push(spec, "containers", [sidecar]);
    }
    let mut volumes = vec![
        json!({"name": BIN_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}),
        json!({"name": TOKEN_VOLUME, "projected": {"sources": tokens}}),
    ];
    if files {
        volumes.push(
            json!({"name": SECRETS_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "8Mi"}}),
        );
    }
    push(spec, "volumes", volumes);
    Ok(Some(out))
}

/// The wrapper's Vault environment and the projected token it logs in with: the
/// connection (by the pod's annotation, `default` otherwise) and role.
fn vault_env<'a>(
    config: &Config,
    namespace: &str,
    annotation: &dyn Fn(&str) -> Option<&'a str>,
) -> Result<(Vec<Value>, Vec<Value>), String> {
    let connection_name = annotation(CONNECTION).unwrap_or("default");
    let connection = config.vault.get(connection_name).ok_or_else(|| {
        format!(
            "{CONNECTION}: no Vault connection {connection_name:?} in the operator's configuration"
        )
    })?;
    let default_auth = connection.default_auth.as_ref().map(|d| &d.kubernetes);
    let role = match (annotation(ROLE), default_auth) {
        (Some(role), _) if valid_role(role) => role.to_string(),
        (Some(role), _) => {
            return Err(format!(
                "{ROLE} {role:?} is not a Vault role name (letters, digits, '-', '_', '.', at most 128)"
            ));
        }
        (None, Some(auth)) => auth.role.replace("{namespace}", namespace),
        (None, None) => {
            return Err(format!(
                "set the annotation {ROLE}: connection {connection_name:?} has no default auth role"
            ));
        }
    };
    let mount = default_auth.map_or("kubernetes", |a| a.mount.as_str());
    let mut env = vec![
        json!({"name": ENV_VAULT_ADDR, "value": connection.address}),
        json!({"name": ENV_AUTH_MOUNT, "value": mount}),
        json!({"name": ENV_ROLE, "value": role}),
        json!({"name": ENV_TOKEN_FILE, "value": format!("{TOKEN_DIR}/token")}),
    ];
    if let Some(path) = &connection.ca_file {
        let ca = std::fs::read_to_string(path).map_err(|e| {
            format!("the operator cannot read connection {connection_name:?}'s caFile: {e}")
        })?;
        env.push(json!({"name": ENV_VAULT_CACERT, "value": ca}));
    }
    if let Some(ns) = &connection.namespace {
        env.push(json!({"name": ENV_VAULT_NAMESPACE, "value": ns}));
    }
    let token = json!({"serviceAccountToken": {"audience": connection.token_audience,
                                               "expirationSeconds": 600, "path": "token"}});
    Ok((env, vec![token]))
}

fn containers<'a>(spec: &'a Value, kind: &str) -> impl Iterator<Item = &'a Value> {
    spec[kind].as_array().into_iter().flatten()
}

/// A container's references: every reference variable (as env entries, for the
/// sidecar), whether any is a `vault:` one, and the `@azurekeyvault` ones.
#[derive(Default)]
struct Refs {
    vars: Vec<Value>,
    vault: bool,
    azure: Vec<crate::inject::azure::AzureRef>,
}

/// The container's references; refuses reserved names and malformed references.
fn reference_vars(container: &Value) -> Result<Refs, String> {
    let name = container["name"].as_str().unwrap_or_default();
    let mut refs = Refs::default();
    for var in container["env"].as_array().into_iter().flatten() {
        let var_name = var["name"].as_str().unwrap_or_default();
        if var_name.starts_with(ENV_PREFIX) {
            return Err(format!(
                "container {name:?}: environment variables starting with {ENV_PREFIX} are reserved for vaultsync ({var_name})"
            ));
        }
        let Some(value) = var["value"].as_str() else {
            continue;
        };
        if value.starts_with("vault:") {
            crate::inject::reference::Reference::parse(var_name, value)
                .map_err(|e| format!("container {name:?}: {e}"))?;
            refs.vault = true;
        } else if let Some(parsed) = crate::inject::azure::parse(var_name, value) {
            refs.azure
                .push(parsed.map_err(|e| format!("container {name:?}: {e}"))?);
        } else {
            continue;
        }
        refs.vars.push(var.clone());
    }
    Ok(refs)
}

fn mounts(files: bool, sidecar: bool) -> Vec<Value> {
    let mut m = vec![json!({"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true})];
    if !sidecar {
        m.push(json!({"name": BIN_VOLUME, "mountPath": BIN_DIR, "readOnly": true}));
    }
    if files {
        m.push(json!({"name": SECRETS_VOLUME, "mountPath": SECRETS_DIR}));
    }
    m
}

/// Appends to the array `object[field]`, creating it.
fn push(object: &mut Value, field: &str, items: impl IntoIterator<Item = Value>) {
    if !object[field].is_array() {
        object[field] = json!([]);
    }
    if let Some(list) = object[field].as_array_mut() {
        list.extend(items);
    }
}

fn valid_role(role: &str) -> bool {
    !role.is_empty()
        && role.len() <= 128
        && role
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Answers one AdmissionReview of a pod: unchanged, patched, or refused with the reason.
pub async fn review(
    client: &kube::Client,
    config: &Config,
    review: AdmissionReview<DynamicObject>,
) -> AdmissionReview<DynamicObject> {
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(request) => request,
        Err(e) => {
            return AdmissionResponse::invalid(format!("not an AdmissionReview: {e}"))
                .into_review();
        }
    };
    let response = AdmissionResponse::from(&request);
    let Some(object) = &request.object else {
        return response.into_review();
    };
    let pod = match serde_json::to_value(object) {
        Ok(pod) => pod,
        Err(e) => return response.deny(format!("unreadable pod: {e}")).into_review(),
    };
    let namespace = request.namespace.as_deref().unwrap_or_default();
    // The AzureKeyVaultSecrets a pod references are read first; the rest is pure.
    let azure = match azure_names(&pod) {
        Ok(names) if names.is_empty() => Ok(Vec::new()),
        Ok(names) => crate::inject::azure::plan(client, config, namespace, &pod, &names).await,
        Err(e) => Err(e),
    };
    match azure.and_then(|azure| mutate(&pod, namespace, config, &azure)) {
        Ok(None) => response.into_review(),
        Ok(Some(mutated)) => match response
            .clone()
            .with_patch(json_patch::diff(&pod, &mutated))
        {
            Ok(patched) => patched.into_review(),
            Err(e) => response
                .deny(format!("cannot build the patch: {e}"))
                .into_review(),
        },
        Err(message) => {
            let mut denied = response.deny(format!("vaultsync injection: {message}"));
            denied.result.code = 400;
            denied.result.reason = "BadRequest".into();
            denied.into_review()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            "admission: {enabled: true, certFile: /c, keyFile: /k}\n\
             injection: {enabled: true, image: reg/vaultsync:1}\n\
             vault:\n  default:\n    address: https://vault.example:8200\n    tokenAudience: vault\n    \
             defaultAuth: {kubernetes: {mount: k8s, role: \"{namespace}-app\"}}\n",
        )
        .expect("config")
    }

    fn pod(annotations: Value, container: Value) -> Value {
        json!({"metadata": {"annotations": annotations},
               "spec": {"securityContext": {"runAsUser": 1000}, "containers": [container]}})
    }

    fn app(command: Option<&str>) -> Value {
        let mut c = json!({"name": "app", "image": "app:1",
                           "env": [{"name": "P", "value": "vault:secret/data/a/b#p"}]});
        if let Some(command) = command {
            c["command"] = json!([command]);
        }
        c
    }

    #[test]
    fn pods_that_do_not_opt_in_are_left_alone() {
        let config = config();
        assert_eq!(
            mutate(&pod(json!({}), app(Some("/app"))), "ns", &config, &[]),
            Ok(None)
        );
        let off = pod(json!({INJECT: "yes"}), app(Some("/app")));
        assert_eq!(mutate(&off, "ns", &config, &[]), Ok(None));
    }

    #[test]
    fn an_opted_in_container_runs_the_wrapper_with_the_connection_from_config() {
        let out = mutate(
            &pod(json!({INJECT: "true"}), app(Some("/app"))),
            "team",
            &config(),
            &[],
        )
        .expect("admitted")
        .expect("changed");
        let c = &out["spec"]["containers"][0];
        assert_eq!(c["command"][0], format!("{BIN_DIR}/ld.so"));
        assert_eq!(c["command"][6], "/app");
        let env = c["env"].to_string();
        for want in ["https://vault.example:8200", "team-app", "\"k8s\""] {
            assert!(env.contains(want), "{want} in {env}");
        }
        // Every variable the wrapper reads is set, so envFrom cannot supply one.
        for name in crate::inject::RESERVED {
            assert!(env.contains(&format!("\"{name}\"")), "{name} in {env}");
        }
        assert_eq!(out["spec"]["initContainers"][0]["image"], "reg/vaultsync:1");
        assert!(
            out["spec"]["volumes"]
                .to_string()
                .contains("\"audience\":\"vault\"")
        );
        // Injected once: a second call changes nothing.
        assert_eq!(mutate(&out, "team", &config(), &[]), Ok(None));
    }

    #[test]
    fn refusals_say_what_to_do() {
        let config = config();
        let no_command = mutate(&pod(json!({INJECT: "true"}), app(None)), "ns", &config, &[]);
        assert!(no_command.unwrap_err().contains(ENTRYPOINTS));
        let mut reserved = app(Some("/app"));
        reserved["env"] = json!([{"name": "VAULTSYNC_VAULT_ADDR", "value": "http://evil"}]);
        let err = mutate(&pod(json!({INJECT: "true"}), reserved), "ns", &config, &[]).unwrap_err();
        assert!(err.contains("reserved"), "{err}");
        let bad_role = pod(json!({INJECT: "true", ROLE: "a/../b"}), app(Some("/app")));
        assert!(mutate(&bad_role, "ns", &config, &[]).is_err());
        let refresh_without_files = pod(json!({INJECT: "true", REFRESH: "5m"}), app(Some("/app")));
        assert!(mutate(&refresh_without_files, "ns", &config, &[]).is_err());
    }

    #[test]
    fn the_file_mode_sidecar_runs_as_the_application_user() {
        let annotations = json!({INJECT: "true", MODE: "files", REFRESH: "1m"});
        let out = mutate(&pod(annotations, app(Some("/app"))), "ns", &config(), &[])
            .expect("admitted")
            .expect("changed");
        let sidecar = &out["spec"]["containers"][1];
        assert_eq!(sidecar["name"], SIDECAR);
        assert_eq!(sidecar["securityContext"]["runAsUser"], 1000);
        assert!(
            sidecar["env"]
                .to_string()
                .contains("vault:secret/data/a/b#p")
        );
        assert!(
            out["spec"]["containers"][0]["command"]
                .to_string()
                .contains(SECRETS_DIR)
        );
    }
}
