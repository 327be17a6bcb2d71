//! The delivery engine's own guarantees, against a scripted stub target: a job acts only while
//! it holds its lease, renewals never wait on a probe, a probe never undoes an operator's
//! pause, one app's backlog never holds up another, one failed merged look-up is one failure,
//! and a deleted app's runtime is forgotten.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use poem::http::StatusCode;
use poem::{Request, Response};
use roster::store::queue;
use sea_orm::{ConnectionTrait, Statement};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::helpers::{
    ADMIN, RelayedCall, Tap, TestApp, app_body, dev_target, empty_list, event, eventually, joiner,
    relay, scim_answer, scim_error, spawn_app_with, stub_service_provider_config,
};

const TOKEN: &str = "target-token";

/// A SCIM target scripted per test. Every user look-up finds nothing; a POST creates.
struct Stub {
    /// Hold `/ServiceProviderConfig` (a probe) until `open`.
    hold_config: AtomicBool,
    /// Hold every `/Users` call until `open`.
    hold_users: AtomicBool,
    open: watch::Sender<bool>,
    /// Answer every `/Users` call 429 with this `Retry-After` (seconds).
    throttle: Option<u64>,
    /// Every `/Users` call takes this long.
    latency: Duration,
    /// A look-up of several values (an `or` filter) takes this long.
    or_latency: Duration,
    config_reads: AtomicUsize,
    user_calls: AtomicUsize,
    or_lookups: AtomicUsize,
    posts: AtomicUsize,
    /// Answer every POST 500 (a target failing its writes).
    fail_posts: AtomicBool,
    /// `/Users` calls under way now, and the most ever under way at once.
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// When each `/Users` call arrived.
    arrivals: std::sync::Mutex<Vec<Instant>>,
}

impl Default for Stub {
    fn default() -> Self {
        Self {
            hold_config: AtomicBool::new(false),
            hold_users: AtomicBool::new(false),
            open: watch::channel(false).0,
            throttle: None,
            latency: Duration::ZERO,
            or_latency: Duration::ZERO,
            config_reads: AtomicUsize::new(0),
            user_calls: AtomicUsize::new(0),
            or_lookups: AtomicUsize::new(0),
            posts: AtomicUsize::new(0),
            fail_posts: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            arrivals: std::sync::Mutex::new(Vec::new()),
        }
    }
}

fn scim(status: StatusCode, body: &Value) -> Response {
    scim_answer(status.as_u16(), body)
}

impl Stub {
    async fn wait_open(&self) {
        let mut open = self.open.subscribe();
        let _ = open.wait_for(|o| *o).await;
    }

    async fn answer(&self, req: Request, body: Vec<u8>) -> Response {
        let path = req.uri().path().to_owned();
        if path.ends_with("/ServiceProviderConfig") {
            self.config_reads.fetch_add(1, Ordering::SeqCst);
            if self.hold_config.load(Ordering::SeqCst) {
                self.wait_open().await;
            }
            return scim(StatusCode::OK, &stub_service_provider_config());
        }
        if !path.contains("/Users") {
            return scim(StatusCode::NOT_FOUND, &json!({"status": "404"}));
        }
        self.user_calls.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut arrivals) = self.arrivals.lock() {
            arrivals.push(Instant::now());
        }
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let answer = self.answer_users(req, body).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        answer
    }

    async fn answer_users(&self, req: Request, body: Vec<u8>) -> Response {
        if self.hold_users.load(Ordering::SeqCst) {
            self.wait_open().await;
        }
        if let Some(seconds) = self.throttle {
            return Response::builder()
                .status(StatusCode::TOO_MANY_REQUESTS)
                .header("Retry-After", seconds.to_string())
                .content_type("application/scim+json")
                .body(scim_error(429).to_string());
        }
        tokio::time::sleep(self.latency).await;
        if req.method() == poem::http::Method::POST {
            if self.fail_posts.load(Ordering::SeqCst) {
                return scim(StatusCode::INTERNAL_SERVER_ERROR, &scim_error(500));
            }
            let n = self.posts.fetch_add(1, Ordering::SeqCst);
            let mut user: Value = serde_json::from_slice(&body).unwrap_or_default();
            user["id"] = json!(format!("u{n}"));
            return scim(StatusCode::CREATED, &user);
        }
        let query = req.uri().query().unwrap_or_default();
        if query.contains("%20or%20") || query.contains("+or+") {
            self.or_lookups.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.or_latency).await;
        }
        scim(StatusCode::OK, &empty_list())
    }
}

/// Serves `stub` on 127.0.0.1 (port 0); returns its SCIM base URL.
async fn serve(stub: Arc<Stub>) -> String {
    let endpoint = poem::endpoint::make(move |req: Request| {
        let stub = stub.clone();
        async move {
            let mut req = req;
            let body = req.take_body().into_vec().await.unwrap_or_default();
            stub.answer(req, body).await
        }
    });
    format!("http://{}/scim/v2", crate::helpers::serve(endpoint).await)
}

async fn create_app(app: &TestApp, name: &str, base_url: &str, extra: Value) -> String {
    let mut body = app_body(
        name,
        json!({"base_url": base_url, "auth": {"type": "bearer", "token": TOKEN},
               "rate_limit": {"per_second": 1000, "burst": 1000}, "max_concurrency": 4}),
    );
    crate::helpers::merge(&mut body, &extra);
    app.create_app(&body).await["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn execute(app: &TestApp, sql: &str, values: Vec<sea_orm::Value>) {
    let backend = app.db.get_database_backend();
    let sql = if backend == sea_orm::DbBackend::Sqlite {
        // Numbered in the text, bound in order.
        let mut out = String::new();
        let mut rest = sql;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            out.push('?');
            rest = rest[i + 1..].trim_start_matches(|c: char| c.is_ascii_digit());
        }
        out.push_str(rest);
        out
    } else {
        sql.to_owned()
    };
    app.db
        .execute_raw(Statement::from_sql_and_values(backend, sql, values))
        .await
        .expect("statement");
}

