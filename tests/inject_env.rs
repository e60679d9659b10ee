//! `vaultsync env`, the exec wrapper of pod injection, run as a process against the real
//! local OpenBao: it logs in with a TokenRequest token of the tenant's service account
//! (Kubernetes auth, audience `vault`), resolves `vault:` references and execs a shell
//! that reports what it sees (hashes, never values).
//!
//! Exec mode: KV v2, a KV v2 version pin and KV v1 values; no `VAULTSYNC_` variable
//! reaches the command; username and password of a database reference come from one
//! lease and log in to PostgreSQL. Failures: a denied path, a missing path or key, a
//! malformed reference; each names what failed and no value. File mode: 0400 files, the
//! variables hold their paths; the sidecar follows a rotation, keeps its database lease,
//! and stops on SIGTERM.

mod common;
mod e2e;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use e2e::{bao_root, canary, root_vault};
use serde_json::json;

fn sha256(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A tenant's wrapper environment: the `VAULTSYNC_` variables the webhook would set, with
/// a fresh TokenRequest token of service account `app` in a token file.
struct Wrapper {
    dir: PathBuf,
    env: Vec<(String, String)>,
}

impl Wrapper {
    async fn new(client: &kube::Client, ns: &str, role: &str) -> Wrapper {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("inject-env")
            .join(ns);
        std::fs::create_dir_all(&dir).expect("test dir");
        let token_file = dir.join("token");
        let token = e2e::service_account_token(client, ns, "app", "vault").await;
        std::fs::write(&token_file, token).expect("token file");
        let env = [
            ("PATH", std::env::var("PATH").unwrap_or_default()),
            (
                "VAULTSYNC_VAULT_ADDR",
                common::env("VAULT_ADDR", "OpenBao server"),
            ),
            ("VAULTSYNC_VAULT_AUTH_MOUNT", "kubernetes".into()),
            ("VAULTSYNC_VAULT_ROLE", role.into()),
            ("VAULTSYNC_TOKEN_FILE", token_file.display().to_string()),
        ];
        Wrapper {
            dir,
            env: env.map(|(k, v)| (k.to_string(), v)).to_vec(),
        }
    }

    /// `vaultsync ARGS` with the wrapper environment plus `vars`, and nothing else.
    fn command(&self, args: &[&str], vars: &[(&str, String)]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_vaultsync"));
        command.args(args).env_clear();
        command.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command.envs(vars.iter().map(|(k, v)| (*k, v.as_str())));
        command
    }

    /// Runs `vaultsync env -- /bin/sh -c SCRIPT` to its end.
    fn run(&self, script: &str, vars: &[(&str, String)]) -> Output {
        self.command(&["env", "--", "/bin/sh", "-c", script], vars)
            .output()
            .expect("run vaultsync env")
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts a failed run: non-zero exit, the command never ran, a one-line message with
/// `parts`, and none of `values`.
fn assert_refused(output: &Output, parts: &[&str], values: &[&str]) -> String {
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "refused: {stderr}");
    assert!(output.stdout.is_empty(), "the command did not run");
    assert!(stderr.contains("vaultsync env: "), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    for part in parts {
        assert!(stderr.contains(part), "names {part:?}: {stderr}");
    }
    for value in values {
        assert!(!stderr.contains(value), "no value in the message: {stderr}");
    }
    stderr
}

#[tokio::test]
async fn exec_mode_gives_kv_values_and_strips_the_wrapper_variables() {
    let (client, ns, role, first) = e2e::seeded("inject-env-kv", "env-kv").await;
    let second = canary("env-kv-second");
    vaultrs::kv2::set(
        &root_vault(),
        "secret",
        &format!("{ns}/app"),
        &json!({"password": second}),
    )
    .await
    .expect("version 2");
    let v1 = canary("env-kv1");
    let (status, _) = bao_root(
        "PUT",
        &format!("kv1/{ns}/app"),
        Some(json!({"user": v1, "n": 7})),
    )
    .await;
    assert_eq!(status, 204, "seed kv1");
    let wrapper = Wrapper::new(&client, &ns, &role).await;
    let script = "printf %s \"$PASSWORD\" | sha256sum; printf %s \"$PINNED\" | sha256sum; \
                  printf %s \"$KV1\" | sha256sum; echo \"n=$NUMBER plain=$PLAIN args=$0 $1\"; \
                  echo \"wrapper-vars=$(env | grep -c VAULTSYNC_ || true)\"";
    let output = wrapper
        .command(
            &["env", "--", "/bin/sh", "-c", script, "zero", "one"],
            &[
                ("PASSWORD", format!("vault:secret/data/{ns}/app#password")),
                ("PINNED", format!("vault:secret/data/{ns}/app#password#1")),
                ("KV1", format!("vault:kv1/{ns}/app#user")),
                ("NUMBER", format!("vault:kv1/{ns}/app#n")),
                ("PLAIN", "not-a-reference".into()),
            ],
        )
        .output()
        .expect("run");
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "{}\n{stdout}",
        text(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0],
        format!("{}  -", sha256(&second)),
        "latest KV v2 value"
    );
    assert_eq!(
        lines[1],
        format!("{}  -", sha256(&first)),
        "pinned version 1"
    );
    assert_eq!(lines[2], format!("{}  -", sha256(&v1)), "KV v1 value");
    assert_eq!(lines[3], "n=7 plain=not-a-reference args=zero one");
    assert_eq!(
        lines[4], "wrapper-vars=0",
        "no VAULTSYNC_ variable reaches the command"
    );
    assert!(
        output.stderr.is_empty(),
        "silent on success: {}",
        text(&output.stderr)
    );
}

#[tokio::test]
async fn a_database_reference_gives_username_and_password_of_one_lease() {
    let (client, ns) = e2e::setup("inject-env-db").await;
    let role = e2e::dynamic_tenant(&client, &ns).await;
    e2e::database_role(&ns, 3600, 7200).await;
    assert!(e2e::role_leases(&ns).await.is_empty());
    let wrapper = Wrapper::new(&client, &ns, &role).await;
    let admin = common::env("DATABASE_URL", "PostgreSQL server");
    let server = admin.split_once('@').expect("DATABASE_URL with @").1;
    let script = format!(
        "echo \"user=$DB_USER\"; PGPASSWORD=\"$DB_PASSWORD\" PGCONNECT_TIMEOUT=5 \
         psql \"postgres://$DB_USER@{server}\" -tAc 'select current_user'"
    );
    let output = wrapper.run(
        &script,
        &[
            ("DB_USER", format!("vault:database/creds/{ns}#username")),
            ("DB_PASSWORD", format!("vault:database/creds/{ns}#password")),
        ],
    );
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "logged in to PostgreSQL: {}\n{stdout}",
        text(&output.stderr)
    );
    let user = stdout
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("user="))
        .expect("user line");
    assert!(!user.is_empty());
    assert_eq!(
        stdout.lines().nth(1),
        Some(user),
        "PostgreSQL knows the pair as {user}"
    );
    let leases = e2e::role_leases(&ns).await;
    assert_eq!(
        leases.len(),
        1,
        "username and password from one read: {leases:?}"
    );
}

