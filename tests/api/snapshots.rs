//! HR snapshots: `POST /hr/snapshots` in its three formats, the diff applied through ingest,
//! the bad-input list, the leaver guard, staleness, and sources kept apart.
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{ADMIN, Answer, TestApp, joiner, spawn_app_with};

const CSV: &str = "text/csv";

async fn post(app: &TestApp, query: &str, content_type: &str, body: &[u8]) -> Answer {
    app.raw(
        "POST",
        &format!("/api/v1/hr/snapshots{query}"),
        Some(ADMIN),
        content_type,
        body.to_vec(),
    )
    .await
}

/// Waits for the snapshot to reach a state other than received, diffing or applying.
async fn settled(app: &TestApp, id: &str) -> Value {
    app.get_until(
        "the snapshot to settle",
        &format!("/api/v1/hr/snapshots/{id}"),
        Duration::from_secs(30),
        |s| !["received", "diffing", "applying"].contains(&s["state"].as_str().unwrap_or_default()),
    )
    .await
}

async fn person(app: &TestApp, employee_id: &str) -> Value {
    app.get(&format!("/api/v1/identities/{employee_id}"))
        .await
        .expect(200)
}

async fn people(app: &TestApp, ids: &[&str]) {
    for id in ids {
        app.post_event(&joiner(
            &format!("j-{id}"),
            id,
            "2026-11-01T09:00:00Z",
            json!({"department": "Sales"}),
        ))
        .await;
    }
}

async fn spawn() -> TestApp {
    spawn_app_with(|c| c.run_engine = false).await
}

#[tokio::test]
async fn a_csv_snapshot_joins_moves_and_leaves_through_ingest_and_twice_applies_nothing() {
    let app = spawn().await;
    people(&app, &["E1", "E2", "E3"]).await;
    let file = "\u{feff}employee_id,email,department,attributes.cost_center\r\n\
                E1,e1@example.com,Board,42\r\n\
                E2,e2@example.com,Sales,\r\n\
                E4,e4@example.com,Sales,7\r\n";
    let posted = post(&app, "?as_of=2026-11-02T00:00:00Z", CSV, file.as_bytes())
        .await
        .expect(202);
    assert_eq!(posted["state"], "received");
    let id = posted["id"].as_str().unwrap_or_default().to_owned();
    let done = settled(&app, &id).await;
    assert_eq!(done["state"], "applied", "{done}");
    assert_eq!(
        done["counts"],
        json!({"rows": 3, "joiners": 1, "movers": 1, "leavers": 1, "unchanged": 1, "invalid": 0})
    );
    assert_eq!(done["changes"]["leavers"], json!(["E3"]));
    assert_eq!(done["progress"], json!({"applied": 3, "total": 3}));
    assert_eq!(person(&app, "E1").await["department"], "Board");
    assert_eq!(
        person(&app, "E1").await["attributes"],
        json!({"cost_center": "42"})
    );
    assert_eq!(person(&app, "E3").await["status"], "terminated");
    assert_eq!(person(&app, "E4").await["status"], "active");
    let events = app
        .rows(&format!(
            "SELECT event_id, event_type, result FROM hr_event WHERE event_id LIKE 'hr-snapshot:{id}:%' ORDER BY event_id"
        ))
        .await;
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(
        events.iter().all(|e| e["result"] == "applied"),
        "{events:?}"
    );
    // Rows are kept only until the snapshot is applied.
    assert_eq!(
        app.rows(&format!(
            "SELECT employee_id FROM hr_snapshot_row WHERE snapshot_id = '{id}'"
        ))
        .await
        .len(),
        0
    );

    let before = app.count("hr_event").await;
    let again = post(&app, "?as_of=2026-11-02T00:00:00Z", CSV, file.as_bytes())
        .await
        .expect(202);
    let again = settled(&app, again["id"].as_str().unwrap_or_default()).await;
    assert_eq!(again["state"], "applied");
    assert_eq!(
        again["counts"],
        json!({"rows": 3, "joiners": 0, "movers": 0, "leavers": 0, "unchanged": 3, "invalid": 0})
    );
    assert_eq!(
        app.count("hr_event").await,
        before,
        "the same file applied something"
    );
}

