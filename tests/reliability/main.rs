//! Reliability against real processes: `roster serve` killed with SIGKILL during delivery and
//! during ingest, drained with SIGTERM, and run twice on one PostgreSQL database. Bounded in
//! time; everything on 127.0.0.1. Modules: `observability` (OTLP spans and JSON logs of a real
//! process), `pg_restart` (a private PostgreSQL stopped under load), `chaos` (a seeded soak),
//! `snapshots` (HR snapshots killed in each state).
mod chaos;
mod observability;
mod pg_restart;
mod snapshots;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use roster::dev_target::{DevTarget, DevTargetArgs};
use sea_orm::{
    ConnectionTrait, Database, DatabaseConnection, FromQueryResult, JsonValue, Statement,
};
use serde_json::{Value, json};

/// At least 32 characters: shorter bootstrap tokens are refused.
const ADMIN: &str = "reliability-admin-0123456789abcdef";
const TOKEN: &str = "target-token";

struct Node {
    child: Child,
    base: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[path = "../common/mod.rs"]
mod common;
use common::fresh_database;

struct Cluster {
    database_url: String,
    secret_key: String,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn new() -> Self {
        roster::startup::install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        Self {
            database_url: fresh_database(dir.path()).await,
            secret_key: roster::crypto::SecretBox::generate_base64(),
            _dir: dir,
        }
    }

    /// A cluster on a database the caller provides.
    fn on(database_url: String) -> Self {
        roster::startup::install_crypto_provider();
        Self {
            database_url,
            secret_key: roster::crypto::SecretBox::generate_base64(),
            _dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn is_postgres(&self) -> bool {
        self.database_url.starts_with("postgres")
    }

    /// Starts `roster serve` and waits until it is ready.
    async fn start(&self) -> Node {
        self.start_logging("warn", Stdio::inherit()).await
    }

    /// Starts `roster serve` with this log filter, its log (stderr) going to `log`.
    async fn start_logging(&self, filter: &str, log: impl Into<Stdio>) -> Node {
        self.start_with(filter, &[], Stdio::null(), log).await
    }

    /// Starts `roster serve` with this log filter and extra environment variables, its stdout
    /// and stderr going where asked, and waits until it is ready.
    async fn start_with(
        &self,
        filter: &str,
        env: &[(&str, &str)],
        stdout: impl Into<Stdio>,
        stderr: impl Into<Stdio>,
    ) -> Node {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_roster"))
            .arg("serve")
            .env("ROSTER_DATABASE_URL", &self.database_url)
            .env("ROSTER_LISTEN", format!("127.0.0.1:{port}"))
            .env("ROSTER_ADMIN_TOKEN", ADMIN)
            .env("ROSTER_SECRET_KEY", &self.secret_key)
            .env("ROSTER_ALLOW_PRIVATE_TARGETS", "true")
            .env("ROSTER_WORKERS", "8")
            .env("RUST_LOG", filter)
            .envs(env.iter().copied())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn roster");
        let node = Node {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("{}/readyz", node.base)).send().await
                && r.status().is_success()
            {
                return node;
            }
            assert!(Instant::now() < deadline, "roster did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn db(&self) -> DatabaseConnection {
        Database::connect(&self.database_url)
            .await
            .expect("connect")
    }

    /// Every event answered 202 (`accepted`) is stored; returns the stored event ids.
    async fn assert_stored(&self, accepted: &[String]) -> std::collections::HashSet<String> {
        let stored: std::collections::HashSet<String> = self
            .rows("SELECT event_id FROM hr_event")
            .await
            .into_iter()
            .filter_map(|r| r["event_id"].as_str().map(str::to_owned))
            .collect();
        for id in accepted {
            assert!(
                stored.contains(id),
                "event {id} was answered 202 but is gone"
            );
        }
        stored
    }

    async fn rows(&self, sql: &str) -> Vec<Value> {
        let db = self.db().await;
        let rows = JsonValue::find_by_statement(Statement::from_string(
            db.get_database_backend(),
            sql.to_owned(),
        ))
        .all(&db)
        .await
        .expect("query");
        db.close().await.ok();
        rows
    }

    /// SQLite's own consistency check after a kill; PostgreSQL needs none.
    async fn assert_integrity(&self) {
        if self.is_postgres() {
            return;
        }
        let rows = self.rows("PRAGMA integrity_check").await;
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0]["integrity_check"], "ok", "{rows:?}");
    }
}

impl Node {
    async fn post(&self, path: &str, body: &Value) -> reqwest::Result<reqwest::Response> {
        reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .bearer_auth(ADMIN)
            .json(body)
            .send()
            .await
    }

