//! Errors of the SCIM client and their classification.
//!
//! Errors carry the method, path, status, `scimType`, a truncated `detail` and `Retry-After`;
//! never a credential and never a full response body.
use std::time::{Duration, SystemTime};

/// What a caller should do about an error (DESIGN §5). Pure data; the delivery engine maps it
/// to retry, adopt, quarantine or dead-letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Connect errors, timeouts, 408, 412 after our own retry, 429, 5xx: try again later.
    Transient,
    /// 409: the resource exists (usually `scimType: uniqueness`): look it up and link.
    Conflict,
    /// 401/403: credentials rejected.
    Auth,
    /// 404.
    NotFound,
    /// Other 4xx, malformed or oversized bodies, refused addresses, invalid input.
    Permanent,
}

/// The classification table. `status` is `None` when no HTTP answer arrived (connect error,
/// timeout, connection reset).
#[must_use]
pub fn classify(status: Option<u16>) -> ErrorClass {
    match status {
        None => ErrorClass::Transient,
        Some(401 | 403) => ErrorClass::Auth,
        Some(404) => ErrorClass::NotFound,
        Some(409) => ErrorClass::Conflict,
        // 412: someone changed the resource between our re-read and retry; a later attempt
        // re-reads again. 408: the server gave up waiting for us.
        Some(408 | 412 | 429) => ErrorClass::Transient,
        Some(500..=599) => ErrorClass::Transient,
        Some(_) => ErrorClass::Permanent,
    }
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP-date (RFC 9110 §10.2.3). A date in
/// the past gives zero; anything else gives `None`.
/// The longest wait a `Retry-After` can ask for; longer values (up to `u64::MAX` seconds, or
/// an HTTP-date in the year 9999) are read as this. Callers add the wait to `Instant::now()`,
/// which panics on overflow, and convert it to epoch milliseconds.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

#[must_use]
pub fn parse_retry_after(raw: &str, now: SystemTime) -> Option<Duration> {
    let raw = raw.trim();
    if raw.is_empty() {
        return None;
    }
    if raw.bytes().all(|b| b.is_ascii_digit()) {
        // Very long digit strings saturate instead of failing: "wait a very long time".
        let seconds = raw.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER));
    }
    let at = httpdate::parse_http_date(raw).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

/// Why no usable HTTP answer arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    Connect,
    Timeout,
    /// The connection broke while sending or reading.
    Other,
}

/// Clone: one call's error can be the answer of several callers (delivery's merged look-ups).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ScimError {
    /// The target answered with a non-success status.
    #[error("{method} {path}: HTTP {status}{}{}", scim_type.as_deref().map(|t| format!(" ({t})")).unwrap_or_default(), if detail.is_empty() { String::new() } else { format!(": {detail}") })]
    Http {
        method: String,
        path: String,
        status: u16,
        scim_type: Option<String>,
        /// At most [`DETAIL_MAX`] characters of the server's `detail` (or of a non-SCIM body).
        detail: String,
        retry_after: Option<Duration>,
    },
    /// No HTTP answer: connection refused, DNS failure, timeout, reset.
    #[error("{method} {path}: {message}")]
    Transport {
        method: String,
        path: String,
        kind: TransportKind,
        message: String,
    },
    /// The answer could not be used: too large, not JSON, wrong content type, missing `id`.
    #[error("{method} {path}: bad response (HTTP {status}): {reason}")]
    BadResponse {
        method: String,
        path: String,
        status: u16,
        reason: String,
    },
    /// A filtered listing ended before it held what its own `totalResults` counts, or came
    /// round to its first page again: it proves nothing absent. Transient: a listing that
    /// shifted under its pages may read whole the next time.
    #[error("{method} {path}: incomplete answer: {reason}")]
    IncompleteListing {
        method: String,
        path: String,
        reason: String,
    },
    /// The SSRF guard refused the target's address.
    #[error("{method} {path}: address refused: {reason}")]
    AddressRefused {
        method: String,
        path: String,
        reason: String,
    },
    /// The caller asked for something that cannot be expressed (bad attribute name, …).
    #[error("invalid request: {0}")]
    InvalidInput(String),
    /// The target lacks a capability the operation needs and no fallback exists.
    #[error("unsupported by the target: {0}")]
    Unsupported(String),
    /// The client configuration is unusable (bad base URL, TLS setup).
    #[error("client configuration: {0}")]
    Config(String),
}

