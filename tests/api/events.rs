use serde_json::{Value, json};

use crate::helpers::{TestApp, app_body, event, joiner, spawn_app, spawn_app_with, spawn_planner};

async fn pending_jobs(app: &TestApp) -> Vec<Value> {
    app.rows("SELECT app_id, resource_kind, resource_id, lane, hr_event_id FROM job WHERE state = 'pending' ORDER BY id")
        .await
}

#[tokio::test]
async fn a_joiner_creates_the_identity_and_queues_a_sync_for_each_app_in_scope() {
    let app = spawn_planner().await;
    let a = app.create_app(&app_body("a", json!({}))).await;
    let b = app
        .create_app(&app_body(
            "b",
            json!({"scope": {"email_domains": ["other.org"]}}),
        ))
        .await;
    let answer = app
        .post_event(&joiner(
            "evt-1",
            "E100",
            "2026-11-01T09:00:00Z",
            json!({"given_name": "Ada", "family_name": "Lovelace", "department": "Board",
                   "attributes": {"cost_center": "42"}}),
        ))
        .await;
    assert_eq!(answer, json!({"event_id": "evt-1", "result": "applied"}));
    let person = app.get("/api/v1/identities/E100").await.expect(200);
    assert_eq!(person["status"], "active");
    assert_eq!(person["given_name"], "Ada");
    assert_eq!(person["attributes"], json!({"cost_center": "42"}));
    assert_eq!(person["version"], 1);
    let by_id = app
        .get(&format!(
            "/api/v1/identities/{}",
            person["id"].as_str().unwrap_or_default()
        ))
        .await
        .expect(200);
    assert_eq!(by_id["employee_id"], "E100");

    let jobs = pending_jobs(&app).await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0]["app_id"], a["id"]);
    assert_ne!(jobs[0]["app_id"], b["id"]);
    assert_eq!(jobs[0]["resource_id"], person["id"]);
    assert_eq!(jobs[0]["lane"], "normal");
    assert_eq!(jobs[0]["hr_event_id"], "evt-1");
}

#[tokio::test]
async fn an_external_user_is_never_queued_for_an_app_with_managed_domains() {
    let app = spawn_planner().await;
    app.create_app(&app_body("a", json!({}))).await;
    app.post_event(&joiner(
        "x1",
        "X1",
        "2026-11-01T09:00:00Z",
        json!({"email": "guest@example.com.evil.io"}),
    ))
    .await;
    app.post_event(&joiner(
        "x2",
        "X2",
        "2026-11-01T09:00:00Z",
        json!({"email": "partner@notexample.com"}),
    ))
    .await;
    assert!(pending_jobs(&app).await.is_empty());
}

#[tokio::test]
async fn a_repeated_event_id_is_a_duplicate_and_changes_nothing() {
    let app = spawn_app().await;
    let first = joiner(
        "dup-1",
        "E1",
        "2026-11-01T09:00:00Z",
        json!({"title": "Engineer"}),
    );
    app.post_event(&first).await;
    // (The same id with other content is a conflict: see
    // `the_same_event_id_with_another_payload_is_a_conflict`.)
    let answer = app.post_event(&first).await;
    assert_eq!(answer["result"], "duplicate");
    let person = app.get("/api/v1/identities/E1").await.expect(200);
    assert_eq!(person["title"], "Engineer");
    assert_eq!(person["version"], 1);
    assert_eq!(app.count("hr_event").await, 1);
}

