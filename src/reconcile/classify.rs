//! The classifier: roster's desired state, indexed once per run, against one target account at
//! a time (DESIGN §6).
//!
//! Order of the questions asked of an account, and why:
//!
//! 1. **Linked?** (its `id` is the target id of an identity's link). A link is roster's own
//!    record that it created or adopted this account, so the account is managed whatever its
//!    current `userName` says: a hand edit that moves it out of a managed domain is drift to
//!    correct, not a reason to stop managing it.
//! 2. **Outside the scope filter?** (`domain_managed` of its `userName`, or of its primary email
//!    when the `userName` is not an address) → `unmanaged`, action none, always. This is asked
//!    before matching so that an external account is never adopted or deprovisioned, even if it
//!    happens to carry a matching value.
//! 3. **Matches an identity by the matching attribute?** → `adoptable` (identity in scope) or,
//!    like a linked account, `orphan`/`in_sync` (identity terminated or out of scope). Unless
//!    the match is not evidence enough to tie the account to the person → `conflict`, action
//!    none, always: the identity is linked to another account already (a duplicate; adopting it
//!    would move the link, and the next run would move it back), a second account matches the
//!    same identity (which one is theirs is for a person to decide, so neither is adopted: the
//!    first one's finding is turned into a conflict too, see [`Classifier::superseded`]), or
//!    the account has no `id` (it could be neither linked nor changed).
//! 4. Otherwise → `unmatched`.
//!
//! For the identity found in 1 or 3: in scope → compare the mapped attributes (`in_sync`,
//! `drifted`, or `adoptable` with its differences); not in scope → `orphan` when the account is
//! active (an absent `active` counts as active), else `in_sync`: it is correctly deprovisioned,
//! and its other attributes are no longer roster's business.
use std::collections::HashMap;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use crate::mapping::{
    self, Change, CompiledMappings, Difference, IdentityView, ScimPath, ScopeSpec,
};
use crate::scim::id_of;
use crate::settings::{AppSettings, DeprovisionAction};

/// An identity's link to this app, as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// The account's SCIM `id`; `None` while a create is pending.
    pub target_id: Option<String>,
    /// `pending` | `linked` | `deactivated` | `deleted` | `error`. Classification does not
    /// depend on it: any link with a target id says which account belongs to whom.
    pub state: String,
}

/// The reconciliation classes of DESIGN §6; serialised with these snake_case names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    InSync,
    Drifted,
    Missing,
    Orphan,
    Unmatched,
    Unmanaged,
    Adoptable,
    /// Matches an identity, but cannot be tied to it: the identity is linked to another
    /// account, another account matches it too, or the account has no `id`. Never acted on;
    /// an operator decides which account is the person's.
    Conflict,
}

impl Class {
    /// Every class, in the order of the DESIGN table and of the report's `counts`.
    pub const ALL: [Class; 8] = [
        Class::InSync,
        Class::Drifted,
        Class::Missing,
        Class::Orphan,
        Class::Unmatched,
        Class::Unmanaged,
        Class::Adoptable,
        Class::Conflict,
    ];

    /// The fixed name (report field, metric label `class`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Class::InSync => "in_sync",
            Class::Drifted => "drifted",
            Class::Missing => "missing",
            Class::Orphan => "orphan",
            Class::Unmatched => "unmatched",
            Class::Unmanaged => "unmanaged",
            Class::Adoptable => "adoptable",
            Class::Conflict => "conflict",
        }
    }
}

/// What fix mode would do about a finding, given the app's settings. Report mode and dry runs
/// only list it.
///
/// Invariant: the change lists of `Patch` and `LinkAndPatch` are not empty.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    None,
    /// PATCH the account back to roster's values.
    Patch(Vec<Change>),
    /// Create the account (level-triggered: the worker renders it when it runs).
    Create,
    /// Deactivate or delete, per `deprovision.action`.
    Deprovision(DeprovisionAction),
    /// Record the link; the account already equals roster's values.
    Link,
    /// Record the link, then PATCH.
    LinkAndPatch(Vec<Change>),
}

