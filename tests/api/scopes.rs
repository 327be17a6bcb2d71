//! The scope × endpoint matrix: every route of the OpenAPI document, called with a key of each
//! scope, with no key and with a wrong key.
use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::helpers::{app_body, joiner, spawn_app};

#[derive(Clone, Copy, Debug)]
enum Needs {
    Read,
    AppsWrite,
    EventsWrite,
    Admin,
}

fn allowed(needs: Needs, scope: &str) -> bool {
    match needs {
        Needs::Read => matches!(scope, "admin" | "apps:write" | "read"),
        Needs::AppsWrite => matches!(scope, "admin" | "apps:write"),
        Needs::EventsWrite => matches!(scope, "admin" | "events:write"),
        Needs::Admin => scope == "admin",
    }
}

fn routes() -> Vec<(&'static str, &'static str, Needs)> {
    use Needs::*;
    vec![
        ("POST", "/apps", AppsWrite),
        ("GET", "/apps", Read),
        ("GET", "/apps/{id}", Read),
        ("PATCH", "/apps/{id}", AppsWrite),
        ("DELETE", "/apps/{id}", AppsWrite),
        ("POST", "/apps/{id}/pause", AppsWrite),
        ("POST", "/apps/{id}/resume", AppsWrite),
        ("POST", "/apps/{id}/test-connection", AppsWrite),
        ("GET", "/apps/{id}/status", Read),
        ("POST", "/apps/{id}/provision-on-demand", AppsWrite),
        ("POST", "/apps/{id}/reconcile", AppsWrite),
        ("GET", "/reconcile-runs", Read),
        ("GET", "/reconcile-runs/{id}", Read),
        ("POST", "/reconcile-runs/{id}/approve", Admin),
        ("GET", "/operations", Read),
        ("GET", "/jobs", Read),
        ("POST", "/jobs/{id}/retry", AppsWrite),
        ("POST", "/events", EventsWrite),
        ("POST", "/events:batch", EventsWrite),
        ("POST", "/hr/snapshots", EventsWrite),
        ("GET", "/hr/snapshots", Read),
        ("GET", "/hr/snapshots/{id}", Read),
        ("POST", "/hr/snapshots/{id}/approve", Admin),
        ("POST", "/hr/snapshots/{id}/cancel", Admin),
        ("GET", "/identities", Read),
        ("GET", "/identities/{id}", Read),
        ("GET", "/groups", Read),
        ("POST", "/groups", AppsWrite),
        ("GET", "/groups/{id}", Read),
        ("GET", "/groups/{id}/members", Read),
        ("PATCH", "/groups/{id}", AppsWrite),
        ("DELETE", "/groups/{id}", AppsWrite),
        ("POST", "/api-keys", Admin),
        ("GET", "/api-keys", Admin),
        ("DELETE", "/api-keys/{id}", Admin),
        ("GET", "/audit", Read),
        ("GET", "/connectors", Read),
        ("GET", "/connectors/{name}", Read),
    ]
}

/// A valid body for the route, unique per call so that allowed calls can succeed.
fn body_for(method: &str, path: &str, n: usize) -> Option<Value> {
    match (method, path) {
        ("POST", "/apps") => Some(app_body(&format!("m{n}"), json!({}))),
        ("PATCH", "/apps/{id}") => Some(json!({"max_concurrency": 2})),
        ("POST", "/events") => Some(joiner(
            &format!("ev{n}"),
            &format!("M{n}"),
            "2026-11-01T09:00:00Z",
            json!({}),
        )),
        ("POST", "/events:batch") => Some(
            json!({"events": [joiner(&format!("bv{n}"), &format!("B{n}"), "2026-11-01T09:00:00Z", json!({}))]}),
        ),
        // A JSON array of employees (the request helper sends `application/json`).
        ("POST", "/hr/snapshots") => Some(json!([
            {"employee_id": format!("S{n}"), "email": format!("s{n}@example.com")}
        ])),
        ("POST", "/groups") => Some(json!({"name": format!("g{n}"), "members": []})),
        ("PATCH", "/groups/{id}") => Some(json!({"members": []})),
        ("POST", "/api-keys") => Some(json!({"name": format!("k{n}"), "scopes": ["read"]})),
        ("POST", "/apps/{id}/provision-on-demand") => Some(json!({"identity_id": "nobody"})),
        ("POST", _) => Some(json!({})),
        _ => None,
    }
}

