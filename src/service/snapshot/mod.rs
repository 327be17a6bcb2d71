//! HR snapshots: the whole population from an HR export, diffed against the identities, the
//! changes applied through the same ingest path as events.
//!
//! Invariants:
//! - Rows are stored before the snapshot is answered `202`: in batches as the body streams
//!   in, then the `hr_snapshot` row in a transaction of its own. Rows without their snapshot
//!   row are a cut-off upload and are deleted (on the next start, or at once on an error).
//! - Nothing is applied twice: each change is an HR event whose id is derived from the
//!   snapshot and the employee (`hr-snapshot:<id>:<employee_id>`), so a change applied before
//!   a crash comes back `duplicate` when the snapshot resumes. The diff writes nothing to
//!   identities, so a crash while diffing just diffs again.
//! - A snapshot and an event never fight: changes carry `occurred_at` = `as_of`, and ingest
//!   keeps the newer of each field and of the status (a leaver wins a tie).
//! - One worker holds a snapshot at a time (a lease renewed as it goes); an expired lease is
//!   taken over, so a crash in `received`, `diffing` or `applying` resumes.
//! - Only people of the snapshot's `source` become leavers by absence.
pub mod diff;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, Set,
};
use serde_json::json;
use sha2::Digest;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::diff::{ChangeKind, LeaverGuard, RowError, SnapshotRecord};
use super::audit::{self, AuditEntry};
use super::ingest::{self, EmployeeRecord, EventType, HrEventInput};
use super::{Principal, Roster, Scope, ServiceError, ServiceResult, new_id};
use crate::store::entity::{hr_snapshot, hr_snapshot_row, identity};

/// Rows per snapshot, and bytes per body (the route's own limit; others keep 1 MiB).
pub const MAX_ROWS: u64 = 1_000_000;
pub const MAX_BODY_BYTES: u64 = 256 * 1024 * 1024;
/// Row errors kept on a rejected snapshot (all are counted).
pub const MAX_ERRORS_KEPT: usize = 1000;
/// Changes of each kind shown on a snapshot.
pub const CHANGES_SHOWN: usize = 100;
/// Rows per insert while receiving, per page while diffing.
const ROW_CHUNK: usize = 2000;
/// Changes per ingest request while applying (ingest takes at most 1000).
const APPLY_BATCH: u64 = 500;

pub const RECEIVED: &str = "received";
pub const DIFFING: &str = "diffing";
pub const HELD: &str = "held";
pub const APPLYING: &str = "applying";
pub const APPLIED: &str = "applied";
pub const REJECTED: &str = "rejected";
pub const CANCELLED: &str = "cancelled";
pub const FAILED: &str = "failed";

/// The body's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotFormat {
    Csv,
    Ndjson,
    Json,
}

