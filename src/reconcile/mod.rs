//! Reconciliation's pure core (DESIGN §6): classify every account of a target against roster's
//! desired state, decide what fix mode would do, guard against mass deprovisioning, and shape the
//! run's report. No IO, database, async or clock in those; the run (paging through the target's
//! `/Users`, loading identities and links, handing fixes to the delivery queue) is `run.rs`, the
//! one IO file of the module, and feeds them.
//!
//! A run:
//!
//! ```text
//! let mut desired = Desired::new(&settings, compile_mappings(&settings)?)?;
//! for (identity, link) in roster_identities { desired.insert(&identity, link.as_ref()); }
//! let mut classifier = Classifier::new(desired);
//! let mut report = Report::new(run_id, app_id, dry_run);
//! while let Some(page) = target_users.next().await {
//!     for identity in classifier.to_render(&page?) { classifier.render(identity, &read(classifier.identity_id(identity))); }
//!     for account in page { report.record(&classifier.classify_account(&account)?); }
//!     classifier.forget_renderings();
//! }
//! for identity in classifier.missing() { /* rendered as above */ report.record(&classifier.missing_finding(identity)?); }
//! let deprovisions = report.items.iter().filter(|item| matches!(item.action, ActionKind::Deactivate | ActionKind::Delete)).count();
//! match deletion_guard(&settings.deletion_guard, deprovisions, accounts_read) { Proceed => fix, Hold { reason } => await approval }
//! ```
//!
//! Invariants:
//!
//! * **A link never moves by guess**: an unlinked account that matches an identity already
//!   linked to another account, or an identity another account matched too, or that has no
//!   `id`, is a `conflict` with action none (and so is the first match, once a second one
//!   shows up): nothing is linked, patched or deprovisioned for it.
//! * **Unmanaged accounts are never touched**: an unlinked account outside the scope filter is
//!   `unmanaged` before any matching is tried, and its action is `none` whatever the settings
//!   (`deprovision_unmatched` included).
//! * **Only mapped attributes classify**: differences come from [`crate::mapping::diff`], which
//!   compares the mapped targets, `active` and the role target, SCIM-normalised (case of
//!   `userName`, element order, `"true"` for `true`); the target's own attributes are not drift.
//! * **Target-side memory is bounded by the page size**: the [`Classifier`] takes one account at
//!   a time and keeps none; it remembers one byte per identity (roster's own data,
//!   O(identities)) to report `missing` at the end.
//! * **roster's side is a compact index, not rendered users**: [`Desired`] holds per identity
//!   its id, scope, link target and matching value (packed strings and hash-sorted vectors,
//!   about 150 bytes); the users an account is compared with are read and rendered per page
//!   ([`Classifier::to_render`], [`Classifier::render`]) and dropped after it. An account whose
//!   identity was not rendered is an error ([`ReconcileError::NotRendered`]), never compared
//!   with nothing.
//! * Deterministic: the same identities, links, settings and accounts give the same findings.
//!
//! Public API:
//!
//! * `classify.rs`: [`Desired`] (`new`, `reserve`, `insert`), [`LinkInfo`], [`Classifier`]
//!   (`new`, `to_render`, `identity_id`, `render`, `forget_renderings`, `classify_account`,
//!   `unseen_links`, `superseded`, `missing`, `missing_finding`), [`IdentityRef`], [`Finding`], [`Class`],
//!   [`Action`] (`label`, `kind`, `is_deprovision`, `changes`), [`ActionKind`],
//!   [`ReconcileError`], [`account_is_managed`] (the scope-filter rule, also asked by delivery
//!   right before it deprovisions an account by id). The module documentation gives the order
//!   of the classification questions and why.
//! * `groups.rs`: [`DesiredGroup`], [`GroupClassifier`] (`new`, `classify_group`, `finish`),
//!   [`GroupFinding`] (`differences`), [`Member`], [`unnamed_members`], [`name_members`],
//!   [`lists_members`] (with `GroupClassifier::concerns`: a pushed group listed without
//!   `members` is read by id before it is compared): the
//!   groups the app pushes against the target's `/Groups`.
//! * `guard.rs`: [`deletion_guard`] → [`GuardDecision`].
//! * `report.rs`: [`Report`], [`ReportItem`], [`Counts`], [`GroupCounts`], [`Resource`],
//!   [`RunState`].
//! * `run.rs`: [`run::begin`], [`run::execute`], [`run::approve_held`] (IO: scim, store, and the
//!   delivery runtime for the app's client and the queue).
mod classify;
mod groups;
mod guard;
mod report;
pub mod run;
#[cfg(test)]
mod tests;

pub use classify::{
    Action, ActionKind, Class, Classifier, Desired, Finding, IdentityRef, LinkInfo, ReconcileError,
    account_is_managed,
};
pub use groups::{
    DesiredGroup, GroupClassifier, GroupFinding, Member, lists_members, name_members,
    unnamed_members,
};
pub use guard::{GuardDecision, MIN_ACCOUNTS_FOR_FRACTION, deletion_guard};
pub use report::{Counts, GroupCounts, Report, ReportItem, Resource, RunState};
