//! Building and running the service: used by `roster serve`, `roster demo` and the tests.
use std::net::SocketAddr;
use std::path::PathBuf;

use poem::listener::AcceptorExt as _;
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::crypto::{CryptoError, SecretBox, create_key_file, load_key_file};
use crate::delivery::engine::{self, EngineConfig};
use crate::service::{Roster, ServiceError};
use crate::store::{self, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(
        "ROSTER_SECRET_KEY is required with PostgreSQL (base64 of 32 random bytes, e.g. `openssl rand -base64 32`)"
    )]
    SecretKeyRequired,
    #[error("cannot set up the bootstrap admin key: {0}")]
    Bootstrap(#[from] ServiceError),
    #[error(
        "ROSTER_ADMIN_TOKEN has {0} characters: the bootstrap admin key needs 32 to 512 \
         (e.g. `openssl rand -base64 32`)"
    )]
    AdminTokenLength(usize),
    #[error(
        "the credential key file {path} is missing, but {sealed} app credential(s) in the \
         database are sealed with a key: restore the file from the backup taken with the \
         database, or set ROSTER_SECRET_KEY to that key; a new key would open none of them"
    )]
    KeyFileMissing { path: String, sealed: u64 },
    #[error("{0}")]
    CredentialKey(ServiceError),
    #[error("cannot check the apps' URLs: {0}")]
    AppUrls(ServiceError),
    #[error("ROSTER_TLS_CERT / ROSTER_TLS_KEY: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// The shortest `ROSTER_ADMIN_TOKEN` accepted: the token is the whole secret of an `admin` key.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 32;
/// The longest: what `Roster::authenticate` reads of a token.
pub const MAX_ADMIN_TOKEN_BYTES: usize = 512;

/// The file beside a SQLite database that holds its credential key.
#[must_use]
pub fn sqlite_key_path(database_url: &str) -> Option<PathBuf> {
    let path = store::sqlite_file(database_url)?;
    Some(PathBuf::from(format!("{}.key", path.display())))
}

async fn credential_key(
    config: &Config,
    db: &sea_orm::DatabaseConnection,
) -> Result<SecretBox, StartupError> {
    let key = current_key(config, db).await?;
    Ok(match &config.secret_key_previous {
        Some(old) => key.with_previous(old)?,
        None => key,
    })
}

async fn current_key(
    config: &Config,
    db: &sea_orm::DatabaseConnection,
) -> Result<SecretBox, StartupError> {
    use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};

    if let Some(raw) = &config.secret_key {
        return Ok(SecretBox::from_base64(raw)?);
    }
    if !config.is_sqlite() {
        return Err(StartupError::SecretKeyRequired);
    }
    match sqlite_key_path(&config.database_url) {
        Some(path) => {
            if let Some(key) = load_key_file(&path)? {
                return Ok(key);
            }
            // A lost key file must not be replaced silently: every sealed credential would
            // then fail to open, app by app, at delivery time.
            let sealed = crate::store::entity::app::Entity::find()
                .filter(
                    sea_orm::Condition::any()
                        .add(crate::store::entity::app::Column::SecretCiphertext.is_not_null())
                        .add(crate::store::entity::app::Column::TlsKeyCiphertext.is_not_null()),
                )
                .count(db)
                .await
                .map_err(StoreError::from)?;
            if sealed > 0 {
                return Err(StartupError::KeyFileMissing {
                    path: path.display().to_string(),
                    sealed,
                });
            }
            let key = create_key_file(&path)?;
            tracing::warn!(path = %path.display(), "ROSTER_SECRET_KEY is unset: created a key file beside the database; back it up with the database, or set ROSTER_SECRET_KEY");
            Ok(key)
        }
        None => {
            tracing::warn!(
                "In-memory database and no ROSTER_SECRET_KEY: using a key for this process only"
            );
            Ok(SecretBox::from_base64(&SecretString::from(
                SecretBox::generate_base64(),
            ))?)
        }
    }
}

/// The TLS provider for outbound HTTPS (reqwest is built without one, see DEPS.md).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Connects, migrates and loads the credential key (claiming it as the current one). Leaves
/// API keys alone: this is what commands other than `serve` use (`rotate-key`, `reconcile`).
pub async fn open(config: Config) -> Result<Roster, StartupError> {
    install_crypto_provider();
    let db = store::connect(&config.database_url, config.workers).await?;
    store::migrate(&db).await?;
    let secrets = credential_key(&config, &db).await?;
    let roster = Roster::new(db, secrets, config);
    roster
        .claim_credential_key()
        .await
        .map_err(StartupError::CredentialKey)?;
    // Reported in the log and in each app's status; their jobs wait.
    roster
        .hold_plain_http_apps()
        .await
        .map_err(StartupError::AppUrls)?;
    Ok(roster)
}

