//! Applying HR events to the store, many at a time.
//!
//! An [`EventSet`] is the events of one or more requests applied together: it reads once what
//! they all need (known event ids, the people, their group memberships and links), applies the
//! events in order against that state in memory, and writes the people, `hr_event` rows, audit
//! rows and jobs of the whole set at the end, new rows in multi-row statements. Only rule-group
//! memberships are written as they change. On SQLite every statement is a hand-off to the connection's thread,
//! so statements per event — not rows — are what bound ingest.
//!
//! Invariant: within a set, later events see earlier ones exactly as if each had been written
//! and read back (the in-memory state is the rows as they will be stored). A set is applied
//! inside one transaction or savepoint, so its end writes commit with it or not at all.
use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ActiveValue, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Set,
};
use serde_json::json;

use super::times::{self, FieldTimes};
use super::{
    DEFAULT_SOURCE, EventOutcome, EventResult, EventType, HrEventInput, IngestRequest, apply_record,
};
use crate::delivery::people;
use crate::mapping::{self, GroupRule};
use crate::service::apps::AppSettings;
use crate::service::{Principal, ServiceError, ServiceResult, groups, new_id, planner};
use crate::store::entity::{app, audit, group, group_member, hr_event, identity, link};
use crate::store::{is_postgres, queue, shapes};

const ACTIVE: &str = "active";
const TERMINATED: &str = "terminated";

/// Rows per `IN (…)` list or multi-row insert: far below SQLite's 32 766 bound values. Lists
/// are padded and inserts split to lengths that repeat (`shapes`), so each statement is parsed
/// once, not once per batch size.
const CHUNK: usize = 512;

/// What every event of a commit group needs and no event changes: the apps and the groups.
pub(crate) struct Catalog {
    apps: Vec<(app::Model, AppSettings)>,
    /// Group id → name, for every group.
    names: HashMap<String, String>,
    /// The rule groups: id, name, rule.
    rules: Vec<(String, String, GroupRule)>,
}

impl Catalog {
    pub(crate) async fn load(conn: &impl ConnectionTrait) -> ServiceResult<Self> {
        let apps = planner::apps_with_settings(conn).await?;
        let mut names = HashMap::new();
        let mut rules = Vec::new();
        for g in group::Entity::find().all(conn).await? {
            if let Some(rule) = groups::rule_of(&g)? {
                rules.push((g.id.clone(), g.name.clone(), rule));
            }
            names.insert(g.id, g.name);
        }
        Ok(Self { apps, names, rules })
    }

    /// Sorted group names of a set of group ids (ids of deleted groups are skipped).
    fn names_of(&self, ids: &BTreeSet<String>) -> Vec<String> {
        let mut names: Vec<String> = ids
            .iter()
            .filter_map(|id| self.names.get(id).cloned())
            .collect();
        names.sort();
        names
    }
}

/// Events applied together, and the rows they leave to write at the end.
pub(crate) struct EventSet<'c> {
    catalog: &'c Catalog,
    /// Event ids already stored or recorded in this set, with their payloads' hashes.
    known_events: HashMap<String, String>,
    /// People by employee id, as stored (or as written by this set); absent: nobody yet.
    people: HashMap<String, identity::Model>,
    /// Group ids per employee id (static and rule memberships).
    memberships: HashMap<String, BTreeSet<String>>,
    /// App ids where an identity (by id) has a link.
    links: HashMap<String, HashSet<String>>,
    /// Employee ids of people this set created (inserted at the end) …
    new_people: HashSet<String>,
    /// … and of everyone it changed, in the order of their first change.
    changed_people: HashSet<String>,
    write_order: Vec<String>,
    hr_events: Vec<hr_event::ActiveModel>,
    audits: Vec<audit::ActiveModel>,
    jobs: Vec<queue::JobRequest>,
}

