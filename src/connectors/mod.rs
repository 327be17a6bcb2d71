//! The connector catalogue: real SaaS SCIM targets as data.
//!
//! A connector is one JSON file in `connectors/` at the repository root, embedded at build time
//! (`CATALOGUE_FILES`). It holds what a person registering the app would otherwise have to dig
//! out of the vendor's documentation: the base URL template, the auth types the vendor accepts,
//! default settings (mappings with the attributes the vendor requires, rate limits, deprovision
//! action, quirks), the vendor's hard limits, what DELETE means there, notes, and every fact
//! with the vendor page it came from. Deviations from RFC 7644 are quirks (`scim::Quirks`),
//! never code that names a vendor.
//!
//! Pure: parsing, template filling, limit checks and the comparison with an app's settings.
//! `service::apps` builds apps from it; `api::connectors` lists it.
use std::collections::BTreeMap;
use std::sync::LazyLock;

use poem_openapi::{Enum, Object};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::scim::Quirks;
use crate::settings::{AppSettings, Deprovision, MappingEntry, RateLimit};

/// Every connector file, by name. Adding a connector is adding a file here and in
/// `connectors/`; `every_catalogue_file_parses_and_every_fact_has_a_source` checks both.
const CATALOGUE_FILES: &[(&str, &str)] = &[
    ("asana", include_str!("../../connectors/asana.json")),
    ("atlassian", include_str!("../../connectors/atlassian.json")),
    (
        "aws-identity-center",
        include_str!("../../connectors/aws-identity-center.json"),
    ),
    (
        "entra-style",
        include_str!("../../connectors/entra-style.json"),
    ),
    ("figma", include_str!("../../connectors/figma.json")),
    (
        "github-emu",
        include_str!("../../connectors/github-emu.json"),
    ),
    ("miro", include_str!("../../connectors/miro.json")),
    ("rfc", include_str!("../../connectors/rfc.json")),
    (
        "salesforce",
        include_str!("../../connectors/salesforce.json"),
    ),
    ("slack", include_str!("../../connectors/slack.json")),
    ("snowflake", include_str!("../../connectors/snowflake.json")),
    ("zoom", include_str!("../../connectors/zoom.json")),
];

/// A documented fact and the vendor page it comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Object)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct Fact {
    pub fact: String,
    /// The vendor documentation URL behind the fact.
    pub source: String,
}

/// A named placeholder of the base URL template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Object)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct ConnectorParam {
    /// The placeholder, `{name}` in `base_url_template`, and the key in `connector_params`.
    pub name: String,
    /// Where to find the value.
    pub description: String,
}

/// What a DELETE of a user does at the vendor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Enum)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum DeleteMeaning {
    /// The account is removed (RFC 7644).
    Deletes,
    /// The account is only deactivated, as `active=false` would.
    Deactivates,
    /// The account is gone for good and can never be reactivated.
    Permanent,
    /// The account is unlinked from the identity provider; its SCIM record is gone.
    Unlinks,
}

/// A setting a vendor limit bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Enum)]
pub enum LimitedSetting {
    #[oai(rename = "rate_limit.per_second")]
    #[serde(rename = "rate_limit.per_second")]
    RatePerSecond,
    #[oai(rename = "rate_limit.burst")]
    #[serde(rename = "rate_limit.burst")]
    RateBurst,
    #[oai(rename = "quirks.max_members_per_patch")]
    #[serde(rename = "quirks.max_members_per_patch")]
    MembersPerPatch,
    #[oai(rename = "quirks.page_size")]
    #[serde(rename = "quirks.page_size")]
    PageSize,
}

impl LimitedSetting {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            LimitedSetting::RatePerSecond => "rate_limit.per_second",
            LimitedSetting::RateBurst => "rate_limit.burst",
            LimitedSetting::MembersPerPatch => "quirks.max_members_per_patch",
            LimitedSetting::PageSize => "quirks.page_size",
        }
    }

    fn value_in(self, settings: &AppSettings, quirks: &Quirks) -> u32 {
        match self {
            LimitedSetting::RatePerSecond => settings.rate_limit.per_second,
            LimitedSetting::RateBurst => settings.rate_limit.burst,
            LimitedSetting::MembersPerPatch => quirks.max_members_per_patch,
            LimitedSetting::PageSize => quirks.page_size,
        }
    }
}

/// A hard vendor limit: a setting above `max` is refused unless the request says
/// `override_vendor_limits: true`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Object)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct VendorLimit {
    pub setting: LimitedSetting,
    pub max: u32,
    /// The vendor's words for the limit.
    pub fact: String,
    pub source: String,
}

/// The settings an app built from the connector starts with; fields given explicitly in
/// `POST /apps` replace them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Object)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct ConnectorDefaults {
    pub rate_limit: RateLimit,
    pub max_concurrency: u32,
    /// Includes every attribute the vendor requires on create.
    pub mappings: Vec<MappingEntry>,
    pub deprovision: Deprovision,
    /// An object of quirk flags (see the app's `quirks`).
    pub quirks: Value,
    /// The app's `rate_limit_group`, with `{param}` placeholders filled from
    /// `connector_params`, where the vendor's limits hold for a whole tenant: apps on one
    /// tenant then share one set of buckets.
    #[oai(skip_serializing_if_is_none)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_group: Option<String>,
}

