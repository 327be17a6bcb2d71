//! Running one job: level-triggered (DESIGN §5). The job names an (app, resource); what to send
//! is decided now, from the identity as it is and the link's last-applied snapshot, so
//! coalesced, retried and replayed jobs converge instead of replaying stale payloads.
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::sync::Arc;

use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect};
use serde_json::{Value, json};

use super::inputs::UserInputs;
pub use super::lookups::LookAhead;
use super::lookups::LookupBatcher;
use super::staged::{JobWrites, LinkRow, LinkWrite};
use crate::mapping::{self, CompiledMappings, IdentityView};
use crate::scim::{CallRecord, PatchRequest, ScimClient, ScimError, filter, id_of};
use crate::settings::{AppSettings, DeprovisionAction};
use crate::store::entity::{app, group, group_member, identity, link};
use crate::store::queue::{GROUP_MEMBERS_UNSURE, JobRequest, Lane, ResourceKind};
use crate::store::shapes;

/// What a job did; the label is the `operation` of metrics and the provisioning log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Adopt,
    Deactivate,
    Delete,
    GroupUpdate,
    /// Nothing to send: the target already matches.
    Noop,
}

impl Operation {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Update => "update",
            Operation::Adopt => "adopt",
            Operation::Deactivate => "deactivate",
            Operation::Delete => "delete",
            Operation::GroupUpdate => "group_update",
            Operation::Noop => "noop",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{operation}: {source}")]
    Scim {
        operation: &'static str,
        source: Box<ScimError>,
    },
    /// Roster's own data cannot be delivered as it is (e.g. two target accounts match).
    #[error("{0}")]
    Unprocessable(String),
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
}

impl JobError {
    fn scim(operation: Operation, source: ScimError) -> Self {
        JobError::Scim {
            operation: operation.as_str(),
            source: Box::new(source),
        }
    }
}

