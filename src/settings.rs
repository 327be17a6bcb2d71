//! What an app is configured to do: the settings stored as the app's `config` JSON.
//!
//! One definition serves the store (serde), the API (the types derive `poem_openapi::Object`,
//! the one use of poem-openapi outside `api`) and the delivery and reconcile engines, so that
//! the three can never disagree on a field. Validation lives in `service::apps`.
use poem_openapi::{Enum, Object};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::mapping::{self, AttributeMapping, RoleMapping, RoleRule};
use crate::store::entity::app;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Object)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained SCIM calls per second to this app (1..=10000).
    pub per_second: u32,
    /// Calls allowed at once above the sustained rate (1..=10000).
    pub burst: u32,
    /// Further limits, each a bucket of its own: limits over longer windows (30 s, a minute,
    /// an hour) and limits of some operations only (reads, writes, DELETE). A call waits until
    /// every limit that counts it has room (at most 16).
    #[oai(default, skip_serializing_if_is_empty)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<RateWindow>,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            per_second: 10,
            burst: 20,
            windows: Vec::new(),
        }
    }
}

/// `limit` calls per `window_seconds`: a bucket that holds `burst` calls and refills one call
/// every `window_seconds / limit`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Object)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct RateWindow {
    /// Calls allowed per window (1..=1000000).
    pub limit: u32,
    /// The window's length in seconds (1..=86400): 60 for a limit per minute.
    pub window_seconds: u32,
    /// Calls allowed at once (1..=`limit`); absent: `limit`.
    #[oai(skip_serializing_if_is_none)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// The calls it counts: `read` (GET, and a search by POST), `write` (POST, PUT, PATCH),
    /// `delete` (DELETE); absent or empty: every call.
    #[oai(default, skip_serializing_if_is_empty)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<RateOperation>,
}

/// A kind of SCIM call, as rate limits count it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Enum,
)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum RateOperation {
    Read,
    Write,
    Delete,
}

impl RateOperation {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RateOperation::Read => "read",
            RateOperation::Write => "write",
            RateOperation::Delete => "delete",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Object)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct Matching {
    /// The target attribute that identifies an existing account (default `userName`).
    pub target_attribute: String,
}

