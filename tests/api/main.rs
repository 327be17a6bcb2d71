//! Integration tests of the HTTP API: one binary, a module per capability.
mod adoption;
mod apps;
mod audit;
mod bad_input;
mod bench;
mod dashboards;
mod delivery;
mod engine;
mod events;
mod finisher;
mod groups;
mod health;
mod helpers;
mod reconcile;
mod scopes;
mod snapshots;