tokio::task_local! {
    /// The calls the current job made, with the operation each served; read by the engine to
    /// write the provisioning log.
    pub static JOB_CALLS: RefCell<Vec<(&'static str, CallRecord)>>;
    static CURRENT_OPERATION: RefCell<&'static str>;
    /// The HR event the current job serves, if any.
    static JOB_EVENT: Option<String>;
}

/// Runs `fut` with a fresh call log, for a job serving `hr_event_id`; returns its output and
/// the calls it made.
pub async fn with_call_log<F: Future>(
    hr_event_id: Option<&str>,
    fut: F,
) -> (F::Output, Vec<(&'static str, CallRecord)>) {
    in_job_scope(hr_event_id.map(str::to_owned), DEFAULT_OPERATION, fut).await
}

/// The operation a call is tagged with before the job says what it is doing.
const DEFAULT_OPERATION: &str = "lookup";

/// Runs `fut` in a job's task-local scope: its HR event, a fresh call log and `operation` as
/// the current one; returns its output and the calls it made.
async fn in_job_scope<F: Future>(
    hr_event_id: Option<String>,
    operation: &'static str,
    fut: F,
) -> (F::Output, Vec<(&'static str, CallRecord)>) {
    JOB_EVENT
        .scope(
            hr_event_id,
            JOB_CALLS.scope(RefCell::new(Vec::new()), async {
                let out = CURRENT_OPERATION.scope(RefCell::new(operation), fut).await;
                let calls = JOB_CALLS.with(|c| c.take());
                (out, calls)
            }),
        )
        .await
}

/// The operation the current job is doing (the default outside a job).
fn current_operation() -> &'static str {
    CURRENT_OPERATION
        .try_with(|o| *o.borrow())
        .unwrap_or(DEFAULT_OPERATION)
}

/// The job a call is made for, captured in the job's task so that another task can make the
/// call on its behalf (a look-up shared by several jobs) with the same tags.
#[derive(Debug, Clone)]
pub struct JobCallContext {
    hr_event_id: Option<String>,
    operation: &'static str,
}

/// The current job's call context (empty outside a job).
#[must_use]
pub fn job_call_context() -> JobCallContext {
    JobCallContext {
        hr_event_id: JOB_EVENT.try_with(Clone::clone).ok().flatten(),
        operation: current_operation(),
    }
}

/// Runs `fut` as a call made for the job of `context`: its calls are tagged with that job's
/// HR event and operation, and returned.
pub async fn with_job_call_context<F: Future>(
    context: &JobCallContext,
    fut: F,
) -> (F::Output, Vec<CallRecord>) {
    let (out, calls) = in_job_scope(context.hr_event_id.clone(), context.operation, fut).await;
    (out, calls.into_iter().map(|(_, call)| call).collect())
}

/// What a call made inside a job served: its trace span and log row carry these.
pub struct CallTags {
    pub operation: &'static str,
    pub hr_event_id: Option<String>,
}

/// Records a call made by the current job (the client's observer calls this); `None` outside
/// a job (a reconciliation's reads, a connection test).
pub fn record_call(record: &CallRecord) -> Option<CallTags> {
    let operation = current_operation();
    JOB_CALLS
        .try_with(|c| c.borrow_mut().push((operation, record.clone())))
        .ok()?;
    Some(CallTags {
        operation,
        hr_event_id: JOB_EVENT.try_with(Clone::clone).ok().flatten(),
    })
}

/// Records calls made on the current job's behalf by another task (a look-up shared by
/// several jobs), as the current operation's.
pub fn record_shared_calls(calls: Vec<CallRecord>) {
    let operation = current_operation();
    let _ = JOB_CALLS.try_with(|c| {
        c.borrow_mut()
            .extend(calls.into_iter().map(|call| (operation, call)));
    });
}

/// Puts `reason` on the log row of the current job's latest call: a job that stops because of
/// what a read showed says why next to that read in the provisioning log.
fn note_on_last_call(reason: &str) {
    let _ = JOB_CALLS.try_with(|calls| {
        if let Some((_, call)) = calls.borrow_mut().last_mut() {
            call.error = Some(reason.to_owned());
        }
    });
}

/// The resource (identity id, or group name) other than `resource_id` whose live link in the
/// app holds the target account `target_id`; live is every state but `deleted`.
pub async fn linked_to_another(
    conn: &impl ConnectionTrait,
    app_id: &str,
    kind: ResourceKind,
    target_id: &str,
    resource_id: &str,
) -> Result<Option<String>, sea_orm::DbErr> {
    Ok(link::Entity::find()
        .filter(link::Column::AppId.eq(app_id))
        .filter(link::Column::ResourceKind.eq(kind.as_str()))
        .filter(link::Column::TargetId.eq(target_id))
        .filter(link::Column::State.ne("deleted"))
        .filter(link::Column::ResourceId.ne(resource_id))
        .one(conn)
        .await?
        .map(|l| l.resource_id))
}

/// The target id of a found account that `resource_id` may adopt. An account linked to
/// another identity (or roster group) is never adopted: a new hire given a leaver's address
/// would otherwise take over the leaver's account, and the leaver's scheduled delete would
/// later remove it. The conflict is the job's error (it is dead-lettered with this reason)
/// and is written on the look-up's provisioning-log row.
async fn adoptable(
    ctx: &AppContext<'_>,
    kind: ResourceKind,
    resource_id: &str,
    account: &Value,
) -> Result<String, JobError> {
    let noun = match kind {
        ResourceKind::Group => "group",
        _ => "account",
    };
    let Some(target_id) = id_of(account).map(str::to_owned) else {
        return Err(JobError::Unprocessable(format!(
            "the matching target {noun} has no id"
        )));
    };
    let reason =
        match linked_to_another(ctx.conn, &ctx.app.id, kind, &target_id, resource_id).await? {
            Some(other) => Some(belongs_to_another(kind, &target_id, &other)),
            None => match unsure_create_of_another(ctx, kind, resource_id, account).await? {
                Some(other) => Some(format!(
                    "the target account {target_id} may be the create sent for identity \
                     {other}, whose answer was lost; that identity's next delivery links it"
                )),
                // Not linked yet, but created or adopted by another job a moment ago.
                None => ctx
                    .lookups
                    .claim(kind.as_str(), &target_id, resource_id)
                    .err()
                    .map(|other| belongs_to_another(kind, &target_id, &other)),
            },
        };
    if let Some(reason) = reason {
        note_on_last_call(&reason);
        return Err(JobError::Unprocessable(reason));
    }
    Ok(target_id)
}

/// Unsure creates of other people of the app checked before an adoption: rare (a create's
/// answer lost), at most the jobs in flight when an instance died.
const UNSURE_CREATES_CHECKED: u64 = 1_000;

/// Another identity of the app whose create was sent without an answer (its link `pending`,
/// with no account) and whose matching value `account` holds: that create may have made
/// `account`, which is then that identity's to link, not `resource_id`'s to adopt. More such
/// creates than [`UNSURE_CREATES_CHECKED`] are taken as one that matches (never guess).
async fn unsure_create_of_another(
    ctx: &AppContext<'_>,
    kind: ResourceKind,
    resource_id: &str,
    account: &Value,
) -> Result<Option<String>, sea_orm::DbErr> {
    use sea_orm::QuerySelect as _;
    if kind != ResourceKind::User {
        return Ok(None);
    }
    let attribute = ctx.settings.matching.target_attribute.as_str();
    // Literals, not parameters: SQLite uses the partial index `idx_link_unsure` only then.
    let unsure: Vec<String> = link::Entity::find()
        .select_only()
        .column(link::Column::ResourceId)
        .filter(link::Column::AppId.eq(ctx.app.id.as_str()))
        .filter(sea_orm::sea_query::Expr::cust(
            "resource_kind = 'user' AND state = 'pending' AND target_id IS NULL",
        ))
        .filter(link::Column::ResourceId.ne(resource_id))
        .limit(UNSURE_CREATES_CHECKED + 1)
        .into_tuple()
        .all(ctx.conn)
        .await?;
    if unsure.len() as u64 > UNSURE_CREATES_CHECKED {
        return Ok(unsure.into_iter().next());
    }
    if unsure.is_empty() {
        return Ok(None);
    }
    let people = identity::Entity::find()
        .filter(identity::Column::Id.is_in(shapes::padded(unsure)))
        .all(ctx.conn)
        .await?;
    let employee_ids: Vec<String> = people.iter().map(|p| p.employee_id.clone()).collect();
    let mut groups = super::people::group_names_of(ctx.conn, &employee_ids).await?;
    Ok(people
        .iter()
        .find(|person| {
            let view = super::people::view_of(
                person,
                groups.remove(&person.employee_id).unwrap_or_default(),
            );
            mapping::render_matching_value(ctx.compiled, &view, attribute)
                .is_some_and(|value| filter::holds_value(account, attribute, &value))
        })
        .map(|person| person.id.clone()))
}

/// Why a job may not take the target account (or group) `target_id`: it is linked to `other`,
/// an identity (or roster group) of the same app. The error of the job, which is dead.
pub(super) fn belongs_to_another(kind: ResourceKind, target_id: &str, other: &str) -> String {
    let (noun, owner) = match kind {
        ResourceKind::Group => ("group", format!("roster group `{other}`")),
        _ => ("account", format!("identity {other}")),
    };
    format!(
        "conflict: the matching target {noun} {target_id} is linked to {owner}; \
         roster never adopts a {noun} that belongs to someone else (resolve it by hand)"
    )
}

fn doing(operation: Operation) {
    let _ = CURRENT_OPERATION.try_with(|o| *o.borrow_mut() = operation.as_str());
}

/// Everything a job needs about its app.
pub struct AppContext<'a> {
    /// For reads only (whose link holds an account before adopting it): the executor never
    /// writes to the database, its writes are staged.
    pub conn: &'a sea_orm::DatabaseConnection,
    pub app: &'a app::Model,
    pub settings: &'a AppSettings,
    pub compiled: &'a CompiledMappings,
    pub client: &'a ScimClient,
    /// Matching look-ups merged with other jobs' of this app.
    pub lookups: &'a Arc<LookupBatcher>,
    /// The job's matching look-up, started when it was claimed ([`look_ahead`]); taken by the
    /// job's first look-up.
    pub ahead: std::sync::Mutex<Option<LookAhead>>,
}

/// Starts, ahead of time, the matching look-up a user job will make first — if it will make
/// one: a person in the app's scope without a live link in it is matched before anything is
/// created. Called when the job was claimed and its inputs read, so that the answer is there
/// (or on its way) when the job gets its slot, instead of the job waiting for it with its slot;
/// the job's calls are tagged with `hr_event_id` and made in `span`. `scarce`: the app is
/// short of tokens, so the look-up waits until the job needs it, to leave with others
/// ([`LookupBatcher::look_ahead`]).
pub fn look_ahead(
    ctx: &AppContext<'_>,
    inputs: &UserInputs,
    hr_event_id: Option<&str>,
    span: tracing::Span,
    scarce: bool,
) -> Option<LookAhead> {
    let person = inputs.person.as_ref()?;
    if live_target(inputs.link.as_ref()).is_some() || !ctx.settings.scope.admits(person) {
        return None;
    }
    let attribute = ctx.settings.matching.target_attribute.as_str();
    if ctx.client.quirks().creates_before_looking(attribute) {
        return None;
    }
    let value = mapping::render_matching_value(ctx.compiled, person, attribute)?;
    ctx.lookups.look_ahead(
        ctx.client,
        attribute,
        &value,
        span,
        JobCallContext {
            hr_event_id: hr_event_id.map(str::to_owned),
            operation: Operation::Adopt.as_str(),
        },
        scarce,
    )
}

/// The link says a create was sent and its outcome is unknown ([`LinkState::unsure`]).
fn create_unsure(link: &link::Model) -> bool {
    link.target_id.is_none() && link.state == "pending"
}

/// The target account a user link holds and its last-applied snapshot: `None` for no link,
/// a deleted one, or a create whose outcome is unknown (`pending`): the person is then matched
/// before being created.
fn live_target(link: Option<&link::Model>) -> Option<(&str, &Value)> {
    link.filter(|l| l.state != "deleted" && l.state != "pending")
        .and_then(|l| {
            l.target_id
                .as_deref()
                .map(|t| (t, l.snapshot.as_ref().unwrap_or(&Value::Null)))
        })
}

/// The stored link of one resource in one app (shared with reconciliation).
pub async fn find_link(
    conn: &impl ConnectionTrait,
    app_id: &str,
    kind: ResourceKind,
    resource_id: &str,
) -> Result<Option<link::Model>, sea_orm::DbErr> {
    link::Entity::find()
        .filter(link::Column::AppId.eq(app_id))
        .filter(link::Column::ResourceKind.eq(kind.as_str()))
        .filter(link::Column::ResourceId.eq(resource_id))
        .one(conn)
        .await
}

/// The link as it should be stored after a job.
struct LinkState<'a> {
    target_id: Option<&'a str>,
    snapshot: Option<&'a Value>,
    state: &'a str,
    delete_after: Option<i64>,
}

impl<'a> LinkState<'a> {
    fn linked(target_id: &'a str, snapshot: &'a Value) -> Self {
        Self {
            target_id: Some(target_id),
            snapshot: Some(snapshot),
            state: "linked",
            delete_after: None,
        }
    }

    /// A create whose outcome roster does not know (no answer, 5xx, a crash) may have made an
    /// account: the next delivery looks for it before it creates, or deprovisions.
    fn unsure() -> Self {
        Self {
            target_id: None,
            snapshot: None,
            state: "pending",
            delete_after: None,
        }
    }

    /// The account is gone from the target (deleted by roster, or found missing).
    fn deleted() -> Self {
        Self {
            target_id: None,
            snapshot: None,
            state: "deleted",
            delete_after: None,
        }
    }
}

impl LinkState<'_> {
    fn row(&self) -> LinkRow {
        LinkRow {
            target_id: self.target_id.map(str::to_owned),
            snapshot: self.snapshot.cloned(),
            snapshot_hash: self.snapshot.map(mapping::snapshot_hash),
            state: self.state.to_owned(),
            delete_after: self.delete_after,
            at: chrono::Utc::now(),
        }
    }
}

/// Stages a link as it should be stored after the job (the finisher writes it, whatever the
/// job's result); returns the write as staged.
fn stage_link<'w>(
    writes: &'w mut JobWrites,
    app_id: &str,
    kind: ResourceKind,
    resource_id: &str,
    new: LinkState<'_>,
) -> &'w LinkWrite {
    writes.link(LinkWrite {
        app_id: app_id.to_owned(),
        kind,
        resource_id: resource_id.to_owned(),
        row: Some(new.row()),
    })
}

