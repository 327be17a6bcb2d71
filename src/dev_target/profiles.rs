//! `--profile NAME`: the dev-target behaves as a catalogue connector's vendor documents it,
//! refusing what the vendor refuses (with a SCIM error) and answering as the vendor answers.
//! Every rule names its source. `rfc`, the default, adds nothing to the strict RFC 7644 server.
//!
//! A profile emulates only the rules listed here; a vendor's other deviations are not
//! emulated (see the connector's file in `connectors/` for everything it documents).
use std::collections::BTreeMap;

use poem::http::Method;
use scim_v2::filter::{AttrExp, CompValue, CompareOp, Filter};
use serde_json::Value;

use super::filter;
use super::store::Refusal;

mod asana;
mod atlassian;
mod figma;
mod miro;
mod slack;

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
    /// AWS IAM Identity Center.
    AwsIdentityCenter,
    /// Atlassian Cloud (Guard user provisioning).
    Atlassian,
    /// Slack (Business+ and Enterprise Grid).
    Slack,
    /// Miro.
    Miro,
    /// Figma (Organization and Enterprise plans).
    Figma,
    /// Asana (Enterprise Domains); `--guest-domain` names the domains of its guests.
    Asana,
}

/// AWS answers what it does not support with 400 `ValidationException` ("This error also
/// occurs if the operation is unsupported"), e.g. ListUsers' error table: https://docs.aws.amazon.com/singlesignon/latest/developerguide/listusers.html.
fn aws_validation(detail: String) -> Verdict {
    Verdict::Refuse(Refusal::new(
        400,
        Some("invalidValue"),
        format!("ValidationException: {detail}"),
    ))
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
    /// Served as RFC 7644 says, with this `filter` instead of the one asked (the vendor's
    /// reading of a filter written its own way).
    ServeFilter(String),
    /// A DELETE of a user answered 204 after setting its `active` to false: the vendor's
    /// DELETE deactivates, and the account stays.
    Deactivate,
}

/// A request as the profile rules see it.
pub struct Seen<'a> {
    pub method: &'a Method,
    pub segments: &'a [&'a str],
    pub query: &'a BTreeMap<String, String>,
    pub body: Option<&'a Value>,
    pub user_agent: Option<&'a str>,
    /// The length of the request's body in bytes (0 without one).
    pub body_bytes: usize,
}

impl Seen<'_> {
    /// `/Users` or `/Groups`, or below them.
    fn on_resources(&self) -> bool {
        matches!(self.segments.first(), Some(&("Users" | "Groups")))
    }

    /// `/Users/{id}`.
    fn on_user(&self) -> bool {
        self.segments.len() == 2 && self.segments[0] == "Users"
    }

    /// A POST (but a search), PUT, PATCH or DELETE.
    fn writes(&self) -> bool {
        match *self.method {
            Method::POST => self.segments.last() != Some(&".search"),
            Method::PUT | Method::PATCH | Method::DELETE => true,
            _ => false,
        }
    }
}

