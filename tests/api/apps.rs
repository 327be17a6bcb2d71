use serde_json::json;

use crate::helpers::{ADMIN, app_body, joiner, spawn_app, spawn_app_with, spawn_planner};

#[tokio::test]
async fn an_app_is_created_read_listed_changed_and_deleted() {
    let app = spawn_app().await;
    let created = app
        .create_app(&app_body(
            "sherpany",
            json!({
                "rate_limit": {"per_second": 5, "burst": 10},
                "max_concurrency": 2,
                "mappings": [
                    {"target": "userName", "source": "email"},
                    {"target": "name.givenName", "source": "given_name"},
                    {"target": "emails[type eq \"work\"].value", "source": "email"},
                    {"target": "externalId", "source": "employee_id"}
                ],
                "role_mapping": {"target": "roles[primary eq true].value", "default": "member",
                                 "rules": [{"group": "board-admins", "value": "admin"}]},
                "group_push": ["board-room"],
                "deprovision": {"action": "deactivate", "delete_after_days": 30},
                "reconcile": {"interval_minutes": 60, "mode": "report", "deprovision_unmatched": false},
                "deletion_guard": {"max_fraction": 0.2, "max_count": 50}
            }),
        ))
        .await;
    let id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(
        created["auth"],
        json!({"type": "bearer", "token_set": true})
    );
    assert_eq!(created["rate_limit"], json!({"per_second": 5, "burst": 10}));
    assert_eq!(created["state"], "active");
    assert_eq!(created["deprovision"]["delete_after_days"], 30);
    assert!(!created.to_string().contains("target-token"));

    let got = app.get(&format!("/api/v1/apps/{id}")).await.expect(200);
    assert_eq!(got, created);
    let list = app.get("/api/v1/apps").await.expect(200);
    assert_eq!(list.as_array().map(Vec::len), Some(1));

    let changed = app
        .patch(
            &format!("/api/v1/apps/{id}"),
            &json!({"max_concurrency": 8, "role_mapping": null}),
        )
        .await
        .expect(200);
    assert_eq!(changed["max_concurrency"], 8);
    assert!(changed.get("role_mapping").is_none());
    assert_eq!(changed["version"], 2);
    assert_eq!(
        changed["rate_limit"],
        json!({"per_second": 5, "burst": 10}),
        "untouched fields stay"
    );

    let paused = app
        .post(&format!("/api/v1/apps/{id}/pause"), &json!({}))
        .await
        .expect(200);
    assert_eq!(paused["state"], "paused");
    let resumed = app
        .post(&format!("/api/v1/apps/{id}/resume"), &json!({}))
        .await
        .expect(200);
    assert_eq!(resumed["state"], "active");

    app.delete(&format!("/api/v1/apps/{id}")).await.expect(204);
    app.get(&format!("/api/v1/apps/{id}")).await.problem(404);
}

#[tokio::test]
async fn credentials_are_encrypted_at_rest_and_never_returned() {
    let app = spawn_app().await;
    let canary = "canary-secret-5f2b9c";
    for auth in [
        json!({"type": "bearer", "token": canary}),
        json!({"type": "basic", "username": "svc", "password": canary}),
        json!({"type": "oauth2", "token_url": "http://127.0.0.1:9/token", "client_id": "cid", "client_secret": canary}),
    ] {
        let kind = auth["type"].as_str().unwrap_or_default().to_owned();
        let created = app
            .create_app(&app_body(&format!("a-{kind}"), json!({"auth": auth})))
            .await;
        assert!(!created.to_string().contains(canary), "{created}");
        let set_flag = match kind.as_str() {
            "bearer" => "token_set",
            "basic" => "password_set",
            _ => "client_secret_set",
        };
        assert_eq!(created["auth"][set_flag], true, "{created}");
    }
    let stored = app.rows("SELECT * FROM app").await;
    assert_eq!(stored.len(), 3);
    for row in &stored {
        let text = row.to_string();
        assert!(!text.contains(canary), "plaintext secret at rest: {text}");
        assert!(
            row["secret_ciphertext"]
                .as_str()
                .is_some_and(|c| c.len() > 20)
        );
        assert!(row["secret_key_id"].as_str().is_some());
    }
    for row in app.rows("SELECT * FROM audit").await {
        assert!(
            !row.to_string().contains(canary),
            "secret in the audit trail: {row}"
        );
    }
    let listed = app.get("/api/v1/apps").await;
    assert!(!listed.text.contains(canary));
}

