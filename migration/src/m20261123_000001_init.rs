//! The whole data model of DESIGN §3 in one first migration.
//!
//! Portable types only: text ids (UUID v7 strings), `timestamp with time zone`, JSON (text on
//! SQLite, jsonb on PostgreSQL) and big integers for the queue's epoch-millisecond clocks, so that
//! the hot queue comparisons are plain integer comparisons on both engines.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

fn ts(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .not_null()
        .to_owned()
}

fn ts_null(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .null()
        .to_owned()
}

fn text(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).text().not_null().to_owned()
}

fn text_null(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).text().null().to_owned()
}

fn json(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).json_binary().not_null().to_owned()
}

fn json_null(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).json_binary().null().to_owned()
}

fn id_text(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .string_len(36)
        .not_null()
        .primary_key()
        .to_owned()
}

fn id_auto(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .big_integer()
        .not_null()
        .auto_increment()
        .primary_key()
        .to_owned()
}

fn big(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).big_integer().not_null().to_owned()
}

fn big_null(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).big_integer().null().to_owned()
}

fn int(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).integer().not_null().to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Identity::Table)
                .col(id_text(Identity::Id))
                .col(text(Identity::EmployeeId).unique_key())
                .col(text_null(Identity::UserName))
                .col(text_null(Identity::Email))
                .col(text_null(Identity::GivenName))
                .col(text_null(Identity::FamilyName))
                .col(text_null(Identity::DisplayName))
                .col(text_null(Identity::Department))
                .col(text_null(Identity::Title))
                .col(text_null(Identity::ManagerEmployeeId))
                .col(json(Identity::Attributes))
                .col(text(Identity::Status))
                .col(ts_null(Identity::LastEventAt))
                .col(big(Identity::Version))
                .col(ts(Identity::CreatedAt))
                .col(ts(Identity::UpdatedAt))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(RosterGroup::Table)
                .col(id_text(RosterGroup::Id))
                .col(text(RosterGroup::Name).unique_key())
                .col(text(RosterGroup::Kind))
                .col(json_null(RosterGroup::Rule))
                .col(ts(RosterGroup::CreatedAt))
                .col(ts(RosterGroup::UpdatedAt))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(GroupMember::Table)
                .col(
                    ColumnDef::new(GroupMember::GroupId)
                        .string_len(36)
                        .not_null(),
                )
                .col(text(GroupMember::EmployeeId))
                .primary_key(
                    Index::create()
                        .col(GroupMember::GroupId)
                        .col(GroupMember::EmployeeId),
                )
                .foreign_key(
                    ForeignKey::create()
                        .from(GroupMember::Table, GroupMember::GroupId)
                        .to(RosterGroup::Table, RosterGroup::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_group_member_employee")
                .table(GroupMember::Table)
                .col(GroupMember::EmployeeId)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(App::Table)
                .col(id_text(App::Id))
                .col(text(App::Name).unique_key())
                .col(text(App::BaseUrl))
                .col(text(App::AuthType))
                .col(json(App::AuthConfig))
                .col(text_null(App::SecretCiphertext))
                .col(text_null(App::SecretKeyId))
                .col(json(App::Config))
                .col(text(App::State))
                .col(text_null(App::StateReason))
                .col(big(App::Version))
                .col(ts(App::CreatedAt))
                .col(ts(App::UpdatedAt))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Link::Table)
                .col(id_auto(Link::Id))
                .col(ColumnDef::new(Link::AppId).string_len(36).not_null())
                .col(text(Link::ResourceKind))
                .col(text(Link::ResourceId))
                .col(text_null(Link::TargetId))
                .col(json_null(Link::Snapshot))
                .col(text_null(Link::SnapshotHash))
                .col(text(Link::State))
                .col(text_null(Link::LastError))
                .col(big_null(Link::DeleteAfter))
                .col(ts(Link::CreatedAt))
                .col(ts(Link::UpdatedAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(Link::Table, Link::AppId)
                        .to(App::Table, App::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("uq_link_app_resource")
                .table(Link::Table)
                .col(Link::AppId)
                .col(Link::ResourceKind)
                .col(Link::ResourceId)
                .unique()
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_link_resource")
                .table(Link::Table)
                .col(Link::ResourceKind)
                .col(Link::ResourceId)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Job::Table)
                .col(id_auto(Job::Id))
                .col(ColumnDef::new(Job::AppId).string_len(36).not_null())
                .col(text(Job::ResourceKind))
                .col(text(Job::ResourceId))
                .col(text(Job::Lane))
                .col(int(Job::Priority))
                .col(big(Job::RunAt))
                .col(int(Job::Attempts))
                .col(text(Job::State))
                .col(text_null(Job::LeaseOwner))
                .col(big_null(Job::LeaseUntil))
                .col(text_null(Job::LastError))
                .col(text_null(Job::HrEventId))
                .col(big(Job::EnqueuedAt))
                .col(ts(Job::CreatedAt))
                .col(ts(Job::UpdatedAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(Job::Table, Job::AppId)
                        .to(App::Table, App::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        // Coalescing: at most one pending job per (app, resource). A partial unique index is
        // portable between SQLite and PostgreSQL, so it is written as SQL.
        m.get_connection()
            .execute_unprepared(
                "CREATE UNIQUE INDEX uq_job_pending ON job (app_id, resource_kind, resource_id) \
                 WHERE state = 'pending'",
            )
            .await?;
        m.create_index(
            Index::create()
                .name("idx_job_claim")
                .table(Job::Table)
                .col(Job::State)
                .col(Job::Priority)
                .col(Job::RunAt)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_job_app_state")
                .table(Job::Table)
                .col(Job::AppId)
                .col(Job::State)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Operation::Table)
                .col(id_auto(Operation::Id))
                .col(ColumnDef::new(Operation::AppId).string_len(36).not_null())
                .col(big_null(Operation::JobId))
                .col(text(Operation::ResourceKind))
                .col(text(Operation::ResourceId))
                .col(text(Operation::Operation))
                .col(text(Operation::Method))
                .col(text(Operation::Path))
                .col(ColumnDef::new(Operation::Status).integer().null())
                .col(big(Operation::DurationMs))
                .col(int(Operation::Attempt))
                .col(text(Operation::Outcome))
                .col(text_null(Operation::Error))
                .col(text_null(Operation::TraceId))
                .col(text_null(Operation::HrEventId))
                .col(ts(Operation::CreatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_operation_app")
                .table(Operation::Table)
                .col(Operation::AppId)
                .col(Operation::Id)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_operation_resource")
                .table(Operation::Table)
                .col(Operation::ResourceId)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(HrEvent::Table)
                .col(id_auto(HrEvent::Id))
                .col(text(HrEvent::EventId).unique_key())
                .col(text(HrEvent::EventType))
                .col(text(HrEvent::EmployeeId))
                .col(ts(HrEvent::OccurredAt))
                .col(json(HrEvent::Payload))
                .col(text(HrEvent::Result))
                .col(text_null(HrEvent::Detail))
                .col(text_null(HrEvent::ApiKeyId))
                .col(ts(HrEvent::ReceivedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_hr_event_employee")
                .table(HrEvent::Table)
                .col(HrEvent::EmployeeId)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(ReconcileRun::Table)
                .col(id_text(ReconcileRun::Id))
                .col(
                    ColumnDef::new(ReconcileRun::AppId)
                        .string_len(36)
                        .not_null(),
                )
                .col(text(ReconcileRun::State))
                .col(ColumnDef::new(ReconcileRun::DryRun).boolean().not_null())
                .col(text(ReconcileRun::Mode))
                .col(json(ReconcileRun::Counts))
                .col(big(ReconcileRun::Writes))
                .col(text_null(ReconcileRun::Error))
                .col(ts(ReconcileRun::StartedAt))
                .col(ts_null(ReconcileRun::FinishedAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(ReconcileRun::Table, ReconcileRun::AppId)
                        .to(App::Table, App::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(ReconcileItem::Table)
                .col(id_auto(ReconcileItem::Id))
                .col(
                    ColumnDef::new(ReconcileItem::RunId)
                        .string_len(36)
                        .not_null(),
                )
                .col(text(ReconcileItem::Class))
                .col(text_null(ReconcileItem::TargetId))
                .col(text_null(ReconcileItem::UserName))
                .col(text_null(ReconcileItem::IdentityId))
                .col(json(ReconcileItem::Differences))
                .col(text(ReconcileItem::Action))
                .col(ColumnDef::new(ReconcileItem::Held).boolean().not_null())
                .foreign_key(
                    ForeignKey::create()
                        .from(ReconcileItem::Table, ReconcileItem::RunId)
                        .to(ReconcileRun::Table, ReconcileRun::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_reconcile_item_run")
                .table(ReconcileItem::Table)
                .col(ReconcileItem::RunId)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Audit::Table)
                .col(id_auto(Audit::Id))
                .col(text_null(Audit::ApiKeyId))
                .col(text(Audit::Action))
                .col(text(Audit::ObjectType))
                .col(text_null(Audit::ObjectId))
                .col(json_null(Audit::Before))
                .col(json_null(Audit::After))
                .col(ts(Audit::CreatedAt))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(ApiKey::Table)
                .col(id_text(ApiKey::Id))
                .col(text(ApiKey::Name))
                .col(text(ApiKey::SecretHash))
                .col(json(ApiKey::Scopes))
                .col(ts(ApiKey::CreatedAt))
                .col(ts_null(ApiKey::LastUsedAt))
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            ApiKey::Table.into_iden(),
            Audit::Table.into_iden(),
            ReconcileItem::Table.into_iden(),
            ReconcileRun::Table.into_iden(),
            HrEvent::Table.into_iden(),
            Operation::Table.into_iden(),
            Job::Table.into_iden(),
            Link::Table.into_iden(),
            App::Table.into_iden(),
            GroupMember::Table.into_iden(),
            RosterGroup::Table.into_iden(),
            Identity::Table.into_iden(),
        ] {
            m.drop_table(Table::drop().table(t).to_owned()).await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Identity {
    Table,
    Id,
    EmployeeId,
    UserName,
    Email,
    GivenName,
    FamilyName,
    DisplayName,
    Department,
    Title,
    ManagerEmployeeId,
    Attributes,
    Status,
    LastEventAt,
    Version,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum RosterGroup {
    Table,
    Id,
    Name,
    Kind,
    Rule,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum GroupMember {
    Table,
    GroupId,
    EmployeeId,
}

#[derive(DeriveIden)]
enum App {
    Table,
    Id,
    Name,
    BaseUrl,
    AuthType,
    AuthConfig,
    SecretCiphertext,
    SecretKeyId,
    Config,
    State,
    StateReason,
    Version,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Link {
    Table,
    Id,
    AppId,
    ResourceKind,
    ResourceId,
    TargetId,
    Snapshot,
    SnapshotHash,
    State,
    LastError,
    DeleteAfter,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Job {
    Table,
    Id,
    AppId,
    ResourceKind,
    ResourceId,
    Lane,
    Priority,
    RunAt,
    Attempts,
    State,
    LeaseOwner,
    LeaseUntil,
    LastError,
    HrEventId,
    EnqueuedAt,
    CreatedAt,
    UpdatedAt,
}

// `Operation::Operation` is the column that names the kind of provisioning operation.
#[allow(clippy::enum_variant_names)]
#[derive(DeriveIden)]
enum Operation {
    Table,
    Id,
    AppId,
    JobId,
    ResourceKind,
    ResourceId,
    Operation,
    Method,
    Path,
    Status,
    DurationMs,
    Attempt,
    Outcome,
    Error,
    TraceId,
    HrEventId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum HrEvent {
    Table,
    Id,
    EventId,
    EventType,
    EmployeeId,
    OccurredAt,
    Payload,
    Result,
    Detail,
    ApiKeyId,
    ReceivedAt,
}

#[derive(DeriveIden)]
enum ReconcileRun {
    Table,
    Id,
    AppId,
    State,
    DryRun,
    Mode,
    Counts,
    Writes,
    Error,
    StartedAt,
    FinishedAt,
}

#[derive(DeriveIden)]
enum ReconcileItem {
    Table,
    Id,
    RunId,
    Class,
    TargetId,
    UserName,
    IdentityId,
    Differences,
    Action,
    Held,
}

#[derive(DeriveIden)]
enum Audit {
    Table,
    Id,
    ApiKeyId,
    Action,
    ObjectType,
    ObjectId,
    Before,
    After,
    CreatedAt,
}

#[derive(DeriveIden)]
enum ApiKey {
    Table,
    Id,
    Name,
    SecretHash,
    Scopes,
    CreatedAt,
    LastUsedAt,
}
