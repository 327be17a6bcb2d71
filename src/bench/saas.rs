//! `saas`: joiners into eight apps at once, each registered from a catalogue connector and each
//! against a dev-target of its own that answers 20 to 200 ms late, enforces that vendor's rate
//! limit and, where the dev-target emulates the vendor, its refusals. Meanwhile people who
//! already have accounts leave, one at a time, and their deactivation in the fastest app is
//! timed: one slow app must never hold back another.
//!
//! Figures: the time until every app holds every account against the ideal (the calls the
//! slowest app needs ÷ its rate: a create per joiner and a deactivation per leaver), target
//! calls per account, calls answered 429,
//! the leavers' p50/p99 in the fast app, and whether every app holds each account exactly once.
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::harness::{self, Harness, TARGET_TOKEN};
use super::{BenchError, Figures, Scenario, percentile_ms, round};
use crate::dev_target::{self, DevTarget, DevTargetArgs, Profile};

/// One SaaS app of the scenario: its catalogue connector, the parameters its base URL template
/// needs (the base URL itself is the dev-target's), how late its target answers, and which
/// vendor emulation the target runs.
struct Vendor {
    connector: &'static str,
    params: &'static [(&'static str, &'static str)],
    latency_ms: u64,
    profile: Profile,
    /// The target's user listings leave out only accounts outside the organisation's
    /// domains (its guests): the app says its domain (`user_listings_complete_for_domains`),
    /// as a customer would, so that a listing answers look-ups of its joiners.
    lists_whole_domain: bool,
}

/// The joiners' e-mail domain: the apps' scope, and the organisation's domain.
const DOMAIN: &str = "example.com";

/// The first is the fast app the leavers are timed in.
const VENDORS: &[Vendor] = &[
    Vendor {
        connector: "figma",
        params: &[("tenant_id", "bench")],
        latency_ms: 20,
        profile: Profile::Figma,
        lists_whole_domain: false,
    },
    Vendor {
        connector: "asana",
        params: &[],
        latency_ms: 45,
        profile: Profile::Asana,
        lists_whole_domain: true,
    },
    Vendor {
        connector: "aws-identity-center",
        params: &[("region", "eu-west-1"), ("tenant_id", "bench")],
        latency_ms: 70,
        profile: Profile::AwsIdentityCenter,
        lists_whole_domain: false,
    },
    Vendor {
        connector: "github-emu",
        params: &[("enterprise", "bench")],
        latency_ms: 95,
        profile: Profile::GithubEmu,
        lists_whole_domain: false,
    },
    Vendor {
        connector: "slack",
        params: &[("organization", "bench")],
        latency_ms: 120,
        profile: Profile::Slack,
        lists_whole_domain: false,
    },
    Vendor {
        connector: "atlassian",
        params: &[("directory_id", "bench")],
        latency_ms: 145,
        profile: Profile::Atlassian,
        lists_whole_domain: false,
    },
    Vendor {
        connector: "salesforce",
        params: &[("my_domain", "bench")],
        latency_ms: 170,
        profile: Profile::Salesforce,
        lists_whole_domain: false,
    },
    Vendor {
        connector: "zoom",
        params: &[],
        latency_ms: 200,
        profile: Profile::Zoom,
        lists_whole_domain: false,
    },
];

/// An app of the scenario, registered and running.
struct SaasApp {
    vendor: &'static Vendor,
    per_second: u32,
    /// `None` for the fast app, whose target is the harness's.
    target: Option<DevTarget>,
}

impl SaasApp {
    fn target<'a>(&'a self, harness: &'a Harness) -> &'a DevTarget {
        self.target.as_ref().unwrap_or(&harness.target)
    }
}

/// The dev-target arguments emulating `vendor` with the rate limit of its connector.
fn target_args(vendor: &Vendor) -> Result<(DevTargetArgs, u32), BenchError> {
    let connector = crate::connectors::find(vendor.connector)
        .map_err(|e| BenchError::Setup(format!("connector {}: {e}", vendor.connector)))?;
    let limit = &connector.defaults.rate_limit;
    Ok((
        DevTargetArgs {
            token: Some(TARGET_TOKEN.to_owned()),
            latency_ms: vendor.latency_ms,
            rate_limit: Some(limit.per_second),
            rate_burst: Some(limit.burst),
            profile: vendor.profile,
            ..DevTargetArgs::default()
        },
        limit.per_second,
    ))
}

