//! A seeded chaos soak: a random stream of joiners, movers, leavers and re-hires against a
//! faulty target, with `roster serve` killed (SIGKILL) and restarted mid-stream; at the end the
//! target must hold exactly what the accepted events say, account by account.
//!
//! Replay a failure with `ROSTER_CHAOS_SEED=<seed>` (printed at the start and in every failure
//! message): the events, the target's fault draws and the kills (after how many accepted events,
//! and how long after that) follow the seed. What the engine had in flight at that moment still
//! depends on the machine's speed.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::{ADMIN, Cluster, TOKEN};

const PEOPLE: usize = 60;
const EVENTS: usize = 300;
const FEEDERS: usize = 4;
const DEPARTMENTS: [&str; 5] = ["Eng", "Sales", "Ops", "Legal", "Contractors"];
/// Out of the app's scope (its rule group `staff` is everyone else).
const OUT_OF_SCOPE: &str = "Contractors";
const TITLES: [&str; 5] = ["Engineer", "Manager", "Analyst", "Director", "Intern"];
const FAMILY: [&str; 6] = [
    "Lovelace", "Hopper", "Turing", "Noether", "Curie", "Shannon",
];
const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

#[derive(Debug, Clone, PartialEq)]
struct Person {
    given: String,
    family: String,
    department: String,
    title: String,
    active: bool,
}

fn email(p: usize) -> String {
    format!("chaos{p}@example.com")
}

fn employee_id(p: usize) -> String {
    format!("C{p}")
}

/// The event stream and the model it implies, from the seed alone.
fn generate(seed: u64) -> (Vec<(usize, Value)>, BTreeMap<usize, Person>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model: BTreeMap<usize, Person> = BTreeMap::new();
    let mut events = Vec::with_capacity(EVENTS);
    // Strictly increasing times, so no event is stale; two hours ago, well inside the window.
    let start = chrono::Utc::now() - chrono::Duration::hours(2);
    for i in 0..EVENTS {
        let p = rng.gen_range(0..PEOPLE);
        let at = (start + chrono::Duration::seconds(i as i64)).to_rfc3339();
        let pick = |rng: &mut StdRng, from: &[&str]| from[rng.gen_range(0..from.len())].to_owned();
        let event_id = format!("chaos-{seed}-{i}");
        let active = model.get(&p).is_some_and(|x| x.active);
        let (kind, employee) = match active {
            // Never joined, or a leaver: a (re-)hire with a full record.
            false => {
                let person = Person {
                    given: format!("Given{p}"),
                    family: pick(&mut rng, &FAMILY),
                    department: pick(&mut rng, &DEPARTMENTS),
                    title: pick(&mut rng, &TITLES),
                    active: true,
                };
                let employee = json!({"employee_id": employee_id(p), "email": email(p),
                    "user_name": email(p), "given_name": person.given, "family_name": person.family,
                    "department": person.department, "title": person.title});
                model.insert(p, person);
                ("joiner", employee)
            }
            true if rng.gen_bool(0.25) => {
                if let Some(person) = model.get_mut(&p) {
                    person.active = false;
                }
                ("leaver", json!({"employee_id": employee_id(p)}))
            }
            // A mover: one or two fields change (department moves people in and out of scope).
            true => {
                let mut employee = json!({"employee_id": employee_id(p)});
                let person = model.get_mut(&p).expect("active person");
                for _ in 0..rng.gen_range(1..=2) {
                    match rng.gen_range(0..3) {
                        0 => {
                            person.department = pick(&mut rng, &DEPARTMENTS);
                            employee["department"] = json!(person.department);
                        }
                        1 => {
                            person.title = pick(&mut rng, &TITLES);
                            employee["title"] = json!(person.title);
                        }
                        _ => {
                            person.family = pick(&mut rng, &FAMILY);
                            employee["family_name"] = json!(person.family);
                        }
                    }
                }
                ("mover", employee)
            }
        };
        events.push((
            p,
            json!({"event_id": event_id, "type": kind, "occurred_at": at, "employee": employee}),
        ));
    }
    (events, model)
}

