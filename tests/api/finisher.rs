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
