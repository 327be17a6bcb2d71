//! One roster and one dev-target on loopback, and the HTTP calls the scenarios make.
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::BenchError;
use crate::config::Config;
use crate::dev_target::{self, DevTarget, DevTargetArgs};
use crate::startup::{self, RunningServer};

/// The bearer token the dev-target requires, so that auth is part of every measured call.
pub const TARGET_TOKEN: &str = "bench-target-token";
/// Workers of roster's delivery engine (`ROSTER_WORKERS` default).
pub const WORKERS: usize = 32;

/// A directory under the system temp dir, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn create() -> Result<Self, BenchError> {
        let path =
            std::env::temp_dir().join(format!("roster-bench-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path)
            .map_err(|e| BenchError::Setup(format!("cannot create {}: {e}", path.display())))?;
        Ok(Self(path))
    }
}

impl Drop for ScratchDir {
    /// `ROSTER_BENCH_KEEP_DB=1` keeps the database for inspection (path on stderr).
    fn drop(&mut self) {
        if std::env::var_os("ROSTER_BENCH_KEEP_DB").is_some() {
            eprintln!("roster bench: kept {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub struct Harness {
    pub target: DevTarget,
    /// The roster behind the API, for scenarios that seed its store or call a use case directly.
    pub roster: crate::service::Roster,
    /// `http://ADDR/api/v1`.
    pub api: String,
    pub http: reqwest::Client,
    admin: String,
    server: Option<RunningServer>,
    _dir: ScratchDir,
}

/// A keep-alive client with a per-request timeout, so that no call can hang a scenario.
pub fn client() -> Result<reqwest::Client, BenchError> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
        .map_err(|e| BenchError::Setup(format!("HTTP client: {e}")))
}

impl Harness {
    /// A dev-target with `args` (its token is set here) and a roster with a fresh SQLite file.
    pub async fn start(args: DevTargetArgs) -> Result<Self, BenchError> {
        Self::start_with(args, |_| {}).await
    }

    /// [`Harness::start`], with roster's configuration adjusted by `adjust`.
    pub async fn start_with(
        args: DevTargetArgs,
        adjust: impl FnOnce(&mut Config),
    ) -> Result<Self, BenchError> {
        let target = dev_target::spawn(DevTargetArgs {
            token: Some(TARGET_TOKEN.to_owned()),
            ..args
        })
        .await
        .map_err(|e| BenchError::Setup(format!("dev-target: {e}")))?;
        let dir = ScratchDir::create()?;
        let admin = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let mut config = Config {
            database_url: format!("sqlite://{}?mode=rwc", dir.0.join("roster.db").display()),
            listen: "127.0.0.1:0".into(),
            admin_token: Some(admin.clone().into()),
            secret_key: Some(crate::crypto::SecretBox::generate_base64().into()),
            hr_webhook_secret: None,
            workers: WORKERS,
            allow_private_targets: true,
            ..Config::default()
        };
        adjust(&mut config);
        let (roster, _) = startup::build(config)
            .await
            .map_err(|e| BenchError::Setup(format!("roster: {e}")))?;
        let server = startup::serve(roster.clone(), "127.0.0.1:0")
            .await
            .map_err(|e| BenchError::Setup(format!("roster: {e}")))?;
        Ok(Self {
            api: format!("http://{}/api/v1", server.addr),
            target,
            roster,
            http: client()?,
            admin,
            server: Some(server),
            _dir: dir,
        })
    }

    /// Stops roster (draining its engine) and the dev-target; removes the database.
    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            // `stop` drains for up to 30 s; a stuck drain must not hang the bench.
            let _ = tokio::time::timeout(Duration::from_secs(40), server.stop()).await;
        }
        // Dropping the dev-target stops it.
    }

    /// `POST {api}{path}` as admin; any status but `expect` is an error. Returns the body.
    pub async fn post(&self, path: &str, body: &Value, expect: u16) -> Result<Value, BenchError> {
        let what = format!("POST {path}");
        let answer = self
            .http
            .post(format!("{}{path}", self.api))
            .bearer_auth(&self.admin)
            .json(body)
            .send()
            .await
            .map_err(|source| BenchError::Http {
                what: what.clone(),
                source,
            })?;
        read_answer(what, answer, expect).await
    }

