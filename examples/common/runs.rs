//! The two runs the benches measure on their resources: a cold start and one refresh
//! cycle.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kube::Client;

use super::Operator;
use super::metrics::{OpFigures, Samples, apiserver_writes, delta};
use super::operator::ProcStats;
use super::watch::{Watch, Writes};

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

/// One refresh cycle of unchanged data: from its start until the status.lastSyncTime of
/// every resource has moved past its value at the start.
pub struct Cycle {
    /// How long it took; `None` if it did not complete in time.
    pub done: Option<Duration>,
    /// Resources whose lastSyncTime had not moved when the wait ended.
    pub left: usize,
    /// lastSyncTime moves in the window, and the resources that moved more than once.
    pub refreshes: u64,
    pub twice: usize,
    /// What the window added: operator figures (requests of `backend`), apiserver writes
    /// (all clients), writes seen by the watch, operator CPU seconds.
    pub figures: OpFigures,
    pub apiserver_writes: BTreeMap<String, f64>,
    pub bench: Writes,
    pub cpu: f64,
    pub from: Timestamp,
    pub to: Timestamp,
}

impl Cycle {
    /// Waits up to `timeout` for one cycle of the resources `keep` accepts.
    pub async fn wait(
        client: &Client,
        op: &mut Operator,
        watch: &Watch,
        keep: impl Fn(&str) -> bool,
        backend: Option<&str>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let before = OpFigures::from(&op.metrics().await, backend);
        let proc_before = op.stats();
        let writes_before = apiserver_writes(client).await?;
        let (bench_before, marks) = {
            let state = watch.state();
            let marks: HashMap<String, (Option<Timestamp>, u64)> = state
                .objects
                .iter()
                .filter(|(k, _)| keep(k))
                .map(|(k, s)| (k.clone(), (s.last_sync, s.sync_moves)))
                .collect();
            (state.writes, marks)
        };
        let t1 = Instant::now();
        let from = Timestamp::now();
        let mut done = None;
        let mut left = marks.len();
        while t1.elapsed() < timeout && op.alive() {
            left = watch
                .state()
                .objects
                .iter()
                .filter(|(k, s)| marks.get(*k).is_some_and(|(mark, _)| s.last_sync <= *mark))
                .count();
            if left == 0 {
                done = Some(t1.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let after = OpFigures::from(&op.metrics().await, backend);
        let proc_after = op.stats();
        let writes_after = apiserver_writes(client).await?;
        let to = Timestamp::now();
        let state = watch.state();
        let mut refreshes = 0;
        let mut twice = 0;
        for (k, (_, moves)) in &marks {
            let n = state.objects.get(k).map_or(0, |s| s.sync_moves - moves);
            refreshes += n;
            if n > 1 {
                twice += 1;
            }
        }
        Ok(Self {
            done,
            left,
            refreshes,
            twice,
            figures: after.minus(before),
            apiserver_writes: delta(&writes_after, &writes_before),
            bench: state.writes.minus(bench_before),
            cpu: proc_after.cpu_seconds - proc_before.cpu_seconds,
            from,
            to,
        })
    }

    /// "<s> s", or how many were left.
    pub fn describe(&self) -> String {
        self.done.map_or_else(
            || format!("incomplete: {} left", self.left),
            |d| format!("{:.1} s", d.as_secs_f64()),
        )
    }
}
