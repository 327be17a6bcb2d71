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
use std::hash::BuildHasher;
use std::sync::Arc;

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
    /// The account the identity's link held when the run read roster's links (for `missing`,
    /// one a GET by id then found gone): a fix acts only while the link still holds it. Not
    /// part of the report.
    #[serde(skip)]
    pub linked_target: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReconcileError {
    #[error("matching.target_attribute `{attribute}` is not a SCIM path: {message}")]
    MatchingAttribute { attribute: String, message: String },
    #[error("built-in SCIM path `{path}` does not parse: {message}")]
    BuiltInPath { path: String, message: String },
    /// The identity an account is compared with was not read for it (it may have been removed
    /// since the run indexed it): nothing is concluded about the account.
    #[error("identity `{identity_id}` could not be read to compare its account")]
    NotRendered { identity_id: String },
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

/// Strings end to end in one buffer: one allocation for them all, where a `String` each would
/// cost an allocation, a 24-byte header and the allocator's rounding. Entry `i` is
/// `text[ends[i - 1]..ends[i]]`.
#[derive(Debug, Clone, Default)]
struct Packed {
    text: String,
    ends: Vec<usize>,
}

impl Packed {
    fn push(&mut self, entry: &str) {
        self.text.push_str(entry);
        self.ends.push(self.text.len());
    }

    /// Entry `index`; `""` past the end.
    fn get(&self, index: usize) -> &str {
        let start = match index.checked_sub(1) {
            Some(before) => self.ends.get(before).copied().unwrap_or(usize::MAX),
            None => 0,
        };
        let end = self.ends.get(index).copied().unwrap_or(0);
        self.text.get(start..end).unwrap_or("")
    }

    fn reserve(&mut self, entries: usize, bytes_each: usize) {
        self.ends.reserve(entries);
        self.text.reserve(entries.saturating_mul(bytes_each));
    }
}

/// Keys → identities, as `(hash of the key, identity)` sorted by hash (16 bytes an entry, where
/// a map of owned keys costs several times that). A hash only names candidates: the caller
/// compares the key itself, so a collision never ties an account to the wrong person.
#[derive(Debug, Clone, Default)]
struct HashIndex {
    entries: Vec<(u64, usize)>,
    sorted: bool,
}

impl HashIndex {
    fn push(&mut self, hash: u64, index: usize) {
        self.sorted &= self
            .entries
            .last()
            .is_none_or(|last| *last <= (hash, index));
        self.entries.push((hash, index));
    }

    /// Sorts the entries, which [`HashIndex::candidates`] needs; the identities of one hash
    /// stay in insertion order.
    fn seal(&mut self) {
        if !self.sorted {
            self.entries.sort_unstable();
            self.sorted = true;
        }
    }

    /// The identities whose key has `hash`, in insertion order. Before [`HashIndex::seal`], by
    /// a scan of every entry: slow, never wrong.
    fn candidates(&self, hash: u64) -> impl Iterator<Item = usize> + '_ {
        let (start, sorted) = if self.sorted {
            (self.entries.partition_point(|(h, _)| *h < hash), true)
        } else {
            (0, false)
        };
        self.entries[start..]
            .iter()
            .take_while(move |(h, _)| !sorted || *h == hash)
            .filter(move |(h, _)| *h == hash)
            .map(|(_, index)| *index)
    }
}

/// Bits of [`Desired::flags`]: what is known of an identity without rendering it.
const IN_SCOPE: u8 = 1;
/// Its link to this app has a target id.
const LINKED: u8 = 2;

/// An identity of a run's [`Desired`] state, by position: what the run reads from the store
/// and hands back rendered ([`Classifier::to_render`], [`Classifier::render`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityRef(usize);

