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
    /// How listings are paged; the maximum `count` is `page_size`.
    pub paging: Paging,
    /// `false`: the target answers groups without their members (GET and listings), so
    /// membership is never read from a group: roster trusts its links and, where the target
    /// filters on `members`, asks `id eq "g" and members eq "u"` per wanted member.
    pub group_members_readable: bool,
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
            paging: Paging::Index,
            group_members_readable: true,
        }
    }
}

impl Quirks {
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

    /// Whether several values may be looked up in one `or`-filtered listing.
    #[must_use]
    pub fn merges_lookups(&self) -> bool {
        self.filter_or && self.unsupported_filter == UnsupportedFilter::Error
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
