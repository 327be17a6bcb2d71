//! What a job writes besides its queue end: its links and the follow-up jobs it implies. A job
//! collects them here instead of writing them; the finisher writes them in the same transaction
//! as, and before, the job's end (`finisher::write_staged`), so 32 workers do not each take
//! SQLite's lock and flush the disk for one row, and a follow-up job (a pushed group's update)
//! is never visible before the link it depends on.
//!
//! Invariant: a later write for the same link supersedes an earlier one of the same job, so the
//! last state staged is the one stored.
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::store::entity::link;
use crate::store::queue::{JobRequest, ResourceKind};

/// The full new state of one link row (`last_error` is cleared).
#[derive(Debug, Clone, PartialEq)]
pub struct LinkRow {
    pub target_id: Option<String>,
    pub snapshot: Option<Value>,
    pub snapshot_hash: Option<String>,
    pub state: String,
    pub delete_after: Option<i64>,
    /// `updated_at`; also `created_at` when the row is new.
    pub at: DateTime<Utc>,
}

impl LinkRow {
    /// `model` as it will be once this row is stored.
    pub fn apply_to(&self, model: &mut link::Model) {
        model.target_id.clone_from(&self.target_id);
        model.snapshot.clone_from(&self.snapshot);
        model.snapshot_hash.clone_from(&self.snapshot_hash);
        model.state.clone_from(&self.state);
        model.delete_after = self.delete_after;
        model.last_error = None;
        model.updated_at = self.at;
    }

    /// The row as stored now, to be written again with changes.
    #[must_use]
    pub fn from_model(model: &link::Model, at: DateTime<Utc>) -> Self {
        Self {
            target_id: model.target_id.clone(),
            snapshot: model.snapshot.clone(),
            snapshot_hash: model.snapshot_hash.clone(),
            state: model.state.clone(),
            delete_after: model.delete_after,
            at,
        }
    }
}

/// One staged link write, keyed like the unique index `uq_link_app_resource`.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkWrite {
    pub app_id: String,
    pub kind: ResourceKind,
    pub resource_id: String,
    /// The row as it will be stored; `None` deletes it.
    pub row: Option<LinkRow>,
}

impl LinkWrite {
    fn same_key(&self, app_id: &str, kind: ResourceKind, resource_id: &str) -> bool {
        self.app_id == app_id && self.kind == kind && self.resource_id == resource_id
    }
}

/// A job's staged writes, in the order it made them.
#[derive(Debug, Default, Clone)]
pub struct JobWrites {
    links: Vec<LinkWrite>,
    jobs: Vec<JobRequest>,
}

impl JobWrites {
    /// Stages a link write; it supersedes an earlier one for the same link. Returns it as
    /// staged.
    pub fn link(&mut self, write: LinkWrite) -> &LinkWrite {
        self.links
            .retain(|w| !w.same_key(&write.app_id, write.kind, &write.resource_id));
        self.links.push(write);
        &self.links[self.links.len() - 1]
    }

    /// Stages follow-up jobs.
    pub fn enqueue(&mut self, jobs: impl IntoIterator<Item = JobRequest>) {
        self.jobs.extend(jobs);
    }

    /// The write staged for a link, if any: what it will be once the job's writes are stored.
    #[must_use]
    pub fn staged_link(
        &self,
        app_id: &str,
        kind: ResourceKind,
        resource_id: &str,
    ) -> Option<&LinkWrite> {
        self.links
            .iter()
            .rev()
            .find(|w| w.same_key(app_id, kind, resource_id))
    }

    #[must_use]
    pub fn links(&self) -> &[LinkWrite] {
        &self.links
    }

    #[must_use]
    pub fn jobs(&self) -> &[JobRequest] {
        &self.jobs
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.links.is_empty() && self.jobs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::queue::Lane;

    fn write(resource_id: &str, state: &str) -> LinkWrite {
        LinkWrite {
            app_id: "a".into(),
            kind: ResourceKind::User,
            resource_id: resource_id.into(),
            row: Some(LinkRow {
                target_id: Some("t".into()),
                snapshot: None,
                snapshot_hash: None,
                state: state.into(),
                delete_after: None,
                at: Utc::now(),
            }),
        }
    }

    #[test]
    fn a_later_write_for_the_same_link_supersedes_the_earlier_one() {
        let mut w = JobWrites::default();
        assert!(w.is_empty());
        w.link(write("u1", "linked"));
        w.link(write("u2", "linked"));
        w.link(write("u1", "deactivated"));
        assert_eq!(w.links().len(), 2);
        let staged = w.staged_link("a", ResourceKind::User, "u1");
        assert_eq!(
            staged
                .and_then(|l| l.row.as_ref())
                .map(|r| r.state.as_str()),
            Some("deactivated")
        );
        assert!(w.staged_link("a", ResourceKind::Group, "u1").is_none());
        w.enqueue([JobRequest {
            app_id: "a".into(),
            kind: ResourceKind::Group,
            resource_id: "g".into(),
            lane: Lane::Normal,
            run_at_ms: 0,
            hr_event_id: None,
        }]);
        assert_eq!(w.jobs().len(), 1);
    }
}
