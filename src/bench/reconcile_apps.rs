//! `reconcile --apps N` (DESIGN §8: `--apps 50 --size 20000`): N apps of `size` accounts each,
//! all due at the same minute, started through the scheduler's own path
//! ([`schedule_due`](crate::service::reconcile::schedule_due)), so that
//! `ROSTER_RECONCILE_CONCURRENCY` decides how many read at once. Figures: whether every run
//! completed with exactly the seeded counts (per app), the total time, roster's peak RSS, and
//! the most runs in progress at once.
//!
//! One HR population of `size` people (the single-app mix: 0.5 % terminated, whose accounts are
//! orphans in every app) and, per app, `size` accounts in a tenant of its own of one dev-target
//! (`/tenants/appK/scim/v2`), 1 % of each app's drifted, with the links delivery would have
//! left. The dev-target runs in a process of its own when the bench knows roster's executable,
//! so that the peak RSS is roster's alone. Everything is seeded directly, as in the one-app
//! scenario ([`super::reconcile`]); the peak is measured from the runs' start.
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};

use super::harness::{self, Harness, TargetProcess};
use super::reconcile::{Mix, drifted_identities, identity_row, link_row, person, unexpected};
use super::{BenchError, Figures, Scenario};
use crate::dev_target::{DevTargetArgs, SCIM_ROOT, TENANT_PREFIX};
use crate::mapping;
use crate::reconcile::Counts;
use crate::store::entity::{app, identity, link, reconcile_run};

/// Accounts per seeding request.
const LOAD_ROWS: usize = 20_000;
/// Rows per multi-row INSERT, and per seeding transaction.
const INSERT_ROWS: usize = 500;
const TX_ROWS: usize = 5_000;
/// How long the runs may take together before the scenario gives up.
const DEADLINE: Duration = Duration::from_secs(3600);

/// `apps` apps of `n` accounts, reconciled with `concurrency` runs at once.
pub async fn run(
    n: usize,
    apps: usize,
    concurrency: usize,
    dev_target_exe: Option<&std::path::Path>,
) -> Result<Figures, BenchError> {
    let process = match dev_target_exe {
        Some(exe) => Some(TargetProcess::spawn(exe).await?),
        None => None,
    };
    let harness = Harness::start_with(DevTargetArgs::default(), |config| {
        config.reconcile_concurrency = concurrency;
    })
    .await?;
    let result = measure(&harness, process.as_ref(), n, apps, concurrency).await;
    harness.stop().await;
    result
}

/// One app's run as its row ended.
struct AppRun {
    exact: bool,
    state: String,
    seconds: f64,
}

