//! Asana's SCIM rules, each citing its page.
use poem::http::Method;
use scim_v2::filter::{AttrExp, CompareOp, Filter};
use serde_json::Value;

use super::{Seen, Verdict};
use crate::dev_target::filter;
use crate::dev_target::store::Refusal;

/// "GET /Users … the only query parameter is a filter on userName": any other parameter, or a
/// filter on anything but `userName eq "…"`, is refused. Asana does not document the status;
/// 400 (`invalidValue`, `invalidFilter`) is assumed: https://developers.asana.com/docs/scim.
pub(super) fn check(seen: &Seen<'_>) -> Verdict {
    // "PUT or PATCH with active=false, and DELETE, all deprovision ("zombify") the user": the
    // account stays, inactive: https://developers.asana.com/docs/scim.
    if seen.on_user() && *seen.method == Method::DELETE {
        return Verdict::Deactivate;
    }
    if *seen.method != Method::GET || seen.segments != ["Users"] {
        return Verdict::Serve;
    }
    if let Some(other) = seen.query.keys().find(|k| k.as_str() != "filter") {
        return Verdict::Refuse(Refusal::new(
            400,
            Some("invalidValue"),
            format!("GET /Users takes no `{other}`: its only parameter is a filter on userName"),
        ));
    }
    if let Some(text) = seen.query.get("filter")
        && !user_name_eq(text)
    {
        return Verdict::Refuse(Refusal::new(
            400,
            Some("invalidFilter"),
            format!("unsupported filter `{text}`: only userName eq \"…\""),
        ));
    }
    Verdict::Serve
}

/// Whether `text` is one `userName eq "…"` comparison.
fn user_name_eq(text: &str) -> bool {
    matches!(filter::parse(text),
        Ok(Filter::Attr(AttrExp::Comparison(path, CompareOp::Eq, _)))
            if path.sub_attr.is_none() && path.name.eq_ignore_ascii_case("userName"))
}

/// "GET /Users returns the whole domain except guests": an account whose userName is at one of
/// `guest_domains` (the dev-target's `--guest-domain`) plays a guest, and is left out of every
/// listing of /Users; read by its id it is served: https://developers.asana.com/docs/scim.
pub(super) fn is_guest(resource: &Value, guest_domains: &[String]) -> bool {
    resource
        .as_object()
        .and_then(|r| filter::get_ci(r, "userName"))
        .and_then(Value::as_str)
        .and_then(|name| name.rsplit_once('@'))
        .is_some_and(|(_, domain)| guest_domains.iter().any(|g| g.eq_ignore_ascii_case(domain)))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::dev_target::Profile;
    use serde_json::json;

    fn list(query: &[(&str, &str)]) -> Verdict {
        let query: BTreeMap<String, String> = query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        check(&Seen {
            method: &Method::GET,
            segments: &["Users"],
            query: &query,
            body: None,
            body_bytes: 0,
            user_agent: Some("roster"),
        })
    }

    fn refused(verdict: &Verdict, words: &str) -> bool {
        matches!(verdict, Verdict::Refuse(r) if r.status == 400 && r.detail.contains(words))
    }

    #[test]
    fn asana_lists_users_with_no_parameter_but_a_user_name_filter() {
        assert!(matches!(list(&[]), Verdict::Serve));
        assert!(matches!(
            list(&[("filter", r#"userName eq "a@example.com""#)]),
            Verdict::Serve
        ));
        assert!(refused(&list(&[("startIndex", "1")]), "startIndex"));
        assert!(refused(&list(&[("count", "10")]), "count"));
        assert!(refused(
            &list(&[("filter", r#"externalId eq "e1""#)]),
            "unsupported filter"
        ));
        assert!(refused(
            &list(&[("filter", r#"userName eq "a" or userName eq "b""#)]),
            "unsupported filter"
        ));
        assert!(refused(
            &list(&[("filter", r#"userName sw "a""#)]),
            "unsupported filter"
        ));
        // Groups are not limited by that rule.
        let query = BTreeMap::from([("startIndex".to_owned(), "1".to_owned())]);
        assert!(matches!(
            check(&Seen {
                method: &Method::GET,
                segments: &["Groups"],
                query: &query,
                body: None,
                body_bytes: 0,
                user_agent: None,
            }),
            Verdict::Serve
        ));
    }

    #[test]
    fn asana_guests_are_accounts_at_a_guest_domain() {
        let guests = ["guests.example.com".to_owned()];
        assert!(is_guest(
            &json!({"userName": "g@Guests.Example.com"}),
            &guests
        ));
        assert!(!is_guest(&json!({"userName": "m@example.com"}), &guests));
        assert!(!is_guest(&json!({"userName": "g@guests.example.com"}), &[]));
        let guest = json!({"userName": "g@guests.example.com"});
        assert!(!Profile::Asana.lists("Users", &guest, &guests));
        assert!(Profile::Asana.lists("Groups", &guest, &guests));
        assert!(Profile::Rfc.lists("Users", &guest, &guests));
    }

    #[test]
    fn asana_delete_deprovisions_where_rfc_deletes() {
        let query = BTreeMap::new();
        let delete = |profile: Profile| {
            profile.check(&Seen {
                method: &Method::DELETE,
                segments: &["Users", "u1"],
                query: &query,
                body: None,
                body_bytes: 0,
                user_agent: None,
            })
        };
        assert!(matches!(delete(Profile::Asana), Verdict::Deactivate));
        assert!(matches!(delete(Profile::Rfc), Verdict::Serve));
    }
}
