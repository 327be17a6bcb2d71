//! `/hr/snapshots`: whole-population HR exports (CSV, NDJSON, JSON array), streamed in,
//! diffed and applied in the background, held by the leaver guard for an admin.
use std::io::Read;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use poem::http::StatusCode;
use poem::web::Data;
use poem::{Request, RequestBody};
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::registry::{MetaMediaType, MetaRequest, MetaSchema, MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ApiResponse, ExtractParamOptions, Object, OpenApi,
};
use secrecy::SecretString;
use tokio::sync::mpsc;
use tokio_util::io::SyncIoBridge;

use super::ApiTags;
use super::auth::ApiKey;
use super::events::EmployeeIn;
use super::paging::{next_cursor, page_limit};
use super::problem::ApiError;
use super::snapshot_body::{BodyError, parse_snapshot};
use crate::crypto::{SignatureCheck, SignatureError};
use crate::service::snapshot::diff::RowError;
use crate::service::snapshot::{
    ContentHasher, MAX_BODY_BYTES, ReceiveFailure, Received, SnapshotFormat, SnapshotParams,
    SnapshotView, Upload,
};
use crate::service::{Permission, Roster};

/// Rows handed from the parser to the store at a time.
const BATCH: usize = 1000;

/// The streamed body of `POST /hr/snapshots` and its format, from `Content-Type`.
pub struct SnapshotBody {
    body: poem::Body,
    format: SnapshotFormat,
    declared_len: Option<u64>,
}

fn format_of(content_type: &str) -> Option<SnapshotFormat> {
    let mime = content_type.parse::<mime::Mime>().ok()?;
    match (mime.type_().as_str(), mime.subtype().as_str()) {
        ("text", "csv") => Some(SnapshotFormat::Csv),
        ("application", "x-ndjson" | "ndjson" | "jsonl" | "x-jsonlines") => {
            Some(SnapshotFormat::Ndjson)
        }
        ("application", "json") => Some(SnapshotFormat::Json),
        _ => None,
    }
}

impl<'a> ApiExtractor<'a> for SnapshotBody {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        EmployeeIn::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        let text = || MetaSchemaRef::Inline(Box::new(MetaSchema::new("string")));
        Some(MetaRequest {
            description: Some(
                "The whole population of one HR source, one person a row, up to 1,000,000 rows \
                 and 256 MiB. `text/csv` (RFC 4180, UTF-8, a BOM and CRLF accepted): a header \
                 row naming `employee_id` (required), any of `user_name`, `email`, \
                 `given_name`, `family_name`, `display_name`, `department`, `title`, \
                 `manager_employee_id`, `status` (`active` or `terminated`) and \
                 `attributes.<key>` columns; an empty cell clears the field, a column that is \
                 absent keeps it. `application/x-ndjson`: one employee object a line. \
                 `application/json`: an array of employee objects. Every row ends with a line \
                 end (CSV, NDJSON), so a cut-off file is refused.",
            ),
            content: vec![
                MetaMediaType {
                    content_type: "text/csv",
                    schema: text(),
                },
                MetaMediaType {
                    content_type: "application/x-ndjson",
                    schema: text(),
                },
                MetaMediaType {
                    content_type: "application/json",
                    schema: Vec::<EmployeeIn>::schema_ref(),
                },
            ],
            required: true,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let Some(content_type) = request.content_type() else {
            return Err(poem_openapi::error::ContentTypeError::ExpectContentType.into());
        };
        let Some(format) = format_of(content_type) else {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                format!(
                    "`{content_type}` is not a snapshot format: send text/csv, application/x-ndjson or application/json"
                ),
            )
            .into());
        };
        let declared_len = request
            .headers()
            .get(poem::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        Ok(Self {
            body: body.take()?,
            format,
            declared_len,
        })
    }
}

fn too_large(detail: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too-large",
        "Request too large",
        detail,
    )
}

fn bad_signature(e: &SignatureError) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "bad-signature",
        "Signature check failed",
        e.to_string(),
    )
}

/// Why reading the body stopped, carried through `std::io::Error` out of the parser.
#[derive(Debug, thiserror::Error)]
enum ReadStop {
    #[error("the body is larger than 256 MiB")]
    TooLarge,
    #[error("{0}")]
    Signature(SignatureError),
}