/// One documented rate limit of a vendor: `limit` requests per `window_seconds`, `burst` at
/// once, of the requests `counts` selects. The dev-target keeps one bucket per limit for the
/// whole process, every tenant together (the vendor's organisation), and answers a request
/// beyond one with 429 and `Retry-After`.
#[derive(Debug, Clone, Copy)]
pub struct VendorLimit {
    /// Its name, for `--vendor-limit NAME=LIMIT/SECONDS[:BURST]`.
    pub name: &'static str,
    pub limit: u32,
    pub window_seconds: u32,
    pub burst: u32,
    pub counts: fn(&Seen<'_>) -> bool,
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

    /// Whether the vendor pages with RFC 9865 cursors (`cursor=`, `nextCursor`).
    #[must_use]
    pub fn cursor_paging(self) -> bool {
        // "cursor used to specify the next page for paginated calls … The first request made
        // with cursor must be empty … If the response includes a nextCursor field, its value
        // can be used as the cursor value to retrieve the next page": https://docs.aws.amazon.com/singlesignon/latest/developerguide/listusers.html.
        self == Profile::AwsIdentityCenter
    }

    /// The most resources the vendor returns in one page, whatever `count` asks for (and
    /// whatever `--max-page-size` says), if it documents one.
    #[must_use]
    pub fn max_page_size(self) -> Option<usize> {
        match self {
            Profile::Atlassian => Some(atlassian::MAX_PAGE),
            _ => None,
        }
    }

    /// A listing's page size without `count`, and the largest `count` served, if the vendor
    /// documents them (else the dev-target's `--max-page-size` for both).
    #[must_use]
    pub fn page_sizes(self) -> Option<(usize, usize)> {
        match self {
            Profile::Slack => Some(slack::PAGE_SIZES),
            _ => None,
        }
    }

    /// Whether the vendor documents a 409 for a duplicate userName, so the emulation keeps
    /// userNames unique even with `--allow-duplicate-user-names`.
    #[must_use]
    pub fn rejects_duplicate_user_names(self) -> bool {
        // "An existing user gives 409": https://developer.atlassian.com/cloud/admin/user-provisioning/rest/intro/.
        self == Profile::Atlassian
    }

    /// Why a PUT or PATCH (`body`) of the stored group `current` is refused, where the vendor
    /// refuses what it would change (a rename, for a vendor that cannot rename groups).
    #[must_use]
    pub fn group_write_refusal(
        self,
        method: &Method,
        current: &Value,
        body: &Value,
    ) -> Option<Refusal> {
        match self {
            Profile::Atlassian => atlassian::rename_refusal(method, current, body),
            _ => None,
        }
    }

    /// The vendor's documented rate limits, each overridden by a `NAME=LIMIT/SECONDS[:BURST]`
    /// of `overrides` with its name (a test lowers one to reach it with a few calls).
    pub fn rate_limits(self, overrides: &[String]) -> Result<Vec<VendorLimit>, String> {
        let documented: &[VendorLimit] = match self {
            Profile::Slack => slack::LIMITS,
            Profile::Miro => miro::LIMITS,
            _ => &[],
        };
        let mut limits = documented.to_vec();
        for text in overrides {
            let parsed = text.split_once('=').and_then(|(name, rate)| {
                let (rate, burst) = match rate.split_once(':') {
                    Some((rate, burst)) => (rate, Some(burst.trim().parse::<u32>().ok()?)),
                    None => (rate, None),
                };
                let (limit, seconds) = rate.split_once('/')?;
                let limit = limit.trim().parse::<u32>().ok()?;
                let seconds = seconds.trim().parse::<u32>().ok()?;
                (limit > 0 && seconds > 0 && burst != Some(0))
                    .then(|| (name.trim(), limit, seconds, burst.unwrap_or(limit)))
            });
            let Some((name, limit, seconds, burst)) = parsed else {
                return Err(format!(
                    "--vendor-limit {text}: expected NAME=LIMIT/SECONDS[:BURST], all above 0"
                ));
            };
            let Some(known) = limits.iter_mut().find(|l| l.name == name) else {
                let names: Vec<&str> = documented.iter().map(|l| l.name).collect();
                return Err(format!(
                    "--vendor-limit {text}: this profile's limits are [{}]",
                    names.join(", ")
                ));
            };
            known.limit = limit;
            known.window_seconds = seconds;
            known.burst = burst;
        }
        Ok(limits)
    }

    /// Changes a resource as the vendor answers it on a read (GET of one, or a listing).
    pub fn shape_read(self, collection: &str, resource: &mut Value) {
        // "GetGroup and ListGroups return an empty member list": https://docs.aws.amazon.com/singlesignon/latest/developerguide/listgroups.html.
        if self == Profile::AwsIdentityCenter
            && collection == "Groups"
            && let Some(object) = resource.as_object_mut()
        {
            object.retain(|key, _| !key.eq_ignore_ascii_case("members"));
            object.insert("members".to_owned(), Value::Array(Vec::new()));
        }
    }

    /// Whether a listing of `collection` shows `resource` (some vendors leave accounts out of
    /// their listings; read by id, those accounts are served).
    #[must_use]
    pub fn lists(self, collection: &str, resource: &Value, guest_domains: &[String]) -> bool {
        !(self == Profile::Asana
            && collection == "Users"
            && asana::is_guest(resource, guest_domains))
    }

    /// Whether a user set `active: false` (PUT or PATCH) leaves every group it was in.
    #[must_use]
    pub fn deactivation_leaves_groups(self) -> bool {
        // "active … Use this parameter to deactivate or reactivate users in Figma. Deactivated
        // users are removed from the organization": https://developers.figma.com/docs/rest-api/scim-supported-schemas.
        // The account itself stays readable, `active: false`: "This will delete the user from
        // Figma, but maintain a record in the SCIM provisioning log of the user. This means the
        // user will be listed": https://developers.figma.com/docs/rest-api/scim-examples.
        self == Profile::Figma
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
            Profile::AwsIdentityCenter => aws_check(seen),
            Profile::Atlassian => atlassian::check(seen),
            Profile::Slack => slack::check(seen),
            Profile::Miro => miro::check(seen),
            Profile::Figma => figma::check(seen),
            Profile::Asana => asana::check(seen),
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

/// AWS IAM Identity Center's refusals (each rule cites its page).
fn aws_check(seen: &Seen<'_>) -> Verdict {
    let collection = seen.segments.first().copied().unwrap_or("");
    let listing = *seen.method == Method::GET && seen.segments.len() == 1;
    if listing && matches!(collection, "Users" | "Groups") {
        // "startIndex, attributes, and excludedAttributes (despite being listed in the SCIM
        // protocol)" are not supported: https://docs.aws.amazon.com/singlesignon/latest/developerguide/listusers.html, https://docs.aws.amazon.com/singlesignon/latest/developerguide/listgroups.html.
        for param in ["startIndex", "attributes", "excludedAttributes"] {
            if seen.query.contains_key(param) {
                return aws_validation(format!("{param} is not supported"));
            }
        }
        // "count … Valid Range: Minimum value of 1. Maximum value of 100.": https://docs.aws.amazon.com/singlesignon/latest/developerguide/listusers.html.
        if let Some(count) = seen.query.get("count")
            && !count
                .trim()
                .parse::<u32>()
                .is_ok_and(|c| (1..=100).contains(&c))
        {
            return aws_validation(format!("count {count} is outside 1 to 100"));
        }
        // "cursor … Pattern: [-a-zA-Z0-9+=/:_]*": https://docs.aws.amazon.com/singlesignon/latest/developerguide/listusers.html.
        if let Some(cursor) = seen.query.get("cursor")
            && !cursor
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-+=/:_".contains(c))
        {
            return aws_validation("cursor does not match [-a-zA-Z0-9+=/:_]*".to_owned());
        }
        if let Some(text) = seen.query.get("filter").filter(|t| !t.trim().is_empty()) {
            return aws_filter(collection, text);
        }
    }
    // "No /Me, /Bulk or /Search": `https://docs.aws.amazon.com/singlesignon/latest/developerguide/supported-apis.html`.
    if seen.segments.get(1) == Some(&".search") {
        return Verdict::Refuse(Refusal::new(404, None, "no such endpoint"));
    }
    let body = seen.body.and_then(Value::as_object);
    if collection == "Users"
        && matches!(*seen.method, Method::POST | Method::PUT)
        && let Some(body) = body
    {
        // "Multi-valued attributes take one value only (emails, addresses, phoneNumbers)" and
        // the email must be primary: https://docs.aws.amazon.com/singlesignon/latest/developerguide/limitations.html.
        for attr in ["emails", "addresses", "phoneNumbers"] {
            let values = filter::get_ci(body, attr)
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            if values > 1 {
                return aws_validation(format!("{attr} takes one value only"));
            }
        }
        let email = filter::get_ci(body, "emails")
            .and_then(Value::as_array)
            .and_then(|e| e.first())
            .and_then(Value::as_object);
        if let Some(email) = email
            && filter::get_ci(email, "primary").and_then(Value::as_bool) != Some(true)
        {
            return aws_validation("the email must be primary".to_owned());
        }
        // "givenName, familyName, userName and displayName are required"; "groups" cannot be
        // sent on create: https://docs.aws.amazon.com/singlesignon/latest/developerguide/createuser.html.
        if *seen.method == Method::POST {
            let name = filter::get_ci(body, "name").and_then(Value::as_object);
            let text = |object: Option<&serde_json::Map<String, Value>>, key: &str| {
                object
                    .and_then(|o| filter::get_ci(o, key))
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty())
            };
            for (object, key) in [
                (name, "givenName"),
                (name, "familyName"),
                (Some(body), "userName"),
                (Some(body), "displayName"),
            ] {
                if !text(object, key) {
                    return aws_validation(format!("{key} is required"));
                }
            }
            if filter::get_ci(body, "groups").is_some() {
                return aws_validation("groups cannot be set on create".to_owned());
            }
        }
    }
    if collection == "Groups" && seen.segments.len() == 2 {
        // There is no PutGroup: `https://docs.aws.amazon.com/singlesignon/latest/developerguide/supported-apis.html`.
        if *seen.method == Method::PUT {
            return aws_validation("PUT of a group is not supported".to_owned());
        }
        if *seen.method == Method::PATCH {
            return aws_patch_group(seen);
        }
    }
    Verdict::Serve
}

/// "PatchGroup … at most 100 membership changes per request"; "replacing or removing all
/// members in one request gives 400": https://docs.aws.amazon.com/singlesignon/latest/developerguide/patchgroup.html.
fn aws_patch_group(seen: &Seen<'_>) -> Verdict {
    let ops: Vec<&serde_json::Map<String, Value>> = seen
        .body
        .and_then(Value::as_object)
        .and_then(|b| filter::get_ci(b, "Operations"))
        .and_then(Value::as_array)
        .map(|ops| ops.iter().filter_map(Value::as_object).collect())
        .unwrap_or_default();
    let mut changes = 0usize;
    for op in ops {
        let name = filter::get_ci(op, "op")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_ascii_lowercase();
        let path = filter::get_ci(op, "path").and_then(Value::as_str);
        let value = filter::get_ci(op, "value");
        let on_members = path.is_some_and(|p| p.to_ascii_lowercase().starts_with("members"))
            || (path.is_none()
                && value
                    .and_then(Value::as_object)
                    .is_some_and(|v| filter::get_ci(v, "members").is_some()));
        if !on_members {
            continue;
        }
        let whole = path.is_some_and(|p| p.eq_ignore_ascii_case("members"));
        if name == "replace" || (name == "remove" && whole && value.is_none()) {
            return aws_validation("replacing or removing all members is not supported".to_owned());
        }
        changes += match value {
            Some(Value::Array(items)) => items.len(),
            Some(Value::Object(v)) => filter::get_ci(v, "members")
                .and_then(Value::as_array)
                .map_or(1, Vec::len),
            _ => 1,
        };
    }
    if changes > 100 {
        return aws_validation(format!(
            "{changes} membership changes in one request; at most 100"
        ));
    }
    Verdict::Serve
}

/// "Supported comparison operator in filters: eq"; users: (userName), (externalId),
/// (groups.value), (id and manager): https://docs.aws.amazon.com/singlesignon/latest/developerguide/listusers.html; groups: (displayName), (externalId),
/// (members.value), (id and member), written `id eq "g" and members eq "u"` in its example:
/// https://docs.aws.amazon.com/singlesignon/latest/developerguide/listgroups.html. That `members eq "u"` is read as `members.value eq "u"`.
fn aws_filter(collection: &str, text: &str) -> Verdict {
    fn terms(f: &Filter, out: &mut Vec<(String, String)>) -> bool {
        match f {
            Filter::And(items) => items.iter().all(|i| terms(i, out)),
            Filter::Attr(AttrExp::Comparison(path, CompareOp::Eq, CompValue::Str(v)))
                if path.uri.is_none() =>
            {
                let name = match &path.sub_attr {
                    Some(sub) => format!("{}.{}", path.name, sub),
                    None => path.name.clone(),
                };
                out.push((name.to_ascii_lowercase(), v.clone()));
                true
            }
            _ => false,
        }
    }
    let mut found = Vec::new();
    let parsed = filter::parse(text);
    if !parsed.as_ref().is_ok_and(|f| terms(f, &mut found)) {
        return aws_validation(format!(
            "unsupported filter `{text}`: only eq, combined with and"
        ));
    }
    let mut names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    let allowed: &[&[&str]] = if collection == "Users" {
        &[
            &["username"],
            &["externalid"],
            &["groups.value"],
            &["id", "manager"],
        ]
    } else {
        &[
            &["displayname"],
            &["externalid"],
            &["members.value"],
            &["id", "members"],
            &["id", "members.value"],
        ]
    };
    if !allowed.contains(&names.as_slice()) {
        return aws_validation(format!("unsupported filter combination `{text}`"));
    }
    if collection == "Groups" && names.contains(&"members") {
        let rewritten: Vec<String> = found
            .iter()
            .map(|(name, value)| {
                let name = if name == "members" {
                    "members.value"
                } else {
                    name
                };
                format!("{name} eq {}", crate::scim::filter::json_string(value))
            })
            .collect();
        return Verdict::ServeFilter(rewritten.join(" and "));
    }
    Verdict::Serve
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
            body_bytes: body.as_ref().map_or(0, |b| b.to_string().len()),
        })
    }

    fn aws(
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> Verdict {
        let query: BTreeMap<String, String> = query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Profile::AwsIdentityCenter.check(&Seen {
            method: &method,
            segments,
            query: &query,
            body: body.as_ref(),
            user_agent: Some("roster"),
            body_bytes: body.as_ref().map_or(0, |b| b.to_string().len()),
        })
    }

    fn refused(verdict: &Verdict, words: &str) -> bool {
        matches!(verdict, Verdict::Refuse(r) if r.status == 400 && r.detail.contains(words))
    }

    #[test]
    fn aws_identity_center_refuses_what_aws_documents_it_refuses() {
        let get = |query: &[(&str, &str)]| aws(Method::GET, &["Users"], query, None);
        assert!(refused(&get(&[("startIndex", "1")]), "startIndex"));
        assert!(refused(&get(&[("attributes", "userName")]), "attributes"));
        assert!(refused(&get(&[("count", "101")]), "count"));
        assert!(refused(&get(&[("cursor", "a b")]), "cursor"));
        assert!(matches!(
            get(&[("cursor", ""), ("count", "100")]),
            Verdict::Serve
        ));
        let or = r#"userName eq "a" or userName eq "b""#;
        assert!(refused(&get(&[("filter", or)]), "only eq"));
        assert!(refused(
            &get(&[("filter", r#"emails.value eq "a""#)]),
            "combination"
        ));
        assert!(matches!(
            get(&[("filter", r#"userName eq "a""#)]),
            Verdict::Serve
        ));
        let member = r#"id eq "g" and members eq "u""#;
        assert!(
            matches!(aws(Method::GET, &["Groups"], &[("filter", member)], None),
                Verdict::ServeFilter(f) if f == r#"id eq "g" and members.value eq "u""#)
        );

        let mut user = json!({"userName": "a", "displayName": "A",
            "name": {"givenName": "A", "familyName": "B"},
            "emails": [{"value": "a@x", "primary": true}]});
        assert!(matches!(
            aws(Method::POST, &["Users"], &[], Some(user.clone())),
            Verdict::Serve
        ));
        user["emails"] = json!([{"value": "a@x", "primary": true}, {"value": "b@x"}]);
        assert!(refused(
            &aws(Method::POST, &["Users"], &[], Some(user.clone())),
            "one value"
        ));
        user["emails"] = json!([{"value": "a@x"}]);
        assert!(refused(
            &aws(Method::PUT, &["Users", "u"], &[], Some(user.clone())),
            "primary"
        ));
        user["emails"] = json!([{"value": "a@x", "primary": true}]);
        user.as_object_mut().map(|u| u.remove("displayName"));
        assert!(refused(
            &aws(Method::POST, &["Users"], &[], Some(user)),
            "displayName"
        ));

        let adds: Vec<Value> = (0..101)
            .map(|n| json!({"value": format!("u{n}")}))
            .collect();
        let patch = |ops: Value| {
            aws(
                Method::PATCH,
                &["Groups", "g"],
                &[],
                Some(json!({"Operations": ops})),
            )
        };
        assert!(refused(
            &patch(json!([{"op": "add", "path": "members", "value": adds}])),
            "at most 100"
        ));
        assert!(matches!(
            patch(json!([{"op": "add", "path": "members", "value": adds[..100]}])),
            Verdict::Serve
        ));
        assert!(refused(
            &patch(json!([{"op": "replace", "path": "members", "value": []}])),
            "all members"
        ));
        assert!(refused(
            &patch(json!([{"op": "remove", "path": "members"}])),
            "all members"
        ));
        assert!(matches!(
            patch(json!([{"op": "remove", "path": "members[value eq \"u1\"]"}])),
            Verdict::Serve
        ));
        assert!(refused(
            &aws(Method::PUT, &["Groups", "g"], &[], Some(json!({}))),
            "PUT"
        ));

        let mut group = json!({"id": "g", "members": [{"value": "u"}]});
        Profile::AwsIdentityCenter.shape_read("Groups", &mut group);
        assert_eq!(group["members"], json!([]));
        let mut group = json!({"id": "g", "members": [{"value": "u"}]});
        Profile::Rfc.shape_read("Groups", &mut group);
        assert_eq!(group["members"], json!([{"value": "u"}]));
        assert!(Profile::AwsIdentityCenter.cursor_paging() && !Profile::Rfc.cursor_paging());
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

    fn seen_verdict(profile: Profile, method: Method, segments: &[&str], body: &Value) -> Verdict {
        verdict(profile, method, segments, None, Some(body.clone()))
    }

    #[test]
    fn slack_needs_a_user_name_and_an_email_and_its_delete_deactivates_users_only() {
        let ok = json!({"userName": "a", "emails": [{"value": "a@x"}]});
        assert!(matches!(
            seen_verdict(Profile::Slack, Method::POST, &["Users"], &ok),
            Verdict::Serve
        ));
        for bad in [
            json!({"userName": "a"}),
            json!({"userName": "a", "emails": []}),
            json!({"userName": "a", "emails": [{"type": "work"}]}),
            json!({"emails": [{"value": "a@x"}]}),
        ] {
            assert!(
                matches!(seen_verdict(Profile::Slack, Method::POST, &["Users"], &bad),
                    Verdict::Refuse(r) if r.status == 400 && r.detail.contains("email")),
                "{bad}"
            );
            assert!(matches!(
                seen_verdict(Profile::Rfc, Method::POST, &["Users"], &bad),
                Verdict::Serve
            ));
        }
        assert!(matches!(
            verdict(Profile::Slack, Method::DELETE, &["Users", "u"], None, None),
            Verdict::Deactivate
        ));
        assert!(matches!(
            verdict(Profile::Slack, Method::DELETE, &["Groups", "g"], None, None),
            Verdict::Serve
        ));
        assert!(matches!(
            verdict(Profile::Rfc, Method::DELETE, &["Users", "u"], None, None),
            Verdict::Serve
        ));
        assert_eq!(Profile::Slack.page_sizes(), Some((10, 1000)));
        assert_eq!(Profile::Rfc.page_sizes(), None);
    }

    /// The names of the limits that count `method` on `segments` with a body of `bytes`.
    fn counted_by(
        profile: Profile,
        method: Method,
        segments: &[&str],
        bytes: usize,
    ) -> Vec<&'static str> {
        let query = BTreeMap::new();
        let seen = Seen {
            method: &method,
            segments,
            query: &query,
            body: None,
            user_agent: Some("roster"),
            body_bytes: bytes,
        };
        profile
            .rate_limits(&[])
            .unwrap_or_default()
            .into_iter()
            .filter(|l| (l.counts)(&seen))
            .map(|l| l.name)
            .collect()
    }

    #[test]
    fn slack_limits_are_counted_per_operation_and_can_be_lowered_by_name() {
        assert_eq!(
            counted_by(Profile::Slack, Method::POST, &["Users"], 10),
            ["writes", "users-post"]
        );
        assert_eq!(
            counted_by(Profile::Slack, Method::GET, &["Users", "u"], 0),
            ["reads", "users-get-one"]
        );
        assert_eq!(
            counted_by(Profile::Slack, Method::POST, &["Users", ".search"], 10),
            ["reads"]
        );
        assert_eq!(
            counted_by(Profile::Slack, Method::PATCH, &["Groups", "g"], 10),
            ["writes"]
        );
        assert_eq!(
            counted_by(Profile::Slack, Method::DELETE, &["Users", "u"], 0),
            ["writes", "users-delete"]
        );
        assert!(counted_by(Profile::Rfc, Method::POST, &["Users"], 10).is_empty());
        let writes = |limits: &[VendorLimit]| {
            limits
                .iter()
                .find(|l| l.name == "writes")
                .map(|l| (l.limit, l.window_seconds, l.burst))
        };
        let documented = Profile::Slack.rate_limits(&[]).expect("documented");
        assert_eq!(writes(&documented), Some((600, 60, 180)));
        let lowered = Profile::Slack
            .rate_limits(&["writes=5/1:3".to_owned()])
            .expect("lowered");
        assert_eq!(writes(&lowered), Some((5, 1, 3)));
        let no_burst = Profile::Slack
            .rate_limits(&["writes=7/2".to_owned()])
            .expect("lowered");
        assert_eq!(writes(&no_burst), Some((7, 2, 7)));
        let unknown = Profile::Slack
            .rate_limits(&["posts=5/1".to_owned()])
            .expect_err("unknown name");
        assert!(
            unknown.contains("writes") && unknown.contains("users-post"),
            "{unknown}"
        );
        for bad in ["writes=0/1", "writes=5", "writes=5/1:0", "writes"] {
            assert!(
                Profile::Slack.rate_limits(&[bad.to_owned()]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn miro_refuses_large_group_patches_with_413_and_limits_them_by_body_size() {
        let adds = |n: usize| {
            let members: Vec<Value> = (0..n).map(|i| json!({"value": format!("u{i}")})).collect();
            json!({"Operations": [{"op": "add", "path": "members", "value": members}]})
        };
        let patch = |profile: Profile, body: Value, bytes: usize| {
            let query = BTreeMap::new();
            profile.check(&Seen {
                method: &Method::PATCH,
                segments: &["Groups", "g"],
                query: &query,
                body: Some(&body),
                user_agent: Some("roster"),
                body_bytes: bytes,
            })
        };
        let too_many = |v: &Verdict| matches!(v, Verdict::Refuse(r) if r.status == 413);
        assert!(too_many(&patch(Profile::Miro, adds(8001), 100)));
        assert!(!too_many(&patch(Profile::Rfc, adds(8001), 100)));
        assert!(matches!(
            patch(Profile::Miro, adds(8000), 100),
            Verdict::Serve
        ));
        let removes: Vec<Value> = (0..8001)
            .map(|i| json!({"op": "remove", "path": format!("members[value eq \"u{i}\"]")}))
            .collect();
        assert!(too_many(&patch(
            Profile::Miro,
            json!({"Operations": removes}),
            100
        )));
        let pathless = json!({"Operations": [{"op": "add", "value": {"members": adds(8001)["Operations"][0]["value"]}}]});
        assert!(too_many(&patch(Profile::Miro, pathless, 100)));
        assert!(too_many(&patch(Profile::Miro, adds(1), 800_001)));
        assert!(matches!(
            patch(Profile::Miro, adds(1), 800_000),
            Verdict::Serve
        ));

        let group_patch = |bytes| counted_by(Profile::Miro, Method::PATCH, &["Groups", "g"], bytes);
        assert_eq!(group_patch(501), ["groups-patch-large"]);
        assert_eq!(group_patch(500), ["groups-patch"]);
        assert_eq!(
            counted_by(Profile::Miro, Method::GET, &["Groups"], 0),
            ["groups-list"]
        );
        assert_eq!(
            counted_by(Profile::Miro, Method::GET, &["Groups", "g"], 0),
            ["groups-get"]
        );
        assert_eq!(
            counted_by(Profile::Miro, Method::DELETE, &["Users", "u"], 0),
            ["users-delete"]
        );
        let limit = |name: &str| {
            Profile::Miro
                .rate_limits(&[])
                .unwrap_or_default()
                .into_iter()
                .find(|l| l.name == name)
                .map(|l| (l.limit, l.window_seconds))
        };
        for (name, wanted) in [
            ("users-list", 200),
            ("users-get", 200),
            ("users-post", 200),
            ("users-put", 100),
            ("users-patch", 100),
            ("users-delete", 20),
            ("groups-list", 5),
            ("groups-get", 20),
            ("groups-patch-large", 5),
            ("groups-patch", 100),
        ] {
            assert_eq!(limit(name), Some((wanted, 30)), "{name}");
        }
    }
}
