//! `TestApp`: the real server on port 0 with a fresh database, and a small HTTP client.
//!
//! The database is a new SQLite file, or, when `ROSTER_TEST_DATABASE_URL` names a PostgreSQL
//! server, a new database created on it for this one test.
use std::time::Duration;

use roster::config::Config;
use roster::startup;
use sea_orm::DatabaseConnection;
use serde_json::{Value, json};

/// At least 32 characters: shorter bootstrap tokens are refused.
pub const ADMIN: &str = "test-admin-token-0123456789abcdef";

pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub db: DatabaseConnection,
    pub config: Config,
    server: Option<startup::RunningServer>,
    _dir: tempfile::TempDir,
}

pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: Value,
    pub text: String,
}

impl Answer {
    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(self.status, status, "unexpected answer: {}", self.text);
        self.body
    }

    /// A problem+json answer with this status; returns its `detail`.
    #[track_caller]
    pub fn problem(self, status: u16) -> String {
        assert_eq!(self.status, status, "unexpected answer: {}", self.text);
        assert_eq!(
            self.content_type, "application/problem+json",
            "{}",
            self.text
        );
        assert!(
            self.body["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("urn:roster:problem:"))
        );
        assert_eq!(self.body["status"], json!(status));
        let detail = self.body["detail"].as_str().unwrap_or_default().to_owned();
        assert!(!detail.is_empty(), "problem without detail: {}", self.text);
        detail
    }
}

#[path = "../common/mod.rs"]
mod common;
use common::fresh_database;
pub use common::{
    app_body, empty_list, merge, scim_answer, scim_error, serve, serve_until,
    stub_service_provider_config,
};

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// The API and the planner without the delivery engine, for tests that look at the queue.
pub async fn spawn_planner() -> TestApp {
    spawn_app_with(|c| c.run_engine = false).await
}

pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    if std::env::var("RUST_LOG").is_ok() {
        roster::telemetry::init_logging();
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config {
        database_url: fresh_database(dir.path()).await,
        listen: "127.0.0.1:0".into(),
        admin_token: Some(ADMIN.to_owned().into()),
        secret_key: Some(roster::crypto::SecretBox::generate_base64().into()),
        secret_key_previous: None,
        hr_webhook_secret: None,
        workers: 4,
        allow_private_targets: true,
        quarantine_probe: Duration::from_secs(1),
        run_engine: true,
        hr_snapshot_max_leavers: 50,
        hr_snapshot_max_leaver_fraction: 0.05,
        hr_snapshot_lease: Duration::from_secs(2),
        ..Config::default()
    };
    adjust(&mut config);
    start(config, dir).await
}

async fn start(config: Config, dir: tempfile::TempDir) -> TestApp {
    let (roster, _) = startup::build(config.clone()).await.expect("build roster");
    let db = roster.db().clone();
    let server = startup::serve(roster, &config.listen).await.expect("serve");
    TestApp {
        base: format!("http://{}", server.addr),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client"),
        db,
        config,
        server: Some(server),
        _dir: dir,
    }
}