#[tokio::test]
async fn private_and_metadata_targets_are_refused_unless_allowed() {
    let app = spawn_app_with(|c| c.allow_private_targets = false).await;
    for url in [
        "http://169.254.169.254/latest/meta-data",
        "http://127.0.0.1:8080/scim",
        "http://10.0.0.5/scim",
        "http://[::ffff:169.254.169.254]/",
        "http://localhost/scim",
        "http://[fd00:ec2::254]/",
    ] {
        let detail = app
            .post("/api/v1/apps", &app_body("x", json!({"base_url": url})))
            .await
            .problem(422);
        assert!(detail.starts_with("base_url:"), "{url}: {detail}");
    }
    let detail = app
        .post(
            "/api/v1/apps",
            &app_body(
                "x",
                json!({"base_url": "https://93.184.215.14/scim",
                       "auth": {"type": "oauth2", "token_url": "http://169.254.169.254/token", "client_id": "c", "client_secret": "s"}}),
            ),
        )
        .await
        .problem(422);
    assert!(detail.starts_with("auth.token_url:"), "{detail}");
    assert_eq!(app.count("app").await, 0);
    // A public address is fine.
    app.create_app(&app_body(
        "ok",
        json!({"base_url": "https://93.184.215.14/scim/v2/"}),
    ))
    .await;
}

#[tokio::test]
async fn every_setting_is_validated_with_a_clear_message() {
    let app = spawn_app().await;
    let cases = [
        (json!({"name": ""}), "name:"),
        (json!({"base_url": "ftp://example.com/"}), "base_url:"),
        (json!({"auth": {"type": "bearer"}}), "auth.token:"),
        (
            json!({"auth": {"type": "basic", "username": "u"}}),
            "auth.password:",
        ),
        (
            json!({"rate_limit": {"per_second": 0, "burst": 1}}),
            "rate_limit.per_second:",
        ),
        (json!({"max_concurrency": 0}), "max_concurrency:"),
        (json!({"timeout_ms": 5}), "timeout_ms:"),
        (
            json!({"scope": {"email_domains": ["not a domain"]}}),
            "scope.email_domains[0]:",
        ),
        (
            json!({"scope": {"email_domains": []}}),
            "scope.email_domains:",
        ),
        (json!({"mappings": []}), "mappings:"),
        (
            json!({"mappings": [{"target": "userName", "source": "shoe_size"}]}),
            "mappings[0]",
        ),
        (
            json!({"mappings": [{"target": "userName", "source": "email", "value": "x"}]}),
            "mappings[0]:",
        ),
        (
            json!({"mappings": [{"target": "userName", "expression": "lower(email"}]}),
            "mappings[0]",
        ),
        (
            json!({"mappings": [{"target": "meta.created", "source": "email"}]}),
            "mappings[0]",
        ),
        (
            json!({"matching": {"target_attribute": "externalId"}, "mappings": [{"target": "userName", "source": "email"}]}),
            "matching.target_attribute:",
        ),
        (
            json!({"deprovision": {"action": "delete", "delete_after_days": 3}}),
            "deprovision.delete_after_days:",
        ),
        (
            json!({"reconcile": {"interval_minutes": 1}}),
            "reconcile.interval_minutes:",
        ),
        (
            json!({"deletion_guard": {"max_fraction": 1.5}}),
            "deletion_guard.max_fraction:",
        ),
        (json!({"quirks": {"no_such_flag": true}}), "quirks:"),
    ];
    for (overrides, field) in cases {
        let detail = app
            .post("/api/v1/apps", &app_body("v", overrides.clone()))
            .await
            .problem(422);
        assert!(
            detail.starts_with(field),
            "{overrides}: expected `{field}`, got `{detail}`"
        );
    }
    assert_eq!(app.count("app").await, 0, "nothing was stored");
    assert_eq!(app.count("audit").await, 0);
}

