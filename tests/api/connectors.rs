//! The connector catalogue: `/connectors`, and apps built from a connector.
use std::time::Duration;

use roster::dev_target::Profile;
use serde_json::{Value, json};

use crate::helpers::{eventually, spawn_app};

fn from_connector(name: &str, connector: &str, extra: Value) -> Value {
    let mut body = json!({
        "name": name,
        "connector": connector,
        "auth": {"type": "bearer", "token": "target-token"},
        "scope": {"email_domains": ["example.com"]},
    });
    if let (Some(b), Some(o)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in o {
            b.insert(k.clone(), v.clone());
        }
    }
    body
}

#[tokio::test]
async fn the_catalogue_lists_every_connector_with_sourced_facts() {
    let app = spawn_app().await;
    let list = app.get("/api/v1/connectors").await.expect(200);
    let names: Vec<&str> = list
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for wanted in [
        "slack",
        "github-emu",
        "aws-identity-center",
        "atlassian",
        "zoom",
        "salesforce",
        "figma",
        "miro",
        "snowflake",
        "asana",
        "rfc",
        "entra-style",
    ] {
        assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
    }
    let github = app.get("/api/v1/connectors/github-emu").await.expect(200);
    assert_eq!(github["delete_means"], "permanent");
    assert_eq!(
        github["base_url_template"],
        "https://api.github.com/scim/v2/enterprises/{enterprise}"
    );
    assert!(
        github["facts"]
            .as_array()
            .is_some_and(|f| f.iter().all(|f| f["source"]
                .as_str()
                .is_some_and(|s| s.starts_with("https://"))))
    );
    let detail = app.get("/api/v1/connectors/github").await.problem(404);
    assert!(detail.contains("github-emu"), "{detail}");
}

#[tokio::test]
async fn an_app_built_from_a_connector_takes_its_defaults_and_records_it() {
    let app = spawn_app().await;
    // The template fills the base URL from the parameters.
    let aws = app
        .create_app(&from_connector(
            "aws",
            "aws-identity-center",
            json!({"connector_params": {"region": "eu-west-1", "tenant_id": "d-9067"}}),
        ))
        .await;
    assert_eq!(
        aws["base_url"],
        "https://scim.eu-west-1.amazonaws.com/d-9067/scim/v2"
    );
    assert_eq!(aws["quirks"]["max_members_per_patch"], 100);
    assert_eq!(aws["quirks"]["page_size"], 100);
    assert_eq!(aws["connector"]["name"], "aws-identity-center");
    assert_eq!(aws["connector"]["version"], 2);
    assert_eq!(aws["quirks"]["paging"], "cursor");
    assert_eq!(aws["quirks"]["group_members_readable"], false);
    assert_eq!(aws["connector"]["params"]["tenant_id"], "d-9067");
    assert!(
        aws["mappings"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["target"] == "displayName")),
        "the vendor requires displayName on create"
    );

    // Explicit fields override the connector; an explicit base_url replaces the template.
    let slack = app
        .create_app(&from_connector(
            "slack",
            "slack",
            json!({"base_url": "http://127.0.0.1:9/scim/v2", "max_concurrency": 1,
                   "quirks": {"page_size": 200},
                   "connector_params": {"organization": "E0123"}}),
        ))
        .await;
    assert_eq!(slack["base_url"], "http://127.0.0.1:9/scim/v2");
    assert_eq!(slack["max_concurrency"], 1);
    assert_eq!(slack["rate_limit"]["per_second"], 10);
    assert_eq!(
        slack["rate_limit"]["windows"][0],
        json!({"limit": 600, "window_seconds": 60, "burst": 180,
               "operations": ["write", "delete"]})
    );
    // Slack's limits hold for the whole organisation: the group comes from its ID.
    assert_eq!(slack["rate_limit_group"], "slack:E0123");
    assert_eq!(slack["quirks"]["page_size"], 200);
    let stored = app
        .rows("SELECT connector FROM app WHERE name = 'slack'")
        .await;
    let recorded = match &stored[0]["connector"] {
        Value::String(text) => serde_json::from_str(text).unwrap_or(Value::Null),
        other => other.clone(),
    };
    assert_eq!(recorded["name"], "slack");
    assert_eq!(recorded["version"], 2);

    // A hand-made app records none.
    let plain = app
        .create_app(&crate::helpers::app_body("plain", json!({})))
        .await;
    assert!(plain.get("connector").is_none(), "{plain}");
}