    fn kill9(&mut self) {
        // `Child::kill` is SIGKILL on Unix: no drain, no flush.
        self.child.kill().expect("kill -9");
        let _ = self.child.wait();
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
    }

    /// The SCIM operations this process delivered, from its `roster_sync_operations_total`.
    async fn sync_operations(&self) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.base))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .filter(|l| l.starts_with("roster_sync_operations_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// SIGTERM, then waits (at most `limit`) for the process to exit; returns its status.
    async fn stop(&mut self, limit: Duration) -> std::process::ExitStatus {
        self.sigterm();
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                started.elapsed() < limit,
                "roster did not exit within {limit:?} of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn target(latency_ms: u64) -> DevTarget {
    roster::dev_target::spawn(DevTargetArgs {
        token: Some(TOKEN.into()),
        latency_ms,
        ..Default::default()
    })
    .await
    .expect("dev-target")
}

fn app_body(base_url: &str) -> Value {
    common::app_body(
        "reliable",
        json!({
            "base_url": base_url,
            "auth": {"type": "bearer", "token": TOKEN},
            "rate_limit": {"per_second": 1000, "burst": 1000},
            "max_concurrency": 8,
        }),
    )
}

fn joiners(prefix: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({"event_id": format!("{prefix}-{i}"), "type": "joiner", "occurred_at": "2026-11-01T09:00:00Z",
                   "employee": {"employee_id": format!("{prefix}{i}"), "email": format!("{prefix}{i}@example.com"),
                                "user_name": format!("{prefix}{i}")}})
        })
        .collect()
}

async fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every user exactly once in the target, and each identity linked to its own account.
async fn assert_delivered_once(cluster: &Cluster, target: &DevTarget, n: usize) {
    // The target may hold the last account a moment before its job records the link.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let open = cluster
            .rows("SELECT id, state, lease_owner, lease_until, attempts, last_error FROM job WHERE state IN ('pending', 'running')")
            .await;
        if open.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the queue did not settle: {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let users = target.users_snapshot();
    assert_eq!(users.len(), n);
    assert_eq!(
        target.stats()["requests"]["POST"],
        json!(n),
        "no account was POSTed twice: {}",
        target.stats()
    );
    let links = cluster
        .rows(
            "SELECT DISTINCT target_id FROM link WHERE resource_kind = 'user' AND state = 'linked'",
        )
        .await;
    assert_eq!(links.len(), n, "one link per person");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_delivery_loses_nothing_and_creates_nothing_twice() {
    let cluster = Cluster::new().await;
    let target = target(15).await;
    let mut node = cluster.start().await;
    node.post("/api/v1/apps", &app_body(&target.base_url()))
        .await
        .expect("create app");
    let r = node
        .post(
            "/api/v1/events:batch",
            &json!({"events": joiners("k", 120)}),
        )
        .await
        .expect("batch");
    assert_eq!(r.status().as_u16(), 202);
    wait_for("some deliveries", Duration::from_secs(30), || {
        target.stats()["users"].as_u64() >= Some(15)
    })
    .await;
    node.kill9();
    let at_kill = target.stats()["users"].as_u64().unwrap_or_default();
    assert!(at_kill < 120, "killed mid-delivery ({at_kill} delivered)");
    cluster.assert_integrity().await;

    let _node = cluster.start().await;
    wait_for(
        "every user after the restart",
        Duration::from_secs(90),
        || target.stats()["users"] == 120,
    )
    .await;
    assert_delivered_once(&cluster, &target, 120).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_ingest_keeps_every_accepted_event() {
    let cluster = Cluster::new().await;
    let mut node = cluster.start().await;
    let base = node.base.clone();
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut senders = Vec::new();
    for t in 0..4 {
        let base = base.clone();
        let accepted = accepted.clone();
        senders.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for i in 0..400 {
                let id = format!("ing-{t}-{i}");
                let event = json!({"event_id": id, "type": "joiner", "occurred_at": "2026-11-01T09:00:00Z",
                                   "employee": {"employee_id": format!("I{t}x{i}"), "user_name": format!("i{t}x{i}")}});
                match http.post(format!("{base}/api/v1/events")).bearer_auth(ADMIN).json(&event).send().await {
                    Ok(r) if r.status().as_u16() == 202 => {
                        if let Ok(mut a) = accepted.lock() {
                            a.push(id);
                        }
                    }
                    _ => return,
                }
            }
        }));
    }
    wait_for("some accepted events", Duration::from_secs(30), || {
        accepted.lock().map(|a| a.len() >= 100).unwrap_or(false)
    })
    .await;
    node.kill9();
    for s in senders {
        let _ = s.await;
    }
    cluster.assert_integrity().await;
    let _node = cluster.start().await;
    let accepted = accepted.lock().map(|a| a.clone()).unwrap_or_default();
    assert!(accepted.len() >= 100);
    let stored = cluster.assert_stored(&accepted).await;
    // Nothing half-applied: every stored event has its identity, and every identity its event.
    let people = cluster.rows("SELECT employee_id FROM identity").await;
    assert_eq!(
        people.len(),
        stored.len(),
        "identities and events were committed together"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    let cluster = Cluster::new().await;
    let target = target(200).await;
    let mut node = cluster.start().await;
    node.post("/api/v1/apps", &app_body(&target.base_url()))
        .await
        .expect("create app");
    node.post("/api/v1/events:batch", &json!({"events": joiners("t", 40)}))
        .await
        .expect("batch");
    wait_for("deliveries under way", Duration::from_secs(30), || {
        target.stats()["users"].as_u64() >= Some(2)
    })
    .await;
    // The contract: drained and exited within 30 s of SIGTERM.
    let status = node.stop(Duration::from_secs(30)).await;
    assert!(status.success(), "exit status {status:?}");
    let running = cluster
        .rows("SELECT id FROM job WHERE state = 'running'")
        .await;
    assert!(
        running.is_empty(),
        "running jobs were handed back: {running:?}"
    );
    let _node = cluster.start().await;
    wait_for("the rest after restart", Duration::from_secs(90), || {
        target.stats()["users"] == 40
    })
    .await;
    assert_delivered_once(&cluster, &target, 40).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_postgresql_send_each_change_once() {
    if !common::on_postgres("running several instances on one database") {
        return;
    }
    let cluster = Cluster::new().await;
    let target = target(5).await;
    let a = cluster.start().await;
    let b = cluster.start().await;
    a.post("/api/v1/apps", &app_body(&target.base_url()))
        .await
        .expect("create app");
    for chunk in 0..4 {
        let node = if chunk % 2 == 0 { &a } else { &b };
        let events: Vec<Value> = joiners(&format!("p{chunk}x"), 50);
        node.post("/api/v1/events:batch", &json!({"events": events}))
            .await
            .expect("batch");
    }
    wait_for("all 200 users", Duration::from_secs(90), || {
        target.stats()["users"] == 200
    })
    .await;
    assert_delivered_once(&cluster, &target, 200).await;
    // Both instances delivered: otherwise this test shows nothing about two of them.
    let (done_a, done_b) = (a.sync_operations().await, b.sync_operations().await);
    assert!(
        done_a > 0.0 && done_b > 0.0,
        "each instance delivered some of the jobs: {done_a} and {done_b}"
    );
}

/// A SCIM target for the lease test: `/Users` calls are slow (`users_delay`) or all answered
/// 429 with a long `Retry-After`; discovery answers at once. Counts look-ups and creates.
#[derive(Default)]
struct LeaseStub {
    users_delay: Duration,
    retry_after: Option<u64>,
    lookups: std::sync::atomic::AtomicUsize,
    posts: std::sync::atomic::AtomicUsize,
}

async fn serve_stub(stub: std::sync::Arc<LeaseStub>) -> String {
    use common::{empty_list, scim_answer, scim_error, stub_service_provider_config};
    use std::sync::atomic::Ordering;
    let endpoint = poem::endpoint::make(move |mut req: poem::Request| {
        let stub = stub.clone();
        async move {
            let body = req.take_body().into_vec().await.unwrap_or_default();
            let path = req.uri().path().to_owned();
            if path.ends_with("/ServiceProviderConfig") {
                return scim_answer(200, &stub_service_provider_config());
            }
            if !path.contains("/Users") {
                return scim_answer(404, &scim_error(404));
            }
            if let Some(seconds) = stub.retry_after {
                let mut r = scim_answer(429, &scim_error(429));
                r.headers_mut().insert(
                    "Retry-After",
                    poem::http::HeaderValue::from_str(&seconds.to_string())
                        .unwrap_or(poem::http::HeaderValue::from_static("60")),
                );
                return r;
            }
            // Counted when it arrives, not when answered: a reclaimed copy's look-up shows at
            // once, whatever the delay.
            if req.method() != poem::http::Method::POST {
                stub.lookups.fetch_add(1, Ordering::SeqCst);
            }
            tokio::time::sleep(stub.users_delay).await;
            if req.method() == poem::http::Method::POST {
                let n = stub.posts.fetch_add(1, Ordering::SeqCst);
                let mut user: Value = serde_json::from_slice(&body).unwrap_or_default();
                user["id"] = json!(format!("u{n}"));
                return scim_answer(201, &user);
            }
            scim_answer(200, &empty_list())
        }
    });
    format!("http://{}/scim/v2", common::serve(endpoint).await)
}

/// Issue 20 B6: an instance whose probe of a quarantined app waits out a long `Retry-After`
/// still renews the leases of its running jobs, so a second instance never takes over a job
/// that is still being delivered (which would deliver it twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_held_by_a_long_retry_after_lets_no_lease_expire() {
    use std::sync::atomic::Ordering;
    let cluster = Cluster::new().await;
    if !cluster.is_postgres() {
        eprintln!("skipped: several instances need PostgreSQL (set ROSTER_TEST_DATABASE_URL)");
        return;
    }
    let throttled = std::sync::Arc::new(LeaseStub {
        retry_after: Some(600),
        ..LeaseStub::default()
    });
    // Two calls (look-up, create) of 22 s each: the job outlives a lease (30 s) unless renewed.
    let slow = std::sync::Arc::new(LeaseStub {
        users_delay: Duration::from_secs(22),
        ..LeaseStub::default()
    });
    let a = cluster.start().await;
    let mut body = app_body(&serve_stub(throttled.clone()).await);
    body["name"] = json!("throttled");
    let created: Value = a
        .post("/api/v1/apps", &body)
        .await
        .expect("create app")
        .json()
        .await
        .expect("json");
    let throttled_id = created["id"].as_str().unwrap_or_default().to_owned();
    let mut body = app_body(&serve_stub(slow.clone()).await);
    body["name"] = json!("slow");
    body["timeout_ms"] = json!(60_000);
    a.post("/api/v1/apps", &body).await.expect("create app");
    a.post("/api/v1/events", &joiners("lease", 1)[0])
        .await
        .expect("joiner");
    // Instance A met the long Retry-After; now its app is quarantined with a probe due.
    let db = cluster.db().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = cluster
            .rows("SELECT id FROM operation WHERE status = 429")
            .await;
        if !rows.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the throttled app was never called"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    db.execute_raw(Statement::from_sql_and_values(
        db.get_database_backend(),
        "UPDATE app SET state = 'quarantined', state_reason = 'test', updated_at = $1 WHERE id = $2",
        [
            (chrono::Utc::now() - chrono::Duration::hours(1)).into(),
            throttled_id.into(),
        ],
    ))
    .await
    .expect("quarantine");
    // A second instance, ready to reclaim any lease that expires.
    let _b = cluster.start().await;
    wait_for("the slow user", Duration::from_secs(90), || {
        slow.posts.load(Ordering::SeqCst) >= 1
    })
    .await;
    // Long enough for a reclaimed copy to have made its own look-up.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        slow.lookups.load(Ordering::SeqCst),
        1,
        "one delivery: the job was never taken over"
    );
    assert_eq!(slow.posts.load(Ordering::SeqCst), 1);
    let attempts = cluster
        .rows("SELECT j.attempts FROM job j JOIN app a ON a.id = j.app_id WHERE a.name = 'slow'")
        .await;
    assert_eq!(attempts, [json!({"attempts": 1})], "{attempts:?}");
}

