//! Figma's SCIM rules (Organization and Enterprise plans), each citing its page.
use poem::http::Method;
use serde_json::{Map, Value};

use super::{Seen, Verdict};
use crate::dev_target::filter;
use crate::dev_target::store::Refusal;

/// The attributes Figma limits, per collection: (attribute, most characters, must be an email).
/// Users: "userName … The user's email … limited to 100 characters or less"; "displayName …
/// limited to 100 characters or less"; "externalId … limited to 255 characters or less".
/// Groups: "displayName … limited to 255 characters or less"; "externalId … limited to 255
/// characters or less": https://developers.figma.com/docs/rest-api/scim-supported-schemas.
fn limits(collection: &str) -> &'static [(&'static str, usize, bool)] {
    match collection {
        "Users" => &[
            ("userName", 100, true),
            ("displayName", 100, false),
            ("externalId", 255, false),
        ],
        "Groups" => &[("displayName", 255, false), ("externalId", 255, false)],
        _ => &[],
    }
}

/// Figma documents the limits, not the answer to a value beyond one: a 400 `invalidValue`
/// is assumed (RFC 7644 §3.12).
fn invalid(detail: String) -> Verdict {
    Verdict::Refuse(Refusal::new(400, Some("invalidValue"), detail))
}

/// Whether `text` reads as an email address: one `@` between a non-empty local part and a
/// dotted domain, no spaces.
fn is_email(text: &str) -> bool {
    let mut parts = text.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !text.chars().any(char::is_whitespace)
}

/// The refusal of `value` for `attr`, if Figma refuses it.
fn check_value(collection: &str, attr: &str, value: &Value) -> Option<Verdict> {
    let (name, most, email) = limits(collection)
        .iter()
        .find(|(name, _, _)| name.eq_ignore_ascii_case(attr))?;
    let text = match value {
        Value::String(text) => text.as_str(),
        Value::Null => return None,
        other => return Some(invalid(format!("{name} must be a string, not {other}"))),
    };
    if *email && !is_email(text) {
        return Some(invalid(format!("{name} must be the user's email")));
    }
    let chars = text.chars().count();
    (chars > *most).then(|| {
        invalid(format!(
            "{name} is limited to {most} characters or less ({chars} given)"
        ))
    })
}

/// The refusal of the first limited attribute of `object` Figma refuses.
fn check_object(collection: &str, object: &Map<String, Value>) -> Option<Verdict> {
    object
        .iter()
        .find_map(|(key, value)| check_value(collection, key, value))
}

/// A PATCH path as the attribute it names: `userName`, or the core schema's URN then `:userName`.
fn plain_path(path: &str) -> &str {
    path.rsplit_once(':').map_or(path, |(_, attr)| attr)
}

