//! `reconcile`: one report-mode (dry) reconciliation run over a large target (DESIGN §8:
//! 100k target users, 1 % drifted, 0.5 % orphans): elapsed seconds, peak RSS, and whether every
//! account landed in the class it was seeded for.
//!
//! Seeding 100k linked accounts through HR events and delivery would take most of an hour, so
//! both sides are filled directly: the in-process dev-target's store gets the accounts (as
//! roster's mappings render them), and roster's database gets the identities and their links
//! by multi-row inserts in a few transactions ([`seed`]). The run itself is the service-level
//! use case that `roster reconcile` and the API call (`begin_reconcile` + `run_reconcile`),
//! paging the dev-target over loopback HTTP.
//!
//! The dev-target runs in a process of its own (`roster dev-target`, seeded through its
//! `/_dev/users:load`) when the bench knows roster's executable (`roster bench` does), so that
//! `peak_rss_mb` is roster's alone (`dev_target` says `process`). Otherwise (in tests without
//! it) the target is in this process, and `dev_target_mb` is how much the resident set grew
//! while its store was filled; `roster_peak_rss_mb` is then `peak_rss_mb` less that share.
//!
//! Peak RSS: the process's high-water mark is reset after seeding (`/proc/self/clear_refs`),
//! so `peak_rss_mb` is the peak from the run's start. `rss_before_run_mb` is the base the run
//! started from, `seed_peak_rss_mb` the peak of the setup.
use std::collections::BTreeSet;
use std::time::Instant;

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect, Set};
use serde_json::{Value, json};

use super::harness::{Harness, TargetProcess};
use super::{BenchError, Figures, Scenario};
use crate::dev_target::{DevTargetArgs, Kind};
use crate::mapping::{self, CompiledMappings, IdentityView};
use crate::reconcile::Counts;
use crate::service::reconcile::RunOptions;
use crate::settings::ReconcileMode;
use crate::store::entity::{identity, link, reconcile_item};

/// Rows per multi-row INSERT (15 columns: far below SQLite's and PostgreSQL's bind limits).
const INSERT_ROWS: usize = 500;
/// Rows per seeding transaction.
const TX_ROWS: usize = 5_000;

/// What was seeded: the counts a correct run must report, and who drifted.
#[derive(Debug, Clone, Default)]
pub struct Seeded {
    pub expected: Counts,
    /// Identity ids whose accounts were changed in the target.
    pub drifted: BTreeSet<String>,
    /// How much the process's resident set grew while the dev-target's store was filled: the
    /// part of `peak_rss_mb` that is the in-process target, not roster.
    pub dev_target_mb: Option<f64>,
}

/// Accounts per seeding request to a dev-target process.
const LOAD_ROWS: usize = 20_000;

/// `dev_target_exe`: roster's executable, to run the dev-target in a process of its own.
pub async fn run(
    n: usize,
    dev_target_exe: Option<&std::path::Path>,
) -> Result<Figures, BenchError> {
    let process = match dev_target_exe {
        Some(exe) => Some(TargetProcess::spawn(exe).await?),
        None => None,
    };
    let harness = Harness::start(DevTargetArgs::default()).await?;
    let result = measure(&harness, process.as_ref(), n).await;
    harness.stop().await;
    result
}

async fn measure(
    harness: &Harness,
    process: Option<&TargetProcess>,
    n: usize,
) -> Result<Figures, BenchError> {
    let base_url = process.map_or_else(|| harness.target.base_url(), |p| p.base_url.clone());
    let app_id = harness.create_app_on(&base_url, 1000, 1000, 4).await?;
    let seeding = Instant::now();
    let seeded = seed(harness, process, &app_id, n).await?;
    let seed_seconds = seeding.elapsed();

    let seed_peak = super::peak_rss_mb();
    let rss_before = super::current_rss_mb();
    super::reset_peak_rss();
    let roster = &harness.roster;
    let start = Instant::now();
    let run = roster
        .begin_reconcile(
            None,
            &app_id,
            RunOptions {
                dry_run: true,
                mode: Some(ReconcileMode::Report),
            },
        )
        .await
        .map_err(|e| unexpected("starting the run", e))?;
    let outcome = roster
        .run_reconcile(&run.id)
        .await
        .map_err(|e| unexpected("the reconcile run", e))?;
    let elapsed = start.elapsed();

    let drifted_found = drifted_identities(harness, &run.id).await?;
    let correct =
        outcome.counts == seeded.expected && outcome.writes == 0 && drifted_found == seeded.drifted;
    let counts = serde_json::to_value(outcome.counts).unwrap_or(Value::Null);
    let expected = serde_json::to_value(seeded.expected).unwrap_or(Value::Null);
    let accounts_read = outcome.counts.total() - outcome.counts.missing;
    Ok(Figures::new(Scenario::Reconcile)
        .with("target_users", accounts_read)
        .with("seconds", super::round(elapsed.as_secs_f64(), 2))
        .with(
            "accounts_per_s",
            super::per_second(
                usize::try_from(accounts_read).unwrap_or(usize::MAX),
                elapsed,
            ),
        )
        .with("all_classified_correctly", correct)
        .with("counts", counts)
        .with("expected", expected)
        .with("writes", outcome.writes)
        .with("seed_seconds", super::round(seed_seconds.as_secs_f64(), 1))
        .with(
            "seed_peak_rss_mb",
            seed_peak.map_or(Value::Null, Value::from),
        )
        .with(
            "dev_target_mb",
            seeded.dev_target_mb.map_or(Value::Null, Value::from),
        )
        .with(
            "rss_before_run_mb",
            rss_before.map_or(Value::Null, Value::from),
        )
        .with(
            "dev_target",
            if process.is_some() {
                "process"
            } else {
                "in-process"
            },
        ))
}