/// Stages the link of a person's account in the job's app.
fn stage_user_link<'w>(
    writes: &'w mut JobWrites,
    ctx: &AppContext<'_>,
    identity_id: &str,
    new: LinkState<'_>,
) -> &'w LinkWrite {
    stage_link(writes, &ctx.app.id, ResourceKind::User, identity_id, new)
}

/// A SCIM PATCH for the changes, against `current` (the target's copy as read): a change to
/// one element of a multi-valued attribute (`roles[primary eq true].value`) replaces the whole
/// attribute, built from `current` so that the elements roster does not render (a role
/// assigned in the app, a home email) are kept (`mapping::keep_foreign_elements`).
fn patch_for(
    compiled: &CompiledMappings,
    changes: &[mapping::Change],
    desired: &Value,
    current: &Value,
) -> PatchRequest {
    let mut patch = PatchRequest::new();
    for change in mapping::keep_foreign_elements(compiled, changes, desired, current) {
        patch = match change.value {
            Some(v) => patch.replace(&change.path, v),
            None => patch.remove(&change.path),
        };
    }
    patch
}

/// Whether a change is to an element of a multi-valued attribute: sending it needs the
/// target's current copy of the attribute.
fn needs_current(compiled: &CompiledMappings, changes: &[mapping::Change]) -> bool {
    changes.iter().any(|change| {
        compiled
            .compared_paths()
            .iter()
            .any(|p| p.as_str() == change.path && p.multi_valued_base().is_some())
    })
}

/// PATCHes the linked account with `changes`. When one touches a multi-valued attribute the
/// account is read first and the PATCH built from that copy, sent with `If-Match` where the
/// target supports ETags and built again from a new read on 412 (`patch_after_read`).
async fn send_changes(
    ctx: &AppContext<'_>,
    target_id: &str,
    changes: &[mapping::Change],
    desired: &Value,
) -> Result<(), ScimError> {
    let users = ctx.client.users();
    if needs_current(ctx.compiled, changes) {
        users
            .patch_after_read(target_id, |current| {
                patch_for(ctx.compiled, changes, desired, current)
            })
            .await?;
    } else {
        users
            .patch(
                target_id,
                &patch_for(ctx.compiled, changes, desired, &Value::Null),
            )
            .await?;
    }
    Ok(())
}

/// The app's matching attribute and the person's rendered value of it.
fn matching_value<'c>(
    ctx: &AppContext<'c>,
    person: &IdentityView,
) -> Result<(&'c str, String), JobError> {
    let attribute = ctx.settings.matching.target_attribute.as_str();
    match mapping::render_matching_value(ctx.compiled, person, attribute) {
        Some(value) => Ok((attribute, value)),
        None => Err(JobError::Unprocessable(format!(
            "the matching attribute `{attribute}` renders empty for this person"
        ))),
    }
}

/// Where a job's matching look-up may be answered from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asking {
    /// The look-up started at the job's claim, a kept listing, or one merged with others'.
    Shared,
    /// The target, now, by this job alone: a create of this person may have landed after any
    /// older answer was given (an unsure create, of another instance or before a crash), or
    /// the target has just said the value is taken (409).
    Afresh,
}

/// Matching before create: the target account whose matching attribute equals the rendered
/// value. `None` when there is none; an error when several match (never guess whose it is).
async fn find_match(
    ctx: &AppContext<'_>,
    person: &IdentityView,
    asking: Asking,
) -> Result<Option<Value>, JobError> {
    let (attribute, value) = matching_value(ctx, person)?;
    doing(Operation::Adopt);
    // Only the job's first look-up may use the one started at its claim.
    let ahead = ctx.ahead.lock().ok().and_then(|mut ahead| ahead.take());
    if asking == Asking::Afresh {
        drop(ahead);
        let found = ctx
            .client
            .users()
            .find_by(attribute, &value)
            .await
            .map_err(|e| JobError::scim(Operation::Adopt, e))?;
        return only_match(found, attribute);
    }
    let answer = ctx
        .lookups
        .find_or_take(ctx.client, attribute, &value, ahead)
        .await
        .map_err(|e| JobError::scim(Operation::Adopt, e))?;
    let mut found = answer.accounts;
    // An account found in an older answer (one sent ahead, or a kept listing) may have become
    // someone else's since (renamed by another writer): roster asks again before it acts on
    // it. Absences are not asked again: the create that follows meets a taken userName's 409.
    if !found.is_empty() && answer.asked_at.elapsed() > ANSWER_ACTED_ON_WITHIN {
        found = ctx
            .client
            .users()
            .find_by(attribute, &value)
            .await
            .map_err(|e| JobError::scim(Operation::Adopt, e))?;
    }
    only_match(found, attribute)
}

/// The one account a look-up found, if any; several are an error (never guess whose it is).
fn only_match(mut found: Vec<Value>, attribute: &str) -> Result<Option<Value>, JobError> {
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        n => Err(JobError::Unprocessable(format!(
            "{n} target accounts have {attribute} = the rendered value; link one by hand"
        ))),
    }
}

/// How old an answer that found an account may be for roster to adopt that account on it: a
/// look-up asked in the job's matching turn is a round trip old; one sent ahead, or a kept
/// listing, up to a minute.
const ANSWER_ACTED_ON_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Adopts `account`: links it and brings it in line with `desired`.
async fn adopt(
    ctx: &AppContext<'_>,
    person: &IdentityView,
    account: &Value,
    desired: &Value,
    writes: &mut JobWrites,
) -> Result<Operation, JobError> {
    // Reconciliation lists such an account as unmanaged, never touched: e.g. a userName that
    // is no address, on an account whose primary email is at another company's domain.
    if !crate::reconcile::account_is_managed(&ctx.settings.scope.spec(), account) {
        let reason = format!(
            "the target account with this person's {} is outside the app's managed domains \
             (unmanaged accounts are never touched); link one by hand",
            ctx.settings.matching.target_attribute
        );
        note_on_last_call(&reason);
        return Err(JobError::Unprocessable(reason));
    }
    let target_id = adoptable(ctx, ResourceKind::User, &person.id, account).await?;
    let changes = mapping::patch_changes(&mapping::diff(ctx.compiled, desired, account));
    if !changes.is_empty() {
        doing(Operation::Update);
        ctx.client
            .users()
            .patch(
                &target_id,
                &patch_for(ctx.compiled, &changes, desired, account),
            )
            .await
            .map_err(|e| JobError::scim(Operation::Update, e))?;
    }
    stage_user_link(
        writes,
        ctx,
        &person.id,
        LinkState::linked(&target_id, desired),
    );
    Ok(Operation::Adopt)
}

/// `asking`: [`Asking::Afresh`] when the person's link says an earlier create's outcome is
/// unknown.
async fn create_or_adopt(
    ctx: &AppContext<'_>,
    person: &IdentityView,
    desired: &Value,
    writes: &mut JobWrites,
    asking: Asking,
) -> Result<Operation, JobError> {
    let (attribute, value) = matching_value(ctx, person)?;
    // From the look-up to the create's answer, no other job of this app matches this value.
    let _turn = ctx.lookups.matching_turn(attribute, &value).await;
    // Where the target rejects a taken userName with 409, that answer is the look-up.
    if !ctx.client.quirks().creates_before_looking(attribute)
        && let Some(account) = find_match(ctx, person, asking).await?
    {
        return adopt(ctx, person, &account, desired, writes).await;
    }
    if let Some(path) = ctx.client.quirks().missing_on_create(desired) {
        return Err(JobError::Unprocessable(format!(
            "the target requires `{path}` on create, and this person's mappings render none; \
             nothing was sent"
        )));
    }
    // Another job of this app with the same value that looked ahead before now asks again.
    ctx.lookups.creating(attribute, &value);
    doing(Operation::Create);
    match ctx.client.users().create(desired).await {
        Ok(created) => {
            let Some(target_id) = id_of(&created).map(str::to_owned) else {
                return Err(JobError::Unprocessable(
                    "the target answered a create without an id".into(),
                ));
            };
            // Ours: another job matching it before this link is committed must not adopt it.
            let _ = ctx
                .lookups
                .claim(ResourceKind::User.as_str(), &target_id, &person.id);
            stage_user_link(
                writes,
                ctx,
                &person.id,
                LinkState::linked(&target_id, desired),
            );
            Ok(Operation::Create)
        }
        // The account exists after all: an earlier POST whose answer was lost, or a race.
        Err(e) if e.is_conflict() => match find_match(ctx, person, Asking::Afresh).await? {
            Some(account) => adopt(ctx, person, &account, desired, writes).await,
            None => Err(JobError::scim(Operation::Create, e)),
        },
        Err(e) => {
            if outcome_unknown(&e) {
                stage_user_link(writes, ctx, &person.id, LinkState::unsure());
            }
            Err(JobError::scim(Operation::Create, e))
        }
    }
}

