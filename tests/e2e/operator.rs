//! The operator process, shared by the end-to-end tests (`tests/e2e/mod.rs`) and the
//! benchmarks (`examples/common/mod.rs` includes this file with `#[path]`): its
//! configuration, start, readiness, metrics, logs, CPU and memory, and how it ends.
//!
//! Only `std`, `reqwest` and `tokio` are used here, so both kinds of target can include
//! it; the callers turn errors into panics (tests) or `anyhow` errors (benchmarks).
#![allow(dead_code)]

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What goes into the operator's configuration file, besides `metricsAddress` (a free
/// loopback port the harness picks).
#[derive(Clone, Debug)]
pub struct ConfigSpec {
    pub operator_namespace: String,
    /// YAML: `[]` for all namespaces, or a list such as `[a, b]`.
    pub watch_namespaces: String,
    /// `defaults:` entries, in order; a later entry with the same key replaces an earlier.
    pub defaults: Vec<(String, String)>,
    /// The address of the `default` Vault connection.
    pub vault_addr: String,
    /// `logFormat`, if set.
    pub log_format: Option<String>,
    /// YAML appended at the top level (leader election, more connections, ...).
    pub extra: String,
}

impl ConfigSpec {
    /// Sets (or replaces) one `defaults:` entry.
    pub fn default_value(&mut self, key: &str, value: &str) {
        if let Some(entry) = self.defaults.iter_mut().find(|(k, _)| k == key) {
            entry.1 = value.to_string();
        } else {
            self.defaults.push((key.to_string(), value.to_string()));
        }
    }

    /// The configuration file's text with the metrics endpoint on `port`.
    pub fn render(&self, port: u16) -> String {
        let defaults = self
            .defaults
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut text = format!(
            "metricsAddress: 127.0.0.1:{port}\n\
             operatorNamespace: {}\n\
             watchNamespaces: {}\n\
             defaults: {{{defaults}}}\n",
            self.operator_namespace, self.watch_namespaces,
        );
        if let Some(format) = &self.log_format {
            text.push_str(&format!("logFormat: {format}\n"));
        }
        text.push_str(&format!(
            "vault:\n  default:\n    address: {}\n    kvVersions: {{}}\n",
            self.vault_addr
        ));
        text.push_str(&self.extra);
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text
    }
}

/// How to start one process.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The `vaultsync` binary.
    pub binary: PathBuf,
    /// Where the configuration and the log go.
    pub dir: PathBuf,
    pub config: ConfigSpec,
    /// `VAULTSYNC_LOG`.
    pub log_level: String,
    /// Extra environment variables (a failpoint, `KUBECONFIG` of another identity, ...).
    pub env: Vec<(String, String)>,
    /// Name the log and config files after the port (`operator-<port>.log`) so several
    /// processes can share `dir`; otherwise `operator.log` and `config.yaml`.
    pub per_port_files: bool,
}

/// A running (or ended) `vaultsync run`. Dropping it stops the process: SIGTERM, then
/// SIGKILL after five seconds.
pub struct OperatorProcess {
    child: Child,
    exit: Option<ExitStatus>,
    pub port: u16,
    pub log: PathBuf,
    pub config_path: PathBuf,
    pub metrics_url: String,
    pub ready_url: String,
}

/// CPU and memory of the process, from /proc.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcStats {
    pub cpu_seconds: f64,
    pub hwm_kib: u64,
    pub rss_kib: u64,
    /// Of the RSS: anonymous memory (heap, stacks) and file pages (the binary's code).
    pub rss_anon_kib: u64,
    pub rss_file_kib: u64,
}

const CLK_TCK: f64 = 100.0;

pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The value of the exact series `series` (such as
/// `vaultsync_secret_writes_total{part="data"}`) in Prometheus text, or `None` when the
/// text has no such series.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.trim_end().rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

/// Whether the metric family `name` (without `_total`) is exported at all, with or
/// without samples.
pub fn family_exported(text: &str, name: &str) -> bool {
    let base = name.strip_suffix("_total").unwrap_or(name);
    text.lines().any(|l| {
        l.strip_prefix("# TYPE ")
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|family| family == base || family == name)
    })
}