/// Longest `detail` kept from a server answer.
pub const DETAIL_MAX: usize = 300;

impl ScimError {
    /// The HTTP status, if the target answered.
    #[must_use]
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Http { status, .. } | Self::BadResponse { status, .. } => Some(*status),
            _ => None,
        }
    }

    #[must_use]
    pub fn scim_type(&self) -> Option<&str> {
        match self {
            Self::Http { scim_type, .. } => scim_type.as_deref(),
            _ => None,
        }
    }

    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    #[must_use]
    pub fn class(&self) -> ErrorClass {
        match self {
            // A version mismatch some targets answer with 400 (RFC 7644 §3.12): like 412.
            Self::Http { .. } if self.is_version_mismatch() => ErrorClass::Transient,
            Self::Http { status, .. } => classify(Some(*status)),
            Self::Transport { .. } => classify(None),
            // A body cut short by a 5xx is still a 5xx; a bad 2xx body will not improve.
            Self::BadResponse { status, .. } if *status >= 500 => ErrorClass::Transient,
            Self::IncompleteListing { .. } => ErrorClass::Transient,
            Self::BadResponse { .. }
            | Self::AddressRefused { .. }
            | Self::InvalidInput(_)
            | Self::Unsupported(_)
            | Self::Config(_) => ErrorClass::Permanent,
        }
    }

    /// The target refused the version sent in `If-Match`: 412, or `scimType: invalidVers`.
    #[must_use]
    pub fn is_version_mismatch(&self) -> bool {
        matches!(self, Self::Http { status: 412, .. })
            || self
                .scim_type()
                .is_some_and(|t| t.eq_ignore_ascii_case("invalidVers"))
    }

    /// The target refused to read the request's values from the URL (`scimType: sensitive`,
    /// RFC 7644 §3.12): the query is to be sent again as `POST …/.search`.
    #[must_use]
    pub fn is_sensitive(&self) -> bool {
        self.scim_type()
            .is_some_and(|t| t.eq_ignore_ascii_case("sensitive"))
    }

    #[must_use]
    pub fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }

    #[must_use]
    pub fn is_conflict(&self) -> bool {
        self.class() == ErrorClass::Conflict
    }

    #[must_use]
    pub fn is_not_found(&self) -> bool {
        self.class() == ErrorClass::NotFound
    }

    #[must_use]
    pub fn is_auth(&self) -> bool {
        self.class() == ErrorClass::Auth
    }
}

/// Keeps at most `max` characters, on a char boundary, with control characters replaced so a
/// hostile server cannot forge log lines.
#[must_use]
pub(crate) fn truncate_detail(raw: &str, max: usize) -> String {
    let mut out: String = raw
        .chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if raw.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// The parts of an RFC 7644 §3.12 error body we use. Lenient: `status` may be a string or a
/// number, and every field may be missing.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ErrorBody {
    pub scim_type: Option<String>,
    pub detail: Option<String>,
}

