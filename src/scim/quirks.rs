//! Per-target deviations from RFC 7644, as data.
//!
//! An app stores its quirks as JSON, either a profile name (`"entra"`) or an object that starts
//! from a profile and overrides fields (`{"profile": "entra", "page_size": 50}`); see
//! [`Quirks::from_json`]. Unknown profiles and unknown fields are errors, so a typo never
//! silently falls back to RFC behaviour.
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PatchOpCase {
    /// `"op": "replace"` as RFC 7644 writes it.
    #[default]
    Lower,
    /// `"op": "Replace"`, which some targets (Entra-style) require.
    Pascal,
}

/// Where a target serves its service provider configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum DiscoveryPath {
    /// `/ServiceProviderConfig`, as RFC 7644 §4 names it.
    #[default]
    ServiceProviderConfig,
    /// `/ServiceProviderConfigs`, the plural some targets use.
    ServiceProviderConfigs,
}

impl DiscoveryPath {
    #[must_use]
    pub fn segment(self) -> &'static str {
        match self {
            DiscoveryPath::ServiceProviderConfig => "ServiceProviderConfig",
            DiscoveryPath::ServiceProviderConfigs => "ServiceProviderConfigs",
        }
    }
}

/// What a target does with a filter it does not support.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UnsupportedFilter {
    /// Answers with an error (400 `invalidFilter`), as RFC 7644 says.
    #[default]
    Error,
    /// Answers 200 with an empty list: an empty answer to such a filter proves nothing.
    Empty,
}

/// How a target pages a listing (DESIGN §6, §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Paging {
    /// `startIndex`/`count`, as RFC 7644 §3.4.2.4 says; done at `totalResults`.
    #[default]
    Index,
    /// RFC 9865 cursors: the first request sends an empty `cursor=`, each answer's
    /// `nextCursor` asks for the next page, and an answer without one is the last.
    Cursor,
    /// No paging: one request answers the whole listing. Complete only when its
    /// `totalResults` says so; otherwise nothing may be concluded from an absence.
    None,
}

