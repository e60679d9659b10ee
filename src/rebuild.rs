//! When to rebuild the controllers, to give back the memory of resources that went.
//!
//! kube-runtime's controller keeps a scheduler per controller (a slab and a map, one entry
//! per queued resource) and its watches keep caches (maps); all of them keep the capacity
//! they grew to when their entries go, and nothing outside can shrink them. After 5,000
//! resources came and went they held about 5 MiB (`make bench-tenants`, heap profile),
//! for good. So once a generation of controllers caches a quarter or less of the most
//! objects it cached (resources and their managed Secrets, which Kubernetes' garbage
//! collector deletes after them), that most was at least [`FLOOR`], it is at least
//! [`MIN_AGE`] old, and the count has held still for [`SETTLE`] (a deletion under way ends
//! first), the controllers are stopped gracefully (reconciles in flight finish first, so
//! no resource is reconciled twice at once) and a new generation starts: one relist per
//! watch, and the resume logic of a restart (`sync::schedule::resume_delay`) keeps settled
//! copies to their refresh time. What outlives a generation (Vault tokens, failure counts,
//! the operator's record of its writes) stays in `Context`. Below the floor the capacity
//! is too small to pay for the relist; and a tenant who wants rebuilds must create three
//! times what everyone else has (resources, or Secrets it labels as managed in its own
//! namespace) and delete it, which costs the operator more than the rebuild does.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kube::runtime::watcher;

/// The fewest objects (resources and managed Secrets) a generation must have cached before
/// shrinking triggers a rebuild.
pub const FLOOR: usize = 1_000;

/// The youngest a generation may be when it is rebuilt: a tenant who creates and deletes
/// resources in a loop cannot make the operator relist more often than this.
pub const MIN_AGE: Duration = Duration::from_secs(120);

/// For tests, which cannot create a thousand resources each nor wait minutes: a floor in
/// its place, and no minimum age.
pub const FLOOR_ENV: &str = "VAULTSYNC_REBUILD_FLOOR";

/// How often the caches are compared with their peaks.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// How long the count must hold still, once shrunk, before a rebuild. A mass deletion
/// passes a quarter of the peak while still under way: rebuilding then had the new
/// generation relist the thousand resources still going, and its caches kept their
/// capacity (`make bench-tenants`, heap profile: 8 MiB in the new caches, +40% RSS). The
/// same held for their Secrets, which the garbage collector deletes after them: counted
/// too, they hold the rebuild back until they are gone.
const SETTLE: Duration = Duration::from_secs(10);

/// The longest a shrunk generation waits for its count to hold still: resources that
/// keep coming and going (a tenant's loop) cannot put a rebuild off for longer.
const SETTLE_AT_MOST: Duration = Duration::from_secs(60);

/// Whether a watch has completed its first listing, learnt from its own events.
/// kube-runtime's `Store::wait_until_ready` wakes only the last of several waiters (one
/// oneshot receiver behind a lock), and a controller is already one of them.
#[derive(Clone, Debug)]
pub struct Listed(Arc<tokio::sync::watch::Sender<bool>>);

impl Default for Listed {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::watch::Sender::new(false)))
    }
}

impl Listed {
    /// Notes the end of a listing among the watch's events.
    pub fn observe<K>(&self, event: &Result<watcher::Event<K>, watcher::Error>) {
        if matches!(event, Ok(watcher::Event::InitDone)) {
            self.0.send_replace(true);
        }
    }

    pub fn is_listed(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the first listing is complete.
    pub async fn wait(&self) {
        let _ = self.0.subscribe().wait_for(|listed| *listed).await;
    }
}

/// One watch cache of resources: its size now, the most it held (recorded at each of its
/// events, so that no burst is missed), and whether it is listed.
#[derive(Clone)]
pub struct CacheSize {
    len: Arc<dyn Fn() -> usize + Send + Sync>,
    peak: Arc<AtomicUsize>,
    pub listed: Listed,
}

impl CacheSize {
    pub fn new(len: impl Fn() -> usize + Send + Sync + 'static) -> Self {
        Self {
            len: Arc::new(len),
            peak: Arc::default(),
            listed: Listed::default(),
        }
    }

