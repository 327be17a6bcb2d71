//! roster's schema. Runs on SQLite (embedded default) and PostgreSQL.
pub use sea_orm_migration::prelude::*;

mod m20261123_000001_init;
mod m20261123_000002_reconcile_item_resource;
mod m20261203_000001_unique_live_link_target;
mod m20261203_000002_reconcile_item_account;
mod m20261203_000005_credential_key;
mod m20261203_000006_field_times;
mod m20261203_000007_app_paused_by;
mod m20261203_000010_app_tls;
mod m20261203_000020_hr_snapshot;
mod m20261203_000030_app_connector;
mod m20261203_000040_reconcile_run_waiting;
mod m20261205_000001_job_running_index;
mod m20261206_000001_job_indexes_without_done;
mod m20261207_000001_link_unsure_index;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261123_000001_init::Migration),
            Box::new(m20261123_000002_reconcile_item_resource::Migration),
            Box::new(m20261203_000001_unique_live_link_target::Migration),
            Box::new(m20261203_000002_reconcile_item_account::Migration),
            Box::new(m20261203_000005_credential_key::Migration),
            Box::new(m20261203_000006_field_times::Migration),
            Box::new(m20261203_000007_app_paused_by::Migration),
            Box::new(m20261203_000010_app_tls::Migration),
            Box::new(m20261203_000020_hr_snapshot::Migration),
            Box::new(m20261203_000030_app_connector::Migration),
            Box::new(m20261203_000040_reconcile_run_waiting::Migration),
            Box::new(m20261205_000001_job_running_index::Migration),
            Box::new(m20261206_000001_job_indexes_without_done::Migration),
            Box::new(m20261207_000001_link_unsure_index::Migration),
        ]
    }
}