/// Makes the app's copy of one person match roster. The link writes are staged in `writes`,
/// also when the job fails: a create that succeeded before a later error keeps its link.
pub async fn deliver_user(
    ctx: &AppContext<'_>,
    inputs: &UserInputs,
    identity_id: &str,
    now_ms: i64,
    writes: &mut JobWrites,
) -> Result<Operation, JobError> {
    let Some(view) = &inputs.person else {
        return Ok(Operation::Noop);
    };
    let existing = inputs.link.as_ref();
    if ctx.settings.scope.admits(view) {
        let desired = mapping::render_user(ctx.compiled, view);
        let Some((target_id, snapshot)) = live_target(existing) else {
            let asking = if existing.is_some_and(create_unsure) {
                Asking::Afresh
            } else {
                Asking::Shared
            };
            return create_or_adopt(ctx, view, &desired, writes, asking).await;
        };
        let changes = mapping::patch_changes(&mapping::diff(ctx.compiled, &desired, snapshot));
        let operation = if changes.is_empty() {
            Operation::Noop
        } else {
            // A new matching value (a mover's new address): from here to the rename's answer
            // no other job of this app matches that value, and answers given before it are
            // not used (the next job with that value finds this account).
            let renamed_to = matching_value(ctx, view)
                .ok()
                .filter(|(attribute, value)| !filter::holds_value(snapshot, attribute, value));
            let turn = match &renamed_to {
                Some((attribute, value)) => {
                    let turn = ctx.lookups.matching_turn(attribute, value).await;
                    ctx.lookups.renaming(attribute, value);
                    Some(turn)
                }
                None => None,
            };
            doing(Operation::Update);
            let sent = send_changes(ctx, target_id, &changes, &desired).await;
            // Before a create below, which takes the turn of its value.
            drop(turn);
            match sent {
                Ok(()) => Operation::Update,
                // Deleted in the target by hand: create it again.
                Err(e) if e.is_not_found() => {
                    return create_or_adopt(ctx, view, &desired, writes, Asking::Shared).await;
                }
                Err(e) => {
                    if let Some(link) = existing {
                        forget_snapshot_if_unsure(writes, link, &e);
                    }
                    return Err(JobError::scim(Operation::Update, e));
                }
            }
        };
        let rehired = existing.is_some_and(|l| l.state != "linked" || l.delete_after.is_some());
        if operation != Operation::Noop || rehired {
            stage_user_link(
                writes,
                ctx,
                identity_id,
                LinkState::linked(target_id, &desired),
            );
        }
        return Ok(operation);
    }

    // Out of scope: only accounts roster created or adopted are ever deprovisioned.
    // Owned: an adoption below changes it before the deprovision.
    let Some(mut link) = existing.cloned() else {
        return Ok(Operation::Noop);
    };
    if create_unsure(&link) {
        // Roster's own create may have landed unanswered: the account, if it is there, is
        // roster's, and leaves with the person.
        let found = find_match(ctx, view, Asking::Afresh)
            .await?
            .filter(|account| {
                account["userName"]
                    .as_str()
                    .is_some_and(|u| mapping::domain_managed(&ctx.settings.scope.spec(), u))
            });
        let found = match found {
            Some(account) => {
                match adoptable(ctx, ResourceKind::User, identity_id, &account).await {
                    Ok(id) => Some((account, id)),
                    Err(JobError::Db(e)) => return Err(JobError::Db(e)),
                    // Someone else's account (or one without an id) is not roster's create.
                    Err(_) => None,
                }
            }
            None => None,
        };
        let Some((account, target_id)) = found else {
            stage_user_link(writes, ctx, identity_id, LinkState::deleted());
            return Ok(Operation::Noop);
        };
        // Go on with the link as it will be stored: adopted.
        let adopted = stage_user_link(
            writes,
            ctx,
            identity_id,
            LinkState::linked(&target_id, &account),
        );
        if let Some(row) = &adopted.row {
            row.apply_to(&mut link);
        }
    }
    let Some(target_id) = link.target_id.clone() else {
        return Ok(Operation::Noop);
    };
    let delete_due = link.delete_after.is_some_and(|t| t <= now_ms);
    let action = ctx.settings.deprovision.action;
    // Two deprovisions rest on a decision made earlier, and read the account again first: a
    // link without the account as roster last wrote it (made by reconciliation for an orphan
    // it found, perhaps hours before the run was approved, or left by a write whose outcome is
    // unknown), and the DELETE of an account roster deactivated earlier (a delete scheduled
    // `delete_after_days` out: the account may have been renamed, handed on or removed by
    // hand meanwhile). It is deprovisioned only while it is there, the same resource, in a
    // managed domain and still this person's.
    let deleting_deactivated =
        link.state == "deactivated" && (action == DeprovisionAction::Delete || delete_due);
    if (link.snapshot.is_none() || deleting_deactivated) && link.state != "deleted" {
        let operation = if deleting_deactivated || action == DeprovisionAction::Delete {
            Operation::Delete
        } else {
            Operation::Deactivate
        };
        match read_again_before_deprovision(
            ctx,
            view,
            &target_id,
            operation,
            link.snapshot.as_ref(),
        )
        .await?
        {
            AccountNow::Theirs => {}
            AccountNow::Gone => {
                stage_user_link(writes, ctx, identity_id, LinkState::deleted());
                return Ok(Operation::Noop);
            }
            AccountNow::NotTheirs(reason) => {
                note_on_last_call(&reason);
                return Err(JobError::Unprocessable(reason));
            }
        }
    }
    match (link.state.as_str(), action) {
        ("deleted", _) => Ok(Operation::Noop),
        ("linked" | "error", DeprovisionAction::Delete) | ("deactivated", _)
            if action == DeprovisionAction::Delete || delete_due =>
        {
            doing(Operation::Delete);
            ctx.client
                .users()
                .delete(&target_id)
                .await
                .map_err(|e| JobError::scim(Operation::Delete, e))?;
            stage_user_link(writes, ctx, identity_id, LinkState::deleted());
            Ok(Operation::Delete)
        }
        // Without a snapshot the last write's outcome is unknown: deactivate again.
        ("deactivated", _) if link.snapshot.is_some() => Ok(Operation::Noop),
        _ => {
            doing(Operation::Deactivate);
            match ctx
                .client
                .users()
                .patch(
                    &target_id,
                    &PatchRequest::new().replace("active", json!(false)),
                )
                .await
            {
                Ok(_) => {}
                // Already gone from the target: nothing left to close.
                Err(e) if e.is_not_found() => {
                    stage_user_link(writes, ctx, identity_id, LinkState::deleted());
                    return Ok(Operation::Deactivate);
                }
                Err(e) => {
                    forget_snapshot_if_unsure(writes, &link, &e);
                    return Err(JobError::scim(Operation::Deactivate, e));
                }
            }
            let mut snapshot = link.snapshot.clone().unwrap_or_else(|| json!({}));
            if let Some(obj) = snapshot.as_object_mut() {
                obj.insert("active".into(), json!(false));
            }
            // Deactivating again (the last write's outcome was unknown, e.g. after a reclaim)
            // keeps the date the first deactivation set: the delete neither moves nor is lost.
            let delete_after = link
                .delete_after
                .filter(|_| link.state == "deactivated")
                .or_else(|| {
                    ctx.settings
                        .deprovision
                        .delete_after_days
                        .map(|days| now_ms + i64::from(days) * 86_400_000)
                });
            stage_user_link(
                writes,
                ctx,
                identity_id,
                LinkState {
                    target_id: Some(&target_id),
                    snapshot: Some(&snapshot),
                    state: "deactivated",
                    delete_after,
                },
            );
            Ok(Operation::Deactivate)
        }
    }
}

