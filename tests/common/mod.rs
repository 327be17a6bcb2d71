//! What every test binary shares, included by path (`#[path = "../common/mod.rs"] mod common;`)
//! rather than built as a binary of its own: the test database and the app body.
//!
//! `ROSTER_REQUIRE_POSTGRES=true` (set by `.ci/run` in its PostgreSQL step) turns a lost or
//! non-PostgreSQL `ROSTER_TEST_DATABASE_URL` into a failure instead of a second green SQLite run,
//! and makes the PostgreSQL-only tests run or fail, never skip.
#![allow(dead_code)]

use sea_orm::{ConnectionTrait, Database};
use serde_json::{Value, json};

/// Whether this run must be on PostgreSQL (`ROSTER_REQUIRE_POSTGRES=true`).
pub fn postgres_required() -> bool {
    std::env::var("ROSTER_REQUIRE_POSTGRES").is_ok_and(|v| v == "true")
}

/// The PostgreSQL server URL from `ROSTER_TEST_DATABASE_URL`, if it names one. Fails the test
/// when PostgreSQL is required and the URL is missing or not PostgreSQL.
pub fn postgres_url() -> Option<String> {
    let url = std::env::var("ROSTER_TEST_DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres"));
    assert!(
        url.is_some() || !postgres_required(),
        "ROSTER_REQUIRE_POSTGRES=true but ROSTER_TEST_DATABASE_URL does not name a PostgreSQL server"
    );
    url
}

/// For a test that only means something on PostgreSQL: `false` (and a printed reason) when it
/// may skip, on a developer's SQLite run; under `ROSTER_REQUIRE_POSTGRES=true` it never skips.
pub fn on_postgres(what: &str) -> bool {
    if postgres_url().is_some() {
        return true;
    }
    eprintln!("skipped: {what} needs PostgreSQL (set ROSTER_TEST_DATABASE_URL=postgres://…)");
    false
}

/// A new database for one test: a SQLite file in `dir`, or a new database on the PostgreSQL
/// server `ROSTER_TEST_DATABASE_URL` names.
pub async fn fresh_database(dir: &std::path::Path) -> String {
    match postgres_url() {
        Some(url) => {
            let admin = Database::connect(&url)
                .await
                .expect("connect to the test PostgreSQL");
            let name = format!("roster_t_{}", uuid::Uuid::new_v4().simple());
            admin
                .execute_unprepared(&format!("CREATE DATABASE {name}"))
                .await
                .expect("create a test database");
            admin.close().await.ok();
            let (base, _) = url.rsplit_once('/').expect("a database URL ends in /NAME");
            format!("{base}/{name}")
        }
        None => format!("sqlite://{}?mode=rwc", dir.join("roster.db").display()),
    }
}

/// An app body with sensible test defaults; `overrides` are merged at the top level.
pub fn app_body(name: &str, overrides: Value) -> Value {
    let mut body = json!({
        "name": name,
        "base_url": "http://127.0.0.1:9/scim/v2",
        "auth": {"type": "bearer", "token": "target-token"},
        "scope": {"email_domains": ["example.com"]},
    });
    if let (Some(b), Some(o)) = (body.as_object_mut(), overrides.as_object()) {
        for (k, v) in o {
            b.insert(k.clone(), v.clone());
        }
    }
    body
}