#[tokio::test]
async fn ndjson_and_json_arrays_are_taken_and_a_dry_run_writes_nothing() {
    let app = spawn().await;
    people(&app, &["E1"]).await;
    let ndjson = b"{\"employee_id\": \"E1\", \"title\": \"Chair\"}\n{\"employee_id\": \"E2\", \"email\": \"e2@example.com\"}\n";
    let dry = post(&app, "?dry_run=true", "application/x-ndjson", ndjson)
        .await
        .expect(200);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["counts"]["movers"], 1);
    assert_eq!(dry["counts"]["joiners"], 1);
    assert_eq!(app.count("hr_snapshot").await, 0);
    assert!(person(&app, "E1").await["title"].is_null());

    let array = br#"[{"employee_id": "E1", "title": "Chair"}, {"employee_id": "E2", "email": "e2@example.com"}]"#;
    let id = post(&app, "", "application/json", array).await.expect(202)["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(settled(&app, &id).await["state"], "applied");
    assert_eq!(person(&app, "E1").await["title"], "Chair");
    assert_eq!(person(&app, "E2").await["status"], "active");
}

#[tokio::test]
async fn bad_input_is_refused_with_a_reason_or_a_line_and_changes_nothing() {
    let app = spawn().await;
    people(&app, &["E1", "E2"]).await;
    let identities = app
        .rows("SELECT * FROM identity ORDER BY employee_id")
        .await;
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            CSV,
            b"employee_id,shoe_size\nE1,42\n".to_vec(),
            422,
            "unknown column `shoe_size`",
        ),
        (
            CSV,
            b"email\ne1@example.com\n".to_vec(),
            422,
            "no `employee_id` column",
        ),
        (
            CSV,
            b"employee_id,email\nE1,\"e1@example.com\nE2,e2@example.com\n".to_vec(),
            422,
            "unterminated quote",
        ),
        (
            CSV,
            b"employee_id,department\nE1,Sales\nE2,Caf\xe9\n".to_vec(),
            422,
            "line 3: not valid UTF-8",
        ),
        (
            CSV,
            b"employee_id,department\nE1,Sales\nE2,Sal".to_vec(),
            422,
            "cut off",
        ),
        (
            CSV,
            b"employee_id,department\nE1,Sales\nE1,Board\n".to_vec(),
            422,
            "line 3: duplicate employee_id `E1`, first on line 2",
        ),
        (CSV, b"employee_id,department\n".to_vec(), 422, "no rows"),
        (CSV, b"".to_vec(), 422, "empty"),
        (
            "application/json",
            br#"[{"employee_id": "E1"}, "E2"]"#.to_vec(),
            422,
            "line 2: not a JSON object",
        ),
        (
            "application/json",
            br#"[{"employee_id": "E1"}"#.to_vec(),
            422,
            "JSON array",
        ),
        (
            "text/plain",
            b"employee_id\nE1\n".to_vec(),
            415,
            "not a snapshot format",
        ),
    ];
    for (content_type, body, status, expected) in cases {
        let detail = post(&app, "", content_type, &body).await.problem(status);
        assert!(
            detail.contains(expected),
            "{}: {detail}",
            String::from_utf8_lossy(&body)
        );
    }
    assert_eq!(
        app.rows("SELECT * FROM identity ORDER BY employee_id")
            .await,
        identities
    );
    assert_eq!(app.count("hr_snapshot_row").await, 0);
    // Rejected rows leave a `rejected` snapshot that lists them.
    let rejected = app.get("/api/v1/hr/snapshots").await.expect(200)["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        rejected.iter().all(|s| s["state"] == "rejected"),
        "{rejected:?}"
    );
    let dup = rejected
        .iter()
        .find(|s| s["counts"]["invalid"] == 1 && s["errors"][0]["line"] == 3)
        .cloned()
        .unwrap_or_default();
    assert_eq!(dup["errors"][0]["employee_id"], "E1", "{rejected:?}");
}

