//! The dev-target's filter evaluation (RFC 7644 §3.4.2.2) over the `scim_v2` crate's parser.
//!
//! Shares no code with roster's client (`scim::filter`): the dev-target is the oracle nearly
//! every delivery and reconcile test checks against, so a bug made the same way on both sides
//! must not pass unnoticed.
use scim_v2::filter::{AttrExp, AttrPath, CompValue, CompareOp, Filter, ValFilter};
use serde_json::{Map, Value};

/// Parses a `filter=` expression; the error is the `detail` of a 400 `invalidFilter`.
pub fn parse(text: &str) -> Result<Filter, String> {
    text.parse::<Filter>()
        .map_err(|e| format!("invalid filter `{text}`: {e}"))
}

/// Looks up `key` ignoring ASCII case: SCIM attribute names are case-insensitive (RFC 7643 §2.1).
pub fn get_ci<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    object.get(key).or_else(|| {
        object
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

/// Whether a schema URN names an extension, whose attributes live in an object of their own
/// (RFC 7643 §3.3); the core schemas' URNs only qualify top-level attributes.
pub fn is_extension_urn(urn: &str) -> bool {
    urn.to_ascii_lowercase().contains(":extension:")
}

/// The object an attribute path is read from: the resource, or an extension's object.
fn base_of<'a>(resource: &'a Value, path: &AttrPath) -> Option<&'a Value> {
    match &path.uri {
        Some(uri) => {
            let object = resource.as_object()?;
            match get_ci(object, uri) {
                Some(extension) => Some(extension),
                None if is_extension_urn(uri) => None,
                None => Some(resource),
            }
        }
        None => Some(resource),
    }
}

/// Pushes `value`, or each element of it when it is multi-valued.
fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => out.extend(items.iter()),
        Value::Null => {}
        other => out.push(other),
    }
}

/// Every value an attribute path names, multi-valued attributes flattened (`emails.value` is
/// the value of every email).
fn resolve<'a>(resource: &'a Value, path: &AttrPath) -> Vec<&'a Value> {
    let Some(base) = base_of(resource, path) else {
        return Vec::new();
    };
    let mut top = Vec::new();
    if let Some(found) = base.as_object().and_then(|o| get_ci(o, &path.name)) {
        flatten(found, &mut top);
    }
    match &path.sub_attr {
        None => top,
        Some(sub) => {
            let mut out = Vec::new();
            for parent in top {
                if let Some(found) = parent.as_object().and_then(|o| get_ci(o, sub)) {
                    flatten(found, &mut out);
                }
            }
            out
        }
    }
}

/// RFC 7643's `caseExact: true` attributes among those the dev-target stores; every other
/// string compares ignoring case (`userName`, `emails.value`, `displayName`).
fn case_exact(path: &AttrPath) -> bool {
    let name = path.name.to_ascii_lowercase();
    let sub = path.sub_attr.as_deref().map(str::to_ascii_lowercase);
    matches!(
        (name.as_str(), sub.as_deref()),
        ("id" | "externalid", None) | ("meta", Some("version")) | ("members", Some("value"))
    )
}

/// RFC 7644: `pr` matches a non-empty value; an empty string, array or object is absent.
fn present(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(fields) => !fields.is_empty(),
        _ => true,
    }
}

fn compare_one(actual: &Value, op: &CompareOp, wanted: &CompValue, exact: bool) -> bool {
    use std::cmp::Ordering;
    let ordering: Ordering = match (actual, wanted) {
        (Value::String(a), CompValue::Str(b)) => {
            let (a, b) = if exact {
                (a.clone(), b.clone())
            } else {
                (a.to_lowercase(), b.to_lowercase())
            };
            match op {
                CompareOp::Co => return a.contains(&b),
                CompareOp::Sw => return a.starts_with(&b),
                CompareOp::Ew => return a.ends_with(&b),
                // ISO 8601 date-times in one zone order as text (RFC 7644 §3.4.2.2).
                _ => a.cmp(&b),
            }
        }
        (Value::Number(a), CompValue::Number(b)) => match (a.as_f64(), b.as_f64()) {
            (Some(a), Some(b)) => match a.partial_cmp(&b) {
                Some(o) => o,
                None => return false,
            },
            _ => return false,
        },
        (Value::Bool(a), CompValue::True) => a.cmp(&true),
        (Value::Bool(a), CompValue::False) => a.cmp(&false),
        (Value::Null, CompValue::Null) => Ordering::Equal,
        _ => return false,
    };
    match op {
        CompareOp::Eq => ordering == Ordering::Equal,
        CompareOp::Ne => ordering != Ordering::Equal,
        CompareOp::Gt => ordering == Ordering::Greater,
        CompareOp::Ge => ordering != Ordering::Less,
        CompareOp::Lt => ordering == Ordering::Less,
        CompareOp::Le => ordering != Ordering::Greater,
        // Substring operators on non-strings match nothing.
        CompareOp::Co | CompareOp::Sw | CompareOp::Ew => false,
    }
}

fn attr_matches(exp: &AttrExp, base: &Value) -> bool {
    match exp {
        AttrExp::Present(path) => resolve(base, path).into_iter().any(present),
        AttrExp::Comparison(path, op, wanted) => {
            let found = resolve(base, path);
            let exact = case_exact(path);
            match op {
                // `ne` holds when no value equals: an absent attribute is "not equal".
                CompareOp::Ne => !found
                    .iter()
                    .any(|v| compare_one(v, &CompareOp::Eq, wanted, exact)),
                // `eq null` is absence.
                CompareOp::Eq if *wanted == CompValue::Null => found.is_empty(),
                _ => found.iter().any(|v| compare_one(v, op, wanted, exact)),
            }
        }
    }
}

