//! `roster demo`: roster seen working in one command. Everything runs in this process on
//! loopback: a dev-target SCIM server, roster on a temporary SQLite database, and a script that
//! plays joiners, a mover, a leaver, a by-hand change and a ghost account, then reconciles;
//! then a nightly HR export catches a leaver whose event was lost, and a truncated one is held.
//! It talks to roster only through its HTTP API, as a platform team and an HR system would.
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::config::Config;
use crate::dev_target::{self, DevTargetArgs, Kind};
use crate::startup;

const TARGET_TOKEN: &str = "demo-target-token";

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    Step(String),
}

fn step(msg: impl Into<String>) -> DemoError {
    DemoError::Step(msg.into())
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), DemoError> {
        let mut req = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| step(format!("{path}: {e}")))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value, DemoError> {
        let (status, v) = self.call(reqwest::Method::POST, path, Some(body)).await?;
        if !(200..300).contains(&status) {
            return Err(step(format!("POST {path} answered {status}: {v}")));
        }
        Ok(v)
    }

    /// Posts an HR export (CSV) to `/hr/snapshots` and waits until it settles (applied, held
    /// or rejected); returns the snapshot.
    async fn snapshot(&self, csv: String) -> Result<Value, DemoError> {
        let resp = self
            .http
            .post(format!("{}/api/v1/hr/snapshots", self.base))
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "text/csv")
            .body(csv)
            .send()
            .await
            .map_err(|e| step(format!("/hr/snapshots: {e}")))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        if status != 202 {
            return Err(step(format!(
                "POST /hr/snapshots answered {status}: {text}"
            )));
        }
        let id = serde_json::from_str::<Value>(&text).unwrap_or(Value::Null)["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let started = Instant::now();
        loop {
            let snapshot = self.get(&format!("/hr/snapshots/{id}")).await?;
            let state = snapshot["state"].as_str().unwrap_or_default();
            if !["received", "diffing", "applying"].contains(&state) {
                return Ok(snapshot);
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(step("the HR snapshot did not settle"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn get(&self, path: &str) -> Result<Value, DemoError> {
        let (status, v) = self.call(reqwest::Method::GET, path, None).await?;
        if status != 200 {
            return Err(step(format!("GET {path} answered {status}: {v}")));
        }
        Ok(v)
    }
}

fn event(id: &str, kind: &str, employee: Value) -> Value {
    json!({"event_id": id, "type": kind, "occurred_at": chrono::Utc::now().to_rfc3339(), "employee": employee})
}

fn find<'a>(users: &'a [Value], user_name: &str) -> Option<&'a Value> {
    users.iter().find(|u| {
        u["userName"]
            .as_str()
            .is_some_and(|n| n.eq_ignore_ascii_case(user_name))
    })
}

/// Polls `check` every few milliseconds until it holds; returns how long that took.
async fn until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> bool,
) -> Result<Duration, DemoError> {
    let started = Instant::now();
    while !check() {
        if started.elapsed() > timeout {
            return Err(step(format!("timed out waiting for {what}")));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(started.elapsed())
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// Runs the demo, printing a short account of what happened to stdout.
pub async fn run() -> Result<(), DemoError> {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("roster-demo-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).map_err(|e| step(format!("temporary directory: {e}")))?;
    let result = play(&dir, started).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn play(dir: &std::path::Path, started: Instant) -> Result<(), DemoError> {
    let target = dev_target::spawn(DevTargetArgs {
        token: Some(TARGET_TOKEN.into()),
        ..Default::default()
    })
    .await
    .map_err(|e| step(format!("dev-target: {e}")))?;
    let admin = crate::crypto::random_token();
    let config = Config {
        database_url: format!("sqlite://{}?mode=rwc", dir.join("roster.db").display()),
        listen: "127.0.0.1:0".into(),
        admin_token: Some(admin.clone().into()),
        secret_key: Some(crate::crypto::SecretBox::generate_base64().into()),
        workers: 8,
        allow_private_targets: true,
        ..Config::default()
    };
    let (roster, _) = startup::build(config)
        .await
        .map_err(|e| step(e.to_string()))?;
    let server = startup::serve(roster, "127.0.0.1:0")
        .await
        .map_err(|e| step(e.to_string()))?;
    let api = Api {
        http: reqwest::Client::new(),
        base: format!("http://{}", server.addr),
        token: admin,
    };
    println!(
        "roster demo: everything below runs in this process, on loopback, in a temporary SQLite database.\n"
    );
    println!("  SCIM target (dev-target)  {}", target.base_url());
    println!(
        "  roster API                {}/api/v1   (Swagger UI at /docs)\n",
        api.base
    );

    api.post("/groups", &json!({"name": "admins", "members": ["E1"]}))
        .await?;
    api.post(
        "/groups",
        &json!({"name": "engineering", "rule": "department eq \"Engineering\""}),
    )
    .await?;
    let app = api
        .post(
            "/apps",
            &json!({
                "name": "acme-crm", "base_url": target.base_url(),
                "auth": {"type": "bearer", "token": TARGET_TOKEN},
                "rate_limit": {"per_second": 50, "burst": 50},
                "scope": {"email_domains": ["example.com"]},
                "mappings": [
                    {"target": "userName", "source": "email"},
                    {"target": "name.givenName", "source": "given_name"},
                    {"target": "name.familyName", "source": "family_name"},
                    {"target": "emails[type eq \"work\"].value", "source": "email"},
                    {"target": "title", "source": "title"},
                    {"target": "externalId", "source": "employee_id"}],
                "role_mapping": {"target": "roles[primary eq true].value", "default": "member",
                                 "rules": [{"group": "admins", "value": "admin"}]},
                "reconcile": {"interval_minutes": 0, "mode": "fix"}
            }),
        )
        .await?;
    let app_id = app["id"].as_str().unwrap_or_default().to_owned();
    println!(
        "1. Registered app \"acme-crm\": userName ← email, role \"admin\" for group \"admins\", only @example.com accounts."
    );

    let t = Instant::now();
    let people = [
        (
            "E1",
            "ada@example.com",
            "Ada",
            "Lovelace",
            "Engineering",
            "Chief Engineer",
        ),
        (
            "E2",
            "grace@example.com",
            "Grace",
            "Hopper",
            "Engineering",
            "Engineer",
        ),
        (
            "E3",
            "linus@example.com",
            "Linus",
            "Torvalds",
            "Engineering",
            "Engineer",
        ),
        (
            "X1",
            "contractor@partner.org",
            "Casey",
            "Contractor",
            "Engineering",
            "Contractor",
        ),
    ];
    let events: Vec<Value> = people
        .iter()
        .map(|(id, email, given, family, dept, title)| {
            event(
                &format!("demo-join-{id}"),
                "joiner",
                json!({"employee_id": id, "email": email, "user_name": email,
                "given_name": given, "family_name": family, "department": dept, "title": title}),
            )
        })
        .collect();
    api.post("/events:batch", &json!({"events": events}))
        .await?;
    let took = until("the joiners in the target", Duration::from_secs(20), || {
        target.stats()["users"] == 3
    })
    .await?;
    let users = target.users_snapshot();
    let ada_role = find(&users, "ada@example.com")
        .map(|u| u["roles"][0]["value"].clone())
        .unwrap_or_default();
    println!(
        "2. Joiners ada, grace, linus (and contractor@partner.org): 3 accounts created {} after the batch was accepted (request included: {}).",
        ms(took),
        ms(t.elapsed())
    );
    println!(
        "   ada got role {ada_role} from group \"admins\"; the contractor was not provisioned: outside the managed domain."
    );

    api.post(
        "/events",
        &event(
            "demo-move-E2",
            "mover",
            json!({"employee_id": "E2", "title": "Rear Admiral"}),
        ),
    )
    .await?;
    let took = until("the mover's title", Duration::from_secs(20), || {
        find(&target.users_snapshot(), "grace@example.com")
            .is_some_and(|u| u["title"] == "Rear Admiral")
    })
    .await?;
    println!(
        "3. Mover: grace becomes \"Rear Admiral\" → her title changed in the app {} after the event.",
        ms(took)
    );

    api.post(
        "/events",
        &event("demo-leave-E3", "leaver", json!({"employee_id": "E3"})),
    )
    .await?;
    let took = until("the leaver deactivated", Duration::from_secs(20), || {
        find(&target.users_snapshot(), "linus@example.com")
            .is_some_and(|u| u["active"] == json!(false))
    })
    .await?;
    println!(
        "4. Leaver: linus → account deactivated in the app {} after the HR event was accepted.",
        ms(took)
    );

    // Someone edits the app by hand, and someone creates an account roster knows nothing of.
    let ada_id = find(&target.users_snapshot(), "ada@example.com")
        .and_then(|u| u["id"].as_str().map(str::to_owned))
        .unwrap_or_default();
    target.edit(Kind::User, &ada_id, |u| u["title"] = json!("Intern"));
    target
        .insert(Kind::User, json!({"schemas": [crate::scim::schemas::USER], "userName": "ghost@example.com", "active": true}))
        .map_err(|e| step(format!("ghost account: {e}")))?;
    target
        .insert(Kind::User, json!({"schemas": [crate::scim::schemas::USER], "userName": "auditor@partner.org", "active": true}))
        .map_err(|e| step(format!("external account: {e}")))?;
    println!(
        "5. By hand in the app: ada's title set to \"Intern\"; ghost@example.com and auditor@partner.org created."
    );

    let report = reconcile(&api, &app_id, &target, false).await?;
    let c = &report["counts"];
    println!(
        "6. Reconcile (fix): in_sync {}, drifted {}, missing {}, orphan {}, unmatched {}, unmanaged {}, adoptable {}; {} write(s) queued.",
        c["in_sync"],
        c["drifted"],
        c["missing"],
        c["orphan"],
        c["unmatched"],
        c["unmanaged"],
        c["adoptable"],
        report["writes"]
    );
    for item in report["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["class"] != "in_sync")
    {
        let diffs: Vec<String> = item["differences"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| {
                format!(
                    "{}: app has {}, roster has {}",
                    d["path"], d["target"], d["roster"]
                )
            })
            .collect();
        println!(
            "   {:<10} {:<24} action {:<10} {}",
            item["class"].as_str().unwrap_or(""),
            item["user_name"].as_str().unwrap_or("-"),
            item["action"].as_str().unwrap_or(""),
            diffs.join("; ")
        );
    }
    until("ada's title restored", Duration::from_secs(20), || {
        find(&target.users_snapshot(), "ada@example.com")
            .is_some_and(|u| u["title"] == "Chief Engineer")
    })
    .await?;
    println!(
        "   ada's title is \"Chief Engineer\" again (fixed through the delivery queue); the ghost is\n   listed for review (deprovision_unmatched is off); the partner account is never touched."
    );

    let again = reconcile(&api, &app_id, &target, false).await?;
    println!(
        "7. Reconcile again: drifted {}, orphan {}, missing {}; {} write(s).",
        again["counts"]["drifted"],
        again["counts"]["orphan"],
        again["counts"]["missing"],
        again["writes"]
    );
    snapshots(&api, &target).await?;
    let status = api.get(&format!("/apps/{app_id}/status")).await?;
    println!(
        "\nApp status: {} · dead jobs {} · error rate {}. Done in {:.1} s.",
        status["state"],
        status["dead"],
        status["error_rate"],
        started.elapsed().as_secs_f64()
    );
    server.stop().await;
    Ok(())
}

/// People of the nightly export besides ada and the contractor: new to roster, they join
/// through it.
const NEW_IN_EXPORT: usize = 28;

/// The nightly HR export: ada, the contractor and the new people (grace is missing: she
/// left, and her leaver event was lost); only the first `limit` rows (a truncated file).
fn export(limit: usize) -> String {
    let mut rows = vec![
        "E1,ada@example.com,ada@example.com,Ada,Lovelace,Engineering,Chief Engineer".to_owned(),
        "X1,contractor@partner.org,contractor@partner.org,Casey,Contractor,Engineering,Contractor"
            .to_owned(),
    ];
    rows.extend((1..=NEW_IN_EXPORT).map(|i| {
        format!("S{i},support{i}@example.com,support{i}@example.com,Sam,Support {i},Support,Agent")
    }));
    rows.truncate(limit);
    let mut csv =
        "employee_id,user_name,email,given_name,family_name,department,title\n".to_owned();
    for row in rows {
        csv.push_str(&row);
        csv.push('\n');
    }
    csv
}

/// Steps 8 and 9: a nightly export catches a leaver whose event was lost; a truncated one is
/// held by the leaver guard.
async fn snapshots(api: &Api, target: &dev_target::DevTarget) -> Result<(), DemoError> {
    let t = Instant::now();
    let nightly = api.snapshot(export(usize::MAX)).await?;
    let c = &nightly["counts"];
    if nightly["state"] != "applied" {
        return Err(step(format!(
            "the nightly export was not applied: {nightly}"
        )));
    }
    until(
        "grace deactivated and the joiners provisioned",
        Duration::from_secs(20),
        || {
            let users = target.users_snapshot();
            let joined = users
                .iter()
                .filter(|u| {
                    u["userName"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("support"))
                })
                .count();
            joined == NEW_IN_EXPORT
                && find(&users, "grace@example.com").is_some_and(|u| u["active"] == json!(false))
        },
    )
    .await?;
    let took = t.elapsed();
    let leavers: Vec<&str> = nightly["changes"]["leavers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    println!(
        "8. Nightly HR export ({} people, CSV): grace left but her leaver event was lost, so she is missing from it.\n   Snapshot {}: joiners {}, movers {}, leavers {} ({}), unchanged {}; grace's account deactivated in the app\n   and the joiners' accounts created {} after the upload.",
        c["rows"],
        nightly["state"].as_str().unwrap_or_default(),
        c["joiners"],
        c["movers"],
        c["leavers"],
        leavers.join(", "),
        c["unchanged"],
        ms(took)
    );

    let truncated = api.snapshot(export(3)).await?;
    if truncated["state"] != "held" {
        return Err(step(format!(
            "the truncated export was not held: {truncated}"
        )));
    }
    let id = truncated["id"].as_str().unwrap_or_default();
    api.post(&format!("/hr/snapshots/{id}/cancel"), &json!({}))
        .await?;
    let active = target
        .users_snapshot()
        .iter()
        .filter(|u| u["active"] == json!(true))
        .count();
    println!(
        "9. A truncated export (3 rows): held by the leaver guard, nothing applied ({}).\n   The admin cancels it; {active} accounts stay active.",
        truncated["reason"].as_str().unwrap_or_default()
    );
    Ok(())
}

async fn reconcile(
    api: &Api,
    app_id: &str,
    target: &dev_target::DevTarget,
    dry_run: bool,
) -> Result<Value, DemoError> {
    let _ = target;
    let run = api
        .post(
            &format!("/apps/{app_id}/reconcile"),
            &json!({"dry_run": dry_run, "mode": "fix"}),
        )
        .await?;
    let id = run["id"].as_str().unwrap_or_default().to_owned();
    let started = Instant::now();
    loop {
        let report = api.get(&format!("/reconcile-runs/{id}")).await?;
        if report["state"] != "running" {
            return Ok(report);
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err(step("the reconcile run did not finish"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
