//! Metrics (names fixed by DESIGN §7), logs and traces.
//!
//! Invariant: labels are low-cardinality — app names, methods, status codes, lanes, classes —
//! never user ids, user names or URLs.
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_otlp::{ExporterBuildError, Protocol, SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing::Subscriber;
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt as _};
use tracing_subscriber::filter::{Filtered, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

use prometheus::core::Collector;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub scim_requests_total: IntCounterVec,
    pub scim_request_duration_seconds: HistogramVec,
    pub sync_operations_total: IntCounterVec,
    pub queue_depth: IntGaugeVec,
    pub queue_oldest_pending_seconds: GaugeVec,
    pub throttled_total: IntCounterVec,
    pub app_quarantined: IntGaugeVec,
    pub hr_events_total: IntCounterVec,
    pub hr_snapshots_total: IntCounterVec,
    pub hr_snapshot_changes_total: IntCounterVec,
    pub hr_snapshots_held: IntGaugeVec,
    pub event_to_target_seconds: HistogramVec,
    pub drift_detected_total: IntCounterVec,
    pub drift_corrected_total: IntCounterVec,
    pub reconcile_duration_seconds: HistogramVec,
    pub reconcile_last_success_timestamp_seconds: GaugeVec,
    // Invariant: the fully qualified names of every collector in `registry`, in registration order.
    names: Vec<String>,
}

/// Registers collectors and remembers the names their descriptors carry, so `metric_names()`
/// lists what the registry holds rather than a second, hand-kept list that could drift.
struct Registrar {
    registry: Registry,
    names: Vec<String>,
}

impl Registrar {
    fn register<C: Collector + Clone + 'static>(&mut self, collector: C, name: &str) -> C {
        self.names
            .extend(collector.desc().iter().map(|desc| desc.fq_name.clone()));
        self.registry
            .register(Box::new(collector.clone()))
            .unwrap_or_else(|e| panic!("metric {name}: {e}"));
        collector
    }

    fn counter(&mut self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let c = IntCounterVec::new(Opts::new(name, help), labels)
            .unwrap_or_else(|e| panic!("metric {name}: {e}"));
        self.register(c, name)
    }

    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: Vec<f64>,
    ) -> HistogramVec {
        let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
            .unwrap_or_else(|e| panic!("metric {name}: {e}"));
        self.register(h, name)
    }

    fn gauge(&mut self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        let g = GaugeVec::new(Opts::new(name, help), labels)
            .unwrap_or_else(|e| panic!("metric {name}: {e}"));
        self.register(g, name)
    }

    fn int_gauge(&mut self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        let g = IntGaugeVec::new(Opts::new(name, help), labels)
            .unwrap_or_else(|e| panic!("metric {name}: {e}"));
        self.register(g, name)
    }
}

