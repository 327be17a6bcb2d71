//! What every test binary shares, included by path (`#[path = "../common/mod.rs"] mod common;`)
//! rather than built as a binary of its own: the test database, the app body, and the pieces
//! of a stub target (serving on 127.0.0.1 port 0, SCIM answers).
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
    merge(&mut body, &overrides);
    body
}

/// Sets each top-level field of `extra` in `body` (both JSON objects), replacing what was there.
pub fn merge(body: &mut Value, extra: &Value) {
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        for (key, value) in extra {
            body.insert(key.clone(), value.clone());
        }
    }
}

/// Serves `endpoint` (a stub target, a relay, a collector) on 127.0.0.1, port 0, until the
/// test's runtime ends; returns its address.
pub async fn serve(endpoint: impl poem::Endpoint + 'static) -> std::net::SocketAddr {
    serve_until(endpoint, tokio_util::sync::CancellationToken::new()).await
}

/// [`serve`], stopping gracefully when `stop` is cancelled.
pub async fn serve_until(
    endpoint: impl poem::Endpoint + 'static,
    stop: tokio_util::sync::CancellationToken,
) -> std::net::SocketAddr {
    use poem::listener::{Acceptor as _, Listener as _};
    let acceptor = poem::listener::TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .expect("bind a loopback port");
    let addr = acceptor
        .local_addr()
        .first()
        .and_then(|a| a.as_socket_addr().copied())
        .expect("a socket address");
    tokio::spawn(async move {
        poem::Server::new_with_acceptor(acceptor)
            .run_with_graceful_shutdown(endpoint, stop.cancelled_owned(), None)
            .await
    });
    addr
}

/// A stub target's answer: `body` as `application/scim+json` with `status`.
pub fn scim_answer(status: u16, body: &Value) -> poem::Response {
    poem::Response::builder()
        .status(
            poem::http::StatusCode::from_u16(status)
                .unwrap_or(poem::http::StatusCode::INTERNAL_SERVER_ERROR),
        )
        .content_type("application/scim+json")
        .body(body.to_string())
}

/// A stub target's discovery document: PATCH and filters (100 a page), nothing else.
pub fn stub_service_provider_config() -> Value {
    json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
           "patch": {"supported": true}, "filter": {"supported": true, "maxResults": 100},
           "bulk": {"supported": false}, "etag": {"supported": false},
           "sort": {"supported": false}, "changePassword": {"supported": false}})
}

/// A listing that found no one.
pub fn empty_list() -> Value {
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
           "totalResults": 0, "startIndex": 1, "itemsPerPage": 0, "Resources": []})
}

/// A SCIM error body with `status`.
pub fn scim_error(status: u16) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
           "status": status.to_string()})
}