async fn measure(
    harness: &Harness,
    process: Option<&TargetProcess>,
    n: usize,
    apps: usize,
    concurrency: usize,
) -> Result<Figures, BenchError> {
    let base = process.map_or_else(|| harness.target.base_url(), |p| p.base_url.clone());
    let root = base.strip_suffix(SCIM_ROOT).unwrap_or(&base).to_owned();
    let mut targets = Vec::with_capacity(apps);
    for k in 0..apps {
        let url = format!("{root}{TENANT_PREFIX}app{k}{SCIM_ROOT}");
        let extra = json!({
            "name": format!("bench-app-{k}"),
            "reconcile": {"interval_minutes": 60, "mode": "report"},
        });
        let id = harness.create_app_with(&url, 1000, 1000, 4, extra).await?;
        targets.push((id, url));
    }
    let seeding = Instant::now();
    let (expected, drifted) = seed(harness, &targets, n).await?;
    let seed_seconds = seeding.elapsed();
    // Registered long ago: every app is due at the scheduler's next look.
    app::Entity::update_many()
        .col_expr(
            app::Column::CreatedAt,
            Expr::value(chrono::Utc::now() - chrono::Duration::days(1)),
        )
        .exec(harness.roster.db())
        .await
        .map_err(|e| unexpected("making the apps due", e))?;

    let seed_peak = super::peak_rss_mb();
    let rss_before = super::current_rss_mb();
    super::reset_peak_rss();
    let roster = &harness.roster;
    let start = Instant::now();
    let mut runs = tokio::task::JoinSet::new();
    crate::service::reconcile::schedule_due(roster, &mut runs).await;
    let ids: Vec<String> = targets.iter().map(|(id, _)| id.clone()).collect();
    let mut most_waiting = 0usize;
    let rows = loop {
        let rows = reconcile_run::Entity::find()
            .filter(reconcile_run::Column::AppId.is_in(ids.iter().map(String::as_str)))
            .all(roster.db())
            .await
            .map_err(|e| unexpected("reading the runs", e))?;
        most_waiting = most_waiting.max(rows.iter().filter(|r| r.waiting).count());
        if rows.len() >= apps && rows.iter().all(|r| r.state != "running") {
            break rows;
        }
        if start.elapsed() > DEADLINE {
            return Err(BenchError::Timeout {
                what: format!(
                    "{apps} reconcile runs ({} begun, {} still running)",
                    rows.len(),
                    rows.iter().filter(|r| r.state == "running").count()
                ),
                after: DEADLINE,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let elapsed = start.elapsed();
    while runs.join_next().await.is_some() {}

    let mut per_app = Vec::with_capacity(apps);
    for (k, (app_id, _)) in targets.iter().enumerate() {
        let app_runs: Vec<&reconcile_run::Model> =
            rows.iter().filter(|r| &r.app_id == app_id).collect();
        let run = match app_runs.as_slice() {
            [run] => *run,
            _ => {
                per_app.push(AppRun {
                    exact: false,
                    state: format!("{} runs", app_runs.len()),
                    seconds: 0.0,
                });
                continue;
            }
        };
        let counts = serde_json::from_value::<Counts>(run.counts.clone()).unwrap_or_default();
        let found = drifted_identities(harness, &run.id).await?;
        let exact =
            run.state == "completed" && counts == expected && run.writes == 0 && found == drifted;
        if !exact {
            tracing::warn!(app = k, state = %run.state, error = ?run.error, ?counts, "A bench run is not exact");
        }
        let seconds = run.finished_at.map_or(0.0, |end| {
            (end - run.started_at).num_milliseconds() as f64 / 1000.0
        });
        per_app.push(AppRun {
            exact,
            state: run.state.clone(),
            seconds: super::round(seconds, 2),
        });
    }
    let completed = per_app.iter().filter(|r| r.state == "completed").count();
    let exact = per_app.iter().filter(|r| r.exact).count();
    let accounts = n * apps;
    Ok(Figures::new(Scenario::Reconcile)
        .with("apps", apps)
        .with("target_users_per_app", n)
        .with("reconcile_concurrency", concurrency)
        .with("seconds", super::round(elapsed.as_secs_f64(), 2))
        .with("accounts_per_s", super::per_second(accounts, elapsed))
        .with("runs_completed", completed)
        .with("runs_exact", exact)
        .with("all_classified_correctly", exact == apps)
        .with("max_runs_in_progress", roster.reconcile_slots().peak())
        .with("max_runs_waiting_seen", most_waiting)
        .with(
            "expected_per_app",
            serde_json::to_value(expected).unwrap_or(Value::Null),
        )
        .with(
            "per_app",
            per_app
                .iter()
                .map(|r| json!({"exact": r.exact, "state": r.state, "seconds": r.seconds}))
                .collect::<Vec<_>>(),
        )
        .with("seed_seconds", super::round(seed_seconds.as_secs_f64(), 1))
        .with(
            "seed_peak_rss_mb",
            seed_peak.map_or(Value::Null, Value::from),
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

/// The people once, then per app its accounts (in its tenant) and links. Returns the counts
/// every app's run must report and the people whose accounts drifted (in every app).
async fn seed(
    harness: &Harness,
    targets: &[(String, String)],
    n: usize,
) -> Result<(Counts, BTreeSet<String>), BenchError> {
    let mix = Mix::new(n);
    let people: Vec<_> = (0..n).map(|i| person(i, mix.status(i))).collect();
    let db = harness.roster.store();
    let insert = |what: &'static str| move |e: sea_orm::DbErr| unexpected(what, e);
    for chunk in people.chunks(TX_ROWS) {
        let tx = db.write_tx().await.map_err(insert("seeding roster"))?;
        for rows in chunk.chunks(INSERT_ROWS) {
            identity::Entity::insert_many(rows.iter().map(identity_row))
                .exec(&*tx)
                .await
                .map_err(insert("inserting identities"))?;
        }
        tx.commit().await.map_err(insert("seeding roster"))?;
    }
    let mut expected = Counts::default();
    let mut drifted = BTreeSet::new();
    for (i, person) in people.iter().enumerate() {
        if mix.orphan(i) {
            expected.orphan += 1;
        } else if mix.drifted(i) {
            expected.drifted += 1;
            drifted.insert(person.id.clone());
        } else {
            expected.in_sync += 1;
        }
    }

    let http = harness::client()?;
    for (app_id, url) in targets {
        let app = harness
            .roster
            .get_app(app_id)
            .await
            .map_err(|e| unexpected("reading the app", e))?;
        let compiled = crate::settings::compile_mappings(&app.settings)
            .map_err(|e| unexpected("compiling the app's mappings", e))?;
        let mut target_ids: Vec<Option<String>> = Vec::with_capacity(n);
        for (c, chunk) in people.chunks(LOAD_ROWS).enumerate() {
            let accounts: Vec<Value> = chunk
                .iter()
                .enumerate()
                .map(|(j, person)| {
                    let mut account = mapping::render_user(&compiled, person);
                    account["active"] = json!(true);
                    if mix.drifted(c * LOAD_ROWS + j) {
                        account["name"]["givenName"] = json!("Changed by hand");
                    }
                    account
                })
                .collect();
            let ids = harness::load_users(&http, url, &accounts).await?;
            if ids.len() != accounts.len() {
                return Err(unexpected(
                    "seeding the dev-target",
                    format!("{} ids for {} accounts", ids.len(), accounts.len()),
                ));
            }
            target_ids.extend(ids);
        }
        let links: Vec<link::ActiveModel> = people
            .iter()
            .zip(target_ids)
            .enumerate()
            .filter(|(i, _)| !mix.orphan(*i))
            .map(|(_, (person, target_id))| link_row(app_id, person, target_id, &compiled))
            .collect();
        for chunk in links.chunks(TX_ROWS) {
            let tx = db.write_tx().await.map_err(insert("seeding roster"))?;
            for rows in chunk.chunks(INSERT_ROWS) {
                link::Entity::insert_many(rows.to_vec())
                    .exec(&*tx)
                    .await
                    .map_err(insert("inserting links"))?;
            }
            tx.commit().await.map_err(insert("seeding roster"))?;
        }
    }
    Ok((expected, drifted))
}
