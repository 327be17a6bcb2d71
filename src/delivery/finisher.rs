//! Group commit for the ends of jobs: a job's provisioning-log rows and its new queue state
//! (done, back to pending, dead) are written by one task, many jobs per transaction, instead of
//! two commits per job (each a disk flush on SQLite).
//!
//! Invariant: a job stays `running` until the batch holding its end commits, so nothing else
//! delivers the same resource meanwhile. If a batch cannot be written, its jobs keep their
//! `running` state until their lease expires and run again — harmless, because delivery is
//! level-triggered and matches before it creates.
use std::time::Duration;

use sea_orm::EntityTrait;
use tokio::sync::mpsc;

use crate::store::Db;
use crate::store::entity::operation;
use crate::store::queue;

/// Job ends written per transaction at most.
const MAX_BATCH: usize = 512;

/// How a job ended, as the queue records it.
#[derive(Debug, Clone)]
pub enum JobEnd {
    Complete,
    Retry {
        run_at_ms: i64,
        error: Option<String>,
        counts: bool,
    },
    Dead {
        error: String,
    },
}

impl JobEnd {
    #[must_use]
    pub fn retry(run_at_ms: i64, error: Option<&str>, counts: bool) -> Self {
        JobEnd::Retry {
            run_at_ms,
            error: error.map(str::to_owned),
            counts,
        }
    }
}

/// One finished job: its end and the provisioning-log rows of the calls it made.
pub struct Finished {
    pub job_id: i64,
    pub end: JobEnd,
    pub operations: Vec<operation::ActiveModel>,
    /// Released once the batch is written: the deletion guard counts the deprovision until
    /// its log rows are there.
    pub deprovision: Option<super::guard::DeprovisionSlot>,
}

/// The sending side, held by the engine's workers.
#[derive(Clone)]
pub struct Finisher {
    tx: mpsc::UnboundedSender<Finished>,
}

impl Finisher {
    /// Starts the writer task; it ends once every `Finisher` clone is dropped and the queue
    /// is written.
    #[must_use]
    pub fn start(db: Db) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, tokio::spawn(write_loop(db, rx)))
    }

    pub fn finish(&self, finished: Finished) {
        if self.tx.send(finished).is_err() {
            tracing::warn!(
                "The job writer has stopped; the job's lease will expire and it will run again"
            );
        }
    }
}

async fn write_loop(db: Db, mut rx: mpsc::UnboundedReceiver<Finished>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match write_batch(&db, &batch).await {
                Ok(()) => break,
                Err(e) if attempt < 3 => {
                    tracing::warn!(error = %e, jobs = batch.len(), "Could not record finished jobs; trying again");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, jobs = batch.len(), "Could not record finished jobs; their leases will expire and they will run again");
                    break;
                }
            }
        }
        batch.clear();
    }
}

async fn write_batch(db: &Db, batch: &[Finished]) -> Result<(), sea_orm::DbErr> {
    let tx = db.write_tx().await?;
    // SQLite allows 32766 bound values per statement; a log row binds 15.
    let rows: Vec<operation::ActiveModel> =
        batch.iter().flat_map(|f| f.operations.clone()).collect();
    for chunk in rows.chunks(1_000) {
        operation::Entity::insert_many(chunk.to_vec())
            .exec(&*tx)
            .await?;
    }
    let completed: Vec<i64> = batch
        .iter()
        .filter(|f| matches!(f.end, JobEnd::Complete))
        .map(|f| f.job_id)
        .collect();
    queue::complete_many(&*tx, &completed).await?;
    for f in batch {
        match &f.end {
            JobEnd::Complete => {}
            JobEnd::Retry {
                run_at_ms,
                error,
                counts,
            } => {
                queue::retry(&*tx, f.job_id, *run_at_ms, error.as_deref(), *counts).await?;
            }
            JobEnd::Dead { error } => queue::dead(&*tx, f.job_id, error).await?,
        }
    }
    tx.commit().await
}
