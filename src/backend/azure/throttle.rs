//! Per-vault request limits: even spacing at the connection's `requestsPerSecond`, and,
//! after a 429, a pause for the whole vault, then one request at a time until the vault
//! answers normally again.

use std::sync::Mutex;
use std::time::Duration;

use crate::backend::RateLimiter;

/// How long a vault is left alone after a 429 that named no delay.
const DEFAULT_THROTTLE_PAUSE: Duration = Duration::from_secs(2);
/// When to come back while another request probes a recovering vault.
const PROBE_WAIT: Duration = Duration::from_secs(1);
/// The longest pause after 429s in a row.
const MAX_THROTTLE_PAUSE: Duration = Duration::from_secs(30);

/// Per-vault limits: even spacing, and after a 429 a pause, then one request at a time
/// until the vault answers again.
pub struct VaultLimit {
    limiter: RateLimiter,
    paused_until: Mutex<Option<tokio::time::Instant>>,
    /// 429s in a row; 0 when the vault last answered normally.
    throttled: std::sync::atomic::AtomicU32,
    /// Held by the one request that probes a vault recovering from a 429.
    probe: tokio::sync::Mutex<()>,
}

impl VaultLimit {
    pub fn new(requests_per_second: u32) -> Self {
        Self {
            limiter: RateLimiter::new(requests_per_second),
            paused_until: Mutex::new(None),
            throttled: Default::default(),
            probe: Default::default(),
        }
    }

    fn paused(&self) -> Option<tokio::time::Instant> {
        let until = *self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        until.filter(|u| *u > tokio::time::Instant::now())
    }

    /// Whether the vault may be asked now. A paused vault, or one recovering from a 429
    /// whose probe is out, is not waited for here (that would hold one of the
    /// controller's reconcile slots for the whole pause): the answer is how long to come
    /// back after. Otherwise the request waits for its rate-limit slot, holding the probe
    /// slot (returned) while the vault recovers.
    pub async fn admit(&self) -> Result<Option<tokio::sync::MutexGuard<'_, ()>>, Duration> {
        use std::sync::atomic::Ordering;
        let now = tokio::time::Instant::now();
        if let Some(until) = self.paused() {
            return Err(until - now);
        }
        if self.throttled.load(Ordering::Relaxed) == 0 {
            self.limiter.acquire().await;
            return Ok(None);
        }
        let probe = self.probe.try_lock().map_err(|_| PROBE_WAIT)?;
        if let Some(until) = self.paused() {
            return Err(until - now);
        }
        self.limiter.acquire().await;
        Ok(Some(probe))
    }

    /// Records the answer: a 429 pauses the vault (as asked, else exponentially from
    /// 2 s up to 30 s); any other answer ends the recovery.
    pub fn record(&self, retry_after: Option<Duration>, throttled: bool) -> Duration {
        use std::sync::atomic::Ordering;
        if !throttled {
            self.throttled.store(0, Ordering::Relaxed);
            return Duration::ZERO;
        }
        let n = self.throttled.fetch_add(1, Ordering::Relaxed).min(4);
        let wait = retry_after
            .unwrap_or(DEFAULT_THROTTLE_PAUSE * 2u32.pow(n))
            .min(MAX_THROTTLE_PAUSE);
        *self.paused_until.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(tokio::time::Instant::now() + wait);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn throttled_pauses_double_and_a_normal_answer_ends_them() {
        let limit = VaultLimit::new(1000);
        assert_eq!(limit.record(None, true), Duration::from_secs(2));
        assert_eq!(limit.record(None, true), Duration::from_secs(4));
        assert_eq!(limit.record(None, true), Duration::from_secs(8));
        for _ in 0..5 {
            limit.record(None, true);
        }
        assert_eq!(limit.record(None, true), MAX_THROTTLE_PAUSE, "capped");
        assert_eq!(
            limit.record(Some(Duration::from_secs(5)), true),
            Duration::from_secs(5),
            "as the vault asks"
        );
        let wait = limit.admit().await.expect_err("paused: come back later");
        assert!(wait <= Duration::from_secs(5) && wait > Duration::from_secs(4));
        tokio::time::advance(wait).await;
        let probe = limit.admit().await.expect("the pause is over");
        assert!(probe.is_some(), "one request probes a recovering vault");
        assert_eq!(
            limit.admit().await.expect_err("the probe is out"),
            PROBE_WAIT
        );
        limit.record(None, false);
        drop(probe);
        assert!(limit.admit().await.expect("recovered").is_none());
    }
}
