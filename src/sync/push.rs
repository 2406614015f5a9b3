//! Pushes one side of a diff (adds or removes) to 1Flow and acknowledges each batch.
//!
//! Batches run with bounded concurrency. A batch holds its slot until its
//! acknowledgement is durable in the state store, so a crash can leave at most
//! `concurrency` batches sent but not recorded. Acknowledgements that arrive together
//! are written in one transaction by a single writer task.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::members::{self, IdSet};
use crate::oneflow::{OneflowClient, OneflowError, SendReport, plan_batches};
use crate::state::{AckBatch, Lease, Op, StateError, Store};

/// One side of a diff: positions into a member set, all with the same operation.
pub struct Side<'a> {
    /// Add or remove.
    pub op: Op,
    /// The set the positions point into.
    pub set: &'a IdSet,
    /// Positions of the ids to send, ascending.
    pub positions: &'a [u32],
}

/// Limits for one push.
#[derive(Debug, Clone, Copy)]
pub struct PushLimits {
    /// Ids per batch.
    pub batch_size: usize,
    /// Bytes per batch body.
    pub max_batch_bytes: usize,
    /// Batches in flight.
    pub concurrency: usize,
}

/// Why a push stopped early.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// 1Flow refused or kept failing.
    #[error(transparent)]
    Oneflow(#[from] OneflowError),
    /// An acknowledgement could not be recorded.
    #[error("recording confirmed batches failed: {0}")]
    State(Arc<StateError>),
    /// The acknowledgement writer stopped.
    #[error("recording confirmed batches failed: the writer stopped")]
    WriterStopped,
}

/// What one push did.
#[derive(Debug, Default)]
pub struct PushOutcome {
    /// Ranges of `positions` that 1Flow confirmed and the store recorded.
    pub confirmed: Vec<Range<usize>>,
    /// Batches confirmed.
    pub batches: u32,
    /// Retries and throttling.
    pub report: SendReport,
    /// The first failure, if the push stopped early; work before it is kept.
    pub error: Option<PushError>,
    /// Whether the push stopped because the run was cancelled.
    pub cancelled: bool,
}

impl PushOutcome {
    /// Ids confirmed.
    pub fn confirmed_ids(&self) -> usize {
        self.confirmed.iter().map(Range::len).sum()
    }
}

type AckRequest = (AckBatch, oneshot::Sender<Result<(), Arc<StateError>>>);

/// Writes acknowledgements for one run, grouping those that wait together.
pub struct AckWriter {
    sender: mpsc::Sender<AckRequest>,
    task: tokio::task::JoinHandle<()>,
}

impl AckWriter {
    /// Starts the writer for a run holding `lease`.
    pub fn start(store: Store, lease: Lease, run_id: String) -> AckWriter {
        let (sender, mut receiver) = mpsc::channel::<AckRequest>(256);
        let task = tokio::spawn(async move {
            while let Some(first) = receiver.recv().await {
                let mut group = vec![first];
                while let Ok(next) = receiver.try_recv() {
                    group.push(next);
                }
                let (batches, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
                let result = store
                    .record_batches(&lease, &run_id, &batches)
                    .await
                    .map_err(Arc::new);
                for reply in replies {
                    let _ = reply.send(result.clone());
                }
            }
        });
        AckWriter { sender, task }
    }

    async fn acknowledge(&self, batch: AckBatch) -> Result<(), PushError> {
        let (reply, wait) = oneshot::channel();
        self.sender
            .send((batch, reply))
            .await
            .map_err(|_| PushError::WriterStopped)?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(PushError::State(error)),
            Err(_) => Err(PushError::WriterStopped),
        }
    }

    /// Waits for every queued acknowledgement to be written.
    pub async fn finish(self) {
        drop(self.sender);
        let _ = self.task.await;
    }
}

/// Sends every id of `side` in batches and acknowledges what 1Flow confirms.
///
/// `sent` counts ids confirmed, for progress reports. Stops launching batches at the
/// first failure or when `cancel` fires; batches in flight are still awaited.
pub async fn push(
    client: &OneflowClient,
    list_id: &str,
    side: Side<'_>,
    limits: PushLimits,
    acks: &AckWriter,
    cancel: &CancellationToken,
    sent: &AtomicU64,
) -> PushOutcome {
    let ids = |range: &Range<usize>| -> Vec<&[u8]> {
        side.positions[range.clone()]
            .iter()
            .map(|&p| side.set.get(p as usize))
            .collect()
    };
    let plan = plan_batches(
        side.positions.iter().map(|&p| side.set.get(p as usize)),
        limits.batch_size,
        limits.max_batch_bytes,
    );

    let stop = cancel.child_token();
    let batches = futures_util::stream::iter(plan)
        .take_while(|_| std::future::ready(!stop.is_cancelled()))
        .map(|range| {
            let stop = &stop;
            async move {
                let batch = ids(&range);
                let report = match client.send_batch(list_id, side.op, &batch).await {
                    Ok(report) => report,
                    Err(error) => {
                        stop.cancel();
                        return (range, Err(PushError::from(error)));
                    }
                };
                let ack = AckBatch {
                    op: side.op,
                    ids: members::encode(batch.iter().copied()),
                    count: batch.len() as u32,
                };
                if let Err(error) = acks.acknowledge(ack).await {
                    stop.cancel();
                    return (range, Err(error));
                }
                sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
                (range, Ok(report))
            }
        })
        .buffer_unordered(limits.concurrency.max(1));
    futures_util::pin_mut!(batches);

    let mut outcome = PushOutcome::default();
    while let Some((range, result)) = batches.next().await {
        match result {
            Ok(report) => {
                outcome.report += report;
                outcome.batches += 1;
                outcome.confirmed.push(range);
            }
            Err(error) if outcome.error.is_none() => outcome.error = Some(error),
            Err(_) => {}
        }
    }
    outcome.confirmed.sort_by_key(|range| range.start);
    outcome.cancelled = outcome.error.is_none() && cancel.is_cancelled();
    outcome
}

/// The ids of `side` that `outcome` confirmed, as a set.
pub fn confirmed_set(side: &Side<'_>, outcome: &PushOutcome) -> IdSet {
    let mut builder = members::IdSetBuilder::with_capacity(outcome.confirmed_ids(), 0);
    for range in &outcome.confirmed {
        for &position in &side.positions[range.clone()] {
            builder.push(side.set.get(position as usize));
        }
    }
    builder.finish()
}
