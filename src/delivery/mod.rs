//! Delivery: turning queued jobs into SCIM calls (DESIGN §5).
pub mod target;
