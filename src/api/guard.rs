//! Request guards that must see the raw body: the 1 MiB size limit and the HR webhook
//! signature (an HMAC over the exact bytes received).
use poem::http::StatusCode;
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};
use secrecy::SecretString;

use super::problem::ApiError;
use crate::crypto::verify_webhook_signature;

pub const MAX_BODY_BYTES: usize = 1024 * 1024;

pub struct BodyGuard {
    pub webhook_secret: Option<SecretString>,
}

impl<E: Endpoint> Middleware<E> for BodyGuard {
    type Output = BodyGuardEndpoint<E>;
    fn transform(&self, ep: E) -> Self::Output {
        BodyGuardEndpoint {
            inner: ep,
            webhook_secret: self.webhook_secret.clone(),
        }
    }
}

pub struct BodyGuardEndpoint<E> {
    inner: E,
    webhook_secret: Option<SecretString>,
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too-large",
        "Request too large",
        format!("request bodies are limited to {MAX_BODY_BYTES} bytes (1 MiB)"),
    )
}

/// Why the body could not be read: too large, stalled (408), or cut off.
fn read_error(e: poem::error::ReadBodyError) -> poem::Error {
    match e {
        poem::error::ReadBodyError::PayloadTooLarge => too_large().into(),
        poem::error::ReadBodyError::Io(io) => match crate::listener::body_stalled(&io) {
            Some(stalled) => ApiError::body_stalled(stalled).into(),
            None => ApiError::invalid(format!("cannot read the request body: {io}")).into(),
        },
        other => ApiError::invalid(format!("cannot read the request body: {other}")).into(),
    }
}

/// `POST /hr/snapshots` reads its own body as it streams (up to 256 MiB) and checks its
/// signature as it goes (`api::snapshots`).
fn is_snapshot_upload(req: &Request) -> bool {
    req.method() == poem::http::Method::POST && req.uri().path() == "/api/v1/hr/snapshots"
}

fn is_event_route(path: &str) -> bool {
    matches!(path, "/api/v1/events" | "/api/v1/events:batch")
}

impl<E: Endpoint> Endpoint for BodyGuardEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Self::Output> {
        // poem's router reads `/events:batch` as `/events` plus a parameter; anything else that
        // starts like it is not a route.
        let path = req.uri().path();
        if path.starts_with("/api/v1/events") && !is_event_route(path) {
            return Err(ApiError::not_found("no such route").into());
        }
        if is_snapshot_upload(&req) {
            return Ok(self.inner.call(req).await?.into_response());
        }
        // Refuse early on a declared length; a chunked body is counted as it is read.
        let declared = req
            .headers()
            .get(poem::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
            return Err(too_large().into());
        }
        let body = req
            .take_body()
            .into_bytes_limit(MAX_BODY_BYTES)
            .await
            .map_err(read_error)?;
        if let Some(secret) = &self.webhook_secret
            && req.method() == poem::http::Method::POST
            && is_event_route(req.uri().path())
        {
            let header = req
                .headers()
                .get("x-roster-signature")
                .and_then(|v| v.to_str().ok());
            let now = chrono::Utc::now().timestamp();
            if let Err(e) = verify_webhook_signature(secret, header, &body, now) {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "bad-signature",
                    "Signature check failed",
                    e.to_string(),
                )
                .into());
            }
        }
        req.set_body(body);
        Ok(self.inner.call(req).await?.into_response())
    }
}
