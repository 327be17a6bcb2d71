//! HR events: joiner, mover, leaver (DESIGN §4).
//!
//! Invariants:
//! - One transaction per request (a single event or a batch of up to 1000): the answer is sent
//!   only after the events, their effects on identities and groups, and the jobs they cause are
//!   committed together. Nothing is half-applied.
//! - An `event_id` is applied at most once; a repeat is `duplicate`.
//! - An event older than the identity's `last_event_at` is `stale`: recorded, not applied, so a
//!   late joiner never re-activates a leaver.
use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect, Set,
};
use serde_json::{Value, json};

use super::apps::AppSettings;
use super::audit::{self, AuditEntry};
use super::{Principal, Roster, ServiceError, ServiceResult, groups, new_id, planner};
use crate::delivery::people;
use crate::store::entity::{app, hr_event, identity};
use crate::store::{is_postgres, is_unique_violation, queue};

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

    fn is_set(&self) -> bool {
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
}

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
    if id.is_empty() || id.len() > 64 || id.chars().any(char::is_control) || id.trim() != id {
        return Err(ServiceError::invalid(
            field,
            "must be 1 to 64 characters, without control characters or surrounding spaces",
        ));
    }
    Ok(())
}

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
    let e = &event.employee;
    validate_employee_id(&f("employee.employee_id"), &e.employee_id)?;
    let texts = [
        ("employee.user_name", &e.user_name),
        ("employee.email", &e.email),
        ("employee.given_name", &e.given_name),
        ("employee.family_name", &e.family_name),
        ("employee.display_name", &e.display_name),
        ("employee.department", &e.department),
        ("employee.title", &e.title),
        ("employee.manager_employee_id", &e.manager_employee_id),
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
                f("employee.email"),
                format!("`{email}` is not an email address"),
            ));
        }
    }
    if let FieldUpdate::Set(attrs) = &e.attributes {
        if !attrs.is_object() {
            return Err(ServiceError::invalid(
                f("employee.attributes"),
                "must be a JSON object",
            ));
        }
        if attrs.to_string().len() > 64 * 1024 {
            return Err(ServiceError::invalid(
                f("employee.attributes"),
                "larger than 64 KiB",
            ));
        }
    }
    if event.event_type == EventType::Joiner && !e.user_name.is_set() && !e.email.is_set() {
        return Err(ServiceError::invalid(
            f("employee"),
            "a joiner needs `user_name` or `email`",
        ));
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

fn apply_record(
    model: &mut identity::ActiveModel,
    current: Option<&identity::Model>,
    e: &EmployeeRecord,
) {
    let cur = |get: fn(&identity::Model) -> Option<String>| current.and_then(get);
    model.user_name = Set(e.user_name.apply(cur(|m| m.user_name.clone())));
    model.email = Set(e.email.apply(cur(|m| m.email.clone())));
    model.given_name = Set(e.given_name.apply(cur(|m| m.given_name.clone())));
    model.family_name = Set(e.family_name.apply(cur(|m| m.family_name.clone())));
    model.display_name = Set(e.display_name.apply(cur(|m| m.display_name.clone())));
    model.department = Set(e.department.apply(cur(|m| m.department.clone())));
    model.title = Set(e.title.apply(cur(|m| m.title.clone())));
    model.manager_employee_id = Set(e
        .manager_employee_id
        .apply(cur(|m| m.manager_employee_id.clone())));
    let attributes = e
        .attributes
        .apply(current.map(|m| m.attributes.clone()))
        .unwrap_or_else(|| json!({}));
    model.attributes = Set(attributes);
}

impl Roster {
    /// Applies events in order, in one transaction; answers after the commit.
    pub async fn ingest(
        &self,
        principal: &Principal,
        events: &[HrEventInput],
    ) -> ServiceResult<Vec<EventOutcome>> {
        validate_events(events, Utc::now())?;
        // On PostgreSQL two instances may insert the same new identity or event at once; the
        // loser's transaction fails on the unique index and is simply run again, when it sees
        // the winner's rows (and answers `duplicate` or applies on top).
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.ingest_once(principal, events).await {
                Err(ServiceError::Db(e)) if attempt < 4 && is_unique_violation(&e) => continue,
                other => return other,
            }
        }
    }

    async fn ingest_once(
        &self,
        principal: &Principal,
        events: &[HrEventInput],
    ) -> ServiceResult<Vec<EventOutcome>> {
        let tx = self.write_tx().await?;
        let apps = planner::apps_with_settings(&*tx).await?;
        let mut outcomes = Vec::with_capacity(events.len());
        for event in events {
            let outcome = apply_event(&*tx, &apps, principal, event).await?;
            crate::telemetry::metrics()
                .hr_events_total
                .with_label_values(&[event.event_type.as_str(), outcome.result.as_str()])
                .inc();
            outcomes.push(outcome);
        }
        let summary = json!({
            "events": outcomes.len(),
            "results": outcomes.iter().map(|o| json!({"event_id": o.event_id, "result": o.result.as_str()})).collect::<Vec<_>>(),
        });
        audit::record(
            &*tx,
            Some(principal),
            AuditEntry {
                action: "events.ingest",
                object_type: "hr_event",
                object_id: (outcomes.len() == 1).then(|| outcomes[0].event_id.as_str()),
                before: None,
                after: Some(summary),
            },
        )
        .await?;
        tx.commit().await?;
        self.notify_jobs();
        Ok(outcomes)
    }
}

