//! The HTTP side: one `reqwest::Client` per target, auth, the SSRF resolver, body limits, call
//! records, discovery, and the Users/Groups handles.
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use reqwest::header::{self, HeaderValue};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::Value;
use tracing::Instrument as _;
use url::Url;

use super::auth::{Auth, CachedToken, token_from};
use super::discovery::Capabilities;
use super::error::{ScimError, TransportKind, parse_error_body, parse_retry_after};
use super::filter;
use super::patch::{self, PatchRequest};
use super::quirks::{Paging as PagingMode, Quirks};
use crate::net_guard::TargetPolicy;

/// One HTTP call the client made, for the provisioning log and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallRecord {
    pub method: String,
    /// URL path plus the query the client built (filter, paging); never credentials, which
    /// travel only in headers.
    pub path: String,
    /// `None` when no HTTP answer arrived.
    pub status: Option<u16>,
    pub duration: Duration,
    /// The error's message (method, path, status, scimType, truncated detail).
    pub error: Option<String>,
}

/// Receives every [`CallRecord`]; called inline, inside the call's `scim_call` span (so it may
/// tag that span), so keep it cheap (push to a channel).
pub type CallObserver = Arc<dyn Fn(&CallRecord) + Send + Sync>;

/// What a [`CallGate`] lets one call through with: held from before the request is sent until
/// its answer is read (or it fails), then dropped. A gate bounds the calls in flight with it.
pub type CallPass = Box<dyn Send + Sync>;

/// Awaited before every HTTP exchange: where the caller's rate limits, concurrency limit and
/// `Retry-After` pauses apply. The client itself never sleeps for policy reasons.
pub trait CallGate: Send + Sync {
    /// Waits until a call of `kind` may go.
    fn wait(&self, kind: CallKind) -> futures::future::BoxFuture<'_, CallPass>;

    /// Runs `wait`: the caller waiting for another caller's call of this client to end (the
    /// discovery read, an OAuth token request), which must pass this gate itself. A gate that
    /// holds something of its callers' (delivery's worker permits) lends it out meanwhile:
    /// callers that held it while waiting could leave the one they wait for without any, and
    /// none would ever go on.
    fn aside<'a>(
        &'a self,
        wait: futures::future::BoxFuture<'a, ()>,
    ) -> futures::future::BoxFuture<'a, ()> {
        wait
    }
}

/// What a call does, as vendors' rate limits tell calls apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallKind {
    /// `GET`, and a search by `POST …/.search`.
    Read,
    /// `POST`, `PUT`, `PATCH`.
    Write,
    /// `DELETE`.
    Delete,
}

impl CallKind {
    /// The kind of a call of `method` to `url`.
    #[must_use]
    pub fn of(method: &Method, url: &Url) -> Self {
        let search = url
            .path_segments()
            .and_then(|mut segments| segments.next_back())
            .is_some_and(|last| last == ".search");
        if *method == Method::GET || *method == Method::HEAD || (*method == Method::POST && search)
        {
            CallKind::Read
        } else if *method == Method::DELETE {
            CallKind::Delete
        } else {
            CallKind::Write
        }
    }
}

/// Bodies larger than this are refused unless the config says otherwise.
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Everything the client needs to talk to one target.
#[derive(Clone)]
pub struct TargetConfig {
    /// The SCIM root, e.g. `https://scim.example.net/v2`; `Users` etc. are appended.
    pub base_url: Url,
    pub auth: Auth,
    /// Whole-request timeout (connect, send, answer, body).
    pub timeout: Duration,
    pub quirks: Quirks,
    pub policy: TargetPolicy,
    pub observer: Option<CallObserver>,
    pub gate: Option<Arc<dyn CallGate>>,
    pub max_body_bytes: usize,
    /// A private CA and a client certificate, for this target and its token URL.
    pub tls: Option<ClientTls>,
}

/// TLS settings beyond the system roots. Certificates are always verified: there is no switch
/// to skip that.
#[derive(Clone)]
pub struct ClientTls {
    /// PEM certificates trusted besides the system roots (a private CA).
    pub ca_pem: Option<String>,
    /// The client certificate (then its chain) and its private key, PEM, for mutual TLS.
    pub identity_pem: Option<SecretString>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<set>"))
            .field(
                "identity_pem",
                &self.identity_pem.as_ref().map(|_| "[REDACTED]"),
            )
            .finish()
    }
}

impl TargetConfig {
    /// A config with a 30 s timeout, RFC quirks, no observer and an 8 MiB body limit.
    #[must_use]
    pub fn new(base_url: Url, auth: Auth, policy: TargetPolicy) -> Self {
        Self {
            base_url,
            auth,
            timeout: Duration::from_secs(30),
            quirks: Quirks::default(),
            policy,
            observer: None,
            gate: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            tls: None,
        }
    }
}

impl std::fmt::Debug for TargetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetConfig")
            .field("base_url", &self.base_url.as_str())
            .field("auth", &self.auth)
            .field("timeout", &self.timeout)
            .field("quirks", &self.quirks)
            .field("policy", &self.policy)
            .field("observer", &self.observer.as_ref().map(|_| "<fn>"))
            .field("max_body_bytes", &self.max_body_bytes)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Installs rustls' ring provider for this process if none is installed yet. reqwest is built
/// with `rustls-no-provider`, so a client cannot be built before this. Idempotent.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another thread installing one is fine: one is installed either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The error a refused address travels in through reqwest, recognised again on the way out.
#[derive(Debug)]
struct RefusedAddress(String);

impl std::fmt::Display for RefusedAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RefusedAddress {}

/// Resolves names with the system resolver and drops every address the policy refuses, so a
/// name that resolved to a public address at registration cannot be re-pointed at the metadata
/// service or loopback later (DNS rebinding).
struct GuardedResolver {
    policy: TargetPolicy,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let mut allowed = Vec::new();
            let mut refusal = None;
            for addr in resolved {
                match policy.check_ip(addr.ip()) {
                    Ok(()) => allowed.push(addr),
                    Err(reason) => refusal = Some(reason),
                }
            }
            if allowed.is_empty() {
                let reason = refusal.unwrap_or_else(|| "no addresses".to_string());
                return Err(Box::new(RefusedAddress(format!("{host}: {reason}")))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A usable answer: 2xx, body parsed if there was one.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Option<Value>,
}

/// What [`decode_answer`] needs from a response besides its body: the status and the raw
/// header values (`None` when absent or not visible ASCII).
#[derive(Debug, Clone, Default)]
pub(crate) struct ResponseMeta {
    pub(crate) status: u16,
    pub(crate) retry_after: Option<String>,
    pub(crate) etag: Option<String>,
    pub(crate) content_type: Option<String>,
}

/// What `DELETE` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    Deleted,
    /// 404: already gone, which is what the caller wanted.
    AlreadyGone,
}

/// The result of [`ScimClient::test_connection`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionReport {
    pub reachable: bool,
    pub auth_ok: bool,
    pub capabilities: Option<Capabilities>,
    /// Why the target is not usable, when it is not.
    pub reason: Option<String>,
}

/// A SCIM 2.0 client for one target. Cheap to clone.
#[derive(Clone)]
pub struct ScimClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// Invariant: ends with `/`, so joining `Users` keeps the base path.
    base: Url,
    auth: Auth,
    timeout: Duration,
    quirks: Quirks,
    policy: TargetPolicy,
    observer: Option<CallObserver>,
    gate: Option<Arc<dyn CallGate>>,
    max_body: usize,
    token: tokio::sync::Mutex<Option<CachedToken>>,
    capabilities: Mutex<Option<Capabilities>>,
    /// One first read of the discovery document at a time: the calls that need it while it is
    /// read wait for its answer instead of each asking (every call counts against the app's
    /// rate limit).
    discovery_turn: tokio::sync::Mutex<()>,
    /// Reads of the discovery document finished, answered or not.
    discovery_reads: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for ScimClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScimClient")
            .field("base", &self.inner.base.as_str())
            .field("auth", &self.inner.auth)
            .finish_non_exhaustive()
    }
}

/// Filters, attributes and page size for a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// A filter built with [`filter::eq`] or by hand; sent URL-encoded.
    pub filter: Option<String>,
    /// `attributes=` to keep pages small (e.g. `["userName", "active"]`).
    pub attributes: Vec<String>,
    /// Wanted page size; clamped to the quirks' and the target's maximum.
    pub page_size: u32,
    /// Index paging only: each page after the first is asked from the last resource of the
    /// page before (which is not yielded twice), so that a page that does not begin with it
    /// is marked [`Page::shifted`]. For listings that must prove an absence.
    pub overlapping: bool,
}

fn header_text(headers: &header::HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A TLS failure in plain words, when `err` (or an error it wraps) is one. rustls' errors
/// travel inside `io::Error`s, whose `source()` skips them, so those are opened with
/// `get_ref`.
fn tls_reason(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    fn rustls_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // An `io::Error` may wrap another (hyper-rustls wraps tokio-rustls' error).
        let inner = e.downcast_ref::<std::io::Error>()?.get_ref()?;
        rustls_in(inner)
    }
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(tls) = rustls_in(e) {
            return Some(describe_tls(tls));
        }
        source = e.source();
    }
    None
}

