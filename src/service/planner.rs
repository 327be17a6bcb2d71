//! Which apps need a sync after a change: the job rows the delivery engine picks up.
//!
//! Level-triggered (DESIGN §5): a job only says "make app A's copy of X match roster"; what to
//! send is decided when it runs. So the planner errs on the side of enqueueing: an app gets a job
//! when the person is in its scope before or after the change, or already has an account there.
use std::collections::HashSet;

use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};

use super::ServiceResult;
use super::apps::{AppSettings, settings_of};
use crate::delivery::people;
use crate::mapping::IdentityView;
use crate::store::entity::{app, identity, link};
use crate::store::queue::{self, JobRequest, Lane, ResourceKind};

/// Every app with its parsed settings.
pub async fn apps_with_settings(
    conn: &impl ConnectionTrait,
) -> ServiceResult<Vec<(app::Model, AppSettings)>> {
    app::Entity::find()
        .all(conn)
        .await?
        .into_iter()
        .map(|a| {
            let s = settings_of(&a)?;
            Ok((a, s))
        })
        .collect()
}

/// Jobs for one person's change. `before` is `None` for someone new; `changed_groups` are the
/// names of groups whose membership this change altered (for group push).
#[must_use]
pub fn plan_person_change(
    apps: &[(app::Model, AppSettings)],
    before: Option<&IdentityView>,
    after: &IdentityView,
    linked_apps: &HashSet<String>,
    changed_groups: &[String],
    hr_event_id: Option<&str>,
    now_ms: i64,
) -> Vec<JobRequest> {
    let mut jobs = Vec::new();
    for (app, settings) in apps {
        let was = before.is_some_and(|b| settings.scope.admits(b));
        let is = settings.scope.admits(after);
        let linked = linked_apps.contains(&app.id);
        if is || was || linked {
            let lane = if is { Lane::Normal } else { Lane::Deprovision };
            jobs.push(JobRequest {
                app_id: app.id.clone(),
                kind: ResourceKind::User,
                resource_id: after.id.clone(),
                lane,
                run_at_ms: now_ms,
                hr_event_id: hr_event_id.map(str::to_owned),
            });
        }
        for g in changed_groups {
            if settings.group_push.contains(g) {
                jobs.push(group_job(&app.id, g, now_ms));
            }
        }
    }
    jobs
}

/// A group-push job; the resource is the group's name (stable across the group's re-creation).
fn group_job(app_id: &str, group_name: &str, now_ms: i64) -> JobRequest {
    JobRequest {
        app_id: app_id.to_owned(),
        kind: ResourceKind::Group,
        resource_id: group_name.to_owned(),
        lane: Lane::Normal,
        run_at_ms: now_ms,
        hr_event_id: None,
    }
}

/// A job for every person the app assigns or has an account for, and for each pushed group:
/// the initial sync of a new app, or a re-sync after its scope or mappings changed.
pub async fn plan_full_sync(
    conn: &impl ConnectionTrait,
    app: &app::Model,
    settings: &AppSettings,
) -> ServiceResult<()> {
    let memberships = people::all_group_names(conn).await?;
    let linked: HashSet<String> = link::Entity::find()
        .filter(link::Column::AppId.eq(app.id.as_str()))
        .filter(link::Column::ResourceKind.eq(ResourceKind::User.as_str()))
        .all(conn)
        .await?
        .into_iter()
        .map(|l| l.resource_id)
        .collect();
    let now = queue::now_ms();
    let mut jobs = Vec::new();
    for person in identity::Entity::find().all(conn).await? {
        let groups = memberships
            .get(&person.employee_id)
            .cloned()
            .unwrap_or_default();
        let view = people::view_of(&person, groups);
        let is = settings.scope.admits(&view);
        if is || linked.contains(&view.id) {
            jobs.push(JobRequest {
                app_id: app.id.clone(),
                kind: ResourceKind::User,
                resource_id: view.id.clone(),
                lane: if is { Lane::Normal } else { Lane::Deprovision },
                run_at_ms: now,
                hr_event_id: None,
            });
        }
    }
    for g in &settings.group_push {
        jobs.push(group_job(&app.id, g, now));
    }
    queue::enqueue(conn, &jobs).await?;
    Ok(())
}

/// After a group's membership changed: a job for each affected person in every app whose
/// scope, role rules or group push names the group, and a group-push job where pushed.
pub async fn plan_group_change(
    conn: &impl ConnectionTrait,
    group_name: &str,
    affected_employee_ids: &[String],
) -> ServiceResult<()> {
    let apps = apps_with_settings(conn).await?;
    let relevant: Vec<&(app::Model, AppSettings)> = apps
        .iter()
        .filter(|(_, s)| {
            s.scope.groups.iter().any(|g| g == group_name)
                || s.group_push.iter().any(|g| g == group_name)
                || s.role_mapping
                    .as_ref()
                    .is_some_and(|r| r.rules.iter().any(|rule| rule.group == group_name))
        })
        .collect();
    if relevant.is_empty() {
        return Ok(());
    }
    let now = queue::now_ms();
    let people = if affected_employee_ids.is_empty() {
        Vec::new()
    } else {
        identity::Entity::find()
            .filter(identity::Column::EmployeeId.is_in(affected_employee_ids.iter().cloned()))
            .all(conn)
            .await?
    };
    // The groups as they are after the change: whoever it takes out of an app's scope gets a
    // deprovision-lane job, so that the deletion guard on the event path weighs it (a scope
    // group deleted or emptied would otherwise deprovision everyone past the guard).
    let mut groups_of = people::group_names_of(
        conn,
        &people
            .iter()
            .map(|p| p.employee_id.clone())
            .collect::<Vec<_>>(),
    )
    .await?;
    let views: Vec<IdentityView> = people
        .iter()
        .map(|p| people::view_of(p, groups_of.remove(&p.employee_id).unwrap_or_default()))
        .collect();
    let mut jobs = Vec::new();
    for (app, settings) in relevant {
        for person in &views {
            let lane = if settings.scope.admits(person) {
                Lane::Normal
            } else {
                Lane::Deprovision
            };
            jobs.push(JobRequest {
                app_id: app.id.clone(),
                kind: ResourceKind::User,
                resource_id: person.id.clone(),
                lane,
                run_at_ms: now,
                hr_event_id: None,
            });
        }
        if settings.group_push.iter().any(|g| g == group_name) {
            jobs.push(group_job(&app.id, group_name, now));
        }
    }
    queue::enqueue(conn, &jobs).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::AppScope;

    fn person(status: &str, email: &str, groups: &[&str]) -> IdentityView {
        IdentityView {
            id: "i1".into(),
            employee_id: "E1".into(),
            email: Some(email.into()),
            status: status.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            attributes: serde_json::json!({}),
            ..Default::default()
        }
    }

    #[test]
    fn scope_needs_active_status_a_listed_group_and_a_managed_domain() {
        let scope = AppScope {
            groups: vec!["sales".into()],
            email_domains: Some(vec!["example.com".into()]),
        };
        let check = |p: IdentityView, want: bool| assert_eq!(scope.admits(&p), want, "{p:?}");
        check(person("active", "a@example.com", &["sales"]), true);
        check(person("active", "a@EXAMPLE.com", &["sales"]), true);
        check(person("terminated", "a@example.com", &["sales"]), false);
        check(person("active", "a@example.com", &["eng"]), false);
        check(person("active", "a@evil-example.com", &["sales"]), false);
        check(person("active", "a@sub.example.com", &["sales"]), false);
        let everyone = AppScope::default();
        assert!(everyone.admits(&person("active", "x@other.org", &[])));
    }
}
