//! sea-orm entities, one per table of DESIGN §3.
pub mod api_key;
pub mod app;
pub mod audit;
pub mod credential_key;
pub mod group;
pub mod group_member;
pub mod hr_event;
pub mod hr_snapshot;
pub mod hr_snapshot_row;
pub mod identity;
pub mod job;
pub mod link;
pub mod operation;
pub mod reconcile_item;
pub mod reconcile_run;