fn describe_tls(err: &rustls::Error) -> String {
    use rustls::{AlertDescription as Alert, CertificateError as Cert};
    match err {
        rustls::Error::InvalidCertificate(cert) => match cert {
            Cert::UnknownIssuer => "TLS: unknown CA: the target's certificate is not signed by \
                                    a trusted certificate authority (for a private CA, set \
                                    `tls.ca_pem`)"
                .into(),
            Cert::NotValidForName | Cert::NotValidForNameContext { .. } => {
                "TLS: hostname mismatch: the target's certificate is not valid for the host \
                 name in the URL"
                    .into()
            }
            Cert::Expired | Cert::ExpiredContext { .. } => {
                "TLS: expired: the target's certificate has expired".into()
            }
            Cert::NotValidYet | Cert::NotValidYetContext { .. } => {
                "TLS: the target's certificate is not valid yet".into()
            }
            Cert::Revoked => "TLS: the target's certificate is revoked".into(),
            other => format!("TLS: the target's certificate is refused: {other:?}"),
        },
        rustls::Error::AlertReceived(Alert::CertificateRequired) => {
            "TLS: client certificate required: the target asks for a client certificate \
             (set `tls.client_cert_pem` and `tls.client_key_pem`)"
                .into()
        }
        rustls::Error::AlertReceived(
            alert @ (Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::CertificateUnknown
            | Alert::CertificateRevoked
            | Alert::CertificateExpired
            | Alert::UnsupportedCertificate
            | Alert::AccessDenied),
        ) => format!("TLS: client certificate refused by the target ({alert:?})"),
        other => format!("TLS handshake failed: {other}"),
    }
}

/// A short, secret-free reason for a transport failure.
fn transport_error(
    method: &Method,
    path: &str,
    err: &reqwest::Error,
    timeout: Duration,
) -> ScimError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut innermost = err.to_string();
    let mut io_kind = None;
    while let Some(e) = source {
        if let Some(refused) = e.downcast_ref::<RefusedAddress>() {
            return ScimError::AddressRefused {
                method: method.to_string(),
                path: path.to_owned(),
                reason: refused.0.clone(),
            };
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
        }
        innermost = e.to_string();
        source = e.source();
    }
    if let Some(message) = tls_reason(err) {
        return ScimError::Transport {
            method: method.to_string(),
            path: path.to_owned(),
            kind: TransportKind::Connect,
            message,
        };
    }
    let (kind, message) = if err.is_timeout() {
        (
            TransportKind::Timeout,
            format!("timed out after {timeout:?}"),
        )
    } else if err.is_connect() {
        let message = match io_kind {
            Some(std::io::ErrorKind::ConnectionRefused) => "connection refused".to_string(),
            _ => format!("could not connect: {innermost}"),
        };
        (TransportKind::Connect, message)
    } else {
        (
            TransportKind::Other,
            format!("connection failed: {innermost}"),
        )
    };
    ScimError::Transport {
        method: method.to_string(),
        path: path.to_owned(),
        kind,
        message,
    }
}

/// `filter`'s string literals replaced by `"<redacted>"`, quotes and escapes respected, so
/// that `userName eq "ada@example.com"` becomes `userName eq "<redacted>"`.
fn redact_filter(filter: &str) -> String {
    let mut out = String::with_capacity(filter.len());
    let mut chars = filter.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            out.push(c);
            continue;
        }
        out.push_str("\"<redacted>\"");
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => break,
                _ => {}
            }
        }
    }
    out
}

/// The path and query of a call as the provisioning log, the call's trace span and its error
/// keep them: the values inside `filter=` (a person's e-mail address, as a look-up sends it)
/// are redacted; the rest of the query (paging) is kept as sent.
pub(crate) fn logged_path(url: &Url) -> String {
    let Some(query) = url.query() else {
        return url.path().to_owned();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if key.eq_ignore_ascii_case("filter") => {
                let decoded: String = url::form_urlencoded::parse(format!("f={value}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                format!("{key}={}", redact_filter(&decoded))
            }
            _ => pair.to_owned(),
        })
        .collect();
    format!("{}?{}", url.path(), query.join("&"))
}

fn is_json_media_type(content_type: &str) -> bool {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || media == "application/scim+json" || media.ends_with("+json")
}

/// Turns a complete response (status, headers, body within the size cap) into an [`Answer`]
/// or the [`ScimError`] it stands for. Pure: the network part is [`ScimClient::read`]; this is
/// the part that sees whatever bytes a target sends, and the fuzz target's entry point.
pub(crate) fn decode_answer(
    method: &Method,
    path: &str,
    meta: &ResponseMeta,
    bytes: &[u8],
    now: SystemTime,
) -> Result<Answer, ScimError> {
    let status = meta.status;
    let bad = |reason: String| ScimError::BadResponse {
        method: method.to_string(),
        path: path.to_owned(),
        status,
        reason,
    };
    if !(200..300).contains(&status) {
        let parsed = parse_error_body(bytes);
        return Err(ScimError::Http {
            method: method.to_string(),
            path: path.to_owned(),
            status,
            scim_type: parsed.scim_type,
            detail: parsed.detail.unwrap_or_else(|| {
                StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("")
                    .to_owned()
            }),
            retry_after: meta
                .retry_after
                .as_deref()
                .and_then(|v| parse_retry_after(v, now)),
        });
    }
    if status == 204 || bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Answer { status, body: None });
    }
    // A PATCH or DELETE needs no body back (RFC 7644 §3.5.2, §3.6): a 2xx is the success,
    // whatever the target sends with it (an HTML page, `OK`).
    let body_optional = *method == Method::PATCH || *method == Method::DELETE;
    if let Some(ct) = &meta.content_type
        && !is_json_media_type(ct)
    {
        if body_optional {
            return Ok(Answer { status, body: None });
        }
        let shown: String = ct.chars().take(60).collect();
        return Err(bad(format!("unexpected content type `{shown}`")));
    }
    let mut body = match serde_json::from_slice::<Value>(bytes) {
        Ok(body) => body,
        Err(_) if body_optional => return Ok(Answer { status, body: None }),
        Err(e) => return Err(bad(format!("malformed JSON: {e}"))),
    };
    canonical_names(&mut body);
    // Some targets send the version only as an `ETag` header; keep it where callers look.
    if let (Some(tag), Some(object)) = (&meta.etag, body.as_object_mut())
        && object.contains_key("id")
        && object.get("meta").and_then(|m| m.get("version")).is_none()
    {
        let meta = object
            .entry("meta")
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        if let Some(meta) = meta.as_object_mut() {
            meta.insert("version".into(), Value::String(tag.clone()));
        }
    }
    Ok(Answer {
        status,
        body: Some(body),
    })
}

/// Top-level attribute names of the core User and Group schemas (RFC 7643 §4, §4.2) and of
/// the ListResponse, as roster reads them.
const CORE_NAMES: &[&str] = &[
    "id",
    "externalId",
    "meta",
    "schemas",
    "userName",
    "name",
    "displayName",
    "nickName",
    "profileUrl",
    "title",
    "userType",
    "preferredLanguage",
    "locale",
    "timezone",
    "active",
    "emails",
    "phoneNumbers",
    "ims",
    "photos",
    "addresses",
    "groups",
    "entitlements",
    "roles",
    "x509Certificates",
    "members",
];

/// Sub-attribute names: of `name`, of `meta`, and of multi-valued elements.
const SUB_NAMES: &[&str] = &[
    "value",
    "display",
    "type",
    "primary",
    "$ref",
    "givenName",
    "familyName",
    "formatted",
    "middleName",
    "honorificPrefix",
    "honorificSuffix",
    "version",
    "resourceType",
    "created",
    "lastModified",
    "location",
];

/// Renames the keys of `object` that equal one of `names` ignoring case to that spelling,
/// unless the exact spelling is there already.
fn canonical_keys(object: &mut serde_json::Map<String, Value>, names: &[&str]) {
    let odd: Vec<(String, &str)> = object
        .keys()
        .filter_map(|k| {
            let name = names
                .iter()
                .find(|n| n.eq_ignore_ascii_case(k) && **n != k.as_str())?;
            (!object.contains_key(*name)).then(|| (k.clone(), *name))
        })
        .collect();
    for (key, name) in odd {
        if let Some(v) = object.remove(&key) {
            object.insert(name.to_owned(), v);
        }
    }
}

/// A number where SCIM has a string (`id`, `members[].value`: some targets send database
/// keys as JSON numbers) becomes its decimal text.
fn number_as_text(value: &mut Value) {
    if let Value::Number(n) = value {
        *value = Value::String(n.to_string());
    }
}