#[test]
fn the_matrix_covers_every_operation_of_the_api() {
    let spec: Value = serde_json::from_str(&roster::api::spec_json()).unwrap_or_default();
    let mut documented = BTreeSet::new();
    for (path, ops) in spec["paths"].as_object().into_iter().flatten() {
        for method in ops
            .as_object()
            .into_iter()
            .flatten()
            .map(|(m, _)| m.to_uppercase())
        {
            documented.insert(format!("{method} {path}"));
        }
    }
    let tested: BTreeSet<String> = routes()
        .iter()
        .map(|(m, p, _)| format!("{m} {p}"))
        .collect();
    assert_eq!(documented, tested, "add new routes to the scope matrix");
}

#[tokio::test]
async fn each_scope_reaches_exactly_its_routes() {
    let app = spawn_app().await;
    let scopes = ["admin", "apps:write", "events:write", "read"];
    let mut tokens = Vec::new();
    for s in scopes {
        tokens.push((s, app.key(&[s]).await));
    }
    let mut n = 0;
    for (method, path, needs) in routes() {
        // Job ids are numbers; everything else is a UUID.
        let id = if path.starts_with("/jobs") {
            "987654321"
        } else {
            "00000000-0000-0000-0000-000000000000"
        };
        let concrete = format!(
            "/api/v1{}",
            path.replace("{id}", id).replace("{name}", "slack")
        );
        for (scope, token) in &tokens {
            n += 1;
            let answer = app
                .request(
                    method,
                    &concrete,
                    Some(token),
                    body_for(method, path, n).as_ref(),
                )
                .await;
            if allowed(needs, scope) {
                assert!(
                    ![401, 403].contains(&answer.status),
                    "{scope} should reach {method} {path}: {} {}",
                    answer.status,
                    answer.text
                );
                assert!(answer.status < 500, "{method} {path}: {}", answer.text);
            } else {
                assert_eq!(
                    answer.status, 403,
                    "{scope} must not reach {method} {path}: {}",
                    answer.text
                );
                assert!(answer.text.contains("scope"), "{}", answer.text);
            }
        }
        n += 1;
        let body = body_for(method, path, n);
        let none = app.request(method, &concrete, None, body.as_ref()).await;
        assert_eq!(
            none.status, 401,
            "{method} {path} without a key: {}",
            none.text
        );
        let wrong = app
            .request(
                method,
                &concrete,
                Some("rst_0011223344556677_wrong"),
                body.as_ref(),
            )
            .await;
        assert_eq!(
            wrong.status, 401,
            "{method} {path} with a wrong key: {}",
            wrong.text
        );
    }
}

#[tokio::test]
async fn keys_are_shown_once_stored_hashed_and_revocable() {
    let app = spawn_app().await;
    let created = app
        .post(
            "/api/v1/api-keys",
            &json!({"name": "hr-feed", "scopes": ["events:write"]}),
        )
        .await
        .expect(201);
    let token = created["token"].as_str().unwrap_or_default().to_owned();
    assert!(token.starts_with("rst_"));
    let listed = app.get("/api/v1/api-keys").await;
    assert!(
        !listed.text.contains(&token[20..]),
        "the secret is never listed"
    );
    for row in app.rows("SELECT * FROM api_key").await {
        assert!(
            !row.to_string().contains(&token[21..]),
            "stored in clear: {row}"
        );
    }
    app.request("GET", "/api/v1/apps", Some(&token), None)
        .await
        .problem(403);
    let id = created["id"].as_str().unwrap_or_default();
    app.delete(&format!("/api/v1/api-keys/{id}"))
        .await
        .expect(204);
    app.request(
        "POST",
        "/api/v1/events",
        Some(&token),
        Some(&joiner("r1", "R1", "2026-11-01T09:00:00Z", json!({}))),
    )
    .await
    .problem(401);
    let detail = app
        .post(
            "/api/v1/api-keys",
            &json!({"name": "x", "scopes": ["root"]}),
        )
        .await
        .problem(422);
    assert!(detail.starts_with("scopes[0]"), "{detail}");
    app.delete("/api/v1/api-keys/bootstrap").await.problem(409);
}

