//! A self-contained SCIM 2.0 client (RFC 7643/7644). Knows nothing of roster's database.
//!
//! API boundary: delivery, reconcile and the app service use only what this module exports.
pub mod quirks;

pub use quirks::{PatchOpCase, Quirks};