/// Puts a resource as a target sent it into the shape the rest of roster reads: attribute
/// names are case-insensitive (RFC 7643 §2.1), so the core ones are renamed to their usual
/// spelling (`UserName`, `ID`, `Meta.Version`); a numeric `id` or member `value` becomes its
/// text. Pure; applied to every JSON answer and every listed resource.
pub(crate) fn canonical_names(resource: &mut Value) {
    let Some(object) = resource.as_object_mut() else {
        return;
    };
    if filter::get_ci(object, "Resources").is_some() {
        // A ListResponse: its resources are read one by one (`parse_list_page`).
        return;
    }
    canonical_keys(object, CORE_NAMES);
    for value in object.values_mut() {
        match value {
            Value::Object(inner) => canonical_keys(inner, SUB_NAMES),
            Value::Array(items) => {
                for item in items.iter_mut().filter_map(Value::as_object_mut) {
                    canonical_keys(item, SUB_NAMES);
                }
            }
            _ => {}
        }
    }
    if let Some(id) = object.get_mut("id") {
        number_as_text(id);
    }
    if let Some(Value::Array(members)) = object.get_mut("members") {
        for member in members.iter_mut().filter_map(Value::as_object_mut) {
            if let Some(value) = member.get_mut("value") {
                number_as_text(value);
            }
        }
    }
}

/// `id` of a resource.
#[must_use]
pub fn id_of(resource: &Value) -> Option<&str> {
    resource.get("id").and_then(Value::as_str)
}

/// `meta.version` (the ETag) of a resource.
#[must_use]
pub fn version_of(resource: &Value) -> Option<&str> {
    resource
        .get("meta")
        .and_then(|m| m.get("version"))
        .and_then(Value::as_str)
}