/// roster's desired state for one app, built once per run: a compact index of every identity
/// (its id, whether it is in scope, its link's target id and its matching value), with lookups
/// by linked target id and by matching value. Identities are not rendered here: the run reads
/// the few a page of accounts needs from the store and renders them for that page
/// ([`Classifier::to_render`]), so that memory grows by about a hundred bytes per identity
/// rather than by a rendered user each.
///
/// Memory is O(identities), roster's own data; nothing of the target is held here.
#[derive(Debug, Clone)]
pub struct Desired {
    compiled: CompiledMappings,
    policy: Policy,
    paths: AccountPaths,
    /// Fixed for the run: the hashes of both indexes.
    hasher: std::hash::RandomState,
    /// Tests: every key hashes alike, so that every lookup goes through key comparison.
    #[cfg(test)]
    every_hash_collides: bool,
    // Invariant: `ids`, `link_targets`, `matching_keys` and `flags` have one entry per
    // identity, in insertion order; every index in the two `HashIndex`es is one of them.
    ids: Packed,
    /// The link's target id; `""` without one (`LINKED` unset).
    link_targets: Packed,
    /// The matching value normalised by [`normalise_matching`]; `""` without one.
    matching_keys: Packed,
    flags: Vec<u8>,
    by_target_id: HashIndex,
    by_matching_value: HashIndex,
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
            hasher: std::hash::RandomState::new(),
            #[cfg(test)]
            every_hash_collides: false,
            ids: Packed::default(),
            link_targets: Packed::default(),
            matching_keys: Packed::default(),
            flags: Vec::new(),
            by_target_id: HashIndex::default(),
            by_matching_value: HashIndex::default(),
        })
    }

    /// Makes room for `identities` more (the run counts them first), so that building the
    /// index does not pass through the doubling of every buffer.
    pub fn reserve(&mut self, identities: usize) {
        self.ids.reserve(identities, 36);
        self.link_targets.reserve(identities, 36);
        self.matching_keys.reserve(identities, 24);
        self.flags.reserve(identities);
        self.by_target_id.entries.reserve(identities);
        self.by_matching_value.entries.reserve(identities);
    }

    /// Adds one identity with its link to this app (if any). The caller may page through
    /// roster's identities; nothing of `identity` is kept but its id, scope, link and matching
    /// value.
    ///
    /// Conflicts: a target id linked twice keeps its first identity (a data error either way).
    /// A matching value rendered for several identities keeps the first one in scope, else the
    /// first: a re-hired person's old, terminated identity must not turn their new account into
    /// an orphan.
    pub fn insert(&mut self, identity: &IdentityView, link: Option<&LinkInfo>) {
        let index = self.flags.len();
        let mut flags = 0;
        if mapping::in_scope(&self.policy.scope, identity) {
            flags |= IN_SCOPE;
        }
        self.ids.push(&identity.id);
        let link_target = link.and_then(|link| link.target_id.as_deref());
        if let Some(target_id) = link_target {
            flags |= LINKED;
            self.by_target_id.push(self.hash(target_id), index);
        }
        self.link_targets.push(link_target.unwrap_or(""));
        // The very function delivery matches with, so both agree on who an account belongs to.
        let key = mapping::render_matching_value(
            &self.compiled,
            identity,
            &self.policy.matching_attribute,
        )
        .map(|value| normalise_matching(&self.policy.matching_path, value));
        if let Some(key) = key.as_deref() {
            self.by_matching_value.push(self.hash(key), index);
        }
        self.matching_keys.push(key.as_deref().unwrap_or(""));
        self.flags.push(flags);
    }

    /// How many identities were inserted.
    #[must_use]
    pub fn len(&self) -> usize {
        self.flags.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }

    /// The mapped-attribute comparison needs the compiled mappings the index was rendered with.
    #[must_use]
    pub fn compiled(&self) -> &CompiledMappings {
        &self.compiled
    }

    fn hash(&self, key: &str) -> u64 {
        #[cfg(test)]
        if self.every_hash_collides {
            return 0;
        }
        self.hasher.hash_one(key)
    }

    /// Tests: an index in which every key has the same hash (insert nothing before).
    #[cfg(test)]
    pub(super) fn with_every_hash_colliding(mut self) -> Self {
        self.every_hash_collides = true;
        self
    }

    /// Who `account` is: linked, outside the scope filter, matched by value, or nobody.
    fn tie(&self, account: &Value, target_id: Option<&str>, user_name: Option<&str>) -> Tied {
        if let Some(index) = target_id.and_then(|id| self.linked_to(id)) {
            return Tied::To(index, Tie::Linked);
        }
        if !is_managed(&self.paths, &self.policy.scope, account, user_name) {
            return Tied::Unmanaged;
        }
        match self.matching_index(account) {
            Some(index) => Tied::To(index, Tie::ByMatchingValue),
            None => Tied::Unmatched,
        }
    }

    fn matching_index(&self, account: &Value) -> Option<usize> {
        let path = &self.policy.matching_path;
        let value = match path.lookup(account)? {
            Value::String(text) if !text.is_empty() => text.clone(),
            Value::Number(number) => number.to_string(),
            Value::Bool(flag) => flag.to_string(),
            _ => return None,
        };
        self.matching(&normalise_matching(path, value))
    }

    /// The identities whose rendered user classifying `accounts` compares with (those the
    /// accounts are tied to and that are in scope), each once. Pure: a run asks it for the
    /// next page while the classifier works on this one ([`Classifier::desired`] hands out the
    /// index, sealed for fast lookups).
    #[must_use]
    pub fn to_render<'a>(&self, accounts: impl IntoIterator<Item = &'a Value>) -> Vec<IdentityRef> {
        let mut wanted = Vec::new();
        let mut asked = std::collections::HashSet::new();
        for account in accounts {
            let user_name = self.paths.user_name.lookup(account).and_then(Value::as_str);
            if let Tied::To(index, _) = self.tie(account, id_of(account), user_name)
                && self.in_scope(index)
                && asked.insert(index)
            {
                wanted.push(IdentityRef(index));
            }
        }
        wanted
    }

    /// The id of `identity` (to read it from the store).
    #[must_use]
    pub fn identity_id(&self, identity: IdentityRef) -> &str {
        self.ids.get(identity.0)
    }

    /// The user roster wants the app to hold for `view`, the identity `identity` as read now;
    /// `None` when `view` is another identity.
    #[must_use]
    pub fn render(&self, identity: IdentityRef, view: &IdentityView) -> Option<Value> {
        (identity.0 < self.len() && self.ids.get(identity.0) == view.id)
            .then(|| mapping::render_user(&self.compiled, view))
    }

    fn in_scope(&self, index: usize) -> bool {
        self.flags
            .get(index)
            .is_some_and(|flags| flags & IN_SCOPE != 0)
    }

    fn is_linked(&self, index: usize) -> bool {
        self.flags
            .get(index)
            .is_some_and(|flags| flags & LINKED != 0)
    }

    fn seal(&mut self) {
        self.by_target_id.seal();
        self.by_matching_value.seal();
    }

    /// The identity linked to `target_id`: the first inserted one.
    fn linked_to(&self, target_id: &str) -> Option<usize> {
        self.by_target_id
            .candidates(self.hash(target_id))
            .find(|&index| self.link_targets.get(index) == target_id)
    }

    /// The identity of a normalised matching value: the first one in scope, else the first.
    fn matching(&self, key: &str) -> Option<usize> {
        let mut first = None;
        for index in self
            .by_matching_value
            .candidates(self.hash(key))
            .filter(|&index| self.matching_keys.get(index) == key)
        {
            if self.in_scope(index) {
                return Some(index);
            }
            first.get_or_insert(index);
        }
        first
    }
}

