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
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set, TryIntoModel,
};
use serde_json::json;

use super::{EventOutcome, EventResult, EventType, HrEventInput, IngestRequest, apply_record};
use crate::delivery::people;
use crate::mapping::{self, GroupRule};
use crate::service::apps::AppSettings;
use crate::service::{Principal, ServiceResult, groups, new_id, planner};
use crate::store::entity::{app, audit, group, group_member, hr_event, identity, link};
use crate::store::{is_postgres, queue};

/// Rows per `IN (…)` list or multi-row insert: far below SQLite's 32 766 bound values.
const CHUNK: usize = 500;

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
    /// Event ids already stored or recorded in this set.
    known_events: HashSet<String>,
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

        let mut known_events = HashSet::new();
        for chunk in event_ids.chunks(CHUNK) {
            let found: Vec<String> = hr_event::Entity::find()
                .select_only()
                .column(hr_event::Column::EventId)
                .filter(hr_event::Column::EventId.is_in(chunk.iter().copied()))
                .into_tuple()
                .all(conn)
                .await?;
            known_events.extend(found);
        }
        let mut people = HashMap::new();
        let mut memberships: HashMap<String, BTreeSet<String>> = HashMap::new();
        for chunk in employee_ids.chunks(CHUNK) {
            let mut query = identity::Entity::find()
                .filter(identity::Column::EmployeeId.is_in(chunk.iter().copied()))
                .order_by_asc(identity::Column::EmployeeId);
            if is_postgres(conn) {
                query = query.lock_exclusive();
            }
            for person in query.all(conn).await? {
                people.insert(person.employee_id.clone(), person);
            }
            for m in group_member::Entity::find()
                .filter(group_member::Column::EmployeeId.is_in(chunk.iter().copied()))
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
                .filter(link::Column::ResourceId.is_in(chunk.iter().cloned()))
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
        for chunk in created.chunks(CHUNK) {
            identity::Entity::insert_many(chunk.to_vec())
                .exec_without_returning(conn)
                .await?;
        }
        for chunk in self.hr_events.chunks(CHUNK) {
            hr_event::Entity::insert_many(chunk.to_vec())
                .exec_without_returning(conn)
                .await?;
        }
        for chunk in self.audits.chunks(CHUNK) {
            audit::Entity::insert_many(chunk.to_vec())
                .exec_without_returning(conn)
                .await?;
        }
        queue::enqueue(conn, &self.jobs).await?;
        Ok(())
    }

    fn record(
        &mut self,
        principal: &Principal,
        event: &HrEventInput,
        result: EventResult,
        detail: Option<String>,
    ) -> EventOutcome {
        self.known_events.insert(event.event_id.clone());
        self.hr_events.push(hr_event::ActiveModel {
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
        });
        EventOutcome {
            event_id: event.event_id.clone(),
            result,
            detail,
        }
    }

    async fn apply_event(
        &mut self,
        conn: &impl ConnectionTrait,
        principal: &Principal,
        event: &HrEventInput,
    ) -> ServiceResult<EventOutcome> {
        if self.known_events.contains(&event.event_id) {
            return Ok(EventOutcome {
                event_id: event.event_id.clone(),
                result: EventResult::Duplicate,
                detail: None,
            });
        }
        let employee = &event.employee;
        let current = self.people.get(&employee.employee_id).cloned();
        if let Some(cur) = &current
            && let Some(last) = cur.last_event_at
            && event.occurred_at < last
        {
            let detail = format!(
                "older than the last applied event for {} ({last})",
                employee.employee_id
            );
            return Ok(self.record(principal, event, EventResult::Stale, Some(detail)));
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
                return Ok(self.record(
                    principal,
                    event,
                    EventResult::Rejected,
                    Some(reason.into()),
                ));
            }
        }

        let group_ids = self
            .memberships
            .get(&employee.employee_id)
            .cloned()
            .unwrap_or_default();
        let before_view = current
            .as_ref()
            .map(|cur| people::view_of(cur, self.catalog.names_of(&group_ids)));
        let now = Utc::now();
        let status = match (event.event_type, &current) {
            (EventType::Joiner, _) => "active".to_owned(),
            (EventType::Leaver, _) => "terminated".to_owned(),
            (EventType::Mover, Some(cur)) => cur.status.clone(),
            (EventType::Mover, None) => "active".to_owned(),
        };
        // The row is written at the end of the set (`flush`); later events read it from here.
        let saved = match &current {
            Some(cur) => {
                let mut model: identity::ActiveModel = cur.clone().into();
                apply_record(&mut model, Some(cur), employee);
                model.status = Set(status);
                model.last_event_at = Set(Some(event.occurred_at));
                model.version = Set(cur.version + 1);
                model.updated_at = Set(now);
                model.try_into_model()?
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
                self.new_people.insert(employee.employee_id.clone());
                model.try_into_model()?
            }
        };
        if self.changed_people.insert(saved.employee_id.clone()) {
            self.write_order.push(saved.employee_id.clone());
        }
        self.people.insert(saved.employee_id.clone(), saved.clone());
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
        Ok(self.record(principal, event, EventResult::Applied, None))
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