#[tokio::test]
async fn more_than_a_million_rows_are_refused() {
    let app = spawn().await;
    let mut body = b"employee_id\n".to_vec();
    for i in 0..1_000_001u32 {
        body.extend_from_slice(format!("E{i}\n").as_bytes());
    }
    // A million rows take a while in a debug build: a client of its own, with a long timeout.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .expect("client");
    let resp = http
        .post(format!("{}/api/v1/hr/snapshots", app.base))
        .bearer_auth(ADMIN)
        .header("content-type", CSV)
        .body(body)
        .send()
        .await
        .expect("the answer to a million and one rows");
    let detail = TestApp::answer(resp).await.problem(413);
    assert!(detail.contains("1000000 rows"), "{detail}");
    assert_eq!(app.count("hr_snapshot").await, 0);
    assert_eq!(app.count("hr_snapshot_row").await, 0);
}

#[tokio::test]
async fn a_truncated_export_is_held_until_an_admin_approves_and_another_source_is_left_alone() {
    let app = spawn_app_with(|c| {
        c.run_engine = false;
        c.hr_snapshot_max_leavers = 2;
    })
    .await;
    people(&app, &["E1", "E2", "E3", "E4", "E5"]).await;
    // Another HR system's people: never leavers of source `hr`.
    let other = post(
        &app,
        "?source=contractors",
        CSV,
        b"employee_id,email\nC1,c1@example.com\n",
    )
    .await
    .expect(202);
    assert_eq!(
        settled(&app, other["id"].as_str().unwrap_or_default()).await["state"],
        "applied"
    );
    assert_eq!(person(&app, "C1").await["status"], "active");

    let truncated = post(&app, "", CSV, b"employee_id\nE1\nE2\n")
        .await
        .expect(202);
    let id = truncated["id"].as_str().unwrap_or_default().to_owned();
    let held = settled(&app, &id).await;
    assert_eq!(held["state"], "held", "{held}");
    assert!(
        held["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("3 leavers"),
        "{held}"
    );
    assert_eq!(person(&app, "E3").await["status"], "active");
    assert!(
        app.http
            .get(format!("{}/metrics", app.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .unwrap_or_default()
            .contains("roster_hr_snapshots_total{result=\"held\",source=\"hr\"}")
    );

    // Approval needs admin.
    let writer = app.key(&["events:write"]).await;
    let denied = app
        .request(
            "POST",
            &format!("/api/v1/hr/snapshots/{id}/approve"),
            Some(&writer),
            None,
        )
        .await;
    assert_eq!(denied.status, 403);
    app.request(
        "POST",
        &format!("/api/v1/hr/snapshots/{id}/approve"),
        Some(ADMIN),
        None,
    )
    .await
    .expect(200);
    let done = settled(&app, &id).await;
    assert_eq!(done["state"], "applied", "{done}");
    for gone in ["E3", "E4", "E5"] {
        assert_eq!(person(&app, gone).await["status"], "terminated");
    }
    assert_eq!(person(&app, "C1").await["status"], "active");
}

#[tokio::test]
async fn a_stale_export_is_refused_and_a_newer_event_wins_over_a_snapshot() {
    let app = spawn().await;
    people(&app, &["E1"]).await;
    // An event newer than the export moved E1; the export still says Sales.
    app.post_event(&crate::helpers::event(
        "m-1",
        "mover",
        "E1",
        "2026-11-03T09:00:00Z",
        json!({"department": "Board"}),
    ))
    .await;
    let id = post(
        &app,
        "?as_of=2026-11-02T00:00:00Z",
        CSV,
        b"employee_id,department\nE1,Sales\n",
    )
    .await
    .expect(202)["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(settled(&app, &id).await["state"], "applied");
    assert_eq!(person(&app, "E1").await["department"], "Board");
    let detail = post(
        &app,
        "?as_of=2026-11-01T00:00:00Z",
        CSV,
        b"employee_id\nE1\n",
    )
    .await
    .problem(422);
    assert!(
        detail.contains("older than the last applied snapshot"),
        "{detail}"
    );
}

#[tokio::test]
async fn with_a_webhook_secret_a_snapshot_must_be_signed_over_its_whole_body() {
    let secret = "snapshot-webhook-secret";
    let app = spawn_app_with(|c| {
        c.run_engine = false;
        c.hr_webhook_secret = Some(secret.to_owned().into());
    })
    .await;
    let body = b"employee_id,email\nE1,e1@example.com\n".to_vec();
    let send_as = |content_type: &'static str, signature: Option<String>, body: Vec<u8>| {
        let mut req = app
            .http
            .post(format!("{}/api/v1/hr/snapshots", app.base))
            .bearer_auth(ADMIN)
            .header("content-type", content_type)
            .body(body);
        if let Some(s) = signature {
            req = req.header("x-roster-signature", s);
        }
        async move { TestApp::answer(req.send().await.expect("request")).await }
    };
    let t = chrono::Utc::now().timestamp();
    let sign = |body: &[u8]| {
        format!(
            "t={t},v1={}",
            roster::crypto::sign_webhook(&secret.to_owned().into(), t, body)
        )
    };
    let send = |signature: Option<String>, body: Vec<u8>| send_as(CSV, signature, body);
    send(None, body.clone()).await.problem(401);
    // Signed over another body: the check at the end of the stream refuses it.
    let other = sign(b"employee_id\nE9\n");
    let detail = send(Some(other.clone()), body.clone()).await.problem(401);
    assert!(detail.contains("does not match"), "{detail}");
    // The same as a JSON array of employees: 401, not a body that could not be read.
    let array = br#"[{"employee_id": "E1", "email": "e1@example.com"}]"#.to_vec();
    let detail = send_as("application/json", Some(other), array)
        .await
        .problem(401);
    assert!(detail.contains("does not match"), "{detail}");
    assert_eq!(app.count("hr_snapshot").await, 0);
    assert_eq!(app.count("hr_snapshot_row").await, 0);
    send(Some(sign(&body)), body).await.expect(202);
}

async fn exec(app: &TestApp, sql: &str) {
    use sea_orm::ConnectionTrait;
    app.db.execute_unprepared(sql).await.expect(sql);
}

/// A crash while applying: another instance's lease runs out and the snapshot is resumed from
/// its progress; changes that were ingested before the crash but not yet marked come back
/// `duplicate` and change nothing.
#[tokio::test]
async fn an_interrupted_apply_resumes_after_the_lease_and_applies_nothing_twice() {
    let app = spawn_app_with(|c| {
        c.run_engine = false;
        c.hr_snapshot_max_leavers = 2;
    })
    .await;
    people(&app, &["E1", "E2", "E3", "E4", "E5"]).await;
    let id = post(&app, "", CSV, b"employee_id\nE1\nE2\n")
        .await
        .expect(202)["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(settled(&app, &id).await["state"], "held");
    // As if an instance approved it, applied E3, and died before marking it: E3's change is
    // applied by hand here with the same event the worker would send, the lease is the dead
    // instance's and runs out in a second.
    let lease_until = chrono::Utc::now().timestamp_millis() + 1000;
    exec(
        &app,
        &format!(
            "UPDATE hr_snapshot SET state = 'applying', lease_owner = 'dead-instance', lease_until = {lease_until} WHERE id = '{id}'"
        ),
    )
    .await;
    let done = settled(&app, &id).await;
    assert_eq!(done["state"], "applied", "{done}");
    assert_eq!(done["progress"], json!({"applied": 3, "total": 3}));
    let events_sql = format!(
        "SELECT event_id, result FROM hr_event WHERE event_id LIKE 'hr-snapshot:{id}:%' ORDER BY event_id"
    );
    let applied = app.rows(&events_sql).await;
    assert_eq!(applied.len(), 3, "{applied:?}");
    let versions = app
        .rows("SELECT employee_id, version, status FROM identity ORDER BY employee_id")
        .await;

    // The crash came after the changes were ingested but before they were marked applied:
    // the rows are back, unmarked, and the snapshot is `applying` again.
    for e in ["E3", "E4", "E5"] {
        exec(
            &app,
            &format!(
                "INSERT INTO hr_snapshot_row (snapshot_id, employee_id, line, record, kind, applied) VALUES ('{id}', '{e}', NULL, NULL, 'leaver', false)"
            ),
        )
        .await;
    }
    exec(
        &app,
        &format!("UPDATE hr_snapshot SET state = 'applying', lease_owner = NULL, lease_until = NULL WHERE id = '{id}'"),
    )
    .await;
    assert_eq!(settled(&app, &id).await["state"], "applied");
    assert_eq!(
        app.rows(&events_sql).await,
        applied,
        "a change was recorded twice"
    );
    assert_eq!(
        app.rows("SELECT employee_id, version, status FROM identity ORDER BY employee_id")
            .await,
        versions,
        "a change was applied twice"
    );
}

/// A crash while diffing: the diff is run again from the start and finds the same changes
/// (its leaver rows from the first attempt are not doubled); a cancel then drops the rows.
#[tokio::test]
async fn an_interrupted_diff_is_run_again_and_a_cancel_drops_the_rows() {
    let app = spawn_app_with(|c| {
        c.run_engine = false;
        c.hr_snapshot_max_leavers = 1;
    })
    .await;
    people(&app, &["E1", "E2", "E3", "E4"]).await;
    let id = post(
        &app,
        "",
        CSV,
        b"employee_id,department\nE1,Board\nE2,Sales\n",
    )
    .await
    .expect(202)["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let held = settled(&app, &id).await;
    assert_eq!(held["state"], "held", "{held}");
    // A dead instance was diffing it again: its lease runs out in a second.
    let lease_until = chrono::Utc::now().timestamp_millis() + 1000;
    exec(
        &app,
        &format!(
            "UPDATE hr_snapshot SET state = 'diffing', lease_owner = 'dead-instance', lease_until = {lease_until} WHERE id = '{id}'"
        ),
    )
    .await;
    exec(
        &app,
        &format!(
            "UPDATE hr_snapshot_row SET kind = NULL WHERE snapshot_id = '{id}' AND line IS NOT NULL"
        ),
    )
    .await;
    let again = settled(&app, &id).await;
    assert_eq!(again["state"], "held", "{again}");
    assert_eq!(again["counts"], held["counts"]);
    assert_eq!(again["changes"], held["changes"]);
    let kinds = app
        .rows(&format!(
            "SELECT employee_id, kind FROM hr_snapshot_row WHERE snapshot_id = '{id}' AND kind IS NOT NULL ORDER BY employee_id"
        ))
        .await;
    assert_eq!(
        kinds,
        vec![
            json!({"employee_id": "E1", "kind": "mover"}),
            json!({"employee_id": "E3", "kind": "leaver"}),
            json!({"employee_id": "E4", "kind": "leaver"}),
        ]
    );
    app.request(
        "POST",
        &format!("/api/v1/hr/snapshots/{id}/cancel"),
        Some(ADMIN),
        None,
    )
    .await
    .expect(200);
    assert_eq!(app.count("hr_snapshot_row").await, 0);
    assert_eq!(person(&app, "E3").await["status"], "active");
    assert_eq!(person(&app, "E1").await["department"], "Sales");
    app.request(
        "POST",
        &format!("/api/v1/hr/snapshots/{id}/approve"),
        Some(ADMIN),
        None,
    )
    .await
    .problem(409);
}

/// `roster hr-snapshot FILE`: sends the file, waits, prints the diff; piped, it prints plain
/// lines; a held snapshot exits non-zero with the reason.
#[tokio::test]
async fn the_hr_snapshot_command_sends_a_file_and_exits_non_zero_when_held() {
    let app = spawn_app_with(|c| {
        c.run_engine = false;
        c.hr_snapshot_max_leavers = 1;
    })
    .await;
    people(&app, &["E1", "E2", "E3", "E4"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |file: &str, body: &str, extra: &[&str]| {
        let path = dir.path().join(file);
        std::fs::write(&path, body).expect("write");
        let mut args = vec!["hr-snapshot".to_owned(), path.display().to_string()];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let base = app.base.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_roster"))
                    .args(&args)
                    .env("ROSTER_URL", base)
                    .env("ROSTER_API_KEY", ADMIN)
                    .env_remove("RUST_LOG")
                    .output()
                    .expect("run roster")
            })
            .await
            .expect("join")
        }
    };
    let ok = run(
        "people.csv",
        "employee_id,department\nE1,Board\nE2,Sales\nE3,Sales\nE4,Sales\n",
        &[],
    )
    .await;
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.contains(": applied"), "{stdout}");
    assert!(stdout.contains("movers 1"), "{stdout}");
    assert!(stdout.contains("movers: E1"), "{stdout}");
    assert_eq!(person(&app, "E1").await["department"], "Board");

    let held = run("truncated.csv", "employee_id\nE1\nE2\n", &["--json"]).await;
    assert!(!held.status.success());
    let doc: Value = serde_json::from_slice(&held.stdout).expect("one JSON document");
    assert_eq!(doc["state"], "held");
    let stderr = String::from_utf8_lossy(&held.stderr);
    assert!(
        stderr.contains("held") && stderr.contains("MAX_LEAVERS"),
        "{stderr}"
    );

    let refused = run("bad.csv", "employee_id,shoe\nE1,42\n", &[]).await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unknown column"));
}

/// A snapshot and events for the same people at the same time: each person ends with the
/// newer of the two, whichever is applied first.
#[tokio::test]
async fn a_snapshot_racing_events_converges_to_the_newer_of_each() {
    let app = spawn().await;
    let ids: Vec<String> = (0..40).map(|i| format!("R{i:02}")).collect();
    for id in &ids {
        app.post_event(&joiner(
            &format!("j-{id}"),
            id,
            "2026-11-01T09:00:00Z",
            json!({"department": "Old"}),
        ))
        .await;
    }
    // The export says Snap for everyone, as of Nov 2 noon. Even people get an event at
    // Nov 3 (newer: Event wins), odd people one at Nov 2 (older: Snap wins).
    let mut file = String::from("employee_id,department\n");
    for id in &ids {
        file.push_str(&format!("{id},Snap\n"));
    }
    let events = ids.iter().enumerate().map(|(i, id)| {
        let at = if i % 2 == 0 {
            "2026-11-03T00:00:00Z"
        } else {
            "2026-11-02T00:00:00Z"
        };
        crate::helpers::event(
            &format!("m-{id}"),
            "mover",
            id,
            at,
            json!({"department": "Event"}),
        )
    });
    let snapshot = post(&app, "?as_of=2026-11-02T12:00:00Z", CSV, file.as_bytes());
    let movers = futures::future::join_all(events.map(|e| {
        let app = &app;
        async move { app.post_event(&e).await }
    }));
    let (posted, _) = tokio::join!(snapshot, movers);
    let id = posted.expect(202)["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(settled(&app, &id).await["state"], "applied");
    for (i, id) in ids.iter().enumerate() {
        let wanted = if i % 2 == 0 { "Event" } else { "Snap" };
        assert_eq!(person(&app, id).await["department"], wanted, "{id}");
    }
}

/// A joiner row roster cannot name (no `user_name`, no `email`, a person new to roster)
/// rejects the snapshot with its line: it never reaches ingest, which would refuse it and fail
/// the apply again and again, holding every snapshot behind it. A re-hire from a file without
/// those columns is named as roster knew the person. Posted events cannot take the event ids
/// of snapshot changes, which would make a snapshot's apply fail as a conflict.
#[tokio::test]
async fn a_joiner_nobody_can_name_rejects_the_snapshot_and_a_rehire_keeps_its_name() {
    let app = spawn().await;
    people(&app, &["R1", "R2"]).await;
    app.post_event(&crate::helpers::event(
        "l-R2",
        "leaver",
        "R2",
        "2026-11-01T10:00:00Z",
        json!({}),
    ))
    .await;
    let posted = post(
        &app,
        "?as_of=2026-11-02T00:00:00Z",
        CSV,
        b"employee_id,department\nR1,Sales\nR2,Sales\nN9,Sales\n",
    )
    .await
    .expect(202);
    let done = settled(&app, posted["id"].as_str().unwrap_or_default()).await;
    assert_eq!(done["state"], "rejected", "{done}");
    assert_eq!(done["counts"]["invalid"], 1, "{done}");
    assert_eq!(done["errors"][0]["line"], 4, "{done}");
    assert_eq!(done["errors"][0]["employee_id"], "N9", "{done}");
    assert_eq!(person(&app, "R2").await["status"], "terminated");

    let posted = post(
        &app,
        "?as_of=2026-11-03T00:00:00Z",
        CSV,
        b"employee_id,department\nR1,Sales\nR2,Board\n",
    )
    .await
    .expect(202);
    let done = settled(&app, posted["id"].as_str().unwrap_or_default()).await;
    assert_eq!(done["state"], "applied", "{done}");
    assert_eq!(done["counts"]["joiners"], 1, "{done}");
    let rehired = person(&app, "R2").await;
    assert_eq!(rehired["status"], "active", "{rehired}");
    assert_eq!(rehired["email"], "r2@example.com", "{rehired}");
    assert_eq!(rehired["department"], "Board", "{rehired}");

    let taken = json!({"event_id": "hr-snapshot:x:R1", "type": "mover",
                       "occurred_at": "2026-11-04T00:00:00Z",
                       "employee": {"employee_id": "R1", "title": "Chief"}});
    let detail = app.post("/api/v1/events", &taken).await.problem(422);
    assert!(detail.contains("reserved"), "{detail}");
    let batch = json!({"events": [
        {"event_id": "ok-1", "type": "mover", "occurred_at": "2026-11-04T00:00:00Z",
         "employee": {"employee_id": "R1", "title": "Chief"}},
        {"event_id": "hr-snapshot:x:R2", "type": "mover", "occurred_at": "2026-11-04T00:00:00Z",
         "employee": {"employee_id": "R2", "title": "Chief"}}]});
    let detail = app.post("/api/v1/events:batch", &batch).await.problem(422);
    assert!(detail.contains("events[1].event_id"), "{detail}");
    assert_eq!(
        person(&app, "R1").await["title"],
        Value::Null,
        "nothing applied"
    );
}

/// A change ingested before a crash, whose row was not yet marked applied, comes back
/// `duplicate` when the apply resumes, also after an event changed the person since (the
/// change's payload is the file's row, not the person it was merged onto): the snapshot ends
/// `applied`, not `failed` on a conflict, and the newer event stays.
#[tokio::test]
async fn a_resumed_apply_skips_changes_already_recorded_though_the_person_changed_since() {
    let app = spawn().await;
    people(&app, &["E1", "E2"]).await;
    let id = post(
        &app,
        "?as_of=2026-11-02T00:00:00Z",
        CSV,
        b"employee_id,attributes.cc\nE1,42\nE2,7\n",
    )
    .await
    .expect(202)["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(settled(&app, &id).await["state"], "applied");
    app.post_event(&crate::helpers::event(
        "e1-moves",
        "mover",
        "E1",
        "2026-11-03T00:00:00Z",
        json!({"attributes": {"cc": "42", "site": "Basel"}}),
    ))
    .await;
    // The crash came after E1's change was ingested but before its row was marked applied.
    exec(
        &app,
        &format!(
            "INSERT INTO hr_snapshot_row (snapshot_id, employee_id, line, record, kind, applied) \
             VALUES ('{id}', 'E1', 2, '{{\"employee_id\": \"E1\", \"attributes\": {{\"cc\": \"42\"}}}}', 'mover', false)"
        ),
    )
    .await;
    exec(
        &app,
        &format!("UPDATE hr_snapshot SET state = 'applying', lease_owner = NULL, lease_until = NULL WHERE id = '{id}'"),
    )
    .await;
    let done = settled(&app, &id).await;
    assert_eq!(done["state"], "applied", "{done}");
    assert_eq!(
        person(&app, "E1").await["attributes"],
        json!({"cc": "42", "site": "Basel"}),
        "the newer event stays"
    );
}