#[tokio::test]
async fn a_newer_connector_version_shows_as_differences_and_changes_nothing() {
    let app = spawn_app().await;
    let slack = app
        .create_app(&from_connector(
            "slack-diff",
            "slack",
            json!({"base_url": "http://127.0.0.1:9/scim/v2",
                   "connector_params": {"organization": "E0123"}}),
        ))
        .await;
    let id = slack["id"].as_str().expect("id");
    let got = app.get(&format!("/api/v1/apps/{id}")).await.expect(200);
    assert_eq!(got["connector"]["latest_version"], 2);
    assert_eq!(got["connector"]["differences"], json!([]));
    app.patch(
        &format!("/api/v1/apps/{id}"),
        &json!({"rate_limit": {"per_second": 1, "burst": 1}}),
    )
    .await
    .expect(200);
    // As if the app had been built from an older version of the connector.
    app.rows(&format!(
        "UPDATE app SET connector = '{{\"name\": \"slack\", \"version\": 0, \
         \"params\": {{\"organization\": \"E0123\"}}}}' WHERE id = '{id}' RETURNING id"
    ))
    .await;
    let got = app.get(&format!("/api/v1/apps/{id}")).await.expect(200);
    assert_eq!(got["connector"]["version"], 0);
    assert_eq!(got["connector"]["latest_version"], 2);
    let differences = got["connector"]["differences"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(differences.len(), 1, "{differences:?}");
    assert_eq!(differences[0]["setting"], "rate_limit");
    assert_eq!(differences[0]["app"], json!({"per_second": 1, "burst": 1}));
    assert_eq!(differences[0]["connector"]["per_second"], 10);
    assert_eq!(
        got["rate_limit"]["per_second"], 1,
        "nothing changed by itself"
    );
}

#[tokio::test]
async fn bad_connector_requests_are_422_and_store_nothing() {
    let app = spawn_app().await;
    let before = app.count("app").await;
    let audit_before = app.count("audit").await;
    let detail = app
        .post("/api/v1/apps", &from_connector("x1", "slak", json!({})))
        .await
        .problem(422);
    assert!(
        detail.contains("connector") && detail.contains("slack") && detail.contains("miro"),
        "{detail}"
    );

    let detail = app
        .post(
            "/api/v1/apps",
            &from_connector(
                "x2",
                "aws-identity-center",
                json!({"connector_params": {"region": "eu-west-1"}}),
            ),
        )
        .await
        .problem(422);
    assert!(detail.contains("connector_params.tenant_id"), "{detail}");

    let detail = app
        .post(
            "/api/v1/apps",
            &from_connector(
                "x3",
                "aws-identity-center",
                json!({"connector_params": {"region": "eu-west-1", "tenant_id": "d-1"},
                       "quirks": {"max_members_per_patch": 500}}),
            ),
        )
        .await
        .problem(422);
    assert!(
        detail.contains("quirks.max_members_per_patch")
            && detail.contains("100")
            && detail.contains(
                "https://docs.aws.amazon.com/singlesignon/latest/developerguide/patchgroup.html"
            ),
        "{detail}"
    );

    let detail = app
        .post(
            "/api/v1/apps",
            &from_connector(
                "x4",
                "slack",
                json!({"rate_limit": {"per_second": 50, "burst": 50},
                       "connector_params": {"organization": "E0123"}}),
            ),
        )
        .await
        .problem(422);
    assert!(
        detail.contains("rate_limit.per_second")
            && detail.contains("600 per minute")
            && detail.contains("https://docs.slack.dev/reference/scim-api/rate-limits"),
        "{detail}"
    );

    let detail = app
        .post(
            "/api/v1/apps",
            &from_connector(
                "x5",
                "github-emu",
                json!({"connector_params": {"enterprise": "acme"},
                       "auth": {"type": "basic", "username": "u", "password": "p"}}),
            ),
        )
        .await
        .problem(422);
    assert!(
        detail.contains("auth.type") && detail.contains("scim:enterprise"),
        "{detail}"
    );

    let detail = app
        .post("/api/v1/apps", &from_connector("x6", "rfc", json!({})))
        .await
        .problem(422);
    assert!(detail.contains("base_url"), "{detail}");

    let detail = app
        .post(
            "/api/v1/apps",
            &crate::helpers::app_body("x7", json!({"connector_params": {"a": "b"}})),
        )
        .await
        .problem(422);
    assert!(detail.contains("connector_params"), "{detail}");

    // Slack's organisation names its rate-limit group: required, even with a `base_url`.
    let detail = app
        .post(
            "/api/v1/apps",
            &from_connector(
                "x8",
                "slack",
                json!({"base_url": "http://127.0.0.1:9/scim/v2"}),
            ),
        )
        .await
        .problem(422);
    assert!(
        detail.contains("connector_params.organization") && detail.contains("share"),
        "{detail}"
    );

    assert_eq!(app.count("app").await, before, "nothing stored");
    assert_eq!(app.count("audit").await, audit_before, "nothing audited");

    // The same limit, overridden on purpose, is accepted and recorded.
    let fast = app
        .create_app(&from_connector(
            "fast",
            "slack",
            json!({"rate_limit": {"per_second": 50, "burst": 50},
                   "base_url": "http://127.0.0.1:9/scim/v2",
                   "connector_params": {"organization": "E0123"},
                   "override_vendor_limits": true}),
        ))
        .await;
    assert_eq!(fast["connector"]["override_vendor_limits"], true);

    // A PATCH beyond the limit of a connector app without the override is refused too.
    let slack = app
        .create_app(&from_connector(
            "slack-limited",
            "slack",
            json!({"base_url": "http://127.0.0.1:9/scim/v2",
                   "connector_params": {"organization": "E0123"}}),
        ))
        .await;
    let detail = app
        .patch(
            &format!("/api/v1/apps/{}", slack["id"].as_str().unwrap_or_default()),
            &json!({"quirks": {"page_size": 5000}}),
        )
        .await
        .problem(422);
    assert!(detail.contains("quirks.page_size"), "{detail}");
}

/// The errors of `app_id`'s dead jobs ([`dead_errors`]), once there is one.
async fn dead_letters(app: &crate::helpers::TestApp, app_id: &str) -> Vec<String> {
    let wait = Duration::from_secs(30);
    eventually("a job to dead-letter", wait, || async {
        app.settled(app_id, wait).await;
        let dead = dead_errors(app, app_id).await;
        (!dead.is_empty()).then_some(dead)
    })
    .await
}

/// Joiner → mover → leaver, a pushed group larger than one PATCH takes, hand-made drift, and
/// reconcile (dry run, fix, a second run with no writes), all through an app built from
/// `connector` against `dev-target --profile`, which refuses what that vendor refuses.
async fn lifecycle_against_profile(connector: &str, profile: Profile, params: Value) {
    use roster::dev_target::{DevTargetArgs, Kind};
    let token = "vendor-token";
    let target = roster::dev_target::spawn(DevTargetArgs {
        token: Some(token.into()),
        profile,
        ..DevTargetArgs::default()
    })
    .await
    .expect("dev-target");
    let app = spawn_app().await;
    let employee = |n: usize| format!("{connector}-E{n}");
    let email = |n: usize| format!("p{n}@example.com");
    let group = format!("team-{connector}");
    app.post(
        "/api/v1/groups",
        &json!({"name": group, "members": [employee(0), employee(1), employee(2)]}),
    )
    .await
    .expect(201);
    let created = app
        .create_app(&from_connector(
            connector,
            connector,
            json!({"connector_params": params, "base_url": target.base_url(),
                   "auth": {"type": "bearer", "token": token},
                   "rate_limit": {"per_second": 100, "burst": 100},
                   "override_vendor_limits": true,
                   "group_push": [group], "max_attempts": 2,
                   "reconcile": {"interval_minutes": 0, "mode": "report"},
                   "quirks": {"max_members_per_patch": 2}}),
        ))
        .await;
    let app_id = created["id"].as_str().expect("id").to_owned();
    let checked = app
        .post(
            &format!("/api/v1/apps/{app_id}/test-connection"),
            &json!({}),
        )
        .await
        .expect(200);
    assert_eq!(checked["ok"], true, "{connector}: {checked}");
    // A token the vendor refuses: test-connection says what the vendor wants, in its terms
    // (the connector's credential fact). The app goes before any event reaches it.
    let fact = app
        .get(&format!("/api/v1/connectors/{connector}"))
        .await
        .expect(200)["credential"]["fact"]
        .as_str()
        .expect("a credential fact")
        .to_owned();
    let wrong = app
        .create_app(&from_connector(
            &format!("{connector}-wrong-token"),
            connector,
            json!({"connector_params": params, "base_url": target.base_url(),
                   "auth": {"type": "bearer", "token": "not-the-vendor-token"}}),
        ))
        .await;
    let wrong_id = wrong["id"].as_str().expect("id");
    let refused = app
        .post(
            &format!("/api/v1/apps/{wrong_id}/test-connection"),
            &json!({}),
        )
        .await
        .expect(200);
    assert_eq!(refused["auth_ok"], false, "{connector}: {refused}");
    let reason = refused["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("401") && reason.contains(&fact),
        "{connector}: {reason}"
    );
    app.delete(&format!("/api/v1/apps/{wrong_id}"))
        .await
        .expect(204);
    for n in 0..3 {
        app.post_event(&crate::helpers::joiner(
            &format!("{connector}-j{n}"),
            &employee(n),
            "2026-11-01T09:00:00Z",
            json!({"email": email(n), "user_name": email(n), "given_name": format!("P{n}"),
                   "family_name": "Test", "display_name": format!("P{n} Test")}),
        ))
        .await;
    }
    let wait = Duration::from_secs(30);
    let members_of = |target: &roster::dev_target::DevTarget| {
        target
            .groups_snapshot()
            .iter()
            .find(|g| g["displayName"] == json!(group))
            .map(|g| g["members"].as_array().map_or(0, |m| m.len()))
    };
    eventually("joiners and their group", wait, || async {
        app.settled(&app_id, wait).await;
        (target.users_snapshot().len() == 3 && members_of(&target) == Some(3)).then_some(())
    })
    .await;

    app.post_event(&crate::helpers::event(
        &format!("{connector}-m0"),
        "mover",
        &employee(0),
        "2026-11-02T09:00:00Z",
        json!({"email": email(0), "user_name": email(0), "given_name": "P0",
               "family_name": "Moved", "display_name": "P0 Test"}),
    ))
    .await;
    app.post_event(&crate::helpers::event(
        &format!("{connector}-l1"),
        "leaver",
        &employee(1),
        "2026-11-02T09:00:00Z",
        json!({}),
    ))
    .await;
    let user = |n: usize| {
        target
            .users_snapshot()
            .into_iter()
            .find(|u| u["userName"].as_str() == Some(email(n).as_str()))
    };
    eventually("the mover and the leaver", wait, || async {
        app.settled(&app_id, wait).await;
        let moved = user(0).is_some_and(|u| u["name"]["familyName"] == "Moved");
        let left = user(1).is_some_and(|u| u["active"] == json!(false));
        (moved && left && members_of(&target) == Some(2)).then_some(())
    })
    .await;
    let dead = app
        .rows(&format!(
            "SELECT last_error FROM job WHERE app_id = '{app_id}' AND state = 'dead'"
        ))
        .await;
    assert!(dead.is_empty(), "{connector}: dead jobs {dead:?}");

    // Drift by hand, then reconcile: a dry run reports it, a fix run corrects it, and a second
    // run finds nothing to write.
    let drifted_id = user(2)
        .and_then(|u| u["id"].as_str().map(str::to_owned))
        .expect("account");
    assert!(target.edit(Kind::User, &drifted_id, |u| {
        u["name"]["familyName"] = json!("Hand");
    }));
    let run = |body: Value| app.reconcile_run(&app_id, body);
    let dry = run(json!({"dry_run": true, "mode": "fix"})).await;
    assert_eq!(dry["state"], "completed", "{connector}: {dry}");
    assert_eq!(dry["writes"], 0);
    assert_eq!(dry["counts"]["drifted"], 1, "{connector}: {dry}");
    let fixed = run(json!({"mode": "fix"})).await;
    assert_eq!(fixed["writes"], 1, "{connector}: {fixed}");
    app.settled(&app_id, wait).await;
    assert!(user(2).is_some_and(|u| u["name"]["familyName"] == "Test"));
    let writes = |stats: &Value| -> u64 {
        ["POST", "PUT", "PATCH", "DELETE"]
            .iter()
            .map(|m| stats["requests"][m].as_u64().unwrap_or(0))
            .sum()
    };
    let before = writes(&target.stats());
    let again = run(json!({"mode": "fix"})).await;
    assert_eq!(again["writes"], 0, "{connector}: {again}");
    assert_eq!(again["counts"]["drifted"], 0, "{connector}: {again}");
    app.settled(&app_id, wait).await;
    assert_eq!(
        writes(&target.stats()),
        before,
        "{connector}: no write at all"
    );
}

#[tokio::test]
async fn github_emu_lifecycle_against_its_emulation() {
    lifecycle_against_profile(
        "github-emu",
        Profile::GithubEmu,
        json!({"enterprise": "acme"}),
    )
    .await;
}

#[tokio::test]
async fn salesforce_lifecycle_against_its_emulation() {
    lifecycle_against_profile(
        "salesforce",
        Profile::Salesforce,
        json!({"my_domain": "acme"}),
    )
    .await;
}

#[tokio::test]
async fn zoom_lifecycle_against_its_emulation() {
    lifecycle_against_profile("zoom", Profile::Zoom, json!({})).await;
}

#[tokio::test]
async fn snowflake_lifecycle_against_its_emulation() {
    lifecycle_against_profile("snowflake", Profile::Snowflake, json!({"account": "acme"})).await;
}

#[tokio::test]
async fn aws_identity_center_lifecycle_against_its_emulation() {
    lifecycle_against_profile(
        "aws-identity-center",
        Profile::AwsIdentityCenter,
        json!({"region": "eu-west-1", "tenant_id": "t-1"}),
    )
    .await;
}

/// A pushed group on the AWS emulation, reconciled twice in fix mode with `quirks` (with one
/// member removed by hand before the second run when `remove_by_hand`); returns the second
/// run's report, the PATCHes the runs' jobs sent, and the members the target then holds.
async fn aws_group_reconciled_twice(quirks: Value, remove_by_hand: bool) -> (Value, u64, usize) {
    use roster::dev_target::{DevTargetArgs, Kind};
    let token = "vendor-token";
    let target = roster::dev_target::spawn(DevTargetArgs {
        token: Some(token.into()),
        profile: Profile::AwsIdentityCenter,
        ..DevTargetArgs::default()
    })
    .await
    .expect("dev-target");
    let app = spawn_app().await;
    app.post(
        "/api/v1/groups",
        &json!({"name": "aws-team", "members": ["A0", "A1"]}),
    )
    .await
    .expect(201);
    let created = app
        .create_app(&from_connector(
            "aws",
            "aws-identity-center",
            json!({"connector_params": {"region": "eu-west-1", "tenant_id": "t"},
                   "base_url": target.base_url(), "auth": {"type": "bearer", "token": token},
                   "rate_limit": {"per_second": 100, "burst": 100}, "group_push": ["aws-team"],
                   "reconcile": {"interval_minutes": 0, "mode": "fix"}, "quirks": quirks}),
        ))
        .await;
    let app_id = created["id"].as_str().expect("id").to_owned();
    for n in 0..2 {
        app.post_event(&crate::helpers::joiner(
            &format!("aws-j{n}"),
            &format!("A{n}"),
            "2026-11-01T09:00:00Z",
            json!({"email": format!("a{n}@example.com"), "user_name": format!("a{n}@example.com"),
                   "given_name": "A", "family_name": "T", "display_name": "A T"}),
        ))
        .await;
    }
    let wait = Duration::from_secs(30);
    eventually("the group pushed with both members", wait, || async {
        app.settled(&app_id, wait).await;
        let members = target
            .groups_snapshot()
            .first()
            .and_then(|g| g["members"].as_array().map(Vec::len));
        (members == Some(2)).then_some(())
    })
    .await;
    let patches = || target.stats()["requests"]["PATCH"].as_u64().unwrap_or(0);
    let before = patches();
    let mut last = Value::Null;
    for run in 0..2 {
        if run == 1 && remove_by_hand {
            let id = target.groups_snapshot()[0]["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(target.edit(Kind::Group, &id, |g| {
                g["members"].as_array_mut().map(Vec::pop);
            }));
        }
        last = app.reconcile_run(&app_id, json!({})).await;
        app.settled(&app_id, wait).await;
    }
    let members = target
        .groups_snapshot()
        .first()
        .and_then(|g| g["members"].as_array().map(Vec::len))
        .unwrap_or(0);
    (last, patches() - before, members)
}

