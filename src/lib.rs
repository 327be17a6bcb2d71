//! roster: identity provisioning orchestrator. See ARCHITECTURE.md for the module map.
#![forbid(unsafe_code)]

pub mod api;
pub mod bench;
pub mod cli;
pub mod config;
pub mod connectors;
pub mod crypto;
pub mod delivery;
pub mod demo;
pub mod dev_target;
#[doc(hidden)]
pub mod fuzzing;
pub mod mapping;
pub mod net_guard;
pub mod reconcile;
pub mod scim;
pub mod service;
pub mod settings;
pub mod startup;
pub mod store;
pub mod telemetry;