#[tokio::test]
async fn app_names_are_unique() {
    let app = spawn_app().await;
    app.create_app(&app_body("dup", json!({}))).await;
    app.post("/api/v1/apps", &app_body("dup", json!({})))
        .await
        .problem(409);
    let other = app.create_app(&app_body("other", json!({}))).await;
    app.patch(
        &format!("/api/v1/apps/{}", other["id"].as_str().unwrap_or_default()),
        &json!({"name": "dup"}),
    )
    .await
    .problem(409);
}

#[tokio::test]
async fn a_new_app_queues_an_initial_sync_for_everyone_in_scope_only() {
    let app = spawn_planner().await;
    app.post_event(&joiner("e1", "E1", "2026-11-01T09:00:00Z", json!({})))
        .await;
    app.post_event(&joiner(
        "e2",
        "E2",
        "2026-11-01T09:00:00Z",
        json!({"email": "e2@partner.org"}),
    ))
    .await;
    let created = app.create_app(&app_body("initial", json!({}))).await;
    let jobs = app
        .rows(&format!(
            "SELECT resource_id, lane FROM job WHERE app_id = '{}' AND resource_kind = 'user'",
            created["id"].as_str().unwrap_or_default()
        ))
        .await;
    assert_eq!(
        jobs.len(),
        1,
        "only the example.com person is assigned: {jobs:?}"
    );
    let e1 = app.get("/api/v1/identities/E1").await.expect(200);
    assert_eq!(jobs[0]["resource_id"], e1["id"]);
    assert_eq!(jobs[0]["lane"], "normal");
    let _ = ADMIN;
}

mod connection {
    use serde_json::json;

    use crate::helpers::{app_body, dev_target, peer, spawn_app};

    #[tokio::test]
    async fn test_connection_reports_reachability_auth_and_capabilities() {
        let app = spawn_app().await;
        let target = dev_target("right-token").await;
        let good = app
            .create_app(&app_body("good", json!({"base_url": target.base_url(), "auth": {"type": "bearer", "token": "right-token"}})))
            .await;
        let report = app
            .post(
                &format!(
                    "/api/v1/apps/{}/test-connection",
                    good["id"].as_str().unwrap_or_default()
                ),
                &json!({}),
            )
            .await
            .expect(200);
        assert_eq!(report["ok"], true, "{report}");
        assert_eq!(report["capabilities"]["patch"], true);
        assert_eq!(report["capabilities"]["filter"], true);

        let wrong = app
            .create_app(&app_body(
                "wrong",
                json!({"base_url": target.base_url(), "auth": {"type": "bearer", "token": "nope"}}),
            ))
            .await;
        let report = app
            .post(
                &format!(
                    "/api/v1/apps/{}/test-connection",
                    wrong["id"].as_str().unwrap_or_default()
                ),
                &json!({}),
            )
            .await
            .expect(200);
        assert_eq!(
            (
                report["ok"].clone(),
                report["reachable"].clone(),
                report["auth_ok"].clone()
            ),
            (json!(false), json!(true), json!(false)),
            "{report}"
        );
        assert!(
            report["reason"].as_str().is_some_and(|r| r.contains("401")),
            "{report}"
        );
        assert!(
            !report.to_string().contains("nope"),
            "the token is not echoed"
        );

        // Nothing listens on port 9 here.
        let down = app.create_app(&app_body("down", json!({}))).await;
        let report = app
            .post(
                &format!(
                    "/api/v1/apps/{}/test-connection",
                    down["id"].as_str().unwrap_or_default()
                ),
                &json!({}),
            )
            .await
            .expect(200);
        assert_eq!(report["reachable"], false, "{report}");
        assert!(report["reason"].as_str().is_some_and(|r| !r.is_empty()));
    }

    #[tokio::test]
    async fn test_connection_works_against_the_third_party_peer() {
        let Some((base, token, _turn)) = peer().await else {
            return;
        };
        let app = spawn_app().await;
        let peer_app = app
            .create_app(&app_body(
                "peer",
                json!({"base_url": base, "auth": {"type": "bearer", "token": token}}),
            ))
            .await;
        let report = app
            .post(
                &format!(
                    "/api/v1/apps/{}/test-connection",
                    peer_app["id"].as_str().unwrap_or_default()
                ),
                &json!({}),
            )
            .await
            .expect(200);
        assert_eq!(report["ok"], true, "{report}");
        assert_eq!(
            report["capabilities"]["etag"], true,
            "the peer advertises ETags: {report}"
        );
    }
}