/// One run's classifier: feed it every target account once ([`Classifier::classify_account`]),
/// then the identities no account belonged to ([`Classifier::missing`]). Before it classifies
/// an account, the identity the account is compared with must be rendered: the caller asks
/// [`Classifier::to_render`] for a page of accounts, reads those identities and hands each to
/// [`Classifier::render`]; [`Classifier::forget_renderings`] drops them after the page.
///
/// It keeps no target account: only, per identity, which account was seen for it.
#[derive(Debug, Clone)]
pub struct Classifier {
    /// Sealed: shared read-only with whoever renders ahead.
    desired: Arc<Desired>,
    // Invariant: `seen.len() == desired.len()`.
    seen: Vec<Seen>,
    /// The target id of each identity whose `seen` is `Matched`.
    matched: HashMap<usize, Box<str>>,
    /// `(identity id, target id)` of adoptable (or orphan) findings already handed out whose
    /// identity a later account matched too: they are conflicts as well.
    superseded: Vec<(String, String)>,
    /// The rendered users of the page being classified, by identity.
    rendered: HashMap<usize, Value>,
}

/// What a run has seen of one identity's accounts so far (one byte an identity).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Seen {
    #[default]
    Nothing,
    /// Its linked account.
    Linked,
    /// One unlinked account matching it (its target id in `Classifier::matched`): adoptable,
    /// or an orphan.
    Matched,
    /// Several accounts, or one without an `id`, match it: none is tied to it.
    Conflict,
}

/// How an account was tied to an identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tie {
    Linked,
    ByMatchingValue,
}

/// Who an account is, before anything is compared.
enum Tied {
    Unmanaged,
    Unmatched,
    To(usize, Tie),
}

impl Classifier {
    #[must_use]
    pub fn new(mut desired: Desired) -> Self {
        desired.seal();
        let seen = vec![Seen::Nothing; desired.len()];
        Self {
            desired: Arc::new(desired),
            seen,
            matched: HashMap::new(),
            superseded: Vec::new(),
            rendered: HashMap::new(),
        }
    }