impl SnapshotFormat {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotFormat::Csv => "csv",
            SnapshotFormat::Ndjson => "ndjson",
            SnapshotFormat::Json => "json",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SnapshotParams {
    pub source: String,
    pub as_of: DateTime<Utc>,
    pub dry_run: bool,
    pub format: SnapshotFormat,
}

/// What the body reader hands over: rows as they are parsed, then the end with the hash of
/// the bytes read.
pub enum Upload {
    Rows(Vec<Result<SnapshotRecord, RowError>>),
    End { content_hash: String },
}

/// A receive that did not complete: the body's own error (the caller's type), or ours.
#[derive(Debug)]
pub enum ReceiveFailure<E> {
    Upload(E),
    Service(ServiceError),
}

impl<E> From<ServiceError> for ReceiveFailure<E> {
    fn from(e: ServiceError) -> Self {
        ReceiveFailure::Service(e)
    }
}

impl<E> From<sea_orm::DbErr> for ReceiveFailure<E> {
    fn from(e: sea_orm::DbErr) -> Self {
        ReceiveFailure::Service(e.into())
    }
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Counts {
    pub rows: u64,
    pub joiners: u64,
    pub movers: u64,
    pub leavers: u64,
    pub unchanged: u64,
    pub invalid: u64,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Changes {
    pub joiners: Vec<String>,
    pub movers: Vec<String>,
    pub leavers: Vec<String>,
}

/// A snapshot as the API shows it.
#[derive(Debug, Clone)]
pub struct SnapshotView {
    pub id: String,
    pub source: String,
    pub as_of: DateTime<Utc>,
    pub format: String,
    pub state: String,
    pub dry_run: bool,
    pub counts: Counts,
    /// Changes applied so far, of `joiners + movers + leavers`.
    pub applied: u64,
    pub changes: Changes,
    pub errors: Vec<RowError>,
    pub reason: Option<String>,
    pub content_hash: String,
    pub received_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl SnapshotView {
    fn of(m: hr_snapshot::Model) -> Self {
        Self {
            counts: serde_json::from_value(m.counts).unwrap_or_default(),
            changes: serde_json::from_value(m.changes).unwrap_or_default(),
            errors: serde_json::from_value(m.errors).unwrap_or_default(),
            applied: u64::try_from(m.applied).unwrap_or(0),
            id: m.id,
            source: m.source,
            as_of: m.as_of,
            format: m.format,
            state: m.state,
            dry_run: false,
            reason: m.reason,
            content_hash: m.content_hash,
            received_at: m.received_at,
            updated_at: m.updated_at,
        }
    }
}

/// The event id of one change: the same snapshot and person always give the same id.
#[must_use]
pub fn change_event_id(snapshot_id: &str, employee_id: &str) -> String {
    format!(
        "{}{snapshot_id}:{employee_id}",
        ingest::SNAPSHOT_EVENT_PREFIX
    )
}

/// Checks the source name (`hr` by default): what identities are labelled with.
pub fn validate_source(source: &str) -> ServiceResult<()> {
    super::validate_name("source", source)
}

/// The diff of a snapshot, built batch by batch: counts, the first changes of each kind, and
/// (for a stored snapshot) every change to record.
struct Differ {
    source: String,
    seen: HashSet<String>,
    counts: Counts,
    changes: Changes,
    all: Vec<(String, ChangeKind, bool)>,
    /// Rows that are valid alone but not against roster: a joiner neither the row nor roster
    /// can name (no `user_name`, no `email`). The snapshot is rejected whole, as for any
    /// invalid row. The first [`MAX_ERRORS_KEPT`] are kept; `invalid` counts them all.
    errors: Vec<RowError>,
    invalid: u64,
}

impl Differ {
    fn new(source: &str) -> Self {
        Self {
            source: source.to_owned(),
            seen: HashSet::new(),
            counts: Counts::default(),
            changes: Changes::default(),
            all: Vec::new(),
            errors: Vec::new(),
            invalid: 0,
        }
    }

    fn note(&mut self, employee_id: &str, kind: Option<ChangeKind>, present: bool) {
        let (count, shown) = match kind {
            None => {
                self.counts.unchanged += 1;
                return;
            }
            Some(ChangeKind::Joiner) => (&mut self.counts.joiners, &mut self.changes.joiners),
            Some(ChangeKind::Mover) => (&mut self.counts.movers, &mut self.changes.movers),
            Some(ChangeKind::Leaver) => (&mut self.counts.leavers, &mut self.changes.leavers),
        };
        *count += 1;
        if shown.len() < CHANGES_SHOWN {
            shown.push(employee_id.to_owned());
        }
        if let Some(kind) = kind {
            self.all.push((employee_id.to_owned(), kind, present));
        }
    }

    /// Classifies rows against the people as stored now.
    async fn add(
        &mut self,
        conn: &impl ConnectionTrait,
        records: &[SnapshotRecord],
    ) -> ServiceResult<()> {
        let people =
            people_by_employee_id(conn, records.iter().map(|r| &r.employee.employee_id)).await?;
        self.classify(records, &people);
        Ok(())
    }

    /// [`Differ::add`] for a page of stored rows, in the database's `employee_id` order: the
    /// people are read by one range of the unique index, not by lists of ids.
    async fn add_page(
        &mut self,
        conn: &impl ConnectionTrait,
        first: &str,
        last: &str,
        records: &[SnapshotRecord],
    ) -> ServiceResult<()> {
        let people = identity::Entity::find()
            .filter(identity::Column::EmployeeId.gte(first))
            .filter(identity::Column::EmployeeId.lte(last))
            .all(conn)
            .await?
            .into_iter()
            .map(|p| (p.employee_id.clone(), p))
            .collect();
        self.classify(records, &people);
        Ok(())
    }

    fn classify(&mut self, records: &[SnapshotRecord], people: &HashMap<String, identity::Model>) {
        for record in records {
            let id = &record.employee.employee_id;
            self.counts.rows += 1;
            self.seen.insert(id.clone());
            let person = people.get(id);
            let kind = diff::classify(record, person);
            if kind == Some(ChangeKind::Joiner) && !diff::joiner_is_named(record, person) {
                self.invalid += 1;
                if self.errors.len() < MAX_ERRORS_KEPT {
                    self.errors.push(RowError {
                        line: record.line,
                        employee_id: Some(id.clone()),
                        reason: "a joiner needs `user_name` or `email`, and roster holds neither for this employee".into(),
                    });
                }
                continue;
            }
            self.note(id, kind, true);
        }
    }

    /// The source's active people absent from the file are leavers; returns how many active
    /// people the source has. Pages through every identity by `employee_id` (its unique index)
    /// and filters here: paging the source's active people in `employee_id` order by a
    /// `(source, status)` index sorted all of them again for each page.
    async fn absent_leavers(&mut self, conn: &impl ConnectionTrait) -> ServiceResult<u64> {
        let mut active = 0;
        let mut after = String::new();
        loop {
            let page: Vec<(String, String, String)> = identity::Entity::find()
                .select_only()
                .column(identity::Column::EmployeeId)
                .column(identity::Column::Source)
                .column(identity::Column::Status)
                .filter(identity::Column::EmployeeId.gt(after.as_str()))
                .order_by_asc(identity::Column::EmployeeId)
                .limit(ROW_CHUNK as u64)
                .into_tuple()
                .all(conn)
                .await?;
            let Some((last, _, _)) = page.last() else {
                break;
            };
            after = last.clone();
            for (employee_id, source, status) in page {
                if source != self.source || status != "active" {
                    continue;
                }
                active += 1;
                if !self.seen.contains(&employee_id) {
                    self.note(&employee_id, Some(ChangeKind::Leaver), false);
                }
            }
        }
        Ok(active)
    }
}

async fn people_by_employee_id<'a>(
    conn: &impl ConnectionTrait,
    ids: impl Iterator<Item = &'a String>,
) -> ServiceResult<HashMap<String, identity::Model>> {
    let ids: Vec<&String> = ids.collect();
    let mut people = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(500) {
        for p in identity::Entity::find()
            .filter(identity::Column::EmployeeId.is_in(chunk.iter().map(|s| s.as_str())))
            .all(conn)
            .await?
        {
            people.insert(p.employee_id.clone(), p);
        }
    }
    Ok(people)
}

/// The outcome of a received body.
pub enum Received {
    /// Stored; the diff runs in the background.
    Stored(SnapshotView),
    /// Invalid rows or duplicate ids: stored as `rejected` with its errors, and no rows.
    Rejected(SnapshotView),
    /// `dry_run`: the diff, nothing written.
    DryRun(SnapshotView),
}

fn guard_of(roster: &Roster) -> LeaverGuard {
    LeaverGuard {
        max_leavers: roster.config().hr_snapshot_max_leavers,
        max_leaver_fraction: roster.config().hr_snapshot_max_leaver_fraction,
    }
}

fn count_result(source: &str, result: &str) {
    crate::telemetry::metrics()
        .hr_snapshots_total
        .with_label_values(&[source, result])
        .inc();
}

impl Roster {
    /// The `as_of` of the source's newest applied snapshot.
    async fn last_applied_as_of(
        &self,
        conn: &impl ConnectionTrait,
        source: &str,
    ) -> ServiceResult<Option<DateTime<Utc>>> {
        Ok(hr_snapshot::Entity::find()
            .select_only()
            .column(hr_snapshot::Column::AsOf)
            .filter(hr_snapshot::Column::Source.eq(source))
            .filter(hr_snapshot::Column::State.eq(APPLIED))
            .order_by_desc(hr_snapshot::Column::AsOf)
            .into_tuple::<DateTime<Utc>>()
            .one(conn)
            .await?)
    }

    fn check_params(params: &SnapshotParams, now: DateTime<Utc>) -> ServiceResult<()> {
        validate_source(&params.source)?;
        if (params.as_of - now).num_seconds() > ingest::MAX_FUTURE_SECS {
            return Err(ServiceError::invalid(
                "as_of",
                "is more than 5 minutes in the future",
            ));
        }
        Ok(())
    }

    async fn refuse_stale(&self, source: &str, as_of: DateTime<Utc>) -> ServiceResult<()> {
        if let Some(last) = self.last_applied_as_of(self.db(), source).await?
            && as_of < last
        {
            return Err(ServiceError::invalid(
                "as_of",
                format!(
                    "{as_of} is older than the last applied snapshot of source `{source}` ({last}): a stale export is not applied"
                ),
            ));
        }
        Ok(())
    }

    /// Receives a snapshot body as its reader parses it. Rows go to the store in batches
    /// (nothing is held whole); the snapshot row is committed last, and only then is the
    /// answer given. A `dry_run` diffs as it reads and writes nothing.
    pub async fn receive_snapshot<E>(
        &self,
        principal: &Principal,
        params: SnapshotParams,
        mut upload: mpsc::Receiver<Result<Upload, E>>,
    ) -> Result<Received, ReceiveFailure<E>> {
        principal.require(super::Permission::WriteEvents)?;
        Self::check_params(&params, Utc::now())?;
        self.refuse_stale(&params.source, params.as_of).await?;
        let id = new_id();
        let mut first_line: HashMap<String, u64> = HashMap::new();
        let mut errors: Vec<RowError> = Vec::new();
        let mut invalid = 0u64;
        let mut rows = 0u64;
        let mut differ = Differ::new(&params.source);
        let mut pending: Vec<hr_snapshot_row::ActiveModel> = Vec::new();
        let mut stored_any = false;
        let received = async {
            let content_hash = loop {
                let Some(message) = upload.recv().await else {
                    return Err(ReceiveFailure::Service(ServiceError::Internal(
                        "the request body reader stopped without an end".into(),
                    )));
                };
                let batch = match message.map_err(ReceiveFailure::Upload)? {
                    Upload::End { content_hash } => break content_hash,
                    Upload::Rows(batch) => batch,
                };
                let mut good = Vec::with_capacity(batch.len());
                for item in batch {
                    let record = match item {
                        Ok(record) => record,
                        Err(e) => {
                            invalid += 1;
                            if errors.len() < MAX_ERRORS_KEPT {
                                errors.push(e);
                            }
                            continue;
                        }
                    };
                    rows += 1;
                    let employee_id = record.employee.employee_id.clone();
                    if let Some(first) = first_line.get(&employee_id) {
                        invalid += 1;
                        if errors.len() < MAX_ERRORS_KEPT {
                            errors.push(RowError {
                                line: record.line,
                                reason: format!(
                                    "duplicate employee_id `{employee_id}`, first on line {first}"
                                ),
                                employee_id: Some(employee_id),
                            });
                        }
                        continue;
                    }
                    first_line.insert(employee_id, record.line);
                    good.push(record);
                }
                if invalid > 0 {
                    // Rejected whole: the rest is only read for its errors.
                    continue;
                }
                if params.dry_run {
                    differ.add(self.db(), &good).await?;
                    continue;
                }
                pending.extend(good.iter().map(|r| hr_snapshot_row::ActiveModel {
                    snapshot_id: Set(id.clone()),
                    employee_id: Set(r.employee.employee_id.clone()),
                    line: Set(i64::try_from(r.line).ok()),
                    record: Set(Some(diff::record_to_json(r))),
                    kind: Set(None),
                    applied: Set(false),
                }));
                if pending.len() >= ROW_CHUNK {
                    self.store_rows(std::mem::take(&mut pending)).await?;
                    stored_any = true;
                }
            };
            Ok(content_hash)
        }
        .await;
        let content_hash = match received {
            Ok(hash) => hash,
            Err(e) => {
                if stored_any {
                    self.delete_rows(&id).await;
                }
                return Err(e);
            }
        };
        let now = Utc::now();
        let mut view = SnapshotView {
            id: id.clone(),
            source: params.source.clone(),
            as_of: params.as_of,
            format: params.format.as_str().to_owned(),
            state: RECEIVED.to_owned(),
            dry_run: params.dry_run,
            counts: Counts {
                rows,
                invalid,
                ..Counts::default()
            },
            applied: 0,
            changes: Changes::default(),
            errors,
            reason: None,
            content_hash,
            received_at: now,
            updated_at: now,
        };
        if invalid > 0 {
            view.state = REJECTED.to_owned();
            view.reason = Some(format!(
                "{invalid} invalid or duplicate rows; the snapshot is rejected whole"
            ));
            if params.dry_run {
                return Ok(Received::DryRun(view));
            }
            if stored_any {
                self.delete_rows(&id).await;
            }
            let tx = self.write_tx().await?;
            insert_snapshot(&*tx, &view, principal).await?;
            audit_receive(&*tx, principal, &view).await?;
            tx.commit().await?;
            count_result(&view.source, REJECTED);
            return Ok(Received::Rejected(view));
        }
        if rows == 0 {
            if stored_any {
                self.delete_rows(&id).await;
            }
            return Err(ServiceError::invalid(
                "body",
                "the snapshot has no rows; an empty export is refused (it would end everyone)",
            )
            .into());
        }
        if params.dry_run {
            let active = differ.absent_leavers(self.db()).await?;
            view.counts = Counts {
                rows,
                invalid: differ.invalid,
                ..differ.counts.clone()
            };
            view.changes = differ.changes;
            if differ.invalid > 0 {
                view.reason = Some(unnamed_joiners_reason(differ.invalid));
                view.errors = differ.errors;
                view.state = REJECTED.to_owned();
                return Ok(Received::DryRun(view));
            }
            view.reason = diff::hold_reason(guard_of(self), view.counts.leavers, active);
            view.state = if view.reason.is_some() { HELD } else { APPLIED }.to_owned();
            return Ok(Received::DryRun(view));
        }
        // A newer snapshot of the source applied while this one streamed in is caught when
        // this one is diffed (and again if it is approved): it is rejected as stale there.
        let tx = self.write_tx().await?;
        if !pending.is_empty() {
            for chunk in pending.chunks(ROW_CHUNK) {
                hr_snapshot_row::Entity::insert_many(chunk.to_vec())
                    .exec_without_returning(&*tx)
                    .await?;
            }
        }
        insert_snapshot(&*tx, &view, principal).await?;
        audit_receive(&*tx, principal, &view).await?;
        tx.commit().await?;
        count_result(&view.source, RECEIVED);
        self.inner.snapshots_ready.notify_one();
        Ok(Received::Stored(view))
    }

    async fn store_rows(&self, rows: Vec<hr_snapshot_row::ActiveModel>) -> ServiceResult<()> {
        let tx = self.write_tx().await?;
        for chunk in rows.chunks(ROW_CHUNK) {
            hr_snapshot_row::Entity::insert_many(chunk.to_vec())
                .exec_without_returning(&*tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Best effort: rows left behind are deleted on the next start (`clean_orphan_rows`).
    async fn delete_rows(&self, snapshot_id: &str) {
        let deleted = async {
            let tx = self.write_tx().await?;
            hr_snapshot_row::Entity::delete_many()
                .filter(hr_snapshot_row::Column::SnapshotId.eq(snapshot_id))
                .exec(&*tx)
                .await?;
            tx.commit().await?;
            Ok::<_, ServiceError>(())
        }
        .await;
        if let Err(e) = deleted {
            tracing::warn!(error = %e, snapshot = snapshot_id, "Could not delete the rows of a cut-off HR snapshot upload");
        }
    }

    /// Snapshots, newest first; `before` is the cursor (a snapshot id).
    pub async fn list_snapshots(
        &self,
        source: Option<&str>,
        before: Option<&str>,
        limit: u64,
    ) -> ServiceResult<Vec<SnapshotView>> {
        let mut q = hr_snapshot::Entity::find().order_by_desc(hr_snapshot::Column::Id);
        if let Some(source) = source {
            q = q.filter(hr_snapshot::Column::Source.eq(source));
        }
        if let Some(before) = before {
            q = q.filter(hr_snapshot::Column::Id.lt(before));
        }
        Ok(q.limit(limit)
            .all(self.db())
            .await?
            .into_iter()
            .map(SnapshotView::of)
            .collect())
    }

    pub async fn get_snapshot(&self, id: &str) -> ServiceResult<SnapshotView> {
        hr_snapshot::Entity::find_by_id(id)
            .one(self.db())
            .await?
            .map(SnapshotView::of)
            .ok_or_else(|| ServiceError::not_found("hr snapshot", id))
    }

    /// An admin lets a held snapshot apply.
    pub async fn approve_snapshot(
        &self,
        principal: &Principal,
        id: &str,
    ) -> ServiceResult<SnapshotView> {
        principal.require(super::Permission::Admin)?;
        let tx = self.write_tx().await?;
        let snapshot = hr_snapshot::Entity::find_by_id(id)
            .one(&*tx)
            .await?
            .ok_or_else(|| ServiceError::not_found("hr snapshot", id))?;
        if snapshot.state != HELD {
            return Err(ServiceError::Conflict(format!(
                "hr snapshot `{id}` is `{}`; only a held snapshot can be approved",
                snapshot.state
            )));
        }
        if let Some(last) = self.last_applied_as_of(&*tx, &snapshot.source).await?
            && snapshot.as_of < last
        {
            return Err(ServiceError::Conflict(format!(
                "hr snapshot `{id}` (as of {}) is older than the last applied snapshot of source `{}` ({last}); cancel it",
                snapshot.as_of, snapshot.source
            )));
        }
        let updated = set_state(&*tx, snapshot.clone(), APPLYING, None, Some(principal)).await?;
        audit::record(
            &*tx,
            Some(principal),
            AuditEntry {
                action: "hr_snapshot.approve",
                object_type: "hr_snapshot",
                object_id: Some(id),
                before: Some(json!({"state": snapshot.state})),
                after: Some(json!({"state": APPLYING})),
            },
        )
        .await?;
        tx.commit().await?;
        self.inner.snapshots_ready.notify_one();
        Ok(SnapshotView::of(updated))
    }

    /// An admin drops a snapshot that has not started applying; its rows are deleted.
    pub async fn cancel_snapshot(
        &self,
        principal: &Principal,
        id: &str,
    ) -> ServiceResult<SnapshotView> {
        principal.require(super::Permission::Admin)?;
        let tx = self.write_tx().await?;
        let snapshot = hr_snapshot::Entity::find_by_id(id)
            .one(&*tx)
            .await?
            .ok_or_else(|| ServiceError::not_found("hr snapshot", id))?;
        if ![RECEIVED, DIFFING, HELD].contains(&snapshot.state.as_str()) {
            return Err(ServiceError::Conflict(format!(
                "hr snapshot `{id}` is `{}`; only a received, diffing or held snapshot can be cancelled",
                snapshot.state
            )));
        }
        hr_snapshot_row::Entity::delete_many()
            .filter(hr_snapshot_row::Column::SnapshotId.eq(id))
            .exec(&*tx)
            .await?;
        let before = snapshot.state.clone();
        let updated = set_state(&*tx, snapshot, CANCELLED, None, None).await?;
        audit::record(
            &*tx,
            Some(principal),
            AuditEntry {
                action: "hr_snapshot.cancel",
                object_type: "hr_snapshot",
                object_id: Some(id),
                before: Some(json!({"state": before})),
                after: Some(json!({"state": CANCELLED})),
            },
        )
        .await?;
        tx.commit().await?;
        count_result(&updated.source, CANCELLED);
        Ok(SnapshotView::of(updated))
    }
}

async fn insert_snapshot(
    conn: &impl ConnectionTrait,
    view: &SnapshotView,
    principal: &Principal,
) -> ServiceResult<()> {
    hr_snapshot::ActiveModel {
        id: Set(view.id.clone()),
        source: Set(view.source.clone()),
        as_of: Set(view.as_of),
        content_hash: Set(view.content_hash.clone()),
        format: Set(view.format.clone()),
        state: Set(view.state.clone()),
        counts: Set(json!(view.counts)),
        applied: Set(0),
        changes: Set(json!(view.changes)),
        errors: Set(json!(view.errors)),
        reason: Set(view.reason.clone()),
        api_key_id: Set(Some(principal.key_id.clone())),
        approved_by: Set(None),
        lease_owner: Set(None),
        lease_until: Set(None),
        received_at: Set(view.received_at),
        updated_at: Set(view.updated_at),
    }
    .insert(conn)
    .await?;
    Ok(())
}

async fn audit_receive(
    conn: &impl ConnectionTrait,
    principal: &Principal,
    view: &SnapshotView,
) -> ServiceResult<()> {
    audit::record(
        conn,
        Some(principal),
        AuditEntry {
            action: "hr_snapshot.receive",
            object_type: "hr_snapshot",
            object_id: Some(&view.id),
            before: None,
            after: Some(json!({
                "source": view.source,
                "as_of": view.as_of,
                "state": view.state,
                "rows": view.counts.rows,
                "invalid": view.counts.invalid,
                "content_hash": view.content_hash,
            })),
        },
    )
    .await
}

async fn set_state(
    conn: &impl ConnectionTrait,
    snapshot: hr_snapshot::Model,
    state: &str,
    reason: Option<String>,
    approver: Option<&Principal>,
) -> ServiceResult<hr_snapshot::Model> {
    let mut active: hr_snapshot::ActiveModel = snapshot.into();
    active.state = Set(state.to_owned());
    if reason.is_some() {
        active.reason = Set(reason);
    }
    if let Some(p) = approver {
        active.approved_by = Set(Some(p.key_id.clone()));
    }
    if [APPLIED, REJECTED, CANCELLED, FAILED, HELD].contains(&state) {
        active.lease_owner = Set(None);
        active.lease_until = Set(None);
    }
    active.updated_at = Set(Utc::now());
    Ok(active.update(conn).await?)
}

/// The SHA-256 (hex) of a body, fed as it streams.
#[derive(Default)]
pub struct ContentHasher(sha2::Sha256);

impl ContentHasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    #[must_use]
    pub fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}

/// The background worker: takes received, diffing and applying snapshots (its own after a
/// restart, or another instance's whose lease expired) one at a time, oldest first.
pub fn start_worker(roster: Roster, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let owner = new_id();
        if let Err(e) = roster.clean_orphan_rows().await {
            tracing::warn!(error = %e, "Could not delete the rows of cut-off HR snapshot uploads");
        }
        loop {
            let worked = match roster.work_one_snapshot(&owner, &shutdown).await {
                Ok(worked) => worked,
                Err(e) => {
                    tracing::warn!(error = %e, "HR snapshot worker");
                    false
                }
            };
            if worked {
                continue;
            }
            roster.publish_held().await;
            tokio::select! {
                () = roster.inner.snapshots_ready.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = shutdown.cancelled() => break,
            }
        }
    })
}

impl Roster {
    /// `roster_hr_snapshots_held{source}` from the store, so every instance shows the same
    /// figure and a restart loses nothing.
    async fn publish_held(&self) {
        let held: Result<Vec<(String, i64)>, _> = hr_snapshot::Entity::find()
            .select_only()
            .column(hr_snapshot::Column::Source)
            .column_as(hr_snapshot::Column::Id.count(), "n")
            .filter(hr_snapshot::Column::State.eq(HELD))
            .group_by(hr_snapshot::Column::Source)
            .into_tuple()
            .all(self.db())
            .await;
        let Ok(held) = held else { return };
        let gauge = &crate::telemetry::metrics().hr_snapshots_held;
        let mut known = self
            .inner
            .held_sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for source in known.iter() {
            if !held.iter().any(|(s, _)| s == source) {
                gauge.with_label_values(&[source]).set(0);
            }
        }
        for (source, n) in held {
            gauge.with_label_values(&[&source]).set(n);
            known.insert(source);
        }
    }

    /// Deletes rows whose snapshot row was never written (an upload cut off by a crash).
    async fn clean_orphan_rows(&self) -> ServiceResult<()> {
        let tx = self.write_tx().await?;
        let known = sea_orm::sea_query::Query::select()
            .column(hr_snapshot::Column::Id)
            .from(hr_snapshot::Entity)
            .to_owned();
        hr_snapshot_row::Entity::delete_many()
            .filter(hr_snapshot_row::Column::SnapshotId.not_in_subquery(known))
            .exec(&*tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Claims the oldest snapshot with work left whose lease is free, and takes it one step
    /// further (diff, or apply to the end). Returns whether there was one. A source's
    /// snapshots go in the order received: one whose older sibling is still held by another
    /// worker (or by a dead one, until its lease runs out) waits, so a restart never applies a
    /// newer export before the older one it was queued behind.
    async fn work_one_snapshot(
        &self,
        owner: &str,
        shutdown: &CancellationToken,
    ) -> ServiceResult<bool> {
        let now = crate::store::queue::now_ms();
        let in_progress: Vec<(String, String, Option<String>, Option<i64>)> =
            hr_snapshot::Entity::find()
                .select_only()
                .column(hr_snapshot::Column::Id)
                .column(hr_snapshot::Column::Source)
                .column(hr_snapshot::Column::LeaseOwner)
                .column(hr_snapshot::Column::LeaseUntil)
                .filter(hr_snapshot::Column::State.is_in([RECEIVED, DIFFING, APPLYING]))
                .order_by_asc(hr_snapshot::Column::ReceivedAt)
                .order_by_asc(hr_snapshot::Column::Id)
                .into_tuple()
                .all(self.db())
                .await?;
        let mut sources_seen = HashSet::new();
        let id = in_progress
            .into_iter()
            .filter(|(_, source, _, _)| sources_seen.insert(source.clone()))
            .find(|(_, _, lease_owner, lease_until)| {
                lease_until.is_none_or(|until| until < now) || lease_owner.as_deref() == Some(owner)
            })
            .map(|(id, _, _, _)| id);
        let Some(id) = id else {
            return Ok(false);
        };
        if !self.renew_lease(owner, &id, true).await? {
            return Ok(true);
        }
        let Some(snapshot) = hr_snapshot::Entity::find_by_id(&id).one(self.db()).await? else {
            return Ok(true);
        };
        let result = match snapshot.state.as_str() {
            RECEIVED | DIFFING => self.diff_snapshot(owner, snapshot).await,
            APPLYING => self.apply_snapshot(owner, snapshot, shutdown).await,
            _ => Ok(()),
        };
        match result {
            Ok(()) => Ok(true),
            // Its changes refused by ingest (an event id already used for another change, a
            // change ingest finds invalid): taking it up again would fail the same way, and
            // every snapshot behind it would wait. It ends `failed`, saying why; what was
            // applied before stays applied.
            Err(e) if e.is_permanent() => {
                tracing::warn!(error = %e, snapshot = id, "HR snapshot failed");
                if let Some(current) = hr_snapshot::Entity::find_by_id(&id).one(self.db()).await? {
                    let reason = format!("its changes were refused: {e}");
                    self.finish(current, FAILED, Some(reason)).await?;
                }
                Ok(true)
            }
            Err(e) => {
                // A database hiccup: taken up again after a pause (this worker keeps the
                // lease; another instance's waits until it runs out).
                tracing::warn!(error = %e, snapshot = id, "HR snapshot step failed; it will be resumed");
                Ok(false)
            }
        }
    }

    /// Takes or extends this worker's lease; `false` if another worker holds it.
    async fn renew_lease(&self, owner: &str, id: &str, take: bool) -> ServiceResult<bool> {
        let now = crate::store::queue::now_ms();
        let lease = i64::try_from(self.config().hr_snapshot_lease.as_millis()).unwrap_or(30_000);
        let tx = self.write_tx().await?;
        let mut free = Condition::any().add(hr_snapshot::Column::LeaseOwner.eq(owner));
        if take {
            free = free
                .add(hr_snapshot::Column::LeaseUntil.is_null())
                .add(hr_snapshot::Column::LeaseUntil.lt(now));
        }
        let updated = hr_snapshot::Entity::update_many()
            .col_expr(hr_snapshot::Column::LeaseOwner, Expr::value(owner))
            .col_expr(hr_snapshot::Column::LeaseUntil, Expr::value(now + lease))
            .filter(hr_snapshot::Column::Id.eq(id))
            .filter(hr_snapshot::Column::State.is_in([RECEIVED, DIFFING, APPLYING]))
            .filter(free)
            .exec(&*tx)
            .await?;
        tx.commit().await?;
        Ok(updated.rows_affected == 1)
    }

    /// Diffs a received snapshot against the identities and records each change on its row;
    /// then holds it, applies it, or rejects it as stale. A crash before the last commit
    /// leaves it `diffing`, and it is diffed again from the start.
    async fn diff_snapshot(&self, owner: &str, snapshot: hr_snapshot::Model) -> ServiceResult<()> {
        if snapshot.state == RECEIVED {
            let tx = self.write_tx().await?;
            set_state(&*tx, snapshot.clone(), DIFFING, None, None).await?;
            tx.commit().await?;
        }
        let id = snapshot.id.clone();
        if let Some(last) = self.last_applied_as_of(self.db(), &snapshot.source).await?
            && snapshot.as_of < last
        {
            let reason = format!(
                "as of {}, older than the last applied snapshot of source `{}` ({last}): a stale export is not applied",
                snapshot.as_of, snapshot.source
            );
            return self.finish(snapshot, REJECTED, Some(reason)).await;
        }
        let mut differ = Differ::new(&snapshot.source);
        let mut after = String::new();
        loop {
            let page = hr_snapshot_row::Entity::find()
                .filter(hr_snapshot_row::Column::SnapshotId.eq(id.as_str()))
                .filter(hr_snapshot_row::Column::Line.is_not_null())
                .filter(hr_snapshot_row::Column::EmployeeId.gt(after.as_str()))
                .order_by_asc(hr_snapshot_row::Column::EmployeeId)
                .limit(ROW_CHUNK as u64)
                .all(self.db())
                .await?;
            let (Some(first), Some(last)) = (page.first(), page.last()) else {
                break;
            };
            let first = first.employee_id.clone();
            after = last.employee_id.clone();
            let records: Vec<SnapshotRecord> = page
                .iter()
                .filter_map(|row| {
                    let line = row.line.and_then(|l| u64::try_from(l).ok())?;
                    diff::record_from_json(line, row.record.as_ref()?)
                })
                .collect();
            differ.add_page(self.db(), &first, &after, &records).await?;
            if !self.renew_lease(owner, &id, false).await? {
                return Ok(());
            }
        }
        if differ.invalid > 0 {
            return self.reject_unnamed_joiners(snapshot, differ).await;
        }
        let active = differ.absent_leavers(self.db()).await?;
        let counts = Counts {
            rows: differ.counts.rows,
            ..differ.counts.clone()
        };
        let reason = diff::hold_reason(guard_of(self), counts.leavers, active);
        let changes = counts.joiners + counts.movers + counts.leavers;
        let next = if reason.is_some() {
            HELD
        } else if changes == 0 {
            APPLIED
        } else {
            APPLYING
        };
        let tx = self.write_tx().await?;
        // From scratch: a diff interrupted before this commit left nothing behind, but one
        // that is re-run after a failed commit must not find its own leaver rows.
        hr_snapshot_row::Entity::delete_many()
            .filter(hr_snapshot_row::Column::SnapshotId.eq(id.as_str()))
            .filter(hr_snapshot_row::Column::Line.is_null())
            .exec(&*tx)
            .await?;
        let mut by_kind: HashMap<ChangeKind, Vec<String>> = HashMap::new();
        let mut absent = Vec::new();
        for (employee_id, kind, present) in &differ.all {
            if *present {
                by_kind.entry(*kind).or_default().push(employee_id.clone());
            } else {
                absent.push(hr_snapshot_row::ActiveModel {
                    snapshot_id: Set(id.clone()),
                    employee_id: Set(employee_id.clone()),
                    line: Set(None),
                    record: Set(None),
                    kind: Set(Some(ChangeKind::Leaver.as_str().to_owned())),
                    applied: Set(false),
                });
            }
        }
        for (kind, ids) in by_kind {
            for chunk in ids.chunks(500) {
                hr_snapshot_row::Entity::update_many()
                    .col_expr(hr_snapshot_row::Column::Kind, Expr::value(kind.as_str()))
                    .filter(hr_snapshot_row::Column::SnapshotId.eq(id.as_str()))
                    .filter(hr_snapshot_row::Column::EmployeeId.is_in(chunk.iter().cloned()))
                    .exec(&*tx)
                    .await?;
            }
        }
        for chunk in absent.chunks(ROW_CHUNK) {
            hr_snapshot_row::Entity::insert_many(chunk.to_vec())
                .exec_without_returning(&*tx)
                .await?;
        }
        let mut active_model: hr_snapshot::ActiveModel = snapshot.clone().into();
        active_model.counts = Set(json!(counts));
        active_model.changes = Set(json!(differ.changes));
        active_model.state = Set(DIFFING.to_owned());
        active_model.updated_at = Set(Utc::now());
        let updated = active_model.update(&*tx).await?;
        tx.commit().await?;
        for (kind, n) in [
            ("joiner", counts.joiners),
            ("mover", counts.movers),
            ("leaver", counts.leavers),
            ("unchanged", counts.unchanged),
        ] {
            crate::telemetry::metrics()
                .hr_snapshot_changes_total
                .with_label_values(&[&updated.source, kind])
                .inc_by(n);
        }
        match next {
            APPLYING => {
                let tx = self.write_tx().await?;
                set_state(&*tx, updated, APPLYING, None, None).await?;
                tx.commit().await?;
                self.inner.snapshots_ready.notify_one();
                Ok(())
            }
            state => self.finish(updated, state, reason).await,
        }
    }

    /// Rejects a snapshot whose diff found joiners it cannot name, with each line.
    async fn reject_unnamed_joiners(
        &self,
        snapshot: hr_snapshot::Model,
        differ: Differ,
    ) -> ServiceResult<()> {
        let mut counts: Counts =
            serde_json::from_value(snapshot.counts.clone()).unwrap_or_default();
        counts.invalid = differ.invalid;
        let mut with_errors: hr_snapshot::ActiveModel = snapshot.into();
        with_errors.errors = Set(json!(differ.errors));
        with_errors.counts = Set(json!(counts));
        let tx = self.write_tx().await?;
        let snapshot = with_errors.update(&*tx).await?;
        tx.commit().await?;
        self.finish(
            snapshot,
            REJECTED,
            Some(unnamed_joiners_reason(differ.invalid)),
        )
        .await
    }

    /// Ends a snapshot in `state`; an applied or rejected one no longer needs its rows.
    async fn finish(
        &self,
        snapshot: hr_snapshot::Model,
        state: &str,
        reason: Option<String>,
    ) -> ServiceResult<()> {
        let tx = self.write_tx().await?;
        if state != HELD {
            hr_snapshot_row::Entity::delete_many()
                .filter(hr_snapshot_row::Column::SnapshotId.eq(snapshot.id.as_str()))
                .exec(&*tx)
                .await?;
        }
        let updated = set_state(&*tx, snapshot, state, reason, None).await?;
        tx.commit().await?;
        count_result(&updated.source, state);
        Ok(())
    }

    /// Applies the recorded changes in batches through ingest, marking each batch applied
    /// after its events committed. A batch re-sent after a crash is answered `duplicate`.
    async fn apply_snapshot(
        &self,
        owner: &str,
        snapshot: hr_snapshot::Model,
        shutdown: &CancellationToken,
    ) -> ServiceResult<()> {
        let id = snapshot.id.clone();
        let principal = Principal {
            key_id: snapshot.api_key_id.clone().unwrap_or_default(),
            scopes: vec![Scope::EventsWrite],
        };
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let batch = hr_snapshot_row::Entity::find()
                .filter(hr_snapshot_row::Column::SnapshotId.eq(id.as_str()))
                .filter(hr_snapshot_row::Column::Kind.is_not_null())
                .filter(hr_snapshot_row::Column::Applied.eq(false))
                .order_by_asc(hr_snapshot_row::Column::EmployeeId)
                .limit(APPLY_BATCH)
                .all(self.db())
                .await?;
            if batch.is_empty() {
                break;
            }
            let people =
                people_by_employee_id(self.db(), batch.iter().map(|r| &r.employee_id)).await?;
            let events: Vec<HrEventInput> = batch
                .iter()
                .filter_map(|row| change_event(&snapshot, row, people.get(&row.employee_id)))
                .collect();
            if !events.is_empty() {
                self.ingest(&principal, events).await?;
            }
            let tx = self.write_tx().await?;
            let ids: Vec<String> = batch.iter().map(|r| r.employee_id.clone()).collect();
            hr_snapshot_row::Entity::update_many()
                .col_expr(hr_snapshot_row::Column::Applied, Expr::value(true))
                .filter(hr_snapshot_row::Column::SnapshotId.eq(id.as_str()))
                .filter(hr_snapshot_row::Column::EmployeeId.is_in(ids))
                .exec(&*tx)
                .await?;
            let applied = i64::try_from(batch.len()).unwrap_or(i64::MAX);
            hr_snapshot::Entity::update_many()
                .col_expr(
                    hr_snapshot::Column::Applied,
                    Expr::col(hr_snapshot::Column::Applied).add(applied),
                )
                .col_expr(hr_snapshot::Column::UpdatedAt, Expr::value(Utc::now()))
                .filter(hr_snapshot::Column::Id.eq(id.as_str()))
                .exec(&*tx)
                .await?;
            tx.commit().await?;
            if !self.renew_lease(owner, &id, false).await? {
                return Ok(());
            }
        }
        let Some(current) = hr_snapshot::Entity::find_by_id(&id).one(self.db()).await? else {
            return Ok(());
        };
        self.finish(current, APPLIED, None).await
    }
}

fn unnamed_joiners_reason(invalid: u64) -> String {
    format!(
        "{invalid} joiners without `user_name` or `email` (new to roster, or re-hired with neither stored); the snapshot is rejected whole"
    )
}

/// The HR event of one recorded change; `None` for a row that cannot be read back.
fn change_event(
    snapshot: &hr_snapshot::Model,
    row: &hr_snapshot_row::Model,
    person: Option<&identity::Model>,
) -> Option<HrEventInput> {
    let kind = ChangeKind::parse(row.kind.as_deref()?)?;
    let (event_type, mut employee) = match (kind, &row.record) {
        (ChangeKind::Leaver, _) | (_, None) => (
            EventType::Leaver,
            EmployeeRecord {
                employee_id: row.employee_id.clone(),
                ..Default::default()
            },
        ),
        (kind, Some(record)) => {
            let line = row.line.and_then(|l| u64::try_from(l).ok()).unwrap_or(0);
            let record = diff::record_from_json(line, record)?;
            let t = if kind == ChangeKind::Joiner {
                EventType::Joiner
            } else {
                EventType::Mover
            };
            (t, record.employee)
        }
    };
    // A re-hire from a file without those columns is named as roster knew the person (the
    // diff rejected a joiner nobody can name).
    if event_type == EventType::Joiner
        && !employee.user_name.is_set()
        && !employee.email.is_set()
        && let Some(person) = person
    {
        for (field, stored) in [
            (&mut employee.user_name, &person.user_name),
            (&mut employee.email, &person.email),
        ] {
            if matches!(field, ingest::FieldUpdate::Keep)
                && let Some(value) = stored
            {
                *field = ingest::FieldUpdate::Set(value.clone());
            }
        }
    }
    // Attribute keys the file carries are merged onto the person's, so others are kept.
    if let ingest::FieldUpdate::Set(carried) = &employee.attributes {
        let current = person.map_or_else(|| json!({}), |p| p.attributes.clone());
        employee.attributes = ingest::FieldUpdate::Set(diff::merged_attributes(&current, carried));
    }
    let payload = json!({
        "hr_snapshot": snapshot.id,
        "source": snapshot.source,
        "type": event_type.as_str(),
        "employee": row.record.clone().unwrap_or_else(|| json!({"employee_id": row.employee_id})),
    });
    Some(HrEventInput {
        event_id: change_event_id(&snapshot.id, &row.employee_id),
        event_type,
        occurred_at: snapshot.as_of,
        employee,
        payload,
        source: Some(snapshot.source.clone()),
    })
}

impl Roster {
    /// How many people each source has active (for tests and the guard's figures).
    pub async fn active_people_of_source(&self, source: &str) -> ServiceResult<u64> {
        Ok(identity::Entity::find()
            .filter(identity::Column::Source.eq(source))
            .filter(identity::Column::Status.eq("active"))
            .count(self.db())
            .await?)
    }
}
