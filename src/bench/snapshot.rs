//! `hr-snapshot`: a whole-population HR export diffed and applied (DESIGN §8: 100k people, 1 %
//! changed, against 100k identities, on SQLite), timed from the `POST /hr/snapshots` to the
//! snapshot's `applied`.
//!
//! The 100k identities are seeded directly (multi-row inserts, as the `reconcile` scenario
//! seeds them), not through events: that is setup, not the measured part. The file then
//! carries every one of them but `leavers` (absent: ended), `joiners` new people, and `movers`
//! whose title changed; the three add up to 1 % of the size, with the leavers within the
//! guard's default 50. No app is registered, so the figure is the snapshot's own work (the
//! diff and the ingest of each change), not delivery.
//!
//! Correctness beside the speed: the snapshot's counts must equal those computed here, every
//! change is applied, and the identities afterwards hold the file (`exact`).
//!
//! `cpu_seconds` is the process's CPU time over the run (roster's, and the bench's polls):
//! steadier than `seconds` on a busy machine, read with `load_average`.
//!
//! Peak RSS: the high-water mark is reset after seeding and after the file is built, so
//! `peak_rss_mb` is the peak of the run (roster's diff and apply; the file in this process,
//! about 10 MB at 100k, is part of it).
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{Value, json};

use super::harness::Harness;
use super::reconcile::{identity_row, person};
use super::{BenchError, Figures, Scenario};
use crate::dev_target::DevTargetArgs;
use crate::store::entity::{hr_event, identity};

/// Rows per seeding INSERT (far below SQLite's and PostgreSQL's bind limits), per transaction.
const INSERT_ROWS: usize = 500;
const TX_ROWS: usize = 5_000;
/// The title movers get.
const NEW_TITLE: &str = "Senior Engineer";

/// The changes the file makes, by construction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Plan {
    pub joiners: u64,
    pub movers: u64,
    pub leavers: u64,
}

impl Plan {
    fn total(self) -> u64 {
        self.joiners + self.movers + self.leavers
    }
}

/// Seeded person `i` is absent from the file (one in 2000: 50 of 100k).
fn is_leaver(i: usize) -> bool {
    i % 2000 == 2
}

/// Seeded person `i` has a new title in the file: one in 100, less one in 1000, so that with
/// the joiners and leavers 1 % of the people change.
fn is_mover(i: usize) -> bool {
    i % 100 == 1 && i % 1000 != 1
}

fn joiners_of(n: usize) -> usize {
    n / 2000
}

pub async fn run(n: usize) -> Result<Figures, BenchError> {
    let harness = Harness::start(DevTargetArgs::default()).await?;
    let result = measure(&harness, n).await;
    harness.stop().await;
    result
}

fn unexpected(what: &str, e: impl std::fmt::Display) -> BenchError {
    BenchError::Unexpected {
        what: what.to_owned(),
        detail: e.to_string(),
    }
}

async fn measure(harness: &Harness, n: usize) -> Result<Figures, BenchError> {
    let seeding = Instant::now();
    seed(harness, n).await?;
    let seed_seconds = seeding.elapsed();
    let (file, plan) = file(n);
    let bytes = file.len();

    let seed_peak = super::peak_rss_mb();
    let rss_before = super::current_rss_mb();
    super::reset_peak_rss();
    let cpu_before = super::cpu_time();
    let start = Instant::now();
    let answer = harness
        .post_body("/hr/snapshots", "text/csv", file.into_bytes(), 202)
        .await?;
    let accepted = start.elapsed();
    let id = answer["id"]
        .as_str()
        .ok_or_else(|| unexpected("POST /hr/snapshots", format!("no id in {answer}")))?
        .to_owned();
    let deadline = Duration::from_secs(120 + (n as u64) / 500);
    let (snapshot, applying_at) = wait_until_settled(harness, &id, deadline).await?;
    let elapsed = start.elapsed();
    let cpu = super::cpu_time()
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    let applying_at = applying_at.map(|at| at.duration_since(start));

    let counts = &snapshot["counts"];
    let got = Plan {
        joiners: counts["joiners"].as_u64().unwrap_or(0),
        movers: counts["movers"].as_u64().unwrap_or(0),
        leavers: counts["leavers"].as_u64().unwrap_or(0),
    };
    let rows = counts["rows"].as_u64().unwrap_or(0);
    let unchanged = counts["unchanged"].as_u64().unwrap_or(0);
    let applied = snapshot["progress"]["applied"].as_u64().unwrap_or(0);
    let after = after_state(harness).await?;
    let expected_rows = (n - (0..n).filter(|&i| is_leaver(i)).count() + joiners_of(n)) as u64;
    let expected_active = (n as u64) - plan.leavers + plan.joiners;
    let exact = snapshot["state"] == "applied"
        && got == plan
        && rows == expected_rows
        && unchanged == rows - plan.joiners - plan.movers
        && applied == plan.total()
        && after.active == expected_active
        && after.titled == plan.movers
        && after.snapshot_events == plan.total();
    Ok(Figures::new(Scenario::HrSnapshot)
        .with("identities", n)
        .with("rows", rows)
        .with("bytes", bytes)
        .with("state", snapshot["state"].clone())
        .with(
            "counts",
            json!({"joiners": got.joiners, "movers": got.movers, "leavers": got.leavers,
                   "unchanged": unchanged}),
        )
        .with(
            "expected",
            json!({"joiners": plan.joiners, "movers": plan.movers, "leavers": plan.leavers,
                   "unchanged": expected_rows - plan.joiners - plan.movers}),
        )
        .with("applied", applied)
        .with("active_after", after.active)
        .with("exact", exact)
        .with("seconds", super::round(elapsed.as_secs_f64(), 2))
        .with(
            "cpu_seconds",
            cpu.map_or(Value::Null, |c| {
                Value::from(super::round(c.as_secs_f64(), 2))
            }),
        )
        .with(
            "load_average",
            super::load_average().map_or(Value::Null, Value::from),
        )
        .with("accepted_seconds", super::round(accepted.as_secs_f64(), 2))
        .with(
            "applying_from_seconds",
            applying_at.map_or(Value::Null, |at| {
                Value::from(super::round(at.as_secs_f64(), 2))
            }),
        )
        .with("seed_seconds", super::round(seed_seconds.as_secs_f64(), 1))
        .with(
            "seed_peak_rss_mb",
            seed_peak.map_or(Value::Null, Value::from),
        )
        .with(
            "rss_before_run_mb",
            rss_before.map_or(Value::Null, Value::from),
        ))
}

