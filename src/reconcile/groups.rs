//! The group classifier: the groups an app pushes (`group_push`), as roster wants them, against
//! the target's `/Groups`, one group at a time (DESIGN §5, §6).
//!
//! What roster wants of a pushed group is what `delivery::execute::deliver_group` converges to:
//! a target group named after the roster group whose members are the accounts (target ids) of
//! the group's members that roster has linked in the app. The classifier compares exactly that.
//!
//! Order of the questions asked of a target group:
//!
//! 1. **Linked?** (its `id` is the target id of a pushed group's link) → `in_sync` or `drifted`
//!    (members added or removed by hand, or `displayName` changed), fixed by a PATCH of the
//!    members (add/remove, never PUT) and of `displayName`.
//! 2. **Named like a pushed group that has no link** (`displayName`, ignoring case, as SCIM
//!    compares it) → `adoptable`: fix mode links it (and patches it if it differs), as delivery
//!    would adopt it. A second target group of that name is `unmanaged`: roster never guesses.
//! 3. Otherwise → `unmanaged`: a group roster does not push is listed and never touched.
//!
//! Pushed groups no target group belonged to are `missing` at the end (fix: create).
//!
//! Memory: one flag per pushed group and the pushed groups' wanted members (roster's data);
//! target groups are not kept.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Value, json};

use super::classify::{ActionKind, Class};
use crate::mapping::Difference;
use crate::scim::id_of;

/// One pushed group as roster wants it in the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredGroup {
    /// roster's group name: the target group's `displayName`.
    pub name: String,
    /// The target id of the group's link, if roster created or adopted one.
    pub link_target_id: Option<String>,
    /// Wanted members: target ids of the members' linked accounts, each with the `userName`
    /// roster last applied to it (for the report), if known.
    pub members: BTreeMap<String, Option<String>>,
}

/// A member in a group finding's differences: the account's target id and, when known, its
/// `userName` (SCIM's `display`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub value: String,
    pub display: Option<String>,
}

/// One classified target group (or, for `missing`, one pushed group without a target group).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupFinding {
    /// `in_sync`, `drifted`, `missing`, `unmanaged` or `adoptable`.
    pub class: Class,
    /// The target group's `id`; `None` for `missing`.
    pub target_id: Option<String>,
    /// roster's group name for pushed groups; the target's `displayName` for unmanaged ones.
    pub display_name: Option<String>,
    /// The pushed group's name (`None` for unmanaged groups).
    pub group: Option<String>,
    /// The target's `displayName` when it differs from roster's name.
    pub renamed_from: Option<String>,
    /// Members roster wants that the target group lacks (removed by hand).
    pub missing_members: Vec<Member>,
    /// Members the target group has that roster does not want (added by hand).
    pub unexpected_members: Vec<Member>,
    /// `none`, `patch`, `create`, `link` or `link_and_patch`.
    pub action: ActionKind,
    /// What the target holds now, `{"displayName", "members": [ids]}`: the snapshot fix mode
    /// stores on the link so that the level-triggered group job sends the right PATCH.
    /// `None` for `missing` and `unmanaged`.
    pub target_state: Option<Value>,
}

impl GroupFinding {
    /// The report's `differences`: `displayName` (roster's name, the target's), then `members`
    /// with `roster` listing the members the target lacks and `target` the members roster does
    /// not want, each `{"value": id, "display": userName | null}`. Only the differences are
    /// listed, not the whole membership.
    #[must_use]
    pub fn differences(&self) -> Vec<Difference> {
        let mut differences = Vec::new();
        if let (Some(target), Some(roster)) = (&self.renamed_from, &self.group) {
            differences.push(Difference {
                path: "displayName".to_owned(),
                roster: json!(roster),
                target: json!(target),
            });
        }
        if !self.missing_members.is_empty() || !self.unexpected_members.is_empty() {
            let list = |members: &[Member]| {
                Value::Array(
                    members
                        .iter()
                        .map(|m| json!({"value": m.value, "display": m.display}))
                        .collect(),
                )
            };
            differences.push(Difference {
                path: "members".to_owned(),
                roster: list(&self.missing_members),
                target: list(&self.unexpected_members),
            });
        }
        differences
    }
}