/// AWS answers groups without members: read as the RFC says, every run finds every member
/// missing and re-adds them all; with the connector's quirks the members are confirmed by
/// the member filter and the runs write nothing, and a member removed by hand is found and
/// added back alone.
#[tokio::test]
async fn groups_read_back_without_members_are_never_re_added_every_run() {
    let (rfc_reading, patches, _) =
        aws_group_reconciled_twice(json!({"group_members_readable": true}), false).await;
    assert!(
        patches >= 2,
        "RFC reading re-adds on each run: {patches} PATCHes"
    );
    assert_eq!(rfc_reading["groups"]["drifted"], 1, "{rfc_reading}");
    assert!(rfc_reading["writes"].as_u64() >= Some(1), "{rfc_reading}");

    let (connector, patches, members) = aws_group_reconciled_twice(json!({}), false).await;
    assert_eq!(patches, 0, "no membership write: {connector}");
    assert_eq!(connector["writes"], 0, "{connector}");
    assert_eq!(connector["groups"]["in_sync"], 1, "{connector}");
    assert_eq!(members, 2);

    let (by_hand, patches, members) = aws_group_reconciled_twice(json!({}), true).await;
    assert_eq!(by_hand["groups"]["drifted"], 1, "{by_hand}");
    assert_eq!(by_hand["writes"], 1, "{by_hand}");
    assert_eq!(patches, 1, "one PATCH adds the one member back: {by_hand}");
    assert_eq!(members, 2, "{by_hand}");
}

