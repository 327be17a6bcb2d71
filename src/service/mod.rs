//! Use cases: ingest, apps, groups, identities, API keys, audit. One transaction per use case.
//!
//! `Roster` is the service facade the API calls. It owns the database handle, the credential
//! key and the settings; handlers never see sea-orm.
pub mod apps;
pub mod audit;
pub mod groups;
pub mod identities;
pub mod ingest;
pub mod keys;
pub mod operations;
pub mod planner;
pub mod reconcile;
pub mod secret_key;
pub mod snapshot;

use std::sync::Arc;

use sea_orm::{DatabaseConnection, DbErr};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::crypto::SecretBox;
use crate::delivery::engine::Delivery;
use crate::net_guard::{PlainHttp, TargetPolicy, TransportPolicy};
use crate::store::{Db, WriteTx};

/// What went wrong in a use case; `api::problem` maps each variant to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{kind} `{id}` does not exist")]
    NotFound { kind: &'static str, id: String },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    Conflict(String),
    #[error("this API key lacks the `{0}` scope")]
    Forbidden(&'static str),
    /// A change the caller's scope covers in general, but not this part of it.
    #[error("{0}: this needs an API key with the `admin` scope")]
    NeedsAdmin(String),
    /// `If-Match` named a version that is no longer current.
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("database error: {0}")]
    Db(#[from] DbErr),
}

impl ServiceError {
    /// Whether asking again would be answered the same: the request itself is refused, as
    /// opposed to the database or a dependency failing for now.
    #[must_use]
    pub fn is_permanent(&self) -> bool {
        !matches!(self, Self::Db(_) | Self::Unavailable(_) | Self::Internal(_))
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        Self::NotFound {
            kind,
            id: id.into(),
        }
    }
}

pub type ServiceResult<T> = Result<T, ServiceError>;

/// API-key scopes (DESIGN §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Admin,
    AppsWrite,
    EventsWrite,
    Read,
}

impl Scope {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::AppsWrite => "apps:write",
            Scope::EventsWrite => "events:write",
            Scope::Read => "read",
        }
    }

    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "admin" => Some(Scope::Admin),
            "apps:write" => Some(Scope::AppsWrite),
            "events:write" => Some(Scope::EventsWrite),
            "read" => Some(Scope::Read),
            _ => None,
        }
    }
}

/// What a route needs. `ReadConfig` is met by `read` and by `apps:write` (a platform team
/// must see what it registered); `admin` meets everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    ReadConfig,
    WriteApps,
    WriteEvents,
    Admin,
}

/// The caller, after its API key was checked.
#[derive(Debug, Clone)]
pub struct Principal {
    pub key_id: String,
    pub scopes: Vec<Scope>,
}

impl Principal {
    pub fn require(&self, permission: Permission) -> ServiceResult<()> {
        let has = |s: Scope| self.scopes.contains(&s);
        if has(Scope::Admin) {
            return Ok(());
        }
        let (ok, needed) = match permission {
            Permission::ReadConfig => (has(Scope::Read) || has(Scope::AppsWrite), Scope::Read),
            Permission::WriteApps => (has(Scope::AppsWrite), Scope::AppsWrite),
            Permission::WriteEvents => (has(Scope::EventsWrite), Scope::EventsWrite),
            Permission::Admin => (false, Scope::Admin),
        };
        if ok {
            Ok(())
        } else {
            Err(ServiceError::Forbidden(needed.as_str()))
        }
    }
}

/// The service facade: cheap to clone.
#[derive(Clone)]
pub struct Roster {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    secrets: SecretBox,
    config: Config,
    /// Wakes the delivery engine when new jobs are committed.
    jobs_ready: Arc<Notify>,
    delivery: Arc<Delivery>,
    /// Cancelled when the process shuts down: `serve` stops on it, and background work started
    /// by use cases (reconcile runs) is interrupted by it.
    shutdown: CancellationToken,
    /// Concurrent HR event requests share one commit (see `ingest::GroupCommit`).
    ingest_group: ingest::GroupCommit,
    /// When this process last recorded each API key's use.
    key_uses: keys::KeyUses,
    /// Wakes the HR snapshot worker when a snapshot is received or approved.
    snapshots_ready: Notify,
    /// Sources whose held-snapshot gauge this process has set (to zero them when released).
    held_sources: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// `ROSTER_RECONCILE_CONCURRENCY`: every reconcile run of this process takes one.
    reconcile_slots: crate::reconcile::run::RunSlots,
}