#[tokio::test]
async fn a_late_joiner_never_reactivates_a_leaver() {
    let app = spawn_app().await;
    app.create_app(&app_body("a", json!({}))).await;
    app.post_event(&joiner("j1", "E1", "2026-11-01T09:00:00Z", json!({})))
        .await;
    let left = app
        .post_event(&event(
            "l1",
            "leaver",
            "E1",
            "2026-11-01T12:00:00Z",
            json!({}),
        ))
        .await;
    assert_eq!(left["result"], "applied");
    // A re-sent joiner from before the leave arrives late.
    let late = app
        .post_event(&joiner(
            "j0",
            "E1",
            "2026-11-01T10:00:00Z",
            json!({"title": "Ghost"}),
        ))
        .await;
    assert_eq!(late["result"], "stale");
    assert!(late["detail"].as_str().is_some_and(|d| d.contains("older")));
    let person = app.get("/api/v1/identities/E1").await.expect(200);
    assert_eq!(person["status"], "terminated");
    // No newer event set a title, so the late joiner's still fills it: data, not access.
    assert_eq!(person["title"], "Ghost");
    let stored = app
        .rows("SELECT result FROM hr_event WHERE event_id = 'j0'")
        .await;
    assert_eq!(stored[0]["result"], "stale", "a stale event is recorded");
    // A real rehire, after the leave, does re-activate.
    let rehire = app
        .post_event(&joiner("j2", "E1", "2026-11-02T09:00:00Z", json!({})))
        .await;
    assert_eq!(rehire["result"], "applied");
    assert_eq!(
        app.get("/api/v1/identities/E1").await.expect(200)["status"],
        "active"
    );
}

#[tokio::test]
async fn a_leaver_goes_on_the_deprovision_lane_and_coalesces_with_the_pending_sync() {
    let app = spawn_planner().await;
    app.create_app(&app_body("a", json!({}))).await;
    app.post_event(&joiner("j1", "E1", "2026-11-01T09:00:00Z", json!({})))
        .await;
    app.post_event(&event(
        "m1",
        "mover",
        "E1",
        "2026-11-01T10:00:00Z",
        json!({"title": "Lead"}),
    ))
    .await;
    app.post_event(&event(
        "l1",
        "leaver",
        "E1",
        "2026-11-01T11:00:00Z",
        json!({}),
    ))
    .await;
    let jobs = pending_jobs(&app).await;
    assert_eq!(
        jobs.len(),
        1,
        "three changes coalesce into one job: {jobs:?}"
    );
    assert_eq!(jobs[0]["lane"], "deprovision");
    assert_eq!(jobs[0]["hr_event_id"], "l1");
}