fn app(base_url: &str) -> Value {
    let src = |target: &str, source: &str| json!({"target": target, "source": source});
    json!({
        "name": "chaos",
        "base_url": base_url,
        "auth": {"type": "bearer", "token": TOKEN},
        // Above the target's own limit (12/s), so it answers 429s.
        "rate_limit": {"per_second": 60, "burst": 20},
        "max_concurrency": 4,
        // Hung requests give up quickly; the soak checks convergence, not the dead letter.
        "timeout_ms": 1500,
        "max_attempts": 50,
        "scope": {"groups": ["staff"], "email_domains": ["example.com"]},
        "mappings": [
            src("userName", "email"),
            src("externalId", "employee_id"),
            src("name.givenName", "given_name"),
            src("name.familyName", "family_name"),
            src("emails[type eq \"work\"].value", "email"),
            src("title", "title"),
            src(&format!("{ENTERPRISE}:department"), "department"),
        ],
        "deprovision": {"action": "deactivate"},
        "reconcile": {"interval_minutes": 0},
    })
}

/// The differences between the model and one target account (or its absence).
fn differences(p: usize, want: &Person, account: Option<&Value>) -> Vec<String> {
    let in_scope = want.active && want.department != OUT_OF_SCOPE;
    let Some(a) = account else {
        return if in_scope {
            vec![format!("{}: no account, expected an active one", email(p))]
        } else {
            Vec::new()
        };
    };
    let mut out = Vec::new();
    let active = a["active"].as_bool().unwrap_or(true);
    if !in_scope {
        if active {
            out.push(format!(
                "{}: active, but {} (department {})",
                email(p),
                if want.active {
                    "out of scope"
                } else {
                    "a leaver"
                },
                want.department
            ));
        }
        return out;
    }
    let checks = [
        ("active", json!(true), json!(active)),
        ("externalId", json!(employee_id(p)), a["externalId"].clone()),
        (
            "name.givenName",
            json!(want.given),
            a["name"]["givenName"].clone(),
        ),
        (
            "name.familyName",
            json!(want.family),
            a["name"]["familyName"].clone(),
        ),
        ("title", json!(want.title), a["title"].clone()),
        (
            "department",
            json!(want.department),
            a[ENTERPRISE]["department"].clone(),
        ),
    ];
    for (path, expected, got) in checks {
        if expected != got {
            out.push(format!(
                "{}: {path} is {got}, expected {expected}",
                email(p)
            ));
        }
    }
    out
}

/// Fails the soak because the queue did not settle, with what says why: the app's state, each
/// open job (due in how long, whose lease), the node's delivery metrics and its log.
async fn unsettled(cluster: &Cluster, node: &super::Node, log: &std::path::Path, tag: &str) -> ! {
    let now = chrono::Utc::now().timestamp_millis();
    let apps = cluster
        .rows("SELECT name, state, state_reason, paused_by FROM app")
        .await;
    let jobs = cluster
        .rows(
            "SELECT id, lane, state, attempts, run_at, lease_owner, lease_until, last_error \
             FROM job WHERE state IN ('pending', 'running') ORDER BY id",
        )
        .await;
    // Due in, and lease left, in milliseconds from now (negative: past).
    let jobs: Vec<Value> = jobs
        .into_iter()
        .map(|mut job| {
            for (at, left) in [("run_at", "due_in_ms"), ("lease_until", "lease_left_ms")] {
                if let Some(t) = job[at].as_i64() {
                    job[left] = json!(t - now);
                }
            }
            job
        })
        .collect();
    let metrics = match reqwest::get(format!("{}/metrics", node.base)).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => format!("(no metrics: {e})"),
    };
    let metrics: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            [
                "roster_queue_",
                "roster_app_quarantined",
                "roster_throttled_total",
            ]
            .iter()
            .any(|m| l.starts_with(m))
        })
        .collect();
    let log = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let notable: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    let last = &lines[lines.len().saturating_sub(60)..];
    panic!(
        "the queue did not settle: {} jobs open {tag}\napps: {apps:?}\njobs: {jobs:#?}\n\
         metrics:\n{}\nwarnings and errors ({}, the last 80):\n{}\nthe log's last lines:\n{}\n{tag}",
        jobs.len(),
        metrics.join("\n"),
        notable.len(),
        notable[notable.len().saturating_sub(80)..].join("\n"),
        last.join("\n"),
    );
}

