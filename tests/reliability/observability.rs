//! What a real `roster serve` process emits: OTLP spans of a real job (DESIGN §7: one span per
//! job and per SCIM call, linked to the HR event) and JSON log lines.
use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message as _;
use serde_json::{Value, json};

use super::{ADMIN, Cluster, app_body, joiners, target, wait_for};

/// One exported span, flattened: the attributes as text, with its resource's `service.name`.
#[derive(Debug)]
struct ExportedSpan {
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    attributes: HashMap<String, String>,
    service: Option<String>,
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

/// Decodes OTLP/HTTP protobuf export bodies into spans.
fn decode(bodies: &[Vec<u8>]) -> Vec<ExportedSpan> {
    let mut spans = Vec::new();
    for body in bodies {
        let request =
            ExportTraceServiceRequest::decode(body.as_slice()).expect("an OTLP trace export");
        for resource_spans in request.resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| attributes(&r.attributes).remove("service.name"));
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(ExportedSpan {
                        name: span.name,
                        trace_id: span.trace_id,
                        span_id: span.span_id,
                        parent_span_id: span.parent_span_id,
                        attributes: attributes(&span.attributes),
                        service: service.clone(),
                    });
                }
            }
        }
    }
    spans
}

struct Export {
    path: String,
    content_type: Option<String>,
    body: Vec<u8>,
}

/// A tiny OTLP/HTTP collector on 127.0.0.1, port 0 (poem, as roster's own servers): answers
/// every POST with 200 and keeps the request. It ends with the test's runtime.
struct FakeCollector {
    url: String,
    exports: Arc<Mutex<Vec<Export>>>,
}

impl FakeCollector {
    async fn start() -> Self {
        let exports = Arc::new(Mutex::new(Vec::new()));
        let kept = exports.clone();
        let collect = poem::endpoint::make(move |req: poem::Request| {
            let kept = kept.clone();
            async move {
                let path = req.uri().path().to_owned();
                let content_type = req.content_type().map(str::to_owned);
                let body = req.into_body().into_vec().await.unwrap_or_default();
                if let Ok(mut k) = kept.lock() {
                    k.push(Export {
                        path,
                        content_type,
                        body,
                    });
                }
                poem::Response::builder()
                    .content_type("application/x-protobuf")
                    .body(Vec::<u8>::new())
            }
        });
        let addr = crate::common::serve(collect).await;
        Self {
            url: format!("http://{addr}"),
            exports,
        }
    }
}

/// A joiner posted to a real `roster serve` (OTLP pointed at a fake collector) is delivered; the
/// exported spans hold a `job` span and its `scim_call` children, each naming the app, the
/// operation and the HR event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_job_exports_job_and_scim_call_spans_over_otlp() {
    const EVENT: &str = "otel-evt-1";
    let collector = FakeCollector::start().await;
    let cluster = Cluster::new().await;
    let target = target(0).await;
    let mut node = cluster
        .start_with(
            "info",
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.url),
                // Export every 200 ms rather than 5 s; the shutdown flushes the rest.
                ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ],
            Stdio::null(),
            Stdio::inherit(),
        )
        .await;
    let r = node
        .post("/api/v1/apps", &app_body(&target.base_url()))
        .await
        .expect("create app");
    assert_eq!(r.status().as_u16(), 201);
    let mut event = joiners("otel", 1).remove(0);
    event["event_id"] = json!(EVENT);
    let r = node.post("/api/v1/events", &event).await.expect("joiner");
    assert_eq!(r.status().as_u16(), 202);
    wait_for("the account", Duration::from_secs(30), || {
        target.stats()["users"] == 1
    })
    .await;
    // SIGTERM: the process drops its telemetry guard, which flushes the last spans.
    let status = node.stop(Duration::from_secs(35)).await;
    assert!(status.success(), "exit status {status:?}");

    let exports = collector
        .exports
        .lock()
        .map(|e| e.iter().map(|x| x.body.clone()).collect::<Vec<_>>())
        .unwrap_or_default();
    assert!(!exports.is_empty(), "nothing was exported");
    if let Ok(all) = collector.exports.lock() {
        for export in all.iter() {
            assert_eq!(export.path, "/v1/traces");
            assert_eq!(
                export.content_type.as_deref(),
                Some("application/x-protobuf")
            );
        }
    }
    let spans = decode(&exports);
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    let job = spans
        .iter()
        .find(|s| {
            s.name == "job" && s.attributes.get("hr_event_id").map(String::as_str) == Some(EVENT)
        })
        .unwrap_or_else(|| panic!("no job span for {EVENT}: {names:?}\n{spans:#?}"));
    assert_eq!(job.service.as_deref(), Some("roster"), "{job:?}");
    for (key, value) in [
        ("app", "reliable"),
        ("operation", "create"),
        ("resource", "user"),
    ] {
        assert_eq!(
            job.attributes.get(key).map(String::as_str),
            Some(value),
            "job span attribute {key}: {job:?}"
        );
    }
    assert_eq!(job.trace_id.len(), 16);
    let calls: Vec<&ExportedSpan> = spans
        .iter()
        .filter(|s| s.name == "scim_call" && s.trace_id == job.trace_id)
        .collect();
    assert!(
        calls.iter().all(|c| c.parent_span_id == job.span_id),
        "the SCIM calls are children of the job span: {calls:#?}"
    );
    let post = calls
        .iter()
        .find(|c| c.attributes.get("method").map(String::as_str) == Some("POST"))
        .unwrap_or_else(|| panic!("no POST scim_call in the job's trace: {calls:#?}"));
    for (key, value) in [
        ("app", "reliable"),
        ("operation", "create"),
        ("hr_event_id", EVENT),
        ("status", "201"),
        ("path", "/scim/v2/Users"),
    ] {
        assert_eq!(
            post.attributes.get(key).map(String::as_str),
            Some(value),
            "scim_call attribute {key}: {post:?}"
        );
    }
    // The look-up before the create (match before create) is a call of the same job, and its
    // span says what the provisioning log says.
    let lookup = calls
        .iter()
        .find(|c| c.attributes.get("method").map(String::as_str) == Some("GET"))
        .unwrap_or_else(|| panic!("no look-up scim_call in the job's trace: {calls:#?}"));
    assert_eq!(
        lookup.attributes.get("hr_event_id").map(String::as_str),
        Some(EVENT)
    );
    // The provisioning log points at the same trace, call by call.
    let rows = cluster
        .rows("SELECT method, operation, trace_id, hr_event_id FROM operation ORDER BY id")
        .await;
    assert_eq!(rows.len(), calls.len(), "{rows:?}\n{calls:#?}");
    for row in &rows {
        assert_eq!(row["trace_id"], json!(hex::encode(&job.trace_id)), "{row}");
        assert_eq!(row["hr_event_id"], json!(EVENT), "{row}");
        let method = row["method"].as_str().unwrap_or_default();
        let span = calls
            .iter()
            .find(|c| c.attributes.get("method").map(String::as_str) == Some(method))
            .unwrap_or_else(|| panic!("no {method} span for {row}"));
        assert_eq!(
            span.attributes.get("operation").map(String::as_str),
            row["operation"].as_str(),
            "{row}"
        );
    }
}