/// Field-level authority: `apps:write` manages apps, but weakening the deletion guard or
/// switching on destructive deprovisioning needs `admin`, on create and on patch.
#[tokio::test]
async fn weakening_the_guard_or_destructive_deprovisioning_needs_admin() {
    let app = spawn_app().await;
    let writer = app.key(&["apps:write"]).await;
    let needs_admin = [
        (
            json!({"deletion_guard": {"max_fraction": 1.0, "max_count": 1_000_000}}),
            "deletion_guard.max_fraction",
        ),
        (
            json!({"deletion_guard": {"max_count": 51}}),
            "deletion_guard.max_count",
        ),
        (
            json!({"deletion_guard": {"window_minutes": 5}}),
            "deletion_guard.window_minutes",
        ),
        (
            json!({"reconcile": {"mode": "fix", "deprovision_unmatched": true}}),
            "reconcile.deprovision_unmatched",
        ),
        (
            json!({"deprovision": {"action": "delete"}}),
            "deprovision.action",
        ),
        (
            json!({"deprovision": {"action": "deactivate", "delete_after_days": 30}}),
            "deprovision.delete_after_days",
        ),
    ];
    for (n, (change, field)) in needs_admin.iter().enumerate() {
        let detail = app
            .request(
                "POST",
                "/api/v1/apps",
                Some(&writer),
                Some(&app_body(&format!("c{n}"), change.clone())),
            )
            .await
            .problem(403);
        assert!(
            detail.contains(field) && detail.contains("`admin`"),
            "create {change}: {detail}"
        );
    }
    assert_eq!(app.count("app").await, 0);

    // A stricter guard, or the defaults spelled out, are fine for `apps:write`.
    let created = app
        .request(
            "POST",
            "/api/v1/apps",
            Some(&writer),
            Some(&app_body(
                "strict",
                json!({"deletion_guard": {"max_fraction": 0.1, "max_count": 10, "on_events": true},
                       "deprovision": {"action": "deactivate"},
                       "reconcile": {"mode": "fix", "deprovision_unmatched": false}}),
            )),
        )
        .await
        .expect(201);
    let path = format!(
        "/api/v1/apps/{}",
        created["id"].as_str().unwrap_or_default()
    );
    let mut patch_needs_admin = needs_admin.to_vec();
    patch_needs_admin.push((
        json!({"deletion_guard": {"max_fraction": 0.1, "max_count": 10, "on_events": false}}),
        "deletion_guard.on_events",
    ));
    patch_needs_admin.push((
        json!({"deletion_guard": {"max_fraction": 0.15, "max_count": 10, "on_events": true}}),
        "deletion_guard.max_fraction",
    ));
    for (change, field) in &patch_needs_admin {
        let detail = app
            .request("PATCH", &path, Some(&writer), Some(change))
            .await
            .problem(403);
        assert!(
            detail.contains(field) && detail.contains("`admin`"),
            "patch {change}: {detail}"
        );
    }
    let unchanged = app.get(&path).await.expect(200);
    assert_eq!(unchanged["version"], 1, "nothing was applied: {unchanged}");

    // Tightening stays open to `apps:write`; loosening it is the admin's call.
    app.request(
        "PATCH",
        &path,
        Some(&writer),
        Some(&json!({"deletion_guard": {"max_fraction": 0.05, "max_count": 3, "on_events": true}})),
    )
    .await
    .expect(200);
    app.patch(
        &path,
        &json!({"deletion_guard": {"max_fraction": 1.0, "max_count": 1000}, "deprovision": {"action": "delete"},
                "reconcile": {"mode": "fix", "deprovision_unmatched": true}}),
    )
    .await
    .expect(200);
    // Sending the current values again is no change, so `apps:write` may.
    app.request(
        "PATCH",
        &path,
        Some(&writer),
        Some(&json!({"deprovision": {"action": "delete"}, "max_attempts": 3})),
    )
    .await
    .expect(200);
    // With unmatched accounts closed, the managed domains are what keeps other companies'
    // accounts untouched: widening them is the admin's call too; keeping them is not.
    for scope in [
        json!({"email_domains": ["example.com", "partner.org"]}),
        json!({"groups": []}),
    ] {
        let detail = app
            .request(
                "PATCH",
                &path,
                Some(&writer),
                Some(&json!({"scope": scope})),
            )
            .await
            .problem(403);
        assert!(
            detail.contains("scope.email_domains") && detail.contains("`admin`"),
            "patch {scope}: {detail}"
        );
    }
    app.request(
        "PATCH",
        &path,
        Some(&writer),
        Some(&json!({"scope": {"email_domains": ["EXAMPLE.com"]}})),
    )
    .await
    .expect(200);
    // So is what accounts are matched by: another attribute, or another mapping of it, could
    // make every account "nobody's"; other mappings stay open to `apps:write`.
    for change in [
        json!({"matching": {"target_attribute": "externalId"}}),
        json!({"mappings": [{"target": "userName", "source": "employee_id"}]}),
    ] {
        let detail = app
            .request("PATCH", &path, Some(&writer), Some(&change))
            .await
            .problem(403);
        assert!(
            detail.contains("matching") && detail.contains("`admin`"),
            "patch {change}: {detail}"
        );
    }
    app.request(
        "PATCH",
        &path,
        Some(&writer),
        Some(&json!({"mappings": [
            {"target": "userName", "expression": "default(user_name, email)"},
            {"target": "title", "source": "title"}]})),
    )
    .await
    .expect(200);
}