/// A linked account as read again before a deprovision decided earlier.
enum AccountNow {
    /// There, the same resource, in a managed domain, and holding the person's matching value
    /// (as rendered now, or as roster last wrote it: HR often changes or clears a leaver's
    /// address at termination).
    Theirs,
    /// 404: nothing left to close.
    Gone,
    /// Not to be touched, and why.
    NotTheirs(String),
}

async fn read_again_before_deprovision(
    ctx: &AppContext<'_>,
    person: &IdentityView,
    target_id: &str,
    operation: Operation,
    recorded: Option<&Value>,
) -> Result<AccountNow, JobError> {
    let Some(account) = read_account_again(ctx, target_id, operation).await? else {
        return Ok(AccountNow::Gone);
    };
    let attribute = ctx.settings.matching.target_attribute.as_str();
    let reason = if let Some(reason) = not_to_deprovision(ctx, target_id, &account) {
        reason
    } else if !matching_value(ctx, person)
        .is_ok_and(|(attribute, value)| filter::holds_value(&account, attribute, &value))
        && !holds_recorded_value(&account, attribute, recorded)
    {
        format!(
            "skipped: account {target_id} no longer holds this person's {attribute} (changed in the target since it was found); nothing deprovisioned"
        )
    } else {
        return Ok(AccountNow::Theirs);
    };
    Ok(AccountNow::NotTheirs(reason))
}

/// Whether `account` holds the value of `attribute` that `recorded` (the link's snapshot of
/// what roster last wrote) holds.
fn holds_recorded_value(account: &Value, attribute: &str, recorded: Option<&Value>) -> bool {
    recorded.is_some_and(|recorded| {
        filter::values_at(recorded, attribute)
            .into_iter()
            .filter_map(Value::as_str)
            .any(|value| filter::holds_value(account, attribute, value))
    })
}

/// The account `target_id` as the target holds it now, read before a deprovision decided
/// earlier; `None` when it is gone (404).
async fn read_account_again(
    ctx: &AppContext<'_>,
    target_id: &str,
    operation: Operation,
) -> Result<Option<Value>, JobError> {
    doing(operation);
    match ctx.client.users().get(target_id).await {
        Ok(account) => Ok(Some(account)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(JobError::scim(operation, e)),
    }
}

/// Why `account`, read again as `target_id`, is not to be deprovisioned whoever it belongs
/// to: the GET answered another resource, or it is outside the managed domains now.
fn not_to_deprovision(ctx: &AppContext<'_>, target_id: &str, account: &Value) -> Option<String> {
    if id_of(account) != Some(target_id) {
        Some(format!(
            "skipped: GET of account {target_id} answered another resource; nothing deprovisioned"
        ))
    } else if !crate::reconcile::account_is_managed(&ctx.settings.scope.spec(), account) {
        Some(format!(
            "skipped: account {target_id} is outside the app's managed domains now (unmanaged accounts are never touched)"
        ))
    } else {
        None
    }
}

/// Whether a failed write may have been applied all the same: no answer, a 5xx or an unreadable
/// answer. Only a 4xx says it was not.
fn outcome_unknown(error: &ScimError) -> bool {
    !error.status().is_some_and(|s| (400..500).contains(&s))
}

/// A PATCH that timed out, lost its connection, got a 5xx or an unreadable answer may have been
/// applied: the link's
/// snapshot no longer says what the target holds. Forgetting it makes the next attempt send
/// every mapped attribute (and deactivate again when out of scope) instead of diffing against a
/// state the target may have left — e.g. a deactivation applied but unanswered, then a re-hire
/// whose diff against the old snapshot would be empty. `link` is the link as the job left it
/// so far; the forgetting is staged like the job's other writes (and, like
/// `queue::forget_snapshot`, only for a link with a target account).
fn forget_snapshot_if_unsure(writes: &mut JobWrites, link: &link::Model, error: &ScimError) {
    if !outcome_unknown(error) || link.target_id.is_none() {
        return;
    }
    let mut row = LinkRow::from_model(link, chrono::Utc::now());
    row.snapshot = None;
    row.snapshot_hash = None;
    writes.link(LinkWrite {
        app_id: link.app_id.clone(),
        kind: ResourceKind::parse(&link.resource_kind),
        resource_id: link.resource_id.clone(),
        row: Some(row),
    });
}

/// Deprovisions a target account that belongs to no identity (reconciliation's `unmatched`
/// with `reconcile.deprovision_unmatched`), per `deprovision.action`. There is no link to
/// keep: the account is identified by its target id alone, and 404 means it is gone already.
///
/// The decision may be hours old (a held run approved later), so the account and the links
/// are read again first: an account linked to a person by now, or outside the managed domains
/// by now, is not touched — the job ends dead with the reason, which is also on the log row of
/// the read that showed it.
pub async fn deprovision_account(
    conn: &impl ConnectionTrait,
    ctx: &AppContext<'_>,
    target_id: &str,
) -> Result<Operation, JobError> {
    let users = ctx.client.users();
    let operation = match ctx.settings.deprovision.action {
        DeprovisionAction::Delete => Operation::Delete,
        DeprovisionAction::Deactivate => Operation::Deactivate,
    };
    if !ctx.settings.reconcile.deprovision_unmatched {
        return Err(JobError::Unprocessable(format!(
            "skipped: reconcile.deprovision_unmatched is off now, so account {target_id}, found matching nobody, is not deprovisioned"
        )));
    }
    let Some(account) = read_account_again(ctx, target_id, operation).await? else {
        return Ok(Operation::Noop);
    };
    let linked_to = link::Entity::find()
        .filter(link::Column::AppId.eq(ctx.app.id.as_str()))
        .filter(link::Column::ResourceKind.eq(ResourceKind::User.as_str()))
        .filter(link::Column::TargetId.eq(target_id))
        .one(conn)
        .await?;
    let refused = match linked_to {
        Some(link) => Some(format!(
            "skipped: account {target_id} is linked to identity {} now, so it is not deprovisioned as an account of nobody",
            link.resource_id
        )),
        None => match not_to_deprovision(ctx, target_id, &account) {
            Some(reason) => Some(reason),
            None => matched_now(conn, ctx, &account).await?.map(|employee_id| {
                format!(
                    "skipped: account {target_id} matches employee {employee_id} now (found matching nobody earlier); nothing deprovisioned"
                )
            }),
        },
    };
    if let Some(reason) = refused {
        note_on_last_call(&reason);
        return Err(JobError::Unprocessable(reason));
    }
    match ctx.settings.deprovision.action {
        DeprovisionAction::Delete => {
            doing(Operation::Delete);
            users
                .delete(target_id)
                .await
                .map_err(|e| JobError::scim(Operation::Delete, e))?;
            Ok(Operation::Delete)
        }
        DeprovisionAction::Deactivate => {
            doing(Operation::Deactivate);
            match users
                .patch(
                    target_id,
                    &PatchRequest::new().replace("active", json!(false)),
                )
                .await
            {
                Ok(_) => Ok(Operation::Deactivate),
                Err(e) if e.is_not_found() => Ok(Operation::Noop),
                Err(e) => Err(JobError::scim(Operation::Deactivate, e)),
            }
        }
    }
}

/// The employee an account found matching nobody matches now (a joiner since, whose job has
/// not linked it yet), if any. The people asked are those whose email, user name or
/// employee id equals the account's matching value (ignoring case), the fields matching values
/// are rendered from; each is rendered as its job would, and compared.
async fn matched_now(
    conn: &impl ConnectionTrait,
    ctx: &AppContext<'_>,
    account: &Value,
) -> Result<Option<String>, JobError> {
    use sea_orm::sea_query::{Expr, ExprTrait as _, Func};
    let attribute = ctx.settings.matching.target_attribute.as_str();
    let values: Vec<String> = filter::values_at(account, attribute)
        .into_iter()
        .filter_map(Value::as_str)
        .map(str::to_lowercase)
        .collect();
    if values.is_empty() {
        return Ok(None);
    }
    let lower = |column: identity::Column| Expr::expr(Func::lower(Expr::col(column)));
    let candidates = identity::Entity::find()
        .filter(
            sea_orm::Condition::any()
                .add(lower(identity::Column::Email).is_in(values.clone()))
                .add(lower(identity::Column::UserName).is_in(values.clone()))
                .add(lower(identity::Column::EmployeeId).is_in(values)),
        )
        .limit(100)
        .all(conn)
        .await?;
    let employee_ids: Vec<String> = candidates.iter().map(|p| p.employee_id.clone()).collect();
    let mut groups = super::people::group_names_of(conn, &employee_ids).await?;
    for person in &candidates {
        let view = super::people::view_of(
            person,
            groups.remove(&person.employee_id).unwrap_or_default(),
        );
        if let Ok((attribute, value)) = matching_value(ctx, &view)
            && filter::holds_value(account, attribute, &value)
        {
            return Ok(Some(person.employee_id.clone()));
        }
    }
    Ok(None)
}

/// The target id a link contributes to pushed groups' members: only a `linked` account is a
/// member (the same rule as [`member_links`]).
fn member_target<'a>(state: &str, target_id: Option<&'a str>) -> Option<&'a str> {
    (state == "linked").then_some(target_id).flatten()
}

