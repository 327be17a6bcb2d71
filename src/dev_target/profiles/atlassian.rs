//! Atlassian Cloud (Guard / Access user provisioning), as its documentation states it.
//!
//! Rules emulated, each citing its source:
//! - Users filter: a single `eq` on `userName` or `externalId`; Groups filter: a single `eq` on
//!   `displayName`; anything else is 400 `invalidFilter`.
//! - No sorting: `sortBy`/`sortOrder` are 400.
//! - At most 100 resources per page (startIndex paging); a larger `count` is cut to 100.
//! - A duplicate userName or group displayName is 409 `uniqueness`, whatever
//!   `--allow-duplicate-user-names` says.
//! - A group cannot be renamed: a PATCH or PUT giving a group another `displayName` is 400.
//!
//! DELETE of a user: Atlassian's two documentation versions disagree (older: DELETE only
//! deactivates; newer, via jira.js's API description: the user is unlinked and deactivated and
//! "the SCIM record is gone for good", later calls on that id answer 404). The emulation takes
//! the safer, newer reading, which is the RFC server's own DELETE (the record is removed and
//! every later call on its id is 404), so it needs no rule of its own; the connector
//! deprovisions with `active=false` for the same reason.
//! https://mrrefactoring.github.io/jira.js/api/functions/userProvisioning.deleteUser.html
//! https://docs.go-atlassian.io/atlassian-admin-cloud/scim/users
use poem::http::Method;
use scim_v2::filter::{AttrExp, CompValue, CompareOp, Filter};
use serde_json::Value;

use super::super::filter;
use super::super::store::Refusal;
use super::{Seen, Verdict};

/// "A list returns at most 100 users per page, paged by startIndex":
/// https://confluence.atlassian.com/cloudkb/how-to-fetch-all-users-via-user-provisioning-scim-api-1107633097.html
pub(super) const MAX_PAGE: usize = 100;

/// The filters Atlassian documents, per collection: "Users: a single eq on userName or
/// externalId. Groups: a single eq on displayName."
/// https://developer.atlassian.com/cloud/admin/user-provisioning/rest/intro/
fn filter_attributes(collection: &str) -> &'static [&'static str] {
    match collection {
        "Users" => &["userName", "externalId"],
        "Groups" => &["displayName"],
        _ => &[],
    }
}

/// The refusals of a request seen before the RFC server routes it.
pub(super) fn check(seen: &Seen<'_>) -> Verdict {
    let collection = seen.segments.first().copied().unwrap_or("");
    let listing = *seen.method == Method::GET
        && seen.segments.len() == 1
        && matches!(collection, "Users" | "Groups");
    if !listing {
        return Verdict::Serve;
    }
    // "No sorting": https://developer.atlassian.com/cloud/admin/user-provisioning/rest/intro/.
    // The answer to a sort is not documented; 400 is assumed, so a client that relies on
    // sorting is caught rather than served an unsorted page.
    for param in ["sortBy", "sortOrder"] {
        if seen.query.contains_key(param) {
            return Verdict::Refuse(Refusal::new(
                400,
                Some("invalidValue"),
                format!("{param} is not supported: the directory does not sort"),
            ));
        }
    }
    if let Some(text) = seen.query.get("filter").filter(|t| !t.trim().is_empty()) {
        let allowed = filter_attributes(collection);
        let single_eq = match filter::parse(text) {
            Ok(Filter::Attr(AttrExp::Comparison(path, CompareOp::Eq, CompValue::Str(_)))) => {
                path.uri.is_none()
                    && path.sub_attr.is_none()
                    && allowed.iter().any(|a| a.eq_ignore_ascii_case(&path.name))
            }
            _ => false,
        };
        if !single_eq {
            return Verdict::Refuse(Refusal::new(
                400,
                Some("invalidFilter"),
                format!(
                    "unsupported filter on /{collection}: only a single eq on {}",
                    allowed.join(" or ")
                ),
            ));
        }
    }
    Verdict::Serve
}

