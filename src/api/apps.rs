//! `/apps`: register SCIM targets.
use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Header, Path};
use poem_openapi::payload::Json;
use poem_openapi::types::MaybeUndefined;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use secrecy::SecretString;
use std::collections::BTreeMap;

use serde_json::Value;

use super::ApiTags;
use super::auth::ApiKey;
use super::body::{JsonBody, OptionalJsonBody, present, present_json};
use super::problem::ApiError;
use crate::connectors::ConnectorDifference;
use crate::service::apps::recorded_connector;
use crate::service::apps::{
    AppChanges, AppScope, AppState, AppView, AuthInput, ConnectorChoice, DeletionGuard,
    Deprovision, ExpectedVersions, MappingEntry, Matching, RateLimit, ReconcileSettings,
    RoleMappingEntry, TlsInput,
};
use crate::service::{Permission, Roster};

#[derive(Enum, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum AuthKind {
    Bearer,
    Basic,
    Oauth2,
}

/// Credentials for the target. Secrets are write-only: answers say only whether one is set.
#[derive(Object, serde::Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct AuthIn {
    /// `bearer` (needs `token`), `basic` (`username`, `password`) or `oauth2` client
    /// credentials (`token_url`, `client_id`, `client_secret`, optional `scope`).
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub kind: AuthKind,
    pub token: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub token_url: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub scope: Option<String>,
}

fn required(field: &str, value: Option<String>) -> Result<String, ApiError> {
    value.ok_or_else(|| {
        ApiError::new(
            poem::http::StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "Validation failed",
            format!("auth.{field}: is required for this auth type"),
        )
    })
}

impl AuthIn {
    fn into_input(self) -> Result<AuthInput, ApiError> {
        Ok(match self.kind {
            AuthKind::Bearer => AuthInput::Bearer {
                token: SecretString::from(required("token", self.token)?),
            },
            AuthKind::Basic => AuthInput::Basic {
                username: required("username", self.username)?,
                password: SecretString::from(required("password", self.password)?),
            },
            AuthKind::Oauth2 => AuthInput::OAuth2 {
                token_url: required("token_url", self.token_url)?,
                client_id: required("client_id", self.client_id)?,
                client_secret: SecretString::from(required("client_secret", self.client_secret)?),
                scope: self.scope,
            },
        })
    }
}

/// TLS to the target (and its OAuth2 token URL) beyond the system's trusted roots.
/// Certificates are always verified; there is no setting that skips that.
#[derive(Object, serde::Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct TlsIn {
    /// PEM certificates of a private CA, trusted besides the system roots (at most 1 MB).
    pub ca_pem: Option<String>,
    /// PEM client certificate for mutual TLS, then its chain; needs `client_key_pem`.
    pub client_cert_pem: Option<String>,
    /// PEM private key of the client certificate (PKCS#8, PKCS#1 or SEC1). Write-only: stored
    /// encrypted, never shown; send it again with its certificate when changing `tls`.
    pub client_key_pem: Option<String>,
}

impl From<TlsIn> for TlsInput {
    fn from(tls: TlsIn) -> Self {
        TlsInput {
            ca_pem: tls.ca_pem,
            client_cert_pem: tls.client_cert_pem,
            client_key_pem: tls.client_key_pem.map(SecretString::from),
        }
    }
}

/// TLS settings as shown: the certificates, and whether a client key is set.
#[derive(Object)]
pub struct TlsOut {
    #[oai(skip_serializing_if_is_none)]
    pub ca_pem: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub client_cert_pem: Option<String>,
    pub client_key_set: bool,
}