impl Action {
    /// The report's `action` field.
    #[must_use]
    pub fn label(&self) -> &'static str {
        self.kind().as_str()
    }

    /// The report's `action` field, as a type.
    #[must_use]
    pub fn kind(&self) -> ActionKind {
        match self {
            Action::None => ActionKind::None,
            Action::Patch(_) => ActionKind::Patch,
            Action::Create => ActionKind::Create,
            Action::Deprovision(DeprovisionAction::Deactivate) => ActionKind::Deactivate,
            Action::Deprovision(DeprovisionAction::Delete) => ActionKind::Delete,
            Action::Link => ActionKind::Link,
            Action::LinkAndPatch(_) => ActionKind::LinkAndPatch,
        }
    }

    /// Whether the action deactivates or deletes: what the deletion guard counts.
    #[must_use]
    pub fn is_deprovision(&self) -> bool {
        matches!(self, Action::Deprovision(_))
    }

    /// The PATCH changes, if the action patches.
    #[must_use]
    pub fn changes(&self) -> &[Change] {
        match self {
            Action::Patch(changes) | Action::LinkAndPatch(changes) => changes,
            Action::None | Action::Create | Action::Deprovision(_) | Action::Link => &[],
        }
    }
}

/// `{"kind": "<label>"}`, plus `"changes"` for the patching kinds.
impl Serialize for Action {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let changes = self.changes();
        let mut map = serializer.serialize_map(Some(if changes.is_empty() { 1 } else { 2 }))?;
        map.serialize_entry("kind", self.label())?;
        if !changes.is_empty() {
            map.serialize_entry("changes", changes)?;
        }
        map.end()
    }
}

/// The report's `action` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    None,
    Patch,
    Create,
    Deactivate,
    Delete,
    Link,
    LinkAndPatch,
}

impl ActionKind {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::None => "none",
            ActionKind::Patch => "patch",
            ActionKind::Create => "create",
            ActionKind::Deactivate => "deactivate",
            ActionKind::Delete => "delete",
            ActionKind::Link => "link",
            ActionKind::LinkAndPatch => "link_and_patch",
        }
    }
}

/// One classified account (or, for `missing`, one identity without an account).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub class: Class,
    /// The account's SCIM `id`; `None` for `missing` and for accounts the target sent without one.
    pub target_id: Option<String>,
    /// The account's `userName`; for `missing`, the one roster would create.
    pub user_name: Option<String>,
    /// The identity the account belongs to; `None` for `unmatched` and `unmanaged`.
    pub identity_id: Option<String>,
    /// Mapped attributes that differ (for `drifted`, and `adoptable` which may have none).
    pub differences: Vec<Difference>,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReconcileError {
    #[error("matching.target_attribute `{attribute}` is not a SCIM path: {message}")]
    MatchingAttribute { attribute: String, message: String },
    #[error("built-in SCIM path `{path}` does not parse: {message}")]
    BuiltInPath { path: String, message: String },
}

/// The parts of an app's settings classification depends on, read once.
#[derive(Debug, Clone)]
struct Policy {
    scope: ScopeSpec,
    /// As configured (for [`mapping::render_matching_value`]).
    matching_attribute: String,
    matching_path: ScimPath,
    deprovision: DeprovisionAction,
    deprovision_unmatched: bool,
}

/// Paths read from every account; parsed once.
#[derive(Debug, Clone)]
struct AccountPaths {
    user_name: ScimPath,
    active: ScimPath,
    primary_email: ScimPath,
}

/// roster's side of one identity, rendered for this app.
#[derive(Debug, Clone)]
struct DesiredIdentity {
    identity_id: Box<str>,
    /// The target id of the identity's link, if it has one: the account roster holds for it.
    link_target: Option<Box<str>>,
    /// The SCIM User roster wants the app to hold ([`mapping::render_user`]), as compact JSON
    /// text: a parsed `Value` costs several times the memory, and a run holds one per identity
    /// (a 100k-person run measured in `roster bench reconcile`). Only in-scope identities are
    /// compared with their account, so out-of-scope ones keep none.
    rendered: Option<Box<str>>,
    in_scope: bool,
}

