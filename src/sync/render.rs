//! Render (pure): fetched material plus the output spec become the desired Secret.
//! Nothing here does IO, and no error message carries a value: only key names, sizes
//! and the kind of problem.
//!
//! Past 400 lines only because of its table tests of hostile templates and typed Secrets.

use std::collections::BTreeMap;

use minijinja::{Environment, UndefinedBehavior};

use super::bounds;

use crate::api::{FORBIDDEN_SECRET_TYPES, SecretTarget};
use crate::backend::{Fresh, SecretValue};
use crate::error::{Error, Result};

/// Kubernetes refuses Secrets whose data exceeds 1 MiB.
pub const MAX_SECRET_BYTES: usize = 1024 * 1024;
/// Upper bound on one template's source and on one rendered value.
pub const MAX_TEMPLATE_BYTES: usize = 64 * 1024;
/// Template instruction budget, shared by all templates of a resource: enough for any real
/// connection string, far too little for a loop meant to burn CPU.
const TEMPLATE_FUEL: u64 = 50_000;

/// The Secret the operator wants to exist, before ownership metadata is added.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredSecret {
    pub name: String,
    pub type_: String,
    pub data: BTreeMap<String, SecretValue>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// Builds the desired Secret named `name` from `fetched` as `target` asks.
pub fn render(name: &str, fetched: &Fresh, target: &SecretTarget) -> Result<DesiredSecret> {
    let type_ = secret_type(target.type_.as_deref())?;
    let data = match &target.template {
        Some(templates) if !templates.is_empty() => render_templates(templates, &fetched.data)?,
        _ => fetched.data.clone(),
    };
    check_data(&type_, &data)?;
    let annotations = target.annotations.clone().unwrap_or_default();
    if let Some(reserved) = annotations.keys().find(|k| k.starts_with("vaultsync.dev/")) {
        return Err(Error::InvalidSpec(format!(
            "annotation {reserved:?} is reserved for the operator: choose another name"
        )));
    }
    Ok(DesiredSecret {
        name: name.to_string(),
        type_,
        data,
        labels: target.labels.clone().unwrap_or_default(),
        annotations,
    })
}

/// The desired Secret when a kept lease's material is already in `secret`: its data and
/// type stay, labels and annotations follow the spec.
pub fn from_existing(
    name: &str,
    secret: &k8s_openapi::api::core::v1::Secret,
    target: &SecretTarget,
) -> DesiredSecret {
    DesiredSecret {
        name: name.to_string(),
        type_: secret.type_.clone().unwrap_or_else(|| "Opaque".into()),
        data: secret
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), SecretValue::new(v.0.clone())))
            .collect(),
        labels: target.labels.clone().unwrap_or_default(),
        annotations: target.annotations.clone().unwrap_or_default(),
    }
}

/// The Secret type to write: `Opaque` by default (akv2k8s' lowercase `opaque` too), and
/// never a type that makes Kubernetes mint credentials.
fn secret_type(requested: Option<&str>) -> Result<String> {
    match requested {
        None | Some("") => Ok("Opaque".into()),
        Some(t) if t.eq_ignore_ascii_case("opaque") => Ok("Opaque".into()),
        Some(t) if FORBIDDEN_SECRET_TYPES.contains(&t) => Err(Error::InvalidSpec(format!(
            "Secret type {t} is not allowed: it makes Kubernetes mint credentials"
        ))),
        Some(t) => Ok(t.to_string()),
    }
}