/// A new app. Everything but `name`, `base_url` and `auth` has a default.
#[derive(Object, serde::Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct AppCreate {
    pub name: String,
    /// The SCIM base URL, e.g. `https://scim.example.net/v2`. Loopback, private, link-local and
    /// metadata addresses are refused unless `ROSTER_ALLOW_PRIVATE_TARGETS=true`. Only
    /// `https://`: plain `http://` is accepted for loopback and private hosts when those are
    /// allowed, and for public hosts only with `ROSTER_ALLOW_INSECURE_HTTP=true`; the same
    /// holds for an OAuth2 `token_url`. Required unless `connector` fills it from its
    /// template; given with a connector, it replaces the template (a proxy, a test target).
    pub base_url: Option<String>,
    pub auth: AuthIn,
    /// Build the app from a catalogue connector (`GET /connectors`): its defaults fill every
    /// field not given here, and it is recorded with its version.
    pub connector: Option<String>,
    /// Values for the connector's base URL template, e.g. `{"enterprise": "acme"}`.
    pub connector_params: Option<BTreeMap<String, String>>,
    /// Accept settings above the connector's documented vendor limits (a rate above the
    /// vendor's, more member changes per PATCH than it takes). Default `false`: such a setting
    /// is a 422 naming the limit and its source.
    #[oai(default)]
    #[serde(default)]
    pub override_vendor_limits: bool,
    pub rate_limit: Option<RateLimit>,
    /// Apps with the same group share one set of rate-limit buckets and one `Retry-After`
    /// pause, for a vendor whose limits hold for a whole tenant (two apps on one Slack
    /// organisation): every limit any of them sets holds for their calls together. A connector
    /// whose vendor limits a tenant derives it from `connector_params`.
    pub rate_limit_group: Option<String>,
    /// Concurrent calls to this app (default 4).
    pub max_concurrency: Option<u32>,
    /// Per-call timeout (default 30000).
    pub timeout_ms: Option<u32>,
    /// Attempts before a job is dead-lettered (default 8).
    pub max_attempts: Option<u32>,
    pub matching: Option<Matching>,
    pub scope: Option<AppScope>,
    /// Default: userName ← `default(user_name, email)`, externalId ← employee_id, names,
    /// displayName, work email, title.
    pub mappings: Option<Vec<MappingEntry>>,
    pub role_mapping: Option<RoleMappingEntry>,
    pub group_push: Option<Vec<String>>,
    pub deprovision: Option<Deprovision>,
    pub reconcile: Option<ReconcileSettings>,
    pub deletion_guard: Option<DeletionGuard>,
    /// Target deviations: an object of flags (`patch_op_case`, `max_members_per_patch`,
    /// `page_size`, `supports_filter`, …).
    pub quirks: Option<Value>,
    /// A private CA and a client certificate (mutual TLS); PEM is checked on write.
    pub tls: Option<TlsIn>,
}

/// Changes to an app: each field given replaces the current value as a whole; `null` clears
/// `role_mapping`, `rate_limit_group` and `tls`, and is refused for every other field.
#[derive(Object, serde::Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct AppPatch {
    #[serde(default, deserialize_with = "present")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub base_url: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub auth: Option<AuthIn>,
    #[serde(default, deserialize_with = "present")]
    pub rate_limit: Option<RateLimit>,
    /// The app's rate-limit group (see `POST /apps`); `null` takes the app out of its group.
    #[serde(default)]
    #[oai(nullable)]
    pub rate_limit_group: MaybeUndefined<String>,
    #[serde(default, deserialize_with = "present")]
    pub max_concurrency: Option<u32>,
    #[serde(default, deserialize_with = "present")]
    pub timeout_ms: Option<u32>,
    #[serde(default, deserialize_with = "present")]
    pub max_attempts: Option<u32>,
    #[serde(default, deserialize_with = "present")]
    pub matching: Option<Matching>,
    #[serde(default, deserialize_with = "present")]
    pub scope: Option<AppScope>,
    #[serde(default, deserialize_with = "present")]
    pub mappings: Option<Vec<MappingEntry>>,
    #[serde(default)]
    #[oai(nullable)]
    pub role_mapping: MaybeUndefined<RoleMappingEntry>,
    #[serde(default, deserialize_with = "present")]
    pub group_push: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    pub deprovision: Option<Deprovision>,
    #[serde(default, deserialize_with = "present")]
    pub reconcile: Option<ReconcileSettings>,
    #[serde(default, deserialize_with = "present")]
    pub deletion_guard: Option<DeletionGuard>,
    #[serde(default, deserialize_with = "present_json")]
    pub quirks: Option<Value>,
    /// Replaces the TLS settings as a whole; `null` removes them.
    #[serde(default)]
    pub tls: MaybeUndefined<TlsIn>,
}

/// Credentials as shown: never the secret itself.
#[derive(Object)]
pub struct AuthOut {
    #[oai(rename = "type")]
    pub kind: String,
    #[oai(skip_serializing_if_is_none)]
    pub token_set: Option<bool>,
    #[oai(skip_serializing_if_is_none)]
    pub username: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub password_set: Option<bool>,
    #[oai(skip_serializing_if_is_none)]
    pub token_url: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub client_id: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub client_secret_set: Option<bool>,
    #[oai(skip_serializing_if_is_none)]
    pub scope: Option<String>,
}

