//! The database: sea-orm entities, connection set-up, migrations and the queue's SQL.
//!
//! Invariant: every write that an API answer depends on is committed before the answer (callers
//! use one transaction per use case); SQLite runs in WAL mode with `synchronous=FULL` so that a
//! committed transaction survives a power cut, not only a process kill.
pub mod entity;
pub mod queue;
pub mod shapes;

use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    DbErr, TransactionTrait,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, OwnedMutexGuard};

/// Prepared statements each SQLite connection keeps (`shapes` keeps their texts few).
const STATEMENTS_KEPT: usize = 256;

/// The database handle shared by the API and the delivery engine.
#[derive(Clone)]
pub struct Db {
    conn: DatabaseConnection,
    /// SQLite has one writer; taking turns in-process avoids `SQLITE_BUSY` on the lock upgrade
    /// of deferred transactions. PostgreSQL uses row locks instead (`None`).
    write_lock: Option<Arc<Mutex<()>>>,
}

/// A write transaction; on SQLite it also holds the process-wide writer turn.
pub struct WriteTx {
    pub tx: DatabaseTransaction,
    _turn: Option<OwnedMutexGuard<()>>,
}

impl WriteTx {
    pub async fn commit(self) -> Result<(), DbErr> {
        self.tx.commit().await
    }
}

impl std::ops::Deref for WriteTx {
    type Target = DatabaseTransaction;
    fn deref(&self) -> &DatabaseTransaction {
        &self.tx
    }
}

impl Db {
    #[must_use]
    pub fn new(conn: DatabaseConnection) -> Self {
        let write_lock =
            (conn.get_database_backend() == DbBackend::Sqlite).then(|| Arc::new(Mutex::new(())));
        Self { conn, write_lock }
    }

    #[must_use]
    pub fn conn(&self) -> &DatabaseConnection {
        &self.conn
    }

    pub async fn write_tx(&self) -> Result<WriteTx, DbErr> {
        let turn = match &self.write_lock {
            Some(lock) => Some(lock.clone().lock_owned().await),
            None => None,
        };
        let tx = self.conn.begin().await?;
        if turn.is_some() {
            // sea-orm begins SQLite transactions DEFERRED. A deferred transaction that reads,
            // then writes after another connection committed, fails at once with
            // SQLITE_BUSY_SNAPSHOT (the busy timeout does not apply). A no-op write as the first
            // statement takes the write lock up front, waiting out other writers instead.
            // Prepared, not `execute_unprepared`: kept in the connection's statement cache
            // instead of parsed again for every write transaction.
            tx.execute_raw(sea_orm::Statement::from_string(
                DbBackend::Sqlite,
                "UPDATE api_key SET name = name WHERE 1 = 0",
            ))
            .await?;
        }
        Ok(WriteTx { tx, _turn: turn })
    }