impl ScimClient {
    pub fn new(config: TargetConfig) -> Result<ScimClient, ScimError> {
        install_crypto_provider();
        if !matches!(config.base_url.scheme(), "http" | "https") {
            return Err(ScimError::Config(format!(
                "scheme `{}` is not http or https",
                config.base_url.scheme()
            )));
        }
        if !config.base_url.username().is_empty() || config.base_url.password().is_some() {
            return Err(ScimError::Config(
                "credentials must not be part of the base URL".into(),
            ));
        }
        let mut base = config.base_url.clone();
        base.set_query(None);
        base.set_fragment(None);
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let mut builder = reqwest::Client::builder();
        if let Some(tls) = &config.tls {
            if let Some(ca) = &tls.ca_pem {
                let certs = reqwest::Certificate::from_pem_bundle(ca.as_bytes())
                    .map_err(|e| ScimError::Config(format!("tls.ca_pem: {e}")))?;
                // Besides the system roots: a token URL on a public identity provider still
                // verifies.
                builder = builder.tls_certs_merge(certs);
            }
            if let Some(identity) = &tls.identity_pem {
                let identity = reqwest::Identity::from_pem(identity.expose_secret().as_bytes())
                    .map_err(|_| {
                        ScimError::Config(
                            "tls.client_cert_pem and tls.client_key_pem are not usable".into(),
                        )
                    })?;
                builder = builder.identity(identity);
            }
        }
        let http = builder
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would connect on our behalf and bypass the address check.
            .no_proxy()
            .dns_resolver(GuardedResolver {
                policy: config.policy,
            })
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("roster/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ScimError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(ScimClient {
            inner: Arc::new(Inner {
                http,
                base,
                auth: config.auth,
                timeout: config.timeout,
                quirks: config.quirks,
                policy: config.policy,
                observer: config.observer,
                gate: config.gate,
                max_body: config.max_body_bytes,
                token: tokio::sync::Mutex::new(None),
                capabilities: Mutex::new(None),
                discovery_turn: tokio::sync::Mutex::new(()),
                discovery_reads: std::sync::atomic::AtomicU64::new(0),
            }),
        })
    }

    #[must_use]
    pub fn users(&self) -> Resources {
        Resources {
            client: self.clone(),
            kind: ResourceKind::Users,
        }
    }

    #[must_use]
    pub fn groups(&self) -> Resources {
        Resources {
            client: self.clone(),
            kind: ResourceKind::Groups,
        }
    }

    #[must_use]
    pub fn quirks(&self) -> &Quirks {
        &self.inner.quirks
    }

    /// `base` + `segments`, each segment percent-encoded (an id cannot add path segments).
    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.inner.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            let text: Vec<String> = query
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{}={}",
                        filter::percent_encode(k),
                        filter::percent_encode(v)
                    )
                })
                .collect();
            url.set_query(Some(&text.join("&")));
        }
        url
    }

    fn check_literal_host(&self, url: &Url) -> Result<(), String> {
        // reqwest does not call the resolver for IP literals, so check them here.
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            Some(url::Host::Domain(_)) => return Ok(()),
            None => return Err("the URL has no host".into()),
        };
        self.inner.policy.check_ip(ip)
    }

    /// Takes a turn (`lock()`) that another caller of this client may hold across a call,
    /// waiting through the gate's [`CallGate::aside`].
    async fn aside<G: Send, F: Future<Output = G> + Send>(&self, lock: impl Fn() -> F + Sync) -> G {
        if let Some(gate) = &self.inner.gate {
            let mut taken = None;
            gate.aside(Box::pin(async {
                taken = Some(lock().await);
            }))
            .await;
            if let Some(guard) = taken {
                return guard;
            }
        }
        // No gate, or one that did not run the wait to its end.
        lock().await
    }

    fn observe(&self, record: &CallRecord) {
        if let Some(observer) = &self.inner.observer {
            observer(record);
        }
    }

    /// One HTTP exchange: address check, send, capped read, error parsing, record.
    async fn perform(
        &self,
        method: Method,
        url: Url,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<Answer, ScimError> {
        let path = logged_path(&url);
        // Held until the answer is read: the call counts as in flight until then.
        let _pass = match &self.inner.gate {
            Some(gate) => Some(gate.wait(CallKind::of(&method, &url)).await),
            None => None,
        };
        // An info span: exported as a trace at the default level; spans print no log lines.
        let span = tracing::info_span!(
            "scim_call",
            method = %method,
            path = %path,
            status = tracing::field::Empty
        );
        let started = Instant::now();
        let result = async {
            if let Err(reason) = self.check_literal_host(&url) {
                return Err(ScimError::AddressRefused {
                    method: method.to_string(),
                    path: path.clone(),
                    reason,
                });
            }
            let request = build(self.inner.http.request(method.clone(), url));
            let response = request
                .send()
                .await
                .map_err(|e| transport_error(&method, &path, &e, self.inner.timeout))?;
            self.read(&method, &path, response).await
        }
        .instrument(span.clone())
        .await;
        let status = match &result {
            Ok(answer) => Some(answer.status),
            Err(e) => e.status(),
        };
        if let Some(status) = status {
            span.record("status", status);
        }
        let record = CallRecord {
            method: method.to_string(),
            path,
            status,
            duration: started.elapsed(),
            error: result.as_ref().err().map(ToString::to_string),
        };
        // The observer runs inside the span, so it may tag it with what the call served.
        span.in_scope(|| {
            tracing::debug!(
                duration_ms = record.duration.as_millis() as u64,
                error = record.error.as_deref(),
                "SCIM call"
            );
            self.observe(&record);
        });
        result
    }

    async fn read(
        &self,
        method: &Method,
        path: &str,
        mut response: reqwest::Response,
    ) -> Result<Answer, ScimError> {
        // Taken when the headers arrive: an HTTP-date `Retry-After` counts from then.
        let received_at = SystemTime::now();
        let status = response.status().as_u16();
        let headers = response.headers();
        let meta = ResponseMeta {
            status,
            retry_after: header_text(headers, header::RETRY_AFTER),
            etag: header_text(headers, header::ETAG),
            content_type: header_text(headers, header::CONTENT_TYPE),
        };
        let max = self.inner.max_body;
        let too_large = || ScimError::BadResponse {
            method: method.to_string(),
            path: path.to_owned(),
            status,
            reason: format!("body larger than {max} bytes"),
        };
        if response.content_length().is_some_and(|n| n > max as u64) {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if bytes.len() + chunk.len() > max {
                        return Err(too_large());
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(transport_error(method, path, &e, self.inner.timeout)),
            }
        }
        decode_answer(method, path, &meta, &bytes, received_at)
    }

    /// A SCIM request with auth; a 401 on a cached OAuth2 token refreshes it once and retries.
    async fn scim(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Answer, ScimError> {
        let mut refreshed = false;
        loop {
            let (authorization, from_cache) = self.authorization(refreshed).await?;
            let if_match = match if_match {
                Some(v) => Some(HeaderValue::from_str(v).map_err(|_| {
                    ScimError::InvalidInput("meta.version is not a valid header value".into())
                })?),
                None => None,
            };
            let payload = body.map(|b| serde_json::to_vec(b).unwrap_or_default());
            let result = self
                .perform(method.clone(), url.clone(), |mut request| {
                    request =
                        request.header(header::ACCEPT, "application/scim+json, application/json");
                    if let Some(value) = authorization {
                        request = request.header(header::AUTHORIZATION, value);
                    }
                    if let Some(value) = if_match {
                        request = request.header(header::IF_MATCH, value);
                    }
                    if let Some(bytes) = payload {
                        request = request
                            .header(header::CONTENT_TYPE, "application/scim+json")
                            .body(bytes);
                    }
                    request
                })
                .await;
            match result {
                Err(ScimError::Http { status: 401, .. }) if from_cache && !refreshed => {
                    *self.aside(|| self.inner.token.lock()).await = None;
                    refreshed = true;
                }
                other => return other,
            }
        }
    }

    /// The `Authorization` header, and whether it came from a cached OAuth2 token.
    async fn authorization(
        &self,
        force_refresh: bool,
    ) -> Result<(Option<HeaderValue>, bool), ScimError> {
        let sensitive = |text: String| {
            let mut value = HeaderValue::from_str(&text).map_err(|_| {
                ScimError::Config("credential contains characters not allowed in a header".into())
            })?;
            value.set_sensitive(true);
            Ok::<_, ScimError>(Some(value))
        };
        match &self.inner.auth {
            Auth::None => Ok((None, false)),
            Auth::Bearer(token) => Ok((
                sensitive(format!("Bearer {}", token.expose_secret()))?,
                false,
            )),
            Auth::Basic { username, password } => {
                let raw = format!("{username}:{}", password.expose_secret());
                let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
                Ok((sensitive(format!("Basic {encoded}"))?, false))
            }
            Auth::OAuth2ClientCredentials {
                token_url,
                client_id,
                client_secret,
                scope,
            } => {
                // Held across the fetch so concurrent callers share one token request.
                let mut cached = self.aside(|| self.inner.token.lock()).await;
                if !force_refresh
                    && let Some(token) = cached.as_ref()
                    && Instant::now() < token.refresh_at
                {
                    return Ok((
                        sensitive(format!("Bearer {}", token.token.expose_secret()))?,
                        true,
                    ));
                }
                let token = self
                    .fetch_token(token_url, client_id, client_secret, scope.as_deref())
                    .await?;
                let header = sensitive(format!("Bearer {}", token.token.expose_secret()))?;
                *cached = Some(token);
                Ok((header, false))
            }
        }
    }

    async fn fetch_token(
        &self,
        token_url: &Url,
        client_id: &str,
        client_secret: &SecretString,
        scope: Option<&str>,
    ) -> Result<CachedToken, ScimError> {
        // The serializer is not `Send`; keep it out of the await below.
        let form = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "client_credentials");
            if let Some(scope) = scope {
                form.append_pair("scope", scope);
            }
            form.finish()
        };
        // RFC 6749 §2.3.1: id and secret are form-encoded before the Basic encoding.
        let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            enc(client_id),
            enc(client_secret.expose_secret())
        ));
        let mut authorization = HeaderValue::from_str(&format!("Basic {basic}")).map_err(|_| {
            ScimError::Config("client credentials are not valid in a header".into())
        })?;
        authorization.set_sensitive(true);
        let answer = self
            .perform(Method::POST, token_url.clone(), |request| {
                request
                    .header(header::AUTHORIZATION, authorization)
                    .header(header::ACCEPT, "application/json")
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(form)
            })
            .await?;
        token_from(answer.body, Instant::now()).map_err(|reason| ScimError::BadResponse {
            method: "POST".into(),
            path: token_url.path().to_owned(),
            status: answer.status,
            reason: reason.to_owned(),
        })
    }

    /// Reads `/ServiceProviderConfig`, `/ResourceTypes` and `/Schemas` (the last two best
    /// effort) and caches the result for the behaviour that depends on it.
    pub async fn discover(&self) -> Result<Capabilities, ScimError> {
        let spc = self
            .scim(
                Method::GET,
                self.url(&[self.inner.quirks.discovery_path.segment()], &[]),
                None,
                None,
            )
            .await?;
        let doc = spc.body.ok_or_else(|| ScimError::BadResponse {
            method: "GET".into(),
            path: format!("/{}", self.inner.quirks.discovery_path.segment()),
            status: spc.status,
            reason: "empty body".into(),
        })?;
        let mut capabilities = Capabilities::from_service_provider_config(&doc);
        if let Ok(Answer {
            body: Some(doc), ..
        }) = self
            .scim(Method::GET, self.url(&["ResourceTypes"], &[]), None, None)
            .await
        {
            capabilities.resource_types = Capabilities::names(&doc, "name");
        }
        if let Ok(Answer {
            body: Some(doc), ..
        }) = self
            .scim(Method::GET, self.url(&["Schemas"], &[]), None, None)
            .await
        {
            capabilities.schemas = Capabilities::names(&doc, "id");
        }
        self.set_capabilities(capabilities.clone());
        Ok(capabilities)
    }

    fn set_capabilities(&self, capabilities: Capabilities) {
        if let Ok(mut slot) = self.inner.capabilities.lock() {
            *slot = Some(capabilities);
        }
    }

    /// Cached capabilities, reading `/ServiceProviderConfig` on first use. A target whose
    /// config cannot be read gets the defaults; only a transient failure is retried next time.
    ///
    /// Calls that need them while the first read is under way wait for its answer. If that
    /// read failed transiently, they go on with the defaults rather than each asking again in
    /// turn (behind a hanging target each would wait its own timeout); a later call asks again.
    pub async fn capabilities(&self) -> Capabilities {
        use std::sync::atomic::Ordering;

        let cached = || self.inner.capabilities.lock().ok().and_then(|c| c.clone());
        if let Some(cached) = cached() {
            return cached;
        }
        let reads_before = self.inner.discovery_reads.load(Ordering::Acquire);
        let _turn = self.aside(|| self.inner.discovery_turn.lock()).await;
        if let Some(cached) = cached() {
            return cached;
        }
        if self.inner.discovery_reads.load(Ordering::Acquire) != reads_before {
            return Capabilities::default();
        }
        let url = self.url(&[self.inner.quirks.discovery_path.segment()], &[]);
        let answer = self.scim(Method::GET, url, None, None).await;
        self.inner.discovery_reads.fetch_add(1, Ordering::Release);
        match answer {
            Ok(Answer {
                body: Some(doc), ..
            }) => {
                let capabilities = Capabilities::from_service_provider_config(&doc);
                self.set_capabilities(capabilities.clone());
                capabilities
            }
            Ok(_) => Capabilities::default(),
            Err(e) => {
                if !e.is_transient() {
                    self.set_capabilities(Capabilities::default());
                }
                Capabilities::default()
            }
        }
    }

    fn use_etag(&self, capabilities: &Capabilities) -> bool {
        capabilities.etag && self.inner.quirks.supports_etag
    }

    /// The `count` to ask for: the wish, clamped to the quirks and the advertised maximum.
    async fn page_count(&self, wanted: u32) -> u32 {
        let advertised = self
            .capabilities()
            .await
            .filter_max_results
            .unwrap_or(u32::MAX);
        wanted
            .max(1)
            .min(self.inner.quirks.page_size)
            .min(advertised)
            .max(1)
    }

    /// Checks that the target is reachable, is a SCIM server, and accepts the credentials.
    pub async fn test_connection(&self) -> ConnectionReport {
        let mut report = ConnectionReport {
            reachable: false,
            auth_ok: false,
            capabilities: None,
            reason: None,
        };
        let spc_url = self.url(&[self.inner.quirks.discovery_path.segment()], &[]);
        match self.scim(Method::GET, spc_url, None, None).await {
            Ok(_) => report.reachable = true,
            Err(e) => {
                report.reachable = e.status().is_some();
                report.reason = Some(match &e {
                    ScimError::Http {
                        status: status @ (401 | 403),
                        ..
                    } => auth_reason(*status),
                    ScimError::Http { status, .. } => {
                        format!(
                            "not a SCIM server: /{} answered {status}",
                            self.inner.quirks.discovery_path.segment()
                        )
                    }
                    ScimError::BadResponse { reason, .. } => format!("not a SCIM server: {reason}"),
                    ScimError::Transport { message, .. } => message.clone(),
                    ScimError::AddressRefused { reason, .. } => {
                        format!("address refused: {reason}")
                    }
                    other => other.to_string(),
                });
                return report;
            }
        }
        // /ServiceProviderConfig often needs no credentials; a one-item page of Users does.
        let probe = match self.inner.quirks.paging {
            PagingMode::Index => vec![("startIndex", "1".into()), ("count", "1".into())],
            PagingMode::Cursor => vec![("cursor", String::new()), ("count", "1".into())],
            PagingMode::None => Vec::new(),
        };
        let probe = self.url(&["Users"], &probe);
        match self.scim(Method::GET, probe, None, None).await {
            Ok(_) => report.auth_ok = true,
            Err(ScimError::Http {
                status: status @ (401 | 403),
                ..
            }) => {
                report.reason = Some(auth_reason(status));
                return report;
            }
            Err(e) => {
                report.reason = Some(format!("GET /Users failed: {e}"));
                return report;
            }
        }
        match self.discover().await {
            Ok(capabilities) => report.capabilities = Some(capabilities),
            Err(e) => report.reason = Some(format!("discovery failed: {e}")),
        }
        report
    }
}