/// The connector an app was built from, and what a newer version of it would change.
#[derive(Object)]
pub struct AppConnectorOut {
    pub name: String,
    /// The version the app was built from; a newer connector never changes the app by itself.
    pub version: u32,
    /// The catalogue's version now; absent if the catalogue no longer has the connector.
    #[oai(skip_serializing_if_is_none)]
    pub latest_version: Option<u32>,
    pub params: BTreeMap<String, String>,
    pub override_vendor_limits: bool,
    /// When `latest_version` is newer: each setting whose value differs from the newer
    /// connector's default (a PATCH of those fields applies them).
    pub differences: Vec<ConnectorDifference>,
}

#[derive(Object)]
pub struct AppOut {
    pub id: String,
    pub name: String,
    pub base_url: String,
    pub auth: AuthOut,
    pub rate_limit: RateLimit,
    /// Apps with the same group share one set of rate-limit buckets and one `Retry-After`
    /// pause; absent: the app's limits are its own.
    #[oai(skip_serializing_if_is_none)]
    pub rate_limit_group: Option<String>,
    pub max_concurrency: u32,
    pub timeout_ms: u32,
    pub max_attempts: u32,
    pub matching: Matching,
    pub scope: AppScope,
    pub mappings: Vec<MappingEntry>,
    #[oai(skip_serializing_if_is_none)]
    pub role_mapping: Option<RoleMappingEntry>,
    pub group_push: Vec<String>,
    pub deprovision: Deprovision,
    pub reconcile: ReconcileSettings,
    pub deletion_guard: DeletionGuard,
    pub quirks: Value,
    /// The catalogue connector the app was built from; absent for an app configured by hand.
    #[oai(skip_serializing_if_is_none)]
    pub connector: Option<AppConnectorOut>,
    #[oai(skip_serializing_if_is_none)]
    pub tls: Option<TlsOut>,
    /// `active`, `paused` or `quarantined`.
    pub state: String,
    #[oai(skip_serializing_if_is_none)]
    pub state_reason: Option<String>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<AppView> for AppOut {
    fn from(view: AppView) -> Self {
        let AppView { model, settings } = view;
        let connector = recorded_connector(&model).map(|(record, latest)| {
            let differences = match latest {
                Some(latest) if latest.version > record.version => {
                    latest.differences(&settings, &record.params)
                }
                _ => Vec::new(),
            };
            AppConnectorOut {
                name: record.name,
                version: record.version,
                latest_version: latest.map(|c| c.version),
                params: record.params,
                override_vendor_limits: record.override_vendor_limits,
                differences,
            }
        });
        let has_secret = model.secret_ciphertext.is_some();
        let cfg = &model.auth_config;
        let text = |k: &str| cfg.get(k).and_then(Value::as_str).map(str::to_owned);
        let auth = match model.auth_type.as_str() {
            "basic" => AuthOut {
                kind: "basic".into(),
                token_set: None,
                username: text("username"),
                password_set: Some(has_secret),
                token_url: None,
                client_id: None,
                client_secret_set: None,
                scope: None,
            },
            "oauth2" => AuthOut {
                kind: "oauth2".into(),
                token_set: None,
                username: None,
                password_set: None,
                token_url: text("token_url"),
                client_id: text("client_id"),
                client_secret_set: Some(has_secret),
                scope: text("scope"),
            },
            other => AuthOut {
                kind: other.to_owned(),
                token_set: Some(has_secret),
                username: None,
                password_set: None,
                token_url: None,
                client_id: None,
                client_secret_set: None,
                scope: None,
            },
        };
        Self {
            id: model.id,
            name: model.name,
            base_url: model.base_url,
            auth,
            rate_limit: settings.rate_limit,
            rate_limit_group: settings.rate_limit_group,
            max_concurrency: settings.max_concurrency,
            timeout_ms: settings.timeout_ms,
            max_attempts: settings.max_attempts,
            matching: settings.matching,
            scope: settings.scope,
            mappings: settings.mappings,
            role_mapping: settings.role_mapping,
            group_push: settings.group_push,
            deprovision: settings.deprovision,
            reconcile: settings.reconcile,
            deletion_guard: settings.deletion_guard,
            quirks: settings.quirks,
            connector,
            tls: model.tls.as_ref().map(|tls| {
                let field = |k: &str| tls.get(k).and_then(Value::as_str).map(str::to_owned);
                TlsOut {
                    ca_pem: field("ca_pem"),
                    client_cert_pem: field("client_cert_pem"),
                    client_key_set: model.tls_key_ciphertext.is_some(),
                }
            }),
            state: model.state,
            state_reason: model.state_reason,
            version: model.version,
            created_at: model.created_at,
            updated_at: model.updated_at,
        }
    }
}

/// What `test-connection` found.
#[derive(Object)]
pub struct ConnectionOut {
    /// Reachable and authenticated.
    pub ok: bool,
    pub reachable: bool,
    pub auth_ok: bool,
    /// Why the target is not usable, when it is not.
    #[oai(skip_serializing_if_is_none)]
    pub reason: Option<String>,
    /// Discovered support: patch, filter (and its max results), etag, bulk, sort, schemas.
    #[oai(skip_serializing_if_is_none)]
    pub capabilities: Option<Value>,
}

#[derive(ApiResponse)]
pub enum AppCreated {
    /// The app, with secrets reduced to `*_set` flags; `ETag` is its version (`"1"`).
    #[oai(status = 201)]
    Created(Json<AppOut>, #[oai(header = "ETag")] String),
}

/// An app with its `ETag`.
#[derive(ApiResponse)]
pub enum AppAnswer {
    /// The app. `ETag` is its version (`"3"`): send it back in `If-Match` to change the app
    /// only if nobody changed it since.
    #[oai(status = 200)]
    Ok(Json<AppOut>, #[oai(header = "ETag")] String),
}

impl From<AppView> for AppAnswer {
    fn from(view: AppView) -> Self {
        let tag = etag(view.model.version);
        AppAnswer::Ok(Json(view.into()), tag)
    }
}

/// The strong entity tag of an app version.
fn etag(version: i64) -> String {
    format!("\"{version}\"")
}

/// `If-Match`: `*` (any version: `None`) or a list of entity tags. Weak tags (`W/"3"`) and
/// anything not a version match nothing, as RFC 9110 compares `If-Match` strongly.
fn expected_versions(header: Option<&str>) -> Option<ExpectedVersions> {
    let raw = header?.trim();
    if raw == "*" {
        return None;
    }
    Some(ExpectedVersions(
        raw.split(',')
            .filter_map(|tag| {
                tag.trim()
                    .strip_prefix('"')?
                    .strip_suffix('"')?
                    .parse::<i64>()
                    .ok()
            })
            .collect(),
    ))
}

#[derive(ApiResponse)]
pub enum Deleted {
    #[oai(status = 204)]
    NoContent,
}

pub struct AppsApi;

#[OpenApi(prefix_path = "/apps", tag = "ApiTags::Apps")]
impl AppsApi {
    /// Register an app
    ///
    /// Scope `apps:write`. A weaker `deletion_guard` than the default,
    /// `deprovision.action: delete`, `deprovision.delete_after_days` and
    /// `reconcile.deprovision_unmatched` need scope `admin`.
    #[oai(path = "/", method = "post", operation_id = "createApp")]
    async fn create(
        &self,
        auth: ApiKey,
        roster: Data<&Roster>,
        body: JsonBody<AppCreate>,
    ) -> Result<AppCreated, ApiError> {
        let principal = auth.require(Permission::WriteApps)?;
        let b = body.0;
        let connector = match (b.connector, b.connector_params) {
            (Some(name), params) => Some(ConnectorChoice {
                name,
                params: params.unwrap_or_default(),
                override_vendor_limits: b.override_vendor_limits,
            }),
            (None, params) => {
                let stray = if params.is_some() {
                    Some("connector_params")
                } else {
                    b.override_vendor_limits.then_some("override_vendor_limits")
                };
                if let Some(field) = stray {
                    return Err(ApiError::new(
                        poem::http::StatusCode::UNPROCESSABLE_ENTITY,
                        "validation",
                        "Validation failed",
                        format!("{field}: only applies with `connector`"),
                    ));
                }
                None
            }
        };
        let changes = AppChanges {
            name: Some(b.name),
            base_url: b.base_url,
            connector,
            auth: Some(b.auth.into_input()?),
            rate_limit: b.rate_limit,
            rate_limit_group: b.rate_limit_group.map(Some),
            max_concurrency: b.max_concurrency,
            timeout_ms: b.timeout_ms,
            max_attempts: b.max_attempts,
            matching: b.matching,
            scope: b.scope,
            mappings: b.mappings,
            role_mapping: Some(b.role_mapping),
            group_push: b.group_push,
            deprovision: b.deprovision,
            reconcile: b.reconcile,
            deletion_guard: b.deletion_guard,
            quirks: b.quirks,
            tls: Some(b.tls.map(TlsInput::from)),
        };
        let view = roster.create_app(principal, changes).await?;
        let tag = etag(view.model.version);
        Ok(AppCreated::Created(Json(view.into()), tag))
    }

