//! HR events: joiner, mover, leaver (DESIGN §4).
//!
//! Invariants:
//! - A request (a single event or a batch of up to 1000) is applied whole or not at all: under
//!   its own savepoint inside a commit group's transaction (`GroupCommit`). The answer is sent
//!   only after the events, their effects on identities and groups, and the jobs they cause are
//!   committed. Nothing is half-applied.
//! - An `event_id` is applied at most once; a repeat with the same payload (compared by the
//!   hash of its canonical form) is `duplicate`, with another payload a conflict (409).
//! - Ordering is per field: an event sets a field only if no newer event set it
//!   (`identity.field_times`), so an older event still fills the fields nobody newer set.
//! - The status follows joiners and leavers by `occurred_at`, and a tie goes to the leaver: a
//!   joiner activates only if it is strictly newer than the last status change, so no tie and
//!   no late joiner ever grants access. A mover never decides the status of a known person.
//!   A leaver for an unknown person is recorded as a terminated identity, so its joiner, if
//!   older, cannot activate them.
//! - A joiner or leaver whose status change lost, or an event none of whose fields were newer,
//!   is `stale`: recorded; it may still have filled fields nobody newer set.
use chrono::{DateTime, Utc};
use sea_orm::TransactionTrait;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::{Principal, Roster, ServiceError, ServiceResult};
use crate::store::entity::identity;
use crate::store::is_unique_violation;

mod apply;
mod times;
use apply::{Catalog, EventSet};

pub const MAX_BATCH: usize = 1000;
/// Clock skew tolerated on `occurred_at`; a later timestamp would make every real event stale.
pub const MAX_FUTURE_SECS: i64 = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Joiner,
    Mover,
    Leaver,
}

impl EventType {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Joiner => "joiner",
            EventType::Mover => "mover",
            EventType::Leaver => "leaver",
        }
    }
}

/// One field of the employee record: absent keeps the stored value, `null` clears it.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum FieldUpdate<T> {
    #[default]
    Keep,
    Clear,
    Set(T),
}

impl<T: Clone> FieldUpdate<T> {
    fn apply(&self, current: Option<T>) -> Option<T> {
        match self {
            FieldUpdate::Keep => current,
            FieldUpdate::Clear => None,
            FieldUpdate::Set(v) => Some(v.clone()),
        }
    }

    #[must_use]
    pub fn is_set(&self) -> bool {
        matches!(self, FieldUpdate::Set(_))
    }
}

#[derive(Debug, Clone, Default)]
pub struct EmployeeRecord {
    pub employee_id: String,
    pub user_name: FieldUpdate<String>,
    pub email: FieldUpdate<String>,
    pub given_name: FieldUpdate<String>,
    pub family_name: FieldUpdate<String>,
    pub display_name: FieldUpdate<String>,
    pub department: FieldUpdate<String>,
    pub title: FieldUpdate<String>,
    pub manager_employee_id: FieldUpdate<String>,
    pub attributes: FieldUpdate<Value>,
}

#[derive(Debug, Clone)]
pub struct HrEventInput {
    pub event_id: String,
    pub event_type: EventType,
    pub occurred_at: DateTime<Utc>,
    pub employee: EmployeeRecord,
    /// The event as received, kept in the `hr_event` row.
    pub payload: Value,
    /// The HR source the change comes from (an HR snapshot's `source`); `None` keeps the
    /// person's, or [`DEFAULT_SOURCE`] for someone new.
    pub source: Option<String>,
}

/// The source of people written by events that name none.
pub const DEFAULT_SOURCE: &str = "hr";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventResult {
    Applied,
    Duplicate,
    Stale,
    Rejected,
}

impl EventResult {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            EventResult::Applied => "applied",
            EventResult::Duplicate => "duplicate",
            EventResult::Stale => "stale",
            EventResult::Rejected => "rejected",
        }
    }
}

#[derive(Debug, Clone)]
pub struct EventOutcome {
    pub event_id: String,
    pub result: EventResult,
    pub detail: Option<String>,
}