fn transport_policy_of(config: &Config) -> TransportPolicy {
    TransportPolicy {
        targets: TargetPolicy::from_allow_private(config.allow_private_targets),
        plain_http: PlainHttp::from_allow_insecure(config.allow_insecure_http),
    }
}

impl Roster {
    #[must_use]
    pub fn new(db: DatabaseConnection, secrets: SecretBox, config: Config) -> Self {
        let db = Db::new(db);
        let jobs_ready = Arc::new(Notify::new());
        let policy = transport_policy_of(&config);
        let delivery = Arc::new(Delivery::new(
            db.clone(),
            secrets.clone(),
            policy,
            jobs_ready.clone(),
        ));
        Self {
            inner: Arc::new(Inner {
                db,
                secrets,
                jobs_ready,
                delivery,
                shutdown: CancellationToken::new(),
                ingest_group: ingest::GroupCommit::default(),
                key_uses: keys::KeyUses::default(),
                snapshots_ready: Notify::new(),
                held_sources: std::sync::Mutex::default(),
                reconcile_slots: crate::reconcile::run::RunSlots::new(config.reconcile_concurrency),
                config,
            }),
        }
    }

    #[must_use]
    pub fn delivery(&self) -> Arc<Delivery> {
        self.inner.delivery.clone()
    }

    #[must_use]
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    #[must_use]
    pub fn db(&self) -> &DatabaseConnection {
        self.inner.db.conn()
    }

    #[must_use]
    pub fn store(&self) -> &Db {
        &self.inner.db
    }

    /// The reconcile runs of this process in progress now and at most at once.
    #[must_use]
    pub fn reconcile_slots(&self) -> &crate::reconcile::run::RunSlots {
        &self.inner.reconcile_slots
    }

    #[must_use]
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    #[must_use]
    pub fn secrets(&self) -> &SecretBox {
        &self.inner.secrets
    }

    #[must_use]
    pub fn jobs_ready(&self) -> Arc<Notify> {
        self.inner.jobs_ready.clone()
    }

    /// Tells the delivery engine that jobs were committed, so it claims them at once instead
    /// of at its next poll.
    pub fn notify_jobs(&self) {
        self.inner.jobs_ready.notify_one();
    }

    #[must_use]
    pub fn target_policy(&self) -> TargetPolicy {
        TargetPolicy::from_allow_private(self.inner.config.allow_private_targets)
    }

    /// Which addresses roster may call, and whether plain http may go to public hosts.
    #[must_use]
    pub fn transport_policy(&self) -> TransportPolicy {
        transport_policy_of(&self.inner.config)
    }

    pub(crate) fn key_uses(&self) -> &keys::KeyUses {
        &self.inner.key_uses
    }

    pub(crate) fn inner_group_commit(&self) -> &ingest::GroupCommit {
        &self.inner.ingest_group
    }

    pub async fn write_tx(&self) -> Result<WriteTx, DbErr> {
        self.inner.db.write_tx().await
    }

    pub async fn ready(&self) -> Result<(), String> {
        crate::store::ready(self.inner.db.conn()).await
    }
}

/// A new time-ordered id (UUID v7): index-friendly and sortable by creation.
#[must_use]
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Validates a short human-given name (app, group, key): 1..=64 characters from a safe set.
pub fn validate_name(field: &str, name: &str) -> ServiceResult<()> {
    let ok = (1..=64).contains(&name.chars().count())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ' '))
        && !name.starts_with(' ')
        && !name.ends_with(' ');
    if ok {
        Ok(())
    } else {
        Err(ServiceError::invalid(
            field,
            "must be 1 to 64 characters of letters, digits, space, `-`, `_` or `.`, not starting or ending with a space",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_follow_the_scope_table() {
        use Permission as P;
        let cases = [
            (Scope::Admin, [true, true, true, true]),
            (Scope::AppsWrite, [true, true, false, false]),
            (Scope::EventsWrite, [false, false, true, false]),
            (Scope::Read, [true, false, false, false]),
        ];
        for (scope, expected) in cases {
            let p = Principal {
                key_id: "k".into(),
                scopes: vec![scope],
            };
            let got = [P::ReadConfig, P::WriteApps, P::WriteEvents, P::Admin]
                .map(|perm| p.require(perm).is_ok());
            assert_eq!(got, expected, "scope {scope:?}");
        }
    }
}