fn auth_reason(status: u16) -> String {
    if status == 401 {
        "401: token rejected".into()
    } else {
        "403: access denied".into()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResourceKind {
    Users,
    Groups,
}

impl ResourceKind {
    fn endpoint(self) -> &'static str {
        match self {
            Self::Users => "Users",
            Self::Groups => "Groups",
        }
    }
}

/// One page of a listing: its resources and the target's `totalResults`, when it sent one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Page {
    pub resources: Vec<Value>,
    pub total: Option<u64>,
    /// The listing ended because the target answered page 1 again, or because the next
    /// `startIndex` lay past a `totalResults` that had shrunk, or because a cursor came round
    /// again: what it held was not all read. With index paging such a page has no resources
    /// (they were read already, or there were none).
    pub wrapped: bool,
    /// Overlapping index paging ([`ListQuery::overlapping`]) only: this page did not begin
    /// with the last resource of the page before. The listing moved under the walk, which may
    /// have stepped over a resource: what it held was perhaps not all read.
    pub shifted: bool,
    /// A page of a listing whose completeness nothing proves: a target that does not page, or
    /// pages by index, answered without a `totalResults`, or its quirks say its user
    /// listings leave accounts out (`user_listings_complete: false`). What it holds is real,
    /// but an account it does not show is not known to be absent.
    pub unproven: bool,
    /// Of `unproven`'s reasons, this one: the quirks say the target's user listings leave
    /// accounts out. A listing may still prove absent an address at one of
    /// `user_listings_complete_for_domains` (see `Quirks::listing_proves_absence_of`).
    pub partial: bool,
    /// `paging: cursor` only (`None` otherwise): where this page left the cursor walk. A walk
    /// that ended on a page without `nextCursor`, never wrapped and met every id once has
    /// read the whole listing, `totalResults` or not (RFC 9865 sends none).
    pub cursor: Option<CursorStep>,
}

/// Where a page of a cursor listing (RFC 9865) left the walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorStep {
    /// The answer had a `nextCursor` not seen before: more pages follow.
    More,
    /// The answer had no `nextCursor`: the walk ended here.
    Last,
}

/// State of a paged listing between pages.
#[derive(Debug, Clone)]
struct Paging {
    next_start: u64,
    fetched: u64,
    /// `id` of the first resource of page 1: seeing it again means the server wrapped round.
    first_id: Option<String>,
    /// Overlapping index paging: `id` of the last resource read, which the next page must
    /// begin with (`None`: the next page cannot be checked, and is `shifted`).
    last_id: Option<String>,
    done: bool,
    /// The target answered `scimType: sensitive` to a filter in the URL: pages are asked
    /// with `POST …/.search` from then on.
    search: bool,
    /// `paging: cursor`: the cursor of the next page (empty for the first, RFC 9865 §2.1).
    cursor: String,
    /// `paging: cursor`: every cursor asked so far, so that a target that hands one out
    /// again ends the listing (as `wrapped`) instead of looping.
    cursors_seen: std::collections::HashSet<String>,
}

/// Where a page request starts, by the target's paging mode.
#[derive(Debug, Clone, Copy)]
enum PageAt<'a> {
    Index(u64),
    Cursor(&'a str),
    Whole,
}

/// The next state of a cursor listing (RFC 9865) after a page: done when the answer has no
/// `nextCursor`; a cursor handed out again ends the listing as `wrapped` (it would loop).
fn cursor_page(
    mut paging: Paging,
    total: Option<u64>,
    items: Vec<Value>,
    next_cursor: Option<String>,
) -> (Page, Paging) {
    paging.fetched += items.len() as u64;
    let asked = std::mem::take(&mut paging.cursor);
    paging.cursors_seen.insert(asked);
    let mut wrapped = false;
    let step = match next_cursor {
        None => {
            paging.done = true;
            CursorStep::Last
        }
        Some(next) if paging.cursors_seen.contains(&next) => {
            paging.done = true;
            wrapped = true;
            CursorStep::More
        }
        Some(next) => {
            paging.cursor = next;
            CursorStep::More
        }
    };
    let page = Page {
        resources: items,
        total,
        wrapped,
        shifted: false,
        unproven: false,
        partial: false,
        cursor: Some(step),
    };
    (page, paging)
}

/// One page of a listing, as [`parse_list_page`] reads it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ListPage {
    /// `totalResults`, when the target sent a non-negative integer.
    pub(crate) total: Option<u64>,
    pub(crate) items: Vec<Value>,
    /// RFC 9865 `nextCursor`, when the target sent a non-empty string.
    pub(crate) next_cursor: Option<String>,
}

/// Reads a ListResponse body: `totalResults` and `Resources`, both matched without regard to
/// case; a missing or `null` `Resources` is an empty page. Errors are the reason for a
/// `BadResponse`.
pub(crate) fn parse_list_page(body: &Value) -> Result<ListPage, &'static str> {
    let object = body.as_object().ok_or("list response is not an object")?;
    let total = filter::get_ci(object, "totalResults").and_then(Value::as_u64);
    let items = match filter::get_ci(object, "Resources") {
        Some(Value::Array(items)) => {
            let mut items = items.clone();
            items.iter_mut().for_each(canonical_names);
            items
        }
        None | Some(Value::Null) => Vec::new(),
        Some(_) => return Err("`Resources` is not an array"),
    };
    let next_cursor = match filter::get_ci(object, "nextCursor") {
        None | Some(Value::Null) => None,
        Some(Value::String(c)) if c.is_empty() => None,
        Some(Value::String(c)) => Some(c.clone()),
        // RFC 9865 says a string; a number is read as its text rather than end the listing.
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => return Err("`nextCursor` is not a string"),
    };
    Ok(ListPage {
        total,
        items,
        next_cursor,
    })
}

/// Whether a filtered answer, read page by page (overlapping), holds everything it counts:
/// no page came round to the first again or moved under the walk, `totalResults` never
/// shrank, and the distinct resources read reach the last `totalResults` (an answer without
/// one cannot be checked, and is taken as whole). Also for listings read by others
/// (reconciliation's `/Groups`).
#[derive(Debug, Default)]
pub struct WholeAnswer {
    ids: std::collections::HashSet<String>,
    without_id: u64,
    total: Option<u64>,
    wrapped: bool,
    moved: bool,
}

impl WholeAnswer {
    /// Takes one page of the listing into account; `first_sight` is called with each resource
    /// read for the first time (by its `id`; one without an `id` always is).
    pub fn page(&mut self, page: &Page, mut first_sight: impl FnMut(&Value)) {
        self.wrapped |= page.wrapped;
        self.moved |= page.shifted
            || page
                .total
                .is_some_and(|now| self.total.is_some_and(|t| now < t));
        self.total = page.total.or(self.total);
        for resource in &page.resources {
            let first = match id_of(resource) {
                Some(id) => self.ids.insert(id.to_owned()),
                None => {
                    self.without_id += 1;
                    true
                }
            };
            if first {
                first_sight(resource);
            }
        }
    }

    /// Why the answer is not whole, if it is not.
    #[must_use]
    pub fn short_by(&self) -> Option<String> {
        let read = self.ids.len() as u64 + self.without_id;
        if self.wrapped {
            return Some(format!(
                "the pages came round to the first after {read} resources"
            ));
        }
        if self.moved {
            return Some(format!(
                "resources moved between its pages ({read} read): one may have been stepped over"
            ));
        }
        self.total
            .filter(|&total| read < total)
            .map(|total| format!("{read} resources read of the {total} its totalResults counts"))
    }
}

/// `client.users()` or `client.groups()`: CRUD, look-ups and listing for one resource type.
#[derive(Clone, Debug)]
pub struct Resources {
    client: ScimClient,
    kind: ResourceKind,
}

fn no_body(method: &str, path: String, status: u16) -> ScimError {
    ScimError::BadResponse {
        method: method.into(),
        path,
        status,
        reason: "expected a resource, got an empty body".into(),
    }
}

impl Resources {
    fn item_url(&self, id: &str) -> Url {
        self.client.url(&[self.kind.endpoint(), id], &[])
    }

    fn item_path(&self, id: &str) -> String {
        self.item_url(id).path().to_owned()
    }

    /// POST; returns the created resource (with its `id`).
    pub async fn create(&self, resource: &Value) -> Result<Value, ScimError> {
        let url = self.client.url(&[self.kind.endpoint()], &[]);
        let path = url.path().to_owned();
        let answer = self
            .client
            .scim(Method::POST, url, Some(resource), None)
            .await?;
        let created = answer
            .body
            .ok_or_else(|| no_body("POST", path.clone(), answer.status))?;
        if id_of(&created).is_none() {
            return Err(ScimError::BadResponse {
                method: "POST".into(),
                path,
                status: answer.status,
                reason: "created resource has no id".into(),
            });
        }
        Ok(created)
    }

    pub async fn get(&self, id: &str) -> Result<Value, ScimError> {
        let answer = self
            .client
            .scim(Method::GET, self.item_url(id), None, None)
            .await?;
        answer
            .body
            .ok_or_else(|| no_body("GET", self.item_path(id), answer.status))
    }

    /// PUT. With ETags, `resource`'s own `meta.version` is sent as `If-Match`. A 412 is the
    /// caller's answer: `resource` was built from a copy someone has since changed, and sending
    /// it again with the new version would overwrite their change.
    pub async fn replace(&self, id: &str, resource: &Value) -> Result<Value, ScimError> {
        let capabilities = self.client.capabilities().await;
        let version = if self.client.use_etag(&capabilities) {
            version_of(resource)
        } else {
            None
        };
        self.put(id, resource, version).await
    }