impl DesiredIdentity {
    fn rendered(&self) -> Value {
        self.rendered
            .as_deref()
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or(Value::Null)
    }
}

/// roster's desired state for one app, built once per run: every identity rendered, with lookups
/// by linked target id and by matching value.
///
/// Memory is O(identities), roster's own data; nothing of the target is held here.
#[derive(Debug, Clone)]
pub struct Desired {
    compiled: CompiledMappings,
    policy: Policy,
    paths: AccountPaths,
    // Invariant: every index in the two maps below is a valid index of `identities`.
    identities: Vec<DesiredIdentity>,
    by_target_id: HashMap<String, usize>,
    /// Keys normalised by [`normalise_matching`].
    by_matching_value: HashMap<String, usize>,
}

impl Desired {
    /// An empty index for the app; fails only when `matching.target_attribute` is not a path.
    pub fn new(settings: &AppSettings, compiled: CompiledMappings) -> Result<Self, ReconcileError> {
        // Same default as `render_matching_value`: blank means `userName`.
        let matching_attribute = match settings.matching.target_attribute.trim() {
            "" => "userName".to_owned(),
            trimmed => trimmed.to_owned(),
        };
        let matching_path = ScimPath::parse(&matching_attribute).map_err(|message| {
            ReconcileError::MatchingAttribute {
                attribute: matching_attribute.clone(),
                message,
            }
        })?;
        let policy = Policy {
            scope: settings.scope.spec(),
            matching_attribute,
            matching_path,
            deprovision: settings.deprovision.action,
            deprovision_unmatched: settings.reconcile.deprovision_unmatched,
        };
        Ok(Self {
            compiled,
            policy,
            paths: AccountPaths::new()?,
            identities: Vec::new(),
            by_target_id: HashMap::new(),
            by_matching_value: HashMap::new(),
        })
    }

    /// Adds one identity with its link to this app (if any). The caller may page through
    /// roster's identities; nothing of `identity` is kept but what rendering produced.
    ///
    /// Conflicts: a target id linked twice keeps its first identity (a data error either way).
    /// A matching value rendered for several identities keeps the first one in scope, else the
    /// first: a re-hired person's old, terminated identity must not turn their new account into
    /// an orphan.
    pub fn insert(&mut self, identity: &IdentityView, link: Option<&LinkInfo>) {
        let index = self.identities.len();
        let in_scope = mapping::in_scope(&self.policy.scope, identity);
        let rendered = in_scope
            .then(|| serde_json::to_string(&mapping::render_user(&self.compiled, identity)).ok())
            .flatten()
            .map(String::into_boxed_str);
        let link_target = link.and_then(|link| link.target_id.as_deref());
        self.identities.push(DesiredIdentity {
            identity_id: identity.id.as_str().into(),
            link_target: link_target.map(Into::into),
            rendered,
            in_scope,
        });
        if let Some(target_id) = link_target {
            self.by_target_id
                .entry(target_id.to_owned())
                .or_insert(index);
        }
        // The very function delivery matches with, so both agree on who an account belongs to.
        let matching_value = mapping::render_matching_value(
            &self.compiled,
            identity,
            &self.policy.matching_attribute,
        );
        if let Some(value) = matching_value {
            let key = normalise_matching(&self.policy.matching_path, value);
            let identities = &self.identities;
            self.by_matching_value
                .entry(key)
                .and_modify(|kept| {
                    if !identities[*kept].in_scope && in_scope {
                        *kept = index;
                    }
                })
                .or_insert(index);
        }
    }

    /// How many identities were inserted.
    #[must_use]
    pub fn len(&self) -> usize {
        self.identities.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.identities.is_empty()
    }

