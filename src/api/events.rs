//! `/events`: HR joiner / mover / leaver events.
use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::Header;
use poem_openapi::payload::Json;
use poem_openapi::types::{MaybeUndefined, ToJSON};
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use serde_json::Value;

use super::ApiTags;
use super::auth::ApiKey;
use super::body::JsonBody;
use super::problem::ApiError;
use crate::service::ingest::{EmployeeRecord, EventOutcome, EventType, FieldUpdate, HrEventInput};
use crate::service::{Permission, Roster};

#[derive(Enum, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Joiner,
    Mover,
    Leaver,
}

/// The employee record. In a mover, an absent field keeps its value and `null` clears it.
#[derive(Object, Clone, serde::Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct EmployeeIn {
    /// The HR system's key for the person (1..=64 characters).
    pub employee_id: String,
    #[serde(default)]
    #[oai(nullable)]
    pub user_name: MaybeUndefined<String>,
    #[serde(default)]
    #[oai(nullable)]
    pub email: MaybeUndefined<String>,
    #[serde(default)]
    #[oai(nullable)]
    pub given_name: MaybeUndefined<String>,
    #[serde(default)]
    #[oai(nullable)]
    pub family_name: MaybeUndefined<String>,
    #[serde(default)]
    #[oai(nullable)]
    pub display_name: MaybeUndefined<String>,
    #[serde(default)]
    #[oai(nullable)]
    pub department: MaybeUndefined<String>,
    #[serde(default)]
    #[oai(nullable)]
    pub title: MaybeUndefined<String>,
    #[serde(default)]
    #[oai(nullable)]
    pub manager_employee_id: MaybeUndefined<String>,
    /// Anything else HR sends (a JSON object), usable as `attributes.<key>` in mappings.
    #[serde(default)]
    #[oai(nullable)]
    pub attributes: MaybeUndefined<Value>,
}

#[derive(Object, Clone, serde::Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct EventIn {
    /// Idempotency key: a repeated `event_id` with the same content is answered `duplicate`
    /// and not re-applied; with other content it is refused with 409.
    pub event_id: String,
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// When the change took effect in HR (RFC 3339). Ordering is per field: an event sets a
    /// field only if no newer event set it. A joiner activates only if it is newer than the
    /// last leaver (at equal times the leaver wins). An event whose status change lost, or
    /// none of whose fields were newer, is `stale`.
    pub occurred_at: DateTime<Utc>,
    pub employee: EmployeeIn,
}

#[derive(Object, serde::Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct EventBatchIn {
    /// 1..=1000 events, applied in order in one transaction.
    pub events: Vec<EventIn>,
}

#[derive(Object)]
pub struct EventAccepted {
    pub event_id: String,
    /// `applied`, `duplicate`, `stale` or `rejected`. A leaver for an unknown person is
    /// `applied`: recorded as a terminated identity, so an older joiner cannot activate them.
    pub result: String,
    #[oai(skip_serializing_if_is_none)]
    pub detail: Option<String>,
}

#[derive(Object)]
pub struct EventBatchAccepted {
    pub results: Vec<EventAccepted>,
}

#[derive(ApiResponse)]
pub enum Accepted<T: poem_openapi::types::ToJSON + Send + Sync> {
    /// Durably committed.
    #[oai(status = 202)]
    Accepted(Json<T>),
}

pub(crate) fn field<T: Clone>(v: &MaybeUndefined<T>) -> FieldUpdate<T> {
    match v {
        MaybeUndefined::Undefined => FieldUpdate::Keep,
        MaybeUndefined::Null => FieldUpdate::Clear,
        MaybeUndefined::Value(x) => FieldUpdate::Set(x.clone()),
    }
}

/// The service's view of a parsed event; the payload kept is the event as received.
pub(crate) fn to_input(event: EventIn) -> HrEventInput {
    let payload = event.to_json().unwrap_or(Value::Null);
    let e = &event.employee;
    HrEventInput {
        event_id: event.event_id.clone(),
        event_type: match event.kind {
            EventKind::Joiner => EventType::Joiner,
            EventKind::Mover => EventType::Mover,
            EventKind::Leaver => EventType::Leaver,
        },
        occurred_at: event.occurred_at,
        employee: employee_record(e),
        payload,
        source: None,
    }
}

/// The service's view of an employee record as received.
pub(crate) fn employee_record(e: &EmployeeIn) -> EmployeeRecord {
    EmployeeRecord {
        employee_id: e.employee_id.clone(),
        user_name: field(&e.user_name),
        email: field(&e.email),
        given_name: field(&e.given_name),
        family_name: field(&e.family_name),
        display_name: field(&e.display_name),
        department: field(&e.department),
        title: field(&e.title),
        manager_employee_id: field(&e.manager_employee_id),
        attributes: field(&e.attributes),
    }
}

fn accepted(o: EventOutcome) -> EventAccepted {
    EventAccepted {
        event_id: o.event_id,
        result: o.result.as_str().to_owned(),
        detail: o.detail,
    }
}

pub struct EventsApi;

#[OpenApi(tag = "ApiTags::Events")]
impl EventsApi {
    /// Post one HR event
    ///
    /// Scope `events:write`. 202 only after it is durably committed.
    #[oai(path = "/events", method = "post", operation_id = "postEvent")]
    async fn post_event(
        &self,
        auth: ApiKey,
        roster: Data<&Roster>,
        /// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">` keyed with the server's
        /// webhook secret, `t` within 300 s of the server's clock; required when the server
        /// has a webhook secret.
        #[oai(name = "X-Roster-Signature")]
        _signature: Header<Option<String>>,
        body: JsonBody<EventIn>,
    ) -> Result<Accepted<EventAccepted>, ApiError> {
        let principal = auth.require(Permission::WriteEvents)?;
        let mut outcomes = roster
            .ingest_posted(principal, vec![to_input(body.0)])
            .await?;
        let outcome = outcomes
            .pop()
            .ok_or_else(|| ApiError::invalid("no event was processed"))?;
        Ok(Accepted::Accepted(Json(accepted(outcome))))
    }

    /// Post up to 1000 HR events
    ///
    /// Scope `events:write`. Applied in order in one transaction; one invalid event refuses the
    /// whole batch.
    #[oai(
        path = "/events:batch",
        method = "post",
        operation_id = "postEventBatch"
    )]
    async fn post_batch(
        &self,
        auth: ApiKey,
        roster: Data<&Roster>,
        /// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">` keyed with the server's
        /// webhook secret, `t` within 300 s of the server's clock; required when the server
        /// has a webhook secret.
        #[oai(name = "X-Roster-Signature")]
        _signature: Header<Option<String>>,
        body: JsonBody<EventBatchIn>,
    ) -> Result<Accepted<EventBatchAccepted>, ApiError> {
        let principal = auth.require(Permission::WriteEvents)?;
        let inputs: Vec<HrEventInput> = body.0.events.into_iter().map(to_input).collect();
        let outcomes = roster.ingest_posted(principal, inputs).await?;
        Ok(Accepted::Accepted(Json(EventBatchAccepted {
            results: outcomes.into_iter().map(accepted).collect(),
        })))
    }
}