async fn record_event(
    conn: &impl ConnectionTrait,
    principal: &Principal,
    event: &HrEventInput,
    result: EventResult,
    detail: Option<String>,
) -> ServiceResult<EventOutcome> {
    hr_event::ActiveModel {
        event_id: Set(event.event_id.clone()),
        event_type: Set(event.event_type.as_str().into()),
        employee_id: Set(event.employee.employee_id.clone()),
        occurred_at: Set(event.occurred_at),
        payload: Set(event.payload.clone()),
        result: Set(result.as_str().into()),
        detail: Set(detail.clone()),
        api_key_id: Set(Some(principal.key_id.clone())),
        received_at: Set(Utc::now()),
        ..Default::default()
    }
    .insert(conn)
    .await?;
    Ok(EventOutcome {
        event_id: event.event_id.clone(),
        result,
        detail,
    })
}

async fn apply_event(
    conn: &impl ConnectionTrait,
    apps: &[(app::Model, AppSettings)],
    principal: &Principal,
    event: &HrEventInput,
) -> ServiceResult<EventOutcome> {
    if hr_event::Entity::find()
        .filter(hr_event::Column::EventId.eq(event.event_id.as_str()))
        .one(conn)
        .await?
        .is_some()
    {
        return Ok(EventOutcome {
            event_id: event.event_id.clone(),
            result: EventResult::Duplicate,
            detail: None,
        });
    }
    let employee = &event.employee;
    let mut query = identity::Entity::find()
        .filter(identity::Column::EmployeeId.eq(employee.employee_id.as_str()));
    if is_postgres(conn) {
        // Serialises concurrent events for one person across instances.
        query = query.lock_exclusive();
    }
    let current = query.one(conn).await?;
    if let Some(cur) = &current
        && let Some(last) = cur.last_event_at
        && event.occurred_at < last
    {
        let detail = format!(
            "older than the last applied event for {} ({last})",
            employee.employee_id
        );
        return record_event(conn, principal, event, EventResult::Stale, Some(detail)).await;
    }
    if current.is_none() {
        let creatable = employee.user_name.is_set() || employee.email.is_set();
        let refusal = match event.event_type {
            EventType::Leaver => Some("unknown employee: there is nobody to deprovision"),
            EventType::Mover if !creatable => {
                Some("unknown employee, and no `user_name` or `email` to create them")
            }
            _ => None,
        };
        if let Some(reason) = refusal {
            return record_event(
                conn,
                principal,
                event,
                EventResult::Rejected,
                Some(reason.into()),
            )
            .await;
        }
    }

    let before_view = match &current {
        Some(cur) => Some(people::view_of(
            cur,
            people::group_names(conn, &cur.employee_id).await?,
        )),
        None => None,
    };
    let now = Utc::now();
    let status = match (event.event_type, &current) {
        (EventType::Joiner, _) => "active".to_owned(),
        (EventType::Leaver, _) => "terminated".to_owned(),
        (EventType::Mover, Some(cur)) => cur.status.clone(),
        (EventType::Mover, None) => "active".to_owned(),
    };
    let saved = match &current {
        Some(cur) => {
            let mut model: identity::ActiveModel = cur.clone().into();
            apply_record(&mut model, Some(cur), employee);
            model.status = Set(status);
            model.last_event_at = Set(Some(event.occurred_at));
            model.version = Set(cur.version + 1);
            model.updated_at = Set(now);
            model.update(conn).await?
        }
        None => {
            let mut model = identity::ActiveModel {
                id: Set(new_id()),
                employee_id: Set(employee.employee_id.clone()),
                status: Set(status),
                last_event_at: Set(Some(event.occurred_at)),
                version: Set(1),
                created_at: Set(now),
                updated_at: Set(now),
                ..Default::default()
            };
            apply_record(&mut model, None, employee);
            model.insert(conn).await?
        }
    };
    let changed_groups = groups::reevaluate_rules_for(conn, &saved).await?;
    let after_view = people::view_of(&saved, people::group_names(conn, &saved.employee_id).await?);
    let linked = planner::linked_apps(conn, &saved.id).await?;
    let jobs = planner::plan_person_change(
        apps,
        before_view.as_ref(),
        &after_view,
        &linked,
        &changed_groups,
        Some(&event.event_id),
        queue::now_ms(),
    );
    queue::enqueue(conn, &jobs).await?;
    record_event(conn, principal, event, EventResult::Applied, None).await
}
