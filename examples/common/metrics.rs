//! The operator's and the apiserver's Prometheus metrics: parsing, the operator's figures
//! of interest, and the apiserver's write requests.

use std::collections::BTreeMap;

use anyhow::Context as _;
use kube::Client;

#[derive(Clone, Default)]
pub struct Samples(Vec<(String, BTreeMap<String, String>, f64)>);

impl Samples {
    pub fn parse(text: &str) -> Self {
        let mut out = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            out.push((name.to_string(), labels, value));
        }
        Samples(out)
    }

    fn values<'a>(
        &'a self,
        name: &'a str,
        keep: impl Fn(&BTreeMap<String, String>) -> bool + 'a,
    ) -> impl Iterator<Item = f64> + 'a {
        self.0
            .iter()
            .filter(move |(n, l, _)| n == name && keep(l))
            .map(|(_, _, v)| *v)
    }

    /// Sum of the series named `name` whose labels pass `keep`.
    pub fn sum(&self, name: &str, keep: impl Fn(&BTreeMap<String, String>) -> bool) -> f64 {
        // An empty float sum is -0.0; print it as 0.
        self.values(name, keep).sum::<f64>() + 0.0
    }

    /// Like `sum`, leaving out values that are not finite (and an empty sum -0.0).
    pub fn sum_finite(&self, name: &str, keep: impl Fn(&BTreeMap<String, String>) -> bool) -> f64 {
        self.values(name, keep).filter(|v| v.is_finite()).sum()
    }

    /// Sums of the series named `name` passing `keep`, grouped by `key`.
    pub fn group(
        &self,
        name: &str,
        keep: impl Fn(&BTreeMap<String, String>) -> bool,
        key: impl Fn(&BTreeMap<String, String>) -> String,
    ) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (n, l, v) in &self.0 {
            if n == name && keep(l) {
                *out.entry(key(l)).or_insert(0.0) += v;
            }
        }
        out
    }
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                other => value.push(other),
            }
        }
        labels.insert(key.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    labels
}

pub fn delta(
    after: &BTreeMap<String, f64>,
    before: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

/// The `top` largest entries, then the rest as one sum.
pub fn fmt_top(map: &BTreeMap<String, f64>, top: usize) -> String {
    let mut items: Vec<(&String, &f64)> = map.iter().collect();
    items.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
    let mut parts: Vec<String> = items
        .iter()
        .take(top)
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let rest: f64 = items.iter().skip(top).map(|(_, v)| **v).sum();
    if rest > 0.0 {
        parts.push(format!("other {rest}"));
    }
    parts.join(", ")
}

const WRITE_VERBS: [&str; 6] = [
    "POST",
    "PUT",
    "PATCH",
    "DELETE",
    "DELETECOLLECTION",
    "APPLY",
];

/// Apiserver write requests so far (all clients), by "verb resource[/subresource]".
pub async fn apiserver_writes(client: &Client) -> anyhow::Result<BTreeMap<String, f64>> {
    let request = axum::http::Request::get("/metrics").body(Vec::new())?;
    let text = client
        .request_text(request)
        .await
        .context("read the kube-apiserver's /metrics")?;
    Ok(Samples::parse(&text).group(
        "apiserver_request_total",
        |l| WRITE_VERBS.contains(&l.get("verb").map(String::as_str).unwrap_or_default()),
        |l| {
            let resource = l.get("resource").cloned().unwrap_or_default();
            let sub = l.get("subresource").cloned().unwrap_or_default();
            let verb = l.get("verb").cloned().unwrap_or_default();
            if sub.is_empty() {
                format!("{verb} {resource}")
            } else {
                format!("{verb} {resource}/{sub}")
            }
        },
    ))
}

/// OpenBao's own metrics (`/v1/sys/metrics`: every client of the server, not only the
/// operator); `None` when they cannot be read.
pub async fn openbao(addr: &str, token: &str) -> Option<Samples> {
    let text = reqwest::Client::new()
        .get(format!("{addr}/v1/sys/metrics?format=prometheus"))
        .header("X-Vault-Token", token)
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await
        .ok()?
        .error_for_status()
        .ok()?
        .text()
        .await
        .ok()?;
    Some(Samples::parse(&text))
}

/// Reads OpenBao served under `mount` (KV data and metadata), by its own count.
pub fn openbao_reads(samples: &Samples, mount: &str) -> f64 {
    samples.sum(&format!("vault_route_read_{mount}__count"), |_| true)
}

/// The operator's figures of interest, from its metrics. The backend requests are those
/// of one backend (`azure`, `vault`) or, with `None`, of all.
#[derive(Clone, Copy, Default)]
pub struct OpFigures {
    pub synced: f64,
    pub failed: f64,
    pub requests: f64,
    pub requests_ok: f64,
    pub requests_throttled: f64,
    pub logins: f64,
    pub logins_failed: f64,
    pub data_writes: f64,
    pub metadata_writes: f64,
}

impl OpFigures {
    pub fn from(samples: &Samples, backend: Option<&str>) -> Self {
        let get = |l: &BTreeMap<String, String>, k: &str| l.get(k).cloned().unwrap_or_default();
        let ours = |l: &BTreeMap<String, String>| backend.is_none_or(|b| get(l, "backend") == b);
        let requests = |outcome: Option<&str>| {
            samples.sum("vaultsync_backend_requests_total", |l| {
                ours(l) && outcome.is_none_or(|o| get(l, "outcome") == o)
            })
        };
        let logins = |ok: bool| {
            samples.sum("vaultsync_vault_logins_total", |l| {
                (get(l, "outcome") == "ok") == ok
            })
        };
        let writes =
            |part: &str| samples.sum("vaultsync_secret_writes_total", |l| get(l, "part") == part);
        Self {
            synced: samples.sum("vaultsync_syncs_total", |l| get(l, "result") == "Synced"),
            failed: samples.sum("vaultsync_syncs_total", |l| get(l, "result") != "Synced"),
            requests: requests(None),
            requests_ok: requests(Some("ok")),
            requests_throttled: requests(Some("throttled")),
            logins: logins(true),
            logins_failed: logins(false),
            data_writes: writes("data"),
            metadata_writes: writes("metadata"),
        }
    }

    pub fn minus(self, before: Self) -> Self {
        Self {
            synced: self.synced - before.synced,
            failed: self.failed - before.failed,
            requests: self.requests - before.requests,
            requests_ok: self.requests_ok - before.requests_ok,
            requests_throttled: self.requests_throttled - before.requests_throttled,
            logins: self.logins - before.logins,
            logins_failed: self.logins_failed - before.logins_failed,
            data_writes: self.data_writes - before.data_writes,
            metadata_writes: self.metadata_writes - before.metadata_writes,
        }
    }

    /// "ok / failed".
    pub fn syncs(&self) -> String {
        format!("{} / {}", self.synced, self.failed)
    }
}

/// Sums of the series `name` by the values of `labels`; of one backend's series (and
/// those without a backend label) or, with `None`, of all.
pub fn breakdown(
    samples: &Samples,
    name: &str,
    labels: &[&str],
    backend: Option<&str>,
) -> BTreeMap<String, f64> {
    samples.group(
        name,
        |l| backend.is_none_or(|want| l.get("backend").is_none_or(|b| b == want)),
        |l| {
            labels
                .iter()
                .map(|k| l.get(*k).cloned().unwrap_or_default())
                .collect::<Vec<_>>()
                .join(" ")
        },
    )
}
