//! Metrics (names fixed by DESIGN §7), logs and traces.
//!
//! Invariant: labels are low-cardinality — app names, methods, status codes, lanes, classes —
//! never user ids, user names or URLs.
use std::sync::OnceLock;

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
    pub event_to_target_seconds: HistogramVec,
    pub drift_detected_total: IntCounterVec,
    pub drift_corrected_total: IntCounterVec,
    pub reconcile_duration_seconds: HistogramVec,
    pub reconcile_last_success_timestamp_seconds: GaugeVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    c
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(h.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    h
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    g
}

fn int_gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    g
}

impl Metrics {
    // The definitions are constants; a panic here is a programming error caught by any test.
    fn new() -> Self {
        let r = Registry::new();
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
            scim_requests_total: counter(
                &r,
                "roster_scim_requests_total",
                "SCIM calls made, by app, method and HTTP status (or `error`).",
                &["app", "method", "status"],
            ),
            scim_request_duration_seconds: histogram(
                &r,
                "roster_scim_request_duration_seconds",
                "SCIM call duration.",
                &["app", "method"],
                call_buckets,
            ),
            sync_operations_total: counter(
                &r,
                "roster_sync_operations_total",
                "Provisioning operations by outcome.",
                &["app", "operation", "outcome"],
            ),
            queue_depth: int_gauge(
                &r,
                "roster_queue_depth",
                "Pending jobs by app and lane.",
                &["app", "lane"],
            ),
            queue_oldest_pending_seconds: gauge(
                &r,
                "roster_queue_oldest_pending_seconds",
                "Age of the oldest pending job.",
                &["app"],
            ),
            throttled_total: counter(
                &r,
                "roster_throttled_total",
                "429 or 503 answers received.",
                &["app"],
            ),
            app_quarantined: int_gauge(
                &r,
                "roster_app_quarantined",
                "1 while the app is quarantined.",
                &["app"],
            ),
            hr_events_total: counter(
                &r,
                "roster_hr_events_total",
                "HR events received, by type and result.",
                &["type", "result"],
            ),
            event_to_target_seconds: histogram(
                &r,
                "roster_event_to_target_seconds",
                "HR event accepted to target confirmed.",
                &["app", "operation"],
                slo_buckets,
            ),
            drift_detected_total: counter(
                &r,
                "roster_drift_detected_total",
                "Accounts found out of line by reconciliation, by class.",
                &["app", "class"],
            ),
            drift_corrected_total: counter(
                &r,
                "roster_drift_corrected_total",
                "Accounts corrected by reconciliation, by class.",
                &["app", "class"],
            ),
            reconcile_duration_seconds: histogram(
                &r,
                "roster_reconcile_duration_seconds",
                "Reconciliation run duration.",
                &["app"],
                run_buckets,
            ),
            reconcile_last_success_timestamp_seconds: gauge(
                &r,
                "roster_reconcile_last_success_timestamp_seconds",
                "Unix time of the last completed reconciliation.",
                &["app"],
            ),
            registry: r,
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

/// The current OpenTelemetry trace id, when traces are exported (set up in `init`).
#[must_use]
pub fn trace_id() -> Option<String> {
    None
}

/// Logs to stderr: human-readable, or one JSON object per line with `ROSTER_LOG_FORMAT=json`.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,sea_orm=warn"));
    let json = std::env::var("ROSTER_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(test)]
mod tests {
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
        let text = m.render();
        for name in [
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
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
    }
}