/// After a user job: the follow-up jobs it implies — the scheduled DELETE of a deactivated
/// account, and the pushed groups the person is in whenever the job changed what the account
/// contributes to them (created, adopted, re-activated, deactivated, deleted, re-created).
/// A group's job that ran before this one's link was committed left the account out (or in):
/// this follow-up is written in the same transaction as the link, so another group job
/// always comes after it, whatever order the two ran in. They are staged in `writes`, so
/// that they are enqueued with the job's link.
pub fn follow_ups(
    ctx: &AppContext<'_>,
    inputs: &UserInputs,
    identity_id: &str,
    operation: Operation,
    now_ms: i64,
    writes: &mut JobWrites,
) {
    let mut jobs = Vec::new();
    // The link as the job leaves it: staged, or else as it was read.
    let after = match writes.staged_link(&ctx.app.id, ResourceKind::User, identity_id) {
        Some(w) => w
            .row
            .as_ref()
            .map(|r| (r.state.clone(), r.delete_after, r.target_id.clone())),
        None => inputs
            .link
            .as_ref()
            .map(|l| (l.state.clone(), l.delete_after, l.target_id.clone())),
    };
    let member_before = inputs
        .link
        .as_ref()
        .and_then(|l| member_target(&l.state, l.target_id.as_deref()));
    let member_after = after
        .as_ref()
        .and_then(|(state, _, target_id)| member_target(state, target_id.as_deref()));
    if let Some((state, delete_after, _)) = &after
        && state == "deactivated"
        && let Some(due) = *delete_after
    {
        jobs.push(JobRequest {
            app_id: ctx.app.id.clone(),
            kind: ResourceKind::User,
            resource_id: identity_id.to_owned(),
            lane: Lane::Deprovision,
            run_at_ms: due,
            hr_event_id: None,
        });
    }
    let membership_changed = member_before != member_after
        || matches!(
            operation,
            Operation::Create | Operation::Adopt | Operation::Delete | Operation::Deactivate
        );
    if membership_changed
        && !ctx.settings.group_push.is_empty()
        && let Some(view) = &inputs.person
    {
        for g in &ctx.settings.group_push {
            if view.groups.contains(g) {
                jobs.push(JobRequest {
                    app_id: ctx.app.id.clone(),
                    kind: ResourceKind::Group,
                    resource_id: g.clone(),
                    lane: Lane::Normal,
                    run_at_ms: now_ms,
                    hr_event_id: None,
                });
            }
        }
    }
    writes.enqueue(jobs);
}

