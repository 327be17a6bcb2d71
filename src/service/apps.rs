//! Apps (SCIM connectors): registration, validation, credentials, pause/resume.
//!
//! The settings types below are stored as the app's `config` JSON and are also the API's wire
//! shape (they derive `poem_openapi::Object`), so one definition serves both; credentials are
//! kept apart and only ever stored encrypted.
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::audit::{self, AuditEntry};
use super::planner;
use super::{Permission, Principal, Roster, ServiceError, ServiceResult, new_id, validate_name};
use std::collections::BTreeMap;

use crate::connectors::{self, ConnectorError, ConnectorRecord};
use crate::delivery::target::PAUSED_BY_TRANSPORT;
use crate::net_guard;
use crate::settings::settings_of as stored_settings;
pub use crate::settings::{
    AppScope, AppSettings, DeletionGuard, Deprovision, DeprovisionAction, MappingEntry, Matching,
    RateLimit, RateWindow, ReconcileMode, ReconcileSettings, RoleMappingEntry, RoleRuleEntry,
    compile_mappings, default_mappings,
};

pub fn settings_of(model: &app::Model) -> ServiceResult<AppSettings> {
    stored_settings(model).map_err(|e| ServiceError::Internal(e.to_string()))
}
use crate::store::entity::app;

/// Credentials as given by the API (plaintext, held as secrets until sealed).
#[derive(Debug, Clone)]
pub enum AuthInput {
    Bearer {
        token: SecretString,
    },
    Basic {
        username: String,
        password: SecretString,
    },
    OAuth2 {
        token_url: String,
        client_id: String,
        client_secret: SecretString,
        scope: Option<String>,
    },
}

/// An app's TLS settings as given by the API; the key is held as a secret until sealed.
#[derive(Debug, Clone, Default)]
pub struct TlsInput {
    pub ca_pem: Option<String>,
    pub client_cert_pem: Option<String>,
    pub client_key_pem: Option<SecretString>,
}

/// Validated TLS settings: the readable part (stored as JSON) and the sealed key, if any.
struct PreparedTls {
    public: Value,
    sealed_key: Option<String>,
}

/// Checks PEM (parsable, certificates and key in their own fields, the key the certificate's,
/// nothing expired, the CA bundle at most 1 MB) and seals the key for app `id`.
fn prepare_tls(roster: &Roster, id: &str, tls: &TlsInput) -> ServiceResult<PreparedTls> {
    let now = chrono::Utc::now().timestamp();
    let invalid = |e: crate::pki::PemError| ServiceError::invalid(e.field, e.reason);
    let mut public = serde_json::Map::new();
    if let Some(ca) = &tls.ca_pem {
        crate::pki::check_ca_bundle(ca, now).map_err(invalid)?;
        public.insert("ca_pem".into(), Value::String(ca.clone()));
    }
    let sealed_key = match (&tls.client_cert_pem, &tls.client_key_pem) {
        (Some(cert), Some(key)) => {
            crate::pki::check_client_identity(cert, key.expose_secret().as_bytes(), now)
                .map_err(invalid)?;
            public.insert("client_cert_pem".into(), Value::String(cert.clone()));
            Some(
                roster
                    .secrets()
                    .seal(
                        key.expose_secret().as_bytes(),
                        &crate::delivery::target::tls_key_aad(id),
                    )
                    .map_err(|e| ServiceError::Internal(e.to_string()))?,
            )
        }
        (None, None) => None,
        (Some(_), None) => {
            return Err(ServiceError::invalid(
                "tls.client_key_pem",
                "is required with `client_cert_pem` (the key is write-only: send it with its \
                 certificate each time)",
            ));
        }
        (None, Some(_)) => {
            return Err(ServiceError::invalid(
                "tls.client_cert_pem",
                "is required with `client_key_pem`",
            ));
        }
    };
    if public.is_empty() {
        return Err(ServiceError::invalid(
            "tls",
            "give `ca_pem`, or `client_cert_pem` with `client_key_pem`, or both (`null` in a \
             PATCH removes the TLS settings)",
        ));
    }
    Ok(PreparedTls {
        public: Value::Object(public),
        sealed_key,
    })
}

/// Fields of a create or a patch; `None` in a patch keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct AppChanges {
    pub name: Option<String>,
    pub base_url: Option<String>,
    pub auth: Option<AuthInput>,
    pub rate_limit: Option<RateLimit>,
    /// `Some(None)` in a patch takes the app out of its group.
    pub rate_limit_group: Option<Option<String>>,
    pub max_concurrency: Option<u32>,
    pub timeout_ms: Option<u32>,
    pub max_attempts: Option<u32>,
    pub matching: Option<Matching>,
    pub scope: Option<AppScope>,
    pub mappings: Option<Vec<MappingEntry>>,
    pub role_mapping: Option<Option<RoleMappingEntry>>,
    pub group_push: Option<Vec<String>>,
    pub deprovision: Option<Deprovision>,
    pub reconcile: Option<ReconcileSettings>,
    pub deletion_guard: Option<DeletionGuard>,
    pub quirks: Option<Value>,
    /// `Some(None)` in a patch removes the TLS settings.
    pub tls: Option<Option<TlsInput>>,
    /// Build the app from a catalogue connector (create only).
    pub connector: Option<ConnectorChoice>,
}

/// `connector`, `connector_params` and `override_vendor_limits` of `POST /apps`.
#[derive(Debug, Clone, Default)]
pub struct ConnectorChoice {
    pub name: String,
    pub params: BTreeMap<String, String>,
    pub override_vendor_limits: bool,
}

fn connector_error(e: &ConnectorError) -> ServiceError {
    ServiceError::invalid(e.field(), e.to_string())
}

/// The connector an app records, if any, and the catalogue's current entry of that name.
#[must_use]
pub fn recorded_connector(
    model: &app::Model,
) -> Option<(ConnectorRecord, Option<&'static connectors::Connector>)> {
    let record: ConnectorRecord = serde_json::from_value(model.connector.clone()?).ok()?;
    let current = connectors::find(&record.name).ok();
    Some((record, current))
}

/// Refuses settings above a hard limit of the app's connector, unless the app was registered
/// with `override_vendor_limits`.
fn check_vendor_limits(
    connector: Option<(&connectors::Connector, bool)>,
    settings: &AppSettings,
) -> ServiceResult<()> {
    let Some((connector, false)) = connector else {
        return Ok(());
    };
    let quirks = crate::scim::Quirks::from_json(&settings.quirks)
        .map_err(|e| ServiceError::invalid("quirks", e.to_string()))?;
    connector
        .check_limits(settings, &quirks)
        .map_err(|e| connector_error(&e))
}

/// An app as the API shows it: credentials reduced to what kind they are and whether set.
#[derive(Debug, Clone)]
pub struct AppView {
    pub model: app::Model,
    pub settings: AppSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppState {
    Active,
    Paused,
    Quarantined,
}

impl AppState {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            AppState::Active => "active",
            AppState::Paused => "paused",
            AppState::Quarantined => "quarantined",
        }
    }
}

