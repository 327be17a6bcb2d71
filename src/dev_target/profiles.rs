//! `--profile NAME`: the dev-target behaves as a catalogue connector's vendor documents it,
//! refusing what the vendor refuses (with a SCIM error) and answering as the vendor answers.
//! Every rule names its source. `rfc`, the default, adds nothing to the strict RFC 7644 server.
//!
//! A profile emulates only the rules listed here; a vendor's other deviations are not
//! emulated (see the connector's file in `connectors/` for everything it documents).
use std::collections::BTreeMap;

use poem::http::Method;
use scim_v2::filter::{AttrExp, CompareOp, Filter};
use serde_json::Value;

use super::filter;
use super::store::Refusal;

/// Which vendor the dev-target emulates.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// Strict RFC 7644.
    #[default]
    Rfc,
    /// GitHub Enterprise Managed Users.
    GithubEmu,
    /// Salesforce.
    Salesforce,
    /// Zoom.
    Zoom,
    /// Snowflake before behaviour change bundle 2026_03.
    Snowflake,
}

/// What the profile makes of a request before the RFC server sees it.
#[derive(Debug)]
pub enum Verdict {
    /// Served as RFC 7644 says.
    Serve,
    /// Refused as the vendor refuses it.
    Refuse(Refusal),
    /// Answered 200 with an empty list, as the vendor answers it.
    EmptyList,
}

/// A request as the profile rules see it.
pub struct Seen<'a> {
    pub method: &'a Method,
    pub segments: &'a [&'a str],
    pub query: &'a BTreeMap<String, String>,
    pub body: Option<&'a Value>,
    pub user_agent: Option<&'a str>,
}

impl Profile {
    /// The segment the service provider configuration is served at.
    #[must_use]
    pub fn discovery_segment(self) -> &'static str {
        match self {
            // Salesforce: "Discovery is /ServiceProviderConfigs (plural)".
            // https://help.salesforce.com/s/articleView?id=xcloud.identity_scim_rest_api.htm
            Profile::Salesforce => "ServiceProviderConfigs",
            _ => "ServiceProviderConfig",
        }
    }

    #[must_use]
    pub fn check(self, seen: &Seen<'_>) -> Verdict {
        if seen.segments == ["ServiceProviderConfig"]
            && self.discovery_segment() != seen.segments[0]
        {
            return Verdict::Refuse(Refusal::new(404, None, "no such endpoint"));
        }
        let on_users = seen.segments.first() == Some(&"Users");
        let patch_ops = || -> Vec<&serde_json::Map<String, Value>> {
            seen.body
                .and_then(|b| filter::get_ci(b.as_object()?, "Operations"))
                .and_then(Value::as_array)
                .map(|ops| ops.iter().filter_map(Value::as_object).collect())
                .unwrap_or_default()
        };
        let path_of = |op: &serde_json::Map<String, Value>| {
            filter::get_ci(op, "path")
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let filter_text = seen.query.get("filter").map(String::as_str);
        match self {
            Profile::Rfc | Profile::Salesforce => Verdict::Serve,
            Profile::GithubEmu => {
                // "A User-Agent header is required; requests without it are rejected."
                // https://docs.github.com/en/enterprise-cloud@latest/admin/managing-iam/provisioning-user-accounts-with-scim/provisioning-users-and-groups-with-scim-using-the-rest-api
                if seen.user_agent.is_none_or(str::is_empty) {
                    return Verdict::Refuse(Refusal::new(
                        400,
                        None,
                        "a User-Agent header is required",
                    ));
                }
                // "Complicated SCIM path selectors that include filters are not supported."
                // https://tryapis.com/github/api/scim-update-attribute-for-user
                if *seen.method == Method::PATCH
                    && patch_ops()
                        .iter()
                        .any(|op| path_of(op).is_some_and(|p| p.contains('[')))
                {
                    return Verdict::Refuse(Refusal::new(
                        400,
                        Some("invalidPath"),
                        "PATCH paths containing filters are not supported",
                    ));
                }
                // "Multiple filters are not supported": one comparison per filter.
                // https://docs.github.com/en/enterprise-cloud@latest/admin/managing-iam/provisioning-user-accounts-with-scim/provisioning-users-and-groups-with-scim-using-the-rest-api
                if let Some(text) = filter_text
                    && !single_comparison(text, &[CompareOp::Eq])
                {
                    return Verdict::Refuse(Refusal::new(
                        400,
                        Some("invalidFilter"),
                        "multiple filters are not supported",
                    ));
                }
                Verdict::Serve
            }
            Profile::Zoom => {
                // "PATCH /Users is documented as activate/deactivate (active); PUT updates."
                // Zoom does not document the status of other PATCHes; 400 is assumed.
                // https://developers.zoom.us/docs/api/scim2/
                let only_active = |op: &&serde_json::Map<String, Value>| match path_of(op) {
                    Some(path) => path.eq_ignore_ascii_case("active"),
                    None => filter::get_ci(op, "value")
                        .and_then(Value::as_object)
                        .is_some_and(|v| {
                            !v.is_empty() && v.keys().all(|k| k.eq_ignore_ascii_case("active"))
                        }),
                };
                if *seen.method == Method::PATCH && on_users && !patch_ops().iter().all(only_active)
                {
                    return Verdict::Refuse(Refusal::new(
                        400,
                        Some("invalidValue"),
                        "PATCH /Users only activates or deactivates; update with PUT",
                    ));
                }
                Verdict::Serve
            }
            Profile::Snowflake => {
                // Before BCR bundle 2026_03: "only single eq/sw filters work; unsupported
                // filters (and/or, malformed) silently return 200 with empty Resources".
                // https://docs.snowflake.com/release-notes/bcr-bundles/2026_03/bcr-2276
                if let Some(text) = filter_text
                    && !single_comparison(text, &[CompareOp::Eq, CompareOp::Sw])
                {
                    return Verdict::EmptyList;
                }
                Verdict::Serve
            }
        }
    }
}

