//! The two runs the benches measure on their resources: a cold start and one refresh
//! cycle.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kube::Client;

use super::Operator;
use super::metrics::{OpFigures, Samples, apiserver_writes, delta};
use super::operator::ProcStats;
use super::watch::{Seen, Watch, Writes};

/// A cold start: from the operator's start (`t0`, every resource already applied) until
/// all were Ready, the operator exited or the time ran out.
pub struct ColdStart {
    /// When all were Ready, after `t0`.
    pub ready_at: Option<Duration>,
    /// The operator exited first.
    pub died: bool,
    /// When the wait ended.
    pub end: Timestamp,
    /// The operator's metrics and process figures then.
    pub samples: Samples,
    pub proc: ProcStats,
    /// Per resource, `t0` to Ready (s), sorted; and the reasons of those not Ready.
    pub latencies: Vec<f64>,
    pub not_ready: BTreeMap<String, usize>,
}

impl ColdStart {
    /// Waits up to `timeout` after `t0` until the `count` resources `keep` accepts are
    /// Ready.
    pub async fn wait(
        watch: &Watch,
        op: &mut Operator,
        t0: Instant,
        keep: impl Fn(&str) -> bool + Copy,
        count: usize,
        timeout: Duration,
    ) -> Self {
        let mut ready_at = None;
        let mut died = false;
        while t0.elapsed() < timeout {
            if watch.ready(keep) >= count {
                ready_at = Some(t0.elapsed());
                break;
            }
            if !op.alive() {
                died = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let end = Timestamp::now();
        let samples = op.metrics().await;
        let proc = op.stats();
        let (latencies, not_ready) = watch.latencies(keep, t0);
        Self {
            ready_at,
            died,
            end,
            samples,
            proc,
            latencies,
            not_ready,
        }
    }

    /// "<s> s" until all were Ready, or how many were.
    pub fn describe(&self) -> String {
        self.ready_at.map_or_else(
            || format!("{} Ready", self.latencies.len()),
            |d| format!("{:.2} s", d.as_secs_f64()),
        )
    }

    /// Says on stderr how it went.
    pub fn say(&self, tag: &str, count: usize, t0: Instant) {
        match self.ready_at {
            Some(d) => eprintln!("{tag}: all {count} Ready after {:.2} s", d.as_secs_f64()),
            None => eprintln!(
                "{tag}: only {} of {count} Ready after {:.0} s{}",
                self.latencies.len(),
                t0.elapsed().as_secs_f64(),
                if self.died {
                    ": the operator exited"
                } else {
                    ""
                }
            ),
        }
    }
}

/// One refresh cycle of unchanged data. A refresh that finds nothing new writes neither
/// the Secret nor the status, so the cycle is not seen in the resources: it starts when
/// the wait starts and ends when every resource was due (the latest status.nextRefreshTime
/// seen at the start has passed) and the operator counts at least one successful sync of
/// `kind` per resource since the start. The figures that judge the cycle come from
/// elsewhere: the backend's own request counts (the caller's), the apiserver's write
/// counters and the bench's watches.
pub struct Cycle {
    /// How long it took; `None` if it did not complete in time.
    pub done: Option<Duration>,
    /// The resources of the cycle, and when the last of them was due.
    pub objects: usize,
    pub due: Option<Timestamp>,
    /// Successful syncs of `kind` the operator counted in the window: refreshes.
    pub refreshes: f64,
    /// What the window added: operator figures (requests of `backend`), apiserver writes
    /// (all clients), writes seen by the watch, operator CPU seconds.
    pub figures: OpFigures,
    pub apiserver_writes: BTreeMap<String, f64>,
    pub bench: Writes,
    pub cpu: f64,
    pub from: Timestamp,
    pub to: Timestamp,
}

/// Successful syncs of `kind` the operator counted.
pub fn synced(samples: &Samples, kind: &str) -> f64 {
    samples.sum("vaultsync_syncs_total", |l| {
        l.get("kind").is_some_and(|k| k == kind) && l.get("result").is_some_and(|r| r == "Synced")
    })
}

impl Cycle {
    /// Waits up to `timeout` for one cycle of the resources `keep` accepts, of kind `kind`
    /// (the operator's label: `VaultSecret`, `AzureKeyVaultSecret`).
    pub async fn wait(
        client: &Client,
        op: &mut Operator,
        watch: &Watch,
        keep: impl Fn(&str) -> bool,
        kind: &str,
        backend: Option<&str>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let start = op.metrics().await;
        let before = OpFigures::from(&start, backend);
        let synced_before = synced(&start, kind);
        let proc_before = op.stats();
        let writes_before = apiserver_writes(client).await?;
        let (bench_before, objects, due) = {
            let state = watch.state();
            let kept: Vec<&Seen> = state
                .objects
                .iter()
                .filter(|(k, _)| keep(k))
                .map(|(_, s)| s)
                .collect();
            let due = kept.iter().filter_map(|s| s.next_refresh).max();
            (state.writes, kept.len(), due)
        };
        let t1 = Instant::now();
        let from = Timestamp::now();
        let mut done = None;
        let mut refreshes = 0.0;
        while t1.elapsed() < timeout && op.alive() {
            // The clock first, so that the operator's metrics are not scraped (which costs
            // it CPU) before every resource was due.
            if due.is_none_or(|due| Timestamp::now() >= due) {
                refreshes = synced(&op.metrics().await, kind) - synced_before;
                if refreshes >= objects as f64 {
                    done = Some(t1.elapsed());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            } else {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let end = op.metrics().await;
        let after = OpFigures::from(&end, backend);
        refreshes = refreshes.max(synced(&end, kind) - synced_before);
        let proc_after = op.stats();
        let writes_after = apiserver_writes(client).await?;
        let to = Timestamp::now();
        let bench = watch.state().writes.minus(bench_before);
        Ok(Self {
            done,
            objects,
            due,
            refreshes,
            figures: after.minus(before),
            apiserver_writes: delta(&writes_after, &writes_before),
            bench,
            cpu: proc_after.cpu_seconds - proc_before.cpu_seconds,
            from,
            to,
        })
    }

    /// "<s> s", or what was missing.
    pub fn describe(&self) -> String {
        match self.done {
            Some(d) => format!("{:.1} s", d.as_secs_f64()),
            None if self.due.is_some_and(|due| self.to < due) => {
                "incomplete: not all were due yet".to_string()
            }
            None => format!(
                "incomplete: {} of {} refreshes",
                self.refreshes, self.objects
            ),
        }
    }

    /// Writes of the status subresource of `resource` (the plural, such as
    /// `vaultsecrets`) in the window, by every client, as the apiserver counts them.
    pub fn status_writes(&self, resource: &str) -> f64 {
        let suffix = format!(" {resource}/status");
        self.apiserver_writes
            .iter()
            .filter(|(k, _)| k.ends_with(&suffix))
            .map(|(_, v)| v)
            .sum::<f64>()
            + 0.0
    }
}
