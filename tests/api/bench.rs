//! `roster bench` at a smoke-test size, through the library: the figures are there and every
//! user arrived.
use roster::bench::{Options, Scenario, run};

fn number(figures: &roster::bench::Figures, key: &str) -> f64 {
    figures
        .get(key)
        .and_then(serde_json::Value::as_f64)
        .unwrap_or_else(|| panic!("no number `{key}` in {}", figures.to_line()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_delivers_every_user_and_reports_the_ratio() {
    let figures = run(
        Scenario::Throughput,
        Options {
            size: Some(50),
            ..Options::default()
        },
    )
    .await
    .expect("throughput");
    let line: serde_json::Value = serde_json::from_str(&figures.to_line()).expect("one JSON line");
    assert_eq!(line["scenario"], "throughput");
    assert_eq!(line["n"], 50);
    // Every account delivered once: 50 users, 50 distinct userNames, 50 POSTs.
    for key in ["target_users", "distinct_user_names", "target_posts"] {
        assert_eq!(number(&figures, key), 50.0, "{key}: {line}");
    }
    for key in ["roster_per_s", "raw_per_s", "ratio", "peak_rss_mb"] {
        assert!(number(&figures, key) > 0.0, "{key}: {line}");
    }
    // Created first where the target rejects duplicates: every account once, and no look-up
    // ahead of the creates (a discovery read or two at most).
    let first = &line["create_first"];
    for key in ["target_users", "distinct_user_names", "target_posts"] {
        assert_eq!(first[key], 50, "create_first {key}: {line}");
    }
    assert!(first["ratio"].as_f64().is_some_and(|r| r > 0.0), "{line}");
    assert!(
        first["target_calls_per_user"]
            .as_f64()
            .is_some_and(|c| c <= 1.05),
        "create_first: {line}"
    );
    // Looked up first in a target holding other people's accounts: 50 POSTs, none of theirs
    // adopted, and every look-up asked of the target (more than one call per user).
    let populated = &line["populated"];
    let seeded = populated["seeded_accounts"].as_u64().unwrap_or_default();
    assert!(seeded > 0, "{line}");
    assert_eq!(populated["target_posts"], 50, "{line}");
    assert_eq!(populated["target_users"], 50 + seeded, "{line}");
    assert_eq!(populated["distinct_user_names"], 50 + seeded, "{line}");
    assert!(
        populated["target_calls_per_user"]
            .as_f64()
            .is_some_and(|c| c > 1.0),
        "populated: {line}"
    );
}

/// `--repeat`: the whole scenario again, each run's ratios and CPU figures beside their median.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_repeated_reports_each_run_and_the_median() {
    let figures = run(
        Scenario::Throughput,
        Options {
            size: Some(20),
            repeat: Some(2),
            ..Options::default()
        },
    )
    .await
    .expect("throughput");
    let line: serde_json::Value = serde_json::from_str(&figures.to_line()).expect("one JSON line");
    let repeats = &line["repeats"];
    assert_eq!(repeats["runs"], 2, "{line}");
    for path in [
        "ratio",
        "cpu_ratio",
        "create_first.ratio",
        "populated.cpu_ratio",
    ] {
        let each = repeats["each"][path].as_array().map_or(0, Vec::len);
        assert_eq!(each, 2, "{path}: {line}");
        assert!(
            repeats["median"][path].as_f64().is_some_and(|m| m > 0.0),
            "{path}: {line}"
        );
    }
    // Every run delivered every account once.
    assert_eq!(number(&figures, "target_posts"), 20.0, "{line}");
}

/// With a target that answers late, as across the internet, joiners' matching look-ups queue
/// behind those in flight and leave together: well under two target calls per user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_against_a_slow_target_merges_the_look_ups() {
    let figures = run(
        Scenario::Throughput,
        Options {
            size: Some(50),
            target_latency_ms: vec![5],
            ..Options::default()
        },
    )
    .await
    .expect("throughput");
    assert_eq!(number(&figures, "target_latency_ms"), 5.0);
    assert_eq!(number(&figures, "target_users"), 50.0);
    assert_eq!(number(&figures, "distinct_user_names"), 50.0);
    assert_eq!(number(&figures, "target_posts"), 50.0, "no duplicate POST");
    let per_user = number(&figures, "target_calls_per_user");
    assert!(per_user < 1.6, "{}", figures.to_line());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_accepts_every_event_over_32_connections() {
    let figures = run(
        Scenario::Ingest,
        Options {
            size: Some(50),
            ..Options::default()
        },
    )
    .await
    .expect("ingest");
    assert_eq!(number(&figures, "n"), 50.0);
    assert_eq!(number(&figures, "connections"), 32.0);
    assert_eq!(number(&figures, "identities"), 50.0, "every event stored");
    assert!(number(&figures, "per_s") > 0.0, "{}", figures.to_line());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_classifies_every_seeded_account_correctly() {
    let figures = run(
        Scenario::Reconcile,
        Options {
            size: Some(1000),
            // The dev-target in its own process, as `roster bench reconcile` runs it.
            dev_target_exe: Some(env!("CARGO_BIN_EXE_roster").into()),
            ..Options::default()
        },
    )
    .await
    .expect("reconcile");
    let line: serde_json::Value = serde_json::from_str(&figures.to_line()).expect("one JSON line");
    assert_eq!(line["scenario"], "reconcile");
    assert_eq!(line["target_users"], 1000, "{line}");
    // 1 % drifted, 0.5 % orphans, the rest in sync; a dry run writes nothing. The counts are
    // checked against numbers computed here from the size, not only against the scenario's own
    // `expected`.
    assert_eq!(
        line["counts"],
        serde_json::json!({"in_sync": 1000 - 10 - 5, "drifted": 1000 / 100, "missing": 0,
                           "orphan": 1000 / 200, "unmatched": 0, "unmanaged": 0, "adoptable": 0,
                           "conflict": 0}),
        "{line}"
    );
    assert_eq!(
        line["expected"],
        serde_json::json!({"in_sync": 985, "drifted": 10, "missing": 0, "orphan": 5,
                           "unmatched": 0, "unmanaged": 0, "adoptable": 0, "conflict": 0}),
        "{line}"
    );
    assert_eq!(line["counts"], line["expected"], "{line}");
    assert_eq!(line["all_classified_correctly"], true, "{line}");
    assert_eq!(line["writes"], 0, "{line}");
    assert_eq!(line["dev_target"], "process", "{line}");
    for key in ["seconds", "peak_rss_mb"] {
        assert!(number(&figures, key) > 0.0, "{key}: {line}");
    }
}

/// `reconcile --apps 3 --size 200` with one run at a time: every app's run, started by the
/// scheduler's path, completes with exactly the seeded counts, and never two read at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_of_many_apps_runs_each_exactly_within_the_concurrency() {
    let figures = run(
        Scenario::Reconcile,
        Options {
            size: Some(200),
            apps: Some(3),
            reconcile_concurrency: Some(1),
            dev_target_exe: Some(env!("CARGO_BIN_EXE_roster").into()),
            ..Options::default()
        },
    )
    .await
    .expect("reconcile --apps");
    let line: serde_json::Value = serde_json::from_str(&figures.to_line()).expect("one JSON line");
    assert_eq!(line["apps"], 3, "{line}");
    assert_eq!(line["target_users_per_app"], 200, "{line}");
    // 0.5 % orphans, 1 % of the rest drifted, in every app: computed here from the size.
    assert_eq!(
        line["expected_per_app"],
        serde_json::json!({"in_sync": 200 - 1 - 2, "drifted": 2, "missing": 0, "orphan": 1,
                           "unmatched": 0, "unmanaged": 0, "adoptable": 0, "conflict": 0}),
        "{line}"
    );
    let per_app = line["per_app"].as_array().expect("per_app");
    assert_eq!(per_app.len(), 3, "{line}");
    for app in per_app {
        assert_eq!(app["state"], "completed", "{line}");
        assert_eq!(app["exact"], true, "{line}");
    }
    assert_eq!(line["runs_completed"], 3, "{line}");
    assert_eq!(line["all_classified_correctly"], true, "{line}");
    assert_eq!(line["max_runs_in_progress"], 1, "{line}");
    assert_eq!(line["dev_target"], "process", "{line}");
    for key in ["seconds", "peak_rss_mb"] {
        assert!(number(&figures, key) > 0.0, "{key}: {line}");
    }
}

/// Issue 24: `leaver-latency --throttled` at a smoke-test size: the leavers are measured
/// behind the backlog, and the backlog then completes with every account exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaver_latency_throttled_reports_the_leavers_and_a_complete_backlog() {
    let figures = run(
        Scenario::LeaverLatency,
        Options {
            size: Some(40),
            throttled: Some(20),
            ..Options::default()
        },
    )
    .await
    .expect("leaver-latency --throttled");
    let line: serde_json::Value = serde_json::from_str(&figures.to_line()).expect("one JSON line");
    assert_eq!(line["throttled_per_s"], 20, "{line}");
    assert_eq!(line["backlog_completed"], true, "{line}");
    assert_eq!(line["every_account_exactly_once"], true, "{line}");
    assert!(number(&figures, "leaver_p99_ms") > 0.0, "{line}");
}

/// Issue 17: `saas` at a smoke-test size: eight apps from catalogue connectors, each against a
/// target emulating its vendor's limits and latency, every account in every app exactly once,
/// and the leavers measured in the fast app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saas_delivers_every_account_to_every_app_exactly_once() {
    let figures = run(
        Scenario::Saas,
        Options {
            size: Some(6),
            ..Options::default()
        },
    )
    .await
    .expect("saas");
    let line: serde_json::Value = serde_json::from_str(&figures.to_line()).expect("one JSON line");
    assert_eq!(line["scenario"], "saas");
    assert_eq!(line["every_account_exactly_once"], true, "{line}");
    assert!(number(&figures, "apps") >= 8.0, "{line}");
    let per_app = line["per_app"].as_object().expect("per_app");
    assert_eq!(per_app.len() as f64, number(&figures, "apps"), "{line}");
    for (app, figures) in per_app {
        assert_eq!(figures["exactly_once"], true, "{app}: {line}");
        let per_account = figures["calls_per_account"].as_f64().unwrap_or_default();
        // At least the create; at most a look-up, a create and a look-up after a 409.
        assert!((1.0..=3.0).contains(&per_account), "{app}: {line}");
    }
    assert_eq!(number(&figures, "leavers"), 3.0);
    assert!(number(&figures, "leaver_p99_ms") > 0.0, "{line}");
    assert!(number(&figures, "ratio_to_ideal") >= 1.0, "{line}");
}

