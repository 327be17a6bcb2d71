//! An app's SCIM client: its stored settings and decrypted credential, turned into a
//! `ScimClient`. The credential leaves its `SecretString` only inside the client's header builder.
use std::time::Duration;

use secrecy::SecretString;
use serde_json::Value;

use crate::crypto::{CryptoError, SecretBox};
use crate::net_guard::{PLAIN_HTTP_REFUSED, PlainHttp, TargetPolicy, TransportPolicy};
use crate::scim::{Auth, CallObserver, ClientTls, Quirks, ScimClient, ScimError, TargetConfig};
use crate::settings::AppSettings;
use crate::store::entity::app;

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("app {app}: stored base_url is not a URL")]
    BaseUrl { app: String },
    #[error("app {app}: stored auth settings are incomplete ({field})")]
    AuthConfig { app: String, field: &'static str },
    #[error("app {app}: {source}")]
    Credential { app: String, source: CryptoError },
    /// The app is held until its URL is fixed (`PAUSED_BY_TRANSPORT`), or a stored URL is
    /// plain http that the transport policy refuses.
    #[error("app {app}: {field}: {reason}")]
    PlainHttp {
        app: String,
        field: &'static str,
        reason: String,
    },
    #[error("app {app}: {source}")]
    Client { app: String, source: Box<ScimError> },
}

/// `app.paused_by` of an app held because its `base_url` or `token_url` is plain http to a
/// public host: nothing is sent to it until the URL is fixed (which releases it).
pub const PAUSED_BY_TRANSPORT: &str = "transport";

/// Refuses to build a client that would send credentials over plain http where the policy
/// forbids it. Pure, so it cannot tell a private host name from a public one: under
/// `PublicOnly` no plain-http host is allowed anyway (private hosts are refused outright), and
/// under `AllowPrivate` the checks on write and at start (`Roster::hold_plain_http_apps`),
/// which resolve names, hold the app instead.
fn check_transport(
    model: &app::Model,
    field: &'static str,
    url: &url::Url,
    policy: TransportPolicy,
) -> Result<(), TargetError> {
    if model.paused_by.as_deref() == Some(PAUSED_BY_TRANSPORT) {
        return Err(TargetError::PlainHttp {
            app: model.name.clone(),
            field,
            reason: model
                .state_reason
                .clone()
                .unwrap_or_else(|| PLAIN_HTTP_REFUSED.to_owned()),
        });
    }
    if url.scheme() == "http"
        && policy.targets == TargetPolicy::PublicOnly
        && policy.plain_http == PlainHttp::Refused
    {
        return Err(TargetError::PlainHttp {
            app: model.name.clone(),
            field,
            reason: PLAIN_HTTP_REFUSED.to_owned(),
        });
    }
    Ok(())
}

fn credential(secrets: &SecretBox, model: &app::Model) -> Result<SecretString, TargetError> {
    let (Some(sealed), Some(key_id)) = (&model.secret_ciphertext, &model.secret_key_id) else {
        return Err(TargetError::AuthConfig {
            app: model.name.clone(),
            field: "secret",
        });
    };
    let plain =
        secrets
            .open(sealed, key_id, &model.id)
            .map_err(|source| TargetError::Credential {
                app: model.name.clone(),
                source,
            })?;
    let text = String::from_utf8(plain).map_err(|_| TargetError::AuthConfig {
        app: model.name.clone(),
        field: "secret",
    })?;
    Ok(SecretString::from(text))
}

/// The additional data the TLS key is sealed with: the app id and the column, so that a sealed
/// key cannot be moved into the credential column (or back) and opened there.
#[must_use]
pub fn tls_key_aad(app_id: &str) -> String {
    format!("{app_id}/tls_key")
}

/// The app's TLS settings as the client takes them; `None` when it has none.
fn client_tls(secrets: &SecretBox, model: &app::Model) -> Result<Option<ClientTls>, TargetError> {
    let Some(tls) = &model.tls else {
        return Ok(None);
    };
    let field = |name: &str| tls.get(name).and_then(Value::as_str).map(str::to_owned);
    let identity_pem = match (
        field("client_cert_pem"),
        &model.tls_key_ciphertext,
        &model.tls_key_id,
    ) {
        (Some(cert), Some(sealed), Some(key_id)) => {
            let key = secrets
                .open(sealed, key_id, &tls_key_aad(&model.id))
                .map_err(|source| TargetError::Credential {
                    app: model.name.clone(),
                    source,
                })?;
            let key = String::from_utf8(key).map_err(|_| TargetError::AuthConfig {
                app: model.name.clone(),
                field: "tls.client_key_pem",
            })?;
            Some(SecretString::from(format!("{cert}\n{key}")))
        }
        (None, None, _) => None,
        _ => {
            return Err(TargetError::AuthConfig {
                app: model.name.clone(),
                field: "tls.client_key_pem",
            });
        }
    };
    Ok(Some(ClientTls {
        ca_pem: field("ca_pem"),
        identity_pem,
    }))
}

fn text<'a>(model: &'a app::Model, field: &'static str) -> Result<&'a str, TargetError> {
    model
        .auth_config
        .get(field)
        .and_then(Value::as_str)
        .ok_or(TargetError::AuthConfig {
            app: model.name.clone(),
            field,
        })
}

/// Builds the client for `model`. `observer` sees every call (provisioning log, metrics).
pub fn client_for(
    model: &app::Model,
    settings: &AppSettings,
    secrets: &SecretBox,
    policy: TransportPolicy,
    observer: Option<CallObserver>,
    gate: Option<std::sync::Arc<dyn crate::scim::CallGate>>,
) -> Result<ScimClient, TargetError> {
    let base_url = url::Url::parse(&model.base_url).map_err(|_| TargetError::BaseUrl {
        app: model.name.clone(),
    })?;
    check_transport(model, "base_url", &base_url, policy)?;
    let secret = credential(secrets, model)?;
    let auth = match model.auth_type.as_str() {
        "basic" => Auth::Basic {
            username: text(model, "username")?.to_owned(),
            password: secret,
        },
        "oauth2" => Auth::OAuth2ClientCredentials {
            token_url: {
                let token_url = url::Url::parse(text(model, "token_url")?).map_err(|_| {
                    TargetError::AuthConfig {
                        app: model.name.clone(),
                        field: "token_url",
                    }
                })?;
                check_transport(model, "auth.token_url", &token_url, policy)?;
                token_url
            },
            client_id: text(model, "client_id")?.to_owned(),
            client_secret: secret,
            scope: model
                .auth_config
                .get("scope")
                .and_then(Value::as_str)
                .map(str::to_owned),
        },
        _ => Auth::Bearer(secret),
    };
    let quirks = Quirks::from_json(&settings.quirks).unwrap_or_default();
    let mut config = TargetConfig::new(base_url, auth, policy.targets);
    config.timeout = Duration::from_millis(u64::from(settings.timeout_ms));
    config.quirks = quirks;
    config.observer = observer;
    config.gate = gate;
    config.tls = client_tls(secrets, model)?;
    ScimClient::new(config).map_err(|source| TargetError::Client {
        app: model.name.clone(),
        source: Box::new(source),
    })
}
