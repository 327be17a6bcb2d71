//! Miro: the rules its SCIM documentation states.
use poem::http::Method;
use serde_json::Value;

use super::{Seen, VendorLimit, Verdict, filter};
use crate::dev_target::store::Refusal;

/// "At most 8,000 members per group PATCH": https://developers.miro.com/reference/rate-limits.
pub const MAX_MEMBER_CHANGES: usize = 8000;
/// "… or a body over 800,000 bytes, gives 413": https://developers.miro.com/reference/rate-limits.
pub const MAX_GROUP_PATCH_BYTES: usize = 800_000;
/// A group PATCH whose body is larger is limited to 5 per 30 s, else 100:
/// https://developers.miro.com/reference/rate-limits.
pub const LARGE_GROUP_PATCH_BYTES: usize = 500;

fn group_patch(seen: &Seen<'_>) -> bool {
    seen.segments.len() == 2 && seen.segments[0] == "Groups" && *seen.method == Method::PATCH
}

/// Per 30 seconds, per operation (no burst documented: the window's count), for the whole
/// company: https://developers.miro.com/reference/rate-limits.
pub const LIMITS: &[VendorLimit] = &[
    VendorLimit {
        name: "users-list",
        limit: 200,
        window_seconds: 30,
        burst: 200,
        counts: |seen| seen.segments == ["Users"] && *seen.method == Method::GET,
    },
    VendorLimit {
        name: "users-get",
        limit: 200,
        window_seconds: 30,
        burst: 200,
        counts: |seen| seen.on_user() && *seen.method == Method::GET,
    },
    VendorLimit {
        name: "users-post",
        limit: 200,
        window_seconds: 30,
        burst: 200,
        counts: |seen| seen.segments == ["Users"] && *seen.method == Method::POST,
    },
    VendorLimit {
        name: "users-put",
        limit: 100,
        window_seconds: 30,
        burst: 100,
        counts: |seen| seen.on_user() && *seen.method == Method::PUT,
    },
    VendorLimit {
        name: "users-patch",
        limit: 100,
        window_seconds: 30,
        burst: 100,
        counts: |seen| seen.on_user() && *seen.method == Method::PATCH,
    },
    VendorLimit {
        name: "users-delete",
        limit: 20,
        window_seconds: 30,
        burst: 20,
        counts: |seen| seen.on_user() && *seen.method == Method::DELETE,
    },
    VendorLimit {
        name: "groups-list",
        limit: 5,
        window_seconds: 30,
        burst: 5,
        counts: |seen| seen.segments == ["Groups"] && *seen.method == Method::GET,
    },
    VendorLimit {
        name: "groups-get",
        limit: 20,
        window_seconds: 30,
        burst: 20,
        counts: |seen| {
            seen.segments.len() == 2 && seen.segments[0] == "Groups" && *seen.method == Method::GET
        },
    },
    // "PATCH 5 if the body is > 500 bytes, 100 if smaller."
    VendorLimit {
        name: "groups-patch-large",
        limit: 5,
        window_seconds: 30,
        burst: 5,
        counts: |seen| group_patch(seen) && seen.body_bytes > LARGE_GROUP_PATCH_BYTES,
    },
    VendorLimit {
        name: "groups-patch",
        limit: 100,
        window_seconds: 30,
        burst: 100,
        counts: |seen| group_patch(seen) && seen.body_bytes <= LARGE_GROUP_PATCH_BYTES,
    },
];

pub fn check(seen: &Seen<'_>) -> Verdict {
    if !group_patch(seen) {
        return Verdict::Serve;
    }
    // "At most 8,000 members per group PATCH. More than that, or a body over 800,000 bytes,
    // gives 413": https://developers.miro.com/reference/rate-limits.
    if seen.body_bytes > MAX_GROUP_PATCH_BYTES {
        return Verdict::Refuse(Refusal::new(
            413,
            None,
            format!(
                "a group PATCH body of {} bytes; at most {MAX_GROUP_PATCH_BYTES}",
                seen.body_bytes
            ),
        ));
    }
    let changes: usize = seen
        .body
        .and_then(Value::as_object)
        .and_then(|b| filter::get_ci(b, "Operations"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .map(member_changes)
        .sum();
    if changes > MAX_MEMBER_CHANGES {
        return Verdict::Refuse(Refusal::new(
            413,
            None,
            format!("{changes} member changes in one PATCH; at most {MAX_MEMBER_CHANGES}"),
        ));
    }
    Verdict::Serve
}

/// The members one PATCH operation adds, removes or replaces.
fn member_changes(op: &serde_json::Map<String, Value>) -> usize {
    let path = filter::get_ci(op, "path").and_then(Value::as_str);
    let value = filter::get_ci(op, "value");
    match path {
        Some(path) if path.to_ascii_lowercase().starts_with("members") => match value {
            Some(Value::Array(items)) => items.len(),
            _ => 1,
        },
        Some(_) => 0,
        None => value
            .and_then(Value::as_object)
            .and_then(|v| filter::get_ci(v, "members"))
            .and_then(Value::as_array)
            .map_or(0, Vec::len),
    }
}
