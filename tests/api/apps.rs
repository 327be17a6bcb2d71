use serde_json::{Value, json};

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
    let audited = app
        .rows("SELECT id FROM audit WHERE action NOT LIKE 'api_key.bootstrap%'")
        .await;
    assert_eq!(audited.len(), 0, "only the bootstrap key's creation");
}

/// Windows, operations and a rate-limit group: each mistake a 422 naming its field; what is
/// accepted reads back as given, and a group is left with `null`.
#[tokio::test]
async fn rate_limit_windows_and_groups_are_validated_and_stored() {
    let app = spawn_app().await;
    let window = |w: Value| json!({"rate_limit": {"per_second": 5, "burst": 5, "windows": w}});
    let cases = [
        (
            window(json!([{"limit": 10, "window_seconds": 0}])),
            "rate_limit.windows[0].window_seconds:",
            "0 is outside 1..=86400",
        ),
        (
            window(json!([{"limit": 300, "window_seconds": 60},
                          {"limit": 10, "window_seconds": 1, "burst": 11}])),
            "rate_limit.windows[1].burst:",
            "at most its `limit`",
        ),
        (
            window(json!([{"limit": 10, "window_seconds": 60,
                           "operations": ["write", "write"]}])),
            "rate_limit.windows[0].operations:",
            "`write` is named twice",
        ),
        (
            window(json!(
                (0..17)
                    .map(|_| json!({"limit": 1, "window_seconds": 1}))
                    .collect::<Vec<_>>()
            )),
            "rate_limit.windows:",
            "at most 16",
        ),
        (
            json!({"rate_limit_group": " "}),
            "rate_limit_group:",
            "not blank",
        ),
    ];
    for (overrides, field, words) in cases {
        let detail = app
            .post("/api/v1/apps", &app_body("v", overrides.clone()))
            .await
            .problem(422);
        assert!(
            detail.starts_with(field) && detail.contains(words),
            "{overrides}: expected `{field}` … `{words}`, got `{detail}`"
        );
    }
    let detail = app
        .post(
            "/api/v1/apps",
            &app_body(
                "v",
                window(json!([{"limit": 1, "window_seconds": 1, "operations": ["create"]}])),
            ),
        )
        .await
        .problem(400);
    assert!(
        detail.contains("rate_limit.windows[0].operations[0]") && detail.contains("`delete`"),
        "{detail}"
    );
    assert_eq!(app.count("app").await, 0, "nothing was stored");

    let limits = json!({"per_second": 10, "burst": 20, "windows": [
        {"limit": 600, "window_seconds": 60, "burst": 180, "operations": ["write", "delete"]},
        {"limit": 20, "window_seconds": 30, "operations": ["delete"]},
    ]});
    let created = app
        .create_app(&app_body(
            "windowed",
            json!({"rate_limit": limits, "rate_limit_group": "tenant-1"}),
        ))
        .await;
    assert_eq!(created["rate_limit"], limits);
    assert_eq!(created["rate_limit_group"], "tenant-1");
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    let changed = app
        .patch(
            &format!("/api/v1/apps/{id}"),
            &json!({"rate_limit_group": null, "rate_limit": {"per_second": 3, "burst": 3}}),
        )
        .await
        .expect(200);
    assert!(changed.get("rate_limit_group").is_none(), "{changed}");
    assert_eq!(changed["rate_limit"], json!({"per_second": 3, "burst": 3}));
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

/// Who may point an app's credentials where, and what a change of target needs.
mod target_change {
    use std::sync::{Arc, Mutex};

    use serde_json::{Value, json};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::helpers::{TestApp, app_body, spawn_app, spawn_app_with};

    /// A listener on 127.0.0.1 that records the head of every request it gets and answers 404.
    async fn recording_listener() -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65_536 {
                        match tokio::time::timeout(
                            std::time::Duration::from_secs(5),
                            socket.read(&mut buf),
                        )
                        .await
                        {
                            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                            _ => break,
                        }
                    }
                    log.lock()
                        .expect("log")
                        .push(String::from_utf8_lossy(&head).into_owned());
                    let _ = socket
                        .write_all(
                            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                });
            }
        });
        (format!("http://{addr}/scim/v2"), seen)
    }

    fn heads(seen: &Arc<Mutex<Vec<String>>>) -> String {
        seen.lock().expect("log").join("\n")
    }

    async fn test_connection(app: &TestApp, token: &str, id: &str) {
        app.request(
            "POST",
            &format!("/api/v1/apps/{id}/test-connection"),
            Some(token),
            Some(&json!({})),
        )
        .await
        .expect(200);
    }

    #[tokio::test]
    async fn moving_an_app_to_another_origin_needs_its_credentials_again() {
        let app = spawn_app().await;
        let (real, real_seen) = recording_listener().await;
        let (attacker, attacker_seen) = recording_listener().await;
        let canary = "bearer-canary-7c1d2e";
        let basic_canary = "basic-canary-93ab11";
        let writer = app.key(&["apps:write"]).await;
        let bearer = app
            .create_app(&app_body(
                "crm",
                json!({"base_url": real, "auth": {"type": "bearer", "token": canary}}),
            ))
            .await;
        let basic = app
            .create_app(&app_body(
                "hris",
                json!({"base_url": real, "auth": {"type": "basic", "username": "svc", "password": basic_canary}}),
            ))
            .await;
        for created in [&bearer, &basic] {
            let id = created["id"].as_str().unwrap_or_default();
            // Another host, another port, another scheme: each is another origin.
            for moved in [
                attacker.clone(),
                attacker.replace("http://127.0.0.1", "http://localhost"),
                real.replace("http://", "https://"),
            ] {
                let detail = app
                    .request(
                        "PATCH",
                        &format!("/api/v1/apps/{id}"),
                        Some(&writer),
                        Some(&json!({"base_url": moved})),
                    )
                    .await
                    .problem(422);
                assert!(
                    detail.starts_with("base_url:") && detail.contains("`auth`"),
                    "{moved}: {detail}"
                );
            }
            test_connection(&app, &writer, id).await;
            // The same origin, another path: no new credentials needed.
            app.request(
                "PATCH",
                &format!("/api/v1/apps/{id}"),
                Some(&writer),
                Some(&json!({"base_url": format!("{real}/tenant")})),
            )
            .await
            .expect(200);
        }
        assert!(
            heads(&attacker_seen).is_empty(),
            "nothing reached the other origin"
        );
        assert!(
            heads(&real_seen).contains("authorization"),
            "{}",
            heads(&real_seen)
        );

        // With credentials of its own, a key may move the app: the old secret does not follow.
        let id = bearer["id"].as_str().unwrap_or_default();
        let moved = app
            .request(
                "PATCH",
                &format!("/api/v1/apps/{id}"),
                Some(&writer),
                Some(&json!({"base_url": attacker, "auth": {"type": "bearer", "token": "own-token"}})),
            )
            .await
            .expect(200);
        assert_eq!(moved["base_url"], attacker.as_str());
        test_connection(&app, &writer, id).await;
        let seen = heads(&attacker_seen);
        assert!(seen.contains("own-token"), "{seen}");
        assert!(
            !seen.contains(canary) && !seen.to_lowercase().contains("basic "),
            "{seen}"
        );

        // The change of origin is in the audit row, and no secret is.
        let audit = app.get("/api/v1/audit").await.expect(200);
        let update = audit["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|row| row["action"] == "app.update" && row["object_id"] == id)
            .cloned()
            .unwrap_or(Value::Null);
        let origin = attacker.trim_end_matches("/scim/v2");
        let real_origin = real.trim_end_matches("/scim/v2");
        assert_eq!(
            update["after"]["origin_change"],
            json!({"base_url": {"from": real_origin, "to": origin}, "credentials_replaced": true}),
            "{update}"
        );
        for row in app.rows("SELECT * FROM audit").await {
            let text = row.to_string();
            assert!(
                !text.contains(canary)
                    && !text.contains(basic_canary)
                    && !text.contains("own-token"),
                "a secret in the audit trail: {text}"
            );
        }
    }

    #[tokio::test]
    async fn an_oauth_token_url_moves_only_with_the_client_secret() {
        let app = spawn_app().await;
        let (real, _) = recording_listener().await;
        let (attacker, attacker_seen) = recording_listener().await;
        let writer = app.key(&["apps:write"]).await;
        let created = app
            .create_app(&app_body(
                "oauth",
                json!({"base_url": real, "auth": {"type": "oauth2", "token_url": format!("{real}/token"),
                        "client_id": "cid", "client_secret": "oauth-canary-55aa"}}),
            ))
            .await;
        let id = created["id"].as_str().unwrap_or_default();
        let detail = app
            .request(
                "PATCH",
                &format!("/api/v1/apps/{id}"),
                Some(&writer),
                Some(&json!({"auth": {"type": "oauth2", "token_url": format!("{attacker}/token"), "client_id": "cid"}})),
            )
            .await
            .problem(422);
        assert!(detail.starts_with("auth.client_secret"), "{detail}");
        let detail = app
            .request(
                "PATCH",
                &format!("/api/v1/apps/{id}"),
                Some(&writer),
                Some(&json!({"base_url": attacker})),
            )
            .await
            .problem(422);
        assert!(detail.contains("`auth`"), "{detail}");
        test_connection(&app, &writer, id).await;
        assert!(
            heads(&attacker_seen).is_empty(),
            "{}",
            heads(&attacker_seen)
        );
    }

    #[tokio::test]
    async fn a_refused_base_url_does_not_say_what_a_name_resolves_to() {
        // This machine's own name resolves through /etc/hosts, without DNS.
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .to_owned();
        let resolved: Vec<std::net::IpAddr> = tokio::net::lookup_host((host.as_str(), 443))
            .await
            .map(|addrs| addrs.map(|a| a.ip()).collect())
            .unwrap_or_default();
        assert!(
            !host.is_empty() && !resolved.is_empty(),
            "the host name `{host}` resolves locally"
        );
        let app = spawn_app_with(|c| c.allow_private_targets = false).await;
        let answer = app
            .post(
                "/api/v1/apps",
                &app_body("x", json!({"base_url": format!("https://{host}/scim")})),
            )
            .await;
        let all_public = resolved
            .iter()
            .all(|ip| roster::net_guard::forbidden_reason(*ip).is_none());
        if all_public {
            // A public address: nothing to hide, and the app is taken.
            answer.expect(201);
            return;
        }
        let detail = answer.problem(422);
        assert!(detail.starts_with("base_url:"), "{detail}");
        for ip in resolved {
            assert!(!detail.contains(&ip.to_string()), "{detail}");
        }
    }
}