/// How a target deviates. Stored on the app as JSON; unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quirks {
    pub patch_op_case: PatchOpCase,
    /// Members per group PATCH; larger changes are split (`chunk_members`).
    pub max_members_per_patch: u32,
    /// Upper bound for `count` when paging, whatever the caller or the target advertise.
    pub page_size: u32,
    /// `false`: never send `filter=`; look-ups page through the collection and compare locally.
    pub supports_filter: bool,
    /// `false`: never PATCH users even if `/ServiceProviderConfig` claims support; read the user,
    /// apply the operations locally and PUT it (groups still use PATCH, never PUT membership).
    pub supports_patch: bool,
    /// `false`: never send `If-Match`, even if the target advertises ETags (some advertise them
    /// and then reject every conditional request).
    pub supports_etag: bool,
    /// Where `/ServiceProviderConfig` is.
    pub discovery_path: DiscoveryPath,
    /// `false`: the target accepts one filter term per request, so look-ups are never merged
    /// into one `or`-filtered listing (each value is looked up alone).
    pub filter_or: bool,
    /// Attributes the target filters on; empty means any. A look-up on another attribute
    /// pages through the collection and compares locally.
    pub filter_attributes: Vec<String>,
    /// What the target answers to a filter it does not support. With `empty`, roster sends
    /// only filters the quirks say it supports (one `eq` term, a listed attribute), because
    /// an empty answer to any other would read as "absent".
    pub unsupported_filter: UnsupportedFilter,
    /// `false`: PATCH paths with a value filter (`members[value eq "…"]`) are refused, so
    /// members are removed with `remove` of `members` and a value list.
    pub patch_value_filters: bool,
    /// `true`: users accept PATCH only for `active`; any other change is read, applied
    /// locally and sent with PUT.
    pub patch_only_active: bool,
    /// `true`: the target answers a create whose userName is already taken (ignoring case)
    /// with 409 `uniqueness`, as RFC 7644 §3.3 asks and its vendor documents. Where roster
    /// matches on userName, a new account is then created first and looked up only on that
    /// 409: one call per account instead of two. Leave it `false` for a target that does not
    /// promise this: there a create without a look-up first could make a second account.
    pub rejects_duplicate_user_names: bool,
    /// Multi-valued attributes the target accepts one value of (`emails`, `phoneNumbers`,
    /// `addresses`): mappings that render two elements of one are refused when the app is
    /// written, instead of every create being refused by the target.
    pub single_valued: Vec<String>,
    /// Attributes the target requires on create (`name.givenName`, `displayName`): an app
    /// without a mapping for one is refused, and a person whose mappings render none of one is
    /// not sent (the job fails naming the attribute) rather than refused by the target.
    pub required_on_create: Vec<String>,
    /// How listings are paged; the maximum `count` is `page_size`.
    pub paging: Paging,
    /// `false`: the target answers groups without their members (GET and listings), so
    /// membership is never read from a group: roster trusts its links and, where the target
    /// filters on `members`, asks `id eq "g" and members eq "u"` per wanted member.
    pub group_members_readable: bool,
    /// `false`: the target refuses to rename a group (PATCH or PUT of another `displayName`).
    /// A pushed group renamed by hand in the target is then brought back to roster's name by
    /// creating a group of that name, adding the wanted members and deleting the old group
    /// (only one roster created; an adopted one is left as it is and unlinked).
    pub group_rename: bool,
    /// `false`: the target leaves some accounts out of every listing of /Users (its guests,
    /// say), so no such listing proves an account absent: every page is `unproven`, and
    /// reconciliation only reports what it would conclude from an absence (create, adopt,
    /// deprovision); a linked account not listed is still read by its id.
    pub user_listings_complete: bool,
    /// Where `user_listings_complete` is `false` because the target leaves out only accounts
    /// outside some e-mail domains (an organisation's guests, whose address is not at one of
    /// its domains): those domains. A listing then proves absent a `userName` (or
    /// `emails.value`) at one of them, and matching look-ups of such values may be answered
    /// by one listing; reconciliation still concludes nothing from an absence. Set per app:
    /// the connector cannot know a customer's domains.
    pub user_listings_complete_for_domains: Vec<String>,
}

impl Default for Quirks {
    fn default() -> Self {
        Self {
            patch_op_case: PatchOpCase::Lower,
            max_members_per_patch: 100,
            page_size: 100,
            supports_filter: true,
            supports_patch: true,
            supports_etag: true,
            discovery_path: DiscoveryPath::ServiceProviderConfig,
            filter_or: true,
            filter_attributes: Vec::new(),
            unsupported_filter: UnsupportedFilter::Error,
            patch_value_filters: true,
            patch_only_active: false,
            rejects_duplicate_user_names: false,
            single_valued: Vec::new(),
            required_on_create: Vec::new(),
            paging: Paging::Index,
            group_members_readable: true,
            group_rename: true,
            user_listings_complete: true,
            user_listings_complete_for_domains: Vec::new(),
        }
    }
}

