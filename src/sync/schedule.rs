//! Timing decisions (pure): when a copy expires, when to read the source again, and how
//! long to back off after a failure. Randomness comes in as a number in `[0, 1)` so that
//! every function here is deterministic under test.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::backend::Lease;

/// Longest wait between retries of a failing resource.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// First retry delay.
pub const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// Share of a delay that jitter may take off, so that many resources created together
/// do not refresh together.
const JITTER: f64 = 0.1;

fn signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

fn unsigned(d: SignedDuration) -> Duration {
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}

/// The `expires-at` mark to write after a successful fetch at `now`.
///
/// The copy is valid until `now + ttl`, capped by `cap` (a lease or certificate end).
/// The mark is a "valid at least until" promise, so an existing mark is kept while it
/// still promises at least half a `ttl`: the Secret's metadata then moves at most once
/// per half `ttl` instead of at every refresh.
pub fn expiry_mark(
    now: Timestamp,
    ttl: Duration,
    existing: Option<Timestamp>,
    cap: Option<Timestamp>,
) -> Timestamp {
    let mut target = now.saturating_add(signed(ttl)).unwrap_or(Timestamp::MAX);
    if let Some(cap) = cap {
        target = target.min(cap);
    }
    // Whole seconds, as status timestamps are stored: a mark recomputed from status
    // after a restart then equals the one already on the Secret.
    let target = Timestamp::from_second(target.as_second()).unwrap_or(target);
    match existing {
        Some(old)
            if old <= target
                && old
                    >= now
                        .saturating_add(signed(ttl / 2))
                        .unwrap_or(Timestamp::MAX) =>
        {
            old
        }
        _ => target,
    }
}

/// Inputs of the refresh decision.
#[derive(Clone, Copy, Debug)]
pub struct RefreshInputs {
    pub now: Timestamp,
    /// Refresh interval of static sources.
    pub refresh_interval: Duration,
    /// The copy's expiry mark.
    pub expires_at: Timestamp,
    pub ttl: Duration,
    /// Start and end of a lease or certificate, for dynamic sources.
    pub lifetime: Option<(Timestamp, Timestamp)>,
    /// Share of the lifetime after which to renew or re-issue, 1..=90.
    pub renewal_percent: u8,
}

/// How long to wait before the next read: the earliest of the refresh interval, the
/// renewal point of a lease or certificate, and expiry minus a safety margin, less up to
/// 10% jitter (`jitter` in `[0, 1)`) so deadlines are never overshot.
pub fn next_refresh(inputs: &RefreshInputs, jitter: f64) -> Duration {
    let RefreshInputs {
        now,
        refresh_interval,
        expires_at,
        ttl,
        lifetime,
        renewal_percent,
    } = *inputs;
    // The margin is a tenth of the copy's real validity window (a lease or certificate may
    // be far shorter than ttl), at most five minutes.
    let window = match lifetime {
        Some((start, end)) => ttl.min(unsigned(end.duration_since(start))),
        None => ttl,
    };
    let margin = (window / 10).min(Duration::from_secs(300));
    let mut delay = refresh_interval;
    let until_expiry = unsigned(expires_at.duration_since(now));
    delay = delay.min(until_expiry.saturating_sub(margin));
    if let Some((start, end)) = lifetime {
        let whole = unsigned(end.duration_since(start));
        let renew_at = start
            .saturating_add(signed(
                whole.mul_f64(f64::from(renewal_percent.clamp(1, 90)) / 100.0),
            ))
            .unwrap_or(end);
        delay = delay.min(unsigned(renew_at.duration_since(now)));
    }
    let jitter = jitter.clamp(0.0, 1.0);
    let delay = delay.mul_f64(1.0 - JITTER * jitter);
    delay.max(Duration::from_secs(1))
}

/// What to do with a dynamic source's lease (or certificate) at `now`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseAction {
    /// No usable lease, or the copy is gone: issue new material.
    Issue,
    /// The renewal point has passed and the lease may be renewed.
    Renew,
    /// The renewal point has passed, the lease cannot be renewed: issue before it ends.
    Reissue,
    /// Nothing to do yet.
    Keep,
}

/// Pure decision for dynamic sources. `expires_at` and `duration` describe the current
/// period of the lease recorded in status; `copy_intact` says whether the managed Secret
/// still holds its material.
pub fn lease_action(
    now: Timestamp,
    lease: Option<&Lease>,
    renewal_percent: u8,
    copy_intact: bool,
) -> LeaseAction {
    let Some(lease) = lease else {
        return LeaseAction::Issue;
    };
    let (expires_at, duration, renewable) = (lease.expires_at, lease.duration, lease.renewable);
    if !copy_intact
        || expires_at
            <= now
                .saturating_add(SignedDuration::from_secs(1))
                .unwrap_or(now)
    {
        return LeaseAction::Issue;
    }
    // Status claims more time than the lease's own period allows: only Vault can say
    // how long it really has, so ask it now. Status keeps whole seconds, so a lease read
    // back from it may claim up to two seconds more than it was issued with.
    let slack = SignedDuration::from_secs(2);
    if expires_at > now.saturating_add(signed(duration) + slack).unwrap_or(now) {
        return if renewable {
            LeaseAction::Renew
        } else {
            LeaseAction::Reissue
        };
    }
    let start = expires_at
        .saturating_sub(signed(duration))
        .unwrap_or(expires_at);
    let share = f64::from(renewal_percent.clamp(1, 90)) / 100.0;
    let renew_at = start
        .saturating_add(signed(duration.mul_f64(share)))
        .unwrap_or(expires_at);
    match (now >= renew_at, renewable) {
        (false, _) => LeaseAction::Keep,
        (true, true) => LeaseAction::Renew,
        (true, false) => LeaseAction::Reissue,
    }
}