/// The emulation bites end to end: the same lifecycle with hand-made RFC settings fails on
/// the GitHub profile (the leaver's removal from the pushed group uses a value-filter path).
#[tokio::test]
async fn rfc_settings_dead_letter_against_the_github_emulation() {
    use roster::dev_target::DevTargetArgs;
    let token = "vendor-token";
    let target = roster::dev_target::spawn(DevTargetArgs {
        token: Some(token.into()),
        profile: Profile::GithubEmu,
        ..DevTargetArgs::default()
    })
    .await
    .expect("dev-target");
    let app = spawn_app().await;
    app.post(
        "/api/v1/groups",
        &json!({"name": "team-rfc", "members": ["R0", "R1"]}),
    )
    .await
    .expect(201);
    let created = app
        .create_app(&crate::helpers::app_body(
            "plain-rfc",
            json!({"base_url": target.base_url(), "auth": {"type": "bearer", "token": token},
                   "group_push": ["team-rfc"], "max_attempts": 1,
                   "reconcile": {"interval_minutes": 0, "mode": "report"}}),
        ))
        .await;
    let app_id = created["id"].as_str().expect("id").to_owned();
    for n in 0..2 {
        app.post_event(&crate::helpers::joiner(
            &format!("rj{n}"),
            &format!("R{n}"),
            "2026-11-01T09:00:00Z",
            json!({"email": format!("r{n}@example.com"), "user_name": format!("r{n}@example.com"),
                   "given_name": "R", "family_name": "T"}),
        ))
        .await;
    }
    let wait = Duration::from_secs(30);
    app.settled(&app_id, wait).await;
    app.post_event(&crate::helpers::event(
        "rl1",
        "leaver",
        "R1",
        "2026-11-02T09:00:00Z",
        json!({}),
    ))
    .await;
    let dead = dead_letters(&app, &app_id).await;
    assert!(
        dead.iter()
            .any(|e| e.contains("400") && e.contains("filters are not supported")),
        "{dead:?}"
    );
}

/// A token the vendor refuses is reported with what the vendor documents it wants.
#[tokio::test]
async fn test_connection_names_the_credential_the_vendor_wants() {
    use roster::dev_target::DevTargetArgs;
    let target = roster::dev_target::spawn(DevTargetArgs {
        token: Some("the-right-token".into()),
        profile: Profile::GithubEmu,
        ..DevTargetArgs::default()
    })
    .await
    .expect("dev-target");
    let app = spawn_app().await;
    let created = app
        .create_app(&from_connector(
            "gh-wrong-token",
            "github-emu",
            json!({"connector_params": {"enterprise": "acme"}, "base_url": target.base_url(),
                   "auth": {"type": "bearer", "token": "a-token-without-the-scope"}}),
        ))
        .await;
    let id = created["id"].as_str().expect("id");
    let report = app
        .post(&format!("/api/v1/apps/{id}/test-connection"), &json!({}))
        .await
        .expect(200);
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["auth_ok"], false, "{report}");
    let reason = report["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("401") && reason.contains("scim:enterprise"),
        "{reason}"
    );
}

#[tokio::test]
async fn atlassian_lifecycle_against_its_emulation() {
    lifecycle_against_profile(
        "atlassian",
        Profile::Atlassian,
        json!({"directory_id": "d-1"}),
    )
    .await;
}

const ATL_TOKEN: &str = "vendor-token";
const ATL_TEAM: &str = "atl-team";
const ATL_RENAMED: &str = "atl-team (renamed by hand)";

/// The Atlassian emulation.
async fn atlassian_target() -> roster::dev_target::DevTarget {
    roster::dev_target::spawn(roster::dev_target::DevTargetArgs {
        token: Some(ATL_TOKEN.into()),
        profile: Profile::Atlassian,
        ..roster::dev_target::DevTargetArgs::default()
    })
    .await
    .expect("dev-target")
}

/// An app from the `atlassian` connector (with `quirks` over the connector's, two members per
/// PATCH, one attempt per job) reaching `target` at `base_url` (the target's or a relay's),
/// pushing `atl-team` with five members; once the target group holds them, it is renamed by
/// hand in the target. Returns the app, its id, the roster group's id and the target group's.
async fn atlassian_team_renamed_by_hand(
    target: &roster::dev_target::DevTarget,
    base_url: &str,
    mut quirks: Value,
) -> (crate::helpers::TestApp, String, String, String) {
    let app = spawn_app().await;
    let members: Vec<String> = (0..5).map(|n| format!("AT{n}")).collect();
    let roster_group = app
        .post(
            "/api/v1/groups",
            &json!({"name": ATL_TEAM, "members": members}),
        )
        .await
        .expect(201);
    quirks["max_members_per_patch"] = json!(2);
    let created = app
        .create_app(&from_connector(
            "atl-rename",
            "atlassian",
            json!({"connector_params": {"directory_id": "d-1"}, "base_url": base_url,
                   "auth": {"type": "bearer", "token": ATL_TOKEN},
                   "rate_limit": {"per_second": 100, "burst": 100}, "group_push": [ATL_TEAM],
                   "max_attempts": 1, "quirks": quirks,
                   "reconcile": {"interval_minutes": 0, "mode": "report"}}),
        ))
        .await;
    let app_id = created["id"].as_str().expect("id").to_owned();
    for (n, employee) in members.iter().enumerate() {
        app.post_event(&crate::helpers::joiner(
            &format!("atl-j{n}"),
            employee,
            "2026-11-01T09:00:00Z",
            json!({"email": format!("at{n}@example.com"), "user_name": format!("at{n}@example.com"),
                   "given_name": "A", "family_name": "T", "display_name": "A T"}),
        ))
        .await;
    }
    let wait = Duration::from_secs(30);
    let old_id = eventually("the group pushed with its five members", wait, || async {
        app.settled(&app_id, wait).await;
        target
            .groups_snapshot()
            .into_iter()
            .find(|g| {
                g["displayName"] == ATL_TEAM && g["members"].as_array().map(Vec::len) == Some(5)
            })
            .and_then(|g| g["id"].as_str().map(str::to_owned))
    })
    .await;
    assert!(target.edit(roster::dev_target::Kind::Group, &old_id, |g| {
        g["displayName"] = json!(ATL_RENAMED);
    }));
    let roster_id = roster_group["id"].as_str().expect("id").to_owned();
    (app, app_id, roster_id, old_id)
}

/// A reconcile run of the app (`body` as posted), waited for, then the app settled.
async fn atlassian_run(app: &crate::helpers::TestApp, app_id: &str, body: Value) -> Value {
    let report = app.reconcile_run(app_id, body).await;
    app.settled(app_id, Duration::from_secs(30)).await;
    report
}

/// The dead jobs' errors of the app.
async fn dead_errors(app: &crate::helpers::TestApp, app_id: &str) -> Vec<String> {
    app.rows(&format!(
        "SELECT last_error FROM job WHERE app_id = '{app_id}' AND state = 'dead'"
    ))
    .await
    .iter()
    .filter_map(|r| r["last_error"].as_str().map(str::to_owned))
    .collect()
}

/// The target groups as (id, displayName, member count).
fn atl_groups(target: &roster::dev_target::DevTarget) -> Vec<(String, String, usize)> {
    target
        .groups_snapshot()
        .iter()
        .map(|g| {
            (
                g["id"].as_str().unwrap_or_default().to_owned(),
                g["displayName"].as_str().unwrap_or_default().to_owned(),
                g["members"].as_array().map_or(0, Vec::len),
            )
        })
        .collect()
}