    /// `POST {api}{path}` as admin with a raw body of `content_type` (an HR snapshot file);
    /// any status but `expect` is an error. Returns the answer's body.
    pub async fn post_body(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
        expect: u16,
    ) -> Result<Value, BenchError> {
        let what = format!("POST {path}");
        let answer = self
            .http
            .post(format!("{}{path}", self.api))
            .bearer_auth(&self.admin)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .map_err(|source| BenchError::Http {
                what: what.clone(),
                source,
            })?;
        read_answer(what, answer, expect).await
    }

    pub async fn get(&self, path: &str) -> Result<Value, BenchError> {
        let what = format!("GET {path}");
        let answer = self
            .http
            .get(format!("{}{path}", self.api))
            .bearer_auth(&self.admin)
            .send()
            .await
            .map_err(|source| BenchError::Http {
                what: what.clone(),
                source,
            })?;
        read_answer(what, answer, 200).await
    }

    /// Registers the dev-target as an app with these limits; returns its id.
    pub async fn create_app(
        &self,
        per_second: u32,
        burst: u32,
        max_concurrency: usize,
    ) -> Result<String, BenchError> {
        self.create_app_on(&self.target.base_url(), per_second, burst, max_concurrency)
            .await
    }

    /// Registers the dev-target at `base_url` as an app with these limits; returns its id.
    pub async fn create_app_on(
        &self,
        base_url: &str,
        per_second: u32,
        burst: u32,
        max_concurrency: usize,
    ) -> Result<String, BenchError> {
        self.create_app_with(
            base_url,
            per_second,
            burst,
            max_concurrency,
            json!({"name": "bench-target"}),
        )
        .await
    }