    /// Runs one statement outside a transaction, in the writer's turn on SQLite.
    pub async fn write_turn(&self) -> Option<OwnedMutexGuard<()>> {
        match &self.write_lock {
            Some(lock) => Some(lock.clone().lock_owned().await),
            None => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database: {0}")]
    Connect(DbErr),
    #[error("cannot migrate the database: {0}")]
    Migrate(DbErr),
    #[error("database error: {0}")]
    Db(#[from] DbErr),
}

/// The file of a SQLite database URL; `None` for PostgreSQL and in-memory databases.
#[must_use]
pub fn sqlite_file(database_url: &str) -> Option<std::path::PathBuf> {
    let rest = database_url
        .strip_prefix("sqlite://")
        .or_else(|| database_url.strip_prefix("sqlite:"))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path == ":memory:" || query.split('&').any(|p| p == "mode=memory") {
        return None;
    }
    Some(path.into())
}

/// Creates a missing SQLite database file readable by its owner only, as the key file beside
/// it: it holds everyone's identity data. SQLite gives the `-wal` and `-shm` files it creates
/// the mode of the database file.
fn create_private_sqlite_file(path: &std::path::Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Opens the database named by `url` (`sqlite://…` or `postgres://…`), with the pool sized for
/// `workers` concurrent deliveries plus the API.
pub async fn connect(url: &str, workers: usize) -> Result<DatabaseConnection, StoreError> {
    let mut options = ConnectOptions::new(url.to_owned());
    let sqlite = url.starts_with("sqlite:");
    // Only where sqlx would create the file itself (`mode=rwc`), so a mistyped path still fails.
    if let Some(path) = sqlite_file(url)
        && url.contains("mode=rwc")
        && !path.exists()
    {
        create_private_sqlite_file(&path).map_err(|e| {
            StoreError::Connect(DbErr::Custom(format!(
                "cannot create {}: {e}",
                path.display()
            )))
        })?;
    }
    // SQLite allows one writer at a time; a large pool only queues on its lock, so keep it small
    // but big enough for concurrent readers (WAL lets readers run beside the writer).
    let max = if sqlite {
        8
    } else {
        (workers as u32 + 16).min(96)
    };
    options
        .max_connections(max)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(30))
        .sqlx_logging(false);
    if sqlite {
        // Per-connection pragmas go through sqlx's options so every pooled connection has them.
        options.map_sqlx_sqlite_opts(|o| {
            o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(30))
                .foreign_keys(true)
                // Prepared statements kept per connection, by text (sqlx's default is 100):
                // room for every statement roster repeats, at each of its few lengths
                // (`shapes`), so none is parsed again after its first use.
                .statement_cache_capacity(STATEMENTS_KEPT)
        });
    }
    let db = Database::connect(options)
        .await
        .map_err(StoreError::Connect)?;
    Ok(db)
}

pub async fn migrate(db: &DatabaseConnection) -> Result<(), StoreError> {
    Migrator::up(db, None).await.map_err(StoreError::Migrate)
}

/// How long `/readyz` waits for the database. The pool itself would keep retrying a refused
/// connection until its acquire timeout (30 s), longer than any probe waits.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// `/readyz`: the database answers (within 2 s) and every migration is applied. The reason
/// returned is for an unauthenticated probe, so it names the check that failed and nothing of
/// the database's own error text (host names, users, paths); that goes to the log.
pub async fn ready(db: &DatabaseConnection) -> Result<(), String> {
    tokio::time::timeout(READY_TIMEOUT, check_ready(db))
        .await
        .map_err(|_| {
            tracing::warn!("Readiness: the database did not answer within {READY_TIMEOUT:?}");
            "not ready: database did not answer in time".to_owned()
        })?
}

async fn check_ready(db: &DatabaseConnection) -> Result<(), String> {
    db.execute_unprepared("SELECT 1").await.map_err(|e| {
        tracing::warn!(error = %e, "Readiness: database unreachable");
        "not ready: database unreachable".to_owned()
    })?;
    let pending = Migrator::get_pending_migrations(db).await.map_err(|e| {
        tracing::warn!(error = %e, "Readiness: cannot read the applied migrations");
        "not ready: cannot read the applied migrations".to_owned()
    })?;
    if pending.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "not ready: {} migration(s) not applied",
            pending.len()
        ))
    }
}

#[must_use]
pub fn is_postgres(db: &impl ConnectionTrait) -> bool {
    db.get_database_backend() == DbBackend::Postgres
}

/// Whether a database error is a unique-constraint violation (a concurrent duplicate).
#[must_use]
pub fn is_unique_violation(err: &DbErr) -> bool {
    matches!(
        err.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_files_are_found_in_file_urls_only() {
        assert_eq!(
            sqlite_file("sqlite://roster.db?mode=rwc"),
            Some("roster.db".into())
        );
        assert_eq!(
            sqlite_file("sqlite:///var/lib/r.db"),
            Some("/var/lib/r.db".into())
        );
        for none in [
            "sqlite::memory:",
            "sqlite://shared?mode=memory&cache=shared",
            "sqlite://",
            "postgres://x/y",
        ] {
            assert_eq!(sqlite_file(none), None, "{none}");
        }
    }
}
