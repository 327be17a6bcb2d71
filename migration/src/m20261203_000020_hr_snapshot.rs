//! HR snapshots: whole-population files from an HR system, diffed against the identities.
//!
//! - `identity.source`: the HR source that last wrote a person (`hr` for everyone so far), so
//!   a snapshot from one HR system never terminates another system's people.
//! - `hr_snapshot`: one posted file: source, `as_of`, content hash, state, counts, errors, the
//!   first changes of each kind, approval, and a lease so that one instance works on it at a
//!   time and another resumes it after a crash.
//! - `hr_snapshot_row`: its rows, kept until it is applied or cancelled. `kind` is what the
//!   diff found (`NULL`: unchanged or not diffed yet); `applied` is set once the row's change
//!   went through ingest. Leavers absent from the file get a row without `line` or `record`.
//!   Rows are written in batches while the body streams in, before their `hr_snapshot` row
//!   exists: rows without one are a cut-off upload and are deleted.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Identity::Table)
                .add_column(
                    ColumnDef::new(Identity::Source)
                        .text()
                        .not_null()
                        .default("hr"),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_identity_source_status")
                .table(Identity::Table)
                .col(Identity::Source)
                .col(Identity::Status)
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(HrSnapshot::Table)
                .col(
                    ColumnDef::new(HrSnapshot::Id)
                        .string_len(36)
                        .not_null()
                        .primary_key(),
                )
                .col(ColumnDef::new(HrSnapshot::Source).text().not_null())
                .col(ts(HrSnapshot::AsOf))
                .col(ColumnDef::new(HrSnapshot::ContentHash).text().not_null())
                .col(ColumnDef::new(HrSnapshot::Format).text().not_null())
                .col(ColumnDef::new(HrSnapshot::State).text().not_null())
                .col(ColumnDef::new(HrSnapshot::Counts).json_binary().not_null())
                .col(ColumnDef::new(HrSnapshot::Applied).big_integer().not_null())
                .col(ColumnDef::new(HrSnapshot::Changes).json_binary().not_null())
                .col(ColumnDef::new(HrSnapshot::Errors).json_binary().not_null())
                .col(ColumnDef::new(HrSnapshot::Reason).text().null())
                .col(ColumnDef::new(HrSnapshot::ApiKeyId).text().null())
                .col(ColumnDef::new(HrSnapshot::ApprovedBy).text().null())
                .col(ColumnDef::new(HrSnapshot::LeaseOwner).text().null())
                .col(ColumnDef::new(HrSnapshot::LeaseUntil).big_integer().null())
                .col(ts(HrSnapshot::ReceivedAt))
                .col(ts(HrSnapshot::UpdatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_hr_snapshot_source_state")
                .table(HrSnapshot::Table)
                .col(HrSnapshot::Source)
                .col(HrSnapshot::State)
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(HrSnapshotRow::Table)
                .col(
                    ColumnDef::new(HrSnapshotRow::SnapshotId)
                        .string_len(36)
                        .not_null(),
                )
                .col(ColumnDef::new(HrSnapshotRow::EmployeeId).text().not_null())
                .col(ColumnDef::new(HrSnapshotRow::Line).big_integer().null())
                .col(ColumnDef::new(HrSnapshotRow::Record).json_binary().null())
                .col(ColumnDef::new(HrSnapshotRow::Kind).text().null())
                .col(ColumnDef::new(HrSnapshotRow::Applied).boolean().not_null())
                .primary_key(
                    Index::create()
                        .col(HrSnapshotRow::SnapshotId)
                        .col(HrSnapshotRow::EmployeeId),
                )
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(HrSnapshotRow::Table).to_owned())
            .await?;
        m.drop_table(Table::drop().table(HrSnapshot::Table).to_owned())
            .await?;
        m.drop_index(
            Index::drop()
                .name("idx_identity_source_status")
                .table(Identity::Table)
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Identity::Table)
                .drop_column(Identity::Source)
                .to_owned(),
        )
        .await
    }
}

fn ts(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .not_null()
        .to_owned()
}

#[derive(DeriveIden)]
enum Identity {
    Table,
    Source,
    Status,
}

#[derive(DeriveIden)]
enum HrSnapshot {
    Table,
    Id,
    Source,
    AsOf,
    ContentHash,
    Format,
    State,
    Counts,
    Applied,
    Changes,
    Errors,
    Reason,
    ApiKeyId,
    ApprovedBy,
    LeaseOwner,
    LeaseUntil,
    ReceivedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum HrSnapshotRow {
    Table,
    SnapshotId,
    EmployeeId,
    Line,
    Record,
    Kind,
    Applied,
}