/// One run's group classifier: feed it every target group once
/// ([`GroupClassifier::classify_group`]), then [`GroupClassifier::finish`] for the pushed groups
/// no target group belonged to.
#[derive(Debug, Clone)]
pub struct GroupClassifier {
    groups: Vec<DesiredGroup>,
    // Invariant: every index in the maps is a valid index of `groups`; `seen.len() == groups.len()`.
    by_target_id: HashMap<String, usize>,
    /// Lower-cased names of the pushed groups without a link target id.
    unlinked_by_name: HashMap<String, usize>,
    seen: Vec<bool>,
}

impl GroupClassifier {
    #[must_use]
    pub fn new(groups: Vec<DesiredGroup>) -> Self {
        let mut by_target_id = HashMap::new();
        let mut unlinked_by_name = HashMap::new();
        for (index, group) in groups.iter().enumerate() {
            match &group.link_target_id {
                Some(id) => {
                    by_target_id.entry(id.clone()).or_insert(index);
                }
                None => {
                    unlinked_by_name
                        .entry(group.name.to_lowercase())
                        .or_insert(index);
                }
            }
        }
        let seen = vec![false; groups.len()];
        Self {
            groups,
            by_target_id,
            unlinked_by_name,
            seen,
        }
    }

    /// Whether the app pushes no group (then `/Groups` need not be read at all).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The target ids of pushed groups' links that no classified group was: the listing may
    /// have missed them (a target that ignores `startIndex`), so the run reads each by id —
    /// classifying what it finds — before [`GroupClassifier::finish`] calls the rest
    /// `missing`, which drops their links.
    #[must_use]
    pub fn unseen_links(&self) -> Vec<String> {
        self.groups
            .iter()
            .zip(&self.seen)
            .filter(|(_, seen)| !**seen)
            .filter_map(|(group, _)| group.link_target_id.clone())
            .collect()
    }

    /// Whether [`GroupClassifier::classify_group`] would compare `group` with a pushed group
    /// (by its link, or by name for an unlinked one): then its members matter, and the run
    /// reads it by id when the listing left them out.
    #[must_use]
    pub fn concerns(&self, group: &Value) -> bool {
        let unseen = |index: &usize| !self.seen[*index];
        let linked = id_of(group)
            .and_then(|id| self.by_target_id.get(id))
            .is_some_and(unseen);
        linked
            || group
                .get("displayName")
                .and_then(Value::as_str)
                .and_then(|name| self.unlinked_by_name.get(&name.to_lowercase()))
                .is_some_and(unseen)
    }

    /// The wanted members (target ids) of the pushed group `group` concerns, if it concerns
    /// one ([`GroupClassifier::concerns`]): what a target that answers groups without members
    /// is asked about, member by member.
    #[must_use]
    pub fn wanted_members(&self, group: &Value) -> Option<Vec<String>> {
        let unseen = |index: &usize| !self.seen[*index];
        let index = id_of(group)
            .and_then(|id| self.by_target_id.get(id))
            .copied()
            .filter(unseen)
            .or_else(|| {
                group
                    .get("displayName")
                    .and_then(Value::as_str)
                    .and_then(|name| self.unlinked_by_name.get(&name.to_lowercase()))
                    .copied()
                    .filter(unseen)
            })?;
        Some(self.groups[index].members.keys().cloned().collect())
    }