    async fn put(
        &self,
        id: &str,
        resource: &Value,
        version: Option<&str>,
    ) -> Result<Value, ScimError> {
        let answer = self
            .client
            .scim(Method::PUT, self.item_url(id), Some(resource), version)
            .await?;
        match answer.body {
            Some(body) => Ok(body),
            // A 204 to PUT is off-spec but seen; the caller still wants the resource.
            None => self.get(id).await,
        }
    }

    /// PATCH. Returns the resource when the target sends it (200), `None` for 204. With ETags,
    /// `request.if_match` is sent as `If-Match`, and a 412 is returned as it is (the request was
    /// built from an older copy; see [`Resources::patch_after_read`] to build it again).
    ///
    /// Users on targets without PATCH (discovered, or `quirks.supports_patch = false`) are read,
    /// patched locally and PUT. Groups are never PUT (membership would be overwritten wholesale):
    /// there this is [`ScimError::Unsupported`].
    pub async fn patch(
        &self,
        id: &str,
        request: &PatchRequest,
    ) -> Result<Option<Value>, ScimError> {
        self.write(id, false, request.if_match.as_deref(), |_| request.clone())
            .await
            .map(|(answer, _)| answer)
    }

    /// Read-modify-write: reads the resource, and PATCHes it with what `change` makes of the
    /// copy read, sent with `If-Match` of that copy's version where the target supports ETags.
    /// On 412 (someone wrote in between) it reads again and applies `change` to the new copy,
    /// once: the change is re-applied to what the target holds now, never sent stale. Returns
    /// the answer to the PATCH and the copy it was built from.
    pub async fn patch_after_read(
        &self,
        id: &str,
        change: impl Fn(&Value) -> PatchRequest,
    ) -> Result<(Option<Value>, Value), ScimError> {
        let (answer, read) = self.write(id, true, None, change).await?;
        match read {
            Some(read) => Ok((answer, read)),
            None => Err(ScimError::InvalidInput(
                "read-modify-write without a read".into(),
            )),
        }
    }

    /// One PATCH, or a read-modify-write: `change` is given the copy read (or `Null` for a
    /// plain PATCH: a target with PATCH and no `read_first`). Targets without PATCH always
    /// read and PUT. A write built from a read and refused with 412 is built again from a new
    /// read, once. Returns the answer and the copy the write was built from.
    async fn write(
        &self,
        id: &str,
        read_first: bool,
        if_match: Option<&str>,
        change: impl Fn(&Value) -> PatchRequest,
    ) -> Result<(Option<Value>, Option<Value>), ScimError> {
        let capabilities = self.client.capabilities().await;
        let patch_ok = capabilities.patch && self.client.inner.quirks.supports_patch;
        let etag = self.client.use_etag(&capabilities);
        if !patch_ok && self.kind == ResourceKind::Groups {
            return Err(ScimError::Unsupported(
                "the target does not support PATCH, and group membership is never replaced with PUT".into(),
            ));
        }
        // Users on a target that PATCHes only `active` get every other change by PUT.
        let only_active =
            self.kind == ResourceKind::Users && self.client.inner.quirks.patch_only_active;
        let patch_takes =
            |request: &PatchRequest| patch_ok && (!only_active || request.only_active());
        // A plain PATCH (no read): the caller's request as it is.
        if patch_ok && !read_first {
            let request = change(&Value::Null);
            if patch_takes(&request) {
                let version = if etag { if_match } else { None };
                let answer = self.send_patch(id, &request, version).await?;
                return Ok((answer, None));
            }
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let current = self.get(id).await?;
            // A change is built only from the resource asked for: another one (a proxy mixing
            // answers up) would have its values written onto this one.
            if id_of(&current) != Some(id) {
                return Err(ScimError::BadResponse {
                    method: "GET".into(),
                    path: self.item_path(id),
                    status: 200,
                    reason: format!(
                        "asked for resource {id}, answered {}; nothing written",
                        id_of(&current).unwrap_or("one without an id")
                    ),
                });
            }
            let request = change(&current);
            let version = if etag {
                version_of(&current).map(str::to_owned)
            } else {
                None
            };
            let result = if patch_takes(&request) {
                self.send_patch(id, &request, version.as_deref()).await
            } else {
                let mut whole = current.clone();
                match patch::apply(&mut whole, &request) {
                    Ok(()) => self.put(id, &whole, version.as_deref()).await.map(Some),
                    Err(e) => Err(ScimError::InvalidInput(e.to_string())),
                }
            };
            match result {
                Err(ScimError::Http { status: 412, .. }) if version.is_some() && attempt < 2 => {}
                other => return other.map(|answer| (answer, Some(current))),
            }
        }
    }

    async fn send_patch(
        &self,
        id: &str,
        request: &PatchRequest,
        version: Option<&str>,
    ) -> Result<Option<Value>, ScimError> {
        let body = request.to_body(self.client.inner.quirks.patch_op_case);
        let answer = self
            .client
            .scim(Method::PATCH, self.item_url(id), Some(&body), version)
            .await?;
        Ok(answer.body)
    }

    /// DELETE; a 404 counts as done.
    pub async fn delete(&self, id: &str) -> Result<Deleted, ScimError> {
        match self
            .client
            .scim(Method::DELETE, self.item_url(id), None, None)
            .await
        {
            Ok(_) => Ok(Deleted::Deleted),
            Err(e) if e.is_not_found() => Ok(Deleted::AlreadyGone),
            Err(e) => Err(e),
        }
    }

    /// Resources whose `attr` holds `value`, by [`filter::holds_value`] (`userName` and
    /// `emails.value` ignoring case). Uses `filter=` with the value escaped; on targets without
    /// filtering, pages through everything. Either way every resource is checked here: a
    /// target that ignores or misreads the filter answers nothing it should not.
    pub async fn find_by(&self, attr: &str, value: &str) -> Result<Vec<Value>, ScimError> {
        if self.client.inner.quirks.filters_on(attr)
            && let Some(found) = self.filtered(attr, &[value]).await?
        {
            return Ok(found);
        }
        // Refuses an attribute that no filter could name, as the filtered look-up would.
        filter::eq(attr, value)?;
        let query = ListQuery {
            page_size: self.client.inner.quirks.page_size,
            overlapping: true,
            ..ListQuery::default()
        };
        self.whole_listing(query, |resource| filter::holds_value(resource, attr, value))
            .await
    }

    /// Resources whose `attr` holds any of `values`, in one `filter=attr eq "a" or attr eq "b"
    /// …` listing (every page of it), each checked here with [`filter::holds_value`] and each
    /// counted once, however often the pages repeat it. `None` when the target does not
    /// filter: the caller looks each value up with [`Resources::find_by`]. Which value a
    /// resource answers is the caller's to decide.
    ///
    /// Also `None` when the quirks say the target takes one term per filter, answers an
    /// unsupported filter with an empty list (an `or` could read as "nobody"), or does not
    /// filter on `attr`.
    pub async fn find_by_any(
        &self,
        attr: &str,
        values: &[&str],
    ) -> Result<Option<Vec<Value>>, ScimError> {
        let quirks = &self.client.inner.quirks;
        if values.len() > 1 && !quirks.merges_lookups() || !quirks.filters_on(attr) {
            return Ok(None);
        }
        self.filtered(attr, values).await
    }

    /// The filtered listing behind [`Resources::find_by_any`] and [`Resources::find_by`].
    async fn filtered(&self, attr: &str, values: &[&str]) -> Result<Option<Vec<Value>>, ScimError> {
        let capabilities = self.client.capabilities().await;
        if !(capabilities.filter && self.client.inner.quirks.supports_filter) || values.is_empty() {
            return Ok(None);
        }
        let terms = values
            .iter()
            .map(|v| filter::eq(attr, v))
            .collect::<Result<Vec<_>, _>>()?;
        let query = ListQuery {
            filter: Some(terms.join(" or ")),
            attributes: Vec::new(),
            page_size: self.client.inner.quirks.page_size,
            overlapping: true,
        };
        let wanted = |resource: &Value| {
            values
                .iter()
                .any(|v| filter::holds_value(resource, attr, v))
        };
        self.whole_listing(query, wanted).await.map(Some)
    }

    /// Every resource of `query` that `wanted` keeps, each once however often the pages repeat
    /// it. A listing that shows itself cut short (fewer distinct resources than its
    /// `totalResults`, come round to page 1, moved under its pages) is no answer: it would
    /// read as "absent" for what it left out, and that would be created twice.
    async fn whole_listing(
        &self,
        query: ListQuery,
        wanted: impl Fn(&Value) -> bool,
    ) -> Result<Vec<Value>, ScimError> {
        let mut whole = WholeAnswer::default();
        let mut found = Vec::new();
        let mut pages = self.list_pages(query);
        while let Some(page) = pages.try_next().await? {
            whole.page(&page, |resource| {
                if wanted(resource) {
                    found.push(resource.clone());
                }
            });
        }
        if let Some(reason) = whole.short_by() {
            return Err(ScimError::IncompleteListing {
                method: "GET".into(),
                path: self
                    .client
                    .url(&[self.kind.endpoint()], &[])
                    .path()
                    .to_owned(),
                reason,
            });
        }
        Ok(found)
    }