/// Renders every template of a resource under one budget: each is first proven bounded
/// (`bounds`), then run with the fuel and output bytes the earlier ones left.
fn render_templates(
    templates: &BTreeMap<String, String>,
    data: &BTreeMap<String, SecretValue>,
) -> Result<BTreeMap<String, SecretValue>> {
    // No loader, no globals beyond the builtins: a template sees only the fetched keys.
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_recursion_limit(20);
    // Values that are not UTF-8 cannot be templated; referring to one is an error.
    let text: BTreeMap<String, &str> = data
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), std::str::from_utf8(v.expose()).ok()?)))
        .collect();
    let sizes: BTreeMap<String, u64> = text
        .iter()
        .map(|(k, v)| (k.clone(), v.len() as u64))
        .collect();
    let context = minijinja::Value::from(
        text.iter()
            .map(|(k, v)| (k.clone(), minijinja::Value::from(*v)))
            .collect::<BTreeMap<String, minijinja::Value>>(),
    );
    let mut fuel = TEMPLATE_FUEL;
    let mut bytes = MAX_SECRET_BYTES;
    let mut out = BTreeMap::new();
    for (key, source) in templates {
        if source.len() > MAX_TEMPLATE_BYTES {
            return Err(Error::InvalidSpec(format!(
                "template for key {key:?} is {} bytes; the limit is {MAX_TEMPLATE_BYTES}",
                source.len()
            )));
        }
        if let Err(refusal) = bounds::check(source, &sizes) {
            return Err(Error::InvalidSpec(format!(
                "template for key {key:?} is refused at line {}: {}",
                refusal.line, refusal.reason
            )));
        }
        env.set_fuel(Some(fuel));
        let cap = MAX_TEMPLATE_BYTES.min(bytes);
        let (rendered, used) = render_one(&env, source, &context, cap).map_err(|failure| match failure {
            TemplateFailure::TooLarge => Error::InvalidData(format!(
                "template for key {key:?} produced more than {cap} bytes (at most {MAX_TEMPLATE_BYTES} per key and {MAX_SECRET_BYTES} in all)"
            )),
            // Only the kind and line: minijinja's detail text may quote values.
            TemplateFailure::Engine(e) => {
                let line = e.line().map(|l| format!(" at line {l}")).unwrap_or_default();
                let kind = match e.kind() {
                    minijinja::ErrorKind::UndefinedError => "it refers to a key the source does not have (or one that is not UTF-8 text)".to_string(),
                    minijinja::ErrorKind::OutOfFuel => "it ran out of the computation budget all templates of the resource share (a loop that is too long?)".to_string(),
                    other => other.to_string(),
                };
                Error::InvalidSpec(format!("template for key {key:?} failed{line}: {kind}"))
            }
        })?;
        fuel = fuel.saturating_sub(used);
        bytes = bytes.saturating_sub(rendered.len() + key.len());
        out.insert(key.clone(), SecretValue::new(rendered));
    }
    Ok(out)
}

enum TemplateFailure {
    Engine(minijinja::Error),
    TooLarge,
}

/// Renders one template into at most `cap` bytes; returns the output and the fuel used.
fn render_one(
    env: &Environment<'_>,
    source: &str,
    context: &minijinja::Value,
    cap: usize,
) -> std::result::Result<(Vec<u8>, u64), TemplateFailure> {
    let template = env
        .template_from_str(source)
        .map_err(TemplateFailure::Engine)?;
    let mut out = LimitedWriter {
        cap,
        ..Default::default()
    };
    match template.render_captured_to(context.clone(), &mut out) {
        Ok(captured) => {
            let used = captured.state().fuel_levels().map_or(0, |(used, _)| used);
            Ok((out.buf, used))
        }
        Err(_) if out.overflowed => Err(TemplateFailure::TooLarge),
        Err(e) => Err(TemplateFailure::Engine(e)),
    }
}

/// A writer that stops accepting output past `cap` bytes.
#[derive(Default)]
struct LimitedWriter {
    buf: Vec<u8>,
    cap: usize,
    overflowed: bool,
}

impl std::io::Write for LimitedWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > self.cap {
            self.overflowed = true;
            return Err(std::io::Error::other("template output too large"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A valid Secret data key: letters, digits, `-`, `_` and `.`, at most 253 characters.
pub fn is_valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && key != "."
        && key != ".."
}

/// The checks Kubernetes and the Secret type impose, done before any write so that bad
/// data fails closed with a clear reason instead of a refused request.
fn check_data(type_: &str, data: &BTreeMap<String, SecretValue>) -> Result<()> {
    if let Some(bad) = data.keys().find(|k| !is_valid_key(k)) {
        let shown: String = bad.chars().take(64).collect();
        return Err(Error::InvalidData(format!(
            "key {shown:?} is not a valid Secret key (letters, digits, '-', '_' and '.', at most 253 characters)"
        )));
    }
    let total: usize = data.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX_SECRET_BYTES {
        return Err(Error::InvalidData(format!(
            "the data is {total} bytes; a Kubernetes Secret holds at most {MAX_SECRET_BYTES}"
        )));
    }
    let require = |keys: &[&str]| -> Result<()> {
        let missing: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|k| !data.contains_key(*k))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidData(format!(
                "type {type_} needs the keys {keys:?}, but {missing:?} are missing; have {:?}",
                data.keys().collect::<Vec<_>>()
            )))
        }
    };
    match type_ {
        "kubernetes.io/tls" => {
            require(&["tls.crt", "tls.key"])?;
            for key in ["tls.crt", "tls.key"] {
                if !looks_like_pem(data[key].expose()) {
                    return Err(Error::InvalidData(format!(
                        "type kubernetes.io/tls needs PEM in {key}, but it holds no PEM block"
                    )));
                }
            }
        }
        "kubernetes.io/dockerconfigjson" => {
            require(&[".dockerconfigjson"])?;
            check_json_object(
                ".dockerconfigjson",
                &data[".dockerconfigjson"],
                Some("auths"),
            )?;
        }
        "kubernetes.io/dockercfg" => {
            require(&[".dockercfg"])?;
            check_json_object(".dockercfg", &data[".dockercfg"], None)?;
        }
        "kubernetes.io/basic-auth"
            if !data.contains_key("username") && !data.contains_key("password") =>
        {
            return Err(Error::InvalidData(
                "type kubernetes.io/basic-auth needs a username or password key".into(),
            ));
        }
        "kubernetes.io/ssh-auth" => require(&["ssh-privatekey"])?,
        _ => {}
    }
    Ok(())
}

