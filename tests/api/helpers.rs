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
pub use common::app_body;
use common::fresh_database;

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
    if let (Some(e), Some(x)) = (employee.as_object_mut(), extra.as_object()) {
        for (k, v) in x {
            e.insert(k.clone(), v.clone());
        }
    }
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

impl TestApp {
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
