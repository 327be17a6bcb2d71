//! A run's report in the fixed shape of DESIGN §6, for `GET /api/v1/reconcile-runs/{id}` and
//! `roster reconcile --json` alike.
use serde::{Deserialize, Serialize};

use super::classify::{ActionKind, Class, Finding};
use super::groups::GroupFinding;
use crate::mapping::Difference;

/// How many findings of each class; the field names are fixed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub in_sync: u64,
    pub drifted: u64,
    pub missing: u64,
    pub orphan: u64,
    pub unmatched: u64,
    pub unmanaged: u64,
    pub adoptable: u64,
    /// Added after the others: runs recorded before it have none.
    #[serde(default)]
    pub conflict: u64,
}

impl Counts {
    pub fn add(&mut self, finding: &Finding) {
        *self.slot(finding.class) += 1;
    }

    #[must_use]
    pub fn get(&self, class: Class) -> u64 {
        match class {
            Class::InSync => self.in_sync,
            Class::Drifted => self.drifted,
            Class::Missing => self.missing,
            Class::Orphan => self.orphan,
            Class::Unmatched => self.unmatched,
            Class::Unmanaged => self.unmanaged,
            Class::Adoptable => self.adoptable,
            Class::Conflict => self.conflict,
        }
    }

    /// A finding counted as `from` turned out to be `to` (a rewritten item).
    pub fn reclassify(&mut self, from: Class, to: Class) {
        let slot = self.slot(from);
        *slot = slot.saturating_sub(1);
        *self.slot(to) += 1;
    }

    /// Every finding counted; accounts read are this minus `missing`.
    #[must_use]
    pub fn total(&self) -> u64 {
        Class::ALL.iter().map(|&class| self.get(class)).sum()
    }

    fn slot(&mut self, class: Class) -> &mut u64 {
        match class {
            Class::InSync => &mut self.in_sync,
            Class::Drifted => &mut self.drifted,
            Class::Missing => &mut self.missing,
            Class::Orphan => &mut self.orphan,
            Class::Unmatched => &mut self.unmatched,
            Class::Unmanaged => &mut self.unmanaged,
            Class::Adoptable => &mut self.adoptable,
            Class::Conflict => &mut self.conflict,
        }
    }
}

/// How many pushed and target groups fell in each class (the report's `groups`). Groups are
/// never `orphan` or `unmatched`: a target group roster does not push is `unmanaged`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCounts {
    pub in_sync: u64,
    pub drifted: u64,
    pub missing: u64,
    pub unmanaged: u64,
    pub adoptable: u64,
}

impl GroupCounts {
    pub fn add(&mut self, finding: &GroupFinding) {
        match finding.class {
            Class::InSync => self.in_sync += 1,
            Class::Drifted => self.drifted += 1,
            Class::Missing => self.missing += 1,
            Class::Adoptable => self.adoptable += 1,
            Class::Unmanaged | Class::Orphan | Class::Unmatched | Class::Conflict => {
                self.unmanaged += 1;
            }
        }
    }

    #[must_use]
    pub fn get(&self, class: Class) -> u64 {
        match class {
            Class::InSync => self.in_sync,
            Class::Drifted => self.drifted,
            Class::Missing => self.missing,
            Class::Unmanaged => self.unmanaged,
            Class::Adoptable => self.adoptable,
            Class::Orphan | Class::Unmatched | Class::Conflict => 0,
        }
    }
}

/// What an item is about: a target account (or a person without one) or a group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    #[default]
    User,
    Group,
}

impl Resource {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::User => "user",
            Resource::Group => "group",
        }
    }
}

/// `state` of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    Completed,
    /// The deletion guard held the run's deprovisions.
    AwaitingApproval,
    Failed,
}

/// One entry of `items`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportItem {
    /// `user` (the fields of DESIGN §6) or `group`.
    #[serde(default)]
    pub resource: Resource,
    pub class: Class,
    pub target_id: Option<String>,
    pub user_name: Option<String>,
    pub identity_id: Option<String>,
    pub differences: Vec<Difference>,
    pub action: ActionKind,
    /// Groups only: roster's group name (the target's `displayName` for unmanaged groups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

impl From<&Finding> for ReportItem {
    fn from(finding: &Finding) -> Self {
        Self {
            resource: Resource::User,
            display_name: None,
            class: finding.class,
            target_id: finding.target_id.clone(),
            user_name: finding.user_name.clone(),
            identity_id: finding.identity_id.clone(),
            differences: finding.differences.clone(),
            action: finding.action.kind(),
        }
    }
}

impl From<&GroupFinding> for ReportItem {
    fn from(finding: &GroupFinding) -> Self {
        Self {
            resource: Resource::Group,
            class: finding.class,
            target_id: finding.target_id.clone(),
            user_name: None,
            identity_id: None,
            differences: finding.differences(),
            action: finding.action,
            display_name: finding.display_name.clone(),
        }
    }
}

/// A run's report: `{id, app_id, state, dry_run, counts, writes, items}`, plus `groups`: the
/// counts of the group findings (`counts` counts accounts only, as before).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub id: String,
    pub app_id: String,
    pub state: RunState,
    pub dry_run: bool,
    pub counts: Counts,
    #[serde(default)]
    pub groups: GroupCounts,
    /// SCIM writes the run made (zero for dry runs and report mode).
    pub writes: u64,
    pub items: Vec<ReportItem>,
}