/// A canary secret placed in app credentials must never leave roster: not in a log line (at
/// debug level), an API answer, a stored row or a metric — through calls, failures and retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_secret_never_leaves_roster() {
    const CANARY: &str = "canary-7f3a9c1e5b";
    let cluster = Cluster::new().await;
    let target = target(0).await;
    let log = cluster._dir.path().join("roster.log");
    let mut node = cluster
        .start_logging("debug", std::fs::File::create(&log).expect("log file"))
        .await;
    let http = reqwest::Client::new();
    // The canary as a (wrong) bearer token, a basic password and an OAuth client secret: every
    // call fails with 401, is logged, retried and quarantines the apps.
    let base = target.base_url();
    for (name, auth) in [
        ("bearer", json!({"type": "bearer", "token": CANARY})),
        (
            "basic",
            json!({"type": "basic", "username": "svc", "password": CANARY}),
        ),
        (
            "oauth",
            json!({"type": "oauth2", "token_url": format!("{base}/token"), "client_id": "cid", "client_secret": CANARY}),
        ),
    ] {
        let mut body = app_body(&base);
        body["name"] = json!(name);
        body["auth"] = auth;
        let r = node.post("/api/v1/apps", &body).await.expect("create app");
        assert_eq!(r.status().as_u16(), 201);
        let text = r.text().await.unwrap_or_default();
        assert!(!text.contains(CANARY), "create answer: {text}");
    }
    node.post("/api/v1/events:batch", &json!({"events": joiners("c", 5)}))
        .await
        .expect("batch");
    // Wait until every app has tried and failed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let failed = cluster
            .rows("SELECT DISTINCT app_id FROM operation WHERE outcome = 'failed'")
            .await;
        if failed.len() == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every app failed yet: {failed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut seen = String::new();
    for path in [
        "/api/v1/apps",
        "/api/v1/operations?limit=1000",
        "/api/v1/audit?limit=1000",
        "/api/v1/jobs",
        "/api/v1/identities",
    ] {
        let r = http
            .get(format!("{}{path}", node.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("get");
        seen.push_str(&r.text().await.unwrap_or_default());
    }
    let apps: Value = serde_json::from_str(
        &http
            .get(format!("{}/api/v1/apps", node.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("apps")
            .text()
            .await
            .unwrap_or_default(),
    )
    .unwrap_or_default();
    for a in apps.as_array().into_iter().flatten() {
        let id = a["id"].as_str().unwrap_or_default();
        for path in [
            format!("/api/v1/apps/{id}/status"),
            format!("/api/v1/apps/{id}/test-connection"),
        ] {
            let req = if path.ends_with("test-connection") {
                http.post(format!("{}{path}", node.base))
            } else {
                http.get(format!("{}{path}", node.base))
            };
            seen.push_str(
                &req.bearer_auth(ADMIN)
                    .send()
                    .await
                    .expect("call")
                    .text()
                    .await
                    .unwrap_or_default(),
            );
        }
    }
    seen.push_str(
        &http
            .get(format!("{}/metrics", node.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .unwrap_or_default(),
    );
    assert!(seen.len() > 1000, "the answers were read");
    // The canary as it leaves in headers and forms too: `Authorization: Basic` and an OAuth
    // client's credentials are base64 of `user:secret`, a form body percent-encodes it.
    let forms: Vec<String> = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        vec![
            CANARY.to_owned(),
            b64.encode(format!("svc:{CANARY}")),
            b64.encode(format!("cid:{CANARY}")),
            url::form_urlencoded::byte_serialize(CANARY.as_bytes()).collect(),
        ]
    };
    let leaked = |text: &str| forms.iter().find(|f| text.contains(f.as_str())).cloned();
    assert_eq!(
        leaked(&seen),
        None,
        "the canary leaked through the API or metrics"
    );
    for table in ["operation", "audit", "job", "app", "link", "hr_event"] {
        for row in cluster.rows(&format!("SELECT * FROM {table}")).await {
            assert_eq!(
                leaked(&row.to_string()),
                None,
                "the canary is stored in {table}: {row}"
            );
        }
    }
    node.kill9();
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logs.lines().count() > 20, "debug logs were written");
    assert!(logs.contains("401"), "the failures were logged");
    assert_eq!(leaked(&logs), None, "the canary is in the log");
}

/// Rotating the credential key: the old key opens old rows while `roster rotate-key`
/// re-encrypts them; afterwards the new key alone is enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_credential_key_rotates_without_losing_an_app() {
    let mut cluster = Cluster::new().await;
    let target = target(0).await;
    let mut node = cluster.start().await;
    node.post("/api/v1/apps", &app_body(&target.base_url()))
        .await
        .expect("create app");
    node.post("/api/v1/events", &joiners("rot", 1)[0])
        .await
        .expect("joiner");
    wait_for("the first user", Duration::from_secs(30), || {
        target.stats()["users"] == 1
    })
    .await;
    node.kill9();

    let old_key = cluster.secret_key.clone();
    let new_key = roster::crypto::SecretBox::generate_base64();
    let out = Command::new(env!("CARGO_BIN_EXE_roster"))
        .arg("rotate-key")
        .env("ROSTER_DATABASE_URL", &cluster.database_url)
        .env("ROSTER_SECRET_KEY", &new_key)
        .env("ROSTER_SECRET_KEY_PREVIOUS", &old_key)
        .env("ROSTER_ADMIN_TOKEN", ADMIN)
        .env("RUST_LOG", "warn")
        .output()
        .expect("rotate-key");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("re-encrypted 1"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let new_id = roster::crypto::SecretBox::from_base64(&new_key.clone().into())
        .expect("key")
        .key_id()
        .to_owned();
    let rows = cluster.rows("SELECT secret_key_id FROM app").await;
    assert_eq!(rows[0]["secret_key_id"], new_id.as_str());
    let audit = cluster
        .rows("SELECT action FROM audit WHERE action = 'app.credentials_rotated'")
        .await;
    assert_eq!(audit.len(), 1);

    // The new key alone now opens the credential: delivery goes on.
    cluster.secret_key = new_key;
    let _node = cluster.start().await;
    _node
        .post("/api/v1/events", &joiners("rot2", 1)[0])
        .await
        .expect("joiner");
    wait_for(
        "a user delivered with the rotated credential",
        Duration::from_secs(30),
        || target.stats()["users"] == 2,
    )
    .await;
}

/// `roster demo` plays the whole story and exits 0 (DESIGN §2).
#[test]
fn the_demo_runs_end_to_end() {
    let out = Command::new(env!("CARGO_BIN_EXE_roster"))
        .arg("demo")
        .output()
        .expect("roster demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "3 accounts created",
        "the contractor was not provisioned",
        "account deactivated in the app",
        "drifted 1",
        "unmatched 1, unmanaged 1",
        "\"Chief Engineer\" again",
        "Reconcile again: drifted 0, orphan 0, missing 0; 0 write(s)",
        "dead jobs 0",
        // The nightly export deprovisions grace, whose leaver event was lost; a truncated
        // export is held.
        "Snapshot applied: joiners 28, movers 0, leavers 1 (E2), unchanged 2",
        "grace's account deactivated in the app",
        "A truncated export (3 rows): held by the leaver guard, nothing applied (27 leavers of 30 active people",
        "The admin cancels it; 31 accounts stay active",
    ] {
        assert!(text.contains(line), "`{line}` missing from:\n{text}");
    }
}
