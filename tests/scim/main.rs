//! The SCIM client against the in-process dev-target, tiny hostile servers, and the
//! third-party peer (`peer` module; needs `with-peer.sh scim2-server`).
#[path = "../common/mod.rs"]
mod common;
mod crud;
mod errors;
mod faults;
mod fuzz_corpus;
mod helpers;
mod lookups;
mod oauth;
mod paging;
mod peer;
mod raw;
mod scenarios;