    /// List apps
    ///
    /// Scope `read`.
    #[oai(path = "/", method = "get", operation_id = "listApps")]
    async fn list(
        &self,
        auth: ApiKey,
        roster: Data<&Roster>,
    ) -> Result<Json<Vec<AppOut>>, ApiError> {
        auth.require(Permission::ReadConfig)?;
        let apps = roster.list_apps().await?;
        Ok(Json(apps.into_iter().map(AppOut::from).collect()))
    }

    /// Get an app
    ///
    /// Scope `read`. The app's version is its `ETag`.
    #[oai(path = "/:id", method = "get", operation_id = "getApp")]
    async fn get(
        &self,
        auth: ApiKey,
        roster: Data<&Roster>,
        id: Path<String>,
    ) -> Result<AppAnswer, ApiError> {
        auth.require(Permission::ReadConfig)?;
        Ok(roster.get_app(&id.0).await?.into())
    }

    /// Change an app
    ///
    /// Scope `apps:write`. A new scope or new mappings re-sync everyone. Concurrent changes to
    /// different fields all apply; with `If-Match` (an `ETag` from GET or PATCH), a change to an
    /// app that changed since answers 412 instead. Moving `base_url` to another origin (scheme,
    /// host, port) needs `auth` in the same request. Weakening `deletion_guard`,
    /// `deprovision.action: delete`, `deprovision.delete_after_days` and
    /// `reconcile.deprovision_unmatched` need scope `admin`.
    #[oai(path = "/:id", method = "patch", operation_id = "updateApp")]
    async fn update(
        &self,
        auth: ApiKey,
        roster: Data<&Roster>,
        id: Path<String>,
        /// An `ETag` of the app (`"3"`), or `*`: change it only if it is still that version.
        #[oai(name = "If-Match")]
        if_match: Header<Option<String>>,
        body: JsonBody<AppPatch>,
    ) -> Result<AppAnswer, ApiError> {
        let principal = auth.require(Permission::WriteApps)?;
        let b = body.0;
        let changes = AppChanges {
            name: b.name,
            base_url: b.base_url,
            auth: b.auth.map(AuthIn::into_input).transpose()?,
            rate_limit: b.rate_limit,
            rate_limit_group: match b.rate_limit_group {
                MaybeUndefined::Undefined => None,
                MaybeUndefined::Null => Some(None),
                MaybeUndefined::Value(v) => Some(Some(v)),
            },
            max_concurrency: b.max_concurrency,
            timeout_ms: b.timeout_ms,
            max_attempts: b.max_attempts,
            matching: b.matching,
            scope: b.scope,
            mappings: b.mappings,
            role_mapping: match b.role_mapping {
                MaybeUndefined::Undefined => None,
                MaybeUndefined::Null => Some(None),
                MaybeUndefined::Value(v) => Some(Some(v)),
            },
            group_push: b.group_push,
            deprovision: b.deprovision,
            reconcile: b.reconcile,
            deletion_guard: b.deletion_guard,
            quirks: b.quirks,
            connector: None,
            tls: match b.tls {
                MaybeUndefined::Undefined => None,
                MaybeUndefined::Null => Some(None),
                MaybeUndefined::Value(v) => Some(Some(v.into())),
            },
        };
        let expected = expected_versions(if_match.0.as_deref());
        Ok(roster
            .update_app(principal, &id.0, changes, expected)
            .await?
            .into())
    }