/// Atlassian cannot rename a group: a pushed group renamed by hand there is brought back to
/// roster's name by create–move–delete (a new group with all five members, added two per
/// PATCH; the old group, which roster created, deleted), and a second run finds it in sync.
/// With RFC quirks (rename by PATCH) the emulation refuses the rename and the job is dead.
#[tokio::test]
async fn a_group_renamed_in_atlassian_is_replaced_by_create_move_delete() {
    let target = atlassian_target().await;
    let (app, app_id, _, old_id) =
        atlassian_team_renamed_by_hand(&target, &target.base_url(), json!({})).await;
    let patches = || target.stats()["requests"]["PATCH"].as_u64().unwrap_or(0);
    let before = patches();
    let fixed = atlassian_run(&app, &app_id, json!({"mode": "fix"})).await;
    assert_eq!(fixed["groups"]["drifted"], 1, "{fixed}");
    let groups = atl_groups(&target);
    assert_eq!(groups.len(), 1, "the old group is gone: {groups:?}");
    let (new_id, name, members) = &groups[0];
    assert_ne!(*new_id, old_id);
    assert_eq!((name.as_str(), *members), (ATL_TEAM, 5), "{groups:?}");
    assert_eq!(patches() - before, 3, "five members, two per PATCH");
    assert!(dead_errors(&app, &app_id).await.is_empty());
    let link = app
        .rows(&format!(
            "SELECT target_id, snapshot FROM link WHERE app_id = '{app_id}' AND resource_kind = 'group'"
        ))
        .await;
    assert_eq!(link.len(), 1, "{link:?}");
    assert_eq!(
        link[0]["target_id"].as_str(),
        Some(new_id.as_str()),
        "{link:?}"
    );
    let again = atlassian_run(&app, &app_id, json!({"mode": "fix"})).await;
    assert_eq!(again["groups"]["in_sync"], 1, "{again}");
    assert_eq!(again["groups"]["unmanaged"], 0, "{again}");
    assert_eq!(again["writes"], 0, "{again}");

    // RFC quirks rename with a PATCH, which Atlassian refuses.
    let target = atlassian_target().await;
    let (app, app_id, _, old_id) =
        atlassian_team_renamed_by_hand(&target, &target.base_url(), json!({"group_rename": true}))
            .await;
    atlassian_run(&app, &app_id, json!({"mode": "fix"})).await;
    let dead = dead_errors(&app, &app_id).await;
    assert!(
        dead.iter()
            .any(|e| e.contains("400") && e.contains("renaming a group is not supported")),
        "{dead:?}"
    );
    assert_eq!(
        atl_groups(&target),
        vec![(old_id, ATL_RENAMED.to_owned(), 5)],
        "nothing changed"
    );
}

/// The state a crash leaves between the new group's create and the job's end (its link not
/// written): the link still names the renamed group, and a group of roster's name made by
/// roster (its `externalId`) exists with some of the members. Reconcile calls that group
/// neither a duplicate nor adoptable, and the retry takes it, adds the missing members,
/// deletes the old group, and creates nothing.
#[tokio::test]
async fn a_replacement_interrupted_after_its_create_is_finished_without_a_second_group() {
    let target = atlassian_target().await;
    let (app, app_id, roster_id, old_id) =
        atlassian_team_renamed_by_hand(&target, &target.base_url(), json!({})).await;
    let first_member = target.users_snapshot()[0]["id"].clone();
    let made = target
        .insert(
            roster::dev_target::Kind::Group,
            json!({"displayName": ATL_TEAM, "externalId": roster_id,
                   "members": [{"value": first_member}]}),
        )
        .expect("the group an interrupted job created");
    let made_id = made["id"].as_str().expect("id").to_owned();
    let posts = || target.stats()["requests"]["POST"].as_u64().unwrap_or(0);
    let before = posts();
    let fixed = atlassian_run(&app, &app_id, json!({"mode": "fix"})).await;
    assert_eq!(fixed["groups"]["drifted"], 1, "the renamed group: {fixed}");
    assert_eq!(fixed["groups"]["unmanaged"], 1, "the new one: {fixed}");
    assert_eq!(fixed["groups"]["adoptable"], 0, "{fixed}");
    assert_eq!(posts(), before, "no second group created");
    assert_eq!(
        atl_groups(&target),
        vec![(made_id.clone(), ATL_TEAM.to_owned(), 5)],
        "old group {old_id} deleted"
    );
    assert!(dead_errors(&app, &app_id).await.is_empty());
    let link = app
        .rows(&format!(
            "SELECT target_id, snapshot FROM link WHERE app_id = '{app_id}' AND resource_kind = 'group'"
        ))
        .await;
    assert_eq!(
        link[0]["target_id"].as_str(),
        Some(made_id.as_str()),
        "{link:?}"
    );
    let snapshot: Value = match &link[0]["snapshot"] {
        Value::String(text) => serde_json::from_str(text).unwrap_or_default(),
        other => other.clone(),
    };
    assert_eq!(snapshot["origin"], "created", "roster's create: {snapshot}");
}

/// Fails the first DELETE of a group: sent to a read-only endpoint instead, it is answered 405,
/// a refusal the job does not retry.
#[derive(Default)]
struct FailFirstGroupDelete(std::sync::atomic::AtomicBool);

impl crate::helpers::Tap for FailFirstGroupDelete {
    async fn request(&self, call: &mut crate::helpers::RelayedCall) {
        if call.method == "DELETE"
            && call.path.contains("/Groups/")
            && !self.0.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            call.path = call.path.replace("/Groups/", "/ResourceTypes/");
        }
    }
}

/// A replacement whose delete of the old group fails keeps its link on the new group, naming
/// the old one as still to delete; reconcile leaves the old one alone (`unmanaged`), keeps it
/// named as still to delete when it fixes the new group, and the fix's job deletes it.
#[tokio::test]
async fn a_replacement_whose_old_group_delete_fails_keeps_its_link_and_the_next_job_deletes_it() {
    let target = atlassian_target().await;
    let through = crate::helpers::relay(
        &target.base_url(),
        std::sync::Arc::new(FailFirstGroupDelete::default()),
    )
    .await;
    let (app, app_id, _, old_id) =
        atlassian_team_renamed_by_hand(&target, &through, json!({})).await;
    atlassian_run(&app, &app_id, json!({"mode": "fix"})).await;
    let dead = dead_errors(&app, &app_id).await;
    assert!(dead.iter().any(|e| e.contains("405")), "{dead:?}");
    let mut groups = atl_groups(&target);
    groups.sort_by_key(|(id, _, _)| *id != old_id);
    assert_eq!(groups.len(), 2, "{groups:?}");
    assert_eq!(groups[0], (old_id.clone(), ATL_RENAMED.to_owned(), 5));
    let new_id = groups[1].0.clone();
    assert_eq!((groups[1].1.as_str(), groups[1].2), (ATL_TEAM, 5));
    let link = || async {
        let rows = app
            .rows(&format!(
                "SELECT target_id, snapshot FROM link WHERE app_id = '{app_id}' AND resource_kind = 'group'"
            ))
            .await;
        let snapshot: Value = match &rows[0]["snapshot"] {
            Value::String(text) => serde_json::from_str(text).unwrap_or_default(),
            other => other.clone(),
        };
        (
            rows[0]["target_id"].as_str().unwrap_or_default().to_owned(),
            snapshot,
        )
    };
    let (linked, snapshot) = link().await;
    assert_eq!(linked, new_id);
    assert_eq!(snapshot["replaces"], json!([old_id]), "{snapshot}");

    let dry = atlassian_run(&app, &app_id, json!({"mode": "fix", "dry_run": true})).await;
    assert_eq!(dry["groups"]["in_sync"], 1, "{dry}");
    assert_eq!(dry["groups"]["unmanaged"], 1, "the old group: {dry}");
    assert_eq!(dry["groups"]["drifted"], 0, "{dry}");

    // A member removed by hand meanwhile: the fix keeps the group still to delete, and its job
    // adds the member back and deletes the old group.
    assert!(target.edit(roster::dev_target::Kind::Group, &new_id, |g| {
        g["members"].as_array_mut().map(Vec::pop);
    }));
    let fixed = atlassian_run(&app, &app_id, json!({"mode": "fix"})).await;
    assert_eq!(fixed["groups"]["drifted"], 1, "{fixed}");
    assert_eq!(
        atl_groups(&target),
        vec![(new_id.clone(), ATL_TEAM.to_owned(), 5)]
    );
    let (linked, snapshot) = link().await;
    assert_eq!(linked, new_id);
    assert!(snapshot.get("replaces").is_none(), "{snapshot}");
}