impl Quirks {
    /// Whether a complete read of the target's user listing proves that no account holds
    /// `value` at the matching attribute `attr` beyond those it lists: the target lists every
    /// account, or `value` is an address (`userName`, `emails.value`) at one of
    /// `user_listings_complete_for_domains`.
    #[must_use]
    pub fn listing_proves_absence_of(&self, attr: &str, value: &str) -> bool {
        if self.user_listings_complete {
            return true;
        }
        let address =
            attr.eq_ignore_ascii_case("userName") || attr.eq_ignore_ascii_case("emails.value");
        address
            && value.rsplit_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && self
                        .user_listings_complete_for_domains
                        .iter()
                        .any(|d| d.eq_ignore_ascii_case(domain))
            })
    }

    /// Whether a look-up on `attr` may be sent as a filter at all (the discovered filter
    /// support aside): the attribute is one the target filters on.
    #[must_use]
    pub fn filters_on(&self, attr: &str) -> bool {
        self.supports_filter
            && (self.filter_attributes.is_empty()
                || self
                    .filter_attributes
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(attr)))
    }

    /// Whether an account matched on `attr` is created before it is looked up (and looked up
    /// only when the create is answered 409): the target rejects a duplicate userName and
    /// roster matches on userName, so that 409 is the look-up. On any other attribute a 409
    /// on userName would prove nothing about the matching value.
    #[must_use]
    pub fn creates_before_looking(&self, attr: &str) -> bool {
        self.rejects_duplicate_user_names && attr.eq_ignore_ascii_case("userName")
    }

    /// Why mappings with these target paths (`emails[type eq "work"].value`, `displayName`; the
    /// role mapping's too) cannot serve this target: they render two elements of an attribute
    /// it takes one value of, or none of an attribute it requires on create.
    #[must_use]
    pub fn mapping_refusal(&self, targets: &[&str]) -> Option<String> {
        for attribute in &self.single_valued {
            let mut elements: Vec<&str> = targets
                .iter()
                .map(|t| split_target(t))
                .filter(|(attr, _, _)| attr.eq_ignore_ascii_case(attribute))
                .map(|(_, filter, _)| filter)
                .collect();
            elements.sort_unstable();
            elements.dedup();
            if elements.len() > 1 {
                return Some(format!(
                    "the target takes one `{attribute}` value, and the mappings render {}                      elements of it ({}); map one",
                    elements.len(),
                    elements
                        .iter()
                        .map(|f| if f.is_empty() { "unfiltered" } else { f })
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        self.required_on_create
            .iter()
            .find(|required| {
                !targets.iter().any(|t| {
                    let (attr, _, rest) = split_target(t);
                    let plain = if rest.is_empty() {
                        attr.to_owned()
                    } else {
                        format!("{attr}.{rest}")
                    };
                    let plain = plain.to_ascii_lowercase();
                    let required = required.to_ascii_lowercase();
                    plain == required || plain.starts_with(&format!("{required}."))
                })
            })
            .map(|required| {
                format!("the target requires `{required}` on create, and no mapping renders it")
            })
    }

    /// The first attribute the target requires on create that `resource` lacks (absent, null,
    /// an empty string or an empty list).
    #[must_use]
    pub fn missing_on_create(&self, resource: &serde_json::Value) -> Option<&str> {
        self.required_on_create
            .iter()
            .find(|path| !present(resource, &path.split('.').collect::<Vec<_>>()))
            .map(String::as_str)
    }

    /// Whether several values may be looked up in one `or`-filtered listing.
    #[must_use]
    pub fn merges_lookups(&self) -> bool {
        self.filter_or && self.unsupported_filter == UnsupportedFilter::Error
    }
}

/// A mapping target path as (attribute, value filter, sub-attribute):
/// `emails[type eq "work"].value` → (`emails`, `type eq "work"`, `value`); `name.givenName` →
/// (`name`, ``, `givenName`). Extension URNs stay whole in the attribute.
fn split_target(target: &str) -> (&str, &str, &str) {
    if let Some(open) = target.find('[')
        && let Some(close) = target.rfind(']')
        && close > open
    {
        let rest = target[close + 1..].trim_start_matches('.');
        return (&target[..open], target[open + 1..close].trim(), rest);
    }
    // `urn:…:User:manager.value`: the attribute starts after the URN's last colon.
    let from = target.rfind(':').map_or(0, |i| i + 1);
    match target[from..].find('.') {
        Some(dot) => (&target[..from + dot], "", &target[from + dot + 1..]),
        None => (target, "", ""),
    }
}

/// Whether `value` holds something at `path` (case-insensitive keys; any element of a list).
fn present(value: &serde_json::Value, path: &[&str]) -> bool {
    use serde_json::Value;
    match (value, path.split_first()) {
        (Value::Array(items), _) => items.iter().any(|item| present(item, path)),
        (Value::Null, _) => false,
        (Value::String(s), None) => !s.trim().is_empty(),
        (_, None) => true,
        (Value::Object(map), Some((key, rest))) => map
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .is_some_and(|(_, v)| present(v, rest)),
        _ => false,
    }
}

/// Why a quirks document was refused. The message names the field or profile at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid quirks: {0}")]
pub struct QuirksError(String);

impl Quirks {
    /// Names accepted by [`Quirks::profile`] and in `{"profile": …}`.
    pub const PROFILES: &'static [&'static str] = &["rfc", "entra", "no-filter", "no-patch"];

    /// A named profile: `rfc` (the default), `entra` (PascalCase ops as Entra ID's provisioning
    /// client sends them, small member chunks, no ETags), `no-filter` (look-ups by paging),
    /// `no-patch` (users are updated with PUT).
    #[must_use]
    pub fn profile(name: &str) -> Option<Quirks> {
        let rfc = Quirks::default();
        match name {
            "rfc" => Some(rfc),
            "entra" => Some(Quirks {
                patch_op_case: PatchOpCase::Pascal,
                max_members_per_patch: 20,
                supports_etag: false,
                ..rfc
            }),
            "no-filter" => Some(Quirks {
                supports_filter: false,
                ..rfc
            }),
            "no-patch" => Some(Quirks {
                supports_patch: false,
                ..rfc
            }),
            _ => None,
        }
    }

    /// Parses an app's quirks: `null` (RFC), a profile name, or an object with an optional
    /// `profile` and field overrides.
    pub fn from_json(raw: &Value) -> Result<Quirks, QuirksError> {
        let quirks = match raw {
            Value::Null => Quirks::default(),
            Value::String(name) => Self::named(name)?,
            Value::Object(map) => {
                let base = match map.get("profile") {
                    None | Some(Value::Null) => Quirks::default(),
                    Some(Value::String(name)) => Self::named(name)?,
                    Some(_) => return Err(QuirksError("`profile` must be a string".into())),
                };
                // Overlay the overrides on the profile's own JSON, then let serde check names
                // and types (deny_unknown_fields gives "unknown field `x`, expected one of …").
                let mut merged = match serde_json::to_value(&base) {
                    Ok(Value::Object(m)) => m,
                    _ => return Err(QuirksError("internal: quirks did not serialise".into())),
                };
                for (key, value) in map.iter().filter(|(k, _)| k.as_str() != "profile") {
                    merged.insert(key.clone(), value.clone());
                }
                serde_json::from_value(Value::Object(merged))
                    .map_err(|e| QuirksError(e.to_string()))?
            }
            _ => {
                return Err(QuirksError(
                    "expected a profile name or an object".to_string(),
                ));
            }
        };
        quirks.validate()?;
        Ok(quirks)
    }

    fn named(name: &str) -> Result<Quirks, QuirksError> {
        Self::profile(name).ok_or_else(|| {
            QuirksError(format!(
                "unknown profile `{name}`, expected one of {}",
                Self::PROFILES.join(", ")
            ))
        })
    }

    fn validate(&self) -> Result<(), QuirksError> {
        if self.max_members_per_patch == 0 {
            return Err(QuirksError(
                "max_members_per_patch must be at least 1".into(),
            ));
        }
        if self.page_size == 0 {
            return Err(QuirksError("page_size must be at least 1".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_listing_proves_absent_only_addresses_at_the_domains_it_lists_wholly() {
        let complete = Quirks::default();
        let guests_left_out = Quirks {
            user_listings_complete: false,
            ..Quirks::default()
        };
        let domains = Quirks {
            user_listings_complete: false,
            user_listings_complete_for_domains: vec!["example.com".into(), "Corp.Example".into()],
            ..Quirks::default()
        };
        // (quirks, attribute, value) → proven absent when not listed
        let table = [
            (&complete, "externalId", "e1", true),
            (&complete, "userName", "anyone", true),
            (&guests_left_out, "userName", "ada@example.com", false),
            (&domains, "userName", "ada@example.com", true),
            (&domains, "username", "ADA@EXAMPLE.COM", true),
            (&domains, "emails.value", "ada@corp.example", true),
            (&domains, "userName", "guest@gmail.com", false),
            // A subdomain is another domain; an address needs its local part.
            (&domains, "userName", "ada@eu.example.com", false),
            (&domains, "userName", "@example.com", false),
            (&domains, "userName", "example.com", false),
            (&domains, "externalId", "e1@example.com", false),
        ];
        for (quirks, attr, value, proven) in table {
            assert_eq!(
                quirks.listing_proves_absence_of(attr, value),
                proven,
                "{attr} {value} with {:?}",
                quirks.user_listings_complete_for_domains
            );
        }
    }

    #[test]
    fn mappings_must_render_one_value_of_single_valued_attributes_and_every_required_one() {
        let quirks = Quirks::from_json(&json!({
            "single_valued": ["emails"],
            "required_on_create": ["userName", "name.givenName", "displayName"]
        }))
        .unwrap();
        let fine = [
            "userName",
            "name.givenName",
            "name.familyName",
            "displayName",
            r#"emails[type eq "work"].value"#,
            r#"emails[type eq "work"].primary"#,
        ];
        assert_eq!(quirks.mapping_refusal(&fine), None);
        let two_emails = [&fine[..], &[r#"emails[type eq "home"].value"#]].concat();
        let refusal = quirks.mapping_refusal(&two_emails).unwrap();
        assert!(
            refusal.contains("one `emails` value") && refusal.contains("home"),
            "{refusal}"
        );
        let refusal = quirks
            .mapping_refusal(&["userName", "name.givenName", "title"])
            .unwrap();
        assert!(refusal.contains("`displayName`"), "{refusal}");
        // `name` is covered only by a mapping inside it.
        let needs_name = Quirks::from_json(&json!({"required_on_create": ["name"]})).unwrap();
        assert_eq!(needs_name.mapping_refusal(&["name.givenName"]), None);
        assert!(needs_name.mapping_refusal(&["nameless"]).is_some());

        let resource = json!({"userName": "ada", "name": {"givenName": "Ada"}, "displayName": " ",
                              "emails": [{"value": "a@x"}]});
        assert_eq!(quirks.missing_on_create(&resource), Some("displayName"));
        let emails =
            Quirks::from_json(&json!({"required_on_create": ["emails.value", "NAME.GIVENNAME"]}))
                .unwrap();
        assert_eq!(emails.missing_on_create(&resource), None);
        assert_eq!(
            emails.missing_on_create(&json!({"emails": []})),
            Some("emails.value")
        );
    }

    #[test]
    fn only_a_target_rejecting_taken_user_names_is_created_on_first_and_only_on_user_name() {
        let promised = Quirks::from_json(&json!({"rejects_duplicate_user_names": true})).unwrap();
        assert!(promised.creates_before_looking("userName"));
        assert!(promised.creates_before_looking("username"));
        // A 409 on userName says nothing about an account with the same e-mail or externalId.
        assert!(!promised.creates_before_looking("externalId"));
        assert!(!promised.creates_before_looking("emails.value"));
        // Stored quirks documents from before the field keep looking first.
        assert!(
            !Quirks::from_json(&json!({}))
                .unwrap()
                .creates_before_looking("userName")
        );
    }

    #[test]
    fn quirks_parse_from_profiles_and_overrides() {
        assert_eq!(Quirks::from_json(&Value::Null).unwrap(), Quirks::default());
        assert_eq!(Quirks::from_json(&json!("rfc")).unwrap(), Quirks::default());
        let entra = Quirks::from_json(&json!("entra")).unwrap();
        assert_eq!(entra.patch_op_case, PatchOpCase::Pascal);
        assert!(!entra.supports_etag);

        let tuned = Quirks::from_json(&json!({"profile": "entra", "page_size": 50})).unwrap();
        assert_eq!(tuned.page_size, 50);
        assert_eq!(tuned.patch_op_case, PatchOpCase::Pascal, "profile kept");

        let flags = Quirks::from_json(&json!({"supports_filter": false})).unwrap();
        assert!(!flags.supports_filter);
        assert_eq!(flags.page_size, 100);
        assert!(
            !Quirks::from_json(&json!("no-filter"))
                .unwrap()
                .supports_filter
        );
        assert!(
            !Quirks::from_json(&json!("no-patch"))
                .unwrap()
                .supports_patch
        );
    }

    #[test]
    fn quirks_refuse_unknown_profiles_fields_and_bad_values() {
        let err = Quirks::from_json(&json!("okta-ish"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown profile `okta-ish`"), "{err}");
        let err = Quirks::from_json(&json!({"page_sise": 5}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `page_sise`"), "{err}");
        let err = Quirks::from_json(&json!({"patch_op_case": "upper"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("upper"), "{err}");
        assert!(Quirks::from_json(&json!({"page_size": 0})).is_err());
        assert!(Quirks::from_json(&json!({"profile": 3})).is_err());
        assert!(Quirks::from_json(&json!(42)).is_err());
    }

    #[test]
    fn quirks_keep_their_stored_shape() {
        // Apps already store these four fields; older documents must still parse.
        let old = json!({"patch_op_case": "pascal", "max_members_per_patch": 10,
                         "page_size": 20, "supports_filter": false});
        let q: Quirks = serde_json::from_value(old).unwrap();
        assert_eq!(q.max_members_per_patch, 10);
        assert!(q.supports_patch, "new fields default");
    }

    #[test]
    fn quirks_stored_before_the_catalogue_keep_their_meaning() {
        // The full document an app stored before the vendor fields existed.
        let stored = json!({"patch_op_case": "lower", "max_members_per_patch": 100,
                            "page_size": 100, "supports_filter": true, "supports_patch": true,
                            "supports_etag": true});
        let q = Quirks::from_json(&stored).unwrap();
        assert_eq!(q, Quirks::default());
        assert!(q.merges_lookups() && q.filters_on("userName"));
        assert_eq!(q.discovery_path.segment(), "ServiceProviderConfig");
        let q = Quirks::from_json(&json!("entra")).unwrap();
        assert!(q.patch_value_filters && !q.patch_only_active);
    }

    #[test]
    fn paging_modes_and_group_member_reading_parse_and_default_to_rfc() {
        let q = Quirks::from_json(&json!({"paging": "cursor", "group_members_readable": false}))
            .unwrap();
        assert_eq!(q.paging, Paging::Cursor);
        assert!(!q.group_members_readable);
        assert_eq!(
            Quirks::from_json(&json!({"paging": "none"}))
                .unwrap()
                .paging,
            Paging::None
        );
        assert!(Quirks::from_json(&json!({"paging": "offset"})).is_err());
        // A document stored before these fields keeps index paging and reads members.
        let old = Quirks::from_json(&json!({"page_size": 50, "filter_or": false})).unwrap();
        assert_eq!(old.paging, Paging::Index);
        assert!(old.group_members_readable);
    }

    #[test]
    fn group_rename_defaults_to_rfc_and_parses() {
        // A document stored before the field renames groups with PATCH, as RFC 7644 allows.
        assert!(
            Quirks::from_json(&json!({"page_size": 50}))
                .unwrap()
                .group_rename
        );
        assert!(
            !Quirks::from_json(&json!({"group_rename": false}))
                .unwrap()
                .group_rename
        );
        assert!(Quirks::from_json(&json!({"group_rename": "no"})).is_err());
    }

    #[test]
    fn vendor_quirks_parse_and_decide_what_filters_are_sent() {
        let q = Quirks::from_json(&json!({"discovery_path": "ServiceProviderConfigs",
            "filter_or": false, "filter_attributes": ["userName", "externalId"],
            "unsupported_filter": "empty", "patch_value_filters": false,
            "patch_only_active": true}))
        .unwrap();
        assert_eq!(q.discovery_path.segment(), "ServiceProviderConfigs");
        assert!(!q.merges_lookups());
        assert!(q.filters_on("username") && !q.filters_on("emails.value"));
        let silent = Quirks::from_json(&json!({"unsupported_filter": "empty"})).unwrap();
        assert!(!silent.merges_lookups(), "an `or` could be answered empty");
        assert!(Quirks::from_json(&json!({"unsupported_filter": "ignore"})).is_err());
    }
}
