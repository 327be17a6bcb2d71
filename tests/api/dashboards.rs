//! `dashboards/`: the Grafana dashboard and the Prometheus alert rules only query metrics roster
//! exports (names fixed by DESIGN §7), every panel is usable, and promtool accepts the rules.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards")
}

fn dashboard() -> Json {
    let path = dashboards_dir().join("roster.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

fn alert_rules_text() -> String {
    let path = dashboards_dir().join("alerts.yml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

fn alert_rules() -> Vec<Yaml> {
    let rules: Yaml = serde_yaml::from_str(&alert_rules_text()).expect("alerts.yml is YAML");
    let groups = rules["groups"].as_sequence().expect("groups: [...]");
    groups
        .iter()
        .flat_map(|group| group["rules"].as_sequence().cloned().unwrap_or_default())
        .collect()
}

/// Every panel, rows included, with the panels nested in collapsed rows.
fn panels(dashboard: &Json) -> Vec<&Json> {
    fn walk<'a>(list: &'a Json, out: &mut Vec<&'a Json>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Every PromQL expression, labelled with where it comes from.
fn expressions() -> Vec<(String, String)> {
    let dashboard = dashboard();
    let mut out: Vec<(String, String)> = panels(&dashboard)
        .into_iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            panel["targets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(move |t| {
                    let expr = t["expr"].as_str()?.to_owned();
                    Some((format!("panel {title:?}"), expr))
                })
        })
        .collect();
    for rule in alert_rules() {
        let name = rule["alert"].as_str().unwrap_or("?");
        let expr = rule["expr"].as_str().expect("every rule has an expr");
        out.push((format!("alert {name}"), expr.to_owned()));
    }
    out
}

// PromQL words that are not metric names. An identifier outside this list, label matchers,
// grouping clauses, strings, ranges and template variables must be a metric roster exports;
// a new function in a query means adding it here, deliberately.
const PROMQL_WORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "topk",
    "bottomk",
    "quantile",
    "rate",
    "irate",
    "increase",
    "delta",
    "deriv",
    "histogram_quantile",
    "time",
    "timestamp",
    "abs",
    "clamp_min",
    "clamp_max",
    "absent",
    "absent_over_time",
    "max_over_time",
    "min_over_time",
    "avg_over_time",
    "changes",
    "resets",
    "vector",
    "scalar",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
];
const GROUPING_WORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names an expression reads.
fn metrics_in(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    // Skips from an opening delimiter to its closing one, stepping over quoted strings
    // (a label value may contain `}` or `)`).
    let skip_to = |mut i: usize, close: char| -> usize {
        while i < chars.len() && chars[i] != close {
            if matches!(chars[i], '"' | '\'' | '`') {
                let quote = chars[i];
                i += 1;
                while i < chars.len() && chars[i] != quote {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
            }
            i += 1;
        }
        i + 1
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            i = skip_to(i + 1, '}');
        } else if c == '[' {
            i = skip_to(i + 1, ']');
        } else if matches!(c, '"' | '\'' | '`') {
            i = skip_to(i + 1, c);
        } else if c == '$' || c.is_ascii_digit() || c == '.' {
            // Template variables ($app, ${x}), numbers and durations (15m after `offset`).
            i += 1;
            while i < chars.len() && (chars[i].is_alphanumeric() || "_{}.".contains(chars[i])) {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if GROUPING_WORDS.contains(&word.as_str()) {
                while i < chars.len() && chars[i].is_whitespace() {
                    i += 1;
                }
                if chars.get(i) == Some(&'(') {
                    i = skip_to(i + 1, ')');
                }
            } else if !PROMQL_WORDS.contains(&word.as_str()) {
                names.push(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The family a series name belongs to: histograms expose `_bucket`, `_sum` and `_count`.
fn family<'a>(name: &'a str, exported: &BTreeSet<&str>) -> Option<&'a str> {
    if exported.contains(name) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|suffix| name.strip_suffix(suffix))
        .find(|base| exported.contains(base))
}

#[test]
fn the_metric_name_scanner_finds_metrics_and_only_metrics() {
    let expr = r#"histogram_quantile(0.99, sum by (app, le) (rate(roster_event_to_target_seconds_bucket{app=~"$app", operation=~"a|b}"}[$__rate_interval]))) > 300
        or (time() - roster_reconcile_last_success_timestamp_seconds > 2 * 3600)
        unless on (app) group_left (x) up offset 15m"#;
    assert_eq!(
        metrics_in(expr),
        [
            "roster_event_to_target_seconds_bucket",
            "roster_reconcile_last_success_timestamp_seconds",
            "up"
        ]
    );
}

#[test]
fn every_query_reads_only_metrics_roster_exports() {
    let exported: BTreeSet<&str> = roster::telemetry::metric_names().into_iter().collect();
    // The 13 families of the product contract, and the HR snapshot three.
    assert_eq!(exported.len(), 16, "roster exports 16 metric families");
    let mut unknown = Vec::new();
    let mut expressions = expressions();
    // The `app` variable's query is not PromQL: label_values(metric, label).
    let dashboard = dashboard();
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        let query = variable["definition"].as_str().unwrap_or_default();
        if let Some(args) = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
        {
            let metric = args.split(',').next().unwrap_or_default().trim();
            expressions.push((format!("variable {}", variable["name"]), metric.to_owned()));
        }
    }
    assert!(expressions.len() > 15, "{} expressions", expressions.len());
    for (place, expr) in &expressions {
        let names = metrics_in(expr);
        if names.is_empty() {
            unknown.push(format!("{place}: reads no metric: {expr}"));
        }
        for name in names {
            if family(&name, &exported).is_none() {
                unknown.push(format!("{place}: `{name}` is not a roster metric"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "{}\nroster exports: {exported:?}",
        unknown.join("\n")
    );
}

#[test]
fn every_exported_metric_has_a_dashboard_panel() {
    let exported = roster::telemetry::metric_names();
    let exported_set: BTreeSet<&str> = exported.iter().copied().collect();
    let dashboard = dashboard();
    let shown: BTreeSet<String> = panels(&dashboard)
        .into_iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(metrics_in))
        .flatten()
        .filter_map(|name| family(&name, &exported_set).map(str::to_owned))
        .collect();
    let missing: Vec<&str> = exported
        .into_iter()
        .filter(|name| !shown.contains(*name))
        .collect();
    assert!(missing.is_empty(), "no panel shows {missing:?}");
}

#[test]
fn every_panel_has_a_title_a_description_and_a_query_on_the_datasource_variable() {
    let dashboard = dashboard();
    assert_eq!(dashboard["schemaVersion"].as_i64(), Some(39));
    assert!(dashboard["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
    assert_eq!(dashboard["__inputs"][0]["pluginId"], "prometheus");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name} variable"))
    };
    let datasource = variable("datasource");
    assert_eq!(
        (&datasource["type"], &datasource["query"]),
        (&Json::from("datasource"), &Json::from("prometheus"))
    );
    let app = variable("app");
    assert_eq!(app["type"], "query");
    assert_eq!(app["datasource"]["uid"], "${datasource}");
    assert_eq!(
        app["definition"],
        "label_values(roster_sync_operations_total, app)"
    );
    assert_eq!(
        app["query"]["query"],
        "label_values(roster_sync_operations_total, app)"
    );

    let mut problems = Vec::new();
    let mut ids = BTreeSet::new();
    let all = panels(&dashboard);
    for panel in &all {
        let title = panel["title"].as_str().unwrap_or_default();
        if !ids.insert(panel["id"].as_i64().unwrap_or(-1)) {
            problems.push(format!("{title:?}: duplicate or missing id"));
        }
        if title.trim().is_empty() {
            problems.push(format!("panel {}: no title", panel["id"]));
        }
        if panel["type"] == "row" {
            continue;
        }
        if panel["description"]
            .as_str()
            .is_none_or(|d| d.trim().is_empty())
        {
            problems.push(format!("{title:?}: no description"));
        }
        if panel["datasource"]["uid"] != "${datasource}" {
            problems.push(format!("{title:?}: datasource is not ${{datasource}}"));
        }
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        if !targets
            .iter()
            .any(|t| t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()))
        {
            problems.push(format!("{title:?}: no target with an expr"));
        }
        for target in &targets {
            // A target may inherit the panel's datasource; if it names one, it is the variable.
            if !target["datasource"].is_null() && target["datasource"]["uid"] != "${datasource}" {
                problems.push(format!(
                    "{title:?}: a target's datasource is not ${{datasource}}"
                ));
            }
        }
        for key in ["h", "w", "x", "y"] {
            if !panel["gridPos"][key].is_u64() {
                problems.push(format!("{title:?}: gridPos.{key} missing"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let graphs = all.iter().filter(|p| p["type"] != "row").count();
    assert!(graphs >= 12, "{graphs} panels");
}

#[test]
fn every_alert_has_a_severity_a_summary_naming_the_app_and_a_runbook() {
    let rules = alert_rules();
    let names: BTreeSet<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "RosterAppQuarantined",
            "RosterDeadJobs",
            "RosterQueueStalled",
            "RosterLeaverNotDeprovisioned",
            "RosterReconcileStale",
            "RosterHrSnapshotHeld",
        ])
    );
    for rule in &rules {
        let name = rule["alert"].as_str().unwrap_or("?");
        let severity = rule["labels"]["severity"].as_str();
        assert!(
            matches!(severity, Some("critical" | "warning")),
            "{name}: severity {severity:?}"
        );
        let annotation = |key: &str| rule["annotations"][key].as_str().unwrap_or_default();
        for key in ["summary", "description", "runbook"] {
            assert!(!annotation(key).trim().is_empty(), "{name}: no {key}");
        }
        // Every alert names what it is about: the app, or the HR source of a held snapshot.
        assert!(
            annotation("summary").contains("{{ $labels.app }}")
                || annotation("summary").contains("{{ $labels.source }}"),
            "{name}: the summary does not name the app or the source"
        );
    }
}

/// Operators import these files into their own Grafana and Prometheus: every word in them (the
/// dashboard's descriptions, the rules' comments and annotations) stands on its own and never
/// sends the reader to a design document they do not have.
#[test]
fn what_operators_import_refers_to_no_design_document() {
    for file in ["roster.json", "alerts.yml"] {
        let path = dashboards_dir().join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let references: Vec<&str> = text
            .lines()
            .filter(|line| line.contains("DESIGN"))
            .collect();
        assert!(references.is_empty(), "{file}: {references:?}");
    }
}

/// `promtool`'s answer, or `None` when it is not installed here.
fn promtool(args: &[&str]) -> Option<Output> {
    match Command::new("promtool").args(args).output() {
        Ok(output) => Some(output),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("promtool: {e}"),
    }
}

fn promtool_or_skip(args: &[&str]) -> Option<Output> {
    let output = promtool(args);
    if output.is_none() {
        // CI installs it (.ci/install-promtool.sh); there a missing promtool is a failure, not a
        // silent pass. On a laptop the other tests still check names and structure.
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "promtool is not on PATH but CI=true: run .ci/install-promtool.sh"
        );
        eprintln!("skipped: promtool is not on PATH (.ci/install-promtool.sh installs it)");
    }
    output
}

fn describe(output: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn promtool_accepts_the_alert_rules_and_rejects_a_broken_copy() {
    let rules_path = dashboards_dir().join("alerts.yml");
    let rules_path = rules_path.to_str().expect("UTF-8 path");
    let Some(output) = promtool_or_skip(&["check", "rules", rules_path]) else {
        return;
    };
    assert!(output.status.success(), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("6 rules found"),
        "{}",
        describe(&output)
    );

    // The same check must be able to fail, or a green run proves nothing: one copy with a PromQL
    // syntax error, one with a `for` that is not a duration.
    let text = alert_rules_text();
    let dir = tempfile::tempdir().expect("tempdir");
    for (what, from, to) in [
        (
            "PromQL syntax",
            "expr: roster_app_quarantined == 1",
            "expr: roster_app_quarantined ==",
        ),
        ("duration", "for: 5m", "for: five minutes"),
    ] {
        assert!(text.contains(from), "alerts.yml no longer has {from:?}");
        let broken = dir.path().join("broken.yml");
        std::fs::write(&broken, text.replacen(from, to, 1)).expect("write");
        let output = promtool(&["check", "rules", broken.to_str().expect("UTF-8 path")])
            .expect("promtool was there a moment ago");
        assert!(
            !output.status.success(),
            "promtool accepted a {what} error\n{}",
            describe(&output)
        );
    }
}

/// Alert unit tests (`promtool test rules`): the expressions fire when they should, in
/// particular for the first dead job of a series, which `increase()` alone cannot see.
#[test]
fn alerts_fire_on_synthetic_series() {
    let dir = tempfile::tempdir().expect("tempdir");
    // promtool compares annotations too when a test names none; these tests are about when
    // alerts fire and with which labels, so they run against a copy without annotations.
    let mut rules: Yaml = serde_yaml::from_str(&alert_rules_text()).expect("alerts.yml is YAML");
    for group in rules["groups"].as_sequence_mut().expect("groups") {
        for rule in group["rules"].as_sequence_mut().expect("rules") {
            if let Some(rule) = rule.as_mapping_mut() {
                rule.remove("annotations");
            }
        }
    }
    let rules_path = dir.path().join("alerts_without_annotations.yml");
    std::fs::write(&rules_path, serde_yaml::to_string(&rules).expect("YAML")).expect("write");
    let tests = format!(
        r#"
rule_files:
  - {rules}
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # The first dead job creates the series at 1 (no earlier 0 sample).
      - series: 'roster_sync_operations_total{{app="okta", operation="update", outcome="dead"}}'
        values: '_ _ 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1'
      # Dead jobs long ago, none recently: quiet.
      - series: 'roster_sync_operations_total{{app="slack", operation="create", outcome="dead"}}'
        values: '3x40'
      - series: 'roster_app_quarantined{{app="okta"}}'
        values: '1x5'
      - series: 'roster_queue_oldest_pending_seconds{{app="okta"}}'
        values: '0 400x5'
      - series: 'roster_queue_depth{{app="okta", lane="deprovision"}}'
        values: '2x10'
      - series: 'roster_queue_depth{{app="slack", lane="deprovision"}}'
        values: '1 0 1 0 1 0 1 0 1 0 1'
      - series: 'roster_reconcile_last_success_timestamp_seconds{{app="okta"}}'
        values: '0x200'
      # A snapshot held from minute 2 to minute 6, then approved.
      - series: 'roster_hr_snapshots_held{{source="workday"}}'
        values: '0 0 1 1 1 1 1 0 0 0'
      - series: 'roster_hr_snapshots_held{{source="hr"}}'
        values: '0x10'
    alert_rule_test:
      # Both count as new at 4m: Prometheus has no sample of either from 15 minutes earlier
      # (as after a fresh Prometheus start; real dead jobs exist, so the page is not wrong).
      - eval_time: 4m
        alertname: RosterDeadJobs
        exp_alerts:
          - exp_labels: {{app: okta, operation: update, outcome: dead, severity: warning}}
          - exp_labels: {{app: slack, operation: create, outcome: dead, severity: warning}}
      - eval_time: 40m
        alertname: RosterDeadJobs
        exp_alerts: []
      - eval_time: 2m
        alertname: RosterAppQuarantined
        exp_alerts:
          - exp_labels: {{app: okta, severity: critical}}
      - eval_time: 3m
        alertname: RosterQueueStalled
        exp_alerts:
          - exp_labels: {{app: okta, severity: warning}}
      - eval_time: 4m
        alertname: RosterLeaverNotDeprovisioned
        exp_alerts: []
      - eval_time: 6m
        alertname: RosterLeaverNotDeprovisioned
        exp_alerts:
          - exp_labels: {{app: okta, lane: deprovision, severity: critical}}
      - eval_time: 2m
        alertname: RosterHrSnapshotHeld
        exp_alerts: []
      - eval_time: 4m
        alertname: RosterHrSnapshotHeld
        exp_alerts:
          - exp_labels: {{source: workday, severity: warning}}
      - eval_time: 8m
        alertname: RosterHrSnapshotHeld
        exp_alerts: []
      - eval_time: 130m
        alertname: RosterReconcileStale
        exp_alerts:
          - exp_labels: {{app: okta, severity: warning}}
"#,
        rules = rules_path.display()
    );
    let tests_path = dir.path().join("alerts_test.yml");
    std::fs::write(&tests_path, tests).expect("write");
    let Some(output) =
        promtool_or_skip(&["test", "rules", tests_path.to_str().expect("UTF-8 path")])
    else {
        return;
    };
    assert!(output.status.success(), "{}", describe(&output));
}