impl Metrics {
    // The definitions are constants; a panic here is a programming error caught by any test.
    fn new() -> Self {
        let mut r = Registrar {
            registry: Registry::new(),
            names: Vec::new(),
        };
        // SCIM calls: 5 ms to 60 s. Event-to-target: 10 ms to 1 h.
        let call_buckets = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ];
        let slo_buckets = vec![
            0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
            3600.0,
        ];
        let run_buckets = vec![0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];
        Self {
            scim_requests_total: r.counter(
                "roster_scim_requests_total",
                "SCIM calls made, by app, method and HTTP status (or `error`).",
                &["app", "method", "status"],
            ),
            scim_request_duration_seconds: r.histogram(
                "roster_scim_request_duration_seconds",
                "SCIM call duration.",
                &["app", "method"],
                call_buckets,
            ),
            sync_operations_total: r.counter(
                "roster_sync_operations_total",
                "Provisioning operations by outcome.",
                &["app", "operation", "outcome"],
            ),
            queue_depth: r.int_gauge(
                "roster_queue_depth",
                "Pending jobs by app and lane.",
                &["app", "lane"],
            ),
            queue_oldest_pending_seconds: r.gauge(
                "roster_queue_oldest_pending_seconds",
                "Age of the oldest pending job.",
                &["app"],
            ),
            throttled_total: r.counter(
                "roster_throttled_total",
                "429 or 503 answers received.",
                &["app"],
            ),
            app_quarantined: r.int_gauge(
                "roster_app_quarantined",
                "1 while the app is quarantined.",
                &["app"],
            ),
            hr_events_total: r.counter(
                "roster_hr_events_total",
                "HR events received, by type and result.",
                &["type", "result"],
            ),
            hr_snapshots_total: r.counter(
                "roster_hr_snapshots_total",
                "HR snapshots by source and result: received, held, applied, rejected, cancelled.",
                &["source", "result"],
            ),
            hr_snapshot_changes_total: r.counter(
                "roster_hr_snapshot_changes_total",
                "Changes found by HR snapshot diffs, by source and kind (joiner, mover, leaver, unchanged).",
                &["source", "kind"],
            ),
            hr_snapshots_held: r.int_gauge(
                "roster_hr_snapshots_held",
                "HR snapshots held by the leaver guard, waiting for an admin, by source.",
                &["source"],
            ),
            event_to_target_seconds: r.histogram(
                "roster_event_to_target_seconds",
                "HR event accepted to target confirmed.",
                &["app", "operation"],
                slo_buckets,
            ),
            drift_detected_total: r.counter(
                "roster_drift_detected_total",
                "Accounts found out of line by reconciliation, by class.",
                &["app", "class"],
            ),
            drift_corrected_total: r.counter(
                "roster_drift_corrected_total",
                "Accounts corrected by reconciliation, by class.",
                &["app", "class"],
            ),
            reconcile_duration_seconds: r.histogram(
                "roster_reconcile_duration_seconds",
                "Reconciliation run duration.",
                &["app"],
                run_buckets,
            ),
            reconcile_last_success_timestamp_seconds: r.gauge(
                "roster_reconcile_last_success_timestamp_seconds",
                "Unix time of the last completed reconciliation.",
                &["app"],
            ),
            registry: r.registry,
            names: r.names,
        }
    }

    /// The Prometheus text exposition.
    #[must_use]
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// The names of every registered metric family, from the registry's own descriptors.
///
/// `Registry::gather()` is no substitute: it omits vec families that have no series yet.
#[must_use]
pub fn metric_names() -> Vec<&'static str> {
    metrics().names.iter().map(String::as_str).collect()
}

/// Default filter: sqlx logs every statement at INFO (DEPS pitfall 5), which would flood both the
/// logs and the exported spans.
const DEFAULT_FILTER: &str = "info,sqlx=warn,sea_orm=warn";

/// How long shutdown may wait for the last batch of spans. Bounded so that an unreachable
/// collector cannot eat the 30 s SIGTERM drain budget (DESIGN §5).
const TRACE_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// What the environment asks of logs and traces; a pure value so the decision is testable.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    json_logs: bool,
    export_traces: bool,
}

impl Settings {
    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let set = |name: &str| lookup(name).is_some_and(|v| !v.trim().is_empty());
        Self {
            json_logs: lookup("ROSTER_LOG_FORMAT").is_some_and(|v| v.eq_ignore_ascii_case("json")),
            // The per-signal variable is the standard way to point only traces somewhere.
            export_traces: set("OTEL_EXPORTER_OTLP_ENDPOINT")
                || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        }
    }
}

/// Keeps trace export alive. Dropping it flushes the spans still buffered and shuts the exporter
/// down, so hold it in `main` until the runtime has finished.
#[must_use = "dropping the guard stops trace export at once"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Whether spans are being exported over OTLP.
    #[must_use]
    pub fn is_exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown_with_timeout(TRACE_SHUTDOWN_TIMEOUT)
        {
            tracing::warn!(%error, "Flushing traces at shutdown failed");
        }
    }
}

/// Logs to stderr — human-readable, or one JSON object per line with `ROSTER_LOG_FORMAT=json` —
/// filtered by `RUST_LOG` (default `info,sqlx=warn,sea_orm=warn`); and, only when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, spans exported
/// over OTLP/HTTP (protobuf) in batches, with `service.name` = `service` unless `OTEL_SERVICE_NAME`
/// says otherwise. The exporter reads the other standard `OTEL_EXPORTER_OTLP_*` variables
/// (headers, timeout, compression) itself.
///
/// A second call, or a call after another subscriber was installed, changes nothing and returns
/// a guard that exports nothing.
pub fn init(service: &str) -> TelemetryGuard {
    init_with(service, DEFAULT_FILTER)
}