/// The same authority for one run: `apps:write` may start a `fix` run of an app that reports
/// only, except where that run would deprovision accounts that match nobody
/// (`deprovision_unmatched` on): an admin allowed that for the app's own `fix` runs only.
#[tokio::test]
async fn a_fix_run_that_deprovisions_unmatched_accounts_needs_admin_where_the_app_reports() {
    let app = spawn_app().await;
    let writer = app.key(&["apps:write"]).await;
    let created = app
        .create_app(&app_body(
            "reporting",
            json!({"reconcile": {"mode": "report", "deprovision_unmatched": true}}),
        ))
        .await;
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    let start = |body: serde_json::Value| {
        let app = &app;
        let writer = writer.clone();
        let path = format!("/api/v1/apps/{id}/reconcile");
        async move { app.request("POST", &path, Some(&writer), Some(&body)).await }
    };
    let detail = start(json!({"mode": "fix"})).await.problem(403);
    assert!(
        detail.contains("deprovision_unmatched") && detail.contains("`admin`"),
        "{detail}"
    );
    assert_eq!(app.count("reconcile_run").await, 0, "no run was started");
    // A dry run, or one in the app's own mode, writes nothing of the kind.
    start(json!({"mode": "fix", "dry_run": true}))
        .await
        .expect(202);
}

/// The bootstrap key: only `serve` manages it; other commands started without
/// `ROSTER_ADMIN_TOKEN` leave it alone.
mod bootstrap {
    use serde_json::{Value, json};

    use crate::helpers::{ADMIN, TestApp, app_body, spawn_app};

    async fn roster_cmd(app: &TestApp, args: &[&str]) -> std::process::Output {
        app.roster_command(args)
            .env("RUST_LOG", "warn")
            .env_remove("ROSTER_ADMIN_TOKEN")
            .output()
            .await
            .expect("run roster")
    }

    async fn audit_actions(app: &TestApp) -> Vec<Value> {
        app.rows("SELECT action, api_key_id, object_id, before, after FROM audit WHERE action LIKE 'api_key.bootstrap%' ORDER BY id")
            .await
    }

    #[tokio::test]
    async fn other_commands_without_the_variable_leave_the_bootstrap_key_alone() {
        let app = spawn_app().await;
        let created = app.create_app(&app_body("crm", json!({}))).await;
        let id = created["id"].as_str().unwrap_or_default().to_owned();
        let out = roster_cmd(&app, &["rotate-key"]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        app.get("/api/v1/apps").await.expect(200);
        // The run itself fails (nothing listens on port 9): the key must survive either way.
        let _ = roster_cmd(&app, &["reconcile", "--app", &id, "--dry-run", "--json"]).await;
        app.get("/api/v1/apps").await.expect(200);
        assert_eq!(
            audit_actions(&app).await.len(),
            1,
            "only the creation at start-up"
        );
    }

    /// The server runs on the test's runtime: while a command waits for the database, a write
    /// the server has under way must be able to finish. (A blocking wait here froze the
    /// server's transaction, and the command failed with `database is locked` after SQLite's
    /// busy timeout: a flaky CI run.)
    #[tokio::test]
    async fn a_command_waits_for_a_write_the_running_server_has_under_way() {
        use sea_orm::{ConnectionTrait, TransactionTrait};

        let app = spawn_app().await;
        let (locked_tx, locked) = tokio::sync::oneshot::channel();
        let db = app.db.clone();
        let writer = tokio::spawn(async move {
            let tx = db.begin().await.expect("begin");
            // The row every command's start-up writes (its credential key): on SQLite this takes
            // the database's write lock, on PostgreSQL the row's.
            tx.execute_unprepared("UPDATE credential_key SET key_id = key_id")
                .await
                .expect("update");
            let _ = locked_tx.send(());
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            tx.commit().await.expect("commit");
        });
        locked.await.expect("the write is under way");
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            roster_cmd(&app, &["revoke-bootstrap-key"]),
        )
        .await
        .expect("the command ends once the server's write is done");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        writer.await.expect("writer");
        app.get("/api/v1/apps").await.problem(401);
    }