    /// [`Harness::create_app_on`] with `extra` fields (a `name` of its own, `reconcile`, …)
    /// replacing the defaults.
    pub async fn create_app_with(
        &self,
        base_url: &str,
        per_second: u32,
        burst: u32,
        max_concurrency: usize,
        extra: Value,
    ) -> Result<String, BenchError> {
        let mut body = json!({
            "name": "bench-target",
            "base_url": base_url,
            "auth": {"type": "bearer", "token": TARGET_TOKEN},
            "rate_limit": {"per_second": per_second, "burst": burst},
            "max_concurrency": max_concurrency,
            "scope": {"email_domains": ["example.com"]},
        });
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        let app = self.post("/apps", &body, 201).await?;
        app["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| BenchError::Unexpected {
                what: "POST /apps".into(),
                detail: format!("no id in {app}"),
            })
    }

    /// Posts one event; anything but 202 `applied` is an error.
    pub async fn post_event(&self, event: &Value) -> Result<(), BenchError> {
        let answer = self.post("/events", event, 202).await?;
        expect_applied(&answer)
    }

    /// Posts events in batches of up to 1000; every one must be `applied`. Returns when the
    /// first batch was accepted.
    pub async fn post_batches(&self, events: &[Value]) -> Result<Option<Instant>, BenchError> {
        let mut first = None;
        for chunk in events.chunks(1000) {
            let answer = self
                .post("/events:batch", &json!({"events": chunk}), 202)
                .await?;
            first.get_or_insert_with(Instant::now);
            let results = answer["results"].as_array().map_or(&[][..], Vec::as_slice);
            if results.len() != chunk.len() {
                return Err(BenchError::Unexpected {
                    what: "POST /events:batch".into(),
                    detail: format!("{} results for {} events", results.len(), chunk.len()),
                });
            }
            results.iter().try_for_each(expect_applied)?;
        }
        Ok(first)
    }

    /// Users the dev-target holds now.
    #[must_use]
    pub fn target_users(&self) -> u64 {
        self.target.stats()["users"].as_u64().unwrap_or(0)
    }

    /// Waits until the dev-target holds `n` users, polling its store every 5 ms.
    pub async fn wait_for_users(&self, n: u64, deadline: Duration) -> Result<Instant, BenchError> {
        let start = Instant::now();
        loop {
            if self.target_users() >= n {
                return Ok(Instant::now());
            }
            if start.elapsed() > deadline {
                return Err(BenchError::Timeout {
                    what: format!(
                        "{n} users on the dev-target (it holds {})",
                        self.target_users()
                    ),
                    after: deadline,
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// `GET /apps/{id}/status`: queue depth per lane, running and dead jobs. (`GET /jobs`
    /// cannot serve here: it fails on rows whose `updated_at` the lease release wrote as an
    /// integer, see the bench report.)
    pub async fn app_status(&self, app: &str) -> Result<Value, BenchError> {
        self.get(&format!("/apps/{app}/status")).await
    }

    /// No job of `app` is pending or running.
    pub async fn queue_is_empty(&self, app: &str) -> Result<bool, BenchError> {
        let status = self.app_status(app).await?;
        let queued: i64 = ["deprovision", "normal", "reconcile"]
            .iter()
            .map(|lane| status["queue"][lane].as_i64().unwrap_or(0))
            .sum();
        Ok(queued == 0 && status["running"].as_i64().unwrap_or(0) == 0)
    }
}

impl Drop for Harness {
    /// A scenario that failed half-way still stops roster's server and engine.
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.shutdown.cancel();
        }
    }
}

async fn read_answer(
    what: String,
    answer: reqwest::Response,
    expect: u16,
) -> Result<Value, BenchError> {
    let status = answer.status().as_u16();
    let text = answer.text().await.map_err(|source| BenchError::Http {
        what: what.clone(),
        source,
    })?;
    if status != expect {
        return Err(BenchError::Status {
            what,
            status,
            body: text.chars().take(500).collect(),
        });
    }
    serde_json::from_str(&text).map_err(|e| BenchError::Unexpected {
        what,
        detail: format!(
            "not JSON ({e}): {}",
            text.chars().take(200).collect::<String>()
        ),
    })
}

fn expect_applied(answer: &Value) -> Result<(), BenchError> {
    if answer["result"] == "applied" {
        Ok(())
    } else {
        Err(BenchError::Unexpected {
            what: "an HR event".into(),
            detail: format!("not applied: {answer}"),
        })
    }
}

/// Now, as HR sends it (RFC 3339, milliseconds): later events win over earlier ones.
#[must_use]
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A joiner for employee `{prefix}{i}` in the app's scope.
#[must_use]
pub fn joiner(prefix: &str, i: usize) -> Value {
    let id = format!("{prefix}{i}");
    json!({
        "event_id": format!("j-{id}"),
        "type": "joiner",
        "occurred_at": now_rfc3339(),
        "employee": {
            "employee_id": id,
            "user_name": id.to_lowercase(),
            "email": format!("{}@example.com", id.to_lowercase()),
            "given_name": "Bench",
            "family_name": format!("User {i}"),
            "department": "Engineering",
            "title": "Engineer",
        },
    })
}

/// A mover changing employee `id`'s title; `n` makes the event id unique.
#[must_use]
pub fn mover(id: &str, n: usize) -> Value {
    json!({
        "event_id": format!("m-{id}-{n}"),
        "type": "mover",
        "occurred_at": now_rfc3339(),
        "employee": {"employee_id": id, "title": format!("Engineer {n}")},
    })
}

#[must_use]
pub fn leaver(id: &str) -> Value {
    json!({
        "event_id": format!("l-{id}"),
        "type": "leaver",
        "occurred_at": now_rfc3339(),
        "employee": {"employee_id": id},
    })
}

/// The baseline: `n` SCIM user creates POSTed straight to `base_url` by `concurrency` tasks
/// sharing one keep-alive client. Returns the elapsed time.
pub async fn raw_creates(
    base_url: &str,
    n: usize,
    concurrency: usize,
    deadline: Duration,
) -> Result<Duration, BenchError> {
    let http = client()?;
    let next = Arc::new(AtomicUsize::new(0));
    let url = format!("{base_url}/Users");
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (http, next, url) = (http.clone(), next.clone(), url.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok(());
                }
                let user = json!({
                    "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                    "userName": format!("raw{i}"),
                    "externalId": format!("RAW{i}"),
                    "name": {"givenName": "Bench", "familyName": format!("User {i}")},
                    "displayName": format!("Bench User {i}"),
                    "emails": [{"type": "work", "value": format!("raw{i}@example.com"), "primary": true}],
                    "title": "Engineer",
                    "active": true,
                });
                let answer = http
                    .post(&url)
                    .bearer_auth(TARGET_TOKEN)
                    .json(&user)
                    .send()
                    .await
                    .map_err(|source| BenchError::Http {
                        what: "raw POST /Users".into(),
                        source,
                    })?;
                let status = answer.status().as_u16();
                // Read the body, as a client must to reuse the connection.
                let body = answer.bytes().await.map_err(|source| BenchError::Http {
                    what: "raw POST /Users".into(),
                    source,
                })?;
                if status != 201 {
                    return Err(BenchError::Status {
                        what: "raw POST /Users".into(),
                        status,
                        body: String::from_utf8_lossy(&body).chars().take(300).collect(),
                    });
                }
            }
        });
    }
    join_all(tasks, deadline, "the raw create loop").await?;
    Ok(start.elapsed())
}

