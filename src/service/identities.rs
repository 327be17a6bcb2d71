//! Reading identities (they are written only by HR events).
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::{Roster, ServiceError, ServiceResult};
use crate::delivery::people;
use crate::store::entity::{app, identity, link};

pub struct IdentityDetail {
    pub model: identity::Model,
    pub groups: Vec<String>,
    /// Each app's link: (app, link).
    pub links: Vec<(app::Model, link::Model)>,
}

/// The identity a caller names by roster id or by employee id. HR chooses employee ids, so one
/// may equal another identity's roster id: the roster id is tried first and always wins, so
/// no `employee_id` can take another identity's place in a look-up (the one `id OR
/// employee_id` query answered whichever row came first).
pub(crate) async fn find_identity(
    conn: &impl ConnectionTrait,
    key: &str,
) -> ServiceResult<Option<identity::Model>> {
    if let Some(found) = identity::Entity::find_by_id(key).one(conn).await? {
        return Ok(Some(found));
    }
    Ok(identity::Entity::find()
        .filter(identity::Column::EmployeeId.eq(key))
        .one(conn)
        .await?)
}

impl Roster {
    /// Ordered by id (time-ordered); `after` is the cursor from the previous page.
    pub async fn list_identities(
        &self,
        after: Option<&str>,
        status: Option<&str>,
        limit: u64,
    ) -> ServiceResult<Vec<identity::Model>> {
        let mut q = identity::Entity::find().order_by_asc(identity::Column::Id);
        if let Some(after) = after {
            q = q.filter(identity::Column::Id.gt(after));
        }
        if let Some(status) = status {
            q = q.filter(identity::Column::Status.eq(status));
        }
        Ok(q.limit(limit).all(self.db()).await?)
    }

    /// By roster id or by employee id (see [`find_identity`]).
    pub async fn get_identity(&self, id: &str) -> ServiceResult<IdentityDetail> {
        let db = self.db();
        let model = find_identity(db, id)
            .await?
            .ok_or_else(|| ServiceError::not_found("identity", id))?;
        let groups = people::group_names(db, &model.employee_id).await?;
        let rows = link::Entity::find()
            .filter(link::Column::ResourceKind.eq("user"))
            .filter(link::Column::ResourceId.eq(model.id.as_str()))
            .all(db)
            .await?;
        let apps = app::Entity::find()
            .filter(app::Column::Id.is_in(rows.iter().map(|l| l.app_id.clone())))
            .all(db)
            .await?;
        let links = rows
            .into_iter()
            .filter_map(|l| {
                let app = apps.iter().find(|a| a.id == l.app_id)?.clone();
                Some((app, l))
            })
            .collect();
        Ok(IdentityDetail {
            model,
            groups,
            links,
        })
    }
}