/// [`init`] with another default log filter (used when `RUST_LOG` is unset), e.g. `warn` for
/// commands whose own output is the point, like `roster demo`.
pub fn init_with(service: &str, default_filter: &str) -> TelemetryGuard {
    let settings = Settings::from_lookup(|name| std::env::var(name).ok());
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Tracing problems must never stop roster: without an exporter it still logs and provisions.
    let (provider, export_error) = if settings.export_traces {
        match otlp_provider(service, None) {
            Ok(provider) => (Some(provider), None),
            Err(error) => (None, Some(error)),
        }
    } else {
        (None, None)
    };
    let fmt_layer = if settings.json_logs {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed()
    };
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(provider.as_ref().map(otel_layer))
        .try_init()
        .is_ok();
    if let Some(error) = export_error {
        tracing::warn!(%error, "OTLP trace export is configured but could not start; logging only");
    }
    if !installed {
        // Someone else owns the global subscriber: our layer is not in it, so nothing would
        // reach the exporter. Shut it down now rather than leave an idle batch thread.
        if let Some(provider) = provider {
            let _ = provider.shutdown_with_timeout(TRACE_SHUTDOWN_TIMEOUT);
        }
        return TelemetryGuard { provider: None };
    }
    TelemetryGuard { provider }
}

/// `init("roster")` for callers that cannot hold the guard. Spans are still exported in batches
/// while the process runs, but the last batch (up to the 5 s schedule) is lost at exit: `init`
/// and holding the guard flushes it.
pub fn init_logging() {
    std::mem::forget(init("roster"));
}

/// An OTLP/HTTP (protobuf) span pipeline. `endpoint` is the full traces URL; `None` lets the
/// exporter resolve it from the environment, which appends `/v1/traces` to
/// `OTEL_EXPORTER_OTLP_ENDPOINT` as the OTLP specification asks.
fn otlp_provider(
    service: &str,
    endpoint: Option<&str>,
) -> Result<SdkTracerProvider, ExporterBuildError> {
    // reqwest is built with `rustls-no-provider`: its client needs a process-wide crypto provider
    // even before the first https:// export. Installing twice is a harmless no-op error.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Only the HTTP transport is compiled in; pinning the protocol keeps an
    // `OTEL_EXPORTER_OTLP_PROTOCOL=grpc` left over in the environment from breaking the build.
    let mut builder = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary);
    if let Some(endpoint) = endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    // The blocking client, not the async one: the batch processor exports from its own thread,
    // outside any Tokio runtime (DEPS pitfall 2).
    let exporter = builder.build()?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service.to_owned());
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// The tracing layer that turns spans (and their fields, as attributes) into OpenTelemetry spans.
///
/// The exporter's own HTTP stack (reqwest, hyper) and the SDK log through `tracing` too; were
/// their spans exported, every export would cause another one under `RUST_LOG=debug`. They stay
/// in the logs but never reach this layer.
fn otel_layer<S>(
    provider: &SdkTracerProvider,
) -> Filtered<OpenTelemetryLayer<S, SdkTracer>, Targets, S>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    let not_the_exporter = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_targets(
            [
                "hyper",
                "hyper_util",
                "h2",
                "reqwest",
                "opentelemetry",
                "opentelemetry_sdk",
                "opentelemetry_otlp",
                "opentelemetry_http",
            ]
            .map(|target| (target, LevelFilter::OFF)),
        );
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("roster"))
        .with_filter(not_the_exporter)
}