    /// Classifies one group as the target returned it (a SCIM Group resource).
    pub fn classify_group(&mut self, group: &Value) -> GroupFinding {
        let target_id = id_of(group).map(str::to_owned);
        let target_name = group
            .get("displayName")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let linked = target_id
            .as_deref()
            .and_then(|id| self.by_target_id.get(id))
            .copied()
            .filter(|&index| !self.seen[index]);
        let tie = match linked {
            Some(index) => Some((index, true)),
            None => target_name
                .as_deref()
                .and_then(|name| self.unlinked_by_name.get(&name.to_lowercase()))
                .copied()
                .filter(|&index| !self.seen[index])
                .map(|index| (index, false)),
        };
        let Some((index, linked)) = tie else {
            return GroupFinding {
                class: Class::Unmanaged,
                target_id,
                display_name: target_name,
                group: None,
                renamed_from: None,
                missing_members: Vec::new(),
                unexpected_members: Vec::new(),
                action: ActionKind::None,
                target_state: None,
            };
        };
        self.seen[index] = true;
        let desired = &self.groups[index];
        let members = members_of(group);
        let missing_members: Vec<Member> = desired
            .members
            .iter()
            .filter(|(id, _)| !members.contains_key(id.as_str()))
            .map(|(id, name)| Member {
                value: id.clone(),
                display: name.clone(),
            })
            .collect();
        let unexpected_members: Vec<Member> = members
            .iter()
            .filter(|(id, _)| !desired.members.contains_key(**id))
            .map(|(id, display)| Member {
                value: (*id).to_owned(),
                display: display.map(str::to_owned),
            })
            .collect();
        let renamed_from = target_name.clone().filter(|name| *name != desired.name);
        let differs =
            renamed_from.is_some() || !missing_members.is_empty() || !unexpected_members.is_empty();
        let (class, action) = match (linked, differs) {
            (true, false) => (Class::InSync, ActionKind::None),
            (true, true) => (Class::Drifted, ActionKind::Patch),
            (false, false) => (Class::Adoptable, ActionKind::Link),
            (false, true) => (Class::Adoptable, ActionKind::LinkAndPatch),
        };
        let target_state = json!({
            "displayName": target_name,
            "members": members.keys().collect::<Vec<_>>(),
        });
        GroupFinding {
            class,
            target_id,
            display_name: Some(desired.name.clone()),
            group: Some(desired.name.clone()),
            renamed_from,
            missing_members,
            unexpected_members,
            action,
            target_state: Some(target_state),
        }
    }

    /// The pushed groups no target group belonged to: `missing`, each with `create`, in the
    /// order given.
    #[must_use]
    pub fn finish(self) -> Vec<GroupFinding> {
        self.groups
            .into_iter()
            .zip(self.seen)
            .filter(|(_, seen)| !seen)
            .map(|(desired, _)| GroupFinding {
                class: Class::Missing,
                target_id: None,
                display_name: Some(desired.name.clone()),
                group: Some(desired.name),
                renamed_from: None,
                missing_members: desired
                    .members
                    .into_iter()
                    .map(|(value, display)| Member { value, display })
                    .collect(),
                unexpected_members: Vec::new(),
                action: ActionKind::Create,
                target_state: None,
            })
            .collect()
    }
}

/// Whether the group as answered has a `members` attribute (any case) at all. Some targets
/// leave it out of listings: its absence says nothing about the membership, so comparing it
/// as empty would report (and "fix") every member as missing.
#[must_use]
pub fn lists_members(group: &Value) -> bool {
    group
        .as_object()
        .is_some_and(|object| object.keys().any(|key| key.eq_ignore_ascii_case("members")))
}

/// A target group's member ids (sorted, unique) with their `display`, if the target sends one.
fn members_of(group: &Value) -> BTreeMap<&str, Option<&str>> {
    let members = group
        .as_object()
        .and_then(|object| {
            object
                .iter()
                .find_map(|(key, value)| key.eq_ignore_ascii_case("members").then_some(value))
        })
        .and_then(Value::as_array);
    members
        .into_iter()
        .flatten()
        .filter_map(|member| {
            let value = member.get("value").and_then(Value::as_str)?;
            let display = member.get("display").and_then(Value::as_str);
            Some((value, display))
        })
        .collect()
}

/// Ids of the members a set of findings lists without a `display`: the run looks their
/// `userName`s up while it reads the target's users.
#[must_use]
pub fn unnamed_members(findings: &[GroupFinding]) -> BTreeSet<String> {
    findings
        .iter()
        .flat_map(|f| f.missing_members.iter().chain(&f.unexpected_members))
        .filter(|m| m.display.is_none())
        .map(|m| m.value.clone())
        .collect()
}