/// Issue 18: `hr-snapshot` at a smoke-test size: 2000 identities, a file with 1 % changed;
/// the counts are exactly those of the file (computed here from the size) and it is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hr_snapshot_diffs_and_applies_exactly_the_changes_of_the_file() {
    let figures = run(
        Scenario::HrSnapshot,
        Options {
            size: Some(2000),
            ..Options::default()
        },
    )
    .await
    .expect("hr-snapshot");
    let line: serde_json::Value = serde_json::from_str(&figures.to_line()).expect("one JSON line");
    assert_eq!(line["scenario"], "hr-snapshot");
    assert_eq!(line["state"], "applied", "{line}");
    // 2000 people: one leaver (absent), one joiner, 18 movers: 20 changes, 1 %; 1999 + 1 rows.
    assert_eq!(line["rows"], 2000, "{line}");
    assert_eq!(
        line["counts"],
        serde_json::json!({"joiners": 1, "movers": 18, "leavers": 1, "unchanged": 1981}),
        "{line}"
    );
    assert_eq!(line["counts"], line["expected"], "{line}");
    assert_eq!(line["applied"], 20, "{line}");
    assert_eq!(line["active_after"], 2000, "{line}");
    assert_eq!(line["exact"], true, "{line}");
    for key in ["seconds", "peak_rss_mb"] {
        assert!(number(&figures, key) > 0.0, "{key}: {line}");
    }
}