    #[tokio::test]
    async fn the_bootstrap_key_is_audited_and_revoked_only_when_asked() {
        let mut app = spawn_app().await;
        let rows = audit_actions(&app).await;
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0]["action"], "api_key.bootstrap_create");
        assert_eq!(rows[0]["object_id"], "bootstrap");

        // A new token rotates the key: the old one stops working.
        let rotated = "rotated-admin-token-0123456789abcdef";
        app.config.admin_token = Some(rotated.to_owned().into());
        let mut app = app.restart().await;
        app.request("GET", "/api/v1/apps", Some(ADMIN), None)
            .await
            .problem(401);
        app.request("GET", "/api/v1/apps", Some(rotated), None)
            .await
            .expect(200);
        let rows = audit_actions(&app).await;
        assert_eq!(
            rows.iter().map(|r| r["action"].clone()).collect::<Vec<_>>(),
            [
                json!("api_key.bootstrap_create"),
                json!("api_key.bootstrap_rotate")
            ]
        );
        for row in &rows {
            let text = row.to_string();
            assert!(!text.contains(rotated) && !text.contains(ADMIN), "{text}");
        }

        // Unset, the key stays: only the explicit command revokes it.
        app.config.admin_token = None;
        let app = app.restart().await;
        app.request("GET", "/api/v1/apps", Some(rotated), None)
            .await
            .expect(200);
        let out = roster_cmd(&app, &["revoke-bootstrap-key"]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        app.request("GET", "/api/v1/apps", Some(rotated), None)
            .await
            .problem(401);
        let rows = audit_actions(&app).await;
        assert_eq!(
            rows.last().map(|r| r["action"].clone()),
            Some(json!("api_key.bootstrap_revoke")),
            "{rows:?}"
        );
        let help = std::process::Command::new(env!("CARGO_BIN_EXE_roster"))
            .arg("--help")
            .output()
            .expect("help");
        assert!(
            String::from_utf8_lossy(&help.stdout).contains("revoke-bootstrap-key"),
            "the command is in --help"
        );
        for command in ["serve", "revoke-bootstrap-key", "reconcile", "bench"] {
            let help = std::process::Command::new(env!("CARGO_BIN_EXE_roster"))
                .args([command, "--help"])
                .output()
                .expect("help");
            let text = String::from_utf8_lossy(&help.stdout);
            assert!(!text.contains("DESIGN"), "{command} --help: {text}");
        }
    }

    #[tokio::test]
    async fn a_short_bootstrap_token_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = roster::config::Config {
            database_url: format!("sqlite://{}?mode=rwc", dir.path().join("r.db").display()),
            admin_token: Some("admin-secret".to_owned().into()),
            secret_key: Some(roster::crypto::SecretBox::generate_base64().into()),
            ..roster::config::Config::default()
        };
        let err = match roster::startup::build(config).await {
            Ok(_) => panic!("a 12-character admin token was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("ROSTER_ADMIN_TOKEN") && err.contains("32"),
            "{err}"
        );
    }
}

/// `last_used_at` tells an admin which keys are still in use, written at most once a minute.
#[tokio::test]
async fn a_keys_last_use_is_recorded_at_most_once_a_minute() {
    let app = spawn_app().await;
    let token = app.key(&["read"]).await;
    let id = token
        .strip_prefix("rst_")
        .and_then(|rest| rest.split_once('_'))
        .map(|(id, _)| id.to_owned())
        .unwrap_or_default();
    let listed = app.get("/api/v1/api-keys").await.expect(200);
    let before = listed
        .as_array()
        .into_iter()
        .flatten()
        .find(|k| k["id"] == id.as_str())
        .cloned()
        .unwrap_or(Value::Null);
    assert!(before["last_used_at"].is_null(), "{before}");
    app.request("GET", "/api/v1/apps", Some(&token), None)
        .await
        .expect(200);
    let query = format!("SELECT last_used_at FROM api_key WHERE id = '{id}'");
    let first = crate::helpers::eventually(
        "last_used_at to be written",
        std::time::Duration::from_secs(10),
        || async {
            let rows = app.rows(&query).await;
            rows.first()
                .map(|r| r["last_used_at"].clone())
                .filter(|v| !v.is_null())
        },
    )
    .await;
    for _ in 0..3 {
        app.request("GET", "/api/v1/apps", Some(&token), None)
            .await
            .expect(200);
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let rows = app.rows(&query).await;
    assert_eq!(
        rows[0]["last_used_at"], first,
        "not rewritten within a minute"
    );
    let listed = app.get("/api/v1/api-keys").await.expect(200);
    assert!(
        listed
            .as_array()
            .into_iter()
            .flatten()
            .any(|k| k["id"] == id.as_str() && !k["last_used_at"].is_null()),
        "{listed}"
    );
}