/// A group roster adopted (the app's own before) and then renamed by hand in Atlassian is
/// never deleted: roster creates its group with all members, unlinks the old one and leaves
/// it as it is, members included; the next run lists it as `unmanaged`.
#[tokio::test]
async fn a_renamed_group_roster_adopted_is_left_as_it_is_and_only_unlinked() {
    let target = atlassian_target().await;
    let adopted = target
        .insert(
            roster::dev_target::Kind::Group,
            json!({"displayName": ATL_TEAM}),
        )
        .expect("the app's own group");
    let (app, app_id, _, old_id) =
        atlassian_team_renamed_by_hand(&target, &target.base_url(), json!({})).await;
    assert_eq!(adopted["id"].as_str(), Some(old_id.as_str()), "adopted");
    let deletes = || target.stats()["requests"]["DELETE"].as_u64().unwrap_or(0);
    let before = deletes();
    let fixed = atlassian_run(&app, &app_id, json!({"mode": "fix"})).await;
    assert_eq!(fixed["groups"]["drifted"], 1, "{fixed}");
    assert_eq!(deletes(), before, "nothing deleted");
    let mut groups = atl_groups(&target);
    groups.sort_by_key(|(id, _, _)| *id != old_id);
    assert_eq!(groups.len(), 2, "{groups:?}");
    assert_eq!(groups[0], (old_id.clone(), ATL_RENAMED.to_owned(), 5));
    assert_eq!((groups[1].1.as_str(), groups[1].2), (ATL_TEAM, 5));
    assert!(dead_errors(&app, &app_id).await.is_empty());
    let again = atlassian_run(&app, &app_id, json!({"mode": "fix"})).await;
    assert_eq!(again["groups"]["in_sync"], 1, "{again}");
    assert_eq!(again["groups"]["unmanaged"], 1, "the old group: {again}");
    assert_eq!(again["writes"], 0, "{again}");
    assert_eq!(deletes(), before);
}

#[tokio::test]
async fn slack_lifecycle_against_its_emulation() {
    lifecycle_against_profile("slack", Profile::Slack, json!({"organization": "E0123"})).await;
}

#[tokio::test]
async fn miro_lifecycle_against_its_emulation() {
    lifecycle_against_profile("miro", Profile::Miro, json!({})).await;
}

/// Slack's DELETE deactivates: a leaver on the slack connector, even one set to delete,
/// leaves the account in the organisation, deactivated, and found by a GET.
#[tokio::test]
async fn a_slack_leaver_stays_deactivated_not_deleted() {
    use roster::dev_target::DevTargetArgs;
    let token = "vendor-token";
    let target = roster::dev_target::spawn(DevTargetArgs {
        token: Some(token.into()),
        profile: Profile::Slack,
        ..DevTargetArgs::default()
    })
    .await
    .expect("dev-target");
    let app = spawn_app().await;
    let created = app
        .create_app(&from_connector(
            "slack-leaver",
            "slack",
            json!({"connector_params": {"organization": "E0123"}, "base_url": target.base_url(),
                   "auth": {"type": "bearer", "token": token},
                   "deprovision": {"action": "delete"}}),
        ))
        .await;
    let app_id = created["id"].as_str().expect("id").to_owned();
    app.post_event(&crate::helpers::joiner(
        "sl-j",
        "SL1",
        "2026-11-01T09:00:00Z",
        json!({}),
    ))
    .await;
    let wait = Duration::from_secs(30);
    let id = eventually("the joiner's account", wait, || async {
        app.settled(&app_id, wait).await;
        target
            .users_snapshot()
            .first()
            .and_then(|u| u["id"].as_str().map(str::to_owned))
    })
    .await;
    app.post_event(&crate::helpers::event(
        "sl-l",
        "leaver",
        "SL1",
        "2026-11-02T09:00:00Z",
        json!({}),
    ))
    .await;
    eventually("the leaver's DELETE", wait, || async {
        app.settled(&app_id, wait).await;
        (target.stats()["requests"]["DELETE"].as_u64() == Some(1)).then_some(())
    })
    .await;
    let read: Value = reqwest::Client::new()
        .get(format!("{}/Users/{id}", target.base_url()))
        .bearer_auth(token)
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("the account is still there");
    assert_eq!(read["active"], json!(false), "{read}");
    assert_eq!(read["userName"], "sl1");
    assert_eq!(target.users_snapshot().len(), 1);
    let dead = app
        .rows(&format!(
            "SELECT last_error FROM job WHERE app_id = '{app_id}' AND state = 'dead'"
        ))
        .await;
    assert!(dead.is_empty(), "{dead:?}");
}

/// Two apps, each provisioning the same 10 joiners to its own workspace of one emulated Slack
/// organisation whose write limit is lowered to 5 per second (burst 3); each app allows
/// itself 4 writes per second (burst 2). With `shared`, both are built from the slack
/// connector with one `organization` (so one `rate_limit_group`); without, they are plain apps
/// with the same rate limit. Returns the requests the organisation throttled and the POSTs it
/// received, once both workspaces hold every account.
async fn two_apps_on_one_slack_organisation(shared: bool) -> (u64, u64) {
    use roster::dev_target::{DevTargetArgs, SCIM_ROOT, TENANT_PREFIX};
    let token = "vendor-token";
    let target = roster::dev_target::spawn(DevTargetArgs {
        token: Some(token.into()),
        profile: Profile::Slack,
        vendor_limits: vec!["writes=5/1:3".into()],
        ..DevTargetArgs::default()
    })
    .await
    .expect("dev-target");
    let app = spawn_app().await;
    let people = 10;
    let workspace =
        |name: &str| format!("http://{}{TENANT_PREFIX}{name}{SCIM_ROOT}", target.addr());
    let mut apps = Vec::new();
    for name in ["ws-a", "ws-b"] {
        let settings = json!({
            "base_url": workspace(name), "auth": {"type": "bearer", "token": token},
            "rate_limit": {"per_second": 10, "burst": 10, "windows": [
                {"limit": 4, "window_seconds": 1, "burst": 2, "operations": ["write", "delete"]}]},
        });
        let body = if shared {
            let mut settings = settings;
            settings["connector_params"] = json!({"organization": "E0RG"});
            from_connector(name, "slack", settings)
        } else {
            crate::helpers::app_body(name, settings)
        };
        let created = app.create_app(&body).await;
        assert_eq!(
            created["rate_limit_group"].as_str(),
            shared.then_some("slack:E0RG"),
            "{created}"
        );
        apps.push(created["id"].as_str().expect("id").to_owned());
    }
    for n in 0..people {
        app.post_event(&crate::helpers::joiner(
            &format!("org-j{n}"),
            &format!("ORG{n}"),
            "2026-11-01T09:00:00Z",
            json!({}),
        ))
        .await;
    }
    let wait = Duration::from_secs(60);
    let accounts = |name: &'static str| {
        let url = format!("{}/Users?count=0", workspace(name));
        async move {
            let listing: Value = reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            listing["totalResults"].as_u64()
        }
    };
    eventually("every account in both workspaces", wait, || async {
        for id in &apps {
            app.settled(id, wait).await;
        }
        let both = accounts("ws-a").await == Some(people) && accounts("ws-b").await == Some(people);
        both.then_some(())
    })
    .await;
    let stats = target.stats();
    (
        stats["throttled"].as_u64().unwrap_or(0),
        stats["requests"]["POST"].as_u64().unwrap_or(0),
    )
}