pub(super) fn unexpected(what: &str, e: impl std::fmt::Display) -> BenchError {
    BenchError::Unexpected {
        what: what.to_owned(),
        detail: e.to_string(),
    }
}

/// The identities of the run's `drifted` items.
pub(super) async fn drifted_identities(
    harness: &Harness,
    run_id: &str,
) -> Result<BTreeSet<String>, BenchError> {
    let rows: Vec<Option<String>> = reconcile_item::Entity::find()
        .select_only()
        .column(reconcile_item::Column::IdentityId)
        .filter(reconcile_item::Column::RunId.eq(run_id))
        .filter(reconcile_item::Column::Class.eq("drifted"))
        .into_tuple()
        .all(harness.roster.db())
        .await
        .map_err(|e| unexpected("reading the drifted items", e))?;
    Ok(rows.into_iter().flatten().collect())
}

/// `n` target accounts: 0.5 % active accounts of terminated identities (orphans, matched by
/// `userName`, not linked), the rest linked to active identities in scope, of which 1 % were
/// changed in the target (`name.givenName`: drifted). Into the dev-target `process` if there
/// is one, else into the harness's own.
pub async fn seed(
    harness: &Harness,
    process: Option<&TargetProcess>,
    app_id: &str,
    n: usize,
) -> Result<Seeded, BenchError> {
    let app = harness
        .roster
        .get_app(app_id)
        .await
        .map_err(|e| unexpected("reading the app", e))?;
    let compiled = crate::settings::compile_mappings(&app.settings)
        .map_err(|e| unexpected("compiling the app's mappings", e))?;
    let mix = Mix::new(n);
    let orphan = |i: usize| mix.orphan(i);
    let drifted = |i: usize| mix.drifted(i);
    let status = |i: usize| mix.status(i);

    // The target first, alone, so that its share of the process's memory can be told apart.
    let before = super::current_rss_mb();
    let mut target_ids: Vec<Option<Box<str>>> = Vec::with_capacity(n);
    let account = |i: usize| {
        let mut account = mapping::render_user(&compiled, &person(i, status(i)));
        account["active"] = json!(true);
        if drifted(i) {
            account["name"]["givenName"] = json!("Changed by hand");
        }
        account
    };
    if let Some(process) = process {
        let mut start = 0;
        while start < n {
            let end = (start + LOAD_ROWS).min(n);
            let accounts: Vec<Value> = (start..end).map(account).collect();
            let ids = process.load_users(&accounts).await?;
            if ids.len() != accounts.len() {
                return Err(unexpected(
                    "seeding the dev-target",
                    format!("{} ids for {} accounts", ids.len(), accounts.len()),
                ));
            }
            target_ids.extend(ids.into_iter().map(|id| id.map(Box::from)));
            start = end;
        }
    } else {
        for i in 0..n {
            let created = harness
                .target
                .insert(Kind::User, account(i))
                .map_err(|e| unexpected("seeding the dev-target", e))?;
            target_ids.push(created["id"].as_str().map(Box::from));
        }
    }
    let mut seeded = Seeded {
        dev_target_mb: match (process, before, super::current_rss_mb()) {
            (None, Some(before), Some(after)) => Some(super::round(after - before, 1)),
            _ => None,
        },
        ..Seeded::default()
    };

    let db = harness.roster.store();
    let mut start = 0;
    while start < n {
        let end = (start + TX_ROWS).min(n);
        let mut identities = Vec::with_capacity(end - start);
        let mut links = Vec::with_capacity(end - start);
        for (i, target_id) in target_ids.iter().enumerate().take(end).skip(start) {
            let person = person(i, status(i));
            identities.push(identity_row(&person));
            if orphan(i) {
                seeded.expected.orphan += 1;
                continue;
            }
            let target_id = target_id.as_deref().map(str::to_owned);
            links.push(link_row(app_id, &person, target_id, &compiled));
            if drifted(i) {
                seeded.expected.drifted += 1;
                seeded.drifted.insert(person.id.clone());
            } else {
                seeded.expected.in_sync += 1;
            }
        }
        let tx = db
            .write_tx()
            .await
            .map_err(|e| unexpected("seeding roster", e))?;
        for chunk in identities.chunks(INSERT_ROWS) {
            identity::Entity::insert_many(chunk.to_vec())
                .exec(&*tx)
                .await
                .map_err(|e| unexpected("inserting identities", e))?;
        }
        for chunk in links.chunks(INSERT_ROWS) {
            link::Entity::insert_many(chunk.to_vec())
                .exec(&*tx)
                .await
                .map_err(|e| unexpected("inserting links", e))?;
        }
        tx.commit()
            .await
            .map_err(|e| unexpected("seeding roster", e))?;
        start = end;
    }
    Ok(seeded)
}