impl<'c> EventSet<'c> {
    /// Reads what `requests` need, in a handful of queries. On PostgreSQL the people's rows are
    /// locked (in employee id order), which serialises concurrent events for one person
    /// across instances.
    pub(crate) async fn load(
        conn: &impl ConnectionTrait,
        catalog: &'c Catalog,
        requests: &[&IngestRequest],
    ) -> ServiceResult<EventSet<'c>> {
        let events = || requests.iter().flat_map(|r| r.events.iter());
        let event_ids: BTreeSet<&str> = events().map(|e| e.event_id.as_str()).collect();
        let employee_ids: BTreeSet<&str> =
            events().map(|e| e.employee.employee_id.as_str()).collect();
        let event_ids: Vec<&str> = event_ids.into_iter().collect();
        let employee_ids: Vec<&str> = employee_ids.into_iter().collect();

        let mut known_events = HashMap::new();
        let mut unhashed = Vec::new();
        for chunk in event_ids.chunks(CHUNK) {
            let found: Vec<(String, Option<String>)> = hr_event::Entity::find()
                .select_only()
                .column(hr_event::Column::EventId)
                .column(hr_event::Column::PayloadHash)
                .filter(hr_event::Column::EventId.is_in(shapes::padded(chunk.iter().copied())))
                .into_tuple()
                .all(conn)
                .await?;
            for (event_id, hash) in found {
                match hash {
                    Some(hash) => {
                        known_events.insert(event_id, hash);
                    }
                    None => unhashed.push(event_id),
                }
            }
        }
        // Events stored before hashes were kept: their payloads are hashed here, once.
        for chunk in unhashed.chunks(CHUNK) {
            let found: Vec<(String, serde_json::Value)> = hr_event::Entity::find()
                .select_only()
                .column(hr_event::Column::EventId)
                .column(hr_event::Column::Payload)
                .filter(hr_event::Column::EventId.is_in(shapes::padded(chunk.iter().cloned())))
                .into_tuple()
                .all(conn)
                .await?;
            for (event_id, payload) in found {
                known_events.insert(event_id, times::payload_hash(&payload));
            }
        }
        let mut people = HashMap::new();
        let mut memberships: HashMap<String, BTreeSet<String>> = HashMap::new();
        for chunk in employee_ids.chunks(CHUNK) {
            let mut query = identity::Entity::find()
                .filter(identity::Column::EmployeeId.is_in(shapes::padded(chunk.iter().copied())))
                .order_by_asc(identity::Column::EmployeeId);
            if is_postgres(conn) {
                query = query.lock_exclusive();
            }
            for person in query.all(conn).await? {
                people.insert(person.employee_id.clone(), person);
            }
            for m in group_member::Entity::find()
                .filter(
                    group_member::Column::EmployeeId.is_in(shapes::padded(chunk.iter().copied())),
                )
                .all(conn)
                .await?
            {
                memberships
                    .entry(m.employee_id)
                    .or_default()
                    .insert(m.group_id);
            }
        }
        let identity_ids: Vec<String> = people.values().map(|p| p.id.clone()).collect();
        let mut links: HashMap<String, HashSet<String>> = HashMap::new();
        for chunk in identity_ids.chunks(CHUNK) {
            let found: Vec<(String, String)> = link::Entity::find()
                .select_only()
                .column(link::Column::ResourceId)
                .column(link::Column::AppId)
                .filter(link::Column::ResourceKind.eq(queue::ResourceKind::User.as_str()))
                .filter(link::Column::ResourceId.is_in(shapes::padded(chunk.iter().cloned())))
                .into_tuple()
                .all(conn)
                .await?;
            for (identity_id, app_id) in found {
                links.entry(identity_id).or_default().insert(app_id);
            }
        }
        Ok(EventSet {
            catalog,
            known_events,
            people,
            memberships,
            links,
            new_people: HashSet::new(),
            changed_people: HashSet::new(),
            write_order: Vec::new(),
            hr_events: Vec::new(),
            audits: Vec::new(),
            jobs: Vec::new(),
        })
    }

    /// Applies one request's events in order and leaves its audit row to write.
    pub(crate) async fn apply_request(
        &mut self,
        conn: &impl ConnectionTrait,
        request: &IngestRequest,
    ) -> ServiceResult<Vec<EventOutcome>> {
        let mut outcomes = Vec::with_capacity(request.events.len());
        for event in &request.events {
            outcomes.push(self.apply_event(conn, &request.principal, event).await?);
        }
        let summary = json!({
            "events": outcomes.len(),
            "results": outcomes.iter().map(|o| json!({"event_id": o.event_id, "result": o.result.as_str()})).collect::<Vec<_>>(),
        });
        self.audits.push(audit::ActiveModel {
            api_key_id: Set(Some(request.principal.key_id.clone())),
            action: Set("events.ingest".to_owned()),
            object_type: Set("hr_event".to_owned()),
            object_id: Set((outcomes.len() == 1).then(|| outcomes[0].event_id.clone())),
            before: Set(None),
            after: Set(Some(summary)),
            created_at: Set(Utc::now()),
            ..Default::default()
        });
        Ok(outcomes)
    }

    /// Writes the rows the set left for the end: people, events, audit rows, jobs.
    pub(crate) async fn flush(mut self, conn: &impl ConnectionTrait) -> ServiceResult<()> {
        let mut created = Vec::new();
        for employee_id in &self.write_order {
            let Some(person) = self.people.remove(employee_id) else {
                continue;
            };
            // Every column is written: the in-memory row is the whole truth about the person.
            let row = identity::ActiveModel::from(person).reset_all();
            if self.new_people.contains(employee_id) {
                created.push(row);
            } else {
                identity::Entity::update(row).exec(conn).await?;
            }
        }
        // Moved into the statements, not copied: a batch is up to 1 000 people.
        for chunk in shapes::into_chunks(created, CHUNK) {
            shapes::insert_rows(conn, chunk).await?;
        }
        for chunk in shapes::into_chunks(self.hr_events, CHUNK) {
            shapes::insert_rows(conn, chunk).await?;
        }
        for chunk in shapes::into_chunks(self.audits, CHUNK) {
            shapes::insert_rows(conn, chunk).await?;
        }
        queue::enqueue(conn, &self.jobs).await?;
        Ok(())
    }

    fn record(
        &mut self,
        principal: &Principal,
        event: &HrEventInput,
        hash: String,
        result: EventResult,
        detail: Option<String>,
    ) -> EventOutcome {
        self.known_events
            .insert(event.event_id.clone(), hash.clone());
        self.hr_events.push(hr_event::ActiveModel {
            event_id: Set(event.event_id.clone()),
            event_type: Set(event.event_type.as_str().into()),
            employee_id: Set(event.employee.employee_id.clone()),
            occurred_at: Set(event.occurred_at),
            payload: Set(event.payload.clone()),
            payload_hash: Set(Some(hash)),
            result: Set(result.as_str().into()),
            detail: Set(detail.clone()),
            api_key_id: Set(Some(principal.key_id.clone())),
            received_at: Set(Utc::now()),
            ..Default::default()
        });
        EventOutcome {
            event_id: event.event_id.clone(),
            result,
            detail,
        }
    }

    /// The conflict of an `event_id` received before with another payload, naming where the
    /// payloads differ (read from this set, or else from the store).
    async fn conflict(
        &self,
        conn: &impl ConnectionTrait,
        event: &HrEventInput,
    ) -> ServiceResult<ServiceError> {
        let in_set = self
            .hr_events
            .iter()
            .find_map(|row| match (&row.event_id, &row.payload) {
                (ActiveValue::Set(id), ActiveValue::Set(payload)) if *id == event.event_id => {
                    Some(payload.clone())
                }
                _ => None,
            });
        let before = match in_set {
            Some(payload) => Some(payload),
            None => {
                hr_event::Entity::find()
                    .select_only()
                    .column(hr_event::Column::Payload)
                    .filter(hr_event::Column::EventId.eq(event.event_id.as_str()))
                    .into_tuple::<serde_json::Value>()
                    .one(conn)
                    .await?
            }
        };
        let differing = before
            .map(|before| times::differences(&before, &event.payload))
            .unwrap_or_default();
        let fields = if differing.is_empty() {
            String::new()
        } else {
            format!(" (it differs in {})", differing.join(", "))
        };
        Ok(ServiceError::Conflict(format!(
            "event_id `{}` was already received with another payload{fields}; an event id names one event: send a changed event under a new id",
            event.event_id
        )))
    }

    async fn apply_event(
        &mut self,
        conn: &impl ConnectionTrait,
        principal: &Principal,
        event: &HrEventInput,
    ) -> ServiceResult<EventOutcome> {
        let hash = times::payload_hash(&event.payload);
        if let Some(known) = self.known_events.get(&event.event_id) {
            if *known != hash {
                return Err(self.conflict(conn, event).await?);
            }
            return Ok(EventOutcome {
                event_id: event.event_id.clone(),
                result: EventResult::Duplicate,
                detail: None,
            });
        }
        let employee = &event.employee;
        let at = event.occurred_at;
        let current = self.people.get(&employee.employee_id).cloned();
        if current.is_none()
            && event.event_type == EventType::Mover
            && !employee.user_name.is_set()
            && !employee.email.is_set()
        {
            let reason = "unknown employee, and no `user_name` or `email` to create them";
            return Ok(self.record(
                principal,
                event,
                hash,
                EventResult::Rejected,
                Some(reason.into()),
            ));
        }

        let now = Utc::now();
        // Someone unknown starts blank and terminated with no status time: a joiner
        // activates them, and a leaver leaves a record that an older joiner cannot undo.
        let mut saved = current.clone().unwrap_or_else(|| identity::Model {
            id: new_id(),
            employee_id: employee.employee_id.clone(),
            user_name: None,
            email: None,
            given_name: None,
            family_name: None,
            display_name: None,
            department: None,
            title: None,
            manager_employee_id: None,
            attributes: json!({}),
            status: TERMINATED.to_owned(),
            last_event_at: None,
            field_times: None,
            version: 0,
            source: event
                .source
                .clone()
                .unwrap_or_else(|| DEFAULT_SOURCE.to_owned()),
            created_at: now,
            updated_at: now,
        });
        let mut field_times = current.as_ref().map(FieldTimes::of).unwrap_or_default();
        let (filled, older) = apply_record(&mut saved, employee, |field| {
            let newer = field_times.admits(field, at);
            if newer {
                field_times.set(field, at);
            }
            newer
        });
        let wanted_status = match (event.event_type, &current) {
            (EventType::Joiner, _) => Some(ACTIVE),
            (EventType::Leaver, _) => Some(TERMINATED),
            // A mover creates whom it names, but never asserts a status: it cannot outvote a
            // leaver, even an older one that arrives later.
            (EventType::Mover, None) => {
                saved.status = ACTIVE.to_owned();
                None
            }
            (EventType::Mover, Some(_)) => None,
        };
        let mut status_lost = None;
        if let Some(wanted) = wanted_status {
            let last = field_times.get(times::STATUS);
            if saved.status == wanted {
                field_times.confirm(times::STATUS, at);
            } else if last.is_none_or(|last| at > last || (wanted == TERMINATED && at == last)) {
                // The leaver wins a tie; a joiner must be strictly newer to grant access.
                saved.status = wanted.to_owned();
                field_times.set(times::STATUS, at);
            } else {
                status_lost = last;
            }
        }
        let status_changed = current
            .as_ref()
            .is_none_or(|cur| cur.status != saved.status);
        let changed = current.is_none() || !filled.is_empty() || status_changed;
        let (result, detail) = match status_lost {
            Some(last) => {
                let mut detail = format!(
                    "older than the change to `{}` at {last} for {}; the status stays (at equal times the leaver wins)",
                    saved.status, employee.employee_id
                );
                if !filled.is_empty() {
                    detail.push_str(&format!(
                        "; filled the fields no newer event set: {}",
                        filled.join(", ")
                    ));
                }
                (EventResult::Stale, Some(detail))
            }
            // Nothing of it was newer: every field it carries, or the whole event, is older.
            None if !changed
                && (!older.is_empty()
                    || current
                        .as_ref()
                        .and_then(|cur| cur.last_event_at)
                        .is_some_and(|last| at < last)) =>
            {
                (
                    EventResult::Stale,
                    Some(format!(
                        "older than the last applied event for {}{}",
                        employee.employee_id,
                        if older.is_empty() {
                            String::new()
                        } else {
                            format!(": newer events set {}", older.join(", "))
                        }
                    )),
                )
            }
            None if !older.is_empty() => (
                EventResult::Applied,
                Some(format!(
                    "newer events set {}; kept their values",
                    older.join(", ")
                )),
            ),
            None if current.is_none() && event.event_type == EventType::Leaver => (
                EventResult::Applied,
                Some(format!(
                    "unknown employee {}: recorded as terminated, so an older joiner cannot activate them",
                    employee.employee_id
                )),
            ),
            None => (EventResult::Applied, None),
        };
        if result == EventResult::Stale && !changed {
            return Ok(self.record(principal, event, hash, result, detail));
        }

        let group_ids = self
            .memberships
            .get(&employee.employee_id)
            .cloned()
            .unwrap_or_default();
        let before_view = current
            .as_ref()
            .map(|cur| people::view_of(cur, self.catalog.names_of(&group_ids)));
        saved.field_times = Some(field_times.to_json());
        saved.last_event_at = Some(saved.last_event_at.map_or(at, |last| last.max(at)));
        saved.version += 1;
        saved.updated_at = now;
        // A snapshot's change makes its source the person's: its next snapshot may end them.
        if let Some(source) = &event.source {
            saved.source.clone_from(source);
        }
        if current.is_none() {
            self.new_people.insert(employee.employee_id.clone());
        }
        // The row is written at the end of the set (`flush`); later events read it from here.
        if self.changed_people.insert(saved.employee_id.clone()) {
            self.write_order.push(saved.employee_id.clone());
        }
        let (group_ids, changed_groups) = self.reevaluate_rules(conn, &saved, group_ids).await?;
        let after_view = people::view_of(&saved, self.catalog.names_of(&group_ids));
        self.memberships
            .insert(saved.employee_id.clone(), group_ids);
        let no_links = HashSet::new();
        let jobs = planner::plan_person_change(
            &self.catalog.apps,
            before_view.as_ref(),
            &after_view,
            self.links.get(&saved.id).unwrap_or(&no_links),
            &changed_groups,
            Some(&event.event_id),
            queue::now_ms(),
        );
        self.jobs.extend(jobs);
        // Moved in once nothing reads it any more: later events of the set read it from here.
        self.people.insert(saved.employee_id.clone(), saved);
        Ok(self.record(principal, event, hash, result, detail))
    }

    /// Rule groups decide membership from the person as now stored; returns the person's
    /// group ids afterwards and the names of the groups that gained or lost them.
    async fn reevaluate_rules(
        &self,
        conn: &impl ConnectionTrait,
        person: &identity::Model,
        mut group_ids: BTreeSet<String>,
    ) -> ServiceResult<(BTreeSet<String>, Vec<String>)> {
        if self.catalog.rules.is_empty() {
            return Ok((group_ids, Vec::new()));
        }
        // Rules see the memberships as they were, static and rule alike.
        let view = people::view_of(person, self.catalog.names_of(&group_ids));
        let mut changed = Vec::new();
        for (id, name, rule) in &self.catalog.rules {
            let wanted = mapping::evaluate_group_rule(rule, &view);
            let has = group_ids.contains(id);
            if wanted && !has {
                group_member::ActiveModel {
                    group_id: Set(id.clone()),
                    employee_id: Set(person.employee_id.clone()),
                }
                .insert(conn)
                .await?;
                group_ids.insert(id.clone());
                changed.push(name.clone());
            } else if !wanted && has {
                group_member::Entity::delete_many()
                    .filter(group_member::Column::GroupId.eq(id.as_str()))
                    .filter(group_member::Column::EmployeeId.eq(person.employee_id.as_str()))
                    .exec(conn)
                    .await?;
                group_ids.remove(id);
                changed.push(name.clone());
            }
        }
        Ok((group_ids, changed))
    }
}
