//! Reading identities (they are written only by HR events).
use sea_orm::sea_query::ExprTrait;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::{Roster, ServiceError, ServiceResult};
use crate::delivery::people;
use crate::store::entity::{app, identity, link};

pub struct IdentityDetail {
    pub model: identity::Model,
    pub groups: Vec<String>,
    /// Each app's link: (app, link).
    pub links: Vec<(app::Model, link::Model)>,
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

    /// By roster id or by employee id.
    pub async fn get_identity(&self, id: &str) -> ServiceResult<IdentityDetail> {
        let db = self.db();
        let model = identity::Entity::find()
            .filter(
                identity::Column::Id
                    .eq(id)
                    .or(identity::Column::EmployeeId.eq(id)),
            )
            .one(db)
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