    /// The mapped-attribute comparison needs the compiled mappings the index was rendered with.
    #[must_use]
    pub fn compiled(&self) -> &CompiledMappings {
        &self.compiled
    }
}

/// One run's classifier: feed it every target account once ([`Classifier::classify_account`]),
/// then [`Classifier::finish`] for the identities no account belonged to.
///
/// It keeps no target account: only, per identity, which account was seen for it.
#[derive(Debug, Clone)]
pub struct Classifier {
    desired: Desired,
    // Invariant: `seen.len() == desired.identities.len()`.
    seen: Vec<Seen>,
    /// `(identity id, target id)` of adoptable (or orphan) findings already handed out whose
    /// identity a later account matched too: they are conflicts as well.
    superseded: Vec<(String, String)>,
}

/// What a run has seen of one identity's accounts so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Seen {
    #[default]
    Nothing,
    /// Its linked account.
    Linked,
    /// One unlinked account matching it (its target id): adoptable, or an orphan.
    Matched(Box<str>),
    /// Several accounts, or one without an `id`, match it: none is tied to it.
    Conflict,
}

/// How an account was tied to an identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tie {
    Linked,
    ByMatchingValue,
}

impl Classifier {
    #[must_use]
    pub fn new(desired: Desired) -> Self {
        let seen = vec![Seen::Nothing; desired.identities.len()];
        Self {
            desired,
            seen,
            superseded: Vec::new(),
        }
    }

    /// The target ids of the links whose account no classified account was (in the order the
    /// identities were inserted). The listing may have missed them: the run confirms each by
    /// `GET /Users/{id}` — classifying what it finds — before [`Classifier::finish`] calls the
    /// rest `missing`, which drops their links.
    #[must_use]
    pub fn unseen_links(&self) -> Vec<String> {
        self.desired
            .identities
            .iter()
            .zip(&self.seen)
            .filter(|(desired, seen)| **seen == Seen::Nothing && desired.in_scope)
            .filter_map(|(desired, _)| desired.link_target.as_deref().map(str::to_owned))
            .collect()
    }

    /// `(identity id, target id)` of findings already returned as `adoptable` (or `orphan` of
    /// an unlinked account) whose identity a later account matched too: they are `conflict`s,
    /// with action none, like the later one. The run rewrites their items before it applies
    /// any adoption or deprovision.
    #[must_use]
    pub fn superseded(&self) -> &[(String, String)] {
        &self.superseded
    }

    /// Whether an unlinked account that matched identity `index` by value cannot be tied to
    /// it; records what was seen.
    fn conflicts(&mut self, index: usize, target_id: Option<&str>) -> bool {
        let desired = &self.desired.identities[index];
        if desired.link_target.is_some() {
            // A duplicate of the identity's own account: adopting it would move the link.
            return true;
        }
        let Some(target_id) = target_id else {
            self.conflict_with_earlier(index);
            return true;
        };
        match &self.seen[index] {
            Seen::Nothing => {
                self.seen[index] = Seen::Matched(target_id.into());
                false
            }
            // The same account again (a listing that repeats items): the same finding.
            Seen::Matched(first) if **first == *target_id => false,
            Seen::Matched(_) | Seen::Linked | Seen::Conflict => {
                self.conflict_with_earlier(index);
                true
            }
        }
    }

    fn conflict_with_earlier(&mut self, index: usize) {
        if let Seen::Matched(first) = std::mem::replace(&mut self.seen[index], Seen::Conflict) {
            let identity_id = self.desired.identities[index].identity_id.to_string();
            self.superseded.push((identity_id, first.into()));
        }
    }