/// One catalogue entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Object)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct Connector {
    /// The catalogue name, given as `connector` in `POST /apps`.
    pub name: String,
    /// Raised whenever a default, limit or quirk changes. An app keeps the version it was
    /// built from; `GET /apps/{id}` shows the differences to a newer one.
    pub version: u32,
    pub display_name: String,
    /// What roster provisions there (`users`, `groups`).
    pub provisions: Vec<String>,
    /// The SCIM base URL with `{param}` placeholders filled from `connector_params`; absent for
    /// generic connectors, which need `base_url`.
    #[oai(skip_serializing_if_is_none)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url_template: Option<String>,
    pub params: Vec<ConnectorParam>,
    /// `auth.type` values the vendor accepts (`bearer`, `basic`, `oauth2`).
    pub auth_types: Vec<String>,
    /// The credential the vendor wants (who issues it, which scope it needs).
    pub credential: Fact,
    pub defaults: ConnectorDefaults,
    pub limits: Vec<VendorLimit>,
    pub delete_means: DeleteMeaning,
    /// For the person registering the app.
    pub notes: Vec<String>,
    /// Every documented fact the connector encodes, with its source.
    pub facts: Vec<Fact>,
}

/// Why a connector could not be applied. Messages name the field, the limit and its source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectorError {
    #[error("unknown connector `{name}`, expected one of {known}")]
    Unknown { name: String, known: String },
    #[error("`{param}` is required by the connector's base URL template ({description})")]
    MissingParam { param: String, description: String },
    #[error("connector `{connector}` has no URL template: give `base_url`")]
    NoTemplate { connector: String },
    #[error("`{param}` is not a parameter of this connector, expected one of {known}")]
    UnknownParam { param: String, known: String },
    #[error(
        "`{param}` must be 1 to 128 letters, digits, `.`, `-` or `_` (it becomes part of the URL)"
    )]
    BadParam { param: String },
    #[error(
        "{value} is above the vendor's limit of {max} ({fact}; source: {url}); send \
         `override_vendor_limits: true` to use it anyway"
    )]
    AboveLimit {
        setting: &'static str,
        value: u32,
        max: u32,
        fact: String,
        url: String,
    },
}

impl ConnectorError {
    /// The request field at fault.
    #[must_use]
    pub fn field(&self) -> String {
        match self {
            ConnectorError::Unknown { .. } => "connector".into(),
            ConnectorError::NoTemplate { .. } => "base_url".into(),
            ConnectorError::MissingParam { param, .. }
            | ConnectorError::UnknownParam { param, .. }
            | ConnectorError::BadParam { param } => format!("connector_params.{param}"),
            ConnectorError::AboveLimit { setting, .. } => (*setting).to_owned(),
        }
    }
}

static CATALOGUE: LazyLock<Vec<Connector>> = LazyLock::new(|| {
    CATALOGUE_FILES
        .iter()
        .filter_map(|(name, text)| match parse(text) {
            Ok(connector) => Some(connector),
            Err(e) => {
                // Never expected: a unit test parses every file. Leave it out of the catalogue.
                tracing::error!(connector = name, error = %e, "Connector file does not parse");
                None
            }
        })
        .collect()
});

fn parse(text: &str) -> Result<Connector, String> {
    let connector: Connector = serde_json::from_str(text).map_err(|e| e.to_string())?;
    Quirks::from_json(&connector.defaults.quirks).map_err(|e| e.to_string())?;
    Ok(connector)
}

/// Every connector, by name.
#[must_use]
pub fn catalogue() -> &'static [Connector] {
    &CATALOGUE
}