/// Quarantines the app as the engine would, with a probe due at once.
async fn quarantine(app: &TestApp, app_id: &str) {
    execute(
        app,
        "UPDATE app SET state = 'quarantined', state_reason = 'test', updated_at = $1 WHERE id = $2",
        vec![
            (chrono::Utc::now() - chrono::Duration::hours(1)).into(),
            app_id.into(),
        ],
    )
    .await;
}

async fn app_state(app: &TestApp, app_id: &str) -> String {
    app.get(&format!("/api/v1/apps/{app_id}")).await.expect(200)["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn wait_count(what: &str, counter: &AtomicUsize, at_least: usize) {
    eventually(what, Duration::from_secs(20), || async {
        (counter.load(Ordering::SeqCst) >= at_least).then_some(())
    })
    .await;
}

/// Issue 20 B8: a successful probe lifts a quarantine, never an operator's pause made while the
/// probe was under way.
#[tokio::test]
async fn a_probe_never_resumes_an_app_an_operator_paused_meanwhile() {
    let app = spawn_app_with(|_| {}).await;
    let stub = Arc::new(Stub::default());
    let base = serve(stub.clone()).await;
    let app_id = create_app(&app, "probed", &base, json!({})).await;
    // Another app, quarantined once the held probe is let go: the engine probes one app after
    // another, so its probe's read proves the held probe has ended, whatever it did.
    let marker = Arc::new(Stub::default());
    let marker_id = create_app(&app, "marker", &serve(marker.clone()).await, json!({})).await;
    marker.open.send_replace(true);
    stub.hold_config.store(true, Ordering::SeqCst);
    quarantine(&app, &app_id).await;
    wait_count("the probe", &stub.config_reads, 1).await;
    app.post(&format!("/api/v1/apps/{app_id}/pause"), &json!({}))
        .await
        .expect(200);
    let marker_reads = marker.config_reads.load(Ordering::SeqCst);
    stub.open.send_replace(true);
    quarantine(&app, &marker_id).await;
    wait_count(
        "the next app's probe, after the held one ended",
        &marker.config_reads,
        marker_reads + 1,
    )
    .await;
    assert_eq!(app_state(&app, &app_id).await, "paused");
    let status = app.get(&format!("/api/v1/apps/{app_id}")).await.expect(200);
    assert_eq!(status["state_reason"], "paused through the API", "{status}");
}

/// Jobs claimed together share one runtime of their app: one client (one discovery read, one
/// OAuth token), one limiter's slots and one look-up batcher, whose matching turns and adoption
/// claims must hold across all of them. Each job used to build its own when several asked at
/// once (after a start, or a change of the app's settings): one discovery read each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_claimed_together_share_one_runtime_of_their_app() {
    let app = spawn_app_with(|_| {}).await;
    let stub = Arc::new(Stub::default());
    let base = serve(stub.clone()).await;
    let app_id = create_app(&app, "shared", &base, json!({})).await;
    app.post(&format!("/api/v1/apps/{app_id}/pause"), &json!({}))
        .await
        .expect(200);
    const JOINERS: usize = 12;
    for i in 0..JOINERS {
        app.post_event(&joiner(
            &format!("shared-{i}"),
            &format!("S{i}"),
            "2026-01-01T00:00:00Z",
            json!({}),
        ))
        .await;
    }
    // Every job is claimed at once when the app resumes; each needs the target's capabilities
    // for its look-up, and the first read of them is held.
    stub.hold_config.store(true, Ordering::SeqCst);
    let reads_before = stub.config_reads.load(Ordering::SeqCst);
    app.post(&format!("/api/v1/apps/{app_id}/resume"), &json!({}))
        .await
        .expect(200);
    wait_count("the discovery read", &stub.config_reads, reads_before + 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reads = stub.config_reads.load(Ordering::SeqCst) - reads_before;
    stub.open.send_replace(true);
    wait_count("every create", &stub.posts, JOINERS).await;
    assert_eq!(reads, 1, "one client read the capabilities for every job");
}

/// Issue 20 B6: when another instance holds a job's lease, the worker that lost it stops (no
/// further call) and its end and writes change nothing.
#[tokio::test]
async fn a_worker_that_lost_its_lease_stops_and_changes_nothing() {
    let app = spawn_app_with(|_| {}).await;
    let stub = Arc::new(Stub::default());
    stub.hold_users.store(true, Ordering::SeqCst);
    let base = serve(stub.clone()).await;
    let app_id = create_app(&app, "lost", &base, json!({})).await;
    app.post_event(&joiner("l1", "L1", "2026-11-01T09:00:00Z", json!({})))
        .await;
    wait_count("the look-up", &stub.user_calls, 1).await;
    // Another instance took the job over (its lease had expired and was reclaimed).
    let until = queue::now_ms() + 600_000;
    execute(
        &app,
        "UPDATE job SET lease_owner = 'another-instance', lease_until = $1 \
         WHERE app_id = $2 AND state = 'running'",
        vec![until.into(), app_id.as_str().into()],
    )
    .await;
    // A renewal (every 2 s) finds the lease gone.
    tokio::time::sleep(Duration::from_secs(5)).await;
    stub.open.send_replace(true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        stub.posts.load(Ordering::SeqCst),
        0,
        "no create after the lease was lost"
    );
    let jobs = app
        .rows(&format!(
            "SELECT state, lease_owner, lease_until FROM job WHERE app_id = '{app_id}'"
        ))
        .await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0]["state"], "running", "{jobs:?}");
    assert_eq!(jobs[0]["lease_owner"], "another-instance", "{jobs:?}");
    assert_eq!(jobs[0]["lease_until"], json!(until), "{jobs:?}");
    let links = app
        .rows(&format!("SELECT id FROM link WHERE app_id = '{app_id}'"))
        .await;
    assert!(links.is_empty(), "{links:?}");
}