/// The body as the parser reads it: counted against the route's limit, hashed, and checked
/// against the webhook signature at its end (a mismatch is a read error, so nothing is
/// stored).
struct CheckedBody<R> {
    inner: R,
    read: u64,
    hasher: Option<ContentHasher>,
    signature: Option<SignatureCheck>,
    hash_out: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl<R: Read> Read for CheckedBody<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let chunk = buf.get(..n).unwrap_or_default();
        self.read += n as u64;
        if self.read > MAX_BODY_BYTES {
            return Err(std::io::Error::other(ReadStop::TooLarge));
        }
        if let Some(h) = self.hasher.as_mut() {
            h.update(chunk);
        }
        if let Some(s) = self.signature.as_mut() {
            s.update(chunk);
        }
        if n == 0 {
            if let Some(check) = self.signature.take() {
                check
                    .finish()
                    .map_err(|e| std::io::Error::other(ReadStop::Signature(e)))?;
            }
            if let Some(h) = self.hasher.take() {
                let mut out = self
                    .hash_out
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                *out = Some(h.finish());
            }
        }
        Ok(n)
    }
}

/// The API error of a body that could not be taken.
fn body_error(e: BodyError) -> ApiError {
    match e {
        BodyError::TooManyRows => too_large(e.to_string()),
        BodyError::Invalid(detail) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "Validation failed",
            detail,
        ),
        BodyError::Io(io) => {
            let stop = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<ReadStop>());
            match stop {
                Some(ReadStop::TooLarge) => too_large("HR snapshot bodies are limited to 256 MiB"),
                Some(ReadStop::Signature(s)) => bad_signature(s),
                None => match crate::listener::body_stalled(&io) {
                    Some(stalled) => ApiError::body_stalled(stalled),
                    None => {
                        ApiError::invalid(format!("cannot read the request body (cut off?): {io}"))
                    }
                },
            }
        }
    }
}

#[derive(Object)]
pub struct SnapshotCounts {
    pub rows: u64,
    pub joiners: u64,
    pub movers: u64,
    pub leavers: u64,
    pub unchanged: u64,
    /// Invalid rows and duplicate employee ids.
    pub invalid: u64,
}

#[derive(Object)]
pub struct SnapshotChanges {
    /// Employee ids, the first 100 of each kind.
    pub joiners: Vec<String>,
    pub movers: Vec<String>,
    pub leavers: Vec<String>,
}

#[derive(Object)]
pub struct SnapshotRowError {
    /// The line (CSV, NDJSON; the header is line 1) or element number (JSON array, from 1).
    pub line: u64,
    pub employee_id: Option<String>,
    pub reason: String,
}

#[derive(Object)]
pub struct SnapshotProgress {
    /// Changes applied so far.
    pub applied: u64,
    /// Changes to apply: joiners + movers + leavers.
    pub total: u64,
}