    /// Remove an app
    ///
    /// Scope `apps:write`. Removes roster's record of its accounts; the accounts in the target are
    /// left as they are.
    #[oai(path = "/:id", method = "delete", operation_id = "deleteApp")]
    async fn delete(
        &self,
        auth: ApiKey,
        roster: Data<&Roster>,
        id: Path<String>,
    ) -> Result<Deleted, ApiError> {
        let principal = auth.require(Permission::WriteApps)?;
        roster.delete_app(principal, &id.0).await?;
        Ok(Deleted::NoContent)
    }

    /// Pause delivery to an app
    ///
    /// Scope `apps:write`. Changes keep queueing until the app is resumed.
    #[oai(path = "/:id/pause", method = "post", operation_id = "pauseApp")]
    async fn pause(
        &self,
        auth: ApiKey,
        roster: Data<&Roster>,
        id: Path<String>,
    ) -> Result<Json<AppOut>, ApiError> {
        let principal = auth.require(Permission::WriteApps)?;
        let view = roster
            .set_app_state(
                principal,
                &id.0,
                AppState::Paused,
                Some("paused through the API".into()),
            )
            .await?;
        Ok(Json(view.into()))
    }

    /// Check an app's target
    ///
    /// Scope `apps:write`. Whether the target is reachable with the app's credentials, and what it
    /// supports (reads `/ServiceProviderConfig`, `/ResourceTypes`, `/Schemas`; writes nothing).
    #[oai(
        path = "/:id/test-connection",
        method = "post",
        operation_id = "testAppConnection"
    )]
    async fn test_connection(
        &self,
        auth: ApiKey,
        roster: Data<&Roster>,
        id: Path<String>,
    ) -> Result<Json<ConnectionOut>, ApiError> {
        auth.require(Permission::WriteApps)?;
        let report = roster.test_connection(&id.0).await?;
        Ok(Json(ConnectionOut {
            ok: report.reachable && report.auth_ok && report.reason.is_none(),
            reachable: report.reachable,
            auth_ok: report.auth_ok,
            reason: report.reason,
            capabilities: report
                .capabilities
                .and_then(|c| serde_json::to_value(c).ok()),
        }))
    }