/// The connector named `name`, or an error listing the names there are.
pub fn find(name: &str) -> Result<&'static Connector, ConnectorError> {
    catalogue()
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| ConnectorError::Unknown {
            name: name.to_owned(),
            known: catalogue()
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// A difference between an app's setting and a connector's default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Object)]
pub struct ConnectorDifference {
    /// The app setting, e.g. `rate_limit` or `quirks.page_size`.
    pub setting: String,
    pub app: Value,
    pub connector: Value,
}

impl Connector {
    /// Fills the base URL template. Every parameter needs a value, and every value a
    /// parameter; values are restricted to what a host label or path segment holds, so a
    /// parameter can never move the URL to another host.
    pub fn base_url(&self, params: &BTreeMap<String, String>) -> Result<String, ConnectorError> {
        let Some(template) = &self.base_url_template else {
            self.fill("", params)?;
            return Err(ConnectorError::NoTemplate {
                connector: self.name.clone(),
            });
        };
        self.fill(template, params)
    }

    /// The app's rate-limit group, if the vendor's limits hold for a whole tenant: the
    /// connector's template filled from `params` (each one required, as for the base URL).
    pub fn rate_limit_group(
        &self,
        params: &BTreeMap<String, String>,
    ) -> Result<Option<String>, ConnectorError> {
        self.defaults
            .rate_limit_group
            .as_deref()
            .map(|template| self.fill(template, params))
            .transpose()
    }

    /// `template` with every parameter's placeholder replaced by its value. Every parameter
    /// needs a value, and every value a parameter; values are restricted to what a host label
    /// or path segment holds.
    fn fill(
        &self,
        template: &str,
        params: &BTreeMap<String, String>,
    ) -> Result<String, ConnectorError> {
        let known = || {
            self.params
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if let Some(stray) = params
            .keys()
            .find(|k| !self.params.iter().any(|p| &p.name == *k))
        {
            return Err(ConnectorError::UnknownParam {
                param: stray.clone(),
                known: if self.params.is_empty() {
                    "none".into()
                } else {
                    known()
                },
            });
        }
        let mut url = template.to_owned();
        for param in &self.params {
            let value = params
                .get(&param.name)
                .ok_or_else(|| ConnectorError::MissingParam {
                    param: param.name.clone(),
                    description: param.description.clone(),
                })?;
            let plain = (1..=128).contains(&value.len())
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
                && !value.starts_with('.');
            if !plain {
                return Err(ConnectorError::BadParam {
                    param: param.name.clone(),
                });
            }
            url = url.replace(&format!("{{{}}}", param.name), value);
        }
        Ok(url)
    }

    /// The first setting above a hard vendor limit, if any.
    pub fn check_limits(
        &self,
        settings: &AppSettings,
        quirks: &Quirks,
    ) -> Result<(), ConnectorError> {
        for limit in &self.limits {
            let value = limit.setting.value_in(settings, quirks);
            if value > limit.max {
                return Err(ConnectorError::AboveLimit {
                    setting: limit.setting.as_str(),
                    value,
                    max: limit.max,
                    fact: limit.fact.clone(),
                    url: limit.source.clone(),
                });
            }
        }
        Ok(())
    }

    /// The connector's quirks with `explicit` laid over them: an object's fields replace the
    /// connector's one by one; a profile name (or anything else) replaces them as a whole.
    #[must_use]
    pub fn quirks_with(&self, explicit: Option<&Value>) -> Value {
        match (explicit, &self.defaults.quirks) {
            (None, base) => base.clone(),
            (Some(Value::Object(over)), Value::Object(base)) => {
                let mut merged = base.clone();
                for (k, v) in over {
                    merged.insert(k.clone(), v.clone());
                }
                Value::Object(merged)
            }
            (Some(other), _) => other.clone(),
        }
    }

    /// Where `settings` differ from this connector's defaults: what a PATCH would change to
    /// bring the app to this version. Quirks are compared field by field after parsing, so a
    /// stored quirks document and the connector's shorter one compare by meaning.
    #[must_use]
    pub fn differences(
        &self,
        settings: &AppSettings,
        params: &BTreeMap<String, String>,
    ) -> Vec<ConnectorDifference> {
        let mut found = Vec::new();
        let mut compare = |setting: &str, app: Value, connector: Value| {
            if app != connector {
                found.push(ConnectorDifference {
                    setting: setting.to_owned(),
                    app,
                    connector,
                });
            }
        };
        compare(
            "rate_limit",
            json(&settings.rate_limit),
            json(&self.defaults.rate_limit),
        );
        // The group this version derives from the app's parameters (its template as it
        // stands where the app lacks one of them).
        let group = self
            .rate_limit_group(params)
            .unwrap_or_else(|_| self.defaults.rate_limit_group.clone());
        compare(
            "rate_limit_group",
            json(&settings.rate_limit_group),
            json(&group),
        );
        compare(
            "max_concurrency",
            Value::from(settings.max_concurrency),
            Value::from(self.defaults.max_concurrency),
        );
        compare(
            "mappings",
            json(&settings.mappings),
            json(&self.defaults.mappings),
        );
        compare(
            "deprovision",
            json(&settings.deprovision),
            json(&self.defaults.deprovision),
        );
        let quirks_of = |raw: &Value| {
            Quirks::from_json(raw)
                .ok()
                .and_then(|q| serde_json::to_value(q).ok())
                .unwrap_or(Value::Null)
        };
        let (app_quirks, connector_quirks) = (
            quirks_of(&settings.quirks),
            quirks_of(&self.defaults.quirks),
        );
        if let (Value::Object(app), Value::Object(connector)) = (&app_quirks, &connector_quirks) {
            for (key, wanted) in connector {
                let have = app.get(key).cloned().unwrap_or(Value::Null);
                compare(&format!("quirks.{key}"), have, wanted.clone());
            }
        }
        found
    }
}

/// `serde_json::to_value` for the settings types, which cannot fail for them (plain data,
/// string keys); a failure would show as `null`, never as a panic.
fn json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// What an app records about the connector it was built from (the `app.connector` column).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectorRecord {
    pub name: String,
    pub version: u32,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    #[serde(default)]
    pub override_vendor_limits: bool,
}

#[cfg(test)]
mod tests;