/// Fills in the `display` of members whose `userName` was found.
pub fn name_members(findings: &mut [GroupFinding], names: &HashMap<String, String>) {
    for finding in findings {
        for member in finding
            .missing_members
            .iter_mut()
            .chain(finding.unexpected_members.iter_mut())
        {
            if member.display.is_none() {
                member.display = names.get(&member.value).cloned();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// roster pushes `board` (linked to `g-1`, wants t-ada and t-bob) and `sales` (not linked
    /// yet, wants t-cy).
    fn roster() -> Vec<DesiredGroup> {
        vec![
            DesiredGroup {
                name: "board".to_owned(),
                link_target_id: Some("g-1".to_owned()),
                members: [
                    ("t-ada".to_owned(), Some("ada@example.com".to_owned())),
                    ("t-bob".to_owned(), Some("bob@example.com".to_owned())),
                ]
                .into_iter()
                .collect(),
            },
            DesiredGroup {
                name: "sales".to_owned(),
                link_target_id: None,
                members: [("t-cy".to_owned(), None)].into_iter().collect(),
            },
        ]
    }

    fn group(id: &str, name: &str, members: &[&str]) -> Value {
        json!({
            "id": id,
            "displayName": name,
            "members": members.iter().map(|m| json!({"value": m})).collect::<Vec<_>>(),
        })
    }

    /// (class, action, group, missing member ids, unexpected member ids, renamed from)
    type Expect = (
        Class,
        ActionKind,
        Option<&'static str>,
        Vec<&'static str>,
        Vec<&'static str>,
        Option<&'static str>,
    );

    fn check(target_group: &Value, expect: Expect) {
        let mut classifier = GroupClassifier::new(roster());
        let finding = classifier.classify_group(target_group);
        let ids = |members: &[Member]| members.iter().map(|m| m.value.clone()).collect::<Vec<_>>();
        let got = (
            finding.class,
            finding.action,
            finding.group.clone(),
            ids(&finding.missing_members),
            ids(&finding.unexpected_members),
            finding.renamed_from.clone(),
        );
        let want = (
            expect.0,
            expect.1,
            expect.2.map(str::to_owned),
            expect.3.into_iter().map(str::to_owned).collect::<Vec<_>>(),
            expect.4.into_iter().map(str::to_owned).collect::<Vec<_>>(),
            expect.5.map(str::to_owned),
        );
        assert_eq!(got, want, "{target_group}");
    }

    #[test]
    fn target_groups_are_classified_as_the_table_says() {
        use ActionKind as A;
        use Class as C;
        let board = Some("board");
        let cases: Vec<(&str, Value, Expect)> = vec![
            (
                "linked and equal",
                group("g-1", "board", &["t-bob", "t-ada"]),
                (C::InSync, A::None, board, vec![], vec![], None),
            ),
            (
                "a member removed by hand",
                group("g-1", "board", &["t-ada"]),
                (C::Drifted, A::Patch, board, vec!["t-bob"], vec![], None),
            ),
            (
                "a stranger added by hand",
                group("g-1", "board", &["t-ada", "t-bob", "t-eve"]),
                (C::Drifted, A::Patch, board, vec![], vec!["t-eve"], None),
            ),
            (
                "renamed by hand: still linked, the name is drift",
                group("g-1", "Board Room", &["t-ada", "t-bob"]),
                (
                    C::Drifted,
                    A::Patch,
                    board,
                    vec![],
                    vec![],
                    Some("Board Room"),
                ),
            ),
            (
                "named like an unlinked pushed group, equal",
                group("g-7", "sales", &["t-cy"]),
                (C::Adoptable, A::Link, Some("sales"), vec![], vec![], None),
            ),
            (
                "named like an unlinked pushed group in other letters: renamed back",
                group("g-7", "SALES", &["t-cy"]),
                (
                    C::Adoptable,
                    A::LinkAndPatch,
                    Some("sales"),
                    vec![],
                    vec![],
                    Some("SALES"),
                ),
            ),
            (
                "named like an unlinked pushed group, members differ",
                group("g-7", "sales", &[]),
                (
                    C::Adoptable,
                    A::LinkAndPatch,
                    Some("sales"),
                    vec!["t-cy"],
                    vec![],
                    None,
                ),
            ),
            (
                "named like a linked pushed group, but another id: not roster's",
                group("g-9", "board", &["t-ada", "t-bob"]),
                (C::Unmanaged, A::None, None, vec![], vec![], None),
            ),
            (
                "a group roster does not push",
                group("g-5", "everyone", &["t-ada"]),
                (C::Unmanaged, A::None, None, vec![], vec![], None),
            ),
        ];
        for (name, target_group, expect) in cases {
            eprintln!("case: {name}");
            check(&target_group, expect);
        }
    }

    #[test]
    fn linked_groups_not_listed_are_confirmed_and_a_listing_without_members_is_told_apart() {
        let mut classifier = GroupClassifier::new(roster());
        assert_eq!(classifier.unseen_links(), vec!["g-1".to_owned()]);
        let listed = json!({"id": "g-1", "displayName": "board"});
        // Listed without `members`: pushed, so read by id before it is compared.
        assert!(classifier.concerns(&listed));
        assert!(!lists_members(&listed));
        assert!(lists_members(&json!({"id": "g-1", "Members": []})));
        assert!(!classifier.concerns(&json!({"id": "g-9", "displayName": "other"})));
        let read = classifier.classify_group(&group("g-1", "board", &["t-ada", "t-bob"]));
        assert_eq!(read.class, Class::InSync);
        assert!(classifier.unseen_links().is_empty());
        assert!(!classifier.concerns(&listed), "seen already");
    }

    #[test]
    fn pushed_groups_without_a_target_group_are_missing_and_a_name_is_adopted_once() {
        let mut classifier = GroupClassifier::new(roster());
        assert_eq!(
            classifier
                .classify_group(&group("g-7", "sales", &["t-cy"]))
                .class,
            Class::Adoptable
        );
        let twin = classifier.classify_group(&group("g-8", "sales", &["t-cy"]));
        assert_eq!((twin.class, twin.group), (Class::Unmanaged, None));
        let missing = classifier.finish();
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].class, Class::Missing);
        assert_eq!(missing[0].action, ActionKind::Create);
        assert_eq!(missing[0].group.as_deref(), Some("board"));
        assert_eq!(missing[0].target_id, None);
    }

    #[test]
    fn differences_name_the_members_and_the_target_state_is_what_was_read() {
        let mut classifier = GroupClassifier::new(roster());
        let mut finding = classifier.classify_group(&json!({
            "id": "g-1", "displayName": "Board",
            "members": [{"value": "t-ada"}, {"value": "t-eve", "display": "eve@partner.org"},
                        {"value": "t-zed"}],
        }));
        assert_eq!(
            unnamed_members(std::slice::from_ref(&finding)),
            ["t-zed".to_owned()].into_iter().collect()
        );
        name_members(
            std::slice::from_mut(&mut finding),
            &[("t-zed".to_owned(), "zed@example.com".to_owned())]
                .into_iter()
                .collect(),
        );
        let differences = serde_json::to_value(finding.differences()).ok();
        assert_eq!(
            differences,
            Some(json!([
                {"path": "displayName", "roster": "board", "target": "Board"},
                {"path": "members",
                 "roster": [{"value": "t-bob", "display": "bob@example.com"}],
                 "target": [{"value": "t-eve", "display": "eve@partner.org"},
                            {"value": "t-zed", "display": "zed@example.com"}]}
            ]))
        );
        assert_eq!(
            finding.target_state,
            Some(json!({"displayName": "Board", "members": ["t-ada", "t-eve", "t-zed"]}))
        );
    }

    #[test]
    fn a_group_without_members_equals_an_empty_wish() {
        let mut classifier = GroupClassifier::new(vec![DesiredGroup {
            name: "empty".to_owned(),
            link_target_id: Some("g-0".to_owned()),
            members: BTreeMap::new(),
        }]);
        let finding = classifier.classify_group(&json!({"id": "g-0", "displayName": "empty"}));
        assert_eq!(finding.class, Class::InSync);
        assert!(finding.differences().is_empty());
    }
}
