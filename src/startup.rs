//! Building and running the service: used by `roster serve`, `roster demo` and the tests.
use std::net::SocketAddr;
use std::path::PathBuf;

use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::crypto::{CryptoError, SecretBox, load_or_create_key_file};
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
    #[error("cannot create the first API key: {0}")]
    Bootstrap(#[from] ServiceError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// The file beside a SQLite database that holds its credential key.
#[must_use]
pub fn sqlite_key_path(database_url: &str) -> Option<PathBuf> {
    let rest = database_url
        .strip_prefix("sqlite://")
        .or_else(|| database_url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    Some(PathBuf::from(format!("{path}.key")))
}

fn credential_key(config: &Config) -> Result<SecretBox, StartupError> {
    let key = current_key(config)?;
    Ok(match &config.secret_key_previous {
        Some(old) => key.with_previous(old)?,
        None => key,
    })
}

fn current_key(config: &Config) -> Result<SecretBox, StartupError> {
    if let Some(raw) = &config.secret_key {
        return Ok(SecretBox::from_base64(raw)?);
    }
    if !config.is_sqlite() {
        return Err(StartupError::SecretKeyRequired);
    }
    match sqlite_key_path(&config.database_url) {
        Some(path) => {
            let (key, created) = load_or_create_key_file(&path)?;
            if created {
                tracing::warn!(path = %path.display(), "ROSTER_SECRET_KEY is unset: created a key file beside the database; back it up with the database, or set ROSTER_SECRET_KEY");
            }
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

/// Connects, migrates, loads the credential key and makes sure an admin key exists. Returns
/// the service and, when one was generated, the initial admin token to print once.
pub async fn build(config: Config) -> Result<(Roster, Option<SecretString>), StartupError> {
    install_crypto_provider();
    let db = store::connect(&config.database_url, config.workers).await?;
    store::migrate(&db).await?;
    let secrets = credential_key(&config)?;
    let roster = Roster::new(db, secrets, config);
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

/// Binds `listen` (port 0 picks a free port) and serves until `shutdown` is cancelled.
pub async fn serve(roster: Roster, listen: &str) -> Result<RunningServer, StartupError> {
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
    let app = crate::api::app(roster);
    let handle = tokio::spawn(async move {
        let std_listener = listener.into_std()?;
        let acceptor = poem::listener::TcpAcceptor::from_std(std_listener)?;
        poem::Server::new_with_acceptor(acceptor)
            .run_with_graceful_shutdown(
                app,
                stop.cancelled_owned(),
                Some(std::time::Duration::from_secs(30)),
            )
            .await
    });
    Ok(RunningServer {
        addr,
        shutdown,
        handle,
        engine,
        scheduler,
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