/// Slack's limits hold for the whole organisation: two apps of one organisation share one
/// bucket set through the connector's `rate_limit_group` and together stay within its write
/// limit (no 429, each account created by one POST); the same two apps without the group each
/// keep to the limit alone and together exceed it.
#[tokio::test]
async fn two_apps_on_one_slack_organisation_share_its_write_limit() {
    let (throttled, posts) = two_apps_on_one_slack_organisation(true).await;
    assert_eq!(
        throttled, 0,
        "one shared bucket stays within the organisation's limit"
    );
    assert_eq!(posts, 20, "each account created once");

    let (throttled, posts) = two_apps_on_one_slack_organisation(false).await;
    assert!(throttled > 0, "two buckets exceed the organisation's limit");
    assert_eq!(posts, 20 + throttled, "each throttled POST sent again");
}

#[tokio::test]
async fn figma_lifecycle_against_its_emulation() {
    lifecycle_against_profile("figma", Profile::Figma, json!({"tenant_id": "t-1"})).await;
}

#[tokio::test]
async fn asana_lifecycle_against_its_emulation() {
    lifecycle_against_profile("asana", Profile::Asana, json!({})).await;
}

/// A dev-target with `args` requiring `vendor-token`, and roster with one app built from
/// `body` (given the target's base URL and auth); returns the app's id too.
async fn app_against(
    args: roster::dev_target::DevTargetArgs,
    body: impl FnOnce(Value) -> Value,
) -> (
    roster::dev_target::DevTarget,
    crate::helpers::TestApp,
    String,
) {
    let target = roster::dev_target::spawn(roster::dev_target::DevTargetArgs {
        token: Some("vendor-token".into()),
        ..args
    })
    .await
    .expect("dev-target");
    let app = spawn_app().await;
    let created = app
        .create_app(&body(json!({
            "base_url": target.base_url(),
            "auth": {"type": "bearer", "token": "vendor-token"},
            "max_attempts": 1,
            "rate_limit": {"per_second": 100, "burst": 100},
        })))
        .await;
    let id = created["id"].as_str().expect("id").to_owned();
    (target, app, id)
}

fn with(mut body: Value, extra: &Value) -> Value {
    crate::helpers::merge(&mut body, extra);
    body
}

fn profile(profile: Profile) -> roster::dev_target::DevTargetArgs {
    roster::dev_target::DevTargetArgs {
        profile,
        ..roster::dev_target::DevTargetArgs::default()
    }
}

/// Figma takes only the email as userName: an app with the plain default mappings (userName
/// from `user_name`) is refused, the connector's mappings send the email.
#[tokio::test]
async fn figma_user_names_must_be_emails_so_the_connector_maps_the_email() {
    let person = json!({"user_name": "ada", "email": "ada@example.com", "given_name": "Ada",
        "family_name": "Lovelace", "display_name": "Ada Lovelace"});
    let (target, app, app_id) = app_against(profile(Profile::Figma), |base| {
        crate::helpers::app_body("plain-figma", base)
    })
    .await;
    app.post_event(&crate::helpers::joiner(
        "f1",
        "F1",
        "2026-11-01T09:00:00Z",
        person.clone(),
    ))
    .await;
    let dead = dead_letters(&app, &app_id).await;
    assert!(
        dead.first()
            .is_some_and(|e| e.contains("400") && e.contains("email")),
        "{dead:?}"
    );
    assert!(target.users_snapshot().is_empty());

    let (target, app, app_id) = app_against(profile(Profile::Figma), |base| {
        from_connector(
            "figma",
            "figma",
            with(base, &json!({"connector_params": {"tenant_id": "t"}})),
        )
    })
    .await;
    app.post_event(&crate::helpers::joiner(
        "f1",
        "F1",
        "2026-11-01T09:00:00Z",
        person,
    ))
    .await;
    let wait = Duration::from_secs(30);
    let users = eventually("the account", wait, || async {
        app.settled(&app_id, wait).await;
        let users = target.users_snapshot();
        (!users.is_empty()).then_some(users)
    })
    .await;
    assert_eq!(users[0]["userName"], "ada@example.com");
}

/// Mappings rendering a work and a home email.
fn two_emails() -> Value {
    json!([
        {"target": "userName", "source": "email"},
        {"target": "name.givenName", "source": "given_name"},
        {"target": "name.familyName", "source": "family_name"},
        {"target": "displayName", "source": "display_name"},
        {"target": "emails[type eq \"work\"].value", "source": "email"},
        {"target": "emails[type eq \"work\"].primary", "value": true},
        {"target": "emails[type eq \"home\"].value", "source": "attributes.personal_email"},
    ])
}

fn aws_params(base: Value) -> Value {
    with(
        base,
        &json!({"connector_params": {"region": "eu-west-1", "tenant_id": "t"}}),
    )
}

fn aws_person() -> Value {
    json!({"email": "a@example.com", "given_name": "A", "family_name": "T",
        "display_name": "A T", "attributes": {"personal_email": "a@home.example.org"}})
}

/// AWS takes one value of a multi-valued attribute: without the connector's `single_valued`
/// (RFC 7643's reading), mappings rendering two emails have every create refused by the
/// target; with it such mappings are refused when the app is written, and the connector's own
/// mappings render one (primary) email.
#[tokio::test]
async fn aws_identity_center_takes_one_email_so_the_connector_refuses_mappings_rendering_two() {
    // The connector's settings but for `single_valued`, as RFC 7643 has it.
    let (target, app, app_id) = app_against(profile(Profile::AwsIdentityCenter), |base| {
        from_connector(
            "plain-aws",
            "aws-identity-center",
            aws_params(with(
                base,
                &json!({"mappings": two_emails(), "quirks": {"single_valued": []}}),
            )),
        )
    })
    .await;
    app.post_event(&crate::helpers::joiner(
        "a1",
        "A1",
        "2026-11-01T09:00:00Z",
        aws_person(),
    ))
    .await;
    let dead = dead_letters(&app, &app_id).await;
    assert!(
        dead.first()
            .is_some_and(|e| e.contains("400") && e.contains("emails takes one value only")),
        "{dead:?}"
    );
    assert!(target.users_snapshot().is_empty());

    let (target, app, app_id) = app_against(profile(Profile::AwsIdentityCenter), |base| {
        from_connector("aws", "aws-identity-center", aws_params(base))
    })
    .await;
    let detail = app
        .post(
            "/api/v1/apps",
            &from_connector(
                "aws-two-emails",
                "aws-identity-center",
                aws_params(json!({"base_url": target.base_url(), "mappings": two_emails()})),
            ),
        )
        .await
        .problem(422);
    assert!(detail.contains("one `emails` value"), "{detail}");
    app.post_event(&crate::helpers::joiner(
        "a1",
        "A1",
        "2026-11-01T09:00:00Z",
        aws_person(),
    ))
    .await;
    let wait = Duration::from_secs(30);
    let users = eventually("the account", wait, || async {
        app.settled(&app_id, wait).await;
        let users = target.users_snapshot();
        (!users.is_empty()).then_some(users)
    })
    .await;
    assert_eq!(
        users[0]["emails"],
        json!([{"type": "work", "value": "a@example.com", "primary": true}])
    );
}

