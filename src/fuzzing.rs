//! Entry points for the fuzz targets in `fuzz/` and for the corpus replay test
//! (`tests/scim/fuzz_corpus.rs`). Not an API: each function feeds bytes through the code that
//! reads untrusted input in production — the same functions, not copies — and reports what
//! came out, so that the replay test can assert on the seeds.
//!
//! The contract under test is "no panic on any input". Clocks are fixed, so a run is a pure
//! function of its input and every crash reproduces.
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use reqwest::Method;
use secrecy::SecretString;
use serde_json::Value;

use crate::api::body::parse_json;
use crate::api::events::{EventBatchIn, EventIn, to_input};
use crate::delivery::limiter::AppLimiter;
use crate::delivery::{execute, policy};
use crate::scim::client::{ResponseMeta, decode_answer, parse_list_page};
use crate::scim::discovery::Capabilities;
use crate::scim::{ErrorClass, auth, id_of, parse_retry_after, version_of};
use crate::service::ingest::{HrEventInput, validate_events};

/// The fixed "now" of every run: 2026-07-14T03:33:20Z.
const NOW_UNIX: u64 = 1_784_000_000;

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(NOW_UNIX)
}

/// The first line of `data` (without `\r`), as a header value would carry it (`None` when it
/// is not UTF-8), and the bytes after it.
fn split_first_line(data: &[u8]) -> (Option<&str>, &[u8]) {
    let (line, rest) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    (std::str::from_utf8(line).ok(), rest)
}

/// What [`scim_response`] made of one input.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ScimResponseReport {
    /// `Retry-After` read from the first line.
    pub retry_after: Option<Duration>,
    /// The body as a 200 answer: `Some(true)` when it parsed as JSON, `Some(false)` when empty.
    pub ok_body: Option<bool>,
    /// Items of the body read as a ListResponse page, when it is one.
    pub list_items: Option<usize>,
    /// `scimType` and `detail` of the body read as a 409 answer.
    pub error_scim_type: Option<String>,
    pub error_detail: Option<String>,
    /// Whether the body is a usable OAuth2 token response.
    pub token: bool,
}