fn looks_like_pem(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    text.contains("-----BEGIN ") && text.contains("-----END ")
}

fn check_json_object(key: &str, value: &SecretValue, required_field: Option<&str>) -> Result<()> {
    // serde_json's message can quote the input, so only its position is reported.
    let parsed: serde_json::Value = serde_json::from_slice(value.expose()).map_err(|e| {
        Error::InvalidData(format!(
            "{key} is not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let object = parsed
        .as_object()
        .ok_or_else(|| Error::InvalidData(format!("{key} must be a JSON object")))?;
    if let Some(field) = required_field
        && !object.contains_key(field)
    {
        return Err(Error::InvalidData(format!(
            "{key} must have an \"{field}\" field"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY: &str = "canary-Zx81-value";

    fn fetched(pairs: &[(&str, &str)]) -> Fresh {
        Fresh {
            data: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), SecretValue::from(*v)))
                .collect(),
            version: "1".into(),
            ..Default::default()
        }
    }

    fn target(type_: Option<&str>) -> SecretTarget {
        SecretTarget {
            type_: type_.map(str::to_string),
            ..Default::default()
        }
    }

    fn templated(pairs: &[(&str, &str)]) -> SecretTarget {
        SecretTarget {
            template: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn err_text(r: Result<DesiredSecret>) -> (String, &'static str) {
        let e = r.expect_err("should fail");
        (e.to_string(), e.reason())
    }

    #[test]
    fn plain_copy_is_opaque() {
        let d = render("s", &fetched(&[("a", "1"), ("b", "2")]), &target(None)).expect("ok");
        assert_eq!(d.type_, "Opaque");
        assert_eq!(d.data.len(), 2);
        let d = render("s", &fetched(&[("a", "1")]), &target(Some("opaque"))).expect("ok");
        assert_eq!(d.type_, "Opaque");
    }

    #[test]
    fn binary_values_pass_unchanged() {
        let mut f = fetched(&[]);
        f.data
            .insert("bin".into(), SecretValue::new(vec![0u8, 255, 10, 13]));
        let d = render("s", &f, &target(None)).expect("ok");
        assert_eq!(d.data["bin"].expose(), &[0u8, 255, 10, 13]);
    }

    #[test]
    fn template_renders_from_fetched_keys() {
        let f = fetched(&[("username", "app"), ("password", CANARY)]);
        let d = render(
            "s",
            &f,
            &templated(&[("url", "postgres://{{ username }}:{{ password }}@db/app")]),
        )
        .expect("ok");
        assert_eq!(d.data.len(), 1);
        assert_eq!(
            d.data["url"].expose(),
            format!("postgres://app:{CANARY}@db/app").as_bytes()
        );
    }

    #[test]
    fn template_errors_fail_closed_without_values() {
        let f = fetched(&[("password", CANARY)]);
        let cases = [
            ("{{ missing }}", "refers to a key the source does not have"),
            (
                "{% for i in range(200) %}{% for j in range(200) %}{% endfor %}{% endfor %}",
                "computation budget",
            ),
            (
                "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
                "is refused at line 1",
            ),
            ("{{ password * 100000 }}", "is refused at line 1"),
            (
                "{% include 'x' %}",
                "no macros, blocks, imports or includes",
            ),
            ("{{ password | int }}", "failed"),
            ("{{ password + 1 }}", "failed"),
            ("{{ unclosed", "does not parse"),
        ];
        for (source, expected) in cases {
            let (msg, _) = err_text(render("s", &f, &templated(&[("k", source)])));
            assert!(msg.contains(expected), "{source}: {msg}");
            assert!(!msg.contains(CANARY), "{source} leaked the value: {msg}");
        }
    }

    #[test]
    fn all_templates_of_a_resource_share_one_budget() {
        let f = fetched(&[("password", CANARY)]);
        // Each loop alone fits the fuel; together they do not.
        let busy = "{% for i in range(150) %}{% for j in range(100) %}{% endfor %}{% endfor %}";
        assert!(render("s", &f, &templated(&[("a", busy)])).is_ok());
        let (msg, reason) = err_text(render("s", &f, &templated(&[("a", busy), ("b", busy)])));
        assert_eq!(reason, "InvalidSpec");
        assert!(msg.contains("\"b\"") && msg.contains("budget"), "{msg}");
        // Output: 17 keys of 64,000 bytes pass the per-key cap but not the Secret's 1 MiB.
        let wide = "{{ '-' * 64000 }}";
        let keys: Vec<String> = (0..17).map(|i| format!("k{i:02}")).collect();
        let many: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), wide)).collect();
        let (msg, reason) = err_text(render("s", &f, &templated(&many)));
        assert_eq!(reason, "InvalidData");
        assert!(msg.contains("\"k16\"") && msg.contains("in all"), "{msg}");
    }

    #[test]
    fn forbidden_types_are_refused() {
        for t in FORBIDDEN_SECRET_TYPES {
            let (msg, reason) = err_text(render("s", &fetched(&[("a", "1")]), &target(Some(t))));
            assert_eq!(reason, "InvalidSpec");
            assert!(msg.contains("not allowed"));
        }
    }

    #[test]
    fn typed_secrets_need_their_keys() {
        let pem_crt = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let pem_key = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n";
        let ok = [
            (
                "kubernetes.io/tls",
                vec![("tls.crt", pem_crt), ("tls.key", pem_key)],
            ),
            (
                "kubernetes.io/dockerconfigjson",
                vec![(".dockerconfigjson", r#"{"auths":{}}"#)],
            ),
            ("kubernetes.io/dockercfg", vec![(".dockercfg", "{}")]),
            ("kubernetes.io/basic-auth", vec![("username", "u")]),
            ("kubernetes.io/ssh-auth", vec![("ssh-privatekey", "k")]),
            ("example.com/custom", vec![("anything", "v")]),
        ];
        for (t, pairs) in ok {
            render("s", &fetched(&pairs), &target(Some(t))).unwrap_or_else(|e| panic!("{t}: {e}"));
        }
        let bad = [
            ("kubernetes.io/tls", vec![("tls.crt", pem_crt)], "missing"),
            (
                "kubernetes.io/tls",
                vec![("tls.crt", CANARY), ("tls.key", pem_key)],
                "no PEM block",
            ),
            (
                "kubernetes.io/dockerconfigjson",
                vec![(".dockerconfigjson", CANARY)],
                "not valid JSON",
            ),
            (
                "kubernetes.io/dockerconfigjson",
                vec![(".dockerconfigjson", "{}")],
                "\"auths\"",
            ),
            (
                "kubernetes.io/basic-auth",
                vec![("token", CANARY)],
                "username or password",
            ),
            ("kubernetes.io/ssh-auth", vec![("key", CANARY)], "missing"),
        ];
        for (t, pairs, expected) in bad {
            let (msg, reason) = err_text(render("s", &fetched(&pairs), &target(Some(t))));
            assert_eq!(reason, "InvalidData", "{t}");
            assert!(msg.contains(expected), "{t}: {msg}");
            assert!(!msg.contains(CANARY), "{t} leaked: {msg}");
        }
    }

    #[test]
    fn hostile_payloads_fail_closed() {
        let (msg, reason) = err_text(render("s", &fetched(&[("bad key", "v")]), &target(None)));
        assert_eq!(reason, "InvalidData");
        assert!(msg.contains("not a valid Secret key"));

        let big = "x".repeat(MAX_SECRET_BYTES + 1);
        let (msg, _) = err_text(render("s", &fetched(&[("big", &big)]), &target(None)));
        assert!(msg.contains("at most 1048576"));

        let many: Vec<(String, String)> = (0..10_000)
            .map(|i| (format!("k{i}"), "v".repeat(200)))
            .collect();
        let pairs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (msg, _) = err_text(render("s", &fetched(&pairs), &target(None)));
        assert!(msg.contains("at most 1048576"));
    }

    #[test]
    fn reserved_annotations_are_refused() {
        let t = SecretTarget {
            annotations: Some([("vaultsync.dev/expires-at".to_string(), "x".to_string())].into()),
            ..Default::default()
        };
        let (_, reason) = err_text(render("s", &fetched(&[("a", "1")]), &t));
        assert_eq!(reason, "InvalidSpec");
    }
}