fn no_controls(field: &str, value: &str, max: usize) -> ServiceResult<()> {
    if value.chars().count() > max {
        return Err(ServiceError::invalid(
            field,
            format!("longer than {max} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ServiceError::invalid(field, "contains control characters"));
    }
    Ok(())
}

pub fn validate_employee_id(field: &str, id: &str) -> ServiceResult<()> {
    // Counted in characters, as documented: a non-ASCII id is not held to fewer of them.
    if id.is_empty()
        || id.chars().count() > 64
        || id.chars().any(char::is_control)
        || id.trim() != id
    {
        return Err(ServiceError::invalid(
            field,
            "must be 1 to 64 characters, without control characters or surrounding spaces",
        ));
    }
    Ok(())
}

/// How the event ids of HR snapshot changes begin (`hr-snapshot:<snapshot id>:<employee id>`);
/// reserved: posted events may not use it.
pub const SNAPSHOT_EVENT_PREFIX: &str = "hr-snapshot:";

/// Checks one event; `at` names it in errors (`events[3]` in a batch, empty for a single one).
pub fn validate_event(at: &str, event: &HrEventInput, now: DateTime<Utc>) -> ServiceResult<()> {
    let f = |name: &str| {
        if at.is_empty() {
            name.to_owned()
        } else {
            format!("{at}.{name}")
        }
    };
    if event.event_id.is_empty() {
        return Err(ServiceError::invalid(f("event_id"), "must not be empty"));
    }
    no_controls(&f("event_id"), &event.event_id, 128)?;
    if (event.occurred_at - now).num_seconds() > MAX_FUTURE_SECS {
        return Err(ServiceError::invalid(
            f("occurred_at"),
            "is more than 5 minutes in the future; send events when they take effect",
        ));
    }
    validate_employee(&f("employee"), &event.employee)?;
    if event.event_type == EventType::Joiner
        && !event.employee.user_name.is_set()
        && !event.employee.email.is_set()
    {
        return Err(ServiceError::invalid(
            f("employee"),
            "a joiner needs `user_name` or `email`",
        ));
    }
    Ok(())
}

/// Checks an employee record (of an event or an HR snapshot row); `at` names it in errors.
pub fn validate_employee(at: &str, e: &EmployeeRecord) -> ServiceResult<()> {
    let f = |name: &str| format!("{at}.{name}");
    validate_employee_id(&f("employee_id"), &e.employee_id)?;
    let texts = [
        ("user_name", &e.user_name),
        ("email", &e.email),
        ("given_name", &e.given_name),
        ("family_name", &e.family_name),
        ("display_name", &e.display_name),
        ("department", &e.department),
        ("title", &e.title),
        ("manager_employee_id", &e.manager_employee_id),
    ];
    for (name, value) in texts {
        if let FieldUpdate::Set(v) = value {
            no_controls(&f(name), v, 1024)?;
            if v.trim().is_empty() {
                return Err(ServiceError::invalid(
                    f(name),
                    "is blank; send null to clear a field",
                ));
            }
        }
    }
    if let FieldUpdate::Set(email) = &e.email {
        let ok = email.len() <= 254
            && email.rsplit_once('@').is_some_and(|(local, domain)| {
                !local.is_empty() && domain.contains('.') && !domain.contains(' ')
            });
        if !ok {
            return Err(ServiceError::invalid(
                f("email"),
                format!("`{email}` is not an email address"),
            ));
        }
    }
    if let FieldUpdate::Set(attrs) = &e.attributes {
        if !attrs.is_object() {
            return Err(ServiceError::invalid(
                f("attributes"),
                "must be a JSON object",
            ));
        }
        if attrs.to_string().len() > 64 * 1024 {
            return Err(ServiceError::invalid(f("attributes"), "larger than 64 KiB"));
        }
    }
    Ok(())
}

/// Checks a request's events before anything is stored: 1..=[`MAX_BATCH`] of them, each by
/// [`validate_event`], named `events[i]` in a batch.
pub fn validate_events(events: &[HrEventInput], now: DateTime<Utc>) -> ServiceResult<()> {
    if events.is_empty() {
        return Err(ServiceError::invalid("events", "must not be empty"));
    }
    if events.len() > MAX_BATCH {
        return Err(ServiceError::invalid(
            "events",
            format!("at most {MAX_BATCH} events per batch"),
        ));
    }
    let single = events.len() == 1;
    for (i, e) in events.iter().enumerate() {
        let at = if single {
            String::new()
        } else {
            format!("events[{i}]")
        };
        validate_event(&at, e, now)?;
    }
    Ok(())
}

/// Sets the fields `e` carries on `person`, each only if `take` allows it (by field name, see
/// [`times::FIELDS`]); returns the names of the carried fields that were set, and of those that
/// were not.
fn apply_record(
    person: &mut identity::Model,
    e: &EmployeeRecord,
    mut take: impl FnMut(&'static str) -> bool,
) -> (Vec<&'static str>, Vec<&'static str>) {
    let mut set = Vec::new();
    let mut refused = Vec::new();
    let mut one = |name: &'static str, update: &FieldUpdate<String>, slot: &mut Option<String>| {
        if matches!(update, FieldUpdate::Keep) {
            return;
        }
        if take(name) {
            *slot = update.apply(slot.take());
            set.push(name);
        } else {
            refused.push(name);
        }
    };
    one("user_name", &e.user_name, &mut person.user_name);
    one("email", &e.email, &mut person.email);
    one("given_name", &e.given_name, &mut person.given_name);
    one("family_name", &e.family_name, &mut person.family_name);
    one("display_name", &e.display_name, &mut person.display_name);
    one("department", &e.department, &mut person.department);
    one("title", &e.title, &mut person.title);
    one(
        "manager_employee_id",
        &e.manager_employee_id,
        &mut person.manager_employee_id,
    );
    if !matches!(e.attributes, FieldUpdate::Keep) {
        if take("attributes") {
            let current = std::mem::take(&mut person.attributes);
            person.attributes = e
                .attributes
                .apply(Some(current))
                .unwrap_or_else(|| json!({}));
            set.push("attributes");
        } else {
            refused.push("attributes");
        }
    }
    (set, refused)
}

impl Roster {
    /// [`Roster::ingest`] for events an HR system posts: their ids may not take the form HR
    /// snapshots give their changes ([`SNAPSHOT_EVENT_PREFIX`]), or an event could take a
    /// snapshot change's id first and make the snapshot's apply fail as a conflict.
    pub async fn ingest_posted(
        &self,
        principal: &Principal,
        events: Vec<HrEventInput>,
    ) -> ServiceResult<Vec<EventOutcome>> {
        for (i, event) in events.iter().enumerate() {
            if event.event_id.starts_with(SNAPSHOT_EVENT_PREFIX) {
                let field = if events.len() == 1 {
                    "event_id".to_owned()
                } else {
                    format!("events[{i}].event_id")
                };
                return Err(ServiceError::invalid(
                    field,
                    format!(
                        "ids starting with `{SNAPSHOT_EVENT_PREFIX}` are reserved for the changes of HR snapshots"
                    ),
                ));
            }
        }
        self.ingest(principal, events).await
    }

    /// Applies events in order, in one transaction; answers after the commit.
    pub async fn ingest(
        &self,
        principal: &Principal,
        events: Vec<HrEventInput>,
    ) -> ServiceResult<Vec<EventOutcome>> {
        validate_events(&events, Utc::now())?;
        self.inner_group_commit()
            .submit(self, principal.clone(), events)
            .await
    }

    /// Applies the requests of one commit group in one write transaction and answers every
    /// request after the commit (or with the commit's error). First all together, as one
    /// [`EventSet`]; if that fails, each request again under its own savepoint, so one
    /// request's failure does not undo another's.
    async fn commit_group(&self, requests: Vec<IngestRequest>) {
        let started = std::time::Instant::now();
        let (together, committed) = match self.apply_together(&requests).await {
            Ok(outcomes) => (true, Ok(outcomes.into_iter().map(Ok).collect())),
            Err(e) => {
                tracing::debug!(error = %e, requests = requests.len(), "An ingest commit group failed as a whole; applying its requests one by one");
                (false, self.apply_one_by_one(&requests).await)
            }
        };
        tracing::debug!(
            requests = requests.len(),
            events = requests.iter().map(|r| r.events.len()).sum::<usize>(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            together,
            committed = committed.is_ok(),
            "Ingest commit group"
        );
        let (committed, results) = match committed {
            Ok(results) => (Ok(()), results),
            Err(e) => (Err(e), Vec::new()),
        };
        let mut results = results.into_iter();
        let mut applied = false;
        for request in requests {
            let result = match (&committed, results.next()) {
                (Ok(()), Some(Ok(outcomes))) => {
                    for (event, o) in request.events.iter().zip(&outcomes) {
                        crate::telemetry::metrics()
                            .hr_events_total
                            .with_label_values(&[event.event_type.as_str(), o.result.as_str()])
                            .inc();
                        applied |= o.result == EventResult::Applied;
                    }
                    Ok(outcomes)
                }
                (Ok(()), Some(Err(e))) => Err(e),
                (Ok(()), None) => Err(ServiceError::Internal(
                    "an ingest request was left out of its commit group".into(),
                )),
                (Err(e), _) => Err(ServiceError::Internal(format!(
                    "the events were not committed: {e}"
                ))),
            };
            // The caller may have gone away (client disconnect): what committed stays committed.
            let _ = request.reply.send(result);
        }
        if applied {
            self.notify_jobs();
        }
    }
}

impl Roster {
    /// Every request of the group as one set: no savepoints, a few statements per event.
    async fn apply_together(
        &self,
        requests: &[IngestRequest],
    ) -> ServiceResult<Vec<Vec<EventOutcome>>> {
        let tx = self.write_tx().await?;
        let catalog = Catalog::load(&*tx).await?;
        let all: Vec<&IngestRequest> = requests.iter().collect();
        let mut set = EventSet::load(&*tx, &catalog, &all).await?;
        let mut results = Vec::with_capacity(requests.len());
        for request in requests {
            results.push(set.apply_request(&*tx, request).await?);
        }
        set.flush(&*tx).await?;
        tx.commit().await?;
        Ok(results)
    }

    /// Each request as a set of its own under a savepoint; the group commits whatever
    /// succeeded. On PostgreSQL another instance may insert the same new identity or event at
    /// once: the loser's savepoint fails on the unique index and is simply run again, now
    /// seeing the winner's rows (and answering `duplicate` or applying on top).
    async fn apply_one_by_one(
        &self,
        requests: &[IngestRequest],
    ) -> ServiceResult<Vec<ServiceResult<Vec<EventOutcome>>>> {
        let tx = self.write_tx().await?;
        let catalog = Catalog::load(&*tx).await?;
        let mut results = Vec::with_capacity(requests.len());
        for request in requests {
            results.push(apply_alone(&tx, &catalog, request).await);
        }
        tx.commit().await?;
        Ok(results)
    }
}

async fn apply_alone(
    tx: &sea_orm::DatabaseTransaction,
    catalog: &Catalog,
    request: &IngestRequest,
) -> ServiceResult<Vec<EventOutcome>> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let savepoint = tx.begin().await?;
        let applied = async {
            let mut set = EventSet::load(&savepoint, catalog, &[request]).await?;
            let outcomes = set.apply_request(&savepoint, request).await?;
            set.flush(&savepoint).await?;
            Ok::<_, ServiceError>(outcomes)
        }
        .await;
        match applied {
            Ok(outcomes) => {
                savepoint.commit().await?;
                return Ok(outcomes);
            }
            Err(ServiceError::Db(e)) if attempt < 4 && is_unique_violation(&e) => {
                savepoint.rollback().await?;
            }
            Err(e) => {
                savepoint.rollback().await?;
                return Err(e);
            }
        }
    }
}

/// One caller's events waiting to be committed.
pub(crate) struct IngestRequest {
    principal: Principal,
    events: Vec<HrEventInput>,
    reply: oneshot::Sender<ServiceResult<Vec<EventOutcome>>>,
}

/// Group commit for HR events: concurrent requests are applied in one write transaction and
/// made durable by one commit (one fsync on SQLite) instead of one each. Every request is
/// still answered only after the commit that holds it.
///
/// Leader/follower: a request queues itself, then waits for the commit turn; whoever gets the
/// turn takes everything queued (up to [`GROUP_MAX_EVENTS`]) and commits it in a task of its
/// own, so a caller that goes away cannot cut a group short.
#[derive(Default)]
pub(crate) struct GroupCommit {
    queued: std::sync::Mutex<std::collections::VecDeque<IngestRequest>>,
    turn: tokio::sync::Mutex<()>,
}

/// Events per commit group; a batch request larger than this still goes in whole.
const GROUP_MAX_EVENTS: usize = 2_000;

impl GroupCommit {
    async fn submit(
        &self,
        roster: &Roster,
        principal: Principal,
        events: Vec<HrEventInput>,
    ) -> ServiceResult<Vec<EventOutcome>> {
        let (reply, answer) = oneshot::channel();
        self.lock_queue().push_back(IngestRequest {
            principal,
            events,
            reply,
        });
        let mut answer = std::pin::pin!(answer);
        // A request whose group another leader already committed must not queue for the turn
        // behind the next group's commit: its answer is there.
        let turn = tokio::select! {
            biased;
            result = &mut answer => return Self::answered(result),
            turn = self.turn.lock() => turn,
        };
        let group = self.take_group();
        if !group.is_empty() {
            let roster = roster.clone();
            let work = tokio::spawn(async move { roster.commit_group(group).await });
            if let Err(e) = work.await {
                tracing::error!(error = %e, "An ingest commit group failed");
            }
        }
        drop(turn);
        Self::answered(answer.await)
    }

    fn answered(
        result: Result<ServiceResult<Vec<EventOutcome>>, oneshot::error::RecvError>,
    ) -> ServiceResult<Vec<EventOutcome>> {
        result.map_err(|_| {
            ServiceError::Internal("the events' commit group was interrupted".into())
        })?
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<IngestRequest>> {
        // A poisoned queue only means a panic elsewhere while pushing; the data is intact.
        self.queued
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn take_group(&self) -> Vec<IngestRequest> {
        let mut queued = self.lock_queue();
        let mut group = Vec::new();
        let mut events = 0;
        while let Some(next) = queued.front() {
            if !group.is_empty() && events + next.events.len() > GROUP_MAX_EVENTS {
                break;
            }
            events += next.events.len();
            if let Some(request) = queued.pop_front() {
                group.push(request);
            }
        }
        group
    }
}