/// A `roster dev-target` in a process of its own (killed when dropped), so that the figures of
/// this process (its resident set) are roster's alone.
pub struct TargetProcess {
    child: tokio::process::Child,
    /// `http://ADDR/scim/v2`.
    pub base_url: String,
    http: reqwest::Client,
}

impl TargetProcess {
    /// Starts `exe dev-target` on a free loopback port and reads the URL it prints.
    pub async fn spawn(exe: &std::path::Path) -> Result<Self, BenchError> {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(exe)
            .args([
                "dev-target",
                "--listen",
                "127.0.0.1:0",
                "--token",
                TARGET_TOKEN,
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BenchError::Setup(format!("starting {}: {e}", exe.display())))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| BenchError::Setup("the dev-target's stdout".into()))?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let read_url = async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("http://") {
                    return Some(line);
                }
            }
            None
        };
        let base_url = tokio::time::timeout(Duration::from_secs(30), read_url)
            .await
            .ok()
            .flatten()
            .ok_or_else(|| BenchError::Setup("the dev-target process printed no URL".into()))?;
        Ok(Self {
            child,
            base_url,
            http: client()?,
        })
    }

    /// Seeds `accounts` as users (`POST /_dev/users:load`); returns their ids, in order.
    pub async fn load_users(&self, accounts: &[Value]) -> Result<Vec<Option<String>>, BenchError> {
        load_users(&self.http, &self.base_url, accounts).await
    }
}

/// Seeds `accounts` as users of the dev-target (or tenant) whose SCIM root is `base_url`
/// (`POST …/_dev/users:load`); returns their ids, in order.
pub async fn load_users(
    http: &reqwest::Client,
    base_url: &str,
    accounts: &[Value],
) -> Result<Vec<Option<String>>, BenchError> {
    let root = base_url
        .strip_suffix(crate::dev_target::SCIM_ROOT)
        .unwrap_or(base_url);
    let mut body = Vec::with_capacity(accounts.len() * 400);
    for account in accounts {
        serde_json::to_writer(&mut body, account).map_err(|e| BenchError::Unexpected {
            what: "seeding the dev-target".into(),
            detail: e.to_string(),
        })?;
        body.push(b'\n');
    }
    let what = "POST /_dev/users:load".to_owned();
    let answer = http
        .post(format!("{root}/_dev/users:load"))
        .body(body)
        .send()
        .await
        .map_err(|source| BenchError::Http {
            what: what.clone(),
            source,
        })?;
    let loaded = read_answer(what, answer, 200).await?;
    Ok(loaded["ids"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .map(|id| id.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

impl Drop for TargetProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Joins every task, failing on the first error or when `deadline` passes.
pub async fn join_all(
    mut tasks: tokio::task::JoinSet<Result<(), BenchError>>,
    deadline: Duration,
    what: &str,
) -> Result<(), BenchError> {
    let joined = tokio::time::timeout(deadline, async {
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(e) => {
                    return Err(BenchError::Unexpected {
                        what: what.to_owned(),
                        detail: format!("a task failed: {e}"),
                    });
                }
            }
        }
        Ok(())
    })
    .await;
    match joined {
        Ok(result) => result,
        Err(_) => {
            tasks.abort_all();
            Err(BenchError::Timeout {
                what: what.to_owned(),
                after: deadline,
            })
        }
    }
}
