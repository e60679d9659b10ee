//! Routine refreshes give way to what someone is waiting for.
//!
//! kube-runtime runs due reconciles in the order they fell due, so with thousands of
//! refreshes due at once a new resource, a changed spec or an edited Secret would wait
//! behind all of them. A routine refresh (its generation is synced, no lease to renew,
//! no repair asked for) needs one of a share of the concurrency slots; when they are all
//! taken it steps aside at once and comes back later, spread over a window that grows
//! with the number waiting. The other slots stay free for first syncs, spec changes,
//! repairs, failures and deletions.
//!
//! Namespaces share the slots too: one namespace holds at most that same share at a time,
//! so a tenant applying a thousand resources at once leaves room for another tenant's
//! one (a reconcile over its namespace's share steps aside the same way).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// (kind, namespace, name).
type Key = (&'static str, String, String);

pub struct Lanes {
    routine_slots: Arc<Semaphore>,
    share: usize,
    /// Refreshes that stepped aside and have not come back yet.
    waiting: Mutex<HashSet<Key>>,
    /// Resources whose Secret someone else changed: their next reconcile is a repair.
    urgent: Mutex<HashSet<Key>>,
    /// Reconciles running per namespace.
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
}

/// Whether a reconcile may go ahead, holding its slots while it runs.
pub enum Admission {
    Go(Slot),
    Later(Duration),
}

/// The slots a running reconcile holds: its namespace's count, and a routine slot if it
/// is a refresh. Dropping it gives them back.
pub struct Slot {
    _routine: Option<OwnedSemaphorePermit>,
    namespace: String,
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut in_flight = lock(&self.in_flight);
        if let Some(n) = in_flight.get_mut(&self.namespace) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                in_flight.remove(&self.namespace);
                crate::janitor::shrink(&mut in_flight);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Lanes {
    /// Routine refreshes get three quarters of `concurrency`: at least one slot, and
    /// with a concurrency above one at least one slot is kept for the rest.
    pub fn new(concurrency: usize) -> Self {
        let share = concurrency.saturating_sub((concurrency / 4).max(1)).max(1);
        Self {
            routine_slots: Arc::new(Semaphore::new(share)),
            share,
            waiting: Mutex::default(),
            urgent: Mutex::default(),
            in_flight: Arc::default(),
        }
    }

    /// The next reconcile of this resource repairs its Secret: it goes first.
    pub fn mark_urgent(&self, kind: &'static str, namespace: &str, name: &str) {
        lock(&self.urgent).insert((kind, namespace.to_string(), name.to_string()));
    }

    /// Admits a reconcile; `routine` says whether the resource only needs a refresh.
    pub fn admit(
        &self,
        kind: &'static str,
        namespace: &str,
        name: &str,
        routine: bool,
    ) -> Admission {
        let key = (kind, namespace.to_string(), name.to_string());
        lock(&self.waiting).remove(&key);
        let urgent = lock(&self.urgent).remove(&key);
        {
            let mut in_flight = lock(&self.in_flight);
            let running = in_flight.get(namespace).copied().unwrap_or(0);
            if running >= self.share {
                drop(in_flight);
                return self.later(key);
            }
            in_flight.insert(namespace.to_string(), running + 1);
        }
        let mut slot = Slot {
            _routine: None,
            namespace: namespace.to_string(),
            in_flight: self.in_flight.clone(),
        };
        if !routine || urgent {
            return Admission::Go(slot);
        }
        match self.routine_slots.clone().try_acquire_owned() {
            Ok(permit) => {
                slot._routine = Some(permit);
                Admission::Go(slot)
            }
            Err(_) => {
                drop(slot);
                self.later(key)
            }
        }
    }

    fn later(&self, key: Key) -> Admission {
        let waiting = {
            let mut waiting = lock(&self.waiting);
            waiting.insert(key);
            waiting.len()
        };
        Admission::Later(defer_delay(waiting, self.share, rand::random::<f64>()))
    }

    /// Forgets the resources of `kind` not among `live` (namespace, name).
    pub fn retain(&self, kind: &'static str, live: &HashSet<(String, String)>) {
        for set in [&self.waiting, &self.urgent] {
            let mut set = lock(set);
            set.retain(|(k, ns, name)| *k != kind || live.contains(&(ns.clone(), name.clone())));
            crate::janitor::shrink_set(&mut set);
        }
    }
}

/// When a refresh that stepped aside comes back: spread over the time `share` slots
/// need for the `waiting` refreshes at about 50 ms each (half a second to a minute),
/// so that they do not all come back at once; `jitter` is uniform in [0, 1).
pub fn defer_delay(waiting: usize, share: usize, jitter: f64) -> Duration {
    let window = (waiting as f64 * 0.05 / share.max(1) as f64).clamp(0.5, 60.0);
    Duration::from_secs_f64(0.1 + jitter * window)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn goes(a: &Admission) -> bool {
        matches!(a, Admission::Go(_))
    }

    #[test]
    fn refreshes_step_aside_when_their_share_is_taken_and_the_rest_goes_ahead() {
        // Concurrency 4: three slots for refreshes, one kept.
        let lanes = Lanes::new(4);
        let held: Vec<Admission> = (0..3)
            .map(|i| lanes.admit("VaultSecret", &format!("n{i}"), "r", true))
            .collect();
        assert!(held.iter().all(goes));
        let later = lanes.admit("VaultSecret", "n3", "r", true);
        assert!(matches!(later, Admission::Later(_)));
        // A first sync or spec change goes ahead whatever the refreshes hold.
        let new = lanes.admit("VaultSecret", "b", "new", false);
        assert!(goes(&new));
        drop(new);
        // So does the repair of a Secret someone edited, once.
        lanes.mark_urgent("VaultSecret", "n4", "r");
        let repair = lanes.admit("VaultSecret", "n4", "r", true);
        assert!(goes(&repair));
        drop(repair);
        assert!(!goes(&lanes.admit("VaultSecret", "n4", "r", true)));
        // A slot given back is taken by the next refresh.
        drop(held);
        assert!(goes(&lanes.admit("VaultSecret", "n3", "r", true)));
        assert_eq!(lock(&lanes.waiting).len(), 1, "n4/r still waits");
        lanes.retain("VaultSecret", &HashSet::new());
        assert!(lock(&lanes.waiting).is_empty());
        assert!(
            lock(&lanes.in_flight).is_empty(),
            "every slot was given back"
        );
    }

    #[test]
    fn one_namespace_leaves_room_for_the_others() {
        // Concurrency 2: a namespace holds one slot at a time, new resources included.
        let lanes = Lanes::new(2);
        let a = lanes.admit("VaultSecret", "a", "a0", false);
        assert!(goes(&a));
        assert!(!goes(&lanes.admit("VaultSecret", "a", "a1", false)));
        assert!(goes(&lanes.admit("VaultSecret", "b", "b0", false)));
        drop(a);
        assert!(goes(&lanes.admit("VaultSecret", "a", "a1", false)));
    }

    #[test]
    fn the_wait_grows_with_the_queue_and_stays_bounded() {
        assert_eq!(defer_delay(1, 24, 0.0), Duration::from_millis(100));
        assert!(defer_delay(1, 24, 1.0) <= Duration::from_millis(600));
        assert_eq!(defer_delay(4800, 24, 1.0), Duration::from_secs_f64(10.1));
        assert_eq!(
            defer_delay(1_000_000, 24, 1.0),
            Duration::from_secs_f64(60.1)
        );
        assert_eq!(Lanes::new(1).share, 1);
        assert_eq!(Lanes::new(32).share, 24);
    }
}