/// AWS requires givenName, familyName, userName and displayName on create: without the
/// connector's `required_on_create` (RFC 7643 requires only userName) the target refuses a
/// create without one; with it an app that could never render one is refused, and no create
/// is sent for a person who has none.
#[tokio::test]
async fn aws_identity_center_requires_names_on_create_so_the_connector_never_sends_a_create_without()
 {
    let mappings = json!([
        {"target": "userName", "source": "email"},
        {"target": "name.givenName", "source": "given_name"},
        {"target": "name.familyName", "source": "family_name"},
        {"target": "emails[type eq \"work\"].value", "source": "email"},
        {"target": "emails[type eq \"work\"].primary", "value": true},
    ]);
    // The connector's settings but for `required_on_create`, as RFC 7643 has it.
    let (target, app, app_id) = app_against(profile(Profile::AwsIdentityCenter), |base| {
        from_connector(
            "plain-aws",
            "aws-identity-center",
            aws_params(with(
                base,
                &json!({"mappings": mappings, "quirks": {"required_on_create": []}}),
            )),
        )
    })
    .await;
    app.post_event(&crate::helpers::joiner(
        "a1",
        "A1",
        "2026-11-01T09:00:00Z",
        aws_person(),
    ))
    .await;
    let dead = dead_letters(&app, &app_id).await;
    assert!(
        dead.first()
            .is_some_and(|e| e.contains("400") && e.contains("displayName is required")),
        "{dead:?}"
    );
    assert_eq!(
        target.stats()["requests"]["POST"],
        1,
        "the target refused it"
    );

    let (target, app, app_id) = app_against(profile(Profile::AwsIdentityCenter), |base| {
        from_connector("aws", "aws-identity-center", aws_params(base))
    })
    .await;
    let detail = app
        .post(
            "/api/v1/apps",
            &from_connector(
                "aws-no-display-name",
                "aws-identity-center",
                aws_params(json!({"base_url": target.base_url(), "mappings": mappings})),
            ),
        )
        .await
        .problem(422);
    assert!(
        detail.contains("requires `displayName` on create"),
        "{detail}"
    );
    // A person without a given name: the connector's mappings render no name.givenName.
    let mut nameless = aws_person();
    nameless.as_object_mut().map(|p| p.remove("given_name"));
    app.post_event(&crate::helpers::joiner(
        "a1",
        "A1",
        "2026-11-01T09:00:00Z",
        nameless,
    ))
    .await;
    let dead = dead_letters(&app, &app_id).await;
    assert!(
        dead.first()
            .is_some_and(|e| e.contains("requires `name.givenName` on create")),
        "{dead:?}"
    );
    assert_eq!(target.stats()["requests"]["POST"], Value::Null, "no POST");
}

/// AWS refuses replacing or removing all of a group's members in one request; roster never
/// sends one (it removes members by value), so a pushed group emptied in roster is emptied on
/// AWS and kept.
#[tokio::test]
async fn emptying_a_pushed_group_on_aws_removes_members_by_value_and_keeps_the_group() {
    let (target, app, app_id) = app_against(profile(Profile::AwsIdentityCenter), |base| {
        from_connector(
            "aws",
            "aws-identity-center",
            aws_params(with(base, &json!({"group_push": ["aws-empty"]}))),
        )
    })
    .await;
    let group = app
        .post(
            "/api/v1/groups",
            &json!({"name": "aws-empty", "members": ["A0", "A1"]}),
        )
        .await
        .expect(201);
    for n in 0..2 {
        let mut person = aws_person();
        person["email"] = json!(format!("a{n}@example.com"));
        app.post_event(&crate::helpers::joiner(
            &format!("e{n}"),
            &format!("A{n}"),
            "2026-11-01T09:00:00Z",
            person,
        ))
        .await;
    }
    let wait = Duration::from_secs(30);
    let members = || {
        target
            .groups_snapshot()
            .first()
            .and_then(|g| g["members"].as_array().map(Vec::len))
    };
    eventually("the group pushed with both members", wait, || async {
        app.settled(&app_id, wait).await;
        (members() == Some(2)).then_some(())
    })
    .await;
    let gid = target.groups_snapshot()[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    // What roster's client never sends is refused.
    let hand = crate::helpers::scim_client(&target.base_url(), "vendor-token");
    for refused in [
        roster::scim::PatchRequest::new().replace("members", json!([])),
        roster::scim::PatchRequest::new().remove("members"),
    ] {
        let err = hand
            .groups()
            .patch(&gid, &refused)
            .await
            .expect_err("replace-all or remove-all is refused");
        assert_eq!(err.status(), Some(400), "{err}");
    }
    assert_eq!(members(), Some(2));

    let group_id = group["id"].as_str().expect("id");
    app.patch(
        &format!("/api/v1/groups/{group_id}"),
        &json!({"members": []}),
    )
    .await
    .expect(200);
    eventually("the group emptied", wait, || async {
        app.settled(&app_id, wait).await;
        (members() == Some(0)).then_some(())
    })
    .await;
    assert_eq!(target.groups_snapshot().len(), 1, "the group is kept");
    let dead = dead_errors(&app, &app_id).await;
    assert!(dead.is_empty(), "{dead:?}");
}

/// Asana leaves guests out of GET /Users. A guest roster provisioned is read by its id and
/// found in sync; a guest account roster has no link to reads as missing, and with the
/// connector that is only reported: read as complete (RFC), the listing would have roster
/// create an account that exists.
#[tokio::test]
async fn asana_guests_left_out_of_listings_are_never_acted_on() {
    for complete in [false, true] {
        let args = roster::dev_target::DevTargetArgs {
            guest_domains: vec!["guests.example.com".into()],
            ..profile(Profile::Asana)
        };
        let target = roster::dev_target::spawn(roster::dev_target::DevTargetArgs {
            token: Some("vendor-token".into()),
            ..args
        })
        .await
        .expect("dev-target");
        let app = spawn_app().await;
        // A guest account made in Asana before roster knew the person: no link.
        target
            .insert(
                roster::dev_target::Kind::User,
                json!({"schemas": [roster::scim::schemas::USER],
                       "userName": "old@guests.example.com", "active": true}),
            )
            .expect("guest account");
        let person = |email: &str| {
            json!({"email": email, "user_name": email,
            "given_name": "G", "family_name": "T", "display_name": "G T"})
        };
        app.post_event(&crate::helpers::joiner(
            "old",
            "OLD",
            "2026-11-01T09:00:00Z",
            person("old@guests.example.com"),
        ))
        .await;
        let mut quirks = json!({});
        if complete {
            quirks = json!({"user_listings_complete": true});
        }
        let created = app
            .create_app(&from_connector(
                "asana",
                "asana",
                json!({"base_url": target.base_url(),
                       "auth": {"type": "bearer", "token": "vendor-token"},
                       "scope": {"email_domains": ["example.com", "guests.example.com"]},
                       "reconcile": {"interval_minutes": 0, "mode": "report"},
                       "quirks": quirks}),
            ))
            .await;
        let app_id = created["id"].as_str().expect("id").to_owned();
        for (n, email) in ["m@example.com", "g@guests.example.com"].iter().enumerate() {
            app.post_event(&crate::helpers::joiner(
                &format!("j{n}"),
                &format!("J{n}"),
                "2026-11-01T09:00:00Z",
                person(email),
            ))
            .await;
        }
        let wait = Duration::from_secs(30);
        eventually("both provisioned", wait, || async {
            app.settled(&app_id, wait).await;
            (target.users_snapshot().len() == 3).then_some(())
        })
        .await;
        let report = app
            .reconcile_run(&app_id, json!({"dry_run": true, "mode": "fix"}))
            .await;
        assert_eq!(report["counts"]["in_sync"], 2, "{complete}: {report}");
        assert_eq!(report["counts"]["missing"], 1, "{complete}: {report}");
        let old = report["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["user_name"] == "old@guests.example.com")
            .cloned()
            .unwrap_or_default();
        let expected = if complete { "create" } else { "none" };
        assert_eq!(old["action"], expected, "{complete}: {report}");
        if !complete {
            let before = target.stats()["requests"]["POST"].clone();
            let fixed = app.reconcile_run(&app_id, json!({"mode": "fix"})).await;
            app.settled(&app_id, wait).await;
            assert_eq!(fixed["writes"], 0, "{fixed}");
            assert_eq!(target.stats()["requests"]["POST"], before, "no create");
            assert_eq!(target.users_snapshot().len(), 3);
        }
    }
}