#[tokio::test]
async fn failures_name_the_path_or_variable_and_never_a_value() {
    let (client, ns, role, own) = e2e::seeded("inject-env-fail", "env-fail").await;
    let other = canary("env-fail-other");
    let other_path = format!("other-{ns}/app");
    vaultrs::kv2::set(
        &root_vault(),
        "secret",
        &other_path,
        &json!({"password": other}),
    )
    .await
    .expect("seed another tenant's path");
    let wrapper = Wrapper::new(&client, &ns, &role).await;
    let token = std::fs::read_to_string(wrapper.dir.join("token")).expect("token");
    let own_ref = ("PASSWORD", format!("vault:secret/data/{ns}/app#password"));
    let values = [own.as_str(), other.as_str(), token.as_str()];

    let denied = wrapper.run(
        "echo ran",
        &[
            own_ref.clone(),
            ("STOLEN", format!("vault:secret/data/{other_path}#password")),
        ],
    );
    assert_refused(
        &denied,
        &[
            "permission denied",
            &role,
            &format!("secret/data/{other_path}"),
        ],
        &values,
    );

    let missing = wrapper.run(
        "echo ran",
        &[("GONE", format!("vault:secret/data/{ns}/nothing#k"))],
    );
    assert_refused(
        &missing,
        &[&format!("secret/data/{ns}/nothing not found")],
        &values,
    );

    let no_key = wrapper.run(
        "echo ran",
        &[
            own_ref.clone(),
            ("TYPO", format!("vault:secret/data/{ns}/app#pasword")),
        ],
    );
    assert_refused(
        &no_key,
        &["\"pasword\"", "TYPO", "its keys are: password"],
        &values,
    );

    let no_version = wrapper.run(
        "echo ran",
        &[("OLD", format!("vault:secret/data/{ns}/app#password#9"))],
    );
    assert_refused(&no_version, &["version 9"], &values);

    let malformed = wrapper.run(
        "echo ran",
        &[("TRAVERSAL", format!("vault:secret/data/{ns}/../x#k"))],
    );
    assert_refused(&malformed, &["TRAVERSAL", "'..'"], &values);

    let no_command = wrapper
        .command(&["env", "--"], std::slice::from_ref(&own_ref))
        .output()
        .expect("run");
    assert_refused(&no_command, &["no command"], &values);

    let no_such_program = wrapper
        .command(
            &["env", "--", "/nonexistent/app"],
            std::slice::from_ref(&own_ref),
        )
        .output()
        .expect("run");
    assert_refused(
        &no_such_program,
        &["cannot exec \"/nonexistent/app\""],
        &values,
    );

    let mut bad_role = Wrapper::new(&client, &ns, "no-such-role").await;
    bad_role.env.retain(|(k, _)| k != "VAULTSYNC_VAULT_ADDR");
    let unset = bad_role.run("echo ran", std::slice::from_ref(&own_ref));
    assert_refused(&unset, &["VAULTSYNC_VAULT_ADDR is not set"], &values);
    let bad_role = Wrapper::new(&client, &ns, "no-such-role").await;
    let login = bad_role.run("echo ran", std::slice::from_ref(&own_ref));
    assert_refused(
        &login,
        &["logging in as role no-such-role at auth/kubernetes failed (HTTP 400)"],
        &values,
    );
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("file").permissions().mode() & 0o777
}

