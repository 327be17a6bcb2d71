//! The finisher's group commit of what jobs staged: links and follow-up jobs are written with
//! the job's end, in one transaction, whatever the job's result.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use roster::delivery::finisher::{self, Finished, Finisher, JobEnd, JobFinisher};
use roster::delivery::staged::{JobWrites, LinkRow, LinkWrite};
use roster::store::Db;
use roster::store::queue::{self, JobRequest, Lane, ResourceKind};
use serde_json::{Value, json};

use crate::helpers::{TestApp, app_body, spawn_planner};

/// Sets its flag when dropped.
struct Released(Arc<AtomicBool>);

impl Drop for Released {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

async fn app_id(app: &TestApp, name: &str) -> String {
    app.create_app(&app_body(name, json!({}))).await["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn link(
    app_id: &str,
    kind: ResourceKind,
    id: &str,
    target: Option<&str>,
    state: &str,
) -> LinkWrite {
    LinkWrite {
        app_id: app_id.to_owned(),
        kind,
        resource_id: id.to_owned(),
        row: Some(LinkRow {
            target_id: target.map(str::to_owned),
            snapshot: target.map(|t| json!({"id": t, "userName": id})),
            snapshot_hash: target.map(|t| format!("h-{t}")),
            state: state.to_owned(),
            delete_after: None,
            at: chrono::Utc::now(),
        }),
    }
}

fn job(app_id: &str, kind: ResourceKind, id: &str, lane: Lane) -> JobRequest {
    JobRequest {
        app_id: app_id.to_owned(),
        kind,
        resource_id: id.to_owned(),
        lane,
        run_at_ms: queue::now_ms(),
        hr_event_id: None,
    }
}

async fn link_rows(app: &TestApp, app_id: &str) -> Vec<Value> {
    app.rows(&format!(
        "SELECT id, resource_kind, resource_id, target_id, state, last_error, created_at \
         FROM link WHERE app_id = '{app_id}' ORDER BY resource_kind, resource_id"
    ))
    .await
}

async fn jobs(app: &TestApp, app_id: &str) -> Vec<Value> {
    app.rows(&format!(
        "SELECT id, resource_kind, resource_id, lane, state FROM job WHERE app_id = '{app_id}' \
         ORDER BY id"
    ))
    .await
}

#[tokio::test]
async fn a_finished_job_leaves_its_link_and_follow_up_job_with_its_end() {
    let app = spawn_planner().await;
    let app_id = app_id(&app, "fin").await;
    let conn = &app.db;
    queue::enqueue(
        conn,
        &[
            job(&app_id, ResourceKind::User, "u1", Lane::Normal),
            job(&app_id, ResourceKind::User, "u2", Lane::Normal),
        ],
    )
    .await
    .expect("enqueue");
    let claimed = queue::claim(conn, "test-owner", queue::now_ms(), 10)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 2);
    let id_of = |resource: &str| {
        claimed
            .iter()
            .find(|j| j.resource_id == resource)
            .map(|j| j.id)
            .unwrap_or_default()
    };

    // u1 was created; its pushed group must learn of it.
    let mut created = JobWrites::default();
    created.link(link(
        &app_id,
        ResourceKind::User,
        "u1",
        Some("t1"),
        "linked",
    ));
    created.enqueue([job(&app_id, ResourceKind::Group, "staff", Lane::Normal)]);
    // u2's create had an unknown outcome: the job fails, and its link says so all the same.
    let mut unsure = JobWrites::default();
    unsure.link(link(&app_id, ResourceKind::User, "u2", None, "pending"));

    let (sender, writer) = Finisher::start(Db::new(app.db.clone()), "test-owner".into());
    // The worker's in-flight mark (which keeps the lease renewed) goes with u1's end.
    let released = Arc::new(AtomicBool::new(false));
    let mark = Box::new(Released(released.clone()));
    JobFinisher::new(&sender, mark).finish(Finished {
        job_id: id_of("u1"),
        end: JobEnd::Complete,
        writes: created,
        operations: Vec::new(),
        deprovision: None,
        running: None,
    });
    sender.finish(Finished {
        job_id: id_of("u2"),
        end: JobEnd::retry(queue::now_ms() + 60_000, Some("timed out"), true),
        writes: unsure,
        operations: Vec::new(),
        deprovision: None,
        running: None,
    });
    // This test's runtime has one thread: the writer has not run yet, and the mark is held
    // while the end waits to be written.
    assert!(
        !released.load(Ordering::SeqCst),
        "released before the end was written"
    );
    drop(sender);
    writer
        .await
        .expect("the finisher ends once its senders are gone");
    assert!(released.load(Ordering::SeqCst), "released once written");

    let links = link_rows(&app, &app_id).await;
    let states: Vec<(Value, Value, Value)> = links
        .iter()
        .map(|l| {
            (
                l["resource_id"].clone(),
                l["target_id"].clone(),
                l["state"].clone(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            (json!("u1"), json!("t1"), json!("linked")),
            (json!("u2"), Value::Null, json!("pending")),
        ],
        "{links:?}"
    );
    let jobs = jobs(&app, &app_id).await;
    let states: Vec<(Value, Value)> = jobs
        .iter()
        .map(|j| (j["resource_id"].clone(), j["state"].clone()))
        .collect();
    assert_eq!(
        states,
        [
            (json!("u1"), json!("done")),
            (json!("u2"), json!("pending")),
            (json!("staff"), json!("pending")),
        ],
        "{jobs:?}"
    );
}

#[tokio::test]
async fn staged_writes_upsert_links_keep_the_last_write_and_coalesce_follow_ups() {
    let app = spawn_planner().await;
    let app_id = app_id(&app, "staged").await;
    let db = Db::new(app.db.clone());

    // A first batch: rows to update and to delete later.
    let mut first = JobWrites::default();
    first.link(link(
        &app_id,
        ResourceKind::User,
        "kept",
        Some("t0"),
        "linked",
    ));
    first.link(link(
        &app_id,
        ResourceKind::Group,
        "gone",
        Some("g0"),
        "linked",
    ));
    let tx = db.write_tx().await.expect("tx");
    finisher::write_staged(&*tx, &[&first])
        .await
        .expect("write");
    tx.commit().await.expect("commit");
    let before = link_rows(&app, &app_id).await;
    assert_eq!(before.len(), 2, "{before:?}");
    let kept_before = before
        .iter()
        .find(|l| l["resource_id"] == "kept")
        .cloned()
        .unwrap_or_default();

    // Two jobs' writes in one batch, both touching `dup` (PostgreSQL refuses to update one row
    // twice in one statement), one of them twice; the same follow-up from both; a write for an
    // app that no longer exists.
    let mut a = JobWrites::default();
    a.link(link(
        &app_id,
        ResourceKind::User,
        "dup",
        Some("a1"),
        "linked",
    ));
    a.link(link(
        &app_id,
        ResourceKind::User,
        "dup",
        Some("a2"),
        "linked",
    ));
    a.link(link(
        &app_id,
        ResourceKind::User,
        "kept",
        Some("t1"),
        "deactivated",
    ));
    a.enqueue([job(&app_id, ResourceKind::Group, "staff", Lane::Normal)]);
    let mut b = JobWrites::default();
    b.link(link(
        &app_id,
        ResourceKind::User,
        "dup",
        Some("b1"),
        "linked",
    ));
    b.link(LinkWrite {
        app_id: app_id.clone(),
        kind: ResourceKind::Group,
        resource_id: "gone".into(),
        row: None,
    });
    b.enqueue([
        job(&app_id, ResourceKind::Group, "staff", Lane::Normal),
        job(&app_id, ResourceKind::User, "kept", Lane::Deprovision),
    ]);
    let ghost_app = uuid::Uuid::now_v7().to_string();
    let mut ghost = JobWrites::default();
    ghost.link(link(
        &ghost_app,
        ResourceKind::User,
        "x",
        Some("t"),
        "linked",
    ));
    ghost.enqueue([job(&ghost_app, ResourceKind::Group, "staff", Lane::Normal)]);

    let tx = db.write_tx().await.expect("tx");
    finisher::write_staged(&*tx, &[&a, &b, &ghost])
        .await
        .expect("one batch for all");
    tx.commit().await.expect("commit");

    let after = link_rows(&app, &app_id).await;
    let summary: Vec<(Value, Value, Value, Value)> = after
        .iter()
        .map(|l| {
            (
                l["resource_kind"].clone(),
                l["resource_id"].clone(),
                l["target_id"].clone(),
                l["state"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (json!("user"), json!("dup"), json!("b1"), json!("linked")),
            (
                json!("user"),
                json!("kept"),
                json!("t1"),
                json!("deactivated")
            ),
        ],
        "{after:?}"
    );
    let kept = after
        .iter()
        .find(|l| l["resource_id"] == "kept")
        .cloned()
        .unwrap_or_default();
    assert_eq!(kept["id"], kept_before["id"], "updated in place");
    assert_eq!(kept["created_at"], kept_before["created_at"]);
    assert_eq!(kept["last_error"], Value::Null);
    let ghosts = app
        .rows(&format!(
            "SELECT id FROM link WHERE app_id = '{ghost_app}' UNION ALL \
             SELECT id FROM job WHERE app_id = '{ghost_app}'"
        ))
        .await;
    assert!(ghosts.is_empty(), "{ghosts:?}");
    let jobs = jobs(&app, &app_id).await;
    let summary: Vec<(Value, Value, Value)> = jobs
        .iter()
        .map(|j| {
            (
                j["resource_id"].clone(),
                j["lane"].clone(),
                j["state"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary.len(),
        2,
        "one pending job per resource: {summary:?}"
    );
    assert!(summary.contains(&(json!("staff"), json!("normal"), json!("pending"))));
    assert!(summary.contains(&(json!("kept"), json!("deprovision"), json!("pending"))));
}

/// Claims every due job of the app for `owner`, then lets another instance take them over as
/// if `owner`'s leases had expired: reclaimed, then claimed by `"other"`.
async fn taken_over(app: &TestApp, owner: &str) -> Vec<i64> {
    let conn = &app.db;
    let claimed = queue::claim(conn, owner, queue::now_ms(), 10)
        .await
        .expect("claim");
    // Far in the future: every lease has expired by then.
    let released = queue::release(conn, None, queue::now_ms() + 10 * queue::LEASE_MS)
        .await
        .expect("reclaim");
    assert_eq!(released as usize, claimed.len());
    let again = queue::claim(conn, "other", queue::now_ms(), 10)
        .await
        .expect("claim again");
    assert_eq!(again.len(), claimed.len());
    claimed.iter().map(|j| j.id).collect()
}

fn finished(job_id: i64, end: JobEnd, writes: JobWrites) -> Finished {
    Finished {
        job_id,
        end,
        writes,
        operations: Vec::new(),
        deprovision: None,
        running: None,
    }
}

/// Issue 20 B6: a job's end and staged writes count only while its lease is held. Once
/// another instance holds the job, the first one's done, retry or dead — and the link and
/// follow-up job it staged — change nothing.
#[tokio::test]
async fn the_end_of_a_job_whose_lease_another_instance_took_changes_nothing() {
    let app = spawn_planner().await;
    let app_id = app_id(&app, "lease").await;
    let conn = &app.db;
    queue::enqueue(
        conn,
        &[
            job(&app_id, ResourceKind::User, "u1", Lane::Normal),
            job(&app_id, ResourceKind::User, "u2", Lane::Normal),
            job(&app_id, ResourceKind::User, "u3", Lane::Normal),
        ],
    )
    .await
    .expect("enqueue");
    let ids = taken_over(&app, "first").await;
    let before = jobs(&app, &app_id).await;
    // The reclaim left unsure links (a create may have happened); the first instance's
    // writes must not touch them.
    let links_before = link_rows(&app, &app_id).await;
    let mut writes = JobWrites::default();
    writes.link(link(
        &app_id,
        ResourceKind::User,
        "u1",
        Some("t1"),
        "linked",
    ));
    writes.enqueue([job(&app_id, ResourceKind::Group, "staff", Lane::Normal)]);
    let batch = [
        finished(ids[0], JobEnd::Complete, writes),
        finished(
            ids[1],
            JobEnd::retry(queue::now_ms(), Some("boom"), true),
            JobWrites::default(),
        ),
        finished(
            ids[2],
            JobEnd::Dead {
                error: "gone".into(),
            },
            JobWrites::default(),
        ),
    ];
    let db = Db::new(app.db.clone());
    let outcome = finisher::write_batch(&db, "first", &batch)
        .await
        .expect("written");
    assert_eq!(outcome.lease_lost, 3);
    assert_eq!(outcome.written, 0);
    assert_eq!(jobs(&app, &app_id).await, before, "no job changed");
    let rows = app
        .rows(&format!(
            "SELECT state, lease_owner FROM job WHERE app_id = '{app_id}'"
        ))
        .await;
    assert!(
        rows.iter()
            .all(|r| r["state"] == "running" && r["lease_owner"] == "other"),
        "{rows:?}"
    );
    assert_eq!(
        link_rows(&app, &app_id).await,
        links_before,
        "no link written"
    );
    assert_eq!(jobs(&app, &app_id).await.len(), 3, "no follow-up job");

    // The queue's own statements refuse the wrong owner too.
    assert_eq!(
        queue::complete_many(conn, "first", &ids)
            .await
            .expect("complete"),
        0
    );
    assert!(
        !queue::retry(conn, "first", ids[1], 0, None, true)
            .await
            .expect("retry")
    );
    assert!(!queue::dead(conn, "first", ids[2], "x").await.expect("dead"));
    let renewed = queue::renew(conn, "first", &ids, queue::now_ms())
        .await
        .expect("renew");
    assert!(renewed.is_empty(), "no lease of the first instance is left");
    let renewed = queue::renew(conn, "other", &ids, queue::now_ms())
        .await
        .expect("renew");
    assert_eq!(renewed.len(), 3);

    // The instance that holds the jobs ends them.
    let outcome = finisher::write_batch(
        &db,
        "other",
        &[finished(ids[0], JobEnd::Complete, JobWrites::default())],
    )
    .await
    .expect("written");
    assert_eq!(outcome.written, 1);
    let done = app
        .rows(&format!("SELECT state FROM job WHERE id = {}", ids[0]))
        .await;
    assert_eq!(done[0]["state"], "done");
}

/// Issue 20 B6: a reclaim only takes back a lease that is still expired when it writes; a
/// shutdown's release only its own.
#[tokio::test]
async fn a_release_leaves_a_live_lease_and_other_owners_alone() {
    let app = spawn_planner().await;
    let app_id = app_id(&app, "release").await;
    let conn = &app.db;
    queue::enqueue(
        conn,
        &[job(&app_id, ResourceKind::User, "u1", Lane::Normal)],
    )
    .await
    .expect("enqueue");
    queue::claim(conn, "mine", queue::now_ms(), 10)
        .await
        .expect("claim");
    assert_eq!(
        queue::release(conn, None, queue::now_ms())
            .await
            .expect("reclaim"),
        0,
        "a live lease stays"
    );
    assert_eq!(
        queue::release(conn, Some("someone-else"), queue::now_ms())
            .await
            .expect("release"),
        0
    );
    assert_eq!(
        queue::release(conn, Some("mine"), queue::now_ms())
            .await
            .expect("release"),
        1
    );
    let rows = jobs(&app, &app_id).await;
    assert_eq!(rows[0]["state"], "pending", "{rows:?}");
}

/// A leaver's deprovision that coalesces into a pending job waiting to retry a failing change
/// (its attempts nearly spent) starts a fresh attempt budget with its higher lane: one
/// transient error must not dead-letter a leaver. A change of the same lane keeps the count.
#[tokio::test]
async fn a_leaver_coalescing_into_a_failing_job_gets_a_fresh_attempt_budget() {
    use sea_orm::ConnectionTrait as _;
    let app = spawn_planner().await;
    let app_id = app_id(&app, "budget").await;
    let conn = &app.db;
    let attempts = || async {
        let rows = app
            .rows(&format!(
                "SELECT lane, attempts FROM job WHERE app_id = '{app_id}' AND state = 'pending'"
            ))
            .await;
        assert_eq!(rows.len(), 1, "{rows:?}");
        (rows[0]["lane"].clone(), rows[0]["attempts"].clone())
    };
    queue::enqueue(
        conn,
        &[job(&app_id, ResourceKind::User, "u1", Lane::Normal)],
    )
    .await
    .expect("enqueue");
    // Seven attempts failed; it waits to retry.
    conn.execute_unprepared(&format!(
        "UPDATE job SET attempts = 7, run_at = {} WHERE app_id = '{app_id}'",
        queue::now_ms() + 600_000
    ))
    .await
    .expect("failing");
    queue::enqueue(
        conn,
        &[job(&app_id, ResourceKind::User, "u1", Lane::Normal)],
    )
    .await
    .expect("enqueue");
    assert_eq!(attempts().await, (json!("normal"), json!(7)), "same lane");
    queue::enqueue(
        conn,
        &[job(&app_id, ResourceKind::User, "u1", Lane::Deprovision)],
    )
    .await
    .expect("enqueue");
    assert_eq!(attempts().await, (json!("deprovision"), json!(0)));
}

/// Issue 20 B9: a retry superseded by a newer change hands its priority on: the job that
/// replaces it takes the higher lane and keeps the HR event, so a leaver's deprovision never
/// falls behind a reconcile backlog. A change coalescing into a job waiting to retry keeps its
/// lane too.
#[tokio::test]
async fn a_superseded_retry_keeps_its_lane_and_hr_event() {
    let app = spawn_planner().await;
    let app_id = app_id(&app, "lanes").await;
    let conn = &app.db;
    let leaver = JobRequest {
        hr_event_id: Some("leaver-1".into()),
        ..job(&app_id, ResourceKind::User, "u1", Lane::Deprovision)
    };
    queue::enqueue(conn, &[leaver]).await.expect("enqueue");
    let claimed = queue::claim(conn, "w", queue::now_ms(), 10)
        .await
        .expect("claim");
    let first_enqueued = claimed[0].enqueued_at;
    // While the deprovision runs, a reconciliation queues a fix for the same person.
    queue::enqueue(
        conn,
        &[job(&app_id, ResourceKind::User, "u1", Lane::Reconcile)],
    )
    .await
    .expect("enqueue");
    // The deprovision meets a 503 and would retry: the pending job supersedes it.
    assert!(
        queue::retry(
            conn,
            "w",
            claimed[0].id,
            queue::now_ms() + 60_000,
            Some("503"),
            true
        )
        .await
        .expect("retry")
    );
    let rows = app
        .rows(&format!(
            "SELECT id, lane, priority, hr_event_id, enqueued_at, state, last_error FROM job \
             WHERE app_id = '{app_id}' ORDER BY id"
        ))
        .await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["state"], "done", "{rows:?}");
    assert_eq!(rows[0]["last_error"], "superseded by a newer change");
    let pending = &rows[1];
    assert_eq!(pending["state"], "pending", "{rows:?}");
    assert_eq!(pending["lane"], "deprovision", "{rows:?}");
    assert_eq!(pending["priority"], json!(Lane::Deprovision.priority()));
    assert_eq!(pending["hr_event_id"], "leaver-1", "{rows:?}");
    assert_eq!(pending["enqueued_at"], json!(first_enqueued), "{rows:?}");

    // A job waiting to retry, joined by a reconcile change, stays in its lane with its event.
    let claimed = queue::claim(conn, "w", queue::now_ms(), 10)
        .await
        .expect("claim");
    assert!(
        queue::retry(
            conn,
            "w",
            claimed[0].id,
            queue::now_ms() + 60_000,
            Some("503"),
            true
        )
        .await
        .expect("retry")
    );
    queue::enqueue(
        conn,
        &[job(&app_id, ResourceKind::User, "u1", Lane::Reconcile)],
    )
    .await
    .expect("enqueue");
    let rows = app
        .rows(&format!(
            "SELECT lane, hr_event_id FROM job WHERE app_id = '{app_id}' AND state = 'pending'"
        ))
        .await;
    assert_eq!(
        rows,
        [json!({"lane": "deprovision", "hr_event_id": "leaver-1"})],
        "{rows:?}"
    );
}

/// Issue 20 D15: a claim takes from each app at most the room its window has left, and none
/// from an app without room, so one app's backlog never fills a claim.
#[tokio::test]
async fn a_claim_takes_from_each_app_only_its_room() {
    let app = spawn_planner().await;
    let busy = app_id(&app, "busy").await;
    let quiet = app_id(&app, "quiet").await;
    let conn = &app.db;
    let backlog: Vec<JobRequest> = (0..20)
        .map(|i| job(&busy, ResourceKind::User, &format!("b{i}"), Lane::Normal))
        .collect();
    queue::enqueue(conn, &backlog).await.expect("enqueue");
    queue::enqueue(conn, &[job(&quiet, ResourceKind::User, "q1", Lane::Normal)])
        .await
        .expect("enqueue");
    let rooms = queue::ClaimRooms {
        rooms: vec![(busy.clone(), 3)],
        default_room: 5,
        ..Default::default()
    };
    let claimed = queue::claim_within(conn, "w", queue::now_ms(), 50, &rooms)
        .await
        .expect("claim");
    let from = |app: &str| claimed.iter().filter(|j| j.app_id == app).count();
    assert_eq!(from(&busy), 3, "{claimed:?}");
    assert_eq!(from(&quiet), 1, "{claimed:?}");
    // The busy app is full: the next claim does not take from it at all.
    queue::enqueue(conn, &[job(&quiet, ResourceKind::User, "q2", Lane::Normal)])
        .await
        .expect("enqueue");
    let full = queue::ClaimRooms {
        rooms: vec![(busy.clone(), 0)],
        default_room: 5,
        ..Default::default()
    };
    let claimed = queue::claim_within(conn, "w", queue::now_ms(), 50, &full)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    assert_eq!(claimed[0].resource_id, "q2");

    // Issue 24: a leaver of the full app is claimed in the room leavers have of their own,
    // and only there.
    queue::enqueue(
        conn,
        &[
            job(&busy, ResourceKind::User, "l1", Lane::Deprovision),
            job(&busy, ResourceKind::User, "l2", Lane::Deprovision),
        ],
    )
    .await
    .expect("enqueue");
    let no_first_room = queue::ClaimRooms {
        first_rooms: vec![(busy.clone(), 0)],
        ..full.clone()
    };
    let claimed = queue::claim_within(conn, "w", queue::now_ms(), 50, &no_first_room)
        .await
        .expect("claim");
    assert!(claimed.is_empty(), "{claimed:?}");
    let first_room = queue::ClaimRooms {
        first_rooms: vec![(busy.clone(), 1)],
        ..full
    };
    let claimed = queue::claim_within(conn, "w", queue::now_ms(), 50, &first_room)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    assert_eq!(claimed[0].lane, "deprovision", "{claimed:?}");
}

/// While every claim of the process is taken, the engine claims leavers alone
/// (`leavers_only`): a due leaver of any app, within its app's room for leavers, and no
/// joiner, however much room its app has.
#[tokio::test]
async fn a_claim_of_leavers_only_takes_no_other_job() {
    let app = spawn_planner().await;
    let (a, b) = (app_id(&app, "a").await, app_id(&app, "b").await);
    let conn = &app.db;
    queue::enqueue(
        conn,
        &[
            job(&a, ResourceKind::User, "j1", Lane::Normal),
            job(&b, ResourceKind::User, "j2", Lane::Normal),
            job(&b, ResourceKind::User, "r1", Lane::Reconcile),
            job(&b, ResourceKind::User, "l1", Lane::Deprovision),
        ],
    )
    .await
    .expect("enqueue");
    let rooms = queue::ClaimRooms {
        rooms: vec![(a.clone(), 5), (b.clone(), 5)],
        default_room: 5,
        first_rooms: vec![(a.clone(), 5), (b.clone(), 5)],
        leavers_only: true,
    };
    let claimed = queue::claim_within(conn, "w", queue::now_ms(), 50, &rooms)
        .await
        .expect("claim");
    let ids: Vec<&str> = claimed.iter().map(|j| j.resource_id.as_str()).collect();
    assert_eq!(ids, ["l1"]);
}

/// Issue 22 §5: a leaver posted behind a backlog of thousands of pending jobs of the same app
/// is claimed first, whether the app's window is free or full: the next claim of one job is
/// the leaver, and a claim with the app's window full takes the leaver and nothing else. (The
/// engine then gives it the app's next slot and token: `engine::a_leaver_overtakes_…`.)
#[tokio::test]
async fn a_leaver_behind_thousands_of_pending_jobs_is_claimed_first() {
    const BACKLOG: usize = 3000;
    let app = spawn_planner().await;
    let busy = app_id(&app, "busy").await;
    let conn = &app.db;
    // The backlog is older: by time alone every one of its jobs would come first.
    let older = queue::now_ms() - 60_000;
    let backlog: Vec<JobRequest> = (0..BACKLOG)
        .map(|i| JobRequest {
            run_at_ms: older,
            ..job(&busy, ResourceKind::User, &format!("b{i}"), Lane::Normal)
        })
        .collect();
    for chunk in backlog.chunks(500) {
        queue::enqueue(conn, chunk)
            .await
            .expect("enqueue the backlog");
    }
    queue::enqueue(
        conn,
        &[job(&busy, ResourceKind::User, "leaver", Lane::Deprovision)],
    )
    .await
    .expect("enqueue the leaver");
    assert_eq!(app.count("job").await, BACKLOG as i64 + 1);

    // The app's window is full of its backlog: only the leaver's own room is left.
    let full = queue::ClaimRooms {
        rooms: vec![(busy.clone(), 0)],
        first_rooms: vec![(busy.clone(), 1)],
        default_room: 5,
        leavers_only: false,
    };
    let claimed = queue::claim_within(conn, "w", queue::now_ms(), 50, &full)
        .await
        .expect("claim");
    let claimed: Vec<(&str, &str)> = claimed
        .iter()
        .map(|j| (j.resource_id.as_str(), j.lane.as_str()))
        .collect();
    assert_eq!(claimed, [("leaver", "deprovision")]);

    // Released (as a lost worker's job would be), the leaver is again the next job of all.
    app.rows("UPDATE job SET state = 'pending', lease_owner = NULL WHERE resource_id = 'leaver'")
        .await;
    let next = queue::claim(conn, "w", queue::now_ms(), 1)
        .await
        .expect("claim");
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!(next[0].resource_id, "leaver", "{next:?}");
    // Then the backlog in its own order, oldest first.
    let then = queue::claim(conn, "w", queue::now_ms(), 3)
        .await
        .expect("claim");
    let then: Vec<&str> = then.iter().map(|j| j.resource_id.as_str()).collect();
    assert_eq!(then.len(), 3, "{then:?}");
    assert!(then.iter().all(|id| id.starts_with('b')), "{then:?}");
}

/// Two instances adopting one target account at once: the other instance's link to it was
/// committed first, and `uq_link_live_target` refuses this job's. Only that job fails — dead,
/// with the conflict naming the other identity, its link and follow-up job not written, its
/// log rows kept — and the rest of the batch keeps its results (the whole batch used to fail,
/// and every job in it ran again).
#[tokio::test]
async fn a_link_to_a_target_another_link_holds_fails_only_its_own_job() {
    let app = spawn_planner().await;
    let app_id = app_id(&app, "adopted-twice").await;
    let conn = &app.db;
    let mut theirs = JobWrites::default();
    theirs.link(link(
        &app_id,
        ResourceKind::User,
        "u-other",
        Some("t-shared"),
        "linked",
    ));
    finisher::write_staged(conn, &[&theirs])
        .await
        .expect("the other instance's link");
    queue::enqueue(
        conn,
        &[
            job(&app_id, ResourceKind::User, "u1", Lane::Normal),
            job(&app_id, ResourceKind::User, "u2", Lane::Normal),
        ],
    )
    .await
    .expect("enqueue");
    let claimed = queue::claim(conn, "me", queue::now_ms(), 10)
        .await
        .expect("claim");
    let id_of = |resource: &str| {
        claimed
            .iter()
            .find(|j| j.resource_id == resource)
            .map(|j| j.id)
            .unwrap_or_default()
    };
    let mut adopts_theirs = JobWrites::default();
    adopts_theirs.link(link(
        &app_id,
        ResourceKind::User,
        "u1",
        Some("t-shared"),
        "linked",
    ));
    adopts_theirs.enqueue([job(&app_id, ResourceKind::Group, "staff", Lane::Normal)]);
    let mut creates = JobWrites::default();
    creates.link(link(
        &app_id,
        ResourceKind::User,
        "u2",
        Some("t2"),
        "linked",
    ));
    creates.enqueue([job(&app_id, ResourceKind::Group, "crew", Lane::Normal)]);
    let logged = roster::store::entity::operation::ActiveModel {
        app_id: sea_orm::Set(app_id.clone()),
        job_id: sea_orm::Set(Some(id_of("u1"))),
        resource_kind: sea_orm::Set("user".into()),
        resource_id: sea_orm::Set("u1".into()),
        operation: sea_orm::Set("update".into()),
        method: sea_orm::Set("PATCH".into()),
        path: sea_orm::Set("/Users/t-shared".into()),
        status: sea_orm::Set(Some(200)),
        duration_ms: sea_orm::Set(1),
        attempt: sea_orm::Set(1),
        outcome: sea_orm::Set("succeeded".into()),
        created_at: sea_orm::Set(chrono::Utc::now()),
        ..Default::default()
    };
    let mut first = finished(id_of("u1"), JobEnd::Complete, adopts_theirs);
    first.operations.push(logged);
    let batch = [first, finished(id_of("u2"), JobEnd::Complete, creates)];

    let outcome = finisher::write_batch(&Db::new(app.db.clone()), "me", &batch)
        .await
        .expect("the batch is written");
    assert_eq!(outcome.written, 2);
    assert_eq!(outcome.conflicts, 1);
    let ends = app
        .rows(&format!(
            "SELECT resource_id, state, last_error FROM job \
             WHERE app_id = '{app_id}' AND resource_kind = 'user' ORDER BY resource_id"
        ))
        .await;
    assert_eq!(ends[0]["resource_id"], "u1");
    assert_eq!(ends[0]["state"], "dead", "{ends:?}");
    let error = ends[0]["last_error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("conflict:") && error.contains("t-shared") && error.contains("u-other"),
        "{error}"
    );
    assert_eq!(ends[1]["resource_id"], "u2");
    assert_eq!(ends[1]["state"], "done", "{ends:?}");
    let links: Vec<(String, String)> = link_rows(&app, &app_id)
        .await
        .iter()
        .map(|l| {
            (
                l["resource_id"].as_str().unwrap_or_default().to_owned(),
                l["target_id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        links,
        [
            ("u-other".to_owned(), "t-shared".to_owned()),
            ("u2".to_owned(), "t2".to_owned())
        ],
        "the other identity keeps its account; u1 has no link"
    );
    let groups: Vec<String> = jobs(&app, &app_id)
        .await
        .iter()
        .filter(|j| j["resource_kind"] == "group")
        .filter_map(|j| j["resource_id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(groups, ["crew"], "only u2's follow-up job");
    let log = app
        .rows(&format!(
            "SELECT resource_id FROM operation WHERE app_id = '{app_id}'"
        ))
        .await;
    assert_eq!(log.len(), 1, "u1's calls stay in the log: {log:?}");
}

/// Holds the PATCH calls through a relay until opened; other calls pass.
#[derive(Default)]
struct HoldPatches(crate::helpers::Hold);

impl crate::helpers::Tap for HoldPatches {
    async fn request(&self, call: &mut crate::helpers::RelayedCall) {
        if call.method == "PATCH" {
            crate::helpers::Tap::request(&self.0, call).await;
        }
    }
}

/// The same index on the provision-on-demand path: another instance links the account while
/// this delivery adopts it (between its look-up and its commit). The answer says so — the
/// conflict naming the other identity, no operation — instead of a 500 that lost the calls'
/// log; the person's link is not written, the calls made are in the provisioning log, and the
/// job is closed.
#[tokio::test]
async fn provision_on_demand_adopting_an_account_another_instance_just_linked_reports_the_conflict()
{
    use std::sync::atomic::Ordering;
    let app = spawn_planner().await;
    let target = roster::dev_target::spawn(roster::dev_target::DevTargetArgs {
        token: Some("target-token".into()),
        ..roster::dev_target::DevTargetArgs::default()
    })
    .await
    .expect("dev-target");
    let by_hand = target
        .insert(
            roster::dev_target::Kind::User,
            json!({"schemas": [roster::scim::schemas::USER], "userName": "pod1@example.com",
                   "name": {"givenName": "By", "familyName": "Hand"}, "active": true}),
        )
        .expect("an account made by hand");
    let account = by_hand["id"].as_str().unwrap_or_default().to_owned();
    let hold = Arc::new(HoldPatches::default());
    let base_url = crate::helpers::relay(&target.base_url(), hold.clone()).await;
    let created = app
        .create_app(&app_body(
            "adopted-on-demand",
            json!({"base_url": base_url, "mappings": [
                {"target": "userName", "source": "email"},
                {"target": "name.givenName", "source": "given_name"},
                {"target": "name.familyName", "source": "family_name"}]}),
        ))
        .await;
    let app_id = created["id"].as_str().unwrap_or_default().to_owned();
    app.post_event(&crate::helpers::joiner(
        "pod1",
        "POD1",
        "2026-11-01T09:00:00Z",
        json!({"given_name": "Pat", "family_name": "Doe"}),
    ))
    .await;
    let person = app.get("/api/v1/identities/POD1").await.expect(200)["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let url = format!("/api/v1/apps/{app_id}/provision-on-demand");
    let asked = json!({"identity_id": "POD1"});
    let on_demand = app.post(&url, &asked);
    let meanwhile = async {
        // The delivery found the account, checked nobody holds it, and now PATCHes it.
        while hold.0.arrived.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let mut theirs = JobWrites::default();
        theirs.link(link(
            &app_id,
            ResourceKind::User,
            "u-elsewhere",
            Some(&account),
            "linked",
        ));
        finisher::write_staged(&app.db, &[&theirs])
            .await
            .expect("the other instance's link");
        hold.0.open();
    };
    let (answer, ()) = tokio::join!(on_demand, meanwhile);
    let body = answer.expect(200);
    assert_eq!(body["operation"], Value::Null, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("conflict") && error.contains("u-elsewhere"),
        "{body}"
    );
    let links = app
        .rows(&format!(
            "SELECT target_id FROM link WHERE resource_id = '{person}'"
        ))
        .await;
    assert!(
        links
            .iter()
            .all(|l| l["target_id"].as_str() != Some(account.as_str())),
        "{links:?}"
    );
    let logged = app
        .rows(&format!(
            "SELECT method FROM operation WHERE app_id = '{app_id}' AND resource_id = '{person}'"
        ))
        .await;
    assert!(
        logged.iter().any(|r| r["method"] == "PATCH"),
        "the calls made are logged: {logged:?}"
    );
    let open = app
        .rows(&format!(
            "SELECT id FROM job WHERE app_id = '{app_id}' AND resource_id = '{person}' \
             AND state = 'running'"
        ))
        .await;
    assert!(open.is_empty(), "the delivery's job is closed: {open:?}");
}