/// With `ROSTER_LOG_FORMAT=json`, every line roster writes (stdout and stderr, at debug level,
/// through API requests, a failed request, a delivery and a SIGTERM drain) is one JSON object
/// with a timestamp, a level, a target and fields, and the app's credential (a canary) is in
/// none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_without_secrets() {
    const CANARY: &str = "canary-json-5d2e8b41";
    let cluster = Cluster::new().await;
    // The target accepts the canary as its token: deliveries succeed while sending it.
    let target = roster::dev_target::spawn(roster::dev_target::DevTargetArgs {
        token: Some(CANARY.into()),
        ..Default::default()
    })
    .await
    .expect("dev-target");
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut node = cluster
        .start_with(
            "debug",
            &[("ROSTER_LOG_FORMAT", "json")],
            std::fs::File::create(&out).expect("stdout file"),
            std::fs::File::create(&err).expect("stderr file"),
        )
        .await;
    let mut app = app_body(&target.base_url());
    app["auth"] = json!({"type": "bearer", "token": CANARY});
    let r = node.post("/api/v1/apps", &app).await.expect("create app");
    assert_eq!(r.status().as_u16(), 201);
    let r = node
        .post("/api/v1/events:batch", &json!({"events": joiners("js", 3)}))
        .await
        .expect("batch");
    assert_eq!(r.status().as_u16(), 202);
    let r = node
        .post("/api/v1/events", &json!({"event_id": 7}))
        .await
        .expect("bad event");
    assert_eq!(r.status().as_u16(), 400);
    let r = reqwest::Client::new()
        .get(format!("{}/api/v1/apps", node.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("list apps");
    assert_eq!(r.status().as_u16(), 200);
    wait_for("three accounts", Duration::from_secs(30), || {
        target.stats()["users"] == 3
    })
    .await;
    let status = node.stop(Duration::from_secs(35)).await;
    assert!(status.success(), "exit status {status:?}");

    let stdout = std::fs::read_to_string(&out).expect("stdout");
    let stderr = std::fs::read_to_string(&err).expect("stderr");
    let lines: Vec<&str> = stdout.lines().chain(stderr.lines()).collect();
    assert!(lines.len() > 20, "debug logs were written: {lines:?}");
    let mut parsed = Vec::new();
    for line in &lines {
        assert!(
            !line.contains(CANARY),
            "the canary is in a log line: {line}"
        );
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let object = v
            .as_object()
            .unwrap_or_else(|| panic!("not a JSON object: {line}"));
        let timestamp = object
            .get("timestamp")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no timestamp: {line}"));
        assert!(
            chrono::DateTime::parse_from_rfc3339(timestamp).is_ok(),
            "timestamp is not RFC 3339: {line}"
        );
        let level = object.get("level").and_then(Value::as_str);
        assert!(
            matches!(level, Some("TRACE" | "DEBUG" | "INFO" | "WARN" | "ERROR")),
            "level: {line}"
        );
        assert!(
            object.get("target").and_then(Value::as_str).is_some(),
            "target: {line}"
        );
        assert!(
            object.get("fields").is_some_and(Value::is_object),
            "fields: {line}"
        );
        parsed.push(v);
    }
    // The lines carry what an operator needs: roster's own messages, and each SCIM call with
    // the span that says which call it was.
    assert!(
        parsed.iter().any(|v| v["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("roster"))
            && v["level"] == "INFO"
            && v["fields"]["message"].is_string()),
        "an INFO line from roster"
    );
    let call = parsed
        .iter()
        .find(|v| v["fields"]["message"] == "SCIM call" && v["span"]["method"] == "POST")
        .unwrap_or_else(|| panic!("no SCIM call line with its span:\n{stderr}"));
    assert_eq!(call["span"]["name"], "scim_call", "{call}");
    assert_eq!(call["span"]["path"], "/scim/v2/Users", "{call}");
    assert!(
        call["spans"].as_array().is_some_and(|s| s
            .iter()
            .any(|s| s["name"] == "job" && s["app"] == "reliable")),
        "the call's line names its job and app: {call}"
    );
}