/// "Renaming is not supported: create a new group, move members, delete the old one."
/// https://developer.atlassian.com/cloud/admin/user-provisioning/rest/intro/ (Groups). The
/// status is not documented; 400 with scimType `mutability` (RFC 7644 §3.12) is assumed.
/// `current` is the stored group; `body` the PATCH (a PatchOp) or PUT (a Group) body.
pub(super) fn rename_refusal(method: &Method, current: &Value, body: &Value) -> Option<Refusal> {
    let name = current
        .as_object()
        .and_then(|g| filter::get_ci(g, "displayName"))
        .and_then(Value::as_str);
    let other = |value: Option<&Value>| value.and_then(Value::as_str) != name;
    let body = body.as_object()?;
    let renames = match *method {
        Method::PUT => other(filter::get_ci(body, "displayName")),
        Method::PATCH => filter::get_ci(body, "Operations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_object)
            .any(|op| {
                let verb = filter::get_ci(op, "op")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_ascii_lowercase();
                let value = filter::get_ci(op, "value");
                match filter::get_ci(op, "path").and_then(Value::as_str) {
                    Some(path) => {
                        let attribute = path.rsplit(':').next().unwrap_or(path);
                        attribute.eq_ignore_ascii_case("displayName")
                            && (verb == "remove" || other(value))
                    }
                    None => value
                        .and_then(Value::as_object)
                        .and_then(|v| filter::get_ci(v, "displayName"))
                        .is_some_and(|v| other(Some(v))),
                }
            }),
        _ => false,
    };
    renames.then(|| {
        Refusal::new(
            400,
            Some("mutability"),
            "renaming a group is not supported: create a new group, move its members and \
             delete the old one",
        )
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::super::Profile;
    use super::*;
    use crate::dev_target::store::{Kind, Store};

    fn listing(collection: &str, query: &[(&str, &str)]) -> Verdict {
        let query: BTreeMap<String, String> = query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Profile::Atlassian.check(&Seen {
            method: &Method::GET,
            segments: &[collection],
            query: &query,
            body: None,
            body_bytes: 0,
            user_agent: Some("roster"),
        })
    }

    fn refused(verdict: &Verdict, scim_type: &str) -> bool {
        matches!(verdict, Verdict::Refuse(r) if r.status == 400 && r.scim_type == Some(scim_type))
    }

    #[test]
    fn users_filter_on_one_eq_of_user_name_or_external_id() {
        for ok in [r#"userName eq "a@x""#, r#"externalId eq "E1""#, ""] {
            assert!(
                matches!(listing("Users", &[("filter", ok)]), Verdict::Serve),
                "{ok}"
            );
        }
        for bad in [
            r#"userName eq "a" or userName eq "b""#,
            r#"userName eq "a" and externalId eq "b""#,
            r#"emails.value eq "a@x""#,
            r#"displayName eq "A""#,
            r#"userName sw "a""#,
            r#"userName co "a""#,
            r#"userName pr"#,
            r#"name.familyName eq "a""#,
            "userName eq",
        ] {
            assert!(
                refused(&listing("Users", &[("filter", bad)]), "invalidFilter"),
                "{bad}"
            );
        }
        assert!(matches!(listing("Users", &[]), Verdict::Serve));
    }

    #[test]
    fn groups_filter_on_one_eq_of_display_name() {
        assert!(matches!(
            listing("Groups", &[("filter", r#"displayName eq "eng""#)]),
            Verdict::Serve
        ));
        for bad in [
            r#"externalId eq "g""#,
            r#"members.value eq "u""#,
            r#"displayName eq "a" or displayName eq "b""#,
            r#"id eq "g" and members eq "u""#,
        ] {
            assert!(
                refused(&listing("Groups", &[("filter", bad)]), "invalidFilter"),
                "{bad}"
            );
        }
        // The RFC profile serves the same filters.
        let query = BTreeMap::from([("filter".to_owned(), r#"externalId eq "g""#.to_owned())]);
        assert!(matches!(
            Profile::Rfc.check(&Seen {
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
    fn listings_are_not_sorted_and_pages_hold_at_most_100() {
        assert!(refused(
            &listing("Users", &[("sortBy", "userName")]),
            "invalidValue"
        ));
        assert!(refused(
            &listing("Groups", &[("sortOrder", "descending")]),
            "invalidValue"
        ));
        assert_eq!(Profile::Atlassian.max_page_size(), Some(100));
        assert_eq!(Profile::Rfc.max_page_size(), None);
    }

    #[test]
    fn duplicate_user_names_and_group_names_are_409_uniqueness() {
        assert!(Profile::Atlassian.rejects_duplicate_user_names());
        assert!(!Profile::Rfc.rejects_duplicate_user_names());
        // As the dev-target builds its store: duplicates asked for, the profile says no.
        let mut store = Store::new("http://t/scim/v2".to_owned())
            .allowing_duplicate_user_names(!Profile::Atlassian.rejects_duplicate_user_names());
        let user = json!({"schemas": [crate::scim::schemas::USER], "userName": "a@x"});
        store.create(Kind::User, user.clone()).expect("first");
        let taken = store
            .create(Kind::User, json!({"userName": "A@X"}))
            .expect_err("a duplicate userName");
        assert_eq!((taken.status, taken.scim_type), (409, Some("uniqueness")));
        store
            .create(Kind::Group, json!({"displayName": "eng"}))
            .expect("group");
        let taken = store
            .create(Kind::Group, json!({"displayName": "Eng"}))
            .expect_err("a duplicate displayName");
        assert_eq!((taken.status, taken.scim_type), (409, Some("uniqueness")));
    }

    #[test]
    fn a_group_is_never_renamed_but_its_members_change() {
        let group = json!({"id": "g", "displayName": "eng", "members": []});
        let patch =
            |ops: Value| json!({"schemas": [crate::scim::schemas::PATCH_OP], "Operations": ops});
        let refusal = |method: Method, body: Value| {
            Profile::Atlassian.group_write_refusal(&method, &group, &body)
        };
        for renaming in [
            patch(json!([{"op": "replace", "path": "displayName", "value": "eng-2"}])),
            patch(json!([{"op": "Replace", "path": "displayname", "value": "ENG"}])),
            patch(json!([{"op": "replace", "value": {"displayName": "eng-2"}}])),
            patch(json!([{"op": "add", "path":
                "urn:ietf:params:scim:schemas:core:2.0:Group:displayName", "value": "x"}])),
            patch(json!([{"op": "remove", "path": "displayName"}])),
        ] {
            let r = refusal(Method::PATCH, renaming.clone()).expect("refused");
            assert_eq!(
                (r.status, r.scim_type),
                (400, Some("mutability")),
                "{renaming}"
            );
            assert!(r.detail.contains("renaming a group is not supported"));
        }
        let put =
            |name: &str| json!({"schemas": [crate::scim::schemas::GROUP], "displayName": name});
        assert!(refusal(Method::PUT, put("other")).is_some());
        assert!(refusal(Method::PUT, put("eng")).is_none(), "same name");
        for fine in [
            patch(json!([{"op": "add", "path": "members", "value": [{"value": "u"}]}])),
            patch(json!([{"op": "replace", "path": "displayName", "value": "eng"}])),
            patch(json!([{"op": "replace", "value": {"externalId": "x"}}])),
        ] {
            assert!(refusal(Method::PATCH, fine.clone()).is_none(), "{fine}");
        }
        // RFC 7644 renames.
        assert!(
            Profile::Rfc
                .group_write_refusal(
                    &Method::PATCH,
                    &group,
                    &patch(json!([{"op": "replace", "path": "displayName", "value": "x"}]))
                )
                .is_none()
        );
    }
}