impl Report {
    /// A run that has just started: nothing counted, nothing written.
    #[must_use]
    pub fn new(id: impl Into<String>, app_id: impl Into<String>, dry_run: bool) -> Self {
        Self {
            id: id.into(),
            app_id: app_id.into(),
            state: RunState::Running,
            dry_run,
            counts: Counts::default(),
            groups: GroupCounts::default(),
            writes: 0,
            items: Vec::new(),
        }
    }

    /// Counts the finding and lists it.
    pub fn record(&mut self, finding: &Finding) {
        self.counts.add(finding);
        self.items.push(ReportItem::from(finding));
    }

    /// Counts the group finding and lists it.
    pub fn record_group(&mut self, finding: &GroupFinding) {
        self.groups.add(finding);
        self.items.push(ReportItem::from(finding));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::mapping::Change;
    use crate::reconcile::classify::Action;
    use crate::settings::DeprovisionAction;

    fn finding(class: Class, action: Action) -> Finding {
        Finding {
            linked_target: None,
            class,
            target_id: Some("t-1".to_owned()),
            user_name: Some("ada@example.com".to_owned()),
            identity_id: Some("i-1".to_owned()),
            differences: Vec::new(),
            action,
        }
    }

    #[test]
    fn counts_use_the_fixed_names_and_add_by_class() {
        let mut counts = Counts::default();
        for class in Class::ALL {
            for _ in 0..=(class as usize) {
                counts.add(&finding(class, Action::None));
            }
        }
        assert_eq!(
            serde_json::to_value(counts).ok(),
            Some(
                json!({"in_sync": 1, "drifted": 2, "missing": 3, "orphan": 4,
                        "unmatched": 5, "unmanaged": 6, "adoptable": 7, "conflict": 8})
            )
        );
        assert_eq!(counts.total(), 36);
        assert_eq!(counts.get(Class::Unmanaged), 6);
    }

    #[test]
    fn report_has_the_design_shape_and_round_trips() {
        let mut report = Report::new("run-1", "app-1", true);
        let mut drifted = finding(
            Class::Drifted,
            Action::Patch(vec![Change {
                path: "name.givenName".to_owned(),
                value: Some(json!("Ada")),
            }]),
        );
        drifted.differences = vec![Difference {
            path: "name.givenName".to_owned(),
            roster: json!("Ada"),
            target: json!("Adaa"),
        }];
        report.record(&drifted);
        report.record(&Finding {
            linked_target: None,
            target_id: None,
            ..finding(Class::Missing, Action::Create)
        });
        report.record(&finding(
            Class::Orphan,
            Action::Deprovision(DeprovisionAction::Delete),
        ));
        report.record(&finding(Class::Adoptable, Action::Link));
        report.record_group(&GroupFinding {
            class: Class::Drifted,
            target_id: Some("g-1".to_owned()),
            display_name: Some("board-room".to_owned()),
            group: Some("board-room".to_owned()),
            renamed_from: None,
            missing_members: vec![crate::reconcile::groups::Member {
                value: "t-2".to_owned(),
                display: Some("bob@example.com".to_owned()),
            }],
            unexpected_members: vec![crate::reconcile::groups::Member {
                value: "t-9".to_owned(),
                display: None,
            }],
            action: ActionKind::Patch,
            target_state: None,
        });
        report.state = RunState::AwaitingApproval;

        let value = serde_json::to_value(&report).ok();
        assert_eq!(
            value,
            Some(json!({
                "id": "run-1", "app_id": "app-1", "state": "awaiting_approval", "dry_run": true,
                "counts": {"in_sync": 0, "drifted": 1, "missing": 1, "orphan": 1,
                           "unmatched": 0, "unmanaged": 0, "adoptable": 1, "conflict": 0},
                "groups": {"in_sync": 0, "drifted": 1, "missing": 0, "unmanaged": 0,
                           "adoptable": 0},
                "writes": 0,
                "items": [
                    {"resource": "user", "class": "drifted", "target_id": "t-1", "user_name": "ada@example.com",
                     "identity_id": "i-1",
                     "differences": [{"path": "name.givenName", "roster": "Ada", "target": "Adaa"}],
                     "action": "patch"},
                    {"resource": "user", "class": "missing", "target_id": null, "user_name": "ada@example.com",
                     "identity_id": "i-1", "differences": [], "action": "create"},
                    {"resource": "user", "class": "orphan", "target_id": "t-1", "user_name": "ada@example.com",
                     "identity_id": "i-1", "differences": [], "action": "delete"},
                    {"resource": "user", "class": "adoptable", "target_id": "t-1", "user_name": "ada@example.com",
                     "identity_id": "i-1", "differences": [], "action": "link"},
                    {"resource": "group", "class": "drifted", "target_id": "g-1",
                     "user_name": null, "identity_id": null, "display_name": "board-room",
                     "differences": [{"path": "members",
                                      "roster": [{"value": "t-2", "display": "bob@example.com"}],
                                      "target": [{"value": "t-9", "display": null}]}],
                     "action": "patch"}
                ]
            }))
        );
        let parsed: Option<Report> = value.and_then(|value| serde_json::from_value(value).ok());
        assert_eq!(parsed, Some(report));
    }
}
