#![forbid(unsafe_code)]
//! vaultsync: syncs short-lived, owner-referenced Secrets from external vaults.

pub mod admission;
pub mod api;
pub mod backend;
pub mod check;
pub mod config;
pub mod context;
pub mod controller;
pub mod error;
pub mod events;
pub mod expiry;
pub mod failpoint;
pub mod http;
pub mod inject;
pub mod janitor;
pub mod leader;
pub mod metrics;
pub mod ownership;
pub mod rebuild;
pub mod scope;
pub mod secret_watch;
pub mod sync;
pub mod telemetry;
pub mod triggers;