pub async fn run(n: usize) -> Result<Figures, BenchError> {
    let (fast_args, _) = target_args(&VENDORS[0])?;
    let harness = Arc::new(Harness::start(fast_args).await?);
    let result = measure(&harness, n.max(1)).await;
    if let Ok(harness) = Arc::try_unwrap(harness) {
        harness.stop().await;
    }
    result
}

/// Registers `vendor`'s app from its connector, pointed at `base_url`.
async fn register(harness: &Harness, vendor: &Vendor, base_url: &str) -> Result<(), BenchError> {
    let params: serde_json::Map<String, Value> = vendor
        .params
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
        .collect();
    let mut body = json!({
        "name": format!("saas-{}", vendor.connector),
        "connector": vendor.connector,
        "connector_params": params,
        "base_url": base_url,
        "auth": {"type": "bearer", "token": TARGET_TOKEN},
        "scope": {"email_domains": [DOMAIN]},
    });
    if vendor.lists_whole_domain {
        body["quirks"] = json!({"user_listings_complete_for_domains": [DOMAIN]});
    }
    harness.post("/apps", &body, 201).await.map(drop)
}

/// A target's counters so far: every request, its look-ups and creates (GET and POST: the
/// joiners' calls; a leaver's are PATCHes), and those answered 429.
#[derive(Debug, Clone, Copy, Default)]
struct Counted {
    all: u64,
    joiners: u64,
    throttled: u64,
}

fn counted(target: &DevTarget) -> Counted {
    let stats = target.stats();
    let method = |m: &str| stats["requests"][m].as_u64().unwrap_or(0);
    Counted {
        all: super::rate_limit::total_calls(&stats),
        joiners: method("GET") + method("POST"),
        throttled: stats["throttled"].as_u64().unwrap_or(0),
    }
}