    /// Classifies one account as the target returned it (a SCIM User resource).
    ///
    /// Takes `&mut self` because it records which identity the account belonged to; the account
    /// itself is not kept. An account with neither `userName` nor emails is `unmanaged` under a
    /// domain filter (nothing shows it is ours) and `unmatched` without one (it cannot match).
    pub fn classify_account(&mut self, account: &Value) -> Finding {
        let target_id = id_of(account).map(str::to_owned);
        let user_name = self
            .desired
            .paths
            .user_name
            .lookup(account)
            .and_then(Value::as_str)
            .map(str::to_owned);

        let linked = target_id
            .as_deref()
            .and_then(|id| self.desired.by_target_id.get(id))
            .map(|&index| (index, Tie::Linked));
        let tie = match linked {
            Some(tie) => Some(tie),
            None if !self.is_managed(account, user_name.as_deref()) => {
                return Finding {
                    class: Class::Unmanaged,
                    target_id,
                    user_name,
                    identity_id: None,
                    differences: Vec::new(),
                    // Never touched, whatever the settings say.
                    action: Action::None,
                };
            }
            None => self
                .matching_index(account)
                .map(|index| (index, Tie::ByMatchingValue)),
        };
        let Some((index, tie)) = tie else {
            return Finding {
                class: Class::Unmatched,
                action: self.unmatched_action(account),
                target_id,
                user_name,
                identity_id: None,
                differences: Vec::new(),
            };
        };
        match tie {
            Tie::Linked => self.seen[index] = Seen::Linked,
            Tie::ByMatchingValue if self.conflicts(index, target_id.as_deref()) => {
                return Finding {
                    class: Class::Conflict,
                    target_id,
                    user_name,
                    identity_id: Some(self.desired.identities[index].identity_id.to_string()),
                    differences: Vec::new(),
                    // Neither linked nor changed nor deprovisioned: which account is the
                    // person's is not roster's to guess.
                    action: Action::None,
                };
            }
            Tie::ByMatchingValue => {}
        }
        let desired = &self.desired.identities[index];
        let identity_id = Some(desired.identity_id.to_string());
        if !desired.in_scope {
            let (class, action) = if is_active(&self.desired.paths.active, account) {
                (
                    Class::Orphan,
                    Action::Deprovision(self.desired.policy.deprovision),
                )
            } else {
                (Class::InSync, Action::None)
            };
            return Finding {
                class,
                target_id,
                user_name,
                identity_id,
                differences: Vec::new(),
                action,
            };
        }

        let differences = mapping::diff(&self.desired.compiled, &desired.rendered(), account);
        let changes = mapping::patch_changes(&differences);
        let (class, action) = match (tie, changes.is_empty()) {
            (Tie::Linked, true) => (Class::InSync, Action::None),
            (Tie::Linked, false) => (Class::Drifted, Action::Patch(changes)),
            (Tie::ByMatchingValue, true) => (Class::Adoptable, Action::Link),
            (Tie::ByMatchingValue, false) => (Class::Adoptable, Action::LinkAndPatch(changes)),
        };
        Finding {
            class,
            target_id,
            user_name,
            identity_id,
            differences,
            action,
        }
    }

    /// The in-scope identities no account belonged to: `missing`, each with `Create`, in the
    /// order they were inserted. A linked one among them loses its link when the fix runs, so
    /// the caller confirms [`Classifier::unseen_links`] first. An identity with conflicting
    /// accounts is not missing: an account of theirs exists.
    #[must_use]
    pub fn finish(self) -> Vec<Finding> {
        let user_name = self.desired.paths.user_name;
        self.desired
            .identities
            .into_iter()
            .zip(self.seen)
            .filter(|(desired, seen)| desired.in_scope && *seen == Seen::Nothing)
            .map(|(desired, _)| Finding {
                class: Class::Missing,
                target_id: None,
                user_name: user_name
                    .lookup(&desired.rendered())
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                identity_id: Some(desired.identity_id.into()),
                differences: Vec::new(),
                action: Action::Create,
            })
            .collect()
    }

    /// Inside the scope filter: the domain of the `userName`, or of the primary (else first)
    /// email when the `userName` is not an address, is a managed one. Without a domain filter
    /// every account is inside.
    fn is_managed(&self, account: &Value, user_name: Option<&str>) -> bool {
        is_managed(
            &self.desired.paths,
            &self.desired.policy.scope,
            account,
            user_name,
        )
    }