/// Concurrent changes to one app: none is lost, and `If-Match` turns a stale one into a 412.
mod concurrent_changes {
    use serde_json::{Value, json};

    use crate::helpers::{ADMIN, TestApp, app_body, spawn_app_with};

    async fn patch(
        app: &TestApp,
        id: &str,
        body: Value,
        if_match: Option<&str>,
    ) -> reqwest::Response {
        let mut req = app
            .http
            .patch(format!("{}/api/v1/apps/{id}", app.base))
            .bearer_auth(ADMIN)
            .json(&body);
        if let Some(tag) = if_match {
            req = req.header("if-match", tag);
        }
        req.send().await.expect("patch")
    }

    fn etag(resp: &reqwest::Response) -> String {
        resp.headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    #[tokio::test]
    async fn parallel_patches_of_different_fields_all_stay() {
        let app = spawn_app_with(|c| c.run_engine = false).await;
        let created = app.create_app(&app_body("busy", json!({}))).await;
        let id = created["id"].as_str().unwrap_or_default().to_owned();
        for round in 1..=3u32 {
            let changes = [
                json!({"max_attempts": 10 + round}),
                json!({"timeout_ms": 1000 + round}),
                json!({"max_concurrency": 10 + round}),
                json!({"rate_limit": {"per_second": 20 + round, "burst": 30 + round}}),
                json!({"group_push": [format!("push-{round}")]}),
                json!({"name": format!("busy-{round}")}),
                json!({"quirks": {"page_size": 40 + round}}),
                json!({"deletion_guard": {"max_fraction": 0.1, "max_count": 5 + round}}),
            ];
            let calls = changes
                .iter()
                .map(|body| patch(&app, &id, body.clone(), None));
            for resp in futures::future::join_all(calls).await {
                let status = resp.status().as_u16();
                assert_eq!(status, 200, "{}", resp.text().await.unwrap_or_default());
            }
            let got = app.get(&format!("/api/v1/apps/{id}")).await.expect(200);
            let want = json!({
                "max_attempts": 10 + round,
                "timeout_ms": 1000 + round,
                "max_concurrency": 10 + round,
                "rate_limit": {"per_second": 20 + round, "burst": 30 + round},
                "group_push": [format!("push-{round}")],
                "name": format!("busy-{round}"),
                "page_size": 40 + round,
                "max_count": 5 + round,
                "version": 1 + 8 * round,
            });
            let have = json!({
                "max_attempts": got["max_attempts"],
                "timeout_ms": got["timeout_ms"],
                "max_concurrency": got["max_concurrency"],
                "rate_limit": got["rate_limit"],
                "group_push": got["group_push"],
                "name": got["name"],
                "page_size": got["quirks"]["page_size"],
                "max_count": got["deletion_guard"]["max_count"],
                "version": got["version"],
            });
            assert_eq!(have, want, "round {round}: a change was lost");
        }
    }

    #[tokio::test]
    async fn a_patch_with_a_stale_if_match_is_refused_with_412() {
        let app = spawn_app_with(|c| c.run_engine = false).await;
        let created = app
            .http
            .post(format!("{}/api/v1/apps", app.base))
            .bearer_auth(ADMIN)
            .json(&app_body("tagged", json!({})))
            .send()
            .await
            .expect("create");
        assert_eq!(etag(&created), "\"1\"", "the new app's ETag");
        let created = TestApp::answer(created).await.expect(201);
        let id = created["id"].as_str().unwrap_or_default().to_owned();
        let got = app
            .http
            .get(format!("{}/api/v1/apps/{id}", app.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("get");
        let first = etag(&got);
        assert_eq!(first, "\"1\"", "GET offers the version as a strong ETag");

        let ok = patch(&app, &id, json!({"max_attempts": 4}), Some(&first)).await;
        assert_eq!(ok.status().as_u16(), 200);
        assert_eq!(etag(&ok), "\"2\"", "PATCH answers the new ETag");

        let stale = patch(&app, &id, json!({"timeout_ms": 2000}), Some(&first)).await;
        assert_eq!(stale.status().as_u16(), 412);
        let answer = TestApp::answer(stale).await;
        let detail = answer.problem(412);
        assert!(detail.contains("version 2"), "{detail}");
        let got = app.get(&format!("/api/v1/apps/{id}")).await.expect(200);
        assert_eq!(
            got["timeout_ms"], 30_000,
            "the stale change was not applied"
        );
        assert_eq!(got["max_attempts"], 4);

        let list = patch(&app, &id, json!({"timeout_ms": 2000}), Some("\"7\", \"2\"")).await;
        assert_eq!(list.status().as_u16(), 200, "any listed tag may match");
        let any = patch(&app, &id, json!({"timeout_ms": 3000}), Some("*")).await;
        assert_eq!(any.status().as_u16(), 200);
        let weak = patch(&app, &id, json!({"timeout_ms": 4000}), Some("W/\"4\"")).await;
        assert_eq!(
            weak.status().as_u16(),
            412,
            "If-Match compares strongly: a weak tag never matches"
        );
    }
}

/// The credential key and the database files at rest.
mod keys_at_rest {
    use serde_json::json;

    use crate::helpers::{app_body, spawn_app, spawn_app_with};

    fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
        let rest = url.strip_prefix("sqlite://")?;
        Some(rest.split('?').next().unwrap_or_default().into())
    }

    #[tokio::test]
    async fn a_missing_key_file_with_sealed_credentials_stops_start_up() {
        if std::env::var("ROSTER_TEST_DATABASE_URL").is_ok_and(|u| u.starts_with("postgres")) {
            // PostgreSQL needs ROSTER_SECRET_KEY: there is no key file to lose.
            return;
        }
        let app = spawn_app_with(|c| c.secret_key = None).await;
        let Some(db) = sqlite_file(&app.config.database_url) else {
            return;
        };
        app.create_app(&app_body("sealed", json!({}))).await;
        let key_file = std::path::PathBuf::from(format!("{}.key", db.display()));
        assert!(key_file.exists());
        std::fs::remove_file(&key_file).expect("remove the key file");
        let err = match roster::startup::build(app.config.clone()).await {
            Ok(_) => panic!("started with a new key while credentials are sealed"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(&key_file.display().to_string()) && err.contains("1 app credential"),
            "{err}"
        );
        assert!(!key_file.exists(), "no new key was made");
    }

    #[tokio::test]
    async fn an_instance_on_the_old_key_refuses_to_seal_after_a_rotation() {
        let app = spawn_app().await;
        let first = app.create_app(&app_body("before", json!({}))).await;
        let old = app.secret_key_text();
        // What `roster rotate-key` does, in-process: a new key, the old one to open old rows.
        let new = roster::crypto::SecretBox::generate_base64();
        let mut rotating = app.config.clone();
        rotating.secret_key = Some(new.clone().into());
        rotating.secret_key_previous = Some(old.clone().into());
        rotating.run_engine = false;
        let (other, _) = roster::startup::build(rotating)
            .await
            .expect("rotating instance");
        assert_eq!(other.rotate_credentials().await.expect("rotate"), 1);
        let new_id = other.secrets().key_id().to_owned();

        // This instance still runs on the old key: it must not seal anything new with it.
        let detail = app
            .post("/api/v1/apps", &app_body("after", json!({})))
            .await
            .problem(503);
        assert!(
            detail.contains(&new_id) && detail.contains("ROSTER_SECRET_KEY"),
            "{detail}"
        );
        let detail = app
            .patch(
                &format!("/api/v1/apps/{}", first["id"].as_str().unwrap_or_default()),
                &json!({"auth": {"type": "bearer", "token": "new-token"}}),
            )
            .await
            .problem(503);
        assert!(detail.contains(&new_id), "{detail}");
        let rows = app.rows("SELECT secret_key_id FROM app").await;
        assert!(
            rows.iter().all(|r| r["secret_key_id"] == new_id.as_str()),
            "{rows:?}"
        );
        // Nor may a new process start on it.
        let mut stale = app.config.clone();
        stale.run_engine = false;
        let err = match roster::startup::build(stale).await {
            Ok(_) => panic!("started on a key the database has rotated away from"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(&new_id), "{err}");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_sqlite_files_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let app = spawn_app().await;
        let Some(db) = sqlite_file(&app.config.database_url) else {
            return;
        };
        app.create_app(&app_body("mode", json!({}))).await;
        for suffix in ["", "-wal", "-shm"] {
            let path = format!("{}{suffix}", db.display());
            let mode = std::fs::metadata(&path)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or_default();
            assert_eq!(mode, 0o600, "{path} has mode {mode:o}");
        }
    }
}