/// The member ids of a group as a target returns it: every `members[].value` that is a
/// string; anything else in the list is ignored.
#[must_use]
pub(crate) fn target_members(group: &Value) -> BTreeSet<String> {
    group
        .get("members")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|m| m.get("value").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Whom target group `target_id` may hold, beyond the members its link lists, after a job of
/// it died while it may have been sending member changes ([`GROUP_MEMBERS_UNSURE`]): every
/// member the target answers it with — or, on a target that answers groups without their
/// members, every account the app links (an add that was applied but unanswered may have
/// made any of them a member). Whoever of them roster no longer wants is then removed (a
/// member left in a group is access kept); adds are still worked out against the members the
/// link lists, so nobody wanted is taken for added.
async fn members_after_a_lost_job(
    conn: &impl ConnectionTrait,
    ctx: &AppContext<'_>,
    target_id: &str,
) -> Result<BTreeSet<String>, JobError> {
    if ctx.client.quirks().group_members_readable {
        doing(Operation::GroupUpdate);
        match ctx.client.groups().get(target_id).await {
            Ok(group) if id_of(&group) == Some(target_id) => return Ok(target_members(&group)),
            // Another resource answered, or none: fall back on the app's links below.
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(JobError::scim(Operation::GroupUpdate, e)),
        }
    }
    let linked: Vec<Option<String>> = link::Entity::find()
        .select_only()
        .column(link::Column::TargetId)
        .filter(link::Column::AppId.eq(ctx.app.id.as_str()))
        .filter(link::Column::ResourceKind.eq(ResourceKind::User.as_str()))
        .filter(link::Column::TargetId.is_not_null())
        .into_tuple()
        .all(conn)
        .await?;
    Ok(linked.into_iter().flatten().collect())
}

/// A group link's snapshot lists, under `members_maybe`, target ids the group may hold beyond
/// its `members`: a member change that failed part-way (or whose answer was lost) may have
/// added them. The next job removes those roster no longer wants and adds again those it
/// does; a success clears the list.
pub const GROUP_MEMBERS_MAYBE: &str = "members_maybe";

/// The target ids a group link's snapshot lists under `key` (`members`, [`GROUP_MEMBERS_MAYBE`]).
fn snapshot_ids(snapshot: Option<&Value>, key: &str) -> BTreeSet<String> {
    snapshot
        .and_then(|s| s.get(key))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A pushed group's link snapshot says, under `origin`, whether roster created the target
/// group or adopted one the app had: only a group roster created is deleted when the roster
/// group is deleted or no longer pushed. Links recorded before the origin was kept have none,
/// and are not deleted either (roster cannot tell).
pub const GROUP_CREATED: &str = "created";
/// See [`GROUP_CREATED`].
pub const GROUP_ADOPTED: &str = "adopted";

/// The `origin` a group link's snapshot records, if any.
#[must_use]
pub fn group_origin(snapshot: Option<&Value>) -> Option<&str> {
    snapshot?.get("origin")?.as_str()
}

/// A group link's snapshot lists, under `replaces`, the target groups roster created that a
/// replacement group (a rename where the target cannot rename, [`replace_renamed_group`])
/// still has to delete: written with the new group's link before the old group is deleted, so
/// that a job failing in between deletes them on its retry, and nothing else is ever deleted.
pub const GROUP_REPLACES: &str = "replaces";

/// The target ids a group link's snapshot lists under [`GROUP_REPLACES`].
#[must_use]
pub fn replaced_groups(snapshot: Option<&Value>) -> Vec<String> {
    snapshot
        .and_then(|s| s.get(GROUP_REPLACES))
        .and_then(Value::as_array)
        .map(|ids| {
            ids.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// A pushed group's link snapshot: roster's name, the members roster last applied, whether
/// roster created the group, and the replaced groups still to delete (when there are any).
fn group_snapshot(
    name: &str,
    members: &BTreeSet<String>,
    origin: Option<&str>,
    replaces: &[String],
) -> Value {
    let mut snapshot = json!({
        "displayName": name,
        "members": members.iter().collect::<Vec<_>>(),
        "origin": origin,
    });
    if !replaces.is_empty() {
        snapshot[GROUP_REPLACES] = json!(replaces);
    }
    snapshot
}

/// [`group_snapshot`] after a member change that failed: `members` as before, and `maybe`
/// (what the group may hold beyond them) under [`GROUP_MEMBERS_MAYBE`].
fn group_snapshot_unsure(
    name: &str,
    members: &BTreeSet<String>,
    maybe: &BTreeSet<String>,
    origin: Option<&str>,
    replaces: &[String],
) -> Value {
    let mut snapshot = group_snapshot(name, members, origin, replaces);
    let beyond: Vec<&String> = maybe.difference(members).collect();
    if !beyond.is_empty() {
        snapshot[GROUP_MEMBERS_MAYBE] = json!(beyond);
    }
    snapshot
}

/// Stages a pushed group's link to `target_id` with [`group_snapshot`].
fn stage_group_link(
    writes: &mut JobWrites,
    ctx: &AppContext<'_>,
    group_name: &str,
    target_id: &str,
    snapshot: &Value,
) {
    stage_link(
        writes,
        &ctx.app.id,
        ResourceKind::Group,
        group_name,
        LinkState::linked(target_id, snapshot),
    );
}

/// Deletes the replaced target groups `ids` (see [`GROUP_REPLACES`]): each one roster created
/// and whose members now are in its replacement. A group linked to another roster group in
/// the meantime is not deleted (it is that group's now); one already gone counts as deleted.
async fn delete_replaced(
    ctx: &AppContext<'_>,
    group_name: &str,
    ids: &[String],
) -> Result<(), JobError> {
    for id in ids {
        if let Some(other) =
            linked_to_another(ctx.conn, &ctx.app.id, ResourceKind::Group, id, group_name).await?
        {
            tracing::warn!(
                app = %ctx.app.name,
                group = group_name,
                target_id = %id,
                other = %other,
                "Not deleting a replaced target group now linked to another roster group"
            );
            continue;
        }
        doing(Operation::Delete);
        ctx.client
            .groups()
            .delete(id)
            .await
            .map_err(|e| JobError::scim(Operation::Delete, e))?;
    }
    Ok(())
}

/// Creates the target group of roster group `group`: its name, and its id as `externalId` (by
/// which a later look-up knows the group as one roster created). Its target id, or the create's
/// error as `refused` words it.
async fn create_target_group(
    ctx: &AppContext<'_>,
    group: &group::Model,
    refused: impl FnOnce(ScimError) -> JobError,
) -> Result<String, JobError> {
    doing(Operation::Create);
    let created = ctx
        .client
        .groups()
        .create(&json!({
            "schemas": [crate::scim::schemas::GROUP],
            "displayName": group.name,
            "externalId": group.id,
        }))
        .await
        .map_err(refused)?;
    id_of(&created).map(str::to_owned).ok_or_else(|| {
        JobError::Unprocessable("target answered a group create without an id".into())
    })
}

/// Adds `to_add` to the target group `target_id` and removes `to_remove` from it (each in
/// chunks the client sizes by the quirks), by value: never a replace of all members.
async fn change_members(
    ctx: &AppContext<'_>,
    target_id: &str,
    to_add: &[String],
    to_remove: &[String],
) -> Result<(), JobError> {
    let groups = ctx.client.groups();
    if !to_add.is_empty() {
        groups
            .add_members(target_id, to_add)
            .await
            .map_err(|e| JobError::scim(Operation::GroupUpdate, e))?;
    }
    if !to_remove.is_empty() {
        match groups.remove_members(target_id, to_remove).await {
            Ok(()) => {}
            // One of them is not a member (an add that may have been applied was not): one
            // at a time, each "not a member" counting as removed.
            Err(e) if is_no_target(&e) => {
                for member in to_remove {
                    match groups
                        .remove_members(target_id, std::slice::from_ref(member))
                        .await
                    {
                        Err(e) if !is_no_target(&e) => {
                            return Err(JobError::scim(Operation::GroupUpdate, e));
                        }
                        _ => {}
                    }
                }
            }
            Err(e) => return Err(JobError::scim(Operation::GroupUpdate, e)),
        }
    }
    Ok(())
}

/// A PATCH `remove` refused because its path matched nothing (RFC 7644 §3.5.2.2: 400
/// `noTarget`): the member was not there.
fn is_no_target(error: &ScimError) -> bool {
    error.status() == Some(400)
        && error
            .scim_type()
            .is_some_and(|t| t.eq_ignore_ascii_case("noTarget"))
}
/// A pushed group renamed in the target (by hand) where the target cannot rename groups
/// (`quirks.group_rename = false`): create–move–delete. A target group of roster's name is
/// looked up first (a create whose job failed or crashed before its link was written, or a
/// group made by hand), and created only if there is none; it gets the wanted members (added
/// in chunks of `max_members_per_patch`); its link is staged right after it is found or
/// created, naming the old group under [`GROUP_REPLACES`] when roster created that one, so
/// that a failure from then on leaves the link on the new group and a retry finishes the
/// delete. The old group is deleted only if roster created it (`origin` `created`); one
/// roster adopted was the app's before: it is left as it is, members and all, and only
/// unlinked (reconciliation then lists it as `unmanaged`).
#[allow(clippy::too_many_arguments)]
async fn replace_renamed_group(
    ctx: &AppContext<'_>,
    group: &group::Model,
    old_id: &str,
    old_name: &str,
    old_origin: Option<&str>,
    desired: &BTreeSet<String>,
    mut replaces: Vec<String>,
    writes: &mut JobWrites,
) -> Result<Operation, JobError> {
    let group_name = group.name.as_str();
    doing(Operation::Adopt);
    let found: Vec<Value> = ctx
        .client
        .groups()
        .find_by("displayName", group_name)
        .await
        .map_err(|e| JobError::scim(Operation::Adopt, e))?
        .into_iter()
        .filter(|g| id_of(g) != Some(old_id))
        .collect();
    let (new_id, origin, members) = match found.as_slice() {
        [one] => {
            let id = adoptable(ctx, ResourceKind::Group, group_name, one).await?;
            // roster's creates carry the roster group's id as `externalId`.
            let ours = one.get("externalId").and_then(Value::as_str) == Some(group.id.as_str());
            let origin = if ours { GROUP_CREATED } else { GROUP_ADOPTED };
            (id, origin, target_members(one))
        }
        [] => {
            let id = create_target_group(ctx, group, |e| {
                if e.status() == Some(409) {
                    JobError::Unprocessable(format!(
                        "the target cannot rename groups, and creating `{group_name}` to \
                         replace target group {old_id} (now `{old_name}`) was refused as a \
                         duplicate name (names may be compared ignoring case); rename or \
                         remove one by hand"
                    ))
                } else {
                    JobError::scim(Operation::Create, e)
                }
            })
            .await?;
            (id, GROUP_CREATED, BTreeSet::new())
        }
        _ => {
            return Err(JobError::Unprocessable(format!(
                "several target groups are named `{group_name}`; link one by hand"
            )));
        }
    };
    if old_origin == Some(GROUP_CREATED) {
        replaces.push(old_id.to_owned());
    } else {
        tracing::warn!(
            app = %ctx.app.name,
            group = group_name,
            target_id = %old_id,
            "The target cannot rename groups: not deleting the renamed target group roster did \
             not create; it is unlinked and left as it is"
        );
    }
    replaces.retain(|id| *id != new_id);
    // The new group's link first: from here on a failure or a crash leaves the link on it.
    stage_group_link(
        writes,
        ctx,
        group_name,
        &new_id,
        &group_snapshot(group_name, &members, Some(origin), &replaces),
    );
    doing(Operation::GroupUpdate);
    let to_add: Vec<String> = desired.difference(&members).cloned().collect();
    let to_remove: Vec<String> = members.difference(desired).cloned().collect();
    change_members(ctx, &new_id, &to_add, &to_remove).await?;
    stage_group_link(
        writes,
        ctx,
        group_name,
        &new_id,
        &group_snapshot(group_name, desired, Some(origin), &replaces),
    );
    delete_replaced(ctx, group_name, &replaces).await?;
    stage_group_link(
        writes,
        ctx,
        group_name,
        &new_id,
        &group_snapshot(group_name, desired, Some(origin), &[]),
    );
    Ok(Operation::GroupUpdate)
}

/// The links of the accounts a roster group's members have in the app, `linked` ones only:
/// their target ids are what the pushed group's members should be. One definition for
/// delivery and reconciliation, so that both agree on what the target group should hold.
pub async fn member_links(
    conn: &impl ConnectionTrait,
    app_id: &str,
    group_id: &str,
) -> Result<Vec<link::Model>, sea_orm::DbErr> {
    let employee_ids: Vec<String> = group_member::Entity::find()
        .filter(group_member::Column::GroupId.eq(group_id))
        .all(conn)
        .await?
        .into_iter()
        .map(|m| m.employee_id)
        .collect();
    if employee_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut people = Vec::with_capacity(employee_ids.len());
    // Bounded IN lists: a large group must not exceed a database's bind-parameter limit.
    for chunk in employee_ids.chunks(512) {
        people.extend(
            identity::Entity::find()
                .filter(identity::Column::EmployeeId.is_in(shapes::padded(chunk.iter().cloned())))
                .all(conn)
                .await?
                .into_iter()
                .map(|p| p.id),
        );
    }
    let mut links = Vec::with_capacity(people.len());
    for chunk in people.chunks(512) {
        links.extend(
            link::Entity::find()
                .filter(link::Column::AppId.eq(app_id))
                .filter(link::Column::ResourceKind.eq(ResourceKind::User.as_str()))
                .filter(link::Column::State.eq("linked"))
                .filter(link::Column::ResourceId.is_in(shapes::padded(chunk.iter().cloned())))
                .all(conn)
                .await?,
        );
    }
    Ok(links)
}

/// Makes the app's copy of a pushed roster group match: its members are the group's members
/// that have a live account in the app. Membership changes are PATCH add/remove, never PUT.
pub async fn deliver_group(
    conn: &impl ConnectionTrait,
    ctx: &AppContext<'_>,
    group_name: &str,
    writes: &mut JobWrites,
) -> Result<Operation, JobError> {
    let existing = find_link(conn, &ctx.app.id, ResourceKind::Group, group_name).await?;
    let pushed = ctx.settings.group_push.iter().any(|g| g == group_name);
    let group = group::Entity::find()
        .filter(group::Column::Name.eq(group_name))
        .one(conn)
        .await?;
    let (Some(group), true) = (group, pushed) else {
        // No longer pushed or deleted in roster: remove the target group roster created. A
        // group roster adopted was the app's before, and stays: only the link goes. Groups a
        // replacement left to delete go too (roster created them).
        if let Some(l) = &existing
            && l.target_id.is_some()
        {
            delete_replaced(ctx, group_name, &replaced_groups(l.snapshot.as_ref())).await?;
        }
        if let Some(l) = &existing
            && l.target_id.is_some()
            && group_origin(l.snapshot.as_ref()) != Some(GROUP_CREATED)
        {
            tracing::info!(
                app = %ctx.app.name,
                group = group_name,
                "Not deleting a target group roster did not create; forgetting its link"
            );
            writes.link(LinkWrite {
                app_id: ctx.app.id.clone(),
                kind: ResourceKind::Group,
                resource_id: group_name.to_owned(),
                row: None,
            });
            return Ok(Operation::Noop);
        }
        if let Some(l) = existing
            && let Some(target_id) = l.target_id.clone()
        {
            doing(Operation::Delete);
            ctx.client
                .groups()
                .delete(&target_id)
                .await
                .map_err(|e| JobError::scim(Operation::Delete, e))?;
            writes.link(LinkWrite {
                app_id: ctx.app.id.clone(),
                kind: ResourceKind::Group,
                resource_id: group_name.to_owned(),
                row: None,
            });
            return Ok(Operation::Delete);
        }
        return Ok(Operation::Noop);
    };
    let desired: BTreeSet<String> = member_links(conn, &ctx.app.id, &group.id)
        .await?
        .into_iter()
        .filter_map(|l| l.target_id)
        .collect();
    let mut origin = existing
        .as_ref()
        .and_then(|l| group_origin(l.snapshot.as_ref()))
        .map(str::to_owned);
    let (target_id, current, current_name) =
        match existing.as_ref().and_then(|l| l.target_id.clone()) {
            Some(id) => {
                let snapshot = existing.as_ref().and_then(|l| l.snapshot.as_ref());
                // Reconciliation stores the name it read; older snapshots have roster's own.
                let name = snapshot
                    .and_then(|s| s.get("displayName"))
                    .and_then(Value::as_str)
                    .unwrap_or(group_name)
                    .to_owned();
                let current = snapshot_ids(snapshot, "members");
                (id, current, name)
            }
            None => {
                doing(Operation::Adopt);
                let found = ctx
                    .client
                    .groups()
                    .find_by("displayName", group_name)
                    .await
                    .map_err(|e| JobError::scim(Operation::Adopt, e))?;
                match found.as_slice() {
                    [one] => {
                        let id = adoptable(ctx, ResourceKind::Group, group_name, one).await?;
                        let members = target_members(one);
                        let name = one
                            .get("displayName")
                            .and_then(Value::as_str)
                            .unwrap_or(group_name)
                            .to_owned();
                        // roster's creates carry the roster group's id as `externalId`: one
                        // whose create's answer was lost, or whose job failed before its link
                        // was written, is roster's own, deleted with the roster group.
                        let ours = one.get("externalId").and_then(Value::as_str)
                            == Some(group.id.as_str());
                        origin = Some(if ours { GROUP_CREATED } else { GROUP_ADOPTED }.to_owned());
                        (id, members, name)
                    }
                    [] => {
                        let id = create_target_group(ctx, &group, |e| {
                            JobError::scim(Operation::Create, e)
                        })
                        .await?;
                        origin = Some(GROUP_CREATED.to_owned());
                        (id, BTreeSet::new(), group_name.to_owned())
                    }
                    _ => {
                        return Err(JobError::Unprocessable(format!(
                            "several target groups are named `{group_name}`; link one by hand"
                        )));
                    }
                }
            }
        };
    // Whom the group may hold beyond `current`: adds a failed change may have made, and after
    // a job lost with its instance, whoever may be a member now.
    let own_snapshot = existing
        .as_ref()
        .filter(|l| l.target_id.as_deref() == Some(target_id.as_str()))
        .and_then(|l| l.snapshot.as_ref());
    let mut maybe = snapshot_ids(own_snapshot, GROUP_MEMBERS_MAYBE);
    if own_snapshot.is_some_and(|s| s.get(GROUP_MEMBERS_UNSURE) == Some(&json!(true))) {
        maybe.extend(members_after_a_lost_job(conn, ctx, &target_id).await?);
    }
    // Replaced groups an earlier job left to delete (only on the link's own group).
    let replaces = replaced_groups(own_snapshot);
    let renamed = current_name != group_name;
    if renamed && !ctx.client.quirks().group_rename {
        return replace_renamed_group(
            ctx,
            &group,
            &target_id,
            &current_name,
            origin.as_deref(),
            &desired,
            replaces,
            writes,
        )
        .await;
    }
    let to_add: Vec<String> = desired.difference(&current).cloned().collect();
    let to_remove: Vec<String> = current
        .union(&maybe)
        .filter(|m| !desired.contains(*m))
        .cloned()
        .collect();
    doing(Operation::GroupUpdate);
    if renamed {
        // Renamed by hand in the target: the group is roster's, its name too.
        ctx.client
            .groups()
            .patch(
                &target_id,
                &PatchRequest::new().replace("displayName", json!(group_name)),
            )
            .await
            .map_err(|e| JobError::scim(Operation::GroupUpdate, e))?;
    }
    if let Err(e) = change_members(ctx, &target_id, &to_add, &to_remove).await {
        // Some of the member changes may have been applied (a chunk answered 2xx before one
        // failed, or the failed one itself): the target may now hold any member it held or
        // was being given. Recorded so, the retry removes every one of them roster no longer
        // wants (a removal sent again is harmless) and adds again every one it still wants
        // (an add that was applied is no change), and a group roster created stays known as
        // its own.
        maybe.extend(to_add.iter().cloned());
        stage_group_link(
            writes,
            ctx,
            group_name,
            &target_id,
            &group_snapshot_unsure(group_name, &current, &maybe, origin.as_deref(), &replaces),
        );
        return Err(e);
    }
    stage_group_link(
        writes,
        ctx,
        group_name,
        &target_id,
        &group_snapshot(group_name, &desired, origin.as_deref(), &replaces),
    );
    if !replaces.is_empty() {
        delete_replaced(ctx, group_name, &replaces).await?;
        stage_group_link(
            writes,
            ctx,
            group_name,
            &target_id,
            &group_snapshot(group_name, &desired, origin.as_deref(), &[]),
        );
        return Ok(Operation::GroupUpdate);
    }
    Ok(if to_add.is_empty() && to_remove.is_empty() && !renamed {
        Operation::Noop
    } else {
        Operation::GroupUpdate
    })
}