#[tokio::test]
async fn file_mode_writes_0400_files_and_the_variables_hold_their_paths() {
    let (client, ns, role, value) = e2e::seeded("inject-env-files", "env-files").await;
    let wrapper = Wrapper::new(&client, &ns, &role).await;
    let files = wrapper.dir.join("secrets");
    let script = "echo \"at=$PASSWORD\"; sha256sum < \"$PASSWORD\"";
    let output = wrapper
        .command(
            &[
                "env",
                "--files",
                files.to_str().expect("utf-8"),
                "--",
                "/bin/sh",
                "-c",
                script,
            ],
            &[("PASSWORD", format!("vault:secret/data/{ns}/app#password"))],
        )
        .output()
        .expect("run");
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "{}\n{stdout}",
        text(&output.stderr)
    );
    let file = files.join("PASSWORD");
    assert_eq!(
        stdout.lines().next(),
        Some(format!("at={}", file.display()).as_str())
    );
    assert_eq!(
        stdout.lines().nth(1),
        Some(format!("{}  -", sha256(&value)).as_str())
    );
    assert_eq!(std::fs::read_to_string(&file).expect("file"), value);
    assert_eq!(mode(&file), 0o400);
    assert_eq!(
        std::fs::read_dir(&files).expect("dir").count(),
        1,
        "no temporary file left"
    );
}