impl OperatorProcess {
    /// Writes the configuration and starts the process; it is not ready yet (see
    /// [`OperatorProcess::wait_ready`]).
    pub fn spawn(launch: &Launch) -> std::io::Result<OperatorProcess> {
        std::fs::create_dir_all(&launch.dir)?;
        let port = free_port()?;
        let (config_name, log_name) = if launch.per_port_files {
            (
                format!("config-{port}.yaml"),
                format!("operator-{port}.log"),
            )
        } else {
            ("config.yaml".to_string(), "operator.log".to_string())
        };
        let config_path = launch.dir.join(config_name);
        std::fs::write(&config_path, launch.config.render(port))?;
        let log = launch.dir.join(log_name);
        let log_file = std::fs::File::create(&log)?;
        let mut command = Command::new(&launch.binary);
        command
            .args(["run", "--config"])
            .arg(&config_path)
            .env("VAULTSYNC_LOG", &launch.log_level)
            .stdout(Stdio::null())
            .stderr(log_file);
        for (k, v) in &launch.env {
            command.env(k, v);
        }
        let child = command.spawn()?;
        Ok(OperatorProcess {
            child,
            exit: None,
            port,
            log,
            config_path,
            metrics_url: format!("http://127.0.0.1:{port}/metrics"),
            ready_url: format!("http://127.0.0.1:{port}/readyz"),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the process has ended.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    pub fn alive(&mut self) -> bool {
        self.try_exit().is_none()
    }

    /// Waits up to `timeout` for the process to end by itself; its exit status, or
    /// `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits up to `timeout` until `/readyz` answers 200. False if the process ended or
    /// the time ran out.
    pub async fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let http = reqwest::Client::new();
        loop {
            if !self.alive() {
                return false;
            }
            let ok = http
                .get(&self.ready_url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends `signal` (`TERM`, `KILL`, ...) to this process only.
    pub fn signal(&self, signal: &str) -> bool {
        Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// SIGTERM, then waits up to `timeout`; whether the process ended in time with
    /// status 0.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        if self.try_exit().is_none() {
            assert!(self.signal("TERM"), "kill -TERM {}", self.pid());
        }
        self.wait_exit(timeout).is_some_and(|s| s.success())
    }

    /// SIGTERM, then SIGKILL after five seconds.
    pub fn stop(&mut self) {
        if !self.alive() {
            return;
        }
        self.signal("TERM");
        if self.wait_exit(Duration::from_secs(5)).is_none() {
            self.kill();
        }
    }

    /// SIGKILL at once: a crash without any chance to clean up.
    pub fn kill(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
    }

    pub fn logs(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// The text of `/metrics`, or an error when the endpoint does not answer.
    pub async fn metrics_text(&self) -> reqwest::Result<String> {
        reqwest::Client::new()
            .get(&self.metrics_url)
            .timeout(Duration::from_secs(5))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await
    }

    /// utime + stime from /proc/<pid>/stat, 0 when unreadable.
    pub fn cpu_seconds(&self) -> f64 {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())) else {
            return 0.0;
        };
        // Fields after the parenthesised command name; utime and stime are fields 14 and
        // 15 of the whole line, so 12 and 13 after the name.
        let Some((_, rest)) = text.rsplit_once(')') else {
            return 0.0;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (ticks(11) + ticks(12)) / CLK_TCK
    }

    pub fn stats(&self) -> ProcStats {
        let mut stats = ProcStats {
            cpu_seconds: self.cpu_seconds(),
            ..ProcStats::default()
        };
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{}/status", self.pid())) {
            for line in text.lines() {
                let kib = || {
                    line.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0)
                };
                if line.starts_with("VmHWM:") {
                    stats.hwm_kib = kib();
                } else if line.starts_with("VmRSS:") {
                    stats.rss_kib = kib();
                } else if line.starts_with("RssAnon:") {
                    stats.rss_anon_kib = kib();
                } else if line.starts_with("RssFile:") {
                    stats.rss_file_kib = kib();
                }
            }
        }
        stats
    }

    /// The log file's directory.
    pub fn dir(&self) -> &Path {
        self.log.parent().unwrap_or(Path::new("."))
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