    /// Every resource, page by page (memory bounded by one page).
    pub fn list(&self, page_size: u32) -> BoxStream<'static, Result<Value, ScimError>> {
        self.list_query(ListQuery {
            page_size,
            ..ListQuery::default()
        })
    }

    /// Pages with `startIndex`/`count` until `totalResults` is reached. Also stops on an empty
    /// or short page without `totalResults`, on a page starting past `totalResults`, and when
    /// page 1 comes round again (servers that wrap `startIndex`), so it never loops forever.
    pub fn list_query(&self, query: ListQuery) -> BoxStream<'static, Result<Value, ScimError>> {
        self.list_pages(query)
            .map_ok(|page| stream::iter(page.resources.into_iter().map(Ok)))
            .try_flatten()
            .boxed()
    }

    /// [`Resources::list_query`] a page at a time, with each page's `totalResults` (for
    /// progress). Memory is bounded by one page.
    pub fn list_pages(&self, query: ListQuery) -> BoxStream<'static, Result<Page, ScimError>> {
        let this = self.clone();
        let start = Paging {
            next_start: 1,
            fetched: 0,
            first_id: None,
            last_id: None,
            done: false,
            search: false,
            cursor: String::new(),
            cursors_seen: std::collections::HashSet::new(),
        };
        stream::try_unfold(start, move |paging| {
            let this = this.clone();
            let query = query.clone();
            async move { this.next_page(paging, &query).await }
        })
        .boxed()
    }

    async fn next_page(
        &self,
        mut paging: Paging,
        query: &ListQuery,
    ) -> Result<Option<(Page, Paging)>, ScimError> {
        if paging.done {
            return Ok(None);
        }
        let mode = self.client.inner.quirks.paging;
        let count = self.client.page_count(query.page_size).await;
        let mut params = Vec::new();
        if let Some(filter) = &query.filter {
            params.push(("filter", filter.clone()));
        }
        if !query.attributes.is_empty() {
            params.push(("attributes", query.attributes.join(",")));
        }
        let at = match mode {
            PagingMode::Index => {
                params.push(("startIndex", paging.next_start.to_string()));
                params.push(("count", count.to_string()));
                PageAt::Index(paging.next_start)
            }
            PagingMode::Cursor => {
                params.push(("cursor", paging.cursor.clone()));
                params.push(("count", count.to_string()));
                PageAt::Cursor(&paging.cursor)
            }
            PagingMode::None => PageAt::Whole,
        };
        let url = self.client.url(&[self.kind.endpoint()], &params);
        let mut path = url.path().to_owned();
        let answer = if paging.search {
            self.search(query, at, count, &mut path).await?
        } else {
            match self.client.scim(Method::GET, url, None, None).await {
                // The target will not read the filter's values from a URL: ask with a body.
                Err(e) if e.is_sensitive() && query.filter.is_some() => {
                    paging.search = true;
                    self.search(query, at, count, &mut path).await?
                }
                other => other?,
            }
        };
        let body = answer
            .body
            .ok_or_else(|| no_body("GET", path.clone(), answer.status))?;
        let ListPage {
            total,
            items,
            next_cursor,
        } = parse_list_page(&body).map_err(|reason| ScimError::BadResponse {
            method: "GET".into(),
            path,
            status: answer.status,
            reason: reason.into(),
        })?;
        // A target whose user listings leave accounts out proves no absence, whatever it pages.
        let partial = !self.client.inner.quirks.user_listings_complete
            && matches!(self.kind, ResourceKind::Users);
        match mode {
            PagingMode::Index => {}
            PagingMode::Cursor => {
                let (mut page, paging) = cursor_page(paging, total, items, next_cursor);
                page.unproven |= partial;
                page.partial = partial;
                return Ok(Some((page, paging)));
            }
            PagingMode::None => {
                // One answer is the whole listing; only its `totalResults` can prove that.
                paging.done = true;
                let unproven = total.is_none() || partial;
                return Ok(Some((
                    Page {
                        resources: items,
                        total,
                        wrapped: false,
                        shifted: false,
                        unproven,
                        partial,
                        cursor: None,
                    },
                    paging,
                )));
            }
        }
        let first_of_page = items.first().and_then(id_of).map(str::to_owned);
        let wrapped = paging.next_start > 1
            && (total.is_some_and(|t| paging.next_start > t)
                || (first_of_page.is_some() && first_of_page == paging.first_id));
        if wrapped {
            paging.done = true;
            let page = Page {
                wrapped: true,
                ..Page::default()
            };
            return Ok(Some((page, paging)));
        }
        if paging.next_start == 1 {
            paging.first_id = first_of_page;
        }
        let mut items = items;
        let received = items.len() as u64;
        // Overlapping pages: a page after the first is asked from the last account of the one
        // before, which must come back first. If it does not, accounts moved under the walk
        // (one removed before it shifts the rest down, and the walk steps over an account).
        let mut shifted = false;
        if query.overlapping && paging.next_start > 1 {
            let first = items.first().and_then(id_of);
            if first.is_some() && first == paging.last_id.as_deref() {
                items.remove(0);
            } else {
                shifted = true;
            }
        }
        let overlap = u64::from(query.overlapping && received >= 2);
        paging.last_id = if overlap == 1 {
            items.last().and_then(id_of).map(str::to_owned)
        } else {
            None
        };
        let n = items.len() as u64;
        paging.fetched += n;
        // Advance by what arrived, not by `count`: a server may cap pages below both.
        paging.next_start += received - overlap;
        paging.done = n == 0
            || match total {
                Some(total) => paging.fetched >= total,
                None => received < u64::from(count),
            };
        Ok(Some((
            Page {
                resources: items,
                total,
                wrapped: false,
                shifted,
                // Without `totalResults` a short page proves no end: the target may cap its
                // pages below the count asked, silently.
                unproven: partial || total.is_none(),
                partial,
                cursor: None,
            },
            paging,
        )))
    }

    /// One page of `query` as `POST {endpoint}/.search` (RFC 7644 §3.4.3), for targets that
    /// refuse filter values in a URL (`scimType: sensitive`). Sets `path` to the one called.
    async fn search(
        &self,
        query: &ListQuery,
        at: PageAt<'_>,
        count: u32,
        path: &mut String,
    ) -> Result<Answer, ScimError> {
        let url = self.client.url(&[self.kind.endpoint(), ".search"], &[]);
        url.path().clone_into(path);
        let mut body = serde_json::json!({
            "schemas": [super::schemas::SEARCH_REQUEST],
        });
        match at {
            PageAt::Index(start) => {
                body["startIndex"] = start.into();
                body["count"] = count.into();
            }
            PageAt::Cursor(cursor) => {
                body["cursor"] = cursor.into();
                body["count"] = count.into();
            }
            PageAt::Whole => {}
        }
        if let Some(filter) = &query.filter {
            body["filter"] = Value::String(filter.clone());
        }
        if !query.attributes.is_empty() {
            body["attributes"] = serde_json::json!(query.attributes);
        }
        self.client.scim(Method::POST, url, Some(&body), None).await
    }

    /// Which of `member_ids` the target says are members of group `group_id`, for targets
    /// that answer groups without their members (`quirks.group_members_readable = false`):
    /// one `filter=id eq "g" and members eq "u"` listing per member, as such targets document
    /// it. A member is confirmed only by an answer holding the group itself (checked here);
    /// a 404 (a member the target does not know) is "not a member". `None` when the quirks
    /// say the target does not filter on `members`: then nothing can be read back, and the
    /// caller trusts its own record.
    pub async fn members_confirmed(
        &self,
        group_id: &str,
        member_ids: &[String],
    ) -> Result<Option<Vec<String>>, ScimError> {
        let quirks = &self.client.inner.quirks;
        if !(quirks.filters_on("members") && quirks.filters_on("id")) {
            return Ok(None);
        }
        let mut confirmed = Vec::new();
        for member in member_ids {
            let query = ListQuery {
                filter: Some(format!(
                    "{} and {}",
                    filter::eq("id", group_id)?,
                    filter::eq("members", member)?
                )),
                attributes: Vec::new(),
                page_size: quirks.page_size,
                overlapping: false,
            };
            let answer: Result<Vec<Value>, ScimError> = self.list_query(query).try_collect().await;
            match answer {
                Ok(groups) if groups.iter().any(|g| id_of(g) == Some(group_id)) => {
                    confirmed.push(member.clone());
                }
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Some(confirmed))
    }

    /// Adds members with PATCH, in chunks of `quirks.max_members_per_patch`.
    pub async fn add_members(
        &self,
        group_id: &str,
        member_ids: &[String],
    ) -> Result<(), ScimError> {
        for chunk in
            patch::chunk_members(member_ids, self.client.inner.quirks.max_members_per_patch)
        {
            self.patch(group_id, &PatchRequest::new().add_members(&chunk))
                .await?;
        }
        Ok(())
    }

    /// Removes members with PATCH `remove members[value eq "…"]`, chunked likewise; on a
    /// target that refuses value-filter paths (`quirks.patch_value_filters = false`), with one
    /// `remove` of `members` carrying the ids as its value.
    pub async fn remove_members(
        &self,
        group_id: &str,
        member_ids: &[String],
    ) -> Result<(), ScimError> {
        let by_filter = self.client.inner.quirks.patch_value_filters;
        for chunk in
            patch::chunk_members(member_ids, self.client.inner.quirks.max_members_per_patch)
        {
            let request = if by_filter {
                PatchRequest::new().remove_members(&chunk)
            } else {
                PatchRequest::new().remove_member_values(&chunk)
            };
            self.patch(group_id, &request).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_a_read_a_write_or_a_delete_by_its_method_and_a_search_is_a_read() {
        let url = |path: &str| Url::parse(&format!("https://t.example/scim/v2/{path}")).unwrap();
        assert_eq!(CallKind::of(&Method::GET, &url("Users")), CallKind::Read);
        assert_eq!(
            CallKind::of(&Method::POST, &url("Users/.search")),
            CallKind::Read
        );
        assert_eq!(CallKind::of(&Method::POST, &url("Users")), CallKind::Write);
        assert_eq!(CallKind::of(&Method::PUT, &url("Users/1")), CallKind::Write);
        assert_eq!(
            CallKind::of(&Method::PATCH, &url("Groups/1")),
            CallKind::Write
        );
        assert_eq!(
            CallKind::of(&Method::DELETE, &url("Users/1")),
            CallKind::Delete
        );
    }

    #[test]
    fn base_url_keeps_its_path_and_ids_stay_one_segment() {
        let config = TargetConfig::new(
            Url::parse("http://127.0.0.1:9/scim/v2").unwrap(),
            Auth::None,
            TargetPolicy::AllowPrivate,
        );
        let client = ScimClient::new(config).unwrap();
        let url = client.url(
            &["Users", "a/b?c"],
            &[("filter", r#"userName eq "x y""#.into())],
        );
        assert_eq!(url.path(), "/scim/v2/Users/a%2Fb%3Fc");
        assert_eq!(url.query(), Some("filter=userName%20eq%20%22x%20y%22"));
    }

    fn meta(status: u16, content_type: &str) -> ResponseMeta {
        ResponseMeta {
            status,
            content_type: Some(content_type.into()),
            ..ResponseMeta::default()
        }
    }

    #[test]
    fn a_2xx_to_patch_or_delete_is_a_success_whatever_its_body() {
        let now = SystemTime::now();
        for method in [Method::PATCH, Method::DELETE] {
            for (ct, body) in [
                ("text/html", &b"<html>OK</html>"[..]),
                ("application/json", b"OK"),
                ("text/plain", b"done"),
            ] {
                let answer = decode_answer(&method, "/Users/1", &meta(200, ct), body, now)
                    .unwrap_or_else(|e| panic!("{method} {ct}: {e}"));
                assert_eq!(answer.body, None);
            }
        }
        // A GET or POST needs its resource: the same answers are refused there.
        for method in [Method::GET, Method::POST] {
            assert!(
                decode_answer(&method, "/Users", &meta(200, "text/html"), b"<p>", now).is_err()
            );
            assert!(
                decode_answer(
                    &method,
                    "/Users",
                    &meta(200, "application/json"),
                    b"OK",
                    now
                )
                .is_err()
            );
        }
    }

    #[test]
    fn attribute_names_are_read_ignoring_case_and_numeric_ids_as_text() {
        let now = SystemTime::now();
        let body = br#"{"ID": 42, "UserName": "ada", "Meta": {"Version": "W/\"3\""},
                       "Emails": [{"Value": "a@x", "Primary": true}],
                       "Name": {"GivenName": "Ada"}, "custom": {"Value": 1}}"#;
        let answer = decode_answer(
            &Method::GET,
            "/Users/42",
            &meta(200, "application/scim+json"),
            body,
            now,
        )
        .unwrap();
        let user = answer.body.unwrap();
        assert_eq!(id_of(&user), Some("42"));
        assert_eq!(user["userName"], "ada");
        assert_eq!(version_of(&user), Some("W/\"3\""));
        assert_eq!(user["emails"][0]["value"], "a@x");
        assert_eq!(user["name"]["givenName"], "Ada");
        // Only known names are respelled; an exact spelling already there wins.
        let mut both = serde_json::json!({"id": "a", "ID": "b", "members": [{"value": 7}]});
        canonical_names(&mut both);
        assert_eq!(both["id"], "a");
        assert_eq!(both["members"][0]["value"], "7");
        let page = parse_list_page(&serde_json::json!({
            "TotalResults": 1, "Resources": [{"Id": 9, "USERNAME": "bob"}]
        }))
        .unwrap();
        assert_eq!(page.total, Some(1));
        assert_eq!(id_of(&page.items[0]), Some("9"));
        assert_eq!(page.items[0]["userName"], "bob");
    }

    #[test]
    fn logged_paths_keep_no_filter_values() {
        let config = TargetConfig::new(
            Url::parse("http://127.0.0.1:9/scim/v2").unwrap(),
            Auth::None,
            TargetPolicy::AllowPrivate,
        );
        let client = ScimClient::new(config).unwrap();
        let url = client.url(
            &["Users"],
            &[
                (
                    "filter",
                    r#"userName eq "ada@example.com" or emails.value eq "a\"b@x""#.into(),
                ),
                ("startIndex", "1".into()),
                ("count", "25".into()),
            ],
        );
        let logged = logged_path(&url);
        assert_eq!(
            logged,
            r#"/scim/v2/Users?filter=userName eq "<redacted>" or emails.value eq "<redacted>"&startIndex=1&count=25"#
        );
        assert!(!logged.contains("ada") && !logged.contains("b@x"));
        let plain = client.url(&["Users", "u-1"], &[]);
        assert_eq!(logged_path(&plain), "/scim/v2/Users/u-1");
    }

    #[test]
    fn cursor_listings_end_without_next_cursor_or_on_a_cursor_seen_before() {
        let page = parse_list_page(&serde_json::json!({
            "Resources": [{"id": "a"}], "nextCursor": "c2"
        }))
        .unwrap();
        assert_eq!(page.next_cursor.as_deref(), Some("c2"));
        assert_eq!(page.total, None);
        let last =
            parse_list_page(&serde_json::json!({"Resources": [], "nextCursor": ""})).unwrap();
        assert_eq!(last.next_cursor, None, "an empty cursor ends the listing");
        let numeric = parse_list_page(&serde_json::json!({"nextCursor": 3})).unwrap();
        assert_eq!(numeric.next_cursor.as_deref(), Some("3"));
        assert!(parse_list_page(&serde_json::json!({"nextCursor": {}})).is_err());

        let start = Paging {
            next_start: 1,
            fetched: 0,
            first_id: None,
            last_id: None,
            done: false,
            search: false,
            cursor: String::new(),
            cursors_seen: std::collections::HashSet::new(),
        };
        let item = || vec![serde_json::json!({"id": "x"})];
        let (page, paging) = cursor_page(start, None, item(), Some("c2".into()));
        assert!(!paging.done && !page.wrapped);
        assert_eq!(page.cursor, Some(CursorStep::More));
        assert_eq!(paging.cursor, "c2");
        let (page, paging) = cursor_page(paging, None, item(), Some("c3".into()));
        assert!(!paging.done && !page.wrapped);
        // Handed out again: the listing stops, marked as not wholly read.
        let (page, again) = cursor_page(paging.clone(), None, item(), Some("c2".into()));
        assert!(again.done && page.wrapped);
        assert_eq!(page.cursor, Some(CursorStep::More), "not an end: a loop");
        let (page, done) = cursor_page(paging, Some(3), item(), None);
        assert!(done.done && !page.wrapped);
        assert_eq!(page.cursor, Some(CursorStep::Last));
        assert_eq!(done.fetched, 3);
    }

    #[test]
    fn json_media_types_are_recognised() {
        assert!(is_json_media_type("application/scim+json; charset=utf-8"));
        assert!(is_json_media_type("Application/JSON"));
        assert!(!is_json_media_type("text/html"));
    }

    #[tokio::test]
    async fn literal_private_addresses_are_refused_under_public_only() {
        let config = TargetConfig::new(
            Url::parse("http://169.254.169.254/latest").unwrap(),
            Auth::Bearer(SecretString::from("canary-secret")),
            TargetPolicy::PublicOnly,
        );
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let mut config = config;
        config.observer = Some(Arc::new(move |r: &CallRecord| {
            sink.lock().unwrap().push(r.clone());
        }));
        let client = ScimClient::new(config).unwrap();
        let err = client.users().get("x").await.unwrap_err();
        assert!(matches!(err, ScimError::AddressRefused { .. }), "{err:?}");
        assert!(!format!("{err:?} {err}").contains("canary"));
        let records = seen.lock().unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].status, None);
        assert!(records[0].error.as_deref().unwrap().contains("metadata"));
    }

    #[tokio::test]
    async fn names_resolving_to_loopback_are_refused_at_connect_time() {
        let config = TargetConfig::new(
            Url::parse("http://localhost:9/v2").unwrap(),
            Auth::None,
            TargetPolicy::PublicOnly,
        );
        let client = ScimClient::new(config).unwrap();
        let err = client.users().get("x").await.unwrap_err();
        assert!(matches!(err, ScimError::AddressRefused { .. }), "{err:?}");
        assert!(err.to_string().contains("loopback"), "{err}");
    }
}