/// Whether `resource` matches `filter`.
pub fn matches(filter: &Filter, resource: &Value) -> bool {
    match filter {
        Filter::Attr(exp) => attr_matches(exp, resource),
        Filter::ValuePath(vp) => resolve(resource, &vp.attr)
            .into_iter()
            .any(|element| element_matches(&vp.filter, element)),
        Filter::Not(inner) => !matches(inner, resource),
        Filter::And(items) => items.iter().all(|f| matches(f, resource)),
        Filter::Or(items) => items.iter().any(|f| matches(f, resource)),
    }
}

/// Whether one element of a multi-valued attribute matches a value filter (`[type eq "work"]`),
/// its attribute names read inside the element.
pub fn element_matches(filter: &ValFilter, element: &Value) -> bool {
    match filter {
        ValFilter::Attr(exp) => attr_matches(exp, element),
        ValFilter::Not(inner) => !element_matches(inner, element),
        ValFilter::And(items) => items.iter().all(|f| element_matches(f, element)),
        ValFilter::Or(items) => items.iter().any(|f| element_matches(f, element)),
    }
}

/// Whether a path names the core User schema's `userName` (bare or URN-qualified).
fn is_user_name(path: &AttrPath) -> bool {
    path.name.eq_ignore_ascii_case("userName")
        && path.sub_attr.is_none()
        && path
            .uri
            .as_deref()
            .is_none_or(|u| u.eq_ignore_ascii_case(crate::scim::schemas::USER))
}

/// The values of `filter` if it is `userName eq "…"`, alone or several joined by `or`: the
/// matching look-ups delivery makes, answered from the userName index.
pub fn user_name_terms(filter: &Filter) -> Option<Vec<&str>> {
    fn term(f: &Filter) -> Option<&str> {
        match f {
            Filter::Attr(AttrExp::Comparison(path, CompareOp::Eq, CompValue::Str(name)))
                if is_user_name(path) =>
            {
                Some(name.as_str())
            }
            _ => None,
        }
    }
    match filter {
        Filter::Or(items) => items.iter().map(term).collect(),
        single => term(single).map(|n| vec![n]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user() -> Value {
        json!({
            "id": "2819c223",
            "externalId": "E-1",
            "userName": "Bjensen@Example.com",
            "title": "",
            "active": true,
            "name": {"givenName": "Barbara", "familyName": "Jensen"},
            "emails": [
                {"type": "work", "value": "bjensen@example.com", "primary": true},
                {"type": "home", "value": "babs@jensen.org"}
            ],
            "meta": {"lastModified": "2026-05-13T04:42:34Z", "version": "\"7\""},
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"employeeNumber": "701984"}
        })
    }

    fn check(text: &str) -> bool {
        matches(&parse(text).unwrap(), &user())
    }

    #[test]
    fn every_operator_reads_as_rfc_7644_says() {
        let cases = [
            (r#"userName eq "bjensen@example.com""#, true),
            (r#"USERNAME Eq "BJENSEN@example.COM""#, true),
            (r#"userName ne "bjensen@example.com""#, false),
            (r#"nickName ne "x""#, true),
            (r#"userName co "ensen@""#, true),
            (r#"userName sw "bj""#, true),
            (r#"userName sw "ex""#, false),
            (r#"userName ew ".COM""#, true),
            ("name.givenName pr", true),
            ("title pr", false),
            ("nickName pr", false),
            (r#"meta.lastModified gt "2026-05-13T00:00:00Z""#, true),
            (r#"meta.lastModified ge "2026-05-13T04:42:34Z""#, true),
            (r#"meta.lastModified lt "2026-05-13T04:42:34Z""#, false),
            (r#"meta.lastModified le "2026-05-13T04:42:34Z""#, true),
            ("active eq true", true),
            ("active eq false", false),
            (r#"externalId eq "e-1""#, false),
            (r#"externalId eq "E-1""#, true),
            (r#"id eq "2819C223""#, false),
            (r#"emails.value eq "BABS@jensen.org""#, true),
            (
                r#"emails[type eq "work" and value co "@example.com"]"#,
                true,
            ),
            (
                r#"emails[type eq "home" and value co "@example.com"]"#,
                false,
            ),
            (r#"emails[not (type eq "work")]"#, true),
            (r#"title pr or userName eq "bjensen@example.com""#, true),
            (r#"title pr and userName eq "bjensen@example.com""#, false),
            (r#"not (userName eq "bjensen@example.com")"#, false),
            (
                r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber eq "701984""#,
                true,
            ),
            (
                r#"urn:ietf:params:scim:schemas:core:2.0:User:userName sw "BJ""#,
                true,
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(check(text), expected, "{text}");
        }
    }

    #[test]
    fn malformed_filters_are_refused() {
        for text in [
            "userName",
            r#"userName eq"#,
            r#"userName xx "a""#,
            r#"(userName eq "a""#,
            r#"emails[type eq "work""#,
        ] {
            assert!(parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn only_user_name_equalities_take_the_index() {
        let f = parse(r#"userName eq "a" or userName eq "b""#).unwrap();
        assert_eq!(user_name_terms(&f), Some(vec!["a", "b"]));
        let f = parse(r#"userName eq "a" or title eq "b""#).unwrap();
        assert_eq!(user_name_terms(&f), None);
        let f = parse(r#"userName sw "a""#).unwrap();
        assert_eq!(user_name_terms(&f), None);
    }
}