    fn matching_index(&self, account: &Value) -> Option<usize> {
        let path = &self.desired.policy.matching_path;
        let value = match path.lookup(account)? {
            Value::String(text) if !text.is_empty() => text.clone(),
            Value::Number(number) => number.to_string(),
            Value::Bool(flag) => flag.to_string(),
            _ => return None,
        };
        self.desired
            .by_matching_value
            .get(&normalise_matching(path, value))
            .copied()
    }

    /// Deprovision only when the app asks for it, and never re-deactivate an inactive account:
    /// a second run after a fix must make zero writes. Delete still applies to inactive ones.
    fn unmatched_action(&self, account: &Value) -> Action {
        let policy = &self.desired.policy;
        if !policy.deprovision_unmatched {
            return Action::None;
        }
        match policy.deprovision {
            DeprovisionAction::Deactivate if !is_active(&self.desired.paths.active, account) => {
                Action::None
            }
            action => Action::Deprovision(action),
        }
    }
}

/// Inside the scope filter: the domain of the `userName`, or of the primary (else first)
/// email when the `userName` is not an address, is a managed one.
fn is_managed(
    paths: &AccountPaths,
    scope: &ScopeSpec,
    account: &Value,
    user_name: Option<&str>,
) -> bool {
    let address = user_name
        .filter(|name| name.contains('@'))
        .or_else(|| primary_email(&paths.primary_email, account))
        .or(user_name)
        .unwrap_or("");
    mapping::domain_managed(scope, address)
}

/// Whether a target account lies inside the app's scope filter (its managed domains), by the
/// rule reconciliation classifies with: outside it, an account is `unmanaged` and never
/// touched. Delivery asks it again right before it deprovisions an account by id, since the
/// account may have changed since the decision.
#[must_use]
pub fn account_is_managed(scope: &ScopeSpec, account: &Value) -> bool {
    // The built-in paths always parse; if they did not, nothing counts as managed.
    let Ok(paths) = AccountPaths::new() else {
        return false;
    };
    let user_name = paths.user_name.lookup(account).and_then(Value::as_str);
    is_managed(&paths, scope, account, user_name)
}

impl AccountPaths {
    /// Fails only if `ScimPath` stopped accepting these core paths: an error, not a panic.
    fn new() -> Result<Self, ReconcileError> {
        let parse = |raw: &str| {
            ScimPath::parse(raw).map_err(|message| ReconcileError::BuiltInPath {
                path: raw.to_owned(),
                message,
            })
        };
        Ok(Self {
            user_name: parse("userName")?,
            active: parse("active")?,
            primary_email: parse("emails[primary eq true].value")?,
        })
    }
}

/// SCIM compares `userName` case-insensitively (RFC 7643 §4.1); other matching attributes (such
/// as `externalId`) are case-exact.
fn normalise_matching(path: &ScimPath, value: String) -> String {
    if path.is_case_insensitive() {
        value.to_lowercase()
    } else {
        value
    }
}

/// Only an explicit `false` (or `"false"`, as some servers send) is inactive: SCIM's default for
/// an absent `active` is active, and calling a doubtful account active errs towards finding ghosts.
fn is_active(active: &ScimPath, account: &Value) -> bool {
    match active.lookup(account) {
        Some(Value::Bool(flag)) => *flag,
        Some(Value::String(text)) => !text.trim().eq_ignore_ascii_case("false"),
        _ => true,
    }
}

/// The primary email's value; without a primary mark, the first element's.
fn primary_email<'a>(primary: &ScimPath, account: &'a Value) -> Option<&'a str> {
    primary
        .lookup(account)
        .and_then(Value::as_str)
        .or_else(|| {
            let emails = account
                .as_object()?
                .iter()
                .find_map(|(key, value)| key.eq_ignore_ascii_case("emails").then_some(value))?;
            emails
                .as_array()?
                .iter()
                .find_map(|email| email.get("value").and_then(Value::as_str))
        })
        .filter(|address| !address.is_empty())
}