impl Default for Matching {
    fn default() -> Self {
        Self {
            target_attribute: "userName".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, Object)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct AppScope {
    /// Roster groups whose members are assigned; empty means every active identity.
    #[oai(default)]
    #[serde(default)]
    pub groups: Vec<String>,
    /// Managed email domains; absent means no domain filter. Accounts outside these domains are
    /// never created, changed or deleted.
    #[oai(skip_serializing_if_is_none)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_domains: Option<Vec<String>>,
}

impl AppScope {
    /// The scope as mapping's pure check takes it.
    #[must_use]
    pub fn spec(&self) -> mapping::ScopeSpec {
        mapping::ScopeSpec {
            groups: self.groups.clone(),
            email_domains: self.email_domains.clone(),
        }
    }

    /// Whether the app assigns this person: active, in one of its groups (or no groups named),
    /// and with an email in one of its managed domains (when it names any).
    #[must_use]
    pub fn admits(&self, person: &mapping::IdentityView) -> bool {
        mapping::in_scope(&self.spec(), person)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Object)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct MappingEntry {
    /// Target SCIM path, e.g. `name.givenName` or `emails[type eq "work"].value`.
    pub target: String,
    /// An identity field (`email`, `given_name`, `attributes.cost_center`, …).
    #[oai(skip_serializing_if_is_none)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// A constant.
    #[oai(skip_serializing_if_is_none)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// An expression, e.g. `lower(concat(given_name, ".", family_name))`.
    #[oai(skip_serializing_if_is_none)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Object)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct RoleRuleEntry {
    pub group: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Object)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct RoleMappingEntry {
    /// Target SCIM path of the role, e.g. `roles[primary eq true].value`.
    pub target: String,
    /// Role for people in none of the rules' groups; absent means no role.
    #[oai(skip_serializing_if_is_none)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// In precedence order: the first rule whose group the person is in wins.
    #[oai(default)]
    #[serde(default)]
    pub rules: Vec<RoleRuleEntry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Enum, Default)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum DeprovisionAction {
    #[default]
    Deactivate,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, Object)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct Deprovision {
    /// `deactivate` (PATCH `active=false`) or `delete`.
    #[oai(default)]
    #[serde(default)]
    pub action: DeprovisionAction,
    /// With `deactivate`: DELETE the account this many days later (0..=3650); absent: never.
    #[oai(skip_serializing_if_is_none)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_after_days: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Enum, Default)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum ReconcileMode {
    #[default]
    Report,
    Fix,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Object)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct ReconcileSettings {
    /// Minutes between scheduled runs; 0 turns the schedule off (5..=10080 otherwise).
    #[oai(default = "default_interval")]
    #[serde(default = "default_interval")]
    pub interval_minutes: u32,
    #[oai(default)]
    #[serde(default)]
    pub mode: ReconcileMode,
    /// In fix mode, also deprovision accounts in a managed domain that match no identity.
    #[oai(default)]
    #[serde(default)]
    pub deprovision_unmatched: bool,
}

fn default_interval() -> u32 {
    60
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        Self {
            interval_minutes: default_interval(),
            mode: ReconcileMode::Report,
            deprovision_unmatched: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Object)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct DeletionGuard {
    /// Hold a run that would deprovision more than this share of the app's accounts (0..=1).
    #[oai(default = "default_fraction")]
    #[serde(default = "default_fraction")]
    pub max_fraction: f64,
    /// Hold a run that would deprovision more than this many accounts.
    #[oai(default = "default_max_count")]
    #[serde(default = "default_max_count")]
    pub max_count: u32,
    /// Also guard the event path: when deprovisions caused by HR events (leavers, movers out
    /// of scope) within `window_minutes` would exceed the same limits, the app is paused with
    /// the reason and the rest wait until `POST /apps/{id}/resume` approves them. Off by
    /// default, like the accidental-deletion threshold of other provisioning services.
    #[oai(default)]
    #[serde(default)]
    pub on_events: bool,
    /// The window the event-path guard counts deprovisions in.
    #[oai(default = "default_window_minutes")]
    #[serde(default = "default_window_minutes")]
    pub window_minutes: u32,
}

fn default_window_minutes() -> u32 {
    60
}

fn default_fraction() -> f64 {
    0.2
}

fn default_max_count() -> u32 {
    50
}

impl Default for DeletionGuard {
    fn default() -> Self {
        Self {
            max_fraction: default_fraction(),
            max_count: default_max_count(),
            on_events: false,
            window_minutes: default_window_minutes(),
        }
    }
}

/// Everything about an app except its name, URL and credentials, as stored in `app.config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSettings {
    pub rate_limit: RateLimit,
    pub max_concurrency: u32,
    pub timeout_ms: u32,
    pub max_attempts: u32,
    pub matching: Matching,
    pub scope: AppScope,
    pub mappings: Vec<MappingEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_mapping: Option<RoleMappingEntry>,
    pub group_push: Vec<String>,
    pub deprovision: Deprovision,
    pub reconcile: ReconcileSettings,
    pub deletion_guard: DeletionGuard,
    pub quirks: Value,
    /// Apps with the same group share one set of rate-limit buckets and one `Retry-After`
    /// pause: a vendor whose limits hold for a whole tenant (every app of one organisation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_group: Option<String>,
}

/// The mappings an app gets when it names none: what an Entra ID or Okta admin sees by default.
#[must_use]
pub fn default_mappings() -> Vec<MappingEntry> {
    let src = |target: &str, source: &str| MappingEntry {
        target: target.into(),
        source: Some(source.into()),
        value: None,
        expression: None,
    };
    vec![
        MappingEntry {
            target: "userName".into(),
            source: None,
            value: None,
            expression: Some("default(user_name, email)".into()),
        },
        src("externalId", "employee_id"),
        src("name.givenName", "given_name"),
        src("name.familyName", "family_name"),
        src("displayName", "display_name"),
        src("emails[type eq \"work\"].value", "email"),
        src("title", "title"),
    ]
}

#[derive(Debug, thiserror::Error)]
#[error("stored settings of app {app} are unreadable: {reason}")]
pub struct SettingsError {
    pub app: String,
    pub reason: String,
}

pub fn settings_of(model: &app::Model) -> Result<AppSettings, SettingsError> {
    serde_json::from_value(model.config.clone()).map_err(|e| SettingsError {
        app: model.id.clone(),
        reason: e.to_string(),
    })
}

/// The app's mappings, compiled for rendering.
pub fn compile_mappings(
    settings: &AppSettings,
) -> Result<mapping::CompiledMappings, mapping::MappingError> {
    let mappings: Vec<AttributeMapping> = settings
        .mappings
        .iter()
        .map(|m| AttributeMapping {
            target: m.target.clone(),
            source: m.source.clone(),
            value: m.value.clone(),
            expression: m.expression.clone(),
        })
        .collect();
    let role = settings.role_mapping.as_ref().map(|r| RoleMapping {
        target: r.target.clone(),
        default: r.default.clone(),
        rules: r
            .rules
            .iter()
            .map(|rule| RoleRule {
                group: rule.group.clone(),
                value: rule.value.clone(),
            })
            .collect(),
    });
    mapping::compile(&mappings, role.as_ref())
}
