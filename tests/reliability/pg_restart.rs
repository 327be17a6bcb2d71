//! PostgreSQL stopped (`pg_ctl stop -m immediate`, a crash) and started again while events
//! stream in and deliveries run. The shared server on 5432 is never touched: the test runs its
//! own PostgreSQL (initdb + pg_ctl) in a temporary directory on a free loopback port.
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{ADMIN, Cluster, app_body, assert_delivered_once, free_port, joiners, target};

/// A private PostgreSQL server; stopped (immediately) when dropped.
struct PrivatePostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    /// Root may not run the server: then every server command runs as the `postgres` user.
    run_as_postgres: bool,
}

impl PrivatePostgres {
    /// The newest `/usr/lib/postgresql/*/bin` with `initdb`, else `pg_config --bindir`.
    fn bin_dir() -> Option<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("initdb").exists())
            .collect();
        dirs.sort_by_key(|d| {
            d.parent()
                .and_then(|v| v.file_name())
                .and_then(|v| v.to_str())
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0)
        });
        dirs.pop().or_else(|| {
            let out = Command::new("pg_config").arg("--bindir").output().ok()?;
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            dir.join("initdb").exists().then_some(dir)
        })
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.run_as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn init() -> Self {
        let bin = Self::bin_dir().expect(
            "PostgreSQL's server binaries (initdb, pg_ctl) are needed for this PostgreSQL test",
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        if root {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown the data directory to postgres");
        }
        let pg = Self {
            bin,
            dir,
            port: free_port(),
            run_as_postgres: root,
        };
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
    }

    /// A crash, as far as clients can tell: every connection is cut at once, no checkpoint.
    fn stop_immediately(&self) {
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-m",
                "immediate",
                "-w",
                "-t",
                "30",
                "stop",
            ],
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

async fn readyz(base: &str) -> Option<u16> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .ok()?
        .get(format!("{base}/readyz"))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// PostgreSQL crashes and comes back while 240 joiners stream in (an HR feed that retries what
/// was not answered 202) and are delivered: `/readyz` answers non-200 during the outage and 200
/// after; the same roster process reconnects; every accepted event is stored and every account
/// is POSTed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_restarted_under_load_roster_reconnects_and_loses_nothing() {
    if !super::common::on_postgres("restarting PostgreSQL") {
        return;
    }
    const N: usize = 240;
    let started = Instant::now();
    let pg = PrivatePostgres::init();
    pg.start();
    let cluster = Cluster::on(pg.url());
    let target = target(10).await;
    let node = cluster.start().await;
    let r = node
        .post("/api/v1/apps", &app_body(&target.base_url()))
        .await
        .expect("create app");
    assert_eq!(r.status().as_u16(), 201);

    // The HR feed: batches of 8, each sent again until answered 202. It outpaces delivery, so
    // every worker is busy (mid-statement) when the database goes.
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let feed = {
        let (base, accepted) = (node.base.clone(), accepted.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("client");
            let deadline = Instant::now() + Duration::from_secs(60);
            for batch in joiners("pg", N).chunks(8) {
                loop {
                    assert!(
                        Instant::now() < deadline,
                        "the feed could not deliver {batch:?}"
                    );
                    let answer = http
                        .post(format!("{base}/api/v1/events:batch"))
                        .bearer_auth(ADMIN)
                        .json(&json!({"events": batch}))
                        .send()
                        .await;
                    if answer.is_ok_and(|r| r.status().as_u16() == 202) {
                        if let Ok(mut a) = accepted.lock() {
                            a.extend(
                                batch
                                    .iter()
                                    .filter_map(|e| e["event_id"].as_str().map(str::to_owned)),
                            );
                        }
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    super::wait_for("deliveries under way", Duration::from_secs(30), || {
        target.stats()["users"].as_u64() >= Some(40)
    })
    .await;

    pg.stop_immediately();
    let down_at = Instant::now();
    let accepted_before = accepted.lock().map(|a| a.len()).unwrap_or(0);
    assert!(accepted_before < N, "the outage came mid-stream");
    // Readiness says so, promptly: an orchestrator takes the instance out of rotation.
    let mut not_ready = None;
    while down_at.elapsed() < Duration::from_secs(15) {
        match readyz(&node.base).await {
            Some(200) => tokio::time::sleep(Duration::from_millis(100)).await,
            other => {
                not_ready = Some(other);
                break;
            }
        }
    }
    let answered = not_ready.expect("/readyz still answered 200 15 s into the outage");
    assert_eq!(
        answered,
        Some(503),
        "/readyz answers 503 (not a hang) while the database is down"
    );
    let users_during = target.stats()["users"].as_u64().unwrap_or_default();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        readyz(&node.base).await,
        Some(503),
        "still not ready just before the restart"
    );

    pg.start();
    let up_at = Instant::now();
    let mut ready = false;
    while up_at.elapsed() < Duration::from_secs(30) {
        if readyz(&node.base).await == Some(200) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "/readyz did not recover within 30 s of the restart");
    eprintln!(
        "outage {:?}, ready again {:?} after the restart; {users_during} accounts during it",
        up_at - down_at,
        up_at.elapsed()
    );
    feed.await.expect("the feed finished");

    // The same process carries on: every account arrives, each POSTed once.
    super::wait_for(
        "every account after the restart",
        Duration::from_secs(60),
        || target.stats()["users"] == N,
    )
    .await;
    assert_delivered_once(&cluster, &target, N).await;
    let accepted = accepted.lock().map(|a| a.clone()).unwrap_or_default();
    assert_eq!(accepted.len(), N);
    cluster.assert_stored(&accepted).await;
    let dead = cluster
        .rows("SELECT id FROM job WHERE state = 'dead'")
        .await;
    assert!(dead.is_empty(), "no job died of the outage: {dead:?}");
    eprintln!("took {:?}", started.elapsed());
}