/// Issue 20 B6: a probe of a quarantined app that waits out a long `Retry-After` does not stop
/// the renewal of other jobs' leases.
#[tokio::test]
async fn leases_are_renewed_while_a_probe_waits_out_a_retry_after() {
    let app = spawn_app_with(|_| {}).await;
    let throttled = Arc::new(Stub {
        throttle: Some(120),
        ..Stub::default()
    });
    let slow = Arc::new(Stub::default());
    slow.hold_users.store(true, Ordering::SeqCst);
    let throttled_id = create_app(
        &app,
        "throttled",
        &serve(throttled.clone()).await,
        json!({}),
    )
    .await;
    let slow_id = create_app(&app, "slow", &serve(slow.clone()).await, json!({})).await;
    app.post_event(&joiner("r1", "R1", "2026-11-01T09:00:00Z", json!({})))
        .await;
    wait_count("the throttled call", &throttled.user_calls, 1).await;
    wait_count("the held call", &slow.user_calls, 1).await;
    quarantine(&app, &throttled_id).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let jobs = app
        .rows(&format!(
            "SELECT lease_until FROM job WHERE app_id = '{slow_id}' AND state = 'running'"
        ))
        .await;
    slow.open.send_replace(true);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let left = jobs[0]["lease_until"].as_i64().unwrap_or_default() - queue::now_ms();
    assert!(
        left > queue::LEASE_MS - 5_000,
        "the lease was not renewed: {left} ms left"
    );
}

/// Issue 20 D15: jobs waiting for a slow app's slot hold none of the engine's workers; another
/// app's jobs are delivered at once.
#[tokio::test]
async fn a_slow_apps_backlog_never_holds_up_another_app() {
    let app = spawn_app_with(|c| c.workers = 2).await;
    let slow = Arc::new(Stub {
        latency: Duration::from_millis(1000),
        ..Stub::default()
    });
    let slow_id = create_app(
        &app,
        "backlog",
        &serve(slow.clone()).await,
        json!({"max_concurrency": 1, "rate_limit": {"per_second": 1, "burst": 1},
               "scope": {"email_domains": ["slow.example"]}}),
    )
    .await;
    let fast = dev_target(TOKEN).await;
    create_app(&app, "prompt", &fast.base_url(), json!({})).await;
    let backlog: Vec<Value> = (0..30)
        .map(|i| {
            joiner(
                &format!("s{i}"),
                &format!("S{i}"),
                "2026-11-01T09:00:00Z",
                json!({"email": format!("s{i}@slow.example")}),
            )
        })
        .collect();
    app.post("/api/v1/events:batch", &json!({"events": backlog}))
        .await
        .expect(202);
    wait_count("the backlog under way", &slow.user_calls, 1).await;
    let prompt: Vec<Value> = (0..3)
        .map(|i| {
            joiner(
                &format!("p{i}"),
                &format!("P{i}"),
                "2026-11-01T09:00:00Z",
                json!({}),
            )
        })
        .collect();
    app.post("/api/v1/events:batch", &json!({"events": prompt}))
        .await
        .expect(202);
    eventually("the other app's users", Duration::from_secs(8), || async {
        (fast.stats()["users"] == 3).then_some(())
    })
    .await;
    // Counted, not timed: the other app's accounts came while the slow backlog still waited.
    let pending = app
        .rows(&format!(
            "SELECT id FROM job WHERE app_id = '{slow_id}' AND state IN ('pending', 'running')"
        ))
        .await;
    assert!(
        pending.len() > 20,
        "the backlog is still there: {}",
        pending.len()
    );
}

/// Issue 20 D14: a merged look-up that times out is one failed call towards quarantine, not
/// one per job it served, and its jobs look up alone instead of spending an attempt.
#[tokio::test]
async fn a_merged_look_up_that_times_out_is_one_failure_and_falls_back() {
    let app = spawn_app_with(|_| {}).await;
    let stub = Arc::new(Stub {
        latency: Duration::from_millis(50),
        or_latency: Duration::from_secs(5),
        ..Stub::default()
    });
    let app_id = create_app(
        &app,
        "merging",
        &serve(stub.clone()).await,
        // Listings prove nothing here: the look-ups are merged filters, not one kept listing.
        json!({"max_concurrency": 16, "timeout_ms": 500,
               "quirks": {"user_listings_complete": false}}),
    )
    .await;
    let joiners: Vec<Value> = (0..40)
        .map(|i| {
            joiner(
                &format!("m{i}"),
                &format!("M{i}"),
                "2026-11-01T09:00:00Z",
                json!({}),
            )
        })
        .collect();
    app.post("/api/v1/events:batch", &json!({"events": joiners}))
        .await
        .expect(202);
    app.settled(&app_id, Duration::from_secs(60)).await;
    assert!(
        stub.or_lookups.load(Ordering::SeqCst) > 0,
        "look-ups were merged"
    );
    assert_eq!(app_state(&app, &app_id).await, "active");
    assert_eq!(stub.posts.load(Ordering::SeqCst), 40);
    let retried = app
        .rows(&format!(
            "SELECT id, attempts, last_error FROM job WHERE app_id = '{app_id}' AND attempts > 1"
        ))
        .await;
    assert!(
        retried.is_empty(),
        "no attempt spent on the merged look-up: {retried:?}"
    );
}