#[tokio::test]
async fn the_sidecar_follows_a_rotation_keeps_its_lease_and_stops_on_sigterm() {
    let (client, ns, _, first) = e2e::seeded("inject-env-sidecar", "env-sidecar").await;
    let role = e2e::dynamic_tenant(&client, &ns).await;
    e2e::database_role(&ns, 3600, 7200).await;
    let wrapper = Wrapper::new(&client, &ns, &role).await;
    let files = wrapper.dir.join("secrets");
    let mut sidecar = wrapper
        .command(
            &[
                "env",
                "--files",
                files.to_str().expect("utf-8"),
                "--refresh",
                "1s",
            ],
            &[
                ("PASSWORD", format!("vault:secret/data/{ns}/app#password")),
                ("DB_USER", format!("vault:database/creds/{ns}#username")),
                ("DB_PASSWORD", format!("vault:database/creds/{ns}#password")),
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the sidecar");
    let password = files.join("PASSWORD");
    let holds = |value: &str| {
        std::fs::read_to_string(&password)
            .ok()
            .filter(|v| v == value)
    };
    common::wait_until(Duration::from_secs(15), "the first value", || async {
        holds(&first)
    })
    .await;
    let db_user = std::fs::read_to_string(files.join("DB_USER")).expect("DB_USER file");
    let second = canary("env-sidecar-rotated");
    vaultrs::kv2::set(
        &root_vault(),
        "secret",
        &format!("{ns}/app"),
        &json!({"password": second}),
    )
    .await
    .expect("rotate");
    common::wait_until(Duration::from_secs(15), "the rotated value", || async {
        holds(&second)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(mode(&password), 0o400);
    assert_eq!(
        std::fs::read_to_string(files.join("DB_USER")).expect("file"),
        db_user,
        "same credentials"
    );
    let leases = e2e::role_leases(&ns).await;
    assert_eq!(leases.len(), 1, "the sidecar keeps its lease: {leases:?}");

    let pid = sidecar.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let exited = common::wait_until(Duration::from_secs(5), "the sidecar to stop", || {
        std::future::ready(sidecar.try_wait().expect("wait"))
    })
    .await;
    assert!(exited.success(), "SIGTERM stops the sidecar cleanly");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut sidecar.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    for value in [&first, &second, &db_user] {
        assert!(
            !stderr.contains(value.as_str()),
            "no value in the sidecar's log: {stderr}"
        );
    }
}

#[tokio::test]
async fn tls_trusts_the_given_ca_and_a_certificate_failure_is_not_retried() {
    // The local kube-apiserver is no Vault, but an HTTPS server with a CA of its own.
    let api = common::env("K8S_API_URL", "Kubernetes control plane");
    let ca = std::fs::read_to_string(common::env("K8S_CA_FILE", "Kubernetes control plane"))
        .expect("apiserver CA");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("inject-env-tls");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("token"), "not-a-token").expect("token file");
    let run = |ca: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_vaultsync"));
        command.args(["env", "--", "/bin/true"]).env_clear();
        command
            .env("VAULTSYNC_VAULT_ADDR", &api)
            .env("VAULTSYNC_VAULT_ROLE", "r");
        command.env("VAULTSYNC_TOKEN_FILE", dir.join("token"));
        command.env("PASSWORD", "vault:secret/data/app#password");
        if let Some(ca) = ca {
            command.env("VAULTSYNC_VAULT_CACERT", ca);
        }
        let started = std::time::Instant::now();
        let output = command.output().expect("run");
        (output, started.elapsed())
    };
    let (untrusted, took) = run(None);
    let stderr = assert_refused(
        &untrusted,
        &["failed the TLS handshake", "VAULTSYNC_VAULT_CACERT"],
        &[],
    );
    assert!(
        took < Duration::from_secs(3),
        "a certificate failure is not retried ({took:?}): {stderr}"
    );
    let (trusted, _) = run(Some(&ca));
    let stderr = assert_refused(
        &trusted,
        &["logging in as role r at auth/kubernetes failed (HTTP 4"],
        &[],
    );
    assert!(!stderr.contains("TLS"), "{stderr}");
    let (garbage, _) = run(Some("not a certificate"));
    assert_refused(
        &garbage,
        &["VAULTSYNC_VAULT_CACERT holds no PEM certificate"],
        &[],
    );
}
