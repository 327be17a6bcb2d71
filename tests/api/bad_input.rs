//! Bad input gets a clear 4xx problem+json and changes nothing.
use serde_json::json;

use crate::helpers::{ADMIN, TestApp, app_body, joiner, spawn_app};

async fn nothing_changed(app: &TestApp) {
    for table in ["app", "identity", "hr_event", "roster_group", "job"] {
        assert_eq!(app.count(table).await, 0, "{table} changed");
    }
    // Start-up audits the bootstrap admin key; nothing else may be there.
    let audited = app
        .rows("SELECT id FROM audit WHERE action NOT LIKE 'api_key.bootstrap%'")
        .await;
    assert_eq!(audited.len(), 0, "audit changed");
}

#[tokio::test]
async fn malformed_unknown_and_mistyped_bodies_are_400() {
    let app = spawn_app().await;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("/api/v1/apps", b"{\"name\": ".to_vec(), ""),
        ("/api/v1/apps", serde_json::to_vec(&app_body("a", json!({"colour": "blue"}))).unwrap_or_default(), "colour"),
        ("/api/v1/apps", serde_json::to_vec(&app_body("a", json!({"max_concurrency": "four"}))).unwrap_or_default(), "max_concurrency"),
        ("/api/v1/apps", serde_json::to_vec(&app_body("a", json!({"auth": {"type": "kerberos"}}))).unwrap_or_default(), "kerberos"),
        ("/api/v1/events", b"[]".to_vec(), ""),
        ("/api/v1/events", serde_json::to_vec(&json!({"event_id": "e", "type": "promotion", "occurred_at": "2026-11-01T09:00:00Z", "employee": {"employee_id": "E"}})).unwrap_or_default(), "promotion"),
        ("/api/v1/events", serde_json::to_vec(&json!({"event_id": "e", "type": "joiner", "occurred_at": "yesterday", "employee": {"employee_id": "E"}})).unwrap_or_default(), "occurred_at"),
        ("/api/v1/events", serde_json::to_vec(&json!({"event_id": "e", "type": "joiner", "occurred_at": "2026-11-01T09:00:00Z", "employee": {"user_name": "x"}})).unwrap_or_default(), "employee_id"),
        ("/api/v1/events", serde_json::to_vec(&json!({"event_id": "e", "type": "joiner", "occurred_at": "2026-11-01T09:00:00Z", "employee": {"employee_id": "E", "shoe": 9}})).unwrap_or_default(), "shoe"),
        ("/api/v1/groups", b"{\"name\": \"g\", \"members\": \"E1\"}".to_vec(), "members"),
    ];
    for (path, body, mention) in cases {
        let answer = app
            .raw("POST", path, Some(ADMIN), "application/json", body.clone())
            .await;
        let detail = answer.problem(400);
        assert!(
            detail.contains(mention),
            "{path} {}: detail `{detail}` should mention `{mention}`",
            String::from_utf8_lossy(&body)
        );
    }
    // Semantic errors are 422 with the field named.
    let detail = app
        .post("/api/v1/events", &json!({"event_id": "", "type": "joiner", "occurred_at": "2026-11-01T09:00:00Z", "employee": {"employee_id": "E", "user_name": "x"}}))
        .await
        .problem(422);
    assert!(detail.starts_with("event_id"), "{detail}");
    let detail = app
        .post("/api/v1/events", &json!({"event_id": "e", "type": "joiner", "occurred_at": "2026-11-01T09:00:00Z", "employee": {"employee_id": "E"}}))
        .await
        .problem(422);
    assert!(detail.contains("user_name"), "{detail}");
    let wrong_type = app
        .raw(
            "POST",
            "/api/v1/apps",
            Some(ADMIN),
            "text/plain",
            b"hello".to_vec(),
        )
        .await;
    wrong_type.problem(415);
    nothing_changed(&app).await;
}

