#![forbid(unsafe_code)]
//! vaultsync: syncs short-lived, owner-referenced Secrets from external vaults.

pub mod api;
pub mod backend;
pub mod config;
pub mod controller;
pub mod error;
pub mod events;
pub mod expiry;
pub mod http;
pub mod metrics;
pub mod sync;
pub mod telemetry;