/// Whether `text` is one comparison with one of `ops` (no `and`, `or`, `not` or value filter).
fn single_comparison(text: &str, ops: &[CompareOp]) -> bool {
    match filter::parse(text) {
        Ok(Filter::Attr(AttrExp::Comparison(_, op, _))) => ops.contains(&op),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn verdict(
        profile: Profile,
        method: Method,
        segments: &[&str],
        filter: Option<&str>,
        body: Option<Value>,
    ) -> Verdict {
        let query: BTreeMap<String, String> = filter
            .map(|f| BTreeMap::from([("filter".to_owned(), f.to_owned())]))
            .unwrap_or_default();
        profile.check(&Seen {
            method: &method,
            segments,
            query: &query,
            body: body.as_ref(),
            user_agent: Some("roster"),
        })
    }

    #[test]
    fn profiles_refuse_what_their_vendor_refuses() {
        let or = Some(r#"userName eq "a" or userName eq "b""#);
        let one = Some(r#"userName eq "a""#);
        assert!(matches!(
            verdict(Profile::Rfc, Method::GET, &["Users"], or, None),
            Verdict::Serve
        ));
        assert!(
            matches!(verdict(Profile::GithubEmu, Method::GET, &["Users"], or, None), Verdict::Refuse(r) if r.status == 400)
        );
        assert!(matches!(
            verdict(Profile::GithubEmu, Method::GET, &["Users"], one, None),
            Verdict::Serve
        ));
        assert!(matches!(
            verdict(Profile::Snowflake, Method::GET, &["Users"], or, None),
            Verdict::EmptyList
        ));
        assert!(matches!(
            verdict(Profile::Snowflake, Method::GET, &["Users"], one, None),
            Verdict::Serve
        ));
        let filtered_remove =
            json!({"Operations": [{"op": "remove", "path": "members[value eq \"x\"]"}]});
        assert!(
            matches!(verdict(Profile::GithubEmu, Method::PATCH, &["Groups", "g"], None, Some(filtered_remove)), Verdict::Refuse(r) if r.status == 400)
        );
        let title = json!({"Operations": [{"op": "replace", "path": "title", "value": "x"}]});
        let active = json!({"Operations": [{"op": "replace", "value": {"active": false}}]});
        assert!(matches!(
            verdict(
                Profile::Zoom,
                Method::PATCH,
                &["Users", "u"],
                None,
                Some(title)
            ),
            Verdict::Refuse(_)
        ));
        assert!(matches!(
            verdict(
                Profile::Zoom,
                Method::PATCH,
                &["Users", "u"],
                None,
                Some(active)
            ),
            Verdict::Serve
        ));
        assert!(
            matches!(verdict(Profile::Salesforce, Method::GET, &["ServiceProviderConfig"], None, None), Verdict::Refuse(r) if r.status == 404)
        );
        assert_eq!(
            Profile::Salesforce.discovery_segment(),
            "ServiceProviderConfigs"
        );
    }
}