#[derive(Object)]
pub struct SnapshotOut {
    pub id: String,
    pub source: String,
    pub as_of: DateTime<Utc>,
    /// `csv`, `ndjson` or `json`.
    pub format: String,
    /// `received`, `diffing`, `held`, `applying`, `applied`, `rejected`, `cancelled` or
    /// `failed`. For a dry run: the state it would reach (`held`, `applied` or `rejected`).
    pub state: String,
    pub dry_run: bool,
    pub counts: SnapshotCounts,
    pub progress: SnapshotProgress,
    pub changes: SnapshotChanges,
    /// Invalid rows with their line numbers (the first 1000).
    pub errors: Vec<SnapshotRowError>,
    /// Why it is held, rejected or failed.
    pub reason: Option<String>,
    /// SHA-256 (hex) of the body as received.
    pub content_hash: String,
    pub received_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn row_error_out(e: RowError) -> SnapshotRowError {
    SnapshotRowError {
        line: e.line,
        employee_id: e.employee_id,
        reason: e.reason,
    }
}

fn out(v: SnapshotView) -> SnapshotOut {
    let c = v.counts;
    SnapshotOut {
        progress: SnapshotProgress {
            applied: v.applied,
            total: c.joiners + c.movers + c.leavers,
        },
        counts: SnapshotCounts {
            rows: c.rows,
            joiners: c.joiners,
            movers: c.movers,
            leavers: c.leavers,
            unchanged: c.unchanged,
            invalid: c.invalid,
        },
        changes: SnapshotChanges {
            joiners: v.changes.joiners,
            movers: v.changes.movers,
            leavers: v.changes.leavers,
        },
        errors: v.errors.into_iter().map(row_error_out).collect(),
        id: v.id,
        source: v.source,
        as_of: v.as_of,
        format: v.format,
        state: v.state,
        dry_run: v.dry_run,
        reason: v.reason,
        content_hash: v.content_hash,
        received_at: v.received_at,
        updated_at: v.updated_at,
    }
}

#[derive(ApiResponse)]
pub enum SnapshotPosted {
    /// Stored durably; the diff runs in the background (`GET /hr/snapshots/{id}`).
    #[oai(status = 202)]
    Accepted(Json<SnapshotOut>),
    /// `dry_run`: the diff, nothing written.
    #[oai(status = 200)]
    DryRun(Json<SnapshotOut>),
}

#[derive(Object)]
pub struct SnapshotPage {
    pub items: Vec<SnapshotOut>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

pub struct SnapshotsApi;

#[OpenApi(tag = "ApiTags::Snapshots")]
impl SnapshotsApi {
    /// Post an HR population file
    ///
    /// Scope `events:write`. Answers 202 once the file is durably stored; the diff and the changes run in the background. Signed like events
    /// (`X-Roster-Signature`) when the server has a webhook secret. An empty file, invalid
    /// rows or duplicate employee ids, and an `as_of` older than the source's last applied
    /// snapshot are refused (422; rows are listed with their line numbers).
    #[oai(
        path = "/hr/snapshots",
        method = "post",
        operation_id = "postHrSnapshot"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn post_snapshot(
        &self,
        auth: ApiKey,
        roster: Data<&Roster>,
        /// The HR system the file comes from (default `hr`): only its people become leavers
        /// by being absent.
        source: Query<Option<String>>,
        /// When the export was taken (RFC 3339; default now). Changes apply as of this time:
        /// an event newer than it wins.
        as_of: Query<Option<DateTime<Utc>>>,
        /// Diff and answer with the changes; write nothing.
        dry_run: Query<Option<bool>>,
        /// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">`, as on the events
        /// routes; required when the server has a webhook secret.
        #[oai(name = "X-Roster-Signature")]
        signature: poem_openapi::param::Header<Option<String>>,
        body: SnapshotBody,
    ) -> Result<SnapshotPosted, ApiError> {
        let principal = auth.require(Permission::WriteEvents)?;
        if body.declared_len.is_some_and(|n| n > MAX_BODY_BYTES) {
            return Err(too_large("HR snapshot bodies are limited to 256 MiB"));
        }
        let secret: Option<SecretString> = roster.config().hr_webhook_secret.clone();
        let check = match &secret {
            Some(secret) => Some(
                SignatureCheck::start(secret, signature.0.as_deref(), Utc::now().timestamp())
                    .map_err(|e| bad_signature(&e))?,
            ),
            None => None,
        };
        let params = SnapshotParams {
            source: source.0.unwrap_or_else(|| "hr".to_owned()),
            as_of: as_of.0.unwrap_or_else(Utc::now),
            dry_run: dry_run.0.unwrap_or(false),
            format: body.format,
        };
        let (tx, rx) = mpsc::channel::<Result<Upload, ApiError>>(4);
        let stream = body.body.into_bytes_stream().map_err(std::io::Error::other);
        let reader = tokio_util::io::StreamReader::new(stream);
        let format = body.format;
        let hash_out = std::sync::Arc::new(std::sync::Mutex::new(None));
        let mut checked = CheckedBody {
            inner: SyncIoBridge::new(reader),
            read: 0,
            hasher: Some(ContentHasher::default()),
            signature: check,
            hash_out: hash_out.clone(),
        };
        let parser = tokio::task::spawn_blocking(move || {
            let mut batch = Vec::with_capacity(BATCH);
            let mut gone = false;
            let parsed = parse_snapshot(format, &mut checked, |row| {
                if gone {
                    return;
                }
                batch.push(row);
                if batch.len() >= BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                    gone = tx.blocking_send(Ok(Upload::Rows(full))).is_err();
                }
            });
            let end = match parsed {
                Ok(()) => {
                    let hash = hash_out
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .take()
                        .unwrap_or_default();
                    if !batch.is_empty() {
                        let _ = tx.blocking_send(Ok(Upload::Rows(batch)));
                    }
                    Ok(Upload::End { content_hash: hash })
                }
                Err(e) => {
                    // The client is still sending: read the rest (within the route's limit)
                    // so that it gets the answer instead of a reset connection.
                    if !matches!(e, BodyError::Io(_)) {
                        let _ = std::io::copy(&mut checked, &mut std::io::sink());
                    }
                    Err(body_error(e))
                }
            };
            let _ = tx.blocking_send(end);
        });
        let received = roster.receive_snapshot(principal, params, rx).await;
        // The parser ends once the receiver is gone (its sends fail) or the body is read.
        drop(parser);
        match received {
            Ok(Received::Stored(view)) => Ok(SnapshotPosted::Accepted(Json(out(view)))),
            Ok(Received::DryRun(view)) => Ok(SnapshotPosted::DryRun(Json(out(view)))),
            Ok(Received::Rejected(view)) => {
                let listed: Vec<String> = view
                    .errors
                    .iter()
                    .take(5)
                    .map(|e| format!("line {}: {}", e.line, e.reason))
                    .collect();
                Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "snapshot-rejected",
                    "Snapshot rejected",
                    format!(
                        "{} invalid rows, nothing applied: {}{}; all of them at GET /api/v1/hr/snapshots/{}",
                        view.counts.invalid,
                        listed.join("; "),
                        if view.errors.len() > 5 { "; …" } else { "" },
                        view.id
                    ),
                ))
            }
            Err(ReceiveFailure::Upload(e)) => Err(e),
            Err(ReceiveFailure::Service(e)) => Err(e.into()),
        }
    }

    /// List HR snapshots
    ///
    /// Scope `read`. Newest first.
    #[oai(
        path = "/hr/snapshots",
        method = "get",
        operation_id = "listHrSnapshots"
    )]
    async fn list_snapshots(
        &self,
        auth: ApiKey,
        roster: Data<&Roster>,
        /// Only this source's snapshots.
        source: Query<Option<String>>,
        /// From `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
        /// 1..=500, default 50.
        limit: Query<Option<u64>>,
    ) -> Result<Json<SnapshotPage>, ApiError> {
        auth.require(Permission::ReadConfig)?;
        let limit = page_limit(limit.0, 50, 500)?;
        let items = roster
            .list_snapshots(source.0.as_deref(), cursor.0.as_deref(), limit)
            .await?;
        let next = next_cursor(&items, limit, |s| s.id.clone());
        Ok(Json(SnapshotPage {
            items: items.into_iter().map(out).collect(),
            next_cursor: next,
        }))
    }

    /// Get one HR snapshot
    ///
    /// Scope `read`. State, counts, progress, the first changes of each kind, row errors.
    #[oai(
        path = "/hr/snapshots/:id",
        method = "get",
        operation_id = "getHrSnapshot"
    )]
    async fn get_snapshot(
        &self,
        auth: ApiKey,
        roster: Data<&Roster>,
        id: Path<String>,
    ) -> Result<Json<SnapshotOut>, ApiError> {
        auth.require(Permission::ReadConfig)?;
        Ok(Json(out(roster.get_snapshot(&id.0).await?)))
    }

    /// Approve a held HR snapshot
    ///
    /// Scope `admin`. Applies a snapshot held by the leaver guard.
    #[oai(
        path = "/hr/snapshots/:id/approve",
        method = "post",
        operation_id = "approveHrSnapshot"
    )]
    async fn approve_snapshot(
        &self,
        auth: ApiKey,
        roster: Data<&Roster>,
        id: Path<String>,
    ) -> Result<Json<SnapshotOut>, ApiError> {
        let principal = auth.require(Permission::Admin)?;
        Ok(Json(out(roster.approve_snapshot(principal, &id.0).await?)))
    }

    /// Cancel an HR snapshot
    ///
    /// Scope `admin`. Drops a snapshot that is received, diffing or held; its rows are deleted.
    #[oai(
        path = "/hr/snapshots/:id/cancel",
        method = "post",
        operation_id = "cancelHrSnapshot"
    )]
    async fn cancel_snapshot(
        &self,
        auth: ApiKey,
        roster: Data<&Roster>,
        id: Path<String>,
    ) -> Result<Json<SnapshotOut>, ApiError> {
        let principal = auth.require(Permission::Admin)?;
        Ok(Json(out(roster.cancel_snapshot(principal, &id.0).await?)))
    }
}
