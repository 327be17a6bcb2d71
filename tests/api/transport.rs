//! Transport security: https-only targets, per-app TLS (private CA, mutual TLS), and roster's
//! own listener (TLS, slow clients, connection cap).
use serde_json::json;

use crate::helpers::{app_body, joiner, spawn_app_with};

/// A public address (never called: these tests run without the delivery engine, and the
/// client refuses plain http to it anyway).
const PUBLIC_HTTP: &str = "http://93.184.215.14/scim/v2";

#[tokio::test]
async fn plain_http_to_a_public_host_is_refused_naming_the_variable() {
    let app = spawn_app_with(|c| c.run_engine = false).await;
    let detail = app
        .post(
            "/api/v1/apps",
            &app_body("x", json!({"base_url": PUBLIC_HTTP})),
        )
        .await
        .problem(422);
    assert!(detail.starts_with("base_url:"), "{detail}");
    assert!(detail.contains("ROSTER_ALLOW_INSECURE_HTTP"), "{detail}");
    let detail = app
        .post(
            "/api/v1/apps",
            &app_body(
                "x",
                json!({"base_url": "https://93.184.215.14/scim/v2",
                       "auth": {"type": "oauth2", "token_url": "http://93.184.215.14/token",
                                "client_id": "c", "client_secret": "s"}}),
            ),
        )
        .await
        .problem(422);
    assert!(detail.starts_with("auth.token_url:"), "{detail}");
    assert!(detail.contains("ROSTER_ALLOW_INSECURE_HTTP"), "{detail}");
    assert_eq!(app.count("app").await, 0);

    // https is fine; so is plain http to loopback, which ROSTER_ALLOW_PRIVATE_TARGETS allows.
    let created = app
        .create_app(&app_body(
            "ok",
            json!({"base_url": "https://93.184.215.14/scim/v2"}),
        ))
        .await;
    app.create_app(&app_body("local", json!({}))).await;
    // A PATCH to plain http on a public host changes nothing.
    let path = format!("/api/v1/apps/{}", created["id"].as_str().unwrap());
    let detail = app
        .patch(
            &path,
            &json!({"base_url": PUBLIC_HTTP, "auth": {"type": "bearer", "token": "t"}}),
        )
        .await
        .problem(422);
    assert!(detail.contains("ROSTER_ALLOW_INSECURE_HTTP"), "{detail}");
    assert_eq!(
        app.get(&path).await.expect(200)["base_url"],
        "https://93.184.215.14/scim/v2"
    );
}

#[tokio::test]
async fn private_addresses_over_https_are_still_refused_without_allow_private() {
    let app = spawn_app_with(|c| {
        c.run_engine = false;
        c.allow_private_targets = false;
        c.allow_insecure_http = true;
    })
    .await;
    for url in [
        "https://10.1.2.3/scim/v2",
        "https://[::ffff:192.168.1.1]/v2",
    ] {
        let detail = app
            .post("/api/v1/apps", &app_body("x", json!({"base_url": url})))
            .await
            .problem(422);
        assert!(detail.starts_with("base_url:"), "{url}: {detail}");
    }
    // The operator's switch allows plain http to public hosts, nothing more.
    app.create_app(&app_body("public", json!({"base_url": PUBLIC_HTTP})))
        .await;
    assert_eq!(app.count("app").await, 1);
}

#[tokio::test]
async fn an_app_stored_with_plain_http_is_held_at_start_until_its_url_is_fixed() {
    // Stored while the operator allowed plain http, with a job waiting for it.
    let mut app = spawn_app_with(|c| {
        c.run_engine = false;
        c.allow_private_targets = false;
        c.allow_insecure_http = true;
    })
    .await;
    let created = app
        .create_app(&app_body("legacy", json!({"base_url": PUBLIC_HTTP})))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    app.post_event(&joiner(
        "e1",
        "E1",
        "2026-11-23T09:00:00Z",
        json!({"email": "ada@example.com"}),
    ))
    .await;
    assert_eq!(app.count("job").await, 1);

    // Restarted without it: the app is held and says why.
    app.config.allow_insecure_http = false;
    let app = app.restart().await;
    let status = app
        .get(&format!("/api/v1/apps/{id}/status"))
        .await
        .expect(200);
    assert_eq!(status["state"], "paused", "{status}");
    assert_eq!(status["paused_by"], "transport", "{status}");
    let reason = status["state_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("base_url") && reason.contains("ROSTER_ALLOW_INSECURE_HTTP"),
        "{reason}"
    );
    // Its job waits: neither sent nor dead.
    let jobs = app.rows("SELECT state FROM job").await;
    assert_eq!(jobs, vec![json!({"state": "pending"})]);
    // Nothing is sent to it, not even by test-connection, and a resume is refused.
    let report = app
        .post(&format!("/api/v1/apps/{id}/test-connection"), &json!({}))
        .await
        .expect(200);
    assert_eq!(report["ok"], false);
    assert!(
        report["reason"]
            .as_str()
            .is_some_and(|r| r.contains("ROSTER_ALLOW_INSECURE_HTTP")),
        "{report}"
    );
    let detail = app
        .post(&format!("/api/v1/apps/{id}/resume"), &json!({}))
        .await
        .problem(409);
    assert!(detail.contains("https"), "{detail}");
    assert_eq!(
        app.get(&format!("/api/v1/apps/{id}")).await.expect(200)["state"],
        "paused"
    );
    let audit = app
        .rows("SELECT action FROM audit WHERE action = 'app.held_plain_http'")
        .await;
    assert_eq!(audit.len(), 1);

    // A change that leaves the URL alone keeps it held; fixing the URL releases it.
    let path = format!("/api/v1/apps/{id}");
    let view = app
        .patch(&path, &json!({"max_attempts": 5}))
        .await
        .expect(200);
    assert_eq!(view["state"], "paused");
    let view = app
        .patch(
            &path,
            &json!({"base_url": "https://93.184.215.14/scim/v2",
                    "auth": {"type": "bearer", "token": "new-token"}}),
        )
        .await
        .expect(200);
    assert_eq!(view["state"], "active", "{view}");
    let status = app.get(&format!("{path}/status")).await.expect(200);
    assert_eq!(status["paused_by"], json!(null), "{status}");
    assert_eq!(
        app.rows("SELECT state FROM job").await,
        vec![json!({"state": "pending"})]
    );
    // A later start leaves the fixed app alone.
    let app = app.restart().await;
    assert_eq!(app.get(&path).await.expect(200)["state"], "active");
}