async fn queue_rows(cluster: &Cluster, states: &str) -> Vec<Value> {
    cluster
        .rows(&format!(
            "SELECT id, state, attempts, last_error FROM job WHERE state IN ({states})"
        ))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_chaos_soak_converges_to_the_model() {
    soak(Uniqueness::Enforced).await;
}

/// The same soak against a target that accepts a second account with a taken userName: a
/// create retried after its reply was lost, or sent after a kill -9 mid-call, would make a
/// duplicate there; roster must look (again) before every create instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_chaos_soak_against_a_target_without_uniqueness_makes_no_duplicate() {
    soak(Uniqueness::NotEnforced).await;
}

/// Whether the soak's target answers a second create of one userName 409 `uniqueness`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Uniqueness {
    Enforced,
    NotEnforced,
}

async fn soak(uniqueness: Uniqueness) {
    let seed = std::env::var("ROSTER_CHAOS_SEED")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    let tag = format!("[replay: ROSTER_CHAOS_SEED={seed}, userName uniqueness {uniqueness:?}]");
    eprintln!("chaos soak {tag}");
    let started = Instant::now();
    let (events, model) = generate(seed);
    let counts = events.iter().fold(HashMap::new(), |mut m, (_, e)| {
        *m.entry(e["type"].as_str().unwrap_or_default().to_owned())
            .or_insert(0) += 1;
        m
    });
    eprintln!(
        "{} events {counts:?} for {} people {tag}",
        events.len(),
        model.len()
    );

    let target = roster::dev_target::spawn(roster::dev_target::DevTargetArgs {
        token: Some(TOKEN.into()),
        latency_ms: 2,
        rate_limit: Some(12),
        fail_rate: 0.03,
        hang_rate: 0.01,
        // Twice the lost replies where a create sent again would be a second account.
        drop_reply_rate: match uniqueness {
            Uniqueness::Enforced => 0.04,
            Uniqueness::NotEnforced => 0.08,
        },
        allow_duplicate_user_names: uniqueness == Uniqueness::NotEnforced,
        seed: Some(seed),
        ..Default::default()
    })
    .await
    .expect("dev-target");
    let cluster = Cluster::new().await;
    // Every node's log, at info, in one file: printed (its warnings and errors, and its last
    // lines) when the queue does not settle.
    let log_path = cluster._dir.path().join("roster.log");
    let log = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("log file")
    };
    let mut node = cluster.start_logging("info", log()).await;
    let r = node
        .post(
            "/api/v1/groups",
            &json!({"name": "staff", "rule": {"not": {"attribute": "department", "op": "eq", "value": OUT_OF_SCOPE}}}),
        )
        .await
        .expect("create group");
    assert_eq!(r.status().as_u16(), 201, "{tag}");
    let r = node
        .post("/api/v1/apps", &app(&target.base_url()))
        .await
        .expect("create app");
    assert_eq!(
        r.status().as_u16(),
        201,
        "{} {tag}",
        r.text().await.unwrap_or_default()
    );

    // The HR feed: each person's events in order, through one of four feeders; anything not
    // answered 202 (roster down, a 5xx) is sent again, as a real feed would.
    let base = Arc::new(Mutex::new(node.base.clone()));
    let accepted = Arc::new(Mutex::new(0usize));
    let mut feeders = Vec::new();
    for f in 0..FEEDERS {
        let mine: Vec<Value> = events
            .iter()
            .filter(|(p, _)| p % FEEDERS == f)
            .map(|(_, e)| e.clone())
            .collect();
        let (base, accepted, tag) = (base.clone(), accepted.clone(), tag.clone());
        feeders.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("client");
            let deadline = Instant::now() + Duration::from_secs(60);
            for event in mine {
                loop {
                    assert!(
                        Instant::now() < deadline,
                        "the feed is stuck at {event} {tag}"
                    );
                    let url = base.lock().map(|b| b.clone()).unwrap_or_default();
                    match http
                        .post(format!("{url}/api/v1/events"))
                        .bearer_auth(ADMIN)
                        .json(&event)
                        .send()
                        .await
                    {
                        Ok(r) if r.status().as_u16() == 202 => break,
                        Ok(r) if r.status().is_client_error() => panic!(
                            "{event} refused: {} {} {tag}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        ),
                        _ => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
                if let Ok(mut a) = accepted.lock() {
                    *a += 1;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
    }

    // Two kill -9s mid-stream, each followed by a restart on the same database; when, from the
    // seed: one in each third of the stream, then a pause of up to half a second.
    let mut kills = StdRng::seed_from_u64(seed ^ 0x6b69_6c6c);
    for round in 1..=2 {
        let at = kills.gen_range(EVENTS * round / 3..EVENTS * (round + 1) / 3);
        let pause = Duration::from_millis(kills.gen_range(0..500));
        let deadline = Instant::now() + Duration::from_secs(60);
        while accepted.lock().map(|a| *a).unwrap_or(0) < at {
            assert!(
                Instant::now() < deadline,
                "the feed stalled before kill {round} {tag}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(pause).await;
        node.kill9();
        eprintln!(
            "kill -9 #{round} {pause:?} after {at} events, {} accounts in the target, at {:?} {tag}",
            target.stats()["users"],
            started.elapsed()
        );
        cluster.assert_integrity().await;
        node = cluster.start_logging("info", log()).await;
        if let Ok(mut b) = base.lock() {
            b.clone_from(&node.base);
        }
    }
    for f in feeders {
        f.await
            .unwrap_or_else(|e| panic!("a feeder failed: {e} {tag}"));
    }
    eprintln!(
        "all {} events accepted at {:?} {tag}",
        events.len(),
        started.elapsed()
    );

    // Settle: nothing pending or running (retries wait out their backoff; faults stay on).
    let deadline = Instant::now() + Duration::from_secs(75);
    loop {
        let open = queue_rows(&cluster, "'pending', 'running'").await;
        if open.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            unsettled(&cluster, &node, &log_path, &tag).await;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "settled at {:?}; target stats {} {tag}",
        started.elapsed(),
        target.stats()
    );
    let dead = queue_rows(&cluster, "'dead'").await;
    assert!(dead.is_empty(), "dead jobs: {dead:?} {tag}");

    // Account by account.
    let accounts = target.users_snapshot();
    let mut by_user_name: HashMap<String, Vec<&Value>> = HashMap::new();
    for a in &accounts {
        by_user_name
            .entry(a["userName"].as_str().unwrap_or_default().to_lowercase())
            .or_default()
            .push(a);
    }
    let mut diffs = Vec::new();
    for (user_name, found) in &by_user_name {
        if found.len() > 1 {
            diffs.push(format!("{user_name}: {} accounts", found.len()));
        }
        if !model.keys().any(|p| email(*p) == *user_name) {
            diffs.push(format!("{user_name}: an account nobody asked for"));
        }
    }
    let mut external_ids: HashMap<String, usize> = HashMap::new();
    for a in &accounts {
        *external_ids
            .entry(a["externalId"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    diffs.extend(
        external_ids
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, n)| format!("externalId {id}: created {n} times")),
    );
    let mut expected_active = 0;
    for (p, want) in &model {
        let account = by_user_name
            .get(&email(*p))
            .and_then(|v| v.first().copied());
        diffs.extend(differences(*p, want, account));
        expected_active += usize::from(want.active && want.department != OUT_OF_SCOPE);
    }
    // Every account roster holds a link to is the one in the target.
    let links = cluster
        .rows("SELECT resource_id, target_id FROM link WHERE resource_kind = 'user' AND target_id IS NOT NULL")
        .await;
    for l in &links {
        let person = l["resource_id"].as_str().unwrap_or_default();
        let target_id = l["target_id"].as_str().unwrap_or_default();
        if !accounts.iter().any(|a| a["id"] == target_id) {
            diffs.push(format!(
                "identity {person}: linked to {target_id}, which the target does not hold"
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} difference(s) between the model and the target:\n{}\n{tag}",
        diffs.len(),
        diffs.join("\n")
    );
    let active = accounts
        .iter()
        .filter(|a| a["active"].as_bool().unwrap_or(true))
        .count();
    assert_eq!(active, expected_active, "{tag}");
    let stats = target.stats();
    eprintln!(
        "{} accounts ({active} active) match the model; faults seen: {} failed, {} hung, {} dropped, {} throttled; {:?} {tag}",
        accounts.len(),
        stats["failed"],
        stats["hung"],
        stats["dropped"],
        stats["throttled"],
        started.elapsed()
    );
    // Lost replies are what would make a create be sent twice: the soak must have had some.
    assert!(
        stats["failed"].as_u64() > Some(0)
            && stats["throttled"].as_u64() > Some(0)
            && stats["dropped"].as_u64() > Some(0),
        "the soak saw faults: {stats} {tag}"
    );
}