    /// The target ids of the links whose account no classified account was (in the order the
    /// identities were inserted). The listing may have missed them: the run confirms each by
    /// `GET /Users/{id}` — classifying what it finds — before it calls the rest `missing`
    /// ([`Classifier::missing`]), which drops their links.
    #[must_use]
    pub fn unseen_links(&self) -> Vec<String> {
        self.unseen()
            .filter(|&index| self.desired.is_linked(index))
            .map(|index| self.desired.link_targets.get(index).to_owned())
            .collect()
    }

    /// The in-scope identities no account belonged to, in insertion order.
    fn unseen(&self) -> impl Iterator<Item = usize> + '_ {
        self.seen
            .iter()
            .enumerate()
            .filter(|(index, seen)| **seen == Seen::Nothing && self.desired.in_scope(*index))
            .map(|(index, _)| index)
    }

    /// `(identity id, target id)` of findings already returned as `adoptable` (or `orphan` of
    /// an unlinked account) whose identity a later account matched too: they are `conflict`s,
    /// with action none, like the later one. The run rewrites their items before it applies
    /// any adoption or deprovision.
    #[must_use]
    pub fn superseded(&self) -> &[(String, String)] {
        &self.superseded
    }

    /// The sealed index, to share with a task that reads the next page's people
    /// ([`Desired::to_render`], [`Desired::render`]) while this one is classified.
    #[must_use]
    pub fn desired(&self) -> Arc<Desired> {
        Arc::clone(&self.desired)
    }

    /// [`Desired::to_render`] less the identities rendered already. The caller reads them from
    /// the store and hands each to [`Classifier::render`].
    #[must_use]
    pub fn to_render<'a>(&self, accounts: impl IntoIterator<Item = &'a Value>) -> Vec<IdentityRef> {
        let mut wanted = self.desired.to_render(accounts);
        wanted.retain(|identity| !self.rendered.contains_key(&identity.0));
        wanted
    }

    /// The id of `identity` (to read it from the store).
    #[must_use]
    pub fn identity_id(&self, identity: IdentityRef) -> &str {
        self.desired.identity_id(identity)
    }

    /// Renders `view`, the identity `identity` as read now, for the accounts being classified.
    /// False (and nothing kept) when `view` is another identity.
    pub fn render(&mut self, identity: IdentityRef, view: &IdentityView) -> bool {
        match self.desired.render(identity, view) {
            Some(rendered) => {
                self.rendered.insert(identity.0, rendered);
                true
            }
            None => false,
        }
    }

    /// Takes a rendering made by [`Desired::render`] of this classifier's index.
    pub fn provide(&mut self, identity: IdentityRef, rendered: Value) {
        self.rendered.insert(identity.0, rendered);
    }

    /// Drops the renderings handed to [`Classifier::render`] (after each page).
    pub fn forget_renderings(&mut self) {
        self.rendered.clear();
    }

    /// Whether an unlinked account that matched identity `index` by value cannot be tied to
    /// it; records what was seen.
    fn conflicts(&mut self, index: usize, target_id: Option<&str>) -> bool {
        if self.desired.is_linked(index) {
            // A duplicate of the identity's own account: adopting it would move the link.
            return true;
        }
        let Some(target_id) = target_id else {
            self.conflict_with_earlier(index);
            return true;
        };
        match self.seen[index] {
            Seen::Nothing => {
                self.seen[index] = Seen::Matched;
                self.matched.insert(index, target_id.into());
                false
            }
            // The same account again (a listing that repeats items): the same finding.
            Seen::Matched
                if self
                    .matched
                    .get(&index)
                    .is_some_and(|first| **first == *target_id) =>
            {
                false
            }
            Seen::Matched | Seen::Linked | Seen::Conflict => {
                self.conflict_with_earlier(index);
                true
            }
        }
    }

    fn conflict_with_earlier(&mut self, index: usize) {
        let before = std::mem::replace(&mut self.seen[index], Seen::Conflict);
        if before == Seen::Matched
            && let Some(first) = self.matched.remove(&index)
        {
            let identity_id = self.desired.ids.get(index).to_owned();
            self.superseded.push((identity_id, first.into()));
        }
    }

    /// Classifies one account as the target returned it (a SCIM User resource).
    ///
    /// Takes `&mut self` because it records which identity the account belonged to; the account
    /// itself is not kept. An account with neither `userName` nor emails is `unmanaged` under a
    /// domain filter (nothing shows it is ours) and `unmatched` without one (it cannot match).
    ///
    /// # Errors
    ///
    /// [`ReconcileError::NotRendered`] when the in-scope identity the account is tied to was
    /// not handed to [`Classifier::render`] (see [`Classifier::to_render`]); nothing is
    /// recorded then.
    pub fn classify_account(&mut self, account: &Value) -> Result<Finding, ReconcileError> {
        let target_id = id_of(account).map(str::to_owned);
        let user_name = self
            .desired
            .paths
            .user_name
            .lookup(account)
            .and_then(Value::as_str)
            .map(str::to_owned);

        let (index, tie) =
            match self
                .desired
                .tie(account, target_id.as_deref(), user_name.as_deref())
            {
                Tied::Unmanaged => {
                    return Ok(Finding {
                        linked_target: None,
                        class: Class::Unmanaged,
                        target_id,
                        user_name,
                        identity_id: None,
                        differences: Vec::new(),
                        // Never touched, whatever the settings say.
                        action: Action::None,
                    });
                }
                Tied::Unmatched => {
                    return Ok(Finding {
                        linked_target: None,
                        class: Class::Unmatched,
                        action: self.unmatched_action(account),
                        target_id,
                        user_name,
                        identity_id: None,
                        differences: Vec::new(),
                    });
                }
                Tied::To(index, tie) => (index, tie),
            };
        let in_scope = self.desired.in_scope(index);
        let identity_id = Some(self.desired.ids.get(index).to_owned());
        if in_scope && !self.rendered.contains_key(&index) {
            return Err(ReconcileError::NotRendered {
                identity_id: self.desired.ids.get(index).to_owned(),
            });
        }
        match tie {
            Tie::Linked => self.seen[index] = Seen::Linked,
            Tie::ByMatchingValue if self.conflicts(index, target_id.as_deref()) => {
                return Ok(Finding {
                    linked_target: None,
                    class: Class::Conflict,
                    target_id,
                    user_name,
                    identity_id,
                    differences: Vec::new(),
                    // Neither linked nor changed nor deprovisioned: which account is the
                    // person's is not roster's to guess.
                    action: Action::None,
                });
            }
            Tie::ByMatchingValue => {}
        }
        if !in_scope {
            let (class, action) = if is_active(&self.desired.paths.active, account) {
                (
                    Class::Orphan,
                    Action::Deprovision(self.desired.policy.deprovision),
                )
            } else {
                (Class::InSync, Action::None)
            };
            return Ok(Finding {
                linked_target: None,
                class,
                target_id,
                user_name,
                identity_id,
                differences: Vec::new(),
                action,
            });
        }

        let rendered = self.rendered.get(&index).unwrap_or(&Value::Null);
        let differences = mapping::diff(&self.desired.compiled, rendered, account);
        let changes = mapping::patch_changes(&differences);
        let (class, action) = match (tie, changes.is_empty()) {
            (Tie::Linked, true) => (Class::InSync, Action::None),
            (Tie::Linked, false) => (Class::Drifted, Action::Patch(changes)),
            (Tie::ByMatchingValue, true) => (Class::Adoptable, Action::Link),
            (Tie::ByMatchingValue, false) => (Class::Adoptable, Action::LinkAndPatch(changes)),
        };
        Ok(Finding {
            linked_target: None,
            class,
            target_id,
            user_name,
            identity_id,
            differences,
            action,
        })
    }

    /// The in-scope identities no account belonged to, in the order they were inserted: each
    /// is `missing` ([`Classifier::missing_finding`], once rendered). A linked one among them
    /// loses its link when the fix runs, so the caller confirms [`Classifier::unseen_links`]
    /// first. An identity with conflicting accounts is not missing: an account of theirs
    /// exists.
    #[must_use]
    pub fn missing(&self) -> Vec<IdentityRef> {
        self.unseen().map(IdentityRef).collect()
    }

    /// The `missing` finding of `identity` (one of [`Classifier::missing`]), with `Create` and
    /// the `userName` roster would create.
    ///
    /// # Errors
    ///
    /// [`ReconcileError::NotRendered`] when `identity` was not handed to
    /// [`Classifier::render`].
    pub fn missing_finding(&self, identity: IdentityRef) -> Result<Finding, ReconcileError> {
        let identity_id = self.desired.ids.get(identity.0).to_owned();
        let Some(rendered) = self.rendered.get(&identity.0) else {
            return Err(ReconcileError::NotRendered { identity_id });
        };
        let linked = self.desired.link_targets.get(identity.0);
        Ok(Finding {
            linked_target: (!linked.is_empty()).then(|| linked.to_owned()),
            class: Class::Missing,
            target_id: None,
            user_name: self
                .desired
                .paths
                .user_name
                .lookup(rendered)
                .and_then(Value::as_str)
                .map(str::to_owned),
            identity_id: Some(identity_id),
            differences: Vec::new(),
            action: Action::Create,
        })
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