/// Issue 20 D18: what the engine keeps per app goes with the app, the deletion guard's counts
/// and check locks included (a leaver passes the guard first).
#[tokio::test]
async fn a_deleted_apps_runtime_is_forgotten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let probe = spawn_app_with(|c| c.run_engine = false).await;
    let mut config = probe.config.clone();
    config.run_engine = true;
    drop(probe);
    if !config.database_url.starts_with("postgres") {
        config.database_url = format!("sqlite://{}?mode=rwc", dir.path().join("r.db").display());
    }
    let (roster, _) = roster::startup::build(config).await.expect("build");
    let delivery = roster.delivery();
    let server = roster::startup::serve(roster, "127.0.0.1:0")
        .await
        .expect("serve");
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    let target = dev_target(TOKEN).await;
    let created: Value = http
        .post(format!("{base}/api/v1/apps"))
        .bearer_auth(ADMIN)
        .json(&app_body(
            "doomed",
            json!({"base_url": target.base_url(), "auth": {"type": "bearer", "token": TOKEN},
                   "deletion_guard": {"on_events": true}}),
        ))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let app_id = created["id"].as_str().unwrap_or_default().to_owned();
    let send = |e: Value| {
        let (http, base) = (&http, &base);
        async move {
            let sent = http
                .post(format!("{base}/api/v1/events"))
                .bearer_auth(ADMIN)
                .json(&e)
                .send()
                .await
                .expect("event");
            assert_eq!(sent.status(), StatusCode::ACCEPTED);
        }
    };
    send(joiner("d1", "D1", "2026-11-01T09:00:00Z", json!({}))).await;
    eventually("the delivery", Duration::from_secs(20), || async {
        (target.stats()["users"] == 1).then_some(())
    })
    .await;
    send(event(
        "d2",
        "leaver",
        "D1",
        "2026-11-02T09:00:00Z",
        json!({}),
    ))
    .await;
    eventually(
        "the leaver deactivated",
        Duration::from_secs(20),
        || async {
            let users = target.users_snapshot();
            (users.len() == 1 && users.iter().all(|u| u["active"] == false)).then_some(())
        },
    )
    .await;
    assert_eq!(delivery.apps_held(), (1, 1, 1, 1));
    let deleted = http
        .delete(format!("{base}/api/v1/apps/{app_id}"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("delete");
    assert!(deleted.status().is_success(), "{}", deleted.status());
    eventually("the app forgotten", Duration::from_secs(15), || async {
        (delivery.apps_held() == (0, 0, 0, 0)).then_some(())
    })
    .await;
    server.stop().await;
}

/// `per_second`, `burst` and `max_concurrency` hold against a target that never throttles:
/// no one-second window sees more calls than the bucket allows (`burst + per_second`), and no
/// more calls are under way at once than `max_concurrency`. Unlimited, the engine's four
/// workers against this 50 ms target would make up to four calls at once and ~80 a second.
#[tokio::test]
async fn per_second_and_max_concurrency_hold_against_a_target_that_never_throttles() {
    let app = spawn_app_with(|c| c.workers = 4).await;
    let stub = Arc::new(Stub {
        latency: Duration::from_millis(50),
        ..Stub::default()
    });
    let (per_second, burst, concurrency) = (5_usize, 2_usize, 2_usize);
    let app_id = create_app(
        &app,
        "cov-limited",
        &serve(stub.clone()).await,
        json!({"max_concurrency": concurrency,
               "rate_limit": {"per_second": per_second, "burst": burst}}),
    )
    .await;
    let joiners: Vec<Value> = (0..20)
        .map(|i| {
            joiner(
                &format!("lim{i}"),
                &format!("LIM{i}"),
                "2026-11-01T09:00:00Z",
                json!({}),
            )
        })
        .collect();
    app.post("/api/v1/events:batch", &json!({"events": joiners}))
        .await
        .expect(202);
    wait_count("every account created", &stub.posts, 20).await;
    app.settled(&app_id, Duration::from_secs(30)).await;
    let arrivals = stub.arrivals.lock().map(|a| a.clone()).unwrap_or_default();
    assert!(arrivals.len() >= 20, "{} calls", arrivals.len());
    let busiest = arrivals
        .iter()
        .map(|start| {
            arrivals
                .iter()
                .filter(|t| **t >= *start && t.duration_since(*start) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or_default();
    // One call of slack: calls are timed on arrival, and a late arrival can crowd a window.
    assert!(
        busiest <= burst + per_second + 1,
        "{busiest} calls in one second, above burst {burst} + {per_second}/s"
    );
    let most = stub.max_in_flight.load(Ordering::SeqCst);
    assert!(
        (1..=concurrency).contains(&most),
        "{most} calls at once, above max_concurrency {concurrency}"
    );
}

/// More than half of an app's last calls failing quarantines it (with the ratio as the
/// reason), while another app keeps delivering the same people.
#[tokio::test]
async fn a_failure_ratio_above_half_quarantines_the_app_and_not_another() {
    // No probe while the test looks: the stub's configuration read would lift the quarantine.
    let app = spawn_app_with(|c| c.quarantine_probe = Duration::from_secs(600)).await;
    let failing = Arc::new(Stub::default());
    failing.fail_posts.store(true, Ordering::SeqCst);
    let failing_id = create_app(
        &app,
        "cov-failing",
        &serve(failing.clone()).await,
        json!({}),
    )
    .await;
    let healthy = dev_target(TOKEN).await;
    create_app(&app, "cov-healthy", &healthy.base_url(), json!({})).await;
    let joiners: Vec<Value> = (0..25)
        .map(|i| {
            joiner(
                &format!("fr{i}"),
                &format!("FR{i}"),
                "2026-11-01T09:00:00Z",
                json!({}),
            )
        })
        .collect();
    app.post("/api/v1/events:batch", &json!({"events": joiners}))
        .await
        .expect(202);
    let status = app
        .get_until(
            "the quarantine",
            &format!("/api/v1/apps/{failing_id}"),
            Duration::from_secs(30),
            |s| s["state"] == "quarantined",
        )
        .await;
    assert!(
        status.to_string().contains("calls failed"),
        "the ratio is the reason: {status}"
    );
    assert_eq!(failing.posts.load(Ordering::SeqCst), 0, "nothing created");
    eventually(
        "the other app's accounts",
        Duration::from_secs(30),
        || async { (healthy.stats()["users"] == 25).then_some(()) },
    )
    .await;
    // Quarantined, the app makes no more calls once its jobs under way have ended; the other
    // app still delivers.
    eventually(
        "no job of the quarantined app running",
        Duration::from_secs(20),
        || async {
            app.rows(&format!(
                "SELECT id FROM job WHERE app_id = '{failing_id}' AND state = 'running'"
            ))
            .await
            .is_empty()
            .then_some(())
        },
    )
    .await;
    let calls = failing.user_calls.load(Ordering::SeqCst);
    app.post_event(&joiner("fr-late", "FRL", "2026-11-01T10:00:00Z", json!({})))
        .await;
    eventually(
        "the late joiner delivered",
        Duration::from_secs(20),
        || async { (healthy.stats()["users"] == 26).then_some(()) },
    )
    .await;
    assert_eq!(app_state(&app, &failing_id).await, "quarantined");
    assert_eq!(
        failing.user_calls.load(Ordering::SeqCst),
        calls,
        "no call while quarantined"
    );
}

/// One throttled app (every call answered 429 with a long `Retry-After`) and one hanging app
/// (no call ever answered) do not slow a third: its joiners are all delivered while the other
/// two are still stuck, even when the hanging app's `max_concurrency` matches the engine's
/// worker count.
#[tokio::test]
async fn a_throttled_and_a_hanging_app_do_not_slow_another() {
    let workers = 4;
    let app = spawn_app_with(|c| c.workers = workers).await;
    let throttled = Arc::new(Stub {
        throttle: Some(60),
        ..Stub::default()
    });
    let hanging = Arc::new(Stub::default());
    hanging.hold_users.store(true, Ordering::SeqCst);
    create_app(
        &app,
        "cov-throttled",
        &serve(throttled.clone()).await,
        json!({"max_concurrency": workers}),
    )
    .await;
    create_app(
        &app,
        "cov-hanging",
        &serve(hanging.clone()).await,
        json!({"max_concurrency": workers, "timeout_ms": 300_000}),
    )
    .await;
    let healthy = dev_target(TOKEN).await;
    create_app(&app, "cov-prompt", &healthy.base_url(), json!({})).await;
    let joiners: Vec<Value> = (0..10)
        .map(|i| {
            joiner(
                &format!("iso{i}"),
                &format!("ISO{i}"),
                "2026-11-01T09:00:00Z",
                json!({}),
            )
        })
        .collect();
    app.post("/api/v1/events:batch", &json!({"events": joiners}))
        .await
        .expect(202);
    wait_count("the throttled app called", &throttled.user_calls, 1).await;
    wait_count("the hanging app called", &hanging.user_calls, 1).await;
    eventually(
        "the third app's accounts",
        Duration::from_secs(20),
        || async { (healthy.stats()["users"] == 10).then_some(()) },
    )
    .await;
    // The other two are still stuck: nothing created there.
    assert_eq!(throttled.posts.load(Ordering::SeqCst), 0);
    assert_eq!(hanging.posts.load(Ordering::SeqCst), 0);
    let stuck = hanging.in_flight.load(Ordering::SeqCst);
    assert!(stuck >= 1, "still hanging");
    hanging.open.send_replace(true);
}

/// The leaver's account ends deactivated (not merely written to).
fn assert_deactivated(target: &roster::dev_target::DevTarget, leaver_id: &str) {
    let account = target.user(leaver_id).unwrap_or_default();
    assert_eq!(
        account["active"],
        json!(false),
        "the leaver's account: {account}"
    );
}

/// A dev-target behind a relay that records every `/Users` call in the order the target got
/// it: (when, method, path), and how many were under way at once.
struct Recorder {
    /// The dev-target's address, without the SCIM base path.
    target: String,
    calls: std::sync::Mutex<Vec<(Instant, String, String)>>,
    /// `/Users` calls under way now (relayed, not yet answered), and the most ever at once.
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    /// How many `/Users` calls arrived: subscribers see each arrival.
    arrived: watch::Sender<usize>,
}

impl Recorder {
    /// A recorder in front of `target`, relayed on 127.0.0.1; with its SCIM base URL.
    async fn start(target: &roster::dev_target::DevTarget) -> (Arc<Self>, String) {
        let recorder = Arc::new(Self {
            target: target.base_url().trim_end_matches("/scim/v2").to_owned(),
            calls: std::sync::Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            most_in_flight: AtomicUsize::new(0),
            arrived: watch::channel(0).0,
        });
        let proxy = serve_recorder(recorder.clone()).await;
        (recorder, format!("{proxy}/scim/v2"))
    }

    /// Waits up to `limit` for the first call to `path` that is not a GET (the leaver's
    /// deactivation); its index in [`Self::calls`].
    async fn first_write_to(&self, path: &str, limit: Duration) -> usize {
        eventually("the leaver deactivated", limit, || async {
            self.calls()
                .iter()
                .position(|(_, method, p)| p == path && method != "GET")
        })
        .await
    }

    fn calls(&self) -> Vec<(Instant, String, String)> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// The most calls any one-second window (from a call's arrival) holds.
    fn busiest_second(&self) -> usize {
        let calls = self.calls();
        (0..calls.len())
            .map(|i| {
                calls[i..]
                    .iter()
                    .take_while(|(t, _, _)| *t < calls[i].0 + Duration::from_secs(1))
                    .count()
            })
            .max()
            .unwrap_or(0)
    }
}

impl Tap for Recorder {
    async fn request(&self, call: &mut RelayedCall) {
        if !call.path.contains("/Users") {
            return;
        }
        if let Ok(mut calls) = self.calls.lock() {
            calls.push((Instant::now(), call.method.clone(), call.path.clone()));
        }
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        self.arrived.send_modify(|n| *n += 1);
    }

    fn answer(&self, call: &RelayedCall, _body: &mut Vec<u8>) {
        if call.path.contains("/Users") {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Relays to `recorder`'s target through 127.0.0.1 (port 0); returns the relay's address,
/// without the SCIM base path.
async fn serve_recorder(recorder: Arc<Recorder>) -> String {
    let target = recorder.target.clone();
    relay(&target, recorder)
        .await
        .trim_end_matches('/')
        .to_owned()
}

/// Workers are the bottleneck (one worker; a slow target, not throttled): every claim of
/// the process is taken by joiners waiting for the worker. A leaver is claimed all the same,
/// takes a worker kept for leavers, and its deactivate goes out while the joiners ahead of it
/// still wait: at most the calls under way when it arrived come first.
#[tokio::test]
async fn a_leaver_never_waits_in_line_for_a_worker_behind_joiners() {
    let app = spawn_app_with(|c| c.workers = 1).await;
    let target = roster::dev_target::spawn(roster::dev_target::DevTargetArgs {
        token: Some(TOKEN.into()),
        latency_ms: 150,
        ..Default::default()
    })
    .await
    .expect("dev-target");
    let (recorder, proxy) = Recorder::start(&target).await;
    let app_id = create_app(
        &app,
        "workers",
        &proxy,
        json!({"max_concurrency": 8, "rate_limit": {"per_second": 1000, "burst": 1000}}),
    )
    .await;
    app.post_event(&joiner("w0", "W0", "2026-11-01T09:00:00Z", json!({})))
        .await;
    app.settled(&app_id, Duration::from_secs(20)).await;
    let leaver_id = target
        .users_snapshot()
        .iter()
        .find(|u| u["userName"] == "w0")
        .and_then(|u| u["id"].as_str().map(str::to_owned))
        .expect("the leaver's account");
    let backlog: Vec<Value> = (0..30)
        .map(|i| {
            joiner(
                &format!("wb{i}"),
                &format!("WB{i}"),
                "2026-11-01T09:00:00Z",
                json!({}),
            )
        })
        .collect();
    app.post("/api/v1/events:batch", &json!({"events": backlog}))
        .await
        .expect(202);
    eventually("the backlog under way", Duration::from_secs(20), || async {
        (target.stats()["users"].as_u64().unwrap_or(0) >= 3).then_some(())
    })
    .await;
    let before = recorder.calls().len();
    app.post_event(&event(
        "w0-leaves",
        "leaver",
        "W0",
        "2026-11-01T10:00:00Z",
        json!({}),
    ))
    .await;
    let at = recorder
        .first_write_to(
            &format!("/scim/v2/Users/{leaver_id}"),
            Duration::from_secs(60),
        )
        .await;
    let overtaken_by = at.saturating_sub(before);
    let users_then = target.stats()["users"].as_u64().unwrap_or(0);
    eprintln!("leaver: {overtaken_by} calls ahead, {users_then} accounts by then");
    assert!(
        overtaken_by <= 1,
        "{overtaken_by} calls went to the target between the leaver's event and its \
         deactivate ({users_then} accounts by then)"
    );
    app.settled(&app_id, Duration::from_secs(60)).await;
    assert_eq!(target.stats()["users"], 31);
    assert_deactivated(&target, &leaver_id);
}

/// Issue 24: in an app limited to 5 calls/s and 2 jobs at a time, a leaver posted behind a
/// backlog of 100 joiners gets the app's next slot and next tokens: the deactivate reaches
/// the target within a few calls of the event, long before the backlog is done, and no
/// 1 s window on the target sees more calls than the app's limit allows.
#[tokio::test]
async fn a_leaver_overtakes_a_throttled_apps_backlog_within_its_limit() {
    const PER_SECOND: usize = 5;
    const BURST: usize = 5;
    let app = spawn_app_with(|c| c.workers = 8).await;
    let target = dev_target(TOKEN).await;
    let (recorder, proxy) = Recorder::start(&target).await;
    let app_id = create_app(
        &app,
        "throttled",
        &proxy,
        json!({"max_concurrency": 2,
               "rate_limit": {"per_second": PER_SECOND, "burst": BURST}}),
    )
    .await;

    // The leaver-to-be has an account first.
    app.post_event(&joiner("x0", "X0", "2026-11-01T09:00:00Z", json!({})))
        .await;
    app.settled(&app_id, Duration::from_secs(20)).await;
    let leaver_id = target
        .users_snapshot()
        .iter()
        .find(|u| u["userName"] == "x0")
        .and_then(|u| u["id"].as_str().map(str::to_owned))
        .expect("the leaver's account");

    let backlog: Vec<Value> = (0..100)
        .map(|i| {
            joiner(
                &format!("b{i}"),
                &format!("B{i}"),
                "2026-11-01T09:00:00Z",
                json!({}),
            )
        })
        .collect();
    app.post("/api/v1/events:batch", &json!({"events": backlog}))
        .await
        .expect(202);
    // The backlog is under way: its first accounts are on the target.
    eventually("the backlog under way", Duration::from_secs(20), || async {
        (target.stats()["users"].as_u64().unwrap_or(0) >= 4).then_some(())
    })
    .await;
    let before = recorder.calls().len();
    let posted = Instant::now();
    app.post_event(&event(
        "x0-leaves",
        "leaver",
        "X0",
        "2026-11-01T10:00:00Z",
        json!({}),
    ))
    .await;
    let leaver_path = format!("/scim/v2/Users/{leaver_id}");
    let at = recorder
        .first_write_to(&leaver_path, Duration::from_secs(60))
        .await;
    let took = recorder.calls()[at].0 - posted;
    let users_then = target.stats()["users"].as_u64().unwrap_or(0);
    // Calls the target got between the event and the deactivate: the leaver's call takes the
    // next free slot (the app's calls under way end within milliseconds; calls waiting for
    // tokens hold none) and the next token, so only calls let through before its job reached
    // the gate come first.
    let overtaken_by = at.saturating_sub(before);
    eprintln!("leaver: {overtaken_by} calls ahead, {took:?}, {users_then} accounts by then");
    for (t, method, path) in &recorder.calls()[before.saturating_sub(4)..=at] {
        eprintln!(
            "  {:?} {method} {path}",
            t.saturating_duration_since(posted)
        );
    }
    assert!(
        overtaken_by <= 3,
        "{overtaken_by} calls went to the target between the leaver's event and its deactivate \
         ({took:?}, {users_then} accounts by then)"
    );
    // Counts, not the wall clock: how long that took depends on the machine (the
    // `leaver-latency --throttled` bench measures it).
    assert!(users_then < 60, "{users_then} accounts before the leaver's");

    // The backlog completes, no 1 s window on the target holds more than the limit allows,
    // and never more calls are under way than `max_concurrency`.
    app.settled(&app_id, Duration::from_secs(120)).await;
    assert_eq!(target.stats()["users"], 101);
    assert_deactivated(&target, &leaver_id);
    let busiest = recorder.busiest_second();
    assert!(
        busiest <= BURST + PER_SECOND,
        "{busiest} calls in one second"
    );
    let most = recorder.most_in_flight.load(Ordering::SeqCst);
    assert!(most <= 2, "{most} calls under way at once");
}

/// Issue 24 at 1 call/s (`max_concurrency` 2): the leaver's deactivate is the app's very next
/// call. The leaver's event is posted just after a backlog call was let through, so the next
/// token is a second away; the leaver's job is claimed and at the gate long before, finds a
/// slot free (the backlog's jobs wait for their tokens holding none) and takes that token.
/// Before, both slots were held by backlog jobs between their look-up and their create, and
/// the leaver waited for one of them to make its next call (or two) first: 3 to 4 s.
#[tokio::test]
async fn at_one_call_a_second_a_leaver_makes_the_apps_next_call() {
    const PER_SECOND: usize = 1;
    const BURST: usize = 1;
    const CONCURRENCY: usize = 2;
    const BACKLOG: usize = 8;
    let app = spawn_app_with(|c| c.workers = 8).await;
    let target = dev_target(TOKEN).await;
    let (recorder, proxy) = Recorder::start(&target).await;
    let app_id = create_app(
        &app,
        "one-a-second",
        &proxy,
        json!({"max_concurrency": CONCURRENCY,
               "rate_limit": {"per_second": PER_SECOND, "burst": BURST}}),
    )
    .await;
    app.post_event(&joiner("y0", "Y0", "2026-11-01T09:00:00Z", json!({})))
        .await;
    app.settled(&app_id, Duration::from_secs(20)).await;
    let leaver_id = target
        .users_snapshot()
        .iter()
        .find(|u| u["userName"] == "y0")
        .and_then(|u| u["id"].as_str().map(str::to_owned))
        .expect("the leaver's account");
    let leaver_path = format!("/scim/v2/Users/{leaver_id}");

    let backlog: Vec<Value> = (0..BACKLOG)
        .map(|i| {
            joiner(
                &format!("c{i}"),
                &format!("C{i}"),
                "2026-11-01T09:00:00Z",
                json!({}),
            )
        })
        .collect();
    let before_backlog = recorder.calls().len();
    app.post("/api/v1/events:batch", &json!({"events": backlog}))
        .await
        .expect(202);
    // The backlog under way: two of its calls made, both slots taken by its jobs.
    eventually("the backlog under way", Duration::from_secs(20), || async {
        (recorder.calls().len() >= before_backlog + 2).then_some(())
    })
    .await;
    // Just after the backlog's next call: the next token is a second away.
    let mut arrived = recorder.arrived.subscribe();
    arrived.mark_unchanged();
    arrived.changed().await.expect("the recorder lives");
    let before = recorder.calls().len();
    app.post_event(&event(
        "y0-leaves",
        "leaver",
        "Y0",
        "2026-11-01T10:00:00Z",
        json!({}),
    ))
    .await;
    let at = recorder
        .first_write_to(&leaver_path, Duration::from_secs(30))
        .await;
    let calls = recorder.calls();
    let ahead: Vec<String> = calls[before..at]
        .iter()
        .map(|(_, method, path)| format!("{method} {path}"))
        .collect();
    assert!(
        ahead.is_empty(),
        "calls the target got between the leaver's event and its deactivate: {ahead:?}"
    );
    app.settled(&app_id, Duration::from_secs(60)).await;
    let calls = recorder.calls();
    // The leaver spent one call: its deactivate, no look-up.
    let leavers_calls: Vec<&str> = calls[before..]
        .iter()
        .filter(|(_, _, path)| *path == leaver_path)
        .map(|(_, method, _)| method.as_str())
        .collect();
    assert_eq!(leavers_calls, ["PATCH"]);
    assert_deactivated(&target, &leaver_id);
    // The backlog completed, every account once; the app's limits held throughout.
    let users = target.users_snapshot();
    let names: std::collections::HashSet<&str> = users
        .iter()
        .filter_map(|u| u["userName"].as_str())
        .collect();
    assert_eq!((users.len(), names.len()), (BACKLOG + 1, BACKLOG + 1));
    let busiest = recorder.busiest_second();
    assert!(
        busiest <= BURST + PER_SECOND,
        "{busiest} calls in one second"
    );
    let most = recorder.most_in_flight.load(Ordering::SeqCst);
    assert!(most <= CONCURRENCY, "{most} calls under way at once");
}

/// Issue 16: two apps of one `rate_limit_group` (two apps on one vendor tenant) against one
/// target that allows 5 calls a second. Each app alone may make 5 a second; together they
/// share one bucket, so the target never answers 429 while both work through a backlog of
/// their own, and a leaver of one app still makes the group's next calls ahead of both
/// backlogs. Without the group each app had its own 5 a second: 10 a second at the target,
/// and 429s.
#[tokio::test]
async fn two_apps_of_one_group_share_its_limit_at_one_target_and_a_leaver_goes_first() {
    const PER_SECOND: usize = 5;
    const PER_APP: usize = 12;
    let app = spawn_app_with(|c| c.workers = 8).await;
    let target = roster::dev_target::spawn(roster::dev_target::DevTargetArgs {
        token: Some(TOKEN.to_owned()),
        rate_limit: Some(PER_SECOND as u32),
        ..Default::default()
    })
    .await
    .expect("dev-target");
    let (recorder, proxy) = Recorder::start(&target).await;
    let mut apps = Vec::new();
    for tenant_app in ["a", "b"] {
        apps.push(
            create_app(
                &app,
                &format!("grouped-{tenant_app}"),
                &proxy,
                json!({"max_concurrency": 4,
                       "rate_limit": {"per_second": PER_SECOND, "burst": 1},
                       "rate_limit_group": "one-tenant",
                       "scope": {"email_domains": [format!("{tenant_app}.example.com")]}}),
            )
            .await,
        );
    }
    let person = |id: String, tenant_app: &str| {
        joiner(
            &id,
            &id.to_uppercase(),
            "2026-11-01T09:00:00Z",
            json!({"email": format!("{id}@{tenant_app}.example.com")}),
        )
    };
    // The leaver-to-be has an account through app a first.
    app.post_event(&person("gx0".into(), "a")).await;
    app.settled(&apps[0], Duration::from_secs(20)).await;
    let leaver_id = target
        .users_snapshot()
        .iter()
        .find(|u| u["userName"] == "gx0")
        .and_then(|u| u["id"].as_str().map(str::to_owned))
        .expect("the leaver's account");
    let leaver_path = format!("/scim/v2/Users/{leaver_id}");

    let backlog: Vec<Value> = (0..PER_APP)
        .flat_map(|i| [person(format!("ga{i}"), "a"), person(format!("gb{i}"), "b")])
        .collect();
    app.post("/api/v1/events:batch", &json!({"events": backlog}))
        .await
        .expect(202);
    eventually(
        "both backlogs under way",
        Duration::from_secs(20),
        || async {
            let users = target.users_snapshot();
            let made = |prefix: &str| {
                users
                    .iter()
                    .filter(|u| {
                        u["userName"]
                            .as_str()
                            .is_some_and(|n| n.starts_with(prefix))
                    })
                    .count()
            };
            (made("ga") >= 2 && made("gb") >= 2).then_some(())
        },
    )
    .await;
    let before = recorder.calls().len();
    app.post_event(&event(
        "gx0-leaves",
        "leaver",
        "GX0",
        "2026-11-01T10:00:00Z",
        json!({}),
    ))
    .await;
    let at = recorder
        .first_write_to(&leaver_path, Duration::from_secs(30))
        .await;
    let users_then = target.stats()["users"].as_u64().unwrap_or(0);
    // Only calls let through before the leaver's job reached the gate come first, whichever
    // app made them.
    let overtaken_by = at.saturating_sub(before);
    assert!(
        overtaken_by <= 3,
        "{overtaken_by} calls went to the target between the leaver's event and its deactivate"
    );
    assert!(
        users_then < (2 * PER_APP) as u64,
        "{users_then} accounts before the leaver's"
    );

    for id in &apps {
        app.settled(id, Duration::from_secs(60)).await;
    }
    assert_eq!(target.stats()["users"], 2 * PER_APP + 1);
    assert_deactivated(&target, &leaver_id);
    // Counted, not timed: the target refused no call, and no second of its saw more calls
    // than the group's one bucket lets through (its burst of 1, and 5 a second).
    assert_eq!(target.stats()["throttled"], 0, "{}", target.stats());
    let busiest = recorder.busiest_second();
    assert!(busiest <= PER_SECOND + 1, "{busiest} calls in one second");
    assert!(
        recorder.calls().len() > 2 * PER_APP,
        "both apps' calls went to the one target"
    );
}

/// Every claim skips a pending job whose resource already has a running one. That check must
/// be an index probe: read as a walk over the app's running jobs, it made each claim cost its
/// candidates times the jobs in flight (1.4 ms a claim with 20k queued, the most expensive
/// statement of a delivery).
#[tokio::test]
async fn the_claims_check_for_a_running_job_of_the_resource_is_an_index_probe() {
    let app = crate::helpers::spawn_planner().await;
    if app.db.get_database_backend() == sea_orm::DbBackend::Postgres {
        let index = app
            .rows("SELECT indexdef FROM pg_indexes WHERE indexname = 'idx_job_running'")
            .await;
        let def = index
            .first()
            .and_then(|row| row["indexdef"].as_str())
            .unwrap_or_default();
        assert!(
            def.contains("(app_id, resource_kind, resource_id)")
                && def.contains("WHERE (state = 'running'"),
            "{index:?}"
        );
        return;
    }
    // The claim's own check, as SQLite plans it.
    let plan = app
        .rows(
            "EXPLAIN QUERY PLAN SELECT 1 FROM job r WHERE r.state = 'running' \
             AND r.app_id = 'a' AND r.resource_kind = 'user' AND r.resource_id = 'u'",
        )
        .await;
    assert!(
        plan.iter()
            .any(|step| step["detail"].as_str().is_some_and(|d| {
                d.contains("idx_job_running (app_id=? AND resource_kind=? AND resource_id=?)")
            })),
        "{plan:?}"
    );
}

/// A job's row is written at its claim and at its end, and each write moves the job in every
/// index whose columns or condition change. The finished jobs, nearly all of the table, are
/// left in one index only (`idx_job_app`, an app's jobs, written once per job): every other
/// index of the queue is partial, over the jobs still to do or running, or the dead letters.
#[tokio::test]
async fn finished_jobs_are_in_no_index_of_the_queue_but_their_apps() {
    let app = crate::helpers::spawn_planner().await;
    let sql = if app.db.get_database_backend() == sea_orm::DbBackend::Postgres {
        "SELECT indexname AS name, indexdef AS def FROM pg_indexes \
         WHERE tablename = 'job' AND indexname <> 'job_pkey'"
    } else {
        "SELECT name, sql AS def FROM sqlite_master \
         WHERE type = 'index' AND tbl_name = 'job' AND sql IS NOT NULL"
    };
    let indexes = app.rows(sql).await;
    let names: Vec<&str> = indexes.iter().filter_map(|i| i["name"].as_str()).collect();
    for expected in [
        "idx_job_app",
        "idx_job_claim",
        "idx_job_dead",
        "idx_job_running",
        "uq_job_pending",
    ] {
        assert!(names.contains(&expected), "{expected} missing: {indexes:?}");
    }
    for index in &indexes {
        let name = index["name"].as_str().unwrap_or_default();
        let def = index["def"].as_str().unwrap_or_default().to_lowercase();
        if name == "idx_job_app" {
            continue;
        }
        let condition = def.split_once(" where ").map(|(_, c)| c).unwrap_or("");
        assert!(
            ["'pending'", "'running'", "'dead'"]
                .iter()
                .any(|state| condition.contains(state))
                && !condition.contains("'done'"),
            "{name} holds finished jobs: {def}"
        );
    }
}
