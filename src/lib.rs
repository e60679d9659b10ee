#![forbid(unsafe_code)]
//! vaultsync: syncs short-lived, owner-referenced Secrets from external vaults.

pub mod api;
pub mod metrics;
pub mod backend;
pub mod config;
pub mod error;
pub mod sync;