/// Delay before retry number `attempt` (0 for the first failure): doubling from one
/// second up to five minutes, with jitter taking off up to half, and at least what the
/// backend asked for with `Retry-After`.
pub fn backoff(attempt: u32, jitter: f64, retry_after: Option<Duration>) -> Duration {
    let exp = MIN_BACKOFF
        .checked_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX))
        .unwrap_or(MAX_BACKOFF)
        .min(MAX_BACKOFF);
    let jittered = exp
        .mul_f64(1.0 - 0.5 * jitter.clamp(0.0, 1.0))
        .max(MIN_BACKOFF);
    match retry_after {
        Some(asked) => jittered.max(asked.min(MAX_BACKOFF)),
        None => jittered,
    }
}

/// How long after a start a settled copy is not read again at once (see [`resume_delay`]).
pub const RESUME_WINDOW: Duration = Duration::from_secs(30);

/// After a start (of the process, or of a new generation of controllers: the epoch is
/// younger than [`RESUME_WINDOW`]), when to read a static source whose copy is intact and
/// settled, instead of at once. A copy that was not due yet keeps its time, a refresh
/// interval after its last sync, so that a start neither delays nor hastens it. One due
/// within the window (or overdue, after a long stop) is read at a random point of one
/// refresh interval after the window, so that a start with thousands of resources reads
/// none of them in a burst and new resources go first. Only while the copy's mark keeps
/// it valid for another window after that read; otherwise `None` (read now).
pub fn resume_delay(
    uptime: Duration,
    now: Timestamp,
    last_sync: Timestamp,
    mark: Timestamp,
    refresh_interval: Duration,
    jitter: f64,
) -> Option<Duration> {
    if uptime >= RESUME_WINDOW {
        return None;
    }
    let due = last_sync
        .saturating_add(signed(refresh_interval))
        .unwrap_or(Timestamp::MAX);
    let until_due = unsigned(now.duration_until(due));
    let delay = if until_due > RESUME_WINDOW {
        until_due
    } else {
        RESUME_WINDOW + refresh_interval.mul_f64(jitter.clamp(0.0, 1.0))
    };
    let needed = now
        .saturating_add(signed(delay + RESUME_WINDOW))
        .unwrap_or(Timestamp::MAX);
    (mark >= needed).then_some(delay)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_restart_postpones_only_settled_copies_that_stay_valid() {
        let now: Timestamp = "2026-06-01T12:00:00Z".parse().expect("ts");
        let hour = Duration::from_secs(3600);
        let mark = now.saturating_add(signed(3 * hour)).expect("mark");
        let young = Duration::from_secs(2);
        let ago = |d: Duration| now.saturating_sub(signed(d)).expect("ts");
        // Due (or overdue): spread over one interval after the window.
        let delay = resume_delay(young, now, ago(hour), mark, hour, 0.5).expect("postponed");
        assert_eq!(delay, RESUME_WINDOW + hour / 2);
        let delay = resume_delay(young, now, ago(5 * hour), mark, hour, 0.5).expect("postponed");
        assert_eq!(delay, RESUME_WINDOW + hour / 2);
        // Not due yet: read when it would have been, whatever the jitter.
        let synced = ago(Duration::from_secs(600));
        for jitter in [0.0, 0.99] {
            let delay = resume_delay(young, now, synced, mark, hour, jitter).expect("kept");
            assert_eq!(delay, Duration::from_secs(3000));
        }
        // An older process or generation reads as usual.
        assert_eq!(
            resume_delay(RESUME_WINDOW, now, synced, mark, hour, 0.5),
            None
        );
        // A copy that would expire before the postponed read (and a window more) is read now.
        let soon = now.saturating_add(signed(hour)).expect("soon");
        assert_eq!(resume_delay(young, now, ago(hour), soon, hour, 0.99), None);
        let at_due = now
            .saturating_add(signed(Duration::from_secs(3000)))
            .expect("ts");
        assert_eq!(resume_delay(young, now, synced, at_due, hour, 0.0), None);
    }

    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("ts")
    }
    const H: u64 = 3600;

    #[test]
    fn expiry_is_now_plus_ttl_capped_by_lifetime() {
        assert_eq!(
            expiry_mark(t(0), Duration::from_secs(3 * H), None, None),
            t(3 * H as i64)
        );
        assert_eq!(
            expiry_mark(t(0), Duration::from_secs(3 * H), None, Some(t(100))),
            t(100)
        );
    }

    #[test]
    fn expiry_mark_moves_at_most_once_per_half_ttl() {
        let ttl = Duration::from_secs(3 * H);
        let mut mark = expiry_mark(t(0), ttl, None, None);
        let mut moves = 0;
        // Refresh every 10 minutes for 6 hours.
        for minute in (10..=360).step_by(10) {
            let now = t(minute * 60);
            let next = expiry_mark(now, ttl, Some(mark), None);
            assert!(
                next >= now.saturating_add(signed(ttl / 2)).expect("ts"),
                "always valid for half a ttl"
            );
            if next != mark {
                moves += 1;
            }
            mark = next;
        }
        // 6 h / 1.5 h = 4 moves at most.
        assert!(moves <= 4, "moved {moves} times");
        assert!(moves >= 3);
    }

    #[test]
    fn expiry_mark_follows_a_shorter_cap() {
        let ttl = Duration::from_secs(3 * H);
        let mark = expiry_mark(t(0), ttl, None, None);
        assert_eq!(expiry_mark(t(60), ttl, Some(mark), Some(t(600))), t(600));
    }

    #[test]
    fn refresh_takes_the_earliest_deadline() {
        let base = RefreshInputs {
            now: t(0),
            refresh_interval: Duration::from_secs(H),
            expires_at: t(3 * H as i64),
            ttl: Duration::from_secs(3 * H),
            lifetime: None,
            renewal_percent: 67,
        };
        assert_eq!(next_refresh(&base, 0.0), Duration::from_secs(H));
        // Jitter only ever shortens, by at most 10%.
        let j = next_refresh(&base, 0.99);
        assert!(j < Duration::from_secs(H) && j >= Duration::from_secs(H).mul_f64(0.9));
        // Close to expiry: expiry minus the margin wins.
        let near = RefreshInputs {
            expires_at: t(1200),
            ..base
        };
        assert_eq!(next_refresh(&near, 0.0), Duration::from_secs(1200 - 300));
        // A 60 s lease under a 1 h ttl renews at 67%, not every second.
        let short = RefreshInputs {
            lifetime: Some((t(0), t(60))),
            expires_at: t(60),
            ttl: Duration::from_secs(H),
            ..base
        };
        assert_eq!(next_refresh(&short, 0.0), Duration::from_secs_f64(40.2));
        // A 60 s lease renews at 67%.
        let lease = RefreshInputs {
            lifetime: Some((t(0), t(60))),
            expires_at: t(60),
            ttl: Duration::from_secs(60),
            ..base
        };
        assert_eq!(next_refresh(&lease, 0.0), Duration::from_secs_f64(40.2));
    }

    #[test]
    fn lease_actions() {
        let leases: Vec<Lease> = [
            (60, 60, true),
            (60, 60, false),
            (3600, 60, true),
            (61, 60, false),
        ]
        .into_iter()
        .map(|(end, secs, renewable)| Lease {
            id: "database/creds/app/x".into(),
            duration: Duration::from_secs(secs),
            renewable,
            expires_at: t(end),
        })
        .collect();
        let lease = |end: i64, _secs: u64, renewable: bool| {
            leases
                .iter()
                .find(|l| l.expires_at == t(end) && l.renewable == renewable)
        };
        assert_eq!(lease_action(t(0), None, 67, true), LeaseAction::Issue);
        assert_eq!(
            lease_action(t(0), lease(3600, 60, true), 67, true),
            LeaseAction::Renew,
            "status claims an end beyond the lease's period: ask Vault"
        );
        assert_eq!(
            lease_action(t(0), lease(61, 60, false), 67, true),
            LeaseAction::Keep,
            "a second more than the period is whole-second rounding in status, not a forgery"
        );
        assert_eq!(
            lease_action(t(0), lease(60, 60, true), 67, false),
            LeaseAction::Issue,
            "copy deleted"
        );
        assert_eq!(
            lease_action(t(59), lease(60, 60, true), 67, true),
            LeaseAction::Issue,
            "about to end"
        );
        assert_eq!(
            lease_action(t(10), lease(60, 60, true), 67, true),
            LeaseAction::Keep
        );
        assert_eq!(
            lease_action(t(41), lease(60, 60, true), 67, true),
            LeaseAction::Renew
        );
        assert_eq!(
            lease_action(t(41), lease(60, 60, false), 67, true),
            LeaseAction::Reissue
        );
        assert_eq!(
            lease_action(t(31), lease(60, 60, true), 50, true),
            LeaseAction::Renew
        );
    }

    #[test]
    fn backoff_doubles_to_five_minutes_and_honours_retry_after() {
        assert_eq!(backoff(0, 0.0, None), Duration::from_secs(1));
        assert_eq!(backoff(3, 0.0, None), Duration::from_secs(8));
        assert_eq!(backoff(30, 0.0, None), MAX_BACKOFF);
        assert!(backoff(5, 0.99, None) >= Duration::from_secs(16));
        assert_eq!(
            backoff(0, 0.0, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
        assert_eq!(
            backoff(0, 0.0, Some(Duration::from_secs(9999))),
            MAX_BACKOFF
        );
    }
}