    /// Records one event of the cache's watch, once the cache has applied it.
    pub fn observe<K>(&self, event: &Result<watcher::Event<K>, watcher::Error>) {
        self.listed.observe(event);
        self.peak.fetch_max((self.len)(), Ordering::Relaxed);
    }
}

/// Whether a generation whose caches held `peak` resources at most, and hold `live` now,
/// should be rebuilt: the peak reached `floor`, and a quarter of it or less is left.
pub fn shrunk(peak: usize, live: usize, floor: usize) -> bool {
    peak >= floor && live.saturating_mul(4) <= peak
}

/// Whether a generation that has been shrunk since `shrunk_since`, with a count unchanged
/// since `unchanged_since`, is rebuilt at `now`: the count held still for [`SETTLE`], or
/// it has been shrunk for [`SETTLE_AT_MOST`].
pub fn settled(shrunk_since: Instant, unchanged_since: Instant, now: Instant) -> bool {
    now.duration_since(unchanged_since) >= SETTLE
        || now.duration_since(shrunk_since) >= SETTLE_AT_MOST
}

/// The floor and the minimum age: [`FLOOR`] and [`MIN_AGE`], or a positive number in
/// [`FLOOR_ENV`] and none.
fn tuning() -> (usize, Duration) {
    std::env::var(FLOOR_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|f| *f > 0)
        .map_or((FLOOR, MIN_AGE), |floor| (floor, Duration::ZERO))
}

/// Resolves, with the peak and the count now (summed over `caches`: each keeps its own
/// capacity), once they have [`shrunk`] and [`settled`], and not before [`MIN_AGE`].
pub async fn until_shrunk(caches: &[CacheSize]) -> (usize, usize) {
    let (floor, min_age) = tuning();
    tokio::time::sleep(min_age).await;
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = None;
    let mut unchanged_since = Instant::now();
    let mut shrunk_since = None;
    loop {
        tick.tick().await;
        let now = Instant::now();
        let peak = caches.iter().map(|c| c.peak.load(Ordering::Relaxed)).sum();
        let live = caches.iter().map(|c| (c.len)()).sum();
        if last != Some(live) {
            last = Some(live);
            unchanged_since = now;
        }
        if !shrunk(peak, live, floor) {
            shrunk_since = None;
            continue;
        }
        if settled(*shrunk_since.get_or_insert(now), unchanged_since, now) {
            return (peak, live);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{CacheSize, SETTLE, SETTLE_AT_MOST, settled, shrunk};
    use kube::runtime::watcher;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    #[test]
    fn a_rebuild_waits_for_the_count_to_hold_still_but_not_forever() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        // Still deleting: the count changed a moment ago.
        assert!(!settled(t0, t0 + SETTLE, t0 + SETTLE + second));
        // Unchanged for the whole settling time.
        assert!(settled(t0, t0, t0 + SETTLE));
        // Resources that keep coming and going put it off only so long.
        let later = t0 + SETTLE_AT_MOST;
        assert!(!settled(t0, later - second, later - second));
        assert!(settled(t0, later - second, later));
    }

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
        let event: Result<watcher::Event<()>, watcher::Error> = Ok(watcher::Event::Init);
        for n in [3, 9, 2] {
            len.store(n, Ordering::Relaxed);
            size.observe(&event);
        }
        assert_eq!(size.peak.load(Ordering::Relaxed), 9);
        assert_eq!((size.len)(), 2);
        assert!(!size.listed.is_listed());
        size.observe::<()>(&Ok(watcher::Event::InitDone));
        assert!(size.listed.is_listed());
    }
}