fn check_range(field: &str, value: u32, range: std::ops::RangeInclusive<u32>) -> ServiceResult<()> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(ServiceError::invalid(
            field,
            format!("{value} is outside {}..={}", range.start(), range.end()),
        ))
    }
}

fn validate_domain(field: &str, domain: &str) -> ServiceResult<String> {
    let lower = domain.trim().to_ascii_lowercase();
    let ok = !lower.is_empty()
        && lower.len() <= 253
        && lower.contains('.')
        && lower.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(lower)
    } else {
        Err(ServiceError::invalid(
            field,
            format!("`{domain}` is not a domain name"),
        ))
    }
}

/// Windows of at most a day, bursts within their window's limit, each operation named once.
fn validate_windows(windows: &[RateWindow]) -> ServiceResult<()> {
    if windows.len() > 16 {
        return Err(ServiceError::invalid(
            "rate_limit.windows",
            format!("{} windows; at most 16", windows.len()),
        ));
    }
    for (i, w) in windows.iter().enumerate() {
        let field = |name: &str| format!("rate_limit.windows[{i}].{name}");
        check_range(&field("limit"), w.limit, 1..=1_000_000)?;
        check_range(&field("window_seconds"), w.window_seconds, 1..=86_400)?;
        if let Some(burst) = w.burst {
            check_range(&field("burst"), burst, 1..=w.limit).map_err(|_| {
                ServiceError::invalid(
                    field("burst"),
                    format!(
                        "{burst} is outside 1..={}: a window's burst is at most its `limit`",
                        w.limit
                    ),
                )
            })?;
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(twice) = w.operations.iter().find(|op| !seen.insert(**op)) {
            return Err(ServiceError::invalid(
                field("operations"),
                format!("`{}` is named twice", twice.as_str()),
            ));
        }
    }
    Ok(())
}

/// A group key: 1 to 200 characters, none of them a control character.
fn validate_rate_limit_group(group: &str) -> ServiceResult<()> {
    if group.trim().is_empty() || group.chars().count() > 200 || group.chars().any(char::is_control)
    {
        return Err(ServiceError::invalid(
            "rate_limit_group",
            "must be 1 to 200 characters, not blank, without control characters",
        ));
    }
    Ok(())
}

/// Checks every setting, normalising where the meaning is unchanged (domains lowercased).
pub fn validate_settings(settings: &mut AppSettings) -> ServiceResult<()> {
    check_range(
        "rate_limit.per_second",
        settings.rate_limit.per_second,
        1..=10_000,
    )?;
    check_range("rate_limit.burst", settings.rate_limit.burst, 1..=10_000)?;
    validate_windows(&settings.rate_limit.windows)?;
    if let Some(group) = &settings.rate_limit_group {
        validate_rate_limit_group(group)?;
    }
    check_range("max_concurrency", settings.max_concurrency, 1..=256)?;
    check_range("timeout_ms", settings.timeout_ms, 100..=300_000)?;
    check_range("max_attempts", settings.max_attempts, 1..=100)?;
    for (i, g) in settings.scope.groups.iter().enumerate() {
        validate_name(&format!("scope.groups[{i}]"), g)?;
    }
    if let Some(domains) = &mut settings.scope.email_domains {
        if domains.is_empty() {
            return Err(ServiceError::invalid(
                "scope.email_domains",
                "an empty list would exclude everyone; omit the field for no domain filter",
            ));
        }
        for (i, d) in domains.iter_mut().enumerate() {
            *d = validate_domain(&format!("scope.email_domains[{i}]"), d)?;
        }
    }
    if settings.mappings.is_empty() {
        return Err(ServiceError::invalid(
            "mappings",
            "at least one mapping is required",
        ));
    }
    if settings.mappings.len() > 200 {
        return Err(ServiceError::invalid("mappings", "at most 200 mappings"));
    }
    for (i, m) in settings.mappings.iter().enumerate() {
        let given = [
            m.source.is_some(),
            m.value.is_some(),
            m.expression.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if given != 1 {
            return Err(ServiceError::invalid(
                format!("mappings[{i}]"),
                "give exactly one of `source`, `value` or `expression`",
            ));
        }
    }
    if let Some(role) = &settings.role_mapping {
        for (i, r) in role.rules.iter().enumerate() {
            validate_name(&format!("role_mapping.rules[{i}].group"), &r.group)?;
            if r.value.is_empty() || r.value.len() > 256 {
                return Err(ServiceError::invalid(
                    format!("role_mapping.rules[{i}].value"),
                    "must be 1 to 256 characters",
                ));
            }
        }
    }
    compile_mappings(settings).map_err(|e| ServiceError::invalid(e.path, e.message))?;
    let quirks = crate::scim::Quirks::from_json(&settings.quirks)
        .map_err(|e| ServiceError::invalid("quirks", e.to_string()))?;
    let targets: Vec<&str> = settings
        .mappings
        .iter()
        .map(|m| m.target.as_str())
        .chain(settings.role_mapping.iter().map(|r| r.target.as_str()))
        .collect();
    if let Some(reason) = quirks.mapping_refusal(&targets) {
        return Err(ServiceError::invalid("mappings", reason));
    }
    let matching = &settings.matching.target_attribute;
    if !settings.mappings.iter().any(|m| &m.target == matching) {
        return Err(ServiceError::invalid(
            "matching.target_attribute",
            format!("`{matching}` is not the target of any mapping, so no account could match"),
        ));
    }
    if let Some(reason) = crate::mapping::ScimPath::parse(matching)
        .ok()
        .and_then(|p| p.matching_refusal())
    {
        return Err(ServiceError::invalid("matching.target_attribute", reason));
    }
    for (i, g) in settings.group_push.iter().enumerate() {
        validate_name(&format!("group_push[{i}]"), g)?;
    }
    if let Some(days) = settings.deprovision.delete_after_days {
        check_range("deprovision.delete_after_days", days, 0..=3650)?;
        if settings.deprovision.action == DeprovisionAction::Delete {
            return Err(ServiceError::invalid(
                "deprovision.delete_after_days",
                "only applies with action `deactivate` (`delete` deletes at once)",
            ));
        }
    }
    let interval = settings.reconcile.interval_minutes;
    if interval != 0 {
        check_range("reconcile.interval_minutes", interval, 5..=10_080)?;
    }
    let fraction = settings.deletion_guard.max_fraction;
    if !(0.0..=1.0).contains(&fraction) || fraction.is_nan() {
        return Err(ServiceError::invalid(
            "deletion_guard.max_fraction",
            format!("{fraction} is outside 0..=1"),
        ));
    }
    check_range(
        "deletion_guard.max_count",
        settings.deletion_guard.max_count,
        0..=1_000_000,
    )?;
    check_range(
        "deletion_guard.window_minutes",
        settings.deletion_guard.window_minutes,
        1..=10_080,
    )?;
    settings.quirks = normalise_quirks(&settings.quirks)?;
    Ok(())
}

/// Quirks: a profile name (string) or an object of flags; stored as the object.
fn normalise_quirks(raw: &Value) -> ServiceResult<Value> {
    let quirks = crate::scim::Quirks::from_json(raw)
        .map_err(|e| ServiceError::invalid("quirks", e.to_string()))?;
    serde_json::to_value(quirks).map_err(|e| ServiceError::Internal(e.to_string()))
}

fn validate_secret(field: &str, secret: &SecretString) -> ServiceResult<()> {
    let s = secret.expose_secret();
    if s.is_empty() || s.len() > 8192 || s.chars().any(char::is_control) {
        return Err(ServiceError::invalid(
            field,
            "must be 1 to 8192 characters without control characters",
        ));
    }
    Ok(())
}

fn validate_plain(field: &str, value: &str, max: usize) -> ServiceResult<()> {
    if value.is_empty() || value.len() > max || value.chars().any(char::is_control) {
        return Err(ServiceError::invalid(
            field,
            format!("must be 1 to {max} characters without control characters"),
        ));
    }
    Ok(())
}

/// Splits validated credentials into the public part (stored as JSON) and the secret (sealed).
async fn prepare_auth(
    roster: &Roster,
    auth: &AuthInput,
) -> ServiceResult<(&'static str, Value, SecretString)> {
    match auth {
        AuthInput::Bearer { token } => {
            validate_secret("auth.token", token)?;
            Ok(("bearer", json!({}), token.clone()))
        }
        AuthInput::Basic { username, password } => {
            validate_plain("auth.username", username, 256)?;
            if username.contains(':') {
                return Err(ServiceError::invalid(
                    "auth.username",
                    "must not contain `:`",
                ));
            }
            validate_secret("auth.password", password)?;
            Ok(("basic", json!({"username": username}), password.clone()))
        }
        AuthInput::OAuth2 {
            token_url,
            client_id,
            client_secret,
            scope,
        } => {
            let url = net_guard::check_target_url(token_url, roster.transport_policy())
                .await
                .map_err(|e| ServiceError::invalid("auth.token_url", e))?;
            validate_plain("auth.client_id", client_id, 512)?;
            validate_secret("auth.client_secret", client_secret)?;
            if let Some(scope) = scope {
                validate_plain("auth.scope", scope, 1024)?;
            }
            Ok((
                "oauth2",
                json!({"token_url": url.as_str(), "client_id": client_id, "scope": scope}),
                client_secret.clone(),
            ))
        }
    }
}

async fn validate_base_url(roster: &Roster, raw: &str) -> ServiceResult<String> {
    if raw.len() > 2048 {
        return Err(ServiceError::invalid(
            "base_url",
            "longer than 2048 characters",
        ));
    }
    let url = net_guard::check_target_url(raw, roster.transport_policy())
        .await
        .map_err(|e| ServiceError::invalid("base_url", e))?;
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

fn audit_view(model: &app::Model) -> Value {
    // Never includes the ciphertext: the `app::Model` serialiser skips it.
    serde_json::to_value(model).unwrap_or(Value::Null)
}

/// A URL's origin (scheme, host, port): where an app's credentials are sent. `None` for what
/// has no such origin, which never equals anything.
fn origin_of(raw: &str) -> Option<String> {
    let origin = url::Url::parse(raw).ok()?.origin();
    origin.is_tuple().then(|| origin.ascii_serialization())
}

fn origin_change(before: &str, after: &str) -> Option<Value> {
    let (from, to) = (origin_of(before), origin_of(after));
    (from.is_none() || from != to).then(|| json!({"from": from, "to": to}))
}

fn token_url_of(auth_config: &Value) -> Option<&str> {
    auth_config.get("token_url").and_then(Value::as_str)
}

/// What only an `admin` key may change, compared with `before` (the defaults, for a new app):
/// each entry loosens the deletion guard or turns on a way of removing accounts.
fn changes_needing_admin(before: &AppSettings, after: &AppSettings) -> Vec<String> {
    let (bg, ag) = (&before.deletion_guard, &after.deletion_guard);
    let (bd, ad) = (&before.deprovision, &after.deprovision);
    let (br, ar) = (&before.reconcile, &after.reconcile);
    let mut found = Vec::new();
    if ag.max_fraction > bg.max_fraction {
        found.push(format!(
            "deletion_guard.max_fraction raised from {} to {}",
            bg.max_fraction, ag.max_fraction
        ));
    }
    if ag.max_count > bg.max_count {
        found.push(format!(
            "deletion_guard.max_count raised from {} to {}",
            bg.max_count, ag.max_count
        ));
    }
    if ag.window_minutes < bg.window_minutes {
        found.push(format!(
            "deletion_guard.window_minutes shortened from {} to {}",
            bg.window_minutes, ag.window_minutes
        ));
    }
    if bg.on_events && !ag.on_events {
        found.push("deletion_guard.on_events turned off".into());
    }
    if ad.action == DeprovisionAction::Delete && bd.action != DeprovisionAction::Delete {
        found.push("deprovision.action set to `delete`".into());
    }
    match (bd.delete_after_days, ad.delete_after_days) {
        (None, Some(days)) => found.push(format!("deprovision.delete_after_days set to {days}")),
        (Some(old), Some(days)) if days < old => found.push(format!(
            "deprovision.delete_after_days shortened from {old} to {days}"
        )),
        _ => {}
    }
    if ar.deprovision_unmatched && !br.deprovision_unmatched {
        found.push("reconcile.deprovision_unmatched turned on".into());
    } else if ar.deprovision_unmatched
        && ar.mode == ReconcileMode::Fix
        && br.mode != ReconcileMode::Fix
    {
        found.push("reconcile.mode set to `fix` with deprovision_unmatched on".into());
    }
    // With unmatched accounts deprovisioned, what an account is matched by decides whose it
    // is: another matching attribute, or another mapping of it, can make every account
    // "nobody's" for the next fix run.
    if ar.deprovision_unmatched && matching_changed(before, after) {
        found.push(
            "matching (its attribute or the mappings that render it) changed with reconcile.deprovision_unmatched on"
                .into(),
        );
    }
    // With unmatched accounts deprovisioned, the managed domains say which accounts may be
    // closed: widening them turns accounts that were never touched (other companies',
    // external users') into ones a fix run closes.
    if ar.deprovision_unmatched
        && let Some(widened) = domains_widened(
            before.scope.email_domains.as_deref(),
            after.scope.email_domains.as_deref(),
        )
    {
        found.push(format!(
            "scope.email_domains widened ({widened}) with reconcile.deprovision_unmatched on"
        ));
    }
    found
}

/// Whether the matching attribute, or the mappings that render it, differ.
fn matching_changed(before: &AppSettings, after: &AppSettings) -> bool {
    let rendering = |s: &AppSettings| -> Vec<crate::settings::MappingEntry> {
        s.mappings
            .iter()
            .filter(|m| m.target.eq_ignore_ascii_case(&s.matching.target_attribute))
            .cloned()
            .collect()
    };
    !before
        .matching
        .target_attribute
        .eq_ignore_ascii_case(&after.matching.target_attribute)
        || rendering(before) != rendering(after)
}

/// How `after`'s managed domains reach beyond `before`'s (`None`: every domain), if they do.
fn domains_widened(before: Option<&[String]>, after: Option<&[String]>) -> Option<String> {
    let before = before?;
    let Some(after) = after else {
        return Some("the domain filter removed".into());
    };
    let added: Vec<&str> = after
        .iter()
        .filter(|d| !before.iter().any(|b| b.eq_ignore_ascii_case(d)))
        .map(String::as_str)
        .collect();
    (!added.is_empty()).then(|| format!("added {}", added.join(", ")))
}

/// Refuses what `changes_needing_admin` finds unless `principal` is an admin.
pub(super) fn check_authority(
    principal: &Principal,
    before: &AppSettings,
    after: &AppSettings,
) -> ServiceResult<()> {
    if principal.require(Permission::Admin).is_ok() {
        return Ok(());
    }
    let found = changes_needing_admin(before, after);
    if found.is_empty() {
        Ok(())
    } else {
        Err(ServiceError::NeedsAdmin(format!(
            "{} (weakening the deletion guard or switching on destructive deprovisioning)",
            found.join("; ")
        )))
    }
}

/// `If-Match` of a PATCH: the versions the caller last saw (`*` is `None`: any version).
#[derive(Debug, Clone, Default)]
pub struct ExpectedVersions(pub Vec<i64>);

impl Roster {
    pub async fn create_app(
        &self,
        principal: &Principal,
        changes: AppChanges,
    ) -> ServiceResult<AppView> {
        let name = changes
            .name
            .clone()
            .ok_or_else(|| ServiceError::invalid("name", "is required"))?;
        validate_name("name", &name)?;
        let connector = match &changes.connector {
            Some(choice) => Some(connectors::find(&choice.name).map_err(|e| connector_error(&e))?),
            None => None,
        };
        // An explicit `base_url` replaces the connector's template (proxies, tests).
        let raw_base_url = match (&changes.base_url, connector, &changes.connector) {
            (Some(url), _, _) => url.clone(),
            (None, Some(connector), Some(choice)) => connector
                .base_url(&choice.params)
                .map_err(|e| connector_error(&e))?,
            _ => return Err(ServiceError::invalid("base_url", "is required")),
        };
        let base_url = validate_base_url(self, &raw_base_url).await?;
        let auth = changes
            .auth
            .clone()
            .ok_or_else(|| ServiceError::invalid("auth", "is required"))?;
        let (auth_type, auth_config, secret) = prepare_auth(self, &auth).await?;
        if let Some(connector) = connector
            && !connector.auth_types.iter().any(|t| t == auth_type)
        {
            return Err(ServiceError::invalid(
                "auth.type",
                format!(
                    "`{auth_type}` is not accepted by {}; it takes {} ({})",
                    connector.display_name,
                    connector.auth_types.join(", "),
                    connector.credential.fact
                ),
            ));
        }
        let defaults = connector.map(|c| &c.defaults);
        let mut settings = AppSettings {
            rate_limit: changes
                .rate_limit
                .clone()
                .or_else(|| defaults.map(|d| d.rate_limit.clone()))
                .unwrap_or_default(),
            max_concurrency: changes
                .max_concurrency
                .or_else(|| defaults.map(|d| d.max_concurrency))
                .unwrap_or(4),
            timeout_ms: changes.timeout_ms.unwrap_or(30_000),
            max_attempts: changes.max_attempts.unwrap_or(8),
            matching: changes.matching.clone().unwrap_or_default(),
            scope: changes.scope.clone().unwrap_or_default(),
            mappings: changes
                .mappings
                .clone()
                .or_else(|| defaults.map(|d| d.mappings.clone()))
                .unwrap_or_else(default_mappings),
            role_mapping: changes.role_mapping.clone().flatten(),
            group_push: changes.group_push.clone().unwrap_or_default(),
            deprovision: changes
                .deprovision
                .clone()
                .or_else(|| defaults.map(|d| d.deprovision.clone()))
                .unwrap_or_default(),
            reconcile: changes.reconcile.clone().unwrap_or_default(),
            deletion_guard: changes.deletion_guard.clone().unwrap_or_default(),
            quirks: match connector {
                Some(c) => c.quirks_with(changes.quirks.as_ref()),
                None => changes.quirks.clone().unwrap_or_else(|| json!({})),
            },
            // Explicit, else the connector's, filled from `connector_params` (Slack's limits
            // hold for a whole organisation: its apps share them).
            rate_limit_group: match (&changes.rate_limit_group, connector, &changes.connector) {
                (Some(explicit), _, _) => explicit.clone(),
                (None, Some(connector), Some(choice)) => connector
                    .rate_limit_group(&choice.params)
                    .map_err(|e| connector_error(&e))?,
                _ => None,
            },
        };
        validate_settings(&mut settings)?;
        let record = match (connector, &changes.connector) {
            (Some(connector), Some(choice)) => {
                check_vendor_limits(Some((connector, choice.override_vendor_limits)), &settings)?;
                Some(ConnectorRecord {
                    name: connector.name.clone(),
                    version: connector.version,
                    params: choice.params.clone(),
                    override_vendor_limits: choice.override_vendor_limits,
                })
            }
            _ => None,
        };
        let record = record
            .map(|r| serde_json::to_value(r).map_err(|e| ServiceError::Internal(e.to_string())))
            .transpose()?;
        let baseline = AppSettings {
            deletion_guard: DeletionGuard::default(),
            deprovision: Deprovision::default(),
            reconcile: ReconcileSettings::default(),
            ..settings.clone()
        };
        check_authority(principal, &baseline, &settings)?;
        let id = new_id();
        let tls = match changes.tls.clone().flatten() {
            Some(input) => Some(prepare_tls(self, &id, &input)?),
            None => None,
        };
        let sealed = self
            .secrets()
            .seal(secret.expose_secret().as_bytes(), &id)
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let now = chrono::Utc::now();
        let config =
            serde_json::to_value(&settings).map_err(|e| ServiceError::Internal(e.to_string()))?;
        let tx = self.write_tx().await?;
        self.check_sealing_key(&*tx).await?;
        if app::Entity::find()
            .filter(app::Column::Name.eq(name.as_str()))
            .one(&*tx)
            .await?
            .is_some()
        {
            return Err(ServiceError::Conflict(format!(
                "an app named `{name}` exists already"
            )));
        }
        let model = app::ActiveModel {
            id: Set(id.clone()),
            name: Set(name),
            base_url: Set(base_url),
            auth_type: Set(auth_type.into()),
            auth_config: Set(auth_config),
            secret_ciphertext: Set(Some(sealed)),
            secret_key_id: Set(Some(self.secrets().key_id().to_owned())),
            config: Set(config),
            state: Set(AppState::Active.as_str().into()),
            state_reason: Set(None),
            paused_by: Set(None),
            connector: Set(record),
            tls: Set(tls.as_ref().map(|t| t.public.clone())),
            tls_key_id: Set(tls
                .as_ref()
                .and_then(|t| t.sealed_key.as_ref())
                .map(|_| self.secrets().key_id().to_owned())),
            tls_key_ciphertext: Set(tls.and_then(|t| t.sealed_key)),
            version: Set(1),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(&*tx)
        .await?;
        audit::record(
            &*tx,
            Some(principal),
            AuditEntry {
                action: "app.create",
                object_type: "app",
                object_id: Some(&id),
                before: None,
                after: Some(audit_view(&model)),
            },
        )
        .await?;
        // Provisioning starts at once for everyone in scope, as turning provisioning on does
        // in Entra ID or Okta.
        planner::plan_full_sync(&*tx, &model, &settings).await?;
        tx.commit().await?;
        self.notify_jobs();
        Ok(AppView { model, settings })
    }

    pub async fn list_apps(&self) -> ServiceResult<Vec<AppView>> {
        let models = app::Entity::find()
            .order_by_asc(app::Column::Name)
            .all(self.db())
            .await?;
        models
            .into_iter()
            .map(|model| {
                Ok(AppView {
                    settings: settings_of(&model)?,
                    model,
                })
            })
            .collect()
    }

    pub async fn get_app(&self, id: &str) -> ServiceResult<AppView> {
        let model = app::Entity::find_by_id(id)
            .one(self.db())
            .await?
            .ok_or_else(|| ServiceError::not_found("app", id))?;
        Ok(AppView {
            settings: settings_of(&model)?,
            model,
        })
    }

    /// Applies `changes` onto the app as it is inside the write transaction (the row is read
    /// under the write: PostgreSQL's row lock and SQLite's writer turn make concurrent patches
    /// take turns), so that a patch never reverts a field another patch set meanwhile.
    /// `expected`, from `If-Match`, turns a stale read into a 412 instead.
    pub async fn update_app(
        &self,
        principal: &Principal,
        id: &str,
        changes: AppChanges,
        expected: Option<ExpectedVersions>,
    ) -> ServiceResult<AppView> {
        // What needs no row is checked and prepared first, so that DNS look-ups and sealing
        // never hold the writer.
        if let Some(name) = &changes.name {
            validate_name("name", name)?;
        }
        let base_url = match &changes.base_url {
            Some(raw) => Some(validate_base_url(self, raw).await?),
            None => None,
        };
        let new_auth = match &changes.auth {
            Some(auth) => {
                let (auth_type, auth_config, secret) = prepare_auth(self, auth).await?;
                let sealed = self
                    .secrets()
                    .seal(secret.expose_secret().as_bytes(), id)
                    .map_err(|e| ServiceError::Internal(e.to_string()))?;
                Some((auth_type, auth_config, sealed))
            }
            None => None,
        };
        let new_tls = match &changes.tls {
            Some(Some(input)) => Some(Some(prepare_tls(self, id, input)?)),
            Some(None) => Some(None),
            None => None,
        };
        // A held app (plain http to a public host) is released by the change that makes both
        // of its URLs allowed; judged here, outside the writer, because it may resolve names.
        let released_from = match (&base_url, &new_auth) {
            (None, None) => None,
            _ => match app::Entity::find_by_id(id).one(self.db()).await? {
                Some(stored) if stored.paused_by.as_deref() == Some(PAUSED_BY_TRANSPORT) => {
                    let final_base = base_url.as_deref().unwrap_or(&stored.base_url);
                    let final_auth = new_auth
                        .as_ref()
                        .map_or(&stored.auth_config, |(_, config, _)| config);
                    plain_http_refusal_of(final_base, final_auth, self.transport_policy())
                        .await
                        .is_none()
                        .then_some((stored.base_url, stored.auth_config))
                }
                _ => None,
            },
        };
        let tx = self.write_tx().await?;
        if new_auth.is_some()
            || matches!(
                &new_tls,
                Some(Some(PreparedTls {
                    sealed_key: Some(_),
                    ..
                }))
            )
        {
            self.check_sealing_key(&*tx).await?;
        }
        let Some(current) = app::Entity::find_by_id(id)
            .lock_exclusive()
            .one(&*tx)
            .await?
        else {
            return Err(ServiceError::not_found("app", id));
        };
        if let Some(ExpectedVersions(versions)) = &expected
            && !versions.contains(&current.version)
        {
            return Err(ServiceError::PreconditionFailed(format!(
                "the app is at version {}, not the one given in If-Match: read it again \
                 (its ETag) and send the change with that version",
                current.version
            )));
        }
        let current_settings = settings_of(&current)?;
        let mut settings = current_settings.clone();
        let mut model: app::ActiveModel = current.clone().into();
        if let Some(name) = &changes.name {
            model.name = Set(name.clone());
        }
        if current.paused_by.as_deref() == Some(PAUSED_BY_TRANSPORT)
            && released_from.as_ref().is_some_and(|(base, auth)| {
                *base == current.base_url && *auth == current.auth_config
            })
        {
            model.state = Set(AppState::Active.as_str().into());
            model.state_reason = Set(None);
            model.paused_by = Set(None);
        }
        // Credentials go where `base_url` (and `token_url`) point: moving them to another
        // origin takes credentials sent in the same request, so that a key allowed to edit an
        // app cannot redirect the secret it holds to a host of its choosing.
        let mut moved = serde_json::Map::new();
        if let Some(url) = &base_url {
            if let Some(change) = origin_change(&current.base_url, url) {
                if new_auth.is_none() {
                    return Err(ServiceError::invalid(
                        "base_url",
                        format!(
                            "moving the app from {} to another origin ({}) sends its \
                             credentials there: send `auth` again in the same request",
                            change["from"].as_str().unwrap_or("its origin"),
                            change["to"].as_str().unwrap_or("a new origin"),
                        ),
                    ));
                }
                moved.insert("base_url".into(), change);
            }
            model.base_url = Set(url.clone());
        }
        if let Some((auth_type, auth_config, sealed)) = new_auth {
            if let (Some(before), Some(after)) = (
                token_url_of(&current.auth_config),
                token_url_of(&auth_config),
            ) && let Some(change) = origin_change(before, after)
            {
                moved.insert("token_url".into(), change);
            }
            model.auth_type = Set(auth_type.into());
            model.auth_config = Set(auth_config);
            model.secret_ciphertext = Set(Some(sealed));
            model.secret_key_id = Set(Some(self.secrets().key_id().to_owned()));
        }
        match new_tls {
            Some(Some(tls)) => {
                model.tls = Set(Some(tls.public));
                model.tls_key_id = Set(tls
                    .sealed_key
                    .as_ref()
                    .map(|_| self.secrets().key_id().to_owned()));
                model.tls_key_ciphertext = Set(tls.sealed_key);
            }
            Some(None) => {
                model.tls = Set(None);
                model.tls_key_id = Set(None);
                model.tls_key_ciphertext = Set(None);
            }
            None => {}
        }
        macro_rules! apply {
            ($($field:ident),*) => {$(
                if let Some(v) = changes.$field.clone() { settings.$field = v; }
            )*};
        }
        apply!(
            rate_limit,
            rate_limit_group,
            max_concurrency,
            timeout_ms,
            max_attempts,
            matching,
            scope,
            mappings,
            role_mapping,
            group_push,
            deprovision,
            reconcile,
            deletion_guard,
            quirks
        );
        validate_settings(&mut settings)?;
        check_authority(principal, &current_settings, &settings)?;
        if let Some((record, Some(connector))) = recorded_connector(&current) {
            check_vendor_limits(Some((connector, record.override_vendor_limits)), &settings)?;
        }
        let resync = settings.scope != current_settings.scope
            || settings.mappings != current_settings.mappings
            || settings.role_mapping != current_settings.role_mapping
            || settings.group_push != current_settings.group_push
            || settings.matching != current_settings.matching;
        model.config =
            Set(serde_json::to_value(&settings)
                .map_err(|e| ServiceError::Internal(e.to_string()))?);
        model.version = Set(current.version + 1);
        model.updated_at = Set(chrono::Utc::now());
        if let Some(name) = &changes.name {
            let clash = app::Entity::find()
                .filter(app::Column::Name.eq(name.as_str()))
                .filter(app::Column::Id.ne(id))
                .one(&*tx)
                .await?;
            if clash.is_some() {
                return Err(ServiceError::Conflict(format!(
                    "an app named `{name}` exists already"
                )));
            }
        }
        let updated = model.update(&*tx).await?;
        let mut after = audit_view(&updated);
        if !moved.is_empty() {
            // Where the credentials now go, said apart from the full row so that a reviewer
            // sees it; the secrets themselves are never in an audit row.
            moved.insert("credentials_replaced".into(), Value::Bool(true));
            if let Some(obj) = after.as_object_mut() {
                obj.insert("origin_change".into(), Value::Object(moved));
            }
        }
        audit::record(
            &*tx,
            Some(principal),
            AuditEntry {
                action: "app.update",
                object_type: "app",
                object_id: Some(id),
                before: Some(audit_view(&current)),
                after: Some(after),
            },
        )
        .await?;
        if resync {
            // New scope or mappings change what every account should look like.
            planner::plan_full_sync(&*tx, &updated, &settings).await?;
        }
        tx.commit().await?;
        self.notify_jobs();
        Ok(AppView {
            model: updated,
            settings,
        })
    }

    pub async fn delete_app(&self, principal: &Principal, id: &str) -> ServiceResult<()> {
        let tx = self.write_tx().await?;
        let Some(model) = app::Entity::find_by_id(id).one(&*tx).await? else {
            return Err(ServiceError::not_found("app", id));
        };
        app::Entity::delete_by_id(id).exec(&*tx).await?;
        audit::record(
            &*tx,
            Some(principal),
            AuditEntry {
                action: "app.delete",
                object_type: "app",
                object_id: Some(id),
                before: Some(audit_view(&model)),
                after: None,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Pause or resume delivery to an app. Resuming also clears a quarantine. A pause here is
    /// an operator's; a resume here approves nothing the deletion guard holds: the guard keeps
    /// counting, so deprovisions it held pause the app again at its limit
    /// (`approve_deprovisions` is the one way to release them).
    pub async fn set_app_state(
        &self,
        principal: &Principal,
        id: &str,
        state: AppState,
        reason: Option<String>,
    ) -> ServiceResult<AppView> {
        if state == AppState::Active {
            self.check_resumable(id).await?;
        }
        let tx = self.write_tx().await?;
        let Some(current) = app::Entity::find_by_id(id).one(&*tx).await? else {
            return Err(ServiceError::not_found("app", id));
        };
        let mut model: app::ActiveModel = current.clone().into();
        model.state = Set(state.as_str().into());
        model.state_reason = Set(reason);
        model.paused_by = Set((state == AppState::Paused).then(|| PAUSED_BY_OPERATOR.to_owned()));
        model.updated_at = Set(chrono::Utc::now());
        let updated = model.update(&*tx).await?;
        let action = match state {
            AppState::Paused => "app.pause",
            _ => "app.resume",
        };
        audit::record(
            &*tx,
            Some(principal),
            AuditEntry {
                action,
                object_type: "app",
                object_id: Some(id),
                before: Some(state_audit(&current)),
                after: Some(json!({"state": updated.state})),
            },
        )
        .await?;
        tx.commit().await?;
        let settings = settings_of(&updated)?;
        Ok(AppView {
            model: updated,
            settings,
        })
    }

    /// An admin's approval of the deprovisions the deletion guard held: the app, which the
    /// guard paused, is active again and the deprovisions waiting now are let through (the
    /// guard reads this audit row, `crate::delivery::guard::APPROVAL_ACTION`). `Conflict` when the guard does
    /// not hold the app (an operator's pause, a quarantine, an active app): nothing to approve.
    /// The caller checks that the principal is an admin.
    pub async fn approve_deprovisions(
        &self,
        principal: &Principal,
        id: &str,
    ) -> ServiceResult<AppView> {
        self.check_resumable(id).await?;
        let tx = self.write_tx().await?;
        let Some(current) = app::Entity::find_by_id(id).one(&*tx).await? else {
            return Err(ServiceError::not_found("app", id));
        };
        if current.state != AppState::Paused.as_str()
            || current.paused_by.as_deref() != Some(crate::delivery::guard::PAUSED_BY_GUARD)
        {
            let why = match (current.state.as_str(), current.paused_by.as_deref()) {
                ("paused", _) => "it was paused by an operator".to_owned(),
                (state, _) => format!("it is `{state}`"),
            };
            return Err(ServiceError::Conflict(format!(
                "app {} is not held by the deletion guard ({why}): there are no held \
                 deprovisions to approve; resume without `approve_deprovisions`",
                current.name
            )));
        }
        // Conditional, so that two approvals at once release the waiting deprovisions once.
        let changed = app::Entity::update_many()
            .col_expr(
                app::Column::State,
                sea_orm::sea_query::Expr::value(AppState::Active.as_str()),
            )
            .col_expr(
                app::Column::StateReason,
                sea_orm::sea_query::Expr::value(Option::<String>::None),
            )
            .col_expr(
                app::Column::PausedBy,
                sea_orm::sea_query::Expr::value(Option::<String>::None),
            )
            .col_expr(
                app::Column::UpdatedAt,
                sea_orm::sea_query::Expr::value(chrono::Utc::now()),
            )
            .filter(app::Column::Id.eq(id))
            .filter(app::Column::State.eq(AppState::Paused.as_str()))
            .filter(app::Column::PausedBy.eq(crate::delivery::guard::PAUSED_BY_GUARD))
            .exec(&*tx)
            .await?;
        if changed.rows_affected != 1 {
            return Err(ServiceError::Conflict(format!(
                "app {} changed state while its deprovisions were being approved; try again",
                current.name
            )));
        }
        let released =
            crate::store::queue::pending_in_lane(&*tx, id, crate::store::queue::Lane::Deprovision)
                .await?;
        audit::record(
            &*tx,
            Some(principal),
            AuditEntry {
                action: crate::delivery::guard::APPROVAL_ACTION,
                object_type: "app",
                object_id: Some(id),
                before: Some(state_audit(&current)),
                after: Some(json!({"state": "active", "deprovisions_released": released})),
            },
        )
        .await?;
        let updated = app::Entity::find_by_id(id)
            .one(&*tx)
            .await?
            .ok_or_else(|| ServiceError::not_found("app", id))?;
        tx.commit().await?;
        let settings = settings_of(&updated)?;
        Ok(AppView {
            model: updated,
            settings,
        })
    }
}

/// `app.paused_by` of a pause through the API.
const PAUSED_BY_OPERATOR: &str = "operator";

/// An app's state for the audit rows of pause, resume and approval.
fn state_audit(app: &app::Model) -> serde_json::Value {
    json!({"state": app.state, "reason": app.state_reason, "paused_by": app.paused_by})
}

impl Roster {
    /// Reads the target's `/ServiceProviderConfig` with the app's credentials: reachability,
    /// authentication and what the target supports, or why it is not usable.
    pub async fn test_connection(&self, id: &str) -> ServiceResult<crate::scim::ConnectionReport> {
        let view = self.get_app(id).await?;
        let client = crate::delivery::target::client_for(
            &view.model,
            &view.settings,
            self.secrets(),
            self.transport_policy(),
            None,
            None,
        );
        let client = match client {
            Ok(client) => client,
            // Held for plain http: say why, and send nothing.
            Err(e @ crate::delivery::target::TargetError::PlainHttp { .. }) => {
                return Ok(crate::scim::ConnectionReport {
                    reachable: false,
                    auth_ok: false,
                    capabilities: None,
                    reason: Some(e.to_string()),
                });
            }
            Err(e) => return Err(ServiceError::Internal(e.to_string())),
        };
        let mut report = client.test_connection().await;
        // Credentials refused: say what the vendor wants, in its own terms (the token's issuer
        // and scope), for an app built from a connector.
        if !report.auth_ok
            && report.reachable
            && let Some((_, Some(connector))) = recorded_connector(&view.model)
            && let Some(reason) = &mut report.reason
        {
            reason.push_str(&format!(
                "; {} expects: {} ({})",
                connector.display_name, connector.credential.fact, connector.credential.source
            ));
        }
        Ok(report)
    }
}

/// Why an app's stored URLs may not be used under `policy`: `base_url` or `token_url` is plain
/// http to a public host. `None` when both are fine.
async fn plain_http_refusal_of(
    base_url: &str,
    auth_config: &Value,
    policy: net_guard::TransportPolicy,
) -> Option<String> {
    for (field, raw) in [
        ("base_url", Some(base_url)),
        ("auth.token_url", token_url_of(auth_config)),
    ] {
        let Some(url) = raw.and_then(|r| url::Url::parse(r).ok()) else {
            continue;
        };
        if let Some(reason) = net_guard::plain_http_refusal(&url, policy).await {
            return Some(format!("{field}: {reason}"));
        }
    }
    None
}

impl Roster {
    /// At start: every app whose `base_url` or `token_url` is plain http to a public host (stored
    /// before https was required, or while `ROSTER_ALLOW_INSECURE_HTTP` was set) is held:
    /// paused with `paused_by = transport` and the reason, so that its jobs wait (neither sent
    /// nor dead) until the URL is fixed. Apps held so before whose URLs are now allowed are
    /// released. Each is logged and audited. Returns the names of the apps held now.
    pub async fn hold_plain_http_apps(&self) -> ServiceResult<Vec<String>> {
        let policy = self.transport_policy();
        let mut held = Vec::new();
        for model in app::Entity::find().all(self.db()).await? {
            let refusal = plain_http_refusal_of(&model.base_url, &model.auth_config, policy).await;
            let held_by_transport = model.paused_by.as_deref() == Some(PAUSED_BY_TRANSPORT);
            let (state, reason, paused_by, action) = match &refusal {
                Some(reason) => {
                    tracing::warn!(
                        app = %model.name,
                        app_id = %model.id,
                        reason = %reason,
                        "App uses plain http to a public host: nothing is sent to it until its URL is https"
                    );
                    held.push(model.name.clone());
                    // An operator's or the deletion guard's pause stays theirs; resuming it is
                    // refused while the URL is refused.
                    if model.state == AppState::Paused.as_str() {
                        continue;
                    }
                    (
                        AppState::Paused,
                        Some(format!("held: {reason}")),
                        Some(PAUSED_BY_TRANSPORT.to_owned()),
                        "app.held_plain_http",
                    )
                }
                None if held_by_transport => {
                    tracing::info!(app = %model.name, app_id = %model.id, "App's URLs are allowed now: released");
                    (AppState::Active, None, None, "app.released_plain_http")
                }
                None => continue,
            };
            let tx = self.write_tx().await?;
            let mut active: app::ActiveModel = model.clone().into();
            active.state = Set(state.as_str().into());
            active.state_reason = Set(reason);
            active.paused_by = Set(paused_by);
            active.updated_at = Set(chrono::Utc::now());
            let updated = active.update(&*tx).await?;
            audit::record(
                &*tx,
                None,
                AuditEntry {
                    action,
                    object_type: "app",
                    object_id: Some(&model.id),
                    before: Some(state_audit(&model)),
                    after: Some(state_audit(&updated)),
                },
            )
            .await?;
            tx.commit().await?;
        }
        if !held.is_empty() {
            self.notify_jobs();
        }
        Ok(held)
    }

    /// Refuses to resume an app whose stored URLs are plain http to a public host.
    async fn check_resumable(&self, id: &str) -> ServiceResult<()> {
        let model = app::Entity::find_by_id(id)
            .one(self.db())
            .await?
            .ok_or_else(|| ServiceError::not_found("app", id))?;
        match plain_http_refusal_of(&model.base_url, &model.auth_config, self.transport_policy())
            .await
        {
            Some(reason) => Err(ServiceError::Conflict(format!(
                "app {} stays held: {reason}; change the URL to https:// (PATCH the app), which \
                 releases it",
                model.name
            ))),
            None => Ok(()),
        }
    }
}

impl Roster {
    /// Re-encrypts every app credential that is not sealed with the current key (after
    /// `ROSTER_SECRET_KEY` changed and the old one moved to `ROSTER_SECRET_KEY_PREVIOUS`).
    /// Returns how many were re-encrypted; one audit row each.
    pub async fn rotate_credentials(&self) -> ServiceResult<u64> {
        let tx = self.write_tx().await?;
        // Taken first: a sealer on PostgreSQL holds it shared, so no credential sealed with the
        // old key commits after this scan.
        super::secret_key::recorded(&*tx, true).await?;
        let mut rotated = 0;
        for model in app::Entity::find().all(&*tx).await? {
            rotated += self.rotate_tls_key(&*tx, &model).await?;
            let (Some(sealed), Some(key_id)) = (&model.secret_ciphertext, &model.secret_key_id)
            else {
                continue;
            };
            if self.secrets().is_current(key_id) {
                continue;
            }
            let plain = self
                .secrets()
                .open(sealed, key_id, &model.id)
                .map_err(|e| {
                    ServiceError::Conflict(format!(
                        "app {}: {e}; set ROSTER_SECRET_KEY_PREVIOUS to the key it was sealed with",
                        model.name
                    ))
                })?;
            let resealed = self
                .secrets()
                .seal(&plain, &model.id)
                .map_err(|e| ServiceError::Internal(e.to_string()))?;
            let old_key = key_id.clone();
            let mut active: app::ActiveModel = model.clone().into();
            active.secret_ciphertext = Set(Some(resealed));
            active.secret_key_id = Set(Some(self.secrets().key_id().to_owned()));
            active.update(&*tx).await?;
            audit::record(
                &*tx,
                None,
                AuditEntry {
                    action: "app.credentials_rotated",
                    object_type: "app",
                    object_id: Some(&model.id),
                    before: Some(json!({"secret_key_id": old_key})),
                    after: Some(json!({"secret_key_id": self.secrets().key_id()})),
                },
            )
            .await?;
            rotated += 1;
        }
        super::secret_key::record_current(&*tx, self.secrets().key_id()).await?;
        tx.commit().await?;
        Ok(rotated)
    }
}

impl Roster {
    /// Re-seals the app's TLS key with the current key when another sealed it; 1 if it did.
    async fn rotate_tls_key(
        &self,
        conn: &impl sea_orm::ConnectionTrait,
        model: &app::Model,
    ) -> ServiceResult<u64> {
        let (Some(sealed), Some(key_id)) = (&model.tls_key_ciphertext, &model.tls_key_id) else {
            return Ok(0);
        };
        if self.secrets().is_current(key_id) {
            return Ok(0);
        }
        let aad = crate::delivery::target::tls_key_aad(&model.id);
        let plain = self.secrets().open(sealed, key_id, &aad).map_err(|e| {
            ServiceError::Conflict(format!(
                "app {} (tls key): {e}; set ROSTER_SECRET_KEY_PREVIOUS to the key it was sealed \
                 with",
                model.name
            ))
        })?;
        let resealed = self
            .secrets()
            .seal(&plain, &aad)
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        app::Entity::update_many()
            .col_expr(
                app::Column::TlsKeyCiphertext,
                sea_orm::sea_query::Expr::value(resealed),
            )
            .col_expr(
                app::Column::TlsKeyId,
                sea_orm::sea_query::Expr::value(self.secrets().key_id()),
            )
            .filter(app::Column::Id.eq(model.id.as_str()))
            .exec(conn)
            .await?;
        audit::record(
            conn,
            None,
            AuditEntry {
                action: "app.tls_key_rotated",
                object_type: "app",
                object_id: Some(&model.id),
                before: Some(json!({"tls_key_id": key_id})),
                after: Some(json!({"tls_key_id": self.secrets().key_id()})),
            },
        )
        .await?;
        Ok(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> AppSettings {
        AppSettings {
            rate_limit: RateLimit::default(),
            max_concurrency: 4,
            timeout_ms: 30_000,
            max_attempts: 8,
            matching: Matching::default(),
            scope: AppScope::default(),
            mappings: default_mappings(),
            role_mapping: None,
            group_push: Vec::new(),
            deprovision: Deprovision::default(),
            reconcile: ReconcileSettings::default(),
            deletion_guard: DeletionGuard::default(),
            quirks: json!({}),
            rate_limit_group: None,
        }
    }

    #[test]
    fn only_loosening_or_destructive_changes_need_admin() {
        let base = settings();
        let mut stricter = base.clone();
        stricter.deletion_guard.max_count = 3;
        stricter.deletion_guard.max_fraction = 0.05;
        stricter.deletion_guard.on_events = true;
        stricter.deletion_guard.window_minutes = 600;
        assert!(changes_needing_admin(&base, &stricter).is_empty());
        assert!(changes_needing_admin(&base, &base).is_empty());

        let mut fix_mode = base.clone();
        fix_mode.reconcile.mode = ReconcileMode::Fix;
        assert!(changes_needing_admin(&base, &fix_mode).is_empty());
        let mut unmatched = base.clone();
        unmatched.reconcile.deprovision_unmatched = true;
        let mut unmatched_fix = unmatched.clone();
        unmatched_fix.reconcile.mode = ReconcileMode::Fix;
        let found = changes_needing_admin(&unmatched, &unmatched_fix);
        assert!(found[0].starts_with("reconcile.mode"), "{found:?}");

        let mut delete_later = base.clone();
        delete_later.deprovision.delete_after_days = Some(30);
        let mut sooner = delete_later.clone();
        sooner.deprovision.delete_after_days = Some(7);
        assert!(changes_needing_admin(&delete_later, &sooner)[0].contains("shortened"));
        assert!(changes_needing_admin(&sooner, &delete_later).is_empty());

        let admin = Principal {
            key_id: "a".into(),
            scopes: vec![super::super::Scope::Admin],
        };
        let writer = Principal {
            key_id: "w".into(),
            scopes: vec![super::super::Scope::AppsWrite],
        };
        assert!(check_authority(&admin, &delete_later, &sooner).is_ok());
        assert!(matches!(
            check_authority(&writer, &delete_later, &sooner),
            Err(ServiceError::NeedsAdmin(_))
        ));
    }

    #[test]
    fn an_origin_is_scheme_host_and_port() {
        assert!(origin_change("https://a.example/v2", "https://a.example:443/other").is_none());
        for moved in [
            "http://a.example/v2",
            "https://b.example/v2",
            "https://a.example:8443/v2",
            "not a url",
        ] {
            assert!(
                origin_change("https://a.example/v2", moved).is_some(),
                "{moved}"
            );
        }
    }
}
