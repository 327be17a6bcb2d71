//! RFC 9457 problem+json: the one place where errors become HTTP answers.
use poem::http::{HeaderValue, StatusCode, header};
use poem::{IntoResponse, Response};
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::{ToJSON, Type};
use poem_openapi::{ApiResponse, Object};

use crate::service::ServiceError;

/// An error answer with a stable `type` (`urn:roster:problem:<slug>`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {slug}: {detail}")]
pub struct ApiError {
    pub status: StatusCode,
    pub slug: &'static str,
    pub title: &'static str,
    pub detail: String,
}

impl ApiError {
    #[must_use]
    pub fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            slug,
            title,
            detail: detail.into(),
        }
    }

    #[must_use]
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            "a valid API key is required: `Authorization: Bearer <key>`",
        )
    }

    #[must_use]
    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "Invalid request",
            detail,
        )
    }

    /// A request body that stopped arriving (`listener::BodyStalled`).
    #[must_use]
    pub fn body_stalled(stalled: &crate::listener::BodyStalled) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request-timeout",
            "Request timeout",
            format!(
                "{stalled}: roster waits at most ROSTER_HTTP_READ_TIMEOUT_SECS for each part of a \
                 body; nothing of this request was stored"
            ),
        )
    }

    #[must_use]
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    fn body(&self) -> String {
        Problem {
            kind: format!("urn:roster:problem:{}", self.slug),
            title: self.title.to_owned(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
        }
        .to_json_string()
    }
}

/// An RFC 9457 problem: the body of every error answer (`application/problem+json`).
#[derive(Object)]
pub struct Problem {
    /// `urn:roster:problem:<slug>`: stable, the field to match on (`validation`, `conflict`,
    /// `not-found`, `forbidden`, `unauthorized`, `bad-signature`, `too-large`,
    /// `request-timeout`, …).
    #[oai(rename = "type")]
    pub kind: String,
    /// A short, fixed summary of the `type`.
    pub title: String,
    /// The HTTP status, repeated.
    pub status: u16,
    /// What was wrong with this request, naming the field at fault where there is one.
    pub detail: String,
}

/// The error statuses every operation declares, with what they mean. One list for all
/// operations: not every operation can answer every one of them (a GET has no body to be too
/// large), but a client that handles them all handles any operation.
const ERROR_STATUSES: &[(u16, &str)] = &[
    (
        400,
        "The request cannot be read: unparsable JSON, an unknown field, a wrong type or a bad \
         parameter; `detail` names the field.",
    ),
    (
        401,
        "No valid API key (`Authorization: Bearer <key>`), or on the events and HR snapshot \
         routes a missing or wrong `X-Roster-Signature`.",
    ),
    (403, "The key lacks the scope this operation needs."),
    (404, "No such resource (or route)."),
    (
        409,
        "The request conflicts with the current state: a duplicate name, an `event_id` with \
         other content, a run already running, a deprovision held by the deletion guard.",
    ),
    (
        408,
        "The request body stopped arriving: no data for the server's read timeout \
         (`ROSTER_HTTP_READ_TIMEOUT_SECS`, 30 s by default); nothing was stored.",
    ),
    (
        412,
        "`If-Match` does not match the resource's current `ETag`.",
    ),
    (
        413,
        "The request body is larger than 1 MiB (on `POST /hr/snapshots`: 256 MiB or \
         1,000,000 rows).",
    ),
    (
        415,
        "The body is not JSON: send `Content-Type: application/json`.",
    ),
    (
        422,
        "The request is well-formed but its content is invalid; `detail` says which field and why.",
    ),
    (
        500,
        "The request failed inside roster; nothing was committed. Retry, or see the server log.",
    ),
    (
        503,
        "roster cannot serve the request now (the database or the target is unavailable).",
    ),
];

/// Handlers return `Result<_, ApiError>`, so every operation in the OpenAPI document declares
/// the error statuses with the `Problem` schema from this one place.
impl ApiResponse for ApiError {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: ERROR_STATUSES
                .iter()
                .map(|&(status, description)| MetaResponse {
                    description,
                    status: Some(status),
                    status_range: None,
                    content: vec![MetaMediaType {
                        content_type: "application/problem+json",
                        schema: Problem::schema_ref(),
                    }],
                    headers: vec![],
                })
                .collect(),
        }
    }

    fn register(registry: &mut Registry) {
        Problem::register(registry);
    }
}

impl poem::error::ResponseError for ApiError {
    fn status(&self) -> StatusCode {
        self.status
    }

    fn as_response(&self) -> Response {
        let mut resp = Response::builder()
            .status(self.status)
            .header(header::CONTENT_TYPE, "application/problem+json")
            .body(self.body());
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        match &err {
            ServiceError::NotFound { .. } => Self::not_found(err.to_string()),
            ServiceError::Invalid { .. } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "Validation failed",
                err.to_string(),
            ),
            ServiceError::Conflict(_) => Self::new(
                StatusCode::CONFLICT,
                "conflict",
                "Conflict",
                err.to_string(),
            ),
            ServiceError::PreconditionFailed(_) => Self::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition-failed",
                "Precondition failed",
                err.to_string(),
            ),
            ServiceError::Forbidden(_) | ServiceError::NeedsAdmin(_) => Self::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "Forbidden",
                err.to_string(),
            ),
            ServiceError::Unavailable(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Unavailable",
                err.to_string(),
            ),
            ServiceError::Internal(_) | ServiceError::Db(_) => {
                // The cause goes to the log; the caller gets no internals.
                tracing::error!(error = %err, "Request failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "Internal error",
                    "the request failed inside roster; nothing was committed. Retry, or see the server log",
                )
            }
        }
    }
}

impl From<ServiceError> for poem::Error {
    fn from(err: ServiceError) -> Self {
        ApiError::from(err).into()
    }
}

/// Turns any error poem or poem-openapi raised (unparsable JSON, unknown fields, wrong types,
/// missing auth, unknown route) into problem+json with the library's explanation as `detail`.
pub async fn render_any_error(err: poem::Error) -> Response {
    if let Some(api) = err.downcast_ref::<ApiError>() {
        return api.as_response_owned();
    }
    let status = err.status();
    let detail = err.to_string();
    let problem = match status {
        StatusCode::UNAUTHORIZED => ApiError::unauthorized(),
        StatusCode::NOT_FOUND => ApiError::not_found(if detail.is_empty() {
            "no such route".into()
        } else {
            detail
        }),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::new(
            status,
            "method-not-allowed",
            "Method not allowed",
            "this route does not take that method",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(status, "too-large", "Request too large", detail)
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
            status,
            "unsupported-media-type",
            "Unsupported media type",
            format!("{detail}; send `Content-Type: application/json`"),
        ),
        s if s.is_client_error() => {
            ApiError::new(status, "invalid-request", "Invalid request", detail)
        }
        _ => {
            tracing::error!(error = %detail, "Unhandled error");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                "the request failed inside roster",
            )
        }
    };
    problem.as_response_owned()
}

impl ApiError {
    fn as_response_owned(&self) -> Response {
        poem::error::ResponseError::as_response(self).into_response()
    }
}
