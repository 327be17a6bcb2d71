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
        let concrete = format!("/api/v1{}", path.replace("{id}", id));
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
