//! `vaultsync env [--files DIR] [--refresh D] -- COMMAND...`: the exec wrapper of pod
//! injection. It logs in to Vault as the pod's service account (Kubernetes auth, with the
//! projected token the webhook mounts), reads each distinct `vault:` reference once (and
//! each `@azurekeyvault` one, as the same account through workload identity), and
//! execs COMMAND with the values in its environment, or in files of DIR (mode 0400) with
//! the variables holding the files' paths. Its own `VAULTSYNC_` variables never reach
//! COMMAND, and the Vault token is dropped at exec (not revoked: that would revoke the
//! leases of dynamic credentials read with it).
//!
//! Messages name variables, paths and keys; never a value or a token.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};

use super::ENV_PREFIX;
use super::azure::{self, Azure, AzureRef};
use super::client::{Login, Vault};
use super::reference::{self, Group};

/// What `vaultsync env` was asked to do.
#[derive(Clone, Debug, Default)]
pub struct EnvOptions {
    /// Write values to files in this directory instead of the environment.
    pub files: Option<PathBuf>,
    /// With `files` and no command: rewrite the files this often, forever (sidecar).
    pub refresh: Option<Duration>,
    /// The command to exec; may be empty only with `files`.
    pub command: Vec<String>,
}

/// Resolves the references of this process's environment and execs the command (returns
/// only on error, or after writing files when there is no command to run).
pub async fn run(options: EnvOptions) -> anyhow::Result<()> {
    execute(options)
        .await
        .map_err(|e| anyhow!("vaultsync env: {e}"))
}

/// Everything the environment asks to resolve, and the clients to resolve it with.
struct Sources {
    /// `None` only when there is no `vault:` reference.
    vault: Option<Vault>,
    groups: Vec<Group>,
    /// `None` only when there is no `@azurekeyvault` reference.
    azure: Option<Azure>,
    azure_refs: Vec<AzureRef>,
}

impl Sources {
    fn from_env() -> anyhow::Result<Self> {
        let groups = reference::group(reference::from_env(std::env::vars_os())?);
        let azure_refs = azure::from_env(std::env::vars_os())?;
        // Needed, and checked up front, only when there is something to resolve.
        Ok(Self {
            vault: (!groups.is_empty()).then(Vault::from_env).transpose()?,
            groups,
            azure: (!azure_refs.is_empty()).then(Azure::from_env).transpose()?,
            azure_refs,
        })
    }

    fn vars(&self) -> impl Iterator<Item = &String> {
        let vault = self.groups.iter().flat_map(|g| &g.refs).map(|(var, _)| var);
        vault.chain(self.azure_refs.iter().map(|r| &r.var))
    }

    /// Every value; dynamic Vault credentials from `leases` while they are fresh.
    async fn resolve(&self, leases: Option<&mut Leases>) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        let mut values = resolve(self.vault.as_ref(), &self.groups, leases).await?;
        if let Some(azure) = &self.azure {
            values.extend(azure.resolve(&self.azure_refs).await?);
        }
        Ok(values)
    }
}

async fn execute(options: EnvOptions) -> anyhow::Result<()> {
    let sources = Sources::from_env()?;
    let Some(dir) = options.files else {
        if options.refresh.is_some() {
            bail!("--refresh needs --files");
        }
        if options.command.is_empty() {
            bail!("no command to run: vaultsync env -- COMMAND [ARGS...]");
        }
        let values = sources.resolve(None).await?;
        return exec(&options.command, values);
    };
    for var in sources.vars() {
        reference::check_file_name(var)?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| anyhow!("cannot create {}: {e}", dir.display()))?;
    if let Some(every) = options.refresh {
        if !options.command.is_empty() {
            bail!("--refresh runs as a sidecar and takes no command");
        }
        if every.is_zero() {
            bail!("--refresh must be longer than 0s");
        }
        return sidecar(&sources, &dir, every).await;
    }
    let values = sources.resolve(None).await?;
    let mut paths = Vec::new();
    for (var, value) in values {
        write_file(&dir, &var, &value)?;
        paths.push((var.clone(), dir.join(&var).into_os_string().into_vec()));
    }
    if options.command.is_empty() {
        return Ok(());
    }
    exec(&options.command, paths)
}

