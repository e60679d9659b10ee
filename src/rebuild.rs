//! When to rebuild the controllers, to give back the memory of resources that went.
//!
//! kube-runtime's controller keeps a scheduler per controller (a slab and a map, one entry
//! per queued resource) and its watches keep caches (maps); all of them keep the capacity
//! they grew to when their entries go, and nothing outside can shrink them. After 5,000
//! resources came and went they held about 5 MiB (`make bench-tenants`, heap profile),
//! for good. So once a generation of controllers caches under a quarter of the most
//! resources it cached, and that most was at least [`FLOOR`], the controllers are stopped
//! gracefully (reconciles in flight finish first, so no resource is reconciled twice at
//! once) and a new generation starts: one relist per watch, and the resume logic of a
//! restart (`sync::schedule::resume_delay`) keeps settled copies from being read again at
//! once. Below the floor the capacity is too small to pay for the relist.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The fewest resources a generation must have cached before shrinking triggers a rebuild.
pub const FLOOR: usize = 1_000;

/// Sets [`FLOOR`] for tests, which cannot create a thousand resources each.
pub const FLOOR_ENV: &str = "VAULTSYNC_REBUILD_FLOOR";

/// How often the caches are compared with their peaks.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// The size of one watch cache: now, and the most it held (recorded at each of its
/// events, so that no burst is missed).
#[derive(Clone)]
pub struct CacheSize {
    len: Arc<dyn Fn() -> usize + Send + Sync>,
    peak: Arc<AtomicUsize>,
}

impl CacheSize {
    pub fn new(len: impl Fn() -> usize + Send + Sync + 'static) -> Self {
        Self {
            len: Arc::new(len),
            peak: Arc::default(),
        }
    }

    /// Records the cache's size now as a candidate peak.
    pub fn observe(&self) {
        self.peak.fetch_max((self.len)(), Ordering::Relaxed);
    }
}

/// Whether a generation whose caches held `peak` resources at most, and hold `live` now,
/// should be rebuilt: the peak reached `floor`, and a quarter of it or less is left.
pub fn shrunk(peak: usize, live: usize, floor: usize) -> bool {
    peak >= floor && live.saturating_mul(4) <= peak
}

/// The floor: [`FLOOR`], or a positive number in [`FLOOR_ENV`].
pub fn floor() -> usize {
    std::env::var(FLOOR_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|f| *f > 0)
        .unwrap_or(FLOOR)
}

/// Resolves, with the peak and the count now (summed over `caches`: each keeps its own
/// capacity), once they have [`shrunk`].
pub async fn until_shrunk(caches: &[CacheSize]) -> (usize, usize) {
    let floor = floor();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let peak = caches.iter().map(|c| c.peak.load(Ordering::Relaxed)).sum();
        let live = caches.iter().map(|c| (c.len)()).sum();
        if shrunk(peak, live, floor) {
            return (peak, live);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{CacheSize, shrunk};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_generation_is_rebuilt_only_after_a_large_peak_fell_to_a_quarter() {
        // Small installs never rebuild, however their count moves.
        assert!(!shrunk(999, 0, 1_000));
        // A large peak that has not fallen far enough is kept.
        assert!(!shrunk(5_000, 1_251, 1_000));
        assert!(shrunk(5_000, 1_250, 1_000));
        assert!(shrunk(5_000, 0, 1_000));
        // Exactly at the floor counts.
        assert!(!shrunk(1_000, 251, 1_000));
        assert!(shrunk(1_000, 250, 1_000));
    }

    #[test]
    fn a_cache_keeps_the_most_it_held() {
        let len = Arc::new(AtomicUsize::new(0));
        let size = CacheSize::new({
            let len = len.clone();
            move || len.load(Ordering::Relaxed)
        });
        for n in [3, 9, 2] {
            len.store(n, Ordering::Relaxed);
            size.observe();
        }
        assert_eq!(size.peak.load(Ordering::Relaxed), 9);
        assert_eq!((size.len)(), 2);
    }
}