/// Posts the leaver of employee `L{i}` and returns how long until the fast app's account is
/// inactive. The account is read in-process, every 2 ms: reading it over HTTP would spend
/// the app's rate limit, which roster's own calls need.
async fn leave(
    harness: &Harness,
    ids: &std::collections::HashMap<String, String>,
    i: usize,
) -> Result<Duration, BenchError> {
    const DEADLINE: Duration = Duration::from_secs(30);
    let employee = format!("L{i}");
    let id = ids.get(&employee).ok_or_else(|| BenchError::Unexpected {
        what: "saas".into(),
        detail: format!("{employee} has no account in the fast app"),
    })?;
    let start = Instant::now();
    harness.post_event(&harness::leaver(&employee)).await?;
    loop {
        if harness
            .target
            .user(id)
            .is_some_and(|u| u["active"] == Value::Bool(false))
        {
            return Ok(start.elapsed());
        }
        if start.elapsed() > DEADLINE {
            return Err(BenchError::Timeout {
                what: format!("{employee} to be deactivated in the fast app"),
                after: DEADLINE,
            });
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until `target` holds `n` users; returns when.
async fn wait_for(
    target: &DevTarget,
    n: u64,
    deadline: Instant,
    what: &str,
) -> Result<Instant, BenchError> {
    loop {
        let users = target.stats()["users"].as_u64().unwrap_or(0);
        if users >= n {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Unexpected {
                what: what.to_owned(),
                detail: format!("{users} of {n} users before the deadline"),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn measure(harness: &Arc<Harness>, n: usize) -> Result<Figures, BenchError> {
    let mut apps = Vec::with_capacity(VENDORS.len());
    for (i, vendor) in VENDORS.iter().enumerate() {
        let (args, per_second) = target_args(vendor)?;
        let target = if i == 0 {
            None
        } else {
            Some(
                dev_target::spawn(args)
                    .await
                    .map_err(|e| BenchError::Setup(format!("dev-target: {e}")))?,
            )
        };
        let app = SaasApp {
            vendor,
            per_second,
            target,
        };
        register(harness, vendor, &app.target(harness).base_url()).await?;
        apps.push(app);
    }
    let slowest = apps.iter().map(|a| a.per_second).min().unwrap_or(1).max(1);
    let seconds_for =
        |calls: usize| Duration::from_secs(60 + 4 * calls as u64 / u64::from(slowest));

    // The leavers-to-be have their accounts in every app first.
    let leavers = (n / 10).clamp(3, 10);
    let people: Vec<_> = (0..leavers).map(|i| harness::joiner("L", i)).collect();
    harness.post_batches(&people).await?;
    let deadline = Instant::now() + seconds_for(2 * leavers);
    for app in &apps {
        wait_for(
            app.target(harness),
            leavers as u64,
            deadline,
            app.vendor.connector,
        )
        .await?;
    }
    // The fast app's accounts of the leavers-to-be, by employee: their userName is the email.
    let ids: std::collections::HashMap<String, String> = harness
        .target
        .users_snapshot()
        .iter()
        .filter_map(|u| {
            let local = u["userName"].as_str()?.split('@').next()?.to_uppercase();
            Some((local, u["id"].as_str()?.to_owned()))
        })
        .collect();
    let before: Vec<Counted> = apps.iter().map(|a| counted(a.target(harness))).collect();

    let wave: Vec<_> = (0..n).map(|i| harness::joiner("W", i)).collect();
    let started = Instant::now();
    harness.post_batches(&wave).await?;
    // The calls the slowest app needs meanwhile: a create per joiner and a deactivation per
    // leaver (every leaver leaves every app during the wave).
    let ideal = Duration::from_secs_f64((n + leavers) as f64 / f64::from(slowest));

    // The leavers, spread over the ideal time, while the wave is delivered.
    let sampler = {
        let harness = harness.clone();
        let spacing = (ideal / (leavers as u32 + 1)).min(Duration::from_secs(5));
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(leavers);
            for i in 0..leavers {
                tokio::time::sleep(spacing).await;
                latencies.push(leave(&harness, &ids, i).await?);
            }
            Ok::<_, BenchError>(latencies)
        })
    };

    let expected = (n + leavers) as u64;
    let deadline = started + ideal * 3 + Duration::from_secs(60);
    let mut per_app = serde_json::Map::new();
    let mut done_at = started;
    let (mut all_calls, mut all_throttled, mut joiner_calls) = (0u64, 0u64, 0u64);
    let mut exactly_once = true;
    for (app, before) in apps.iter().zip(&before) {
        let target = app.target(harness);
        let done = wait_for(target, expected, deadline, app.vendor.connector).await?;
        done_at = done_at.max(done);
        let after = counted(target);
        let throttled = after.throttled.saturating_sub(before.throttled);
        // Answered look-ups and creates: a 429 is counted apart.
        let for_joiners = after
            .joiners
            .saturating_sub(before.joiners)
            .saturating_sub(throttled);
        all_calls += after.all.saturating_sub(before.all);
        all_throttled += throttled;
        joiner_calls += for_joiners;
        let users = target.users_snapshot();
        let names: std::collections::HashSet<String> = users
            .iter()
            .filter_map(|u| u["userName"].as_str().map(str::to_lowercase))
            .collect();
        let once = users.len() as u64 == expected && names.len() as u64 == expected;
        exactly_once &= once;
        per_app.insert(
            app.vendor.connector.to_owned(),
            json!({
                "latency_ms": app.vendor.latency_ms,
                "per_second": app.per_second,
                "seconds": round((done - started).as_secs_f64(), 1),
                "calls_per_account": round(for_joiners as f64 / n as f64, 3),
                "throttled": throttled,
                "exactly_once": once,
            }),
        );
    }
    let elapsed = done_at - started;
    let mut latencies = sampler.await.map_err(|e| BenchError::Unexpected {
        what: "the leaver sampler".into(),
        detail: e.to_string(),
    })??;
    latencies.sort();
    Ok(Figures::new(Scenario::Saas)
        .with("n", n)
        .with("apps", apps.len())
        .with("ideal_s", round(ideal.as_secs_f64(), 1))
        .with("seconds", round(elapsed.as_secs_f64(), 1))
        .with(
            "ratio_to_ideal",
            round(elapsed.as_secs_f64() / ideal.as_secs_f64().max(1e-9), 3),
        )
        .with(
            "calls_per_account",
            round(joiner_calls as f64 / (n * apps.len()) as f64, 3),
        )
        .with("throttled", all_throttled)
        .with(
            "throttled_ratio",
            round(all_throttled as f64 / all_calls.max(1) as f64, 4),
        )
        .with("leavers", leavers)
        .with("leaver_fast_app", VENDORS[0].connector)
        .with("leaver_p50_ms", percentile_ms(&latencies, 0.5))
        .with("leaver_p99_ms", percentile_ms(&latencies, 0.99))
        .with("every_account_exactly_once", exactly_once)
        .with("per_app", Value::Object(per_app)))
}
