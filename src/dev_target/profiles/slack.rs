//! Slack (Business+ and Enterprise Grid): the rules its SCIM documentation states.
use poem::http::Method;
use serde_json::Value;

use super::{Seen, VendorLimit, Verdict, filter};
use crate::dev_target::store::Refusal;

/// "`count` … maximum of 1000; larger values are treated as 1000", "defaults to 10":
/// https://api.slack.com/changelog/2019-06-have-scim-will-paginate.
pub const PAGE_SIZES: (usize, usize) = (10, 1000);

/// "Rate limits are org-wide across all SCIM apps": one set of buckets for every tenant of
/// the dev-target (the organisation). https://docs.slack.dev/reference/scim-api/rate-limits
pub const LIMITS: &[VendorLimit] = &[
    // "Writes (POST, PUT, PATCH, DELETE): 600 per minute, burst 180."
    VendorLimit {
        name: "writes",
        limit: 600,
        window_seconds: 60,
        burst: 180,
        counts: |seen| seen.on_resources() && seen.writes(),
    },
    // "Reads: 1000 per minute, burst 1000."
    VendorLimit {
        name: "reads",
        limit: 1000,
        window_seconds: 60,
        burst: 1000,
        counts: |seen| seen.on_resources() && !seen.writes(),
    },
    // "GET one user: 300 per minute" (no burst documented: the window's count).
    VendorLimit {
        name: "users-get-one",
        limit: 300,
        window_seconds: 60,
        burst: 300,
        counts: |seen| seen.on_user() && *seen.method == Method::GET,
    },
    // "POST, PUT/PATCH and DELETE on Users: 180 per minute each, burst 20."
    VendorLimit {
        name: "users-post",
        limit: 180,
        window_seconds: 60,
        burst: 20,
        counts: |seen| seen.segments == ["Users"] && *seen.method == Method::POST,
    },
    VendorLimit {
        name: "users-update",
        limit: 180,
        window_seconds: 60,
        burst: 20,
        counts: |seen| seen.on_user() && matches!(*seen.method, Method::PUT | Method::PATCH),
    },
    VendorLimit {
        name: "users-delete",
        limit: 180,
        window_seconds: 60,
        burst: 20,
        counts: |seen| seen.on_user() && *seen.method == Method::DELETE,
    },
];

pub fn check(seen: &Seen<'_>) -> Verdict {
    // "POST /Users needs userName plus at least one email":
    // https://docs.slack.dev/reference/scim-api. Slack's status for a missing one is not
    // documented; 400 is assumed.
    if seen.segments == ["Users"]
        && *seen.method == Method::POST
        && let Some(body) = seen.body.and_then(Value::as_object)
    {
        let user_name = filter::get_ci(body, "userName")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.trim().is_empty());
        let email = filter::get_ci(body, "emails")
            .and_then(Value::as_array)
            .is_some_and(|emails| {
                emails.iter().any(|e| {
                    e.as_object()
                        .and_then(|e| filter::get_ci(e, "value"))
                        .and_then(Value::as_str)
                        .is_some_and(|v| !v.trim().is_empty())
                })
            });
        if !user_name || !email {
            return Verdict::Refuse(Refusal::new(
                400,
                Some("invalidValue"),
                "a user needs a userName and at least one email",
            ));
        }
    }
    // "DELETE /Users deactivates the user"; "DELETE /Groups removes the group permanently"
    // (served as RFC 7644 says): https://docs.slack.dev/reference/scim-api.
    if seen.on_user() && *seen.method == Method::DELETE {
        return Verdict::Deactivate;
    }
    Verdict::Serve
}
