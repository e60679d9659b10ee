//! Fault injection for tests: with `VAULTSYNC_FAILPOINT=<step>` in its environment, the
//! process aborts right after that step of a lease re-issue (`issued`, `recorded`,
//! `written`, `restarted`, `revoked`, `committed`), as a crash would. Unset, nothing
//! happens.

use std::sync::OnceLock;

/// The environment variable naming the step to abort after.
pub const ENV: &str = "VAULTSYNC_FAILPOINT";

/// Aborts the process if `step` is the configured failpoint.
pub fn hit(step: &str) {
    static CONFIGURED: OnceLock<Option<String>> = OnceLock::new();
    let configured = CONFIGURED.get_or_init(|| std::env::var(ENV).ok().filter(|s| !s.is_empty()));
    if configured.as_deref() == Some(step) {
        tracing::error!(step, "failpoint reached: aborting the process");
        std::process::abort();
    }
}
