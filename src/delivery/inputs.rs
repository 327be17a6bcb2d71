//! What a job reads before it runs: its app, and for a user job the person (with their groups)
//! and the link. The engine reads them once for each claimed batch of jobs (`ClaimedBatch`),
//! in four queries instead of four per job; on-demand provisioning reads one person's
//! (`UserInputs::load`).
//!
//! Invariant: the batch is read after the claim committed. A job's inputs are therefore at
//! least as new as the end of the resource's previous job (which wrote its link in the same
//! transaction as its end, before this job could be claimed). A change to the person after the
//! read enqueues a new job, which runs after this one: deliveries converge, as when each job
//! read its own.
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter};

use super::people;
use crate::mapping::IdentityView;
use crate::store::entity::{app, identity, job, link};
use crate::store::queue::ResourceKind;
use crate::store::shapes;

/// A user job's inputs: the person as mappings see them (`None`: no such identity any more)
/// and their link in the job's app.
#[derive(Debug, Clone, Default)]
pub struct UserInputs {
    pub person: Option<IdentityView>,
    pub link: Option<link::Model>,
}

impl UserInputs {
    /// One person's inputs for one app, read now.
    pub async fn load(
        conn: &impl ConnectionTrait,
        app_id: &str,
        identity_id: &str,
    ) -> Result<Self, DbErr> {
        let person = match identity::Entity::find_by_id(identity_id).one(conn).await? {
            Some(model) => Some(people::load_view(conn, &model).await?),
            None => None,
        };
        let link = super::execute::find_link(conn, app_id, ResourceKind::User, identity_id).await?;
        Ok(Self { person, link })
    }
}

/// The inputs of a claimed batch of jobs.
#[derive(Debug, Default)]
pub struct ClaimedBatch {
    /// Shared with the batch's jobs, not copied into each (an app's settings are large).
    apps: HashMap<String, Arc<app::Model>>,
    people: HashMap<String, IdentityView>,
    /// Identity ids whose person and links were read (absent from `people`: deleted).
    users_read: HashSet<String>,
    links: HashMap<(String, String), link::Model>,
}

impl ClaimedBatch {
    /// Reads the apps of `jobs`, and the people and user links of their user jobs.
    pub async fn load(conn: &impl ConnectionTrait, jobs: &[job::Model]) -> Result<Self, DbErr> {
        let app_ids: HashSet<&str> = jobs.iter().map(|j| j.app_id.as_str()).collect();
        let user_ids: HashSet<&str> = jobs
            .iter()
            .filter(|j| ResourceKind::parse(&j.resource_kind) == ResourceKind::User)
            .map(|j| j.resource_id.as_str())
            .collect();
        let apps = app::Entity::find()
            .filter(app::Column::Id.is_in(shapes::padded(app_ids.iter().map(|s| (*s).to_owned()))))
            .all(conn)
            .await?
            .into_iter()
            .map(|a| (a.id.clone(), Arc::new(a)))
            .collect();
        let mut batch = Self {
            apps,
            users_read: user_ids.iter().map(|s| (*s).to_owned()).collect(),
            ..Self::default()
        };
        if user_ids.is_empty() {
            return Ok(batch);
        }
        let persons = identity::Entity::find()
            .filter(
                identity::Column::Id
                    .is_in(shapes::padded(user_ids.iter().map(|s| (*s).to_owned()))),
            )
            .all(conn)
            .await?;
        let employee_ids: Vec<String> = persons.iter().map(|p| p.employee_id.clone()).collect();
        let mut groups = people::group_names_of(conn, &employee_ids).await?;
        batch.people = persons
            .into_iter()
            .map(|p| {
                let names = groups.remove(&p.employee_id).unwrap_or_default();
                (p.id.clone(), people::view_of(&p, names))
            })
            .collect();
        batch.links = link::Entity::find()
            .filter(
                link::Column::AppId.is_in(shapes::padded(app_ids.iter().map(|s| (*s).to_owned()))),
            )
            .filter(link::Column::ResourceKind.eq(ResourceKind::User.as_str()))
            .filter(
                link::Column::ResourceId
                    .is_in(shapes::padded(user_ids.iter().map(|s| (*s).to_owned()))),
            )
            .all(conn)
            .await?
            .into_iter()
            .map(|l| ((l.app_id.clone(), l.resource_id.clone()), l))
            .collect();
        Ok(batch)
    }

    /// The job's app as read with the batch; `None` when it was deleted.
    #[must_use]
    pub fn app(&self, id: &str) -> Option<&Arc<app::Model>> {
        self.apps.get(id)
    }

    /// The inputs of a user job of this batch; `None` if the batch did not read them.
    #[must_use]
    pub fn user(&self, app_id: &str, identity_id: &str) -> Option<UserInputs> {
        if !self.users_read.contains(identity_id) {
            return None;
        }
        Some(UserInputs {
            person: self.people.get(identity_id).cloned(),
            link: self
                .links
                .get(&(app_id.to_owned(), identity_id.to_owned()))
                .cloned(),
        })
    }
}
