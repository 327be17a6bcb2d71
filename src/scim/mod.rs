//! A self-contained SCIM 2.0 client (RFC 7643/7644). Knows nothing of roster's database.
//!
//! API boundary: delivery, reconcile and the app service use only what this module exports.
//! It imports nothing from roster but [`crate::net_guard`].
//!
//! ```text
//! let client = ScimClient::new(TargetConfig { quirks: Quirks::from_json(&app.quirks)?, timeout,
//!                                             observer: Some(log), ..TargetConfig::new(url, auth, policy) })?;
//! let user  = client.users().create(&json!({"userName": "ada", ...})).await?;   // POST
//! let found = client.users().find_by("userName", "ada").await?;                 // filter, escaped
//! client.users().patch(id, &PatchRequest::new().replace_value(json!({"active": false}))).await?;
//! client.groups().add_members(gid, &ids).await?;                                // chunked PATCHes
//! let mut all = client.users().list(200);                                       // Stream of resources
//! client.users().delete(id).await?;                                             // 404 = AlreadyGone
//! let report = client.test_connection().await;
//! ```
//!
//! - Resources are `serde_json::Value`; [`id_of`] and [`version_of`] read `id` and
//!   `meta.version`.
//! - Behaviour follows discovery ([`ScimClient::capabilities`], read lazily from
//!   `/ServiceProviderConfig` and cached) and the [`Quirks`]: no PATCH → users are patched
//!   locally and PUT; ETags → `If-Match`, and a 412 re-reads the version and retries once;
//!   no filter → look-ups page through the collection; every look-up answer is checked
//!   locally ([`filter::holds_value`]) and each account counted once; `count` is clamped to
//!   `quirks.page_size` and `filter.maxResults`; listings page as `quirks.paging` says
//!   (`startIndex`, RFC 9865 cursors, or one answer, whose completeness only `totalResults`
//!   proves: [`Page::unproven`]).
//! - Errors are [`ScimError`]; [`ScimError::class`] (from the pure [`classify`]) says transient,
//!   conflict, auth, not found or permanent. [`parse_retry_after`] reads `Retry-After`.
//! - Every HTTP call (token requests included) yields a [`CallRecord`] for the optional
//!   [`CallObserver`] (called inside the call's span) and a `scim_call` info span. Secrets
//!   appear in neither.
//! - Safety: no redirects, no proxies, a whole-request timeout, an 8 MiB body cap, and the SSRF
//!   guard at connect time (a resolver that drops refused addresses, plus a check of IP
//!   literals before every request).
pub mod auth;
pub mod client;
pub mod discovery;
pub mod error;
pub mod filter;
pub mod patch;
pub mod quirks;

pub use auth::Auth;
pub use client::{
    CallGate, CallKind, CallObserver, CallPass, CallRecord, ClientTls, ConnectionReport,
    CursorStep, DEFAULT_MAX_BODY_BYTES, Deleted, ListQuery, Page, Resources, ScimClient,
    TargetConfig, WholeAnswer, id_of, install_crypto_provider, version_of,
};
pub use discovery::Capabilities;
pub use error::{
    ErrorClass, MAX_RETRY_AFTER, ScimError, TransportKind, classify, parse_retry_after,
};
pub use patch::{PatchError, PatchOp, PatchOperation, PatchRequest, chunk_members};
pub use quirks::{DiscoveryPath, Paging, PatchOpCase, Quirks, QuirksError, UnsupportedFilter};

/// Schema URNs used in request bodies.
pub mod schemas {
    pub const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
    pub const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
    pub const ENTERPRISE_USER: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
    pub const LIST_RESPONSE: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
    pub const ERROR: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
    pub const SEARCH_REQUEST: &str = "urn:ietf:params:scim:api:messages:2.0:SearchRequest";
    pub const PATCH_OP: &str = super::patch::PATCH_OP_SCHEMA;
}
