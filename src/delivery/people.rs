//! roster's people as mappings see them: an identity row and its group names become a
//! `mapping::IdentityView`. One place for the planner, the delivery executor and reconciliation.
use std::collections::{HashMap, HashSet};

use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter};

use crate::mapping::IdentityView;
use crate::store::entity::{group, group_member, identity};
use crate::store::shapes;

#[must_use]
pub fn view_of(model: &identity::Model, groups: Vec<String>) -> IdentityView {
    IdentityView {
        id: model.id.clone(),
        employee_id: model.employee_id.clone(),
        user_name: model.user_name.clone(),
        email: model.email.clone(),
        given_name: model.given_name.clone(),
        family_name: model.family_name.clone(),
        display_name: model.display_name.clone(),
        department: model.department.clone(),
        title: model.title.clone(),
        manager_employee_id: model.manager_employee_id.clone(),
        attributes: model.attributes.clone(),
        status: model.status.clone(),
        groups,
    }
}

/// Group names of one person (static and rule memberships alike), sorted.
pub async fn group_names(
    conn: &impl ConnectionTrait,
    employee_id: &str,
) -> Result<Vec<String>, DbErr> {
    let mut by_employee = group_names_of(conn, &[employee_id.to_owned()]).await?;
    Ok(by_employee.remove(employee_id).unwrap_or_default())
}

/// Group names of several people by employee id, sorted, in two queries. People in no group
/// are absent from the map.
pub async fn group_names_of(
    conn: &impl ConnectionTrait,
    employee_ids: &[String],
) -> Result<HashMap<String, Vec<String>>, DbErr> {
    if employee_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let memberships = group_member::Entity::find()
        .filter(
            group_member::Column::EmployeeId.is_in(shapes::padded(employee_ids.iter().cloned())),
        )
        .all(conn)
        .await?;
    if memberships.is_empty() {
        return Ok(HashMap::new());
    }
    let group_ids: HashSet<&str> = memberships.iter().map(|m| m.group_id.as_str()).collect();
    let names: HashMap<String, String> = group::Entity::find()
        .filter(group::Column::Id.is_in(shapes::padded(group_ids.into_iter().map(str::to_owned))))
        .all(conn)
        .await?
        .into_iter()
        .map(|g| (g.id, g.name))
        .collect();
    Ok(names_by_employee(memberships, &names))
}

/// Memberships turned into sorted group names per employee; memberships of groups not in
/// `names` (deleted meanwhile) are dropped.
fn names_by_employee(
    memberships: Vec<group_member::Model>,
    names: &HashMap<String, String>,
) -> HashMap<String, Vec<String>> {
    let mut by_employee: HashMap<String, Vec<String>> = HashMap::new();
    for m in memberships {
        if let Some(name) = names.get(&m.group_id) {
            by_employee
                .entry(m.employee_id)
                .or_default()
                .push(name.clone());
        }
    }
    for groups in by_employee.values_mut() {
        groups.sort();
    }
    by_employee
}

/// Everyone's group names by employee id, sorted, in two queries.
pub async fn all_group_names(
    conn: &impl ConnectionTrait,
) -> Result<HashMap<String, Vec<String>>, DbErr> {
    let names: HashMap<String, String> = group::Entity::find()
        .all(conn)
        .await?
        .into_iter()
        .map(|g| (g.id, g.name))
        .collect();
    let memberships = group_member::Entity::find().all(conn).await?;
    Ok(names_by_employee(memberships, &names))
}

/// One person's view, with their groups read now.
pub async fn load_view(
    conn: &impl ConnectionTrait,
    person: &identity::Model,
) -> Result<IdentityView, DbErr> {
    Ok(view_of(
        person,
        group_names(conn, &person.employee_id).await?,
    ))
}