/// What `serve` (and the demo, the benchmarks and the tests, which serve too) starts with:
/// [`open`], then the bootstrap admin key from `ROSTER_ADMIN_TOKEN`, the one place that manages
/// it. Returns the service and, when one was generated, the initial admin token to print once.
pub async fn build(config: Config) -> Result<(Roster, Option<SecretString>), StartupError> {
    if let Some(token) = &config.admin_token {
        use secrecy::ExposeSecret;
        let secret = token.expose_secret();
        let chars = secret.chars().count();
        // Above 512 bytes `authenticate` would refuse it: fail here, not at the first request.
        if chars < MIN_ADMIN_TOKEN_CHARS || secret.len() > MAX_ADMIN_TOKEN_BYTES {
            return Err(StartupError::AdminTokenLength(chars));
        }
    }
    let roster = open(config).await?;
    let generated = roster.bootstrap_admin_key().await?;
    Ok((roster, generated))
}

/// A running HTTP server and delivery engine.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub handle: tokio::task::JoinHandle<std::io::Result<()>>,
    pub engine: Option<tokio::task::JoinHandle<()>>,
    /// The reconcile scheduler; runs beside the engine.
    pub scheduler: Option<tokio::task::JoinHandle<()>>,
    /// The API's connections held open now.
    pub connections: crate::listener::OpenConnections,
}

impl RunningServer {
    /// Stops accepting requests and claiming jobs, lets running work finish (up to 30 s),
    /// hands the rest back to the queue.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.handle.await;
        if let Some(engine) = self.engine {
            let _ = engine.await;
        }
        if let Some(scheduler) = self.scheduler {
            let _ = scheduler.await;
        }
    }
}

/// The TLS configuration of `ROSTER_TLS_CERT` and `ROSTER_TLS_KEY`, read now, if set.
fn server_tls(
    config: &Config,
) -> Result<Option<std::sync::Arc<rustls::ServerConfig>>, StartupError> {
    let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) else {
        return Ok(None);
    };
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|e| StartupError::Tls(format!("{}: {e}", path.display())))
    };
    crate::pki::server_config(&read(cert)?, &read(key)?, None)
        .map(Some)
        .map_err(|e| StartupError::Tls(e.to_string()))
}

/// Binds `listen` (port 0 picks a free port) and serves until `shutdown` is cancelled.
pub async fn serve(roster: Roster, listen: &str) -> Result<RunningServer, StartupError> {
    let tls = server_tls(roster.config())?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| StartupError::Listen {
            addr: listen.to_owned(),
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| StartupError::Listen {
            addr: listen.to_owned(),
            source,
        })?;
    // The service's own token: cancelling the server also interrupts its background runs.
    let shutdown = roster.shutdown_token().clone();
    let stop = shutdown.clone();
    let engine = roster.config().run_engine.then(|| {
        let config = EngineConfig {
            workers: roster.config().workers,
            probe_interval: roster.config().quarantine_probe,
            ..EngineConfig::default()
        };
        engine::start(roster.delivery(), config, shutdown.clone())
    });
    let scheduler = roster
        .config()
        .run_engine
        .then(|| crate::service::reconcile::start_scheduler(roster.clone(), shutdown.clone()));
    // The HR snapshot worker's handle is not kept: it stops on the same token, between
    // steps, and a step interrupted by the exit is resumed on the next start.
    drop(crate::service::snapshot::start_worker(
        roster.clone(),
        shutdown.clone(),
    ));
    let read_timeout = roster.config().http_read_timeout;
    let max_connections = roster.config().max_connections;
    let app = crate::api::app(roster);
    let connections = crate::listener::OpenConnections::default();
    let open = connections.clone();
    let handle = tokio::spawn(async move {
        let std_listener = listener.into_std()?;
        let acceptor = poem::listener::TcpAcceptor::from_std(std_listener)?;
        let acceptor = match tls {
            Some(config) => crate::listener::TlsAcceptor::new(acceptor, config).boxed(),
            None => acceptor.boxed(),
        };
        let limits = crate::listener::Limits {
            read_timeout,
            max_connections,
            drain: std::time::Duration::from_secs(30),
        };
        crate::listener::serve(acceptor, app, limits, open, stop).await
    });
    Ok(RunningServer {
        addr,
        shutdown,
        handle,
        engine,
        scheduler,
        connections,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_sits_beside_the_sqlite_file() {
        assert_eq!(
            sqlite_key_path("sqlite://roster.db?mode=rwc"),
            Some(PathBuf::from("roster.db.key"))
        );
        assert_eq!(
            sqlite_key_path("sqlite:///var/lib/roster/r.db"),
            Some(PathBuf::from("/var/lib/roster/r.db.key"))
        );
        assert_eq!(sqlite_key_path("sqlite::memory:"), None);
        assert_eq!(sqlite_key_path("postgres://x/y"), None);
    }
}