/// The seeded mix of `n` accounts: 0.5 % orphans (terminated people's active accounts, spread
/// through the listing), 1 % of the rest drifted.
#[derive(Debug, Clone, Copy)]
pub(super) struct Mix {
    n: usize,
    orphans: usize,
}

impl Mix {
    pub(super) fn new(n: usize) -> Self {
        Self {
            n,
            orphans: n / 200,
        }
    }

    pub(super) fn orphan(self, i: usize) -> bool {
        // Spread through the listing, not bunched at its end.
        self.orphans > 0
            && i.is_multiple_of(self.n / self.orphans)
            && i / (self.n / self.orphans) < self.orphans
    }

    pub(super) fn drifted(self, i: usize) -> bool {
        !self.orphan(i) && i % 100 == 1
    }

    pub(super) fn status(self, i: usize) -> &'static str {
        if self.orphan(i) {
            "terminated"
        } else {
            "active"
        }
    }
}

/// Person `R{i}` as seeded (also by the `hr-snapshot` scenario).
pub(super) fn person(i: usize, status: &str) -> IdentityView {
    IdentityView {
        id: uuid::Uuid::now_v7().to_string(),
        employee_id: format!("R{i}"),
        user_name: Some(format!("r{i}")),
        email: Some(format!("r{i}@example.com")),
        given_name: Some("Bench".to_owned()),
        family_name: Some(format!("User {i}")),
        display_name: None,
        department: Some("Engineering".to_owned()),
        title: Some("Engineer".to_owned()),
        manager_employee_id: None,
        attributes: json!({}),
        status: status.to_owned(),
        groups: Vec::new(),
    }
}

/// `person`'s identity row, source `hr`.
pub(super) fn identity_row(person: &IdentityView) -> identity::ActiveModel {
    let now = chrono::Utc::now();
    identity::ActiveModel {
        id: Set(person.id.clone()),
        employee_id: Set(person.employee_id.clone()),
        source: Set(crate::service::ingest::DEFAULT_SOURCE.to_owned()),
        user_name: Set(person.user_name.clone()),
        email: Set(person.email.clone()),
        given_name: Set(person.given_name.clone()),
        family_name: Set(person.family_name.clone()),
        display_name: Set(person.display_name.clone()),
        department: Set(person.department.clone()),
        title: Set(person.title.clone()),
        manager_employee_id: Set(None),
        attributes: Set(person.attributes.clone()),
        status: Set(person.status.clone()),
        last_event_at: Set(Some(now)),
        field_times: Set(None),
        version: Set(1),
        created_at: Set(now),
        updated_at: Set(now),
    }
}

/// The link delivery would have left: linked to the account, with what it applied.
pub(super) fn link_row(
    app_id: &str,
    person: &IdentityView,
    target_id: Option<String>,
    compiled: &CompiledMappings,
) -> link::ActiveModel {
    let now = chrono::Utc::now();
    let snapshot = mapping::render_user(compiled, person);
    link::ActiveModel {
        app_id: Set(app_id.to_owned()),
        resource_kind: Set("user".to_owned()),
        resource_id: Set(person.id.clone()),
        target_id: Set(target_id),
        snapshot_hash: Set(Some(mapping::snapshot_hash(&snapshot))),
        snapshot: Set(Some(snapshot)),
        state: Set("linked".to_owned()),
        last_error: Set(None),
        delete_after: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
}