/// Adds attributes to the current span as it is exported over OTLP (they are not log fields);
/// nothing happens when traces are not exported.
pub fn tag_current_span(attributes: impl IntoIterator<Item = (&'static str, String)>) {
    let span = tracing::Span::current();
    for (key, value) in attributes {
        span.set_attribute(key, value);
    }
}

/// The OpenTelemetry trace id of the current span, as 32 lowercase hex digits, for the
/// provisioning log's trace id column. `None` when traces are not exported (no OpenTelemetry
/// layer) or outside any span: a made-up id would point at a trace that exists nowhere.
#[must_use]
pub fn trace_id() -> Option<String> {
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::{Settings, otel_layer, otlp_provider, trace_id};

    #[test]
    fn every_metric_of_the_design_is_exported_under_its_fixed_name() {
        let m = super::metrics();
        m.scim_requests_total
            .with_label_values(&["a", "POST", "201"])
            .inc();
        m.scim_request_duration_seconds
            .with_label_values(&["a", "POST"])
            .observe(0.1);
        m.sync_operations_total
            .with_label_values(&["a", "create", "succeeded"])
            .inc();
        m.queue_depth.with_label_values(&["a", "normal"]).set(1);
        m.queue_oldest_pending_seconds
            .with_label_values(&["a"])
            .set(1.0);
        m.throttled_total.with_label_values(&["a"]).inc();
        m.app_quarantined.with_label_values(&["a"]).set(0);
        m.hr_events_total
            .with_label_values(&["joiner", "applied"])
            .inc();
        m.event_to_target_seconds
            .with_label_values(&["a", "create"])
            .observe(0.2);
        m.drift_detected_total
            .with_label_values(&["a", "drifted"])
            .inc();
        m.drift_corrected_total
            .with_label_values(&["a", "drifted"])
            .inc();
        m.reconcile_duration_seconds
            .with_label_values(&["a"])
            .observe(1.0);
        m.reconcile_last_success_timestamp_seconds
            .with_label_values(&["a"])
            .set(1.0);
        m.hr_snapshots_total
            .with_label_values(&["hr", "applied"])
            .inc();
        m.hr_snapshot_changes_total
            .with_label_values(&["hr", "leaver"])
            .inc();
        m.hr_snapshots_held.with_label_values(&["hr"]).set(0);
        let text = m.render();
        let design = [
            "roster_scim_requests_total",
            "roster_scim_request_duration_seconds",
            "roster_sync_operations_total",
            "roster_queue_depth",
            "roster_queue_oldest_pending_seconds",
            "roster_throttled_total",
            "roster_app_quarantined",
            "roster_hr_events_total",
            "roster_event_to_target_seconds",
            "roster_drift_detected_total",
            "roster_drift_corrected_total",
            "roster_reconcile_duration_seconds",
            "roster_reconcile_last_success_timestamp_seconds",
            "roster_hr_snapshots_total",
            "roster_hr_snapshot_changes_total",
            "roster_hr_snapshots_held",
        ];
        for name in design {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
        // metric_names() is what the dashboard test checks queries against: it must be exactly
        // the design's list, and exactly what the registry exposes once every family has a series.
        let mut listed = super::metric_names();
        listed.sort_unstable();
        let mut design = design.to_vec();
        design.sort_unstable();
        assert_eq!(listed, design);
        let mut exposed: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.split(' ').next())
            .collect();
        exposed.sort_unstable();
        assert_eq!(exposed, design);
    }

    #[test]
    fn settings_follow_the_environment() {
        let settings = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> = vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            Settings::from_lookup(move |name| {
                vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
            })
        };
        let plain = Settings {
            json_logs: false,
            export_traces: false,
        };
        assert_eq!(settings(&[]), plain);
        assert_eq!(settings(&[("ROSTER_LOG_FORMAT", "text")]), plain);
        assert_eq!(settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]), plain);
        assert_eq!(
            settings(&[("ROSTER_LOG_FORMAT", "JSON")]),
            Settings {
                json_logs: true,
                ..plain.clone()
            }
        );
        for var in [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ] {
            assert_eq!(
                settings(&[(var, "http://collector:4318")]),
                Settings {
                    export_traces: true,
                    ..plain.clone()
                },
                "{var}"
            );
        }
    }

    #[test]
    fn trace_id_is_none_without_an_opentelemetry_layer() {
        assert_eq!(trace_id(), None, "outside any subscriber");
        let subscriber = tracing_subscriber::registry().with(tracing_subscriber::fmt::layer());
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("job", app = "a");
            let _entered = span.enter();
            assert_eq!(trace_id(), None, "inside a span that is only logged");
        });
    }

    #[test]
    fn spans_reach_an_otlp_http_collector_with_their_fields() {
        let collector = FakeCollector::start();
        let provider = otlp_provider("roster-test", Some(&format!("{}/v1/traces", collector.url)))
            .expect("exporter builds");
        let subscriber = tracing_subscriber::registry().with(otel_layer(&provider));
        let (outer, inner) = tracing::subscriber::with_default(subscriber, || {
            let job = tracing::info_span!(
                "job",
                app = "okta-test",
                operation = "deactivate",
                hr_event_id = "evt-7f3a"
            );
            let _job = job.enter();
            let outer = trace_id();
            // A SCIM call inside the job belongs to the same trace.
            let call = tracing::info_span!("scim_call", method = "PATCH");
            let _call = call.enter();
            // The exporter's HTTP stack is kept out, or exports would feed themselves.
            tracing::info_span!(target: "hyper", "exporter_internal").in_scope(|| ());
            (outer, trace_id())
        });
        let trace_id = outer.expect("a trace id inside an exported span");
        assert_eq!(inner.as_deref(), Some(trace_id.as_str()));
        assert_eq!(trace_id.len(), 32);
        assert!(
            trace_id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );

        // The batch processor would wait up to 5 s; flushing sends what is buffered now.
        provider.force_flush().expect("flush");
        let request = collector
            .requests
            .recv_timeout(Duration::from_secs(10))
            .expect("an OTLP request within 10 s");
        assert_eq!(request.path, "/v1/traces");
        assert_eq!(
            request.content_type.as_deref(),
            Some("application/x-protobuf")
        );
        let body = &request.body;
        let trace_id_bytes = hex::decode(&trace_id).expect("hex");
        assert!(contains(body, &trace_id_bytes), "trace id in the export");
        for name in ["job", "scim_call"] {
            assert!(contains(body, &span_name(name)), "span {name}");
        }
        assert!(
            !contains(body, b"exporter_internal"),
            "hyper's span was exported"
        );
        for (key, value) in [
            ("app", "okta-test"),
            ("operation", "deactivate"),
            ("hr_event_id", "evt-7f3a"),
            ("method", "PATCH"),
            ("service.name", "roster-test"),
        ] {
            assert!(
                contains(body, &string_attribute(key, value)),
                "attribute {key}={value}"
            );
        }
        provider.shutdown().expect("shutdown");
    }

    // OTLP/HTTP with protobuf stores strings verbatim behind a field tag and a length, so the
    // exact encodings below prove a name or a key=value pair is there without a protobuf decoder.
    // Lengths stay under 128: one-byte varints. The spans of a real job, decoded with
    // opentelemetry-proto, are checked end to end in tests/reliability/observability.rs.

    /// `Span.name` is field 5 (wire type 2: tag byte 0x2a).
    fn span_name(name: &str) -> Vec<u8> {
        let mut out = vec![0x2a, u8::try_from(name.len()).expect("short")];
        out.extend_from_slice(name.as_bytes());
        out
    }

    /// `KeyValue { key = 1, value = 2: AnyValue { string_value = 1 } }`.
    fn string_attribute(key: &str, value: &str) -> Vec<u8> {
        let len = |s: &str| u8::try_from(s.len()).expect("short");
        let mut out = vec![0x0a, len(key)];
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(&[0x12, len(value) + 2, 0x0a, len(value)]);
        out.extend_from_slice(value.as_bytes());
        out
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    struct Request {
        path: String,
        content_type: Option<String>,
        body: Vec<u8>,
    }

    /// An HTTP/1.1 server on 127.0.0.1, port 0, that answers every POST with 200 and hands the
    /// request to the test. Its thread blocks in `accept` until the test binary exits.
    struct FakeCollector {
        url: String,
        requests: std::sync::mpsc::Receiver<Request>,
    }

    impl FakeCollector {
        fn start() -> Self {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let url = format!("http://{}", listener.local_addr().expect("addr"));
            let (tx, requests) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { return };
                    let tx = tx.clone();
                    std::thread::spawn(move || serve(stream, &tx));
                }
            });
            Self { url, requests }
        }
    }

    fn serve(stream: std::net::TcpStream, tx: &std::sync::mpsc::Sender<Request>) {
        use std::io::{BufRead as _, BufReader, Read as _, Write as _};
        // Bounded, so a client that stalls cannot hang the thread (the test itself is bounded
        // by `recv_timeout`).
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let Ok(mut writer) = stream.try_clone() else {
            return;
        };
        let mut reader = BufReader::new(stream);
        // Keep-alive: one connection may carry several exports.
        loop {
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                return;
            }
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            let (mut length, mut content_type) = (0, None);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    let value = value.trim();
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.parse().unwrap_or(0);
                    } else if name.eq_ignore_ascii_case("content-type") {
                        content_type = Some(value.to_owned());
                    }
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            let reply = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
            if writer.write_all(reply.as_bytes()).is_err() {
                return;
            }
            let _ = tx.send(Request {
                path,
                content_type,
                body,
            });
        }
    }
}