#[tokio::test]
async fn bodies_over_one_mebibyte_are_413_declared_or_streamed() {
    let app = spawn_app().await;
    let mut huge = serde_json::to_vec(&joiner("h1", "E1", "2026-11-01T09:00:00Z", json!({})))
        .unwrap_or_default();
    huge.pop();
    huge.extend_from_slice(b", \"pad\": \"");
    huge.extend(std::iter::repeat_n(b'x', 2 * 1024 * 1024));
    huge.extend_from_slice(b"\"}");
    app.raw(
        "POST",
        "/api/v1/events",
        Some(ADMIN),
        "application/json",
        huge.clone(),
    )
    .await
    .problem(413);
    // Without a Content-Length (chunked), the limit applies while reading.
    let stream = futures::stream::iter(
        huge.chunks(64 * 1024)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let resp = app
        .http
        .post(format!("{}/api/v1/events", app.base))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("send");
    TestApp::answer(resp).await.problem(413);
    nothing_changed(&app).await;
}

#[tokio::test]
async fn unknown_ids_and_routes_are_404() {
    let app = spawn_app().await;
    for (method, path) in [
        ("GET", "/api/v1/apps/nope"),
        ("PATCH", "/api/v1/apps/nope"),
        ("DELETE", "/api/v1/apps/nope"),
        ("POST", "/api/v1/apps/nope/pause"),
        ("GET", "/api/v1/identities/nope"),
        ("GET", "/api/v1/groups/nope"),
        ("PATCH", "/api/v1/groups/nope"),
        ("DELETE", "/api/v1/groups/nope"),
        ("DELETE", "/api/v1/api-keys/nope"),
        ("GET", "/api/v1/no-such-route"),
        ("POST", "/api/v1/eventsXYZ"),
    ] {
        let body = (method == "PATCH").then(|| json!({}));
        let answer = app.request(method, path, Some(ADMIN), body.as_ref()).await;
        answer.problem(404);
    }
    nothing_changed(&app).await;
}

#[tokio::test]
async fn a_missing_or_wrong_key_is_401_with_a_challenge() {
    let app = spawn_app().await;
    let resp = app
        .http
        .get(format!("{}/api/v1/apps", app.base))
        .send()
        .await
        .expect("send");
    assert_eq!(
        resp.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer")
    );
    TestApp::answer(resp).await.problem(401);
    app.request("GET", "/api/v1/apps", Some("rst_abc_def"), None)
        .await
        .problem(401);
    app.request("GET", "/api/v1/apps", Some(&"x".repeat(10_000)), None)
        .await
        .problem(401);
}

/// `null` for a field that cannot be cleared is an error naming it, not "left out": a PATCH
/// that says `"base_url": null` or `"deletion_guard": null` and answers 200 with nothing
/// changed would let a client believe it did something. The fields that can be cleared
/// (`role_mapping`, `rate_limit_group`, `tls`) still take it. A create's
/// `override_vendor_limits` without a `connector` is refused like `connector_params`.
#[tokio::test]
async fn null_for_a_field_that_cannot_be_cleared_is_refused_by_name() {
    let app = spawn_app().await;
    let created = app.create_app(&app_body("nulls", json!({}))).await;
    let path = format!(
        "/api/v1/apps/{}",
        created["id"].as_str().unwrap_or_default()
    );
    for field in [
        "name",
        "base_url",
        "auth",
        "scope",
        "mappings",
        "deprovision",
        "reconcile",
        "deletion_guard",
        "quirks",
        "max_concurrency",
    ] {
        let detail = app.patch(&path, &json!({ field: null })).await.problem(400);
        assert!(
            detail.starts_with(field) && detail.contains("null"),
            "{field}: {detail}"
        );
    }
    let cleared = app
        .patch(
            &path,
            &json!({"role_mapping": null, "rate_limit_group": null, "tls": null}),
        )
        .await
        .expect(200);
    assert_eq!(cleared["version"], 2, "{cleared}");

    let group = app
        .post(
            "/api/v1/groups",
            &json!({"name": "g-null", "members": ["E1"]}),
        )
        .await
        .expect(201);
    let group_path = format!(
        "/api/v1/groups/{}",
        group["id"].as_str().unwrap_or_default()
    );
    for field in ["name", "members", "rule"] {
        let detail = app
            .patch(&group_path, &json!({ field: null }))
            .await
            .problem(400);
        assert!(detail.starts_with(field), "{field}: {detail}");
    }

    let detail = app
        .post(
            "/api/v1/apps",
            &app_body("stray", json!({"override_vendor_limits": true})),
        )
        .await
        .problem(422);
    assert!(detail.starts_with("override_vendor_limits"), "{detail}");
}
