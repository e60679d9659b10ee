//! The local Key Vault's request log and its token endpoint's log (tests/env/keyvault,
//! written under target/env/keyvault): the HTTP requests a vault saw and the federated
//! token exchanges of a client, in a window of time.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Seek as _};
use std::path::{Path, PathBuf};

use jiff::Timestamp;

/// The two logs in `dir`, from where they ended when [`KeyVaultLogs::mark`] was called.
pub struct KeyVaultLogs {
    pub requests: PathBuf,
    pub tokens: PathBuf,
    requests_offset: u64,
    tokens_offset: u64,
}

impl KeyVaultLogs {
    pub fn mark(dir: &Path) -> Self {
        let requests = dir.join("keyvault.log");
        let tokens = dir.join("token-endpoint.log");
        Self {
            requests_offset: log_offset(&requests),
            tokens_offset: log_offset(&tokens),
            requests,
            tokens,
        }
    }

    /// The request lines since the mark; `None` if the log could not be read.
    pub fn requests(&self) -> Option<Vec<KvLine>> {
        log_since(&self.requests, self.requests_offset).map(|t| parse_kv_log(&t))
    }

    /// The token endpoint's log since the mark; `None` if it could not be read.
    pub fn tokens(&self) -> Option<String> {
        log_since(&self.tokens, self.tokens_offset)
    }
}

/// The byte length of a log now: where this run's lines start.
fn log_offset(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The log's text after `offset` (all of it if the file was truncated since).
fn log_since(path: &Path, offset: u64) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(std::io::SeekFrom::Start(if len < offset {
        0
    } else {
        offset
    }))
    .ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// One request line of the local Key Vault's log:
/// `TIME CLIENT METHOD vault=V PATH STATUS identity=I request-id=R`.
pub struct KvLine {
    pub at: Timestamp,
    pub method: String,
    pub vault: String,
    pub path: String,
    pub status: u16,
}

fn parse_kv_log(text: &str) -> Vec<KvLine> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 6 {
                return None;
            }
            Some(KvLine {
                at: f[0].parse().ok()?,
                method: f[2].to_string(),
                vault: f[3].strip_prefix("vault=")?.to_string(),
                path: f[4].to_string(),
                status: f[5].parse().ok()?,
            })
        })
        .collect()
}

/// HTTP requests the vault saw in a window.
#[derive(Default)]
pub struct Traffic {
    pub ok: usize,
    pub challenged: usize,
    pub throttled: usize,
    pub other: usize,
    pub first: Option<Timestamp>,
    pub last: Option<Timestamp>,
    /// Most requests (any status) in any one-second sliding window.
    pub peak_per_sec: usize,
    /// The same without the 401 challenges: SDK calls, what the client-side limit spaces.
    pub peak_calls_per_sec: usize,
}

impl Traffic {
    /// "200 / 401 / 429 / other".
    pub fn statuses(&self) -> String {
        format!(
            "{} / {} / {} / {}",
            self.ok, self.challenged, self.throttled, self.other
        )
    }

    pub fn total(&self) -> usize {
        self.ok + self.challenged + self.throttled + self.other
    }

    pub fn span_secs(&self) -> f64 {
        match (self.first, self.last) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
            _ => 0.0,
        }
    }
}

/// The requests to `vault` from `from` to `to` that `keep` accepts.
pub fn traffic(
    lines: &[KvLine],
    vault: &str,
    from: Timestamp,
    to: Timestamp,
    keep: impl Fn(&KvLine) -> bool,
) -> Traffic {
    let mut t = Traffic::default();
    let mut times = Vec::new();
    for l in lines
        .iter()
        .filter(|l| l.at >= from && l.at <= to && l.vault == vault && keep(l))
    {
        match l.status {
            200 => t.ok += 1,
            401 => t.challenged += 1,
            429 => t.throttled += 1,
            _ => t.other += 1,
        }
        times.push(l.at);
    }
    times.sort();
    t.first = times.first().copied();
    t.last = times.last().copied();
    t.peak_per_sec = peak_per_sec(&times);
    let mut calls: Vec<Timestamp> = lines
        .iter()
        .filter(|l| l.at >= from && l.at <= to && l.vault == vault && l.status != 401 && keep(l))
        .map(|l| l.at)
        .collect();
    calls.sort();
    t.peak_calls_per_sec = peak_per_sec(&calls);
    t
}

/// How many distinct objects of `vault` were read successfully (GET, 200) from `from` to
/// `to`, among the requests `keep` accepts: `/secrets/<name>[/<version>]` counts `<name>`.
pub fn objects_read(
    lines: &[KvLine],
    vault: &str,
    from: Timestamp,
    to: Timestamp,
    keep: impl Fn(&KvLine) -> bool,
) -> usize {
    lines
        .iter()
        .filter(|l| l.at >= from && l.at <= to && l.vault == vault && l.status == 200)
        .filter(|l| l.method == "GET" && keep(l))
        .filter_map(|l| {
            let rest = l.path.split('?').next()?.strip_prefix('/')?;
            let mut parts = rest.split('/');
            let collection = parts.next()?;
            Some((collection.to_string(), parts.next()?.to_string()))
        })
        .collect::<BTreeSet<_>>()
        .len()
}

/// Most of the sorted `times` in any one-second sliding window.
fn peak_per_sec(times: &[Timestamp]) -> usize {
    let mut peak = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end].duration_since(times[start]).as_secs_f64() >= 1.0 {
            start += 1;
        }
        peak = peak.max(end - start + 1);
    }
    peak
}

/// Token endpoint exchanges of one client in a window: issued per namespace of the
/// service account, and refusals (not attributable to a namespace: a refusal names no
/// subject).
#[derive(Default)]
pub struct Exchanges {
    pub issued: BTreeMap<String, usize>,
    pub refused: usize,
}

impl Exchanges {
    pub fn issued_total(&self) -> usize {
        self.issued.values().sum()
    }

    pub fn describe(&self) -> String {
        let max = self.issued.values().max().copied().unwrap_or(0);
        format!(
            "{} ({} ns, max {max}/ns{})",
            self.issued_total(),
            self.issued.len(),
            if self.refused > 0 {
                format!(", {} refused", self.refused)
            } else {
                String::new()
            }
        )
    }
}

/// The exchanges of `client_id` from `from` to `to` for service accounts in `namespaces`,
/// from lines `TIME CLIENT POST /TENANT/oauth2/v2.0/token STATUS key=value... [issued]`.
pub fn exchanges(
    text: &str,
    client_id: &str,
    from: Timestamp,
    to: Timestamp,
    namespaces: &BTreeSet<String>,
) -> Exchanges {
    let mut out = Exchanges::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 || f[2] != "POST" || !f[3].ends_with("/oauth2/v2.0/token") {
            continue;
        }
        let Ok(at) = f[0].parse::<Timestamp>() else {
            continue;
        };
        if at < from || at > to {
            continue;
        }
        let field = |k: &str| {
            f[5..]
                .iter()
                .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
        };
        if field("client_id") != Some(client_id) {
            continue;
        }
        if f[4] != "200" {
            out.refused += 1;
            continue;
        }
        let ns = field("subject")
            .and_then(|s| s.strip_prefix("system:serviceaccount:"))
            .and_then(|s| s.split(':').next());
        if let Some(ns) = ns.filter(|ns| namespaces.contains(*ns)) {
            *out.issued.entry(ns.to_string()).or_default() += 1;
        }
    }
    out
}