pub(super) fn check(seen: &Seen<'_>) -> Verdict {
    let collection = seen.segments.first().copied().unwrap_or("");
    let Some(body) = seen.body.and_then(Value::as_object) else {
        return Verdict::Serve;
    };
    let refusal = match *seen.method {
        Method::POST if seen.segments.len() == 1 => check_object(collection, body),
        Method::PUT if seen.segments.len() == 2 => check_object(collection, body),
        Method::PATCH if seen.segments.len() == 2 => filter::get_ci(body, "Operations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_object)
            .filter(|op| {
                filter::get_ci(op, "op")
                    .and_then(Value::as_str)
                    .is_some_and(|o| !o.eq_ignore_ascii_case("remove"))
            })
            .find_map(|op| {
                let value = filter::get_ci(op, "value")?;
                match filter::get_ci(op, "path").and_then(Value::as_str) {
                    Some(path) => check_value(collection, plain_path(path), value),
                    None => value
                        .as_object()
                        .and_then(|object| check_object(collection, object)),
                }
            }),
        _ => None,
    };
    refusal.unwrap_or(Verdict::Serve)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use serde_json::json;

    fn figma(method: Method, segments: &[&str], body: Value) -> Verdict {
        check(&Seen {
            method: &method,
            segments,
            query: &BTreeMap::new(),
            body: Some(&body),
            body_bytes: 0,
            user_agent: Some("roster"),
        })
    }

    fn refused(verdict: &Verdict, words: &str) -> bool {
        matches!(verdict, Verdict::Refuse(r) if r.status == 400 && r.detail.contains(words))
    }

    #[test]
    fn figma_takes_an_email_of_at_most_100_characters_as_user_name() {
        let user = |name: &str| json!({"userName": name, "displayName": "Ada"});
        assert!(matches!(
            figma(Method::POST, &["Users"], user("ada@example.com")),
            Verdict::Serve
        ));
        assert!(refused(
            &figma(Method::POST, &["Users"], user("ada")),
            "email"
        ));
        let long = format!("{}@example.com", "a".repeat(88));
        assert_eq!(long.chars().count(), 100);
        assert!(matches!(
            figma(Method::PUT, &["Users", "u"], user(&long)),
            Verdict::Serve
        ));
        let longer = format!("a{long}");
        assert!(refused(
            &figma(Method::PUT, &["Users", "u"], user(&longer)),
            "100 characters"
        ));
        let rename = |path: &str, value: &str| json!({"Operations": [{"op": "replace", "path": path, "value": value}]});
        assert!(refused(
            &figma(Method::PATCH, &["Users", "u"], rename("userName", "ada")),
            "email"
        ));
        assert!(refused(
            &figma(
                Method::PATCH,
                &["Users", "u"],
                rename("urn:ietf:params:scim:schemas:core:2.0:User:userName", "ada")
            ),
            "email"
        ));
        let pathless = json!({"Operations": [{"op": "replace", "value": {"userName": "ada"}}]});
        assert!(refused(
            &figma(Method::PATCH, &["Users", "u"], pathless),
            "email"
        ));
        assert!(matches!(
            figma(
                Method::PATCH,
                &["Users", "u"],
                rename("userName", "ada@example.org")
            ),
            Verdict::Serve
        ));
    }

    #[test]
    fn figma_deactivation_leaves_groups_where_rfc_keeps_them() {
        assert!(crate::dev_target::Profile::Figma.deactivation_leaves_groups());
        assert!(!crate::dev_target::Profile::Rfc.deactivation_leaves_groups());
    }

    #[test]
    fn figma_limits_display_names_and_external_ids() {
        let mut user = json!({"userName": "ada@example.com", "displayName": "a".repeat(100),
            "externalId": "e".repeat(255)});
        assert!(matches!(
            figma(Method::POST, &["Users"], user.clone()),
            Verdict::Serve
        ));
        user["displayName"] = json!("a".repeat(101));
        assert!(refused(
            &figma(Method::POST, &["Users"], user.clone()),
            "displayName is limited to 100"
        ));
        user["displayName"] = json!("Ada");
        user["externalId"] = json!("e".repeat(256));
        assert!(refused(
            &figma(Method::POST, &["Users"], user),
            "externalId is limited to 255"
        ));
        // A group's displayName may be longer than a user's, up to 255.
        let group = |name: String| json!({"displayName": name});
        assert!(matches!(
            figma(Method::POST, &["Groups"], group("g".repeat(255))),
            Verdict::Serve
        ));
        assert!(refused(
            &figma(Method::POST, &["Groups"], group("g".repeat(256))),
            "displayName is limited to 255"
        ));
        let rename = json!({"Operations": [{"op": "replace", "path": "displayName",
            "value": "g".repeat(256)}]});
        assert!(refused(
            &figma(Method::PATCH, &["Groups", "g"], rename),
            "255"
        ));
        let members = json!({"Operations": [{"op": "add", "path": "members",
            "value": [{"value": "u"}]}]});
        assert!(matches!(
            figma(Method::PATCH, &["Groups", "g"], members),
            Verdict::Serve
        ));
    }
}
