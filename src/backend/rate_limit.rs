//! A client-side rate limit toward one backend connection.

/// Requests are spaced evenly at `per_second`, each waiting for its own slot, so a burst
/// of reconciles cannot flood a backend.
pub struct RateLimiter {
    interval: std::time::Duration,
    next_slot: tokio::sync::Mutex<tokio::time::Instant>,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> Self {
        Self {
            interval: std::time::Duration::from_secs(1) / per_second.max(1),
            next_slot: tokio::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Waits for the next free slot.
    pub async fn acquire(&self) {
        let slot = {
            let mut next = self.next_slot.lock().await;
            let now = tokio::time::Instant::now();
            let slot = (*next).max(now);
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rate_limiter_spaces_requests() {
        let limiter = RateLimiter::new(10);
        let start = tokio::time::Instant::now();
        for _ in 0..11 {
            limiter.acquire().await;
        }
        // Eleven requests at ten per second: the last waits a full second.
        assert_eq!(start.elapsed(), std::time::Duration::from_secs(1));
    }
}