impl TestApp {
    /// Stops the server and starts a new one on the same database, as a restart would.
    pub async fn restart(mut self) -> TestApp {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
        let config = self.config.clone();
        let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().expect("tempdir"));
        start(config, dir).await
    }

    /// Starts a shutdown as `SIGTERM` would, without waiting for it.
    pub fn begin_shutdown(&self) {
        if let Some(server) = &self.server {
            server.shutdown.cancel();
        }
    }

    /// The connections roster's listener holds open now.
    pub fn open_connections(&self) -> usize {
        self.server
            .as_ref()
            .map_or(0, |server| server.connections.get())
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        Self::answer(req.send().await.expect("request")).await
    }

    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Self::answer(req.send().await.expect("request")).await
    }

    pub async fn answer(resp: reqwest::Response) -> Answer {
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            content_type,
            body,
            text,
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.request("GET", path, Some(ADMIN), None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        self.request("POST", path, Some(ADMIN), Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Answer {
        self.request("PATCH", path, Some(ADMIN), Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        self.request("DELETE", path, Some(ADMIN), None).await
    }

    /// A key with the given scopes; returns its token.
    pub async fn key(&self, scopes: &[&str]) -> String {
        let body = self
            .post("/api/v1/api-keys", &json!({"name": format!("k-{}", scopes.join("-").replace(':', "_")), "scopes": scopes}))
            .await
            .expect(201);
        body["token"].as_str().expect("token").to_owned()
    }

    pub async fn create_app(&self, body: &Value) -> Value {
        self.post("/api/v1/apps", body).await.expect(201)
    }

    pub async fn post_event(&self, event: &Value) -> Value {
        self.post("/api/v1/events", event).await.expect(202)
    }

    /// Rows of a table, as JSON, through SQL (for asserting what was stored).
    pub async fn rows(&self, sql: &str) -> Vec<Value> {
        use sea_orm::{FromQueryResult, JsonValue, Statement};
        let backend = self.db.get_database_backend();
        JsonValue::find_by_statement(Statement::from_string(backend, sql.to_owned()))
            .all(&self.db)
            .await
            .expect("query")
    }

    /// This app's `ROSTER_SECRET_KEY`, as text.
    pub fn secret_key_text(&self) -> String {
        use secrecy::ExposeSecret;
        self.config
            .secret_key
            .as_ref()
            .map(|k| k.expose_secret().to_owned())
            .unwrap_or_default()
    }

    /// The `roster` binary with `args`, on this app's database and secret key, allowed to call
    /// targets on 127.0.0.1 (the CLI tests add what else they need).
    ///
    /// A `tokio` command, awaited: the server runs on the test's own runtime, and a child that
    /// waits for the database must not block that runtime. A blocking `std` wait froze any
    /// write transaction the server had under way, so the child's write waited out SQLite's busy
    /// timeout and failed with `database is locked`.
    pub fn roster_command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_roster"));
        command
            .args(args)
            .env("ROSTER_DATABASE_URL", &self.config.database_url)
            .env("ROSTER_SECRET_KEY", self.secret_key_text())
            .env("ROSTER_ALLOW_PRIVATE_TARGETS", "true");
        command
    }

    pub async fn count(&self, table: &str) -> i64 {
        use sea_orm::{FromQueryResult, Statement};
        #[derive(FromQueryResult)]
        struct Count {
            n: i64,
        }
        let backend = self.db.get_database_backend();
        Count::find_by_statement(Statement::from_string(
            backend,
            format!("SELECT COUNT(*) AS n FROM {table}"),
        ))
        .one(&self.db)
        .await
        .expect("count query")
        .map_or(0, |c| c.n)
    }
}

pub fn joiner(event_id: &str, employee_id: &str, at: &str, extra: Value) -> Value {
    event(event_id, "joiner", employee_id, at, extra)
}

pub fn event(event_id: &str, kind: &str, employee_id: &str, at: &str, extra: Value) -> Value {
    let mut employee = json!({"employee_id": employee_id});
    if kind == "joiner" {
        employee["user_name"] = json!(employee_id.to_lowercase());
        employee["email"] = json!(format!("{}@example.com", employee_id.to_lowercase()));
    }
    merge(&mut employee, &extra);
    json!({"event_id": event_id, "type": kind, "occurred_at": at, "employee": employee})
}

/// The peer speaks HTTP/1.0, single-threaded, with a listen backlog of 5: one test at a time
/// talks to it, whichever module it is in.
static PEER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A test's turn with the peer; the next peer test waits until it is dropped.
pub type PeerTurn = tokio::sync::MutexGuard<'static, ()>;

/// The third-party SCIM server started by `with-peer.sh`: `(base_url, token, turn)`, once no
/// other test uses it; keep `turn` for the whole test. `None` (with a printed reason) on a
/// developer machine without it; under `CI=true` its absence fails.
pub async fn peer() -> Option<(String, String, PeerTurn)> {
    match (std::env::var("PEER_BASE_URL"), std::env::var("PEER_TOKEN")) {
        (Ok(base), Ok(token)) => Some((base, token, PEER.lock().await)),
        _ => {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "PEER_BASE_URL unset under CI: run the tests under ../shared/peers/with-peer.sh scim2-server"
            );
            eprintln!(
                "skipped: PEER_BASE_URL unset (run under ../shared/peers/with-peer.sh scim2-server)"
            );
            None
        }
    }
}

/// A dev-target on port 0 requiring `token`.
pub async fn dev_target(token: &str) -> roster::dev_target::DevTarget {
    roster::dev_target::spawn(roster::dev_target::DevTargetArgs {
        token: Some(token.to_owned()),
        ..Default::default()
    })
    .await
    .expect("dev-target")
}

/// Polls `check` until it returns `Some`, or fails the test after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A group's member ids, sorted.
pub fn member_ids(group: &Value) -> Vec<String> {
    let mut ids: Vec<String> = group["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["value"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

impl TestApp {
    /// Starts a reconcile run of the app with `body` (`{"mode": "fix"}`, `{"dry_run": true}`…)
    /// and waits (20 s at most) until it is no longer running; returns its report.
    pub async fn reconcile_run(&self, app_id: &str, body: Value) -> Value {
        let started = self
            .post(&format!("/api/v1/apps/{app_id}/reconcile"), &body)
            .await
            .expect(202);
        let run_id = started["id"].as_str().unwrap_or_default().to_owned();
        self.get_until(
            "the reconcile run to finish",
            &format!("/api/v1/reconcile-runs/{run_id}"),
            Duration::from_secs(20),
            |report| report["state"] != "running",
        )
        .await
    }

    /// GETs `path` (each answered 200) until `done` holds for the body, at most `timeout`;
    /// returns that body.
    pub async fn get_until(
        &self,
        what: &str,
        path: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        eventually(what, timeout, || async {
            let body = self.get(path).await.expect(200);
            done(&body).then_some(body)
        })
        .await
    }

    /// Waits until no job of the app is pending or running.
    pub async fn settled(&self, app_id: &str, timeout: Duration) {
        self.drained(&format!("app_id = '{app_id}' AND "), timeout)
            .await;
    }

    /// Waits until no job of any app is pending or running.
    pub async fn settled_all(&self, timeout: Duration) {
        self.drained("", timeout).await;
    }

    async fn drained(&self, condition: &str, timeout: Duration) {
        eventually("the queue to drain", timeout, || async {
            let n = self
                .rows(&format!(
                    "SELECT id FROM job WHERE {condition}state IN ('pending', 'running')"
                ))
                .await
                .len();
            (n == 0).then_some(())
        })
        .await;
    }
}

/// roster's own SCIM client for the target at `base` (a SCIM base URL), for a test's edits and
/// reads "by hand", as an admin of the app would make them: no second client is written here.
pub fn scim_client(base: &str, token: &str) -> roster::scim::ScimClient {
    let mut config = roster::scim::TargetConfig::new(
        url::Url::parse(base).expect("a SCIM base URL"),
        roster::scim::Auth::Bearer(token.to_owned().into()),
        roster::net_guard::TargetPolicy::AllowPrivate,
    );
    config.timeout = Duration::from_secs(15);
    roster::scim::ScimClient::new(config).expect("a SCIM client")
}

/// A call passing through a [`relay`].
pub struct RelayedCall {
    pub method: String,
    /// The path as the client sent it (the relay's base path is the upstream's).
    pub path: String,
    /// The decoded query pairs; a tap may change them.
    pub query: Vec<(String, String)>,
}

/// What a [`relay`] does to the calls it passes on; by default, nothing.
pub trait Tap: Send + Sync + 'static {
    /// Before a call goes upstream: may look at it, change its query, or hold it (wait).
    fn request(&self, _call: &mut RelayedCall) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Before an answer goes back: may change its body.
    fn answer(&self, _call: &RelayedCall, _body: &mut Vec<u8>) {}
}

/// A relay on 127.0.0.1 (port 0) in front of the SCIM server at `upstream` (a base URL): every
/// call goes upstream with its `authorization`, `content-type`, `accept` and `if-match`
/// headers, and comes back with the upstream's status and headers, as `tap` lets it. Returns
/// the relay's base URL (with the upstream's path).
pub async fn relay<T: Tap>(upstream: &str, tap: std::sync::Arc<T>) -> String {
    let upstream = url::Url::parse(upstream).expect("an upstream base URL");
    let base_path = upstream.path().to_owned();
    // The client below may be the test's first (before the app under test installs it).
    roster::scim::install_crypto_provider();
    let http = reqwest::Client::new();
    let endpoint = poem::endpoint::make(move |req: poem::Request| {
        let (http, upstream, tap) = (http.clone(), upstream.clone(), tap.clone());
        async move { relay_one(&http, &upstream, &*tap, req).await }
    });
    let addr = serve(endpoint).await;
    format!("http://{addr}{base_path}")
}

async fn relay_one<T: Tap>(
    http: &reqwest::Client,
    upstream: &url::Url,
    tap: &T,
    mut req: poem::Request,
) -> poem::Response {
    let raw_query = req.uri().query().unwrap_or("").to_owned();
    let sent: Vec<(String, String)> = url::form_urlencoded::parse(raw_query.as_bytes())
        .into_owned()
        .collect();
    let mut call = RelayedCall {
        method: req.method().as_str().to_owned(),
        path: req.uri().path().to_owned(),
        query: sent.clone(),
    };
    tap.request(&mut call).await;
    let mut url = upstream.clone();
    url.set_path(&call.path);
    if call.query == sent {
        // Unchanged: passed on exactly as the client encoded it.
        url.set_query((!raw_query.is_empty()).then_some(raw_query.as_str()));
    } else {
        url.set_query(None);
        url.query_pairs_mut().extend_pairs(&call.query);
    }
    let body = req.take_body().into_vec().await.unwrap_or_default();
    let mut forward = http.request(req.method().clone(), url).body(body);
    for name in ["authorization", "content-type", "accept", "if-match"] {
        if let Some(value) = req.headers().get(name) {
            forward = forward.header(name, value.clone());
        }
    }
    let Ok(answer) = forward.send().await else {
        return poem::Response::builder()
            .status(poem::http::StatusCode::BAD_GATEWAY)
            .finish();
    };
    let mut out = poem::Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if name != "content-length" && name != "transfer-encoding" {
            out = out.header(name.clone(), value.clone());
        }
    }
    let mut bytes = answer.bytes().await.unwrap_or_default().to_vec();
    tap.answer(&call, &mut bytes);
    out.body(bytes)
}

/// A [`Tap`] that holds every call until [`Hold::open`], then lets them all through: a target
/// that stays busy exactly as long as a test needs, whatever the machine's speed.
pub struct Hold {
    open: tokio::sync::watch::Sender<bool>,
    /// Calls that arrived (held or not).
    pub arrived: std::sync::atomic::AtomicUsize,
}

impl Default for Hold {
    fn default() -> Self {
        Self {
            open: tokio::sync::watch::channel(false).0,
            arrived: std::sync::atomic::AtomicUsize::new(0),
        }
    }
}

impl Hold {
    pub fn open(&self) {
        self.open.send_replace(true);
    }
}

impl Tap for Hold {
    async fn request(&self, _call: &mut RelayedCall) {
        self.arrived
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut open = self.open.subscribe();
        // The sender lives in the tap, which the relay holds: this ends only when opened.
        let _ = open.wait_for(|o| *o).await;
    }
}