    /// Resume delivery to an app
    ///
    /// Scope `apps:write`. Also ends a quarantine.
    ///
    /// A plain resume approves nothing: when the deletion guard on HR events paused the app,
    /// the deprovisions it held still count, so they pause the app again at the guard's limit.
    /// To let them through, an `admin` key sends `{"approve_deprovisions": true}`; that is
    /// accepted only while the guard holds the app (409 otherwise) and is audited as
    /// `app.deprovisions_approved` with the number of deprovisions it released.
    #[oai(path = "/:id/resume", method = "post", operation_id = "resumeApp")]
    async fn resume(
        &self,
        auth: ApiKey,
        roster: Data<&Roster>,
        id: Path<String>,
        body: OptionalJsonBody<ResumeIn>,
    ) -> Result<Json<AppOut>, ApiError> {
        let principal = auth.require(Permission::WriteApps)?;
        let view = if body.0.approve_deprovisions {
            let principal = auth.require(Permission::Admin)?;
            roster.approve_deprovisions(principal, &id.0).await?
        } else {
            roster
                .set_app_state(principal, &id.0, AppState::Active, None)
                .await?
        };
        Ok(Json(view.into()))
    }
}

/// `POST /apps/{id}/resume`; the body may be left out.
#[derive(Object, serde::Deserialize, Default)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct ResumeIn {
    /// Release the deprovisions the deletion guard held (scope `admin`; only while the guard
    /// holds the app). Default `false`: resume without approving them.
    #[serde(default)]
    #[oai(default)]
    pub approve_deprovisions: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_is_a_star_or_a_list_of_strong_tags() {
        let versions = |h: &str| expected_versions(Some(h)).map(|v| v.0);
        assert_eq!(expected_versions(None).map(|v| v.0), None);
        assert_eq!(versions("*"), None);
        assert_eq!(versions("\"3\""), Some(vec![3]));
        assert_eq!(versions(" \"3\" , \"5\""), Some(vec![3, 5]));
        // Weak or malformed tags match no version: a 412, never "any".
        for never in ["W/\"3\"", "3", "\"x\"", ""] {
            assert_eq!(versions(never), Some(vec![]), "{never}");
        }
        assert_eq!(etag(7), "\"7\"");
    }
}