/// Everything roster does with a SCIM target's answer, fed from one input: the first line as a
/// `Retry-After` value (and what the engine does with the wait), the whole input as the body of
/// a 200 (ETag back-fill, then read as a ListResponse, a User or Group, a
/// ServiceProviderConfig, a token response) and of an error answer (the SCIM Error body).
pub fn scim_response(data: &[u8]) -> ScimResponseReport {
    let mut report = ScimResponseReport::default();
    let header = split_first_line(data).0.map(str::to_owned);
    report.retry_after = header.as_deref().and_then(|v| parse_retry_after(v, now()));
    if let Some(wait) = report.retry_after {
        // What the engine does with a 429/503's Retry-After: pause the app and pick a delay.
        AppLimiter::new(1, 1, 1).pause_for(wait);
        for status in [429, 503] {
            let _ = policy::decide(ErrorClass::Transient, Some(status), 1, 5, Some(wait), 0.5);
        }
    }
    let method = Method::GET;
    let ok = ResponseMeta {
        status: 200,
        retry_after: None,
        etag: header.clone(),
        content_type: Some("application/scim+json; charset=utf-8".into()),
    };
    match decode_answer(&method, "/v2/Users", &ok, data, now()) {
        Ok(answer) => {
            report.ok_body = Some(answer.body.is_some());
            if let Some(body) = &answer.body {
                read_resources(body, &mut report);
            }
            report.token = auth::token_from(answer.body, Instant::now()).is_ok();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    let conflict = ResponseMeta {
        status: 409,
        retry_after: header,
        etag: None,
        content_type: Some("application/scim+json".into()),
    };
    if let Err(e) = decode_answer(&method, "/v2/Users", &conflict, data, now()) {
        report.error_scim_type = e.scim_type().map(str::to_owned);
        if let crate::scim::ScimError::Http { detail, .. } = &e {
            report.error_detail = Some(detail.clone());
        }
        let _ = (e.to_string(), e.class(), e.retry_after());
    }
    report
}

/// A 200 body read every way the client and the engines read one.
fn read_resources(body: &Value, report: &mut ScimResponseReport) {
    if let Ok(page) = parse_list_page(body) {
        report.list_items = Some(page.items.len());
        for item in &page.items {
            read_resource(item);
        }
    }
    read_resource(body);
    let _ = Capabilities::from_service_provider_config(body);
    let _ = Capabilities::names(body, "name");
}

/// A User or Group as a target returns it.
fn read_resource(resource: &Value) {
    let _ = (id_of(resource), version_of(resource));
    let _ = execute::target_members(resource);
}

/// What [`hr_event`] made of one input.
#[derive(Debug, Clone, PartialEq)]
pub struct HrEventReport {
    /// The input as a `POST /events` body: `Ok` when it would be accepted for ingest, else the
    /// 400's detail.
    pub single: Result<(), String>,
    /// The input as a `POST /events:batch` body: the number of events, or the 400's detail.
    pub batch: Result<usize, String>,
    /// Whether the first line is a valid `X-Roster-Signature`, under [`WEBHOOK_SECRET`] at the
    /// fixed clock, for the bytes after it.
    pub signature_ok: bool,
}

/// The webhook secret the [`hr_event`] entry point checks signatures with.
pub const WEBHOOK_SECRET: &str = "fuzz-webhook-secret";

/// The fixed clock of [`hr_event`], for seeds that want a fresh signature or event.
#[must_use]
pub fn hr_now() -> DateTime<Utc> {
    DateTime::<Utc>::from(now())
}

/// Everything roster does with an HR system's request before the database: the signature
/// check (first line as the `X-Roster-Signature` header, the rest as the signed body),
/// and the whole input as the body of `POST /events` and of `POST /events:batch`, parsed as the
/// handlers parse it (`JsonBody`, field-named errors) and validated as ingest validates it.
pub fn hr_event(data: &[u8]) -> HrEventReport {
    let secret = SecretString::from(WEBHOOK_SECRET);
    let now = hr_now();
    let (header, signed) = split_first_line(data);
    let signature_ok =
        crate::crypto::verify_webhook_signature(&secret, header, signed, now.timestamp()).is_ok();
    let single = parse_json::<EventIn>(data)
        .map_err(|e| e.detail)
        .and_then(|event| validate_events(&[to_input(event)], now).map_err(|e| e.to_string()));
    let batch = parse_json::<EventBatchIn>(data)
        .map_err(|e| e.detail)
        .and_then(|body| {
            let inputs: Vec<HrEventInput> = body.events.into_iter().map(to_input).collect();
            validate_events(&inputs, now)
                .map(|()| inputs.len())
                .map_err(|e| e.to_string())
        });
    HrEventReport {
        single,
        batch,
        signature_ok,
    }
}

/// What the HR snapshot parser made of an input, read as each of the three formats: rows
/// taken and row errors (with their lines), or the reason the whole body was refused.
#[derive(Debug)]
pub struct HrSnapshotReport {
    pub csv: Result<(usize, Vec<u64>), String>,
    pub ndjson: Result<(usize, Vec<u64>), String>,
    pub json: Result<(usize, Vec<u64>), String>,
}

/// Arbitrary bytes as the body of `POST /hr/snapshots`, parsed as CSV, NDJSON and a JSON array
/// by the route's own parser (`api::snapshot_body::parse_snapshot`).
pub fn hr_snapshot(data: &[u8]) -> HrSnapshotReport {
    use crate::api::snapshot_body::parse_snapshot;
    use crate::service::snapshot::SnapshotFormat;
    let parse = |format| {
        let mut rows = 0;
        let mut errors = Vec::new();
        parse_snapshot(format, data, |row| match row {
            Ok(_) => rows += 1,
            Err(e) => errors.push(e.line),
        })
        .map(|()| (rows, errors))
        .map_err(|e| e.to_string())
    };
    HrSnapshotReport {
        csv: parse(SnapshotFormat::Csv),
        ndjson: parse(SnapshotFormat::Ndjson),
        json: parse(SnapshotFormat::Json),
    }
}