/// The same three changes in one batch: the events are applied together and their jobs
/// written at the end in one statement, so the coalescing must still come out as if each had
/// been enqueued alone (PostgreSQL refuses one upsert touching a row twice).
#[tokio::test]
async fn a_batch_of_changes_for_one_person_coalesces_into_one_job() {
    let app = spawn_planner().await;
    app.create_app(&app_body("a", json!({}))).await;
    let batch = json!({"events": [
        joiner("j1", "E1", "2026-11-01T09:00:00Z", json!({})),
        joiner("j2", "E2", "2026-11-01T09:00:00Z", json!({})),
        event("m1", "mover", "E1", "2026-11-01T10:00:00Z", json!({"title": "Lead"})),
        event("l1", "leaver", "E1", "2026-11-01T11:00:00Z", json!({})),
    ]});
    let answer = app.post("/api/v1/events:batch", &batch).await.expect(202);
    let results: Vec<&str> = answer["results"]
        .as_array()
        .map(|r| r.iter().filter_map(|x| x["result"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(results, ["applied"; 4]);
    let jobs = pending_jobs(&app).await;
    let mut lanes: Vec<(&str, &str)> = jobs
        .iter()
        .filter_map(|j| Some((j["lane"].as_str()?, j["hr_event_id"].as_str()?)))
        .collect();
    lanes.sort_unstable();
    assert_eq!(
        lanes,
        [("deprovision", "l1"), ("normal", "j2")],
        "one job per person, E1's on the deprovision lane: {jobs:?}"
    );
    let person = app.get("/api/v1/identities/E1").await.expect(200);
    assert_eq!(
        (person["status"].as_str(), person["title"].as_str()),
        (Some("terminated"), Some("Lead"))
    );
}

#[tokio::test]
async fn a_mover_changes_only_the_fields_it_carries_and_null_clears() {
    let app = spawn_app().await;
    app.post_event(&joiner(
        "j1",
        "E1",
        "2026-11-01T09:00:00Z",
        json!({"title": "Engineer", "department": "R&D"}),
    ))
    .await;
    app.post_event(&event(
        "m1",
        "mover",
        "E1",
        "2026-11-01T10:00:00Z",
        json!({"department": "Sales", "title": null}),
    ))
    .await;
    let person = app.get("/api/v1/identities/E1").await.expect(200);
    assert_eq!(person["department"], "Sales");
    assert_eq!(person["title"], Value::Null);
    assert_eq!(person["email"], "e1@example.com", "absent fields are kept");
    assert_eq!(person["version"], 2);
}

#[tokio::test]
async fn a_leaver_for_an_unknown_person_is_recorded_as_terminated() {
    let app = spawn_planner().await;
    app.create_app(&app_body("a", json!({}))).await;
    let answer = app
        .post_event(&event(
            "l-unknown",
            "leaver",
            "NOBODY",
            "2026-11-01T09:00:00Z",
            json!({}),
        ))
        .await;
    assert_eq!(answer["result"], "applied");
    assert!(
        answer["detail"]
            .as_str()
            .is_some_and(|d| d.contains("unknown employee") && d.contains("terminated")),
        "{answer}"
    );
    let person = app.get("/api/v1/identities/NOBODY").await.expect(200);
    assert_eq!(person["status"], "terminated");
    assert_eq!(app.count("hr_event").await, 1);
    assert!(
        pending_jobs(&app).await.is_empty(),
        "nothing to deprovision"
    );

    // A mover for someone unknown, with nothing to create them from, is still refused.
    let answer = app
        .post_event(&event(
            "m-unknown",
            "mover",
            "NOBODY2",
            "2026-11-01T09:00:00Z",
            json!({"title": "x"}),
        ))
        .await;
    assert_eq!(answer["result"], "rejected");
    app.get("/api/v1/identities/NOBODY2").await.problem(404);
}

#[tokio::test]
async fn a_batch_applies_in_order_in_one_transaction() {
    let app = spawn_app().await;
    let batch = json!({"events": [
        joiner("b1", "E1", "2026-11-01T09:00:00Z", json!({})),
        event("b2", "mover", "E1", "2026-11-01T10:00:00Z", json!({"title": "Lead"})),
        event("b3", "leaver", "E1", "2026-11-01T11:00:00Z", json!({})),
        joiner("b0", "E1", "2026-11-01T08:00:00Z", json!({})),
        joiner("b1", "E1", "2026-11-01T09:00:00Z", json!({})),
    ]});
    let answer = app.post("/api/v1/events:batch", &batch).await.expect(202);
    let results: Vec<&str> = answer["results"]
        .as_array()
        .map(|r| r.iter().filter_map(|x| x["result"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        results,
        ["applied", "applied", "applied", "stale", "duplicate"]
    );
    let person = app.get("/api/v1/identities/E1").await.expect(200);
    assert_eq!(
        (person["status"].as_str(), person["title"].as_str()),
        (Some("terminated"), Some("Lead"))
    );

    // One invalid event refuses the whole batch: nothing of it is applied.
    let bad = json!({"events": [
        joiner("c1", "E2", "2026-11-01T09:00:00Z", json!({})),
        joiner("c2", "E3", "2026-11-01T09:00:00Z", json!({"email": "not-an-address"})),
    ]});
    let detail = app.post("/api/v1/events:batch", &bad).await.problem(422);
    assert!(detail.starts_with("events[1].employee.email"), "{detail}");
    app.get("/api/v1/identities/E2").await.problem(404);

    let too_many: Vec<Value> = (0..1001)
        .map(|i| {
            joiner(
                &format!("t{i}"),
                &format!("T{i}"),
                "2026-11-01T09:00:00Z",
                json!({}),
            )
        })
        .collect();
    let detail = app
        .post("/api/v1/events:batch", &json!({"events": too_many}))
        .await
        .problem(422);
    assert!(detail.contains("1000"), "{detail}");
}

#[tokio::test]
async fn an_accepted_event_survives_a_restart() {
    let app = spawn_app().await;
    app.post_event(&joiner("d1", "E1", "2026-11-01T09:00:00Z", json!({})))
        .await;
    let app = app.restart().await;
    let person = app.get("/api/v1/identities/E1").await.expect(200);
    assert_eq!(person["status"], "active");
    let again = app
        .post_event(&joiner("d1", "E1", "2026-11-01T09:00:00Z", json!({})))
        .await;
    assert_eq!(
        again["result"], "duplicate",
        "the idempotency record is durable too"
    );
}

#[tokio::test]
async fn events_in_the_far_future_are_refused() {
    let app = spawn_app().await;
    let detail = app
        .post(
            "/api/v1/events",
            &joiner("f1", "E1", "2999-01-01T00:00:00Z", json!({})),
        )
        .await
        .problem(422);
    assert!(detail.starts_with("occurred_at"), "{detail}");
}

mod signature {
    use super::*;
    use roster::crypto::sign_webhook;
    use secrecy::SecretString;

    const SECRET: &str = "whsec-test";

    async fn post_signed(
        app: &TestApp,
        body: &[u8],
        header: Option<String>,
    ) -> crate::helpers::Answer {
        let mut req = app
            .http
            .post(format!("{}/api/v1/events", app.base))
            .bearer_auth(crate::helpers::ADMIN)
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(h) = header {
            req = req.header("x-roster-signature", h);
        }
        TestApp::answer(req.send().await.expect("send")).await
    }

    #[tokio::test]
    async fn with_a_webhook_secret_only_correctly_signed_fresh_events_are_accepted() {
        let app = spawn_app_with(|c| c.hr_webhook_secret = Some(SecretString::from(SECRET))).await;
        let secret = SecretString::from(SECRET);
        let body = serde_json::to_vec(&joiner("s1", "E1", "2026-11-01T09:00:00Z", json!({})))
            .unwrap_or_default();
        let now = chrono::Utc::now().timestamp();

        post_signed(&app, &body, None).await.problem(401);
        let forged = format!(
            "t={now},v1={}",
            sign_webhook(&SecretString::from("wrong"), now, &body)
        );
        post_signed(&app, &body, Some(forged)).await.problem(401);
        let old = now - 301;
        let expired = format!("t={old},v1={}", sign_webhook(&secret, old, &body));
        let detail = post_signed(&app, &body, Some(expired)).await.problem(401);
        assert!(detail.contains("window"), "{detail}");
        let tampered_sig = format!("t={now},v1={}", sign_webhook(&secret, now, &body));
        let mut tampered = body.clone();
        tampered.extend_from_slice(b" ");
        post_signed(&app, &tampered, Some(tampered_sig))
            .await
            .problem(401);
        assert_eq!(app.count("hr_event").await, 0);

        let good = format!("t={now},v1={}", sign_webhook(&secret, now, &body));
        let answer = post_signed(&app, &body, Some(good.clone()))
            .await
            .expect(202);
        assert_eq!(answer["result"], "applied");
        // A replay of the same signed request is answered but not re-applied.
        let replay = post_signed(&app, &body, Some(good)).await.expect(202);
        assert_eq!(replay["result"], "duplicate");
    }
}

/// Concurrent requests share commit groups (one transaction, a savepoint each): every request
/// still gets its own answer, an event sent twice at once is applied once, and each request
/// leaves its own audit row.
#[tokio::test]
async fn concurrent_requests_in_one_commit_group_are_answered_each_and_applied_once() {
    let app = spawn_planner().await;
    let audit_before = app.count("audit").await;
    let requests: Vec<Value> = (0..24)
        .flat_map(|i| {
            let e = joiner(
                &format!("grp-{i}"),
                &format!("G{i}"),
                "2026-11-01T09:00:00Z",
                json!({}),
            );
            [e.clone(), e]
        })
        .collect();
    let answers = futures::future::join_all(requests.iter().map(|e| app.post_event(e))).await;
    for i in 0..24 {
        let id = format!("grp-{i}");
        let mut results: Vec<&str> = answers
            .iter()
            .filter(|a| a["event_id"] == id.as_str())
            .map(|a| a["result"].as_str().unwrap_or("?"))
            .collect();
        results.sort_unstable();
        assert_eq!(results, ["applied", "duplicate"], "answers for {id}");
    }
    assert_eq!(app.count("hr_event").await, 24);
    assert_eq!(app.count("identity").await, 24);
    assert_eq!(app.count("audit").await - audit_before, 48);
}

/// `employee_id` is 1 to 64 characters, counted as characters (as documented), not bytes.
#[tokio::test]
async fn an_employee_id_is_limited_in_characters_not_bytes() {
    let app = spawn_app().await;
    let sixty_four = "é".repeat(64);
    let answer = app
        .post_event(&event(
            "wide-1",
            "joiner",
            &sixty_four,
            "2026-11-01T09:00:00Z",
            json!({"user_name": "wide", "email": "wide@example.com"}),
        ))
        .await;
    assert_eq!(answer["result"], "applied");
    let detail = app
        .post(
            "/api/v1/events",
            &event(
                "wide-2",
                "joiner",
                &"é".repeat(65),
                "2026-11-01T09:00:00Z",
                json!({"user_name": "wider", "email": "wider@example.com"}),
            ),
        )
        .await
        .problem(422);
    assert!(detail.starts_with("employee.employee_id"), "{detail}");
    // Static group members are employee ids too.
    app.post(
        "/api/v1/groups",
        &json!({"name": "wide", "members": [sixty_four]}),
    )
    .await
    .expect(201);
}

/// An `employee_id` equal to another identity's roster id cannot make look-ups by "roster id
/// or employee id" ambiguous: the roster id wins, in every such look-up.
#[tokio::test]
async fn an_employee_id_equal_to_another_identitys_id_never_takes_its_place() {
    let app = spawn_app().await;
    app.post_event(&joiner("v1", "VICTIM", "2026-11-01T09:00:00Z", json!({})))
        .await;
    let victim = app.get("/api/v1/identities/VICTIM").await.expect(200);
    let victim_id = victim["id"].as_str().unwrap_or_default().to_owned();
    app.post_event(&joiner(
        "i1",
        &victim_id,
        "2026-11-01T09:00:00Z",
        json!({"user_name": "impostor", "email": "impostor@example.com"}),
    ))
    .await;
    let found = app
        .get(&format!("/api/v1/identities/{victim_id}"))
        .await
        .expect(200);
    assert_eq!(found["employee_id"], "VICTIM");
    assert_eq!(found["id"], victim_id.as_str());

    // The provisioning log filtered by identity: the victim's rows, not the impostor's.
    let impostor = app
        .rows(&format!(
            "SELECT id FROM identity WHERE employee_id = '{victim_id}'"
        ))
        .await;
    let impostor_id = impostor[0]["id"].as_str().unwrap_or_default().to_owned();
    for (resource, path) in [(&victim_id, "/victim"), (&impostor_id, "/impostor")] {
        app.rows(&format!(
            "INSERT INTO operation (app_id, resource_kind, resource_id, operation, method, path, duration_ms, attempt, outcome, created_at) \
             VALUES ('app', 'user', '{resource}', 'create', 'POST', '{path}', 1, 1, 'ok', '2026-11-01T09:00:00Z')"
        ))
        .await;
    }
    let log = app
        .get(&format!("/api/v1/operations?identity={victim_id}"))
        .await
        .expect(200);
    let paths: Vec<&str> = log["items"]
        .as_array()
        .map(|items| items.iter().filter_map(|o| o["path"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(paths, ["/victim"], "{log}");
}

/// Posts `events` one request each, or all in one batch; each event's answer, in order.
async fn send(app: &TestApp, events: &[Value], batch: bool) -> Vec<Value> {
    if batch {
        let answer = app
            .post("/api/v1/events:batch", &json!({ "events": events }))
            .await
            .expect(202);
        return answer["results"].as_array().cloned().unwrap_or_default();
    }
    let mut answers = Vec::new();
    for e in events {
        answers.push(app.post_event(e).await);
    }
    answers
}

fn results(answers: &[Value]) -> Vec<&str> {
    answers
        .iter()
        .map(|a| a["result"].as_str().unwrap_or("?"))
        .collect()
}

/// HR feeds with day granularity send a leaver and a joiner with the same `occurred_at`: a
/// tie never grants access, whichever arrives first.
#[tokio::test]
async fn at_equal_times_the_leaver_wins() {
    let app = spawn_app().await;
    for (mode, batch) in [("s", false), ("b", true)] {
        let who = format!("TIE-{mode}");
        let day = "2026-11-02T00:00:00Z";
        let answers = send(
            &app,
            &[
                joiner(
                    &format!("{mode}-j1"),
                    &who,
                    "2026-11-01T00:00:00Z",
                    json!({}),
                ),
                event(&format!("{mode}-l1"), "leaver", &who, day, json!({})),
                joiner(&format!("{mode}-j2"), &who, day, json!({"title": "Again"})),
            ],
            batch,
        )
        .await;
        assert_eq!(
            results(&answers),
            ["applied", "applied", "stale"],
            "{answers:?}"
        );
        let person = app
            .get(&format!("/api/v1/identities/{who}"))
            .await
            .expect(200);
        assert_eq!(person["status"], "terminated", "{mode}: {person}");

        // The other order: the joiner first, then the leaver of the same day.
        let who = format!("TIE2-{mode}");
        let answers = send(
            &app,
            &[
                joiner(&format!("{mode}-j3"), &who, day, json!({})),
                event(&format!("{mode}-l3"), "leaver", &who, day, json!({})),
            ],
            batch,
        )
        .await;
        assert_eq!(results(&answers), ["applied", "applied"], "{answers:?}");
        let person = app
            .get(&format!("/api/v1/identities/{who}"))
            .await
            .expect(200);
        assert_eq!(person["status"], "terminated", "{mode}: {person}");
    }
}

/// A leaver that arrives before its joiner is recorded (a terminated identity), so the older
/// joiner arriving later is stale, and only a newer joiner activates the person.
#[tokio::test]
async fn a_leaver_before_its_joiner_is_recorded_and_the_older_joiner_is_stale() {
    let app = spawn_app().await;
    for (mode, batch) in [("s", false), ("b", true)] {
        let who = format!("EARLY-{mode}");
        let leaver = event(
            &format!("{mode}-l1"),
            "leaver",
            &who,
            "2026-11-01T12:00:00Z",
            json!({}),
        );
        let answers = send(
            &app,
            &[
                leaver.clone(),
                joiner(
                    &format!("{mode}-j1"),
                    &who,
                    "2026-11-01T09:00:00Z",
                    json!({"given_name": "Ada"}),
                ),
            ],
            batch,
        )
        .await;
        assert_eq!(results(&answers), ["applied", "stale"], "{answers:?}");
        let person = app
            .get(&format!("/api/v1/identities/{who}"))
            .await
            .expect(200);
        assert_eq!(person["status"], "terminated", "{mode}: {person}");
        // The joiner's data still fills what no newer event set; it grants nothing.
        assert_eq!(person["given_name"], "Ada", "{mode}: {person}");
        assert_eq!(app.post_event(&leaver).await["result"], "duplicate");

        let answers = send(
            &app,
            &[joiner(
                &format!("{mode}-j2"),
                &who,
                "2026-11-02T09:00:00Z",
                json!({}),
            )],
            batch,
        )
        .await;
        assert_eq!(results(&answers), ["applied"], "{answers:?}");
        let person = app
            .get(&format!("/api/v1/identities/{who}"))
            .await
            .expect(200);
        assert_eq!(
            person["status"], "active",
            "{mode}: a newer joiner: {person}"
        );
    }
}

/// A mover that arrives before its joiner: the joiner still fills the fields the mover did not
/// set, and the mover's newer fields stay.
#[tokio::test]
async fn an_older_event_fills_the_fields_no_newer_event_set() {
    let app = spawn_app().await;
    for (mode, batch) in [("s", false), ("b", true)] {
        let who = format!("MOVE-{mode}");
        let answers = send(
            &app,
            &[
                event(
                    &format!("{mode}-m1"),
                    "mover",
                    &who,
                    "2026-11-01T10:00:00Z",
                    json!({"email": format!("{}@example.com", who.to_lowercase()), "department": "Sales", "title": null}),
                ),
                joiner(
                    &format!("{mode}-j1"),
                    &who,
                    "2026-11-01T09:00:00Z",
                    json!({"given_name": "Ada", "family_name": "Lovelace", "department": "Board", "title": "Chair"}),
                ),
                // Older than both: sets nothing anyone newer set, so it changes nothing.
                event(
                    &format!("{mode}-m0"),
                    "mover",
                    &who,
                    "2026-11-01T08:00:00Z",
                    json!({"department": "Old", "given_name": "Old"}),
                ),
            ],
            batch,
        )
        .await;
        assert_eq!(
            results(&answers),
            ["applied", "applied", "stale"],
            "{answers:?}"
        );
        let person = app
            .get(&format!("/api/v1/identities/{who}"))
            .await
            .expect(200);
        assert_eq!(person["status"], "active", "{mode}: {person}");
        assert_eq!(
            person["department"], "Sales",
            "{mode}: the mover's newer value stays"
        );
        assert_eq!(
            person["title"],
            Value::Null,
            "{mode}: the mover's newer clear stays"
        );
        assert_eq!(
            person["given_name"], "Ada",
            "{mode}: the joiner fills what it alone set"
        );
        assert_eq!(person["family_name"], "Lovelace", "{mode}");
        assert_eq!(person["user_name"], who.to_lowercase(), "{mode}");
        assert_eq!(
            person["version"], 2,
            "{mode}: the stale mover wrote nothing"
        );
    }
}

/// A repeated `event_id` with the same payload is a duplicate; with another payload it is a
/// conflict (409), in a single request and in a batch, and nothing of that request is applied.
#[tokio::test]
async fn the_same_event_id_with_another_payload_is_a_conflict() {
    let app = spawn_app().await;
    let first = joiner(
        "c-1",
        "C1",
        "2026-11-01T09:00:00Z",
        json!({"title": "Engineer"}),
    );
    app.post_event(&first).await;
    assert_eq!(app.post_event(&first).await["result"], "duplicate");
    // The same content spelled differently is still the same payload.
    let mut respelled = first.clone();
    respelled["occurred_at"] = json!("2026-11-01T10:00:00+01:00");
    assert_eq!(app.post_event(&respelled).await["result"], "duplicate");

    let mut other = first.clone();
    other["employee"]["title"] = json!("CEO");
    let detail = app.post("/api/v1/events", &other).await.problem(409);
    assert!(
        detail.contains("c-1") && detail.contains("employee.title"),
        "{detail}"
    );

    let batch = json!({"events": [
        joiner("c-2", "C2", "2026-11-01T09:00:00Z", json!({})),
        other,
    ]});
    let detail = app.post("/api/v1/events:batch", &batch).await.problem(409);
    assert!(detail.contains("c-1"), "{detail}");
    // Twice in one batch, differently.
    let batch = json!({"events": [
        joiner("c-3", "C3", "2026-11-01T09:00:00Z", json!({})),
        joiner("c-3", "C3", "2026-11-01T09:00:00Z", json!({"title": "Other"})),
    ]});
    let detail = app.post("/api/v1/events:batch", &batch).await.problem(409);
    assert!(detail.contains("c-3"), "{detail}");

    // Events stored before payload hashes were kept are compared by their stored payload.
    app.rows("UPDATE hr_event SET payload_hash = NULL").await;
    assert_eq!(app.post_event(&first).await["result"], "duplicate");
    let mut other = first.clone();
    other["type"] = json!("mover");
    let detail = app.post("/api/v1/events", &other).await.problem(409);
    assert!(
        detail.contains("c-1") && detail.contains("type"),
        "{detail}"
    );

    app.get("/api/v1/identities/C2").await.problem(404);
    app.get("/api/v1/identities/C3").await.problem(404);
    let person = app.get("/api/v1/identities/C1").await.expect(200);
    assert_eq!(
        (person["title"].as_str(), person["version"].as_i64()),
        (Some("Engineer"), Some(1))
    );
    assert_eq!(app.count("hr_event").await, 1);
}