pub(crate) fn parse_error_body(body: &[u8]) -> ErrorBody {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return ErrorBody {
            scim_type: None,
            detail: std::str::from_utf8(body)
                .ok()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| truncate_detail(s, DETAIL_MAX)),
        };
    };
    let text = |key: &str| {
        value
            .as_object()
            .and_then(|o| super::filter::get_ci(o, key))
            .and_then(serde_json::Value::as_str)
            .map(|s| truncate_detail(s, DETAIL_MAX))
    };
    ErrorBody {
        scim_type: text("scimType"),
        detail: text("detail"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_the_table() {
        use ErrorClass as C;
        for (status, want) in [
            (None, C::Transient),
            (Some(429), C::Transient),
            (Some(500), C::Transient),
            (Some(502), C::Transient),
            (Some(503), C::Transient),
            (Some(408), C::Transient),
            (Some(412), C::Transient),
            (Some(409), C::Conflict),
            (Some(401), C::Auth),
            (Some(403), C::Auth),
            (Some(404), C::NotFound),
            (Some(400), C::Permanent),
            (Some(413), C::Permanent),
            (Some(415), C::Permanent),
            (Some(422), C::Permanent),
        ] {
            assert_eq!(classify(status), want, "status {status:?}");
        }
    }

    #[test]
    fn error_variants_classify_by_their_cause() {
        let bad_body = ScimError::BadResponse {
            method: "GET".into(),
            path: "/Users".into(),
            status: 200,
            reason: "not JSON".into(),
        };
        assert_eq!(bad_body.class(), ErrorClass::Permanent);
        let timeout = ScimError::Transport {
            method: "GET".into(),
            path: "/Users".into(),
            kind: TransportKind::Timeout,
            message: "timed out".into(),
        };
        assert!(timeout.is_transient());
    }

    #[test]
    fn retry_after_parses_seconds_dates_and_rejects_garbage() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_784_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(90))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        // Hostile values are capped, not trusted: the engine adds them to `Instant::now()`.
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            parse_retry_after("18446744073709551615", now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now),
            Some(MAX_RETRY_AFTER)
        );
        for garbage in ["", "soon", "-5", "1.5", "7s", "Mon, 99 Foo 2026"] {
            assert_eq!(parse_retry_after(garbage, now), None, "{garbage:?}");
        }
    }

    #[test]
    fn error_bodies_parse_with_string_or_number_status() {
        let body = br#"{"schemas":["urn:ietf:params:scim:api:messages:2.0:Error"],"status":"409","scimType":"uniqueness","detail":"taken"}"#;
        assert_eq!(
            parse_error_body(body),
            ErrorBody {
                scim_type: Some("uniqueness".into()),
                detail: Some("taken".into())
            }
        );
        let body = br#"{"status":404,"detail":"nope"}"#;
        assert_eq!(parse_error_body(body).detail.as_deref(), Some("nope"));
        assert_eq!(parse_error_body(b"<html>oops</html>").scim_type, None);
        assert_eq!(parse_error_body(b"\xff\xfe").detail, None);
        let long = "x".repeat(5000);
        let parsed = parse_error_body(long.as_bytes());
        assert!(parsed.detail.unwrap().chars().count() <= DETAIL_MAX + 1);
    }

    #[test]
    fn scim_type_drives_the_class_of_an_answer() {
        let answer = |status, scim_type: &str| ScimError::Http {
            method: "PATCH".into(),
            path: "/Users/1".into(),
            status,
            scim_type: Some(scim_type.into()),
            detail: String::new(),
            retry_after: None,
        };
        assert_eq!(answer(400, "invalidVers").class(), ErrorClass::Transient);
        assert!(answer(400, "INVALIDVERS").is_version_mismatch());
        assert!(answer(412, "").is_version_mismatch());
        assert_eq!(answer(400, "invalidValue").class(), ErrorClass::Permanent);
        assert!(!answer(400, "invalidValue").is_version_mismatch());
        assert!(answer(403, "sensitive").is_sensitive());
        assert!(!answer(403, "").is_sensitive());
        let body = br#"{"SCIMTYPE":"invalidVers","Detail":"stale"}"#;
        assert_eq!(
            parse_error_body(body),
            ErrorBody {
                scim_type: Some("invalidVers".into()),
                detail: Some("stale".into())
            },
            "names are read ignoring case"
        );
    }

    #[test]
    fn details_lose_control_characters() {
        assert_eq!(truncate_detail("a\nb\rc", 10), "a b c");
        assert_eq!(truncate_detail("abcdef", 3), "abc…");
    }
}