/// `n` active identities `R0..R{n}` of source `hr`, as [`person`] makes them.
async fn seed(harness: &Harness, n: usize) -> Result<(), BenchError> {
    let db = harness.roster.store();
    let mut start = 0;
    while start < n {
        let end = (start + TX_ROWS).min(n);
        let rows: Vec<identity::ActiveModel> = (start..end)
            .map(|i| identity_row(&person(i, "active")))
            .collect();
        let tx = db
            .write_tx()
            .await
            .map_err(|e| unexpected("seeding roster", e))?;
        for chunk in rows.chunks(INSERT_ROWS) {
            identity::Entity::insert_many(chunk.to_vec())
                .exec_without_returning(&*tx)
                .await
                .map_err(|e| unexpected("inserting identities", e))?;
        }
        tx.commit()
            .await
            .map_err(|e| unexpected("seeding roster", e))?;
        start = end;
    }
    Ok(())
}

/// The CSV export: every seeded person but the leavers, movers with [`NEW_TITLE`], then the
/// joiners `J0..`; and the changes it makes.
fn file(n: usize) -> (String, Plan) {
    let mut plan = Plan::default();
    let mut csv = String::with_capacity(n * 96);
    csv.push_str("employee_id,user_name,email,given_name,family_name,department,title\n");
    for i in 0..n {
        if is_leaver(i) {
            plan.leavers += 1;
            continue;
        }
        let title = if is_mover(i) {
            plan.movers += 1;
            NEW_TITLE
        } else {
            "Engineer"
        };
        let _ = writeln!(
            csv,
            "R{i},r{i},r{i}@example.com,Bench,User {i},Engineering,{title}"
        );
    }
    for j in 0..joiners_of(n) {
        plan.joiners += 1;
        let _ = writeln!(
            csv,
            "J{j},j{j},j{j}@example.com,Bench,Joiner {j},Engineering,Engineer"
        );
    }
    (csv, plan)
}

/// Polls the snapshot until it leaves `received`, `diffing` and `applying`; returns it and
/// when it was first seen `applying` (the diff's end, to within the 20 ms of a poll).
async fn wait_until_settled(
    harness: &Harness,
    id: &str,
    deadline: Duration,
) -> Result<(Value, Option<Instant>), BenchError> {
    let start = Instant::now();
    let mut applying_at = None;
    loop {
        let snapshot = harness.get(&format!("/hr/snapshots/{id}")).await?;
        let state = snapshot["state"].as_str().unwrap_or("");
        if state == "applying" {
            applying_at.get_or_insert_with(Instant::now);
        }
        if !["received", "diffing", "applying"].contains(&state) {
            return Ok((snapshot, applying_at));
        }
        if start.elapsed() > deadline {
            return Err(BenchError::Timeout {
                what: format!("snapshot {id} to be applied (it is `{state}`)"),
                after: deadline,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct After {
    /// Active identities of source `hr`.
    active: u64,
    /// Identities with the movers' title.
    titled: u64,
    /// HR events the snapshot's changes made.
    snapshot_events: u64,
}

async fn after_state(harness: &Harness) -> Result<After, BenchError> {
    let db = harness.roster.db();
    let count = |e: sea_orm::DbErr| unexpected("counting the result", e);
    Ok(After {
        active: harness
            .roster
            .active_people_of_source(crate::service::ingest::DEFAULT_SOURCE)
            .await
            .map_err(|e| unexpected("counting the result", e))?,
        titled: identity::Entity::find()
            .filter(identity::Column::Title.eq(NEW_TITLE))
            .count(db)
            .await
            .map_err(count)?,
        snapshot_events: hr_event::Entity::find()
            .filter(hr_event::Column::EventId.starts_with("hr-snapshot:"))
            .count(db)
            .await
            .map_err(count)?,
    })
}