/// Replaces this process with `command`, its reference variables set to `vars` and its
/// `VAULTSYNC_` variables removed. Returns only on error.
fn exec(command: &[String], vars: Vec<(String, Vec<u8>)>) -> anyhow::Result<()> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| anyhow!("no command to run"))?;
    let mut child = std::process::Command::new(program);
    child.args(args);
    for (name, _) in std::env::vars_os() {
        if name.as_encoded_bytes().starts_with(ENV_PREFIX.as_bytes()) {
            child.env_remove(name);
        }
    }
    for (var, value) in vars {
        if value.contains(&0) {
            bail!("the value of {var} holds a NUL byte, which an environment variable cannot");
        }
        child.env(var, OsString::from_vec(value));
    }
    let error = child.exec();
    bail!("cannot exec {program:?}: {error}")
}

/// Writes `value` to `dir/name` with mode 0400 through a temporary file and a rename, so
/// a reader sees the old or the new content, never a part. Returns whether it wrote
/// (an unchanged file is left alone).
fn write_file(dir: &Path, name: &str, value: &[u8]) -> anyhow::Result<bool> {
    let path = dir.join(name);
    if std::fs::read(&path).is_ok_and(|old| old == value) {
        return Ok(false);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let temp = dir.join(format!(".{name}.{}-{nanos}.tmp", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(&temp)
        .and_then(|mut file| file.write_all(value))
        .and_then(|()| std::fs::rename(&temp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        bail!("cannot write {}: {e}", path.display());
    }
    Ok(true)
}

/// The sidecar: resolves and rewrites the files every `every` until SIGTERM or SIGINT.
/// A failed round is logged and retried at the next tick.
async fn sidecar(sources: &Sources, dir: &Path, every: Duration) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leases = Leases::new();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = terminate.recv() => return Ok(()),
            _ = interrupt.recv() => return Ok(()),
        }
        let round = async {
            let mut written = 0;
            for (var, value) in sources.resolve(Some(&mut leases)).await? {
                written += usize::from(write_file(dir, &var, &value)?);
            }
            anyhow::Ok(written)
        };
        match round.await {
            Ok(0) => {}
            Ok(n) => eprintln!(
                "vaultsync env: wrote {n} changed file(s) in {}",
                dir.display()
            ),
            Err(e) => eprintln!("vaultsync env: refresh failed, retrying in {every:?}: {e}"),
        }
    }
}

/// Values of dynamic groups (those read under a lease) and when to read them again: the
/// sidecar keeps credentials until two thirds of their lease, or of the token that
/// created them (its expiry revokes them), rather than issue new ones every round.
type Leases = HashMap<reference::GroupId, (Instant, Vec<(String, Vec<u8>)>)>;

/// The value of every reference of `groups` (`vault` is `None` only when there is none):
/// one login, only when a group must be read, and one read per group. The token is
/// dropped on return.
async fn resolve(
    vault: Option<&Vault>,
    groups: &[Group],
    mut leases: Option<&mut Leases>,
) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let Some(vault) = vault else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let mut login: Option<Login> = None;
    for group in groups {
        let id = (group.path.clone(), group.version);
        if let Some((renew_at, values)) = leases.as_deref().and_then(|l| l.get(&id))
            && Instant::now() < *renew_at
        {
            out.extend(values.iter().cloned());
            continue;
        }
        if login.is_none() {
            login = Some(vault.login().await?);
        }
        let Some(login) = &login else {
            unreachable!("logged in above")
        };
        let body = vault.read(&login.token, group).await?;
        let values = reference::values(group, &body).map_err(|e| anyhow!(e))?;
        let lease = body["lease_duration"]
            .as_u64()
            .filter(|_| body["lease_id"].as_str().is_some_and(|id| !id.is_empty()));
        if let (Some(leases), Some(seconds)) = (leases.as_deref_mut(), lease) {
            let life = match login.ttl {
                0 => seconds,
                ttl => seconds.min(ttl),
            };
            let renew_at = Instant::now() + Duration::from_secs(life * 2 / 3);
            leases.insert(id, (renew_at, values.clone()));
        }
        out.extend(values);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::client::Vault;
    use serde_json::{Value, json};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server answering each connection with the next of `answers` (status, JSON body).
    async fn vault_answering(answers: Vec<(u16, Value)>) -> Vault {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            for (status, body) in answers {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut request = Vec::new();
                while !request.ends_with(b"\r\n\r\n") {
                    let mut byte = [0u8; 1];
                    if socket.read(&mut byte).await.unwrap() == 0 {
                        break;
                    }
                    request.push(byte[0]);
                }
                let body = body.to_string();
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                socket
                    .write_all(format!("{head}{body}").as_bytes())
                    .await
                    .unwrap();
            }
        });
        Vault {
            http: reqwest::Client::new(),
            addr,
            namespace: Some("team".into()),
            mount: "kubernetes".into(),
            role: "team-a".into(),
            token_file: "/nonexistent".into(),
        }
    }

    #[tokio::test]
    async fn a_failing_read_names_no_value_and_no_token() {
        let (token, value) = ("s.token-canary", "value-canary");
        let group = Group {
            path: "secret/data/app".into(),
            version: None,
            refs: vec![("PW".into(), "pw".into())],
        };
        let vault = vault_answering(vec![
            (
                400,
                json!({"errors": [format!("invalid token {token} for {value}")]}),
            ),
            (403, json!({"errors": [format!("denied {token} {value}")]})),
            (404, json!({"errors": [value]})),
            (
                200,
                json!({"data": {"data": {"password": value}, "metadata": {}}}),
            ),
        ])
        .await;
        let mut errors = Vec::new();
        for _ in 0..3 {
            errors.push(vault.read(token, &group).await.unwrap_err().to_string());
        }
        let body = vault.read(token, &group).await.unwrap();
        errors.push(reference::values(&group, &body).unwrap_err());
        assert!(errors[0].contains("<redacted>"), "{}", errors[0]);
        assert!(
            errors[1].contains("permission denied: role team-a")
                && errors[1].contains("secret/data/app")
        );
        assert!(
            errors[2].contains("secret/data/app not found"),
            "{}",
            errors[2]
        );
        assert!(
            errors[3].contains("its keys are: password"),
            "{}",
            errors[3]
        );
        for error in &errors {
            assert!(!error.contains(token), "{error}");
        }
        for error in &errors[1..] {
            assert!(!error.contains(value), "{error}");
        }
    }

    #[tokio::test]
    async fn transient_failures_are_retried_and_4xx_are_not() {
        let group = Group {
            path: "kv1/app".into(),
            version: None,
            refs: vec![("A".into(), "a".into())],
        };
        let vault = vault_answering(vec![
            (503, json!({})),
            (429, json!({})),
            (200, json!({"data": {"a": "1"}})),
            (400, json!({})),
            (200, json!({"data": {"a": "2"}})),
        ])
        .await;
        let body = vault.read("t", &group).await.expect("retried to success");
        assert_eq!(body["data"]["a"], "1");
        assert!(vault.read("t", &group).await.is_err(), "400 is final");
        let body = vault.read("t", &group).await.expect("the next answer");
        assert_eq!(body["data"]["a"], "2", "the 400 was asked once");
    }

    #[test]
    fn files_are_written_once_with_mode_0400() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("vaultsync-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(write_file(&dir, "PW", b"one").unwrap());
        assert!(
            !write_file(&dir, "PW", b"one").unwrap(),
            "unchanged: not rewritten"
        );
        assert!(write_file(&dir, "PW", b"two").unwrap());
        assert_eq!(std::fs::read(dir.join("PW")).unwrap(), b"two");
        let mode = std::fs::metadata(dir.join("PW"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file left"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
