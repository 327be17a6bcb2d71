//! Delivery: turning queued jobs into SCIM calls (DESIGN §5).
pub mod engine;
pub mod execute;
pub mod finisher;
pub mod guard;
pub mod inputs;
pub mod limiter;
pub mod lookups;
pub mod people;
pub mod policy;
pub mod staged;
pub mod target;
