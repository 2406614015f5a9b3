//! A cohort's list id, sync markers and acknowledged members.
//!
//! The acknowledged set is a snapshot (sorted chunks of encoded ids) plus a journal of
//! confirmed batches. Loading replays the journal over the snapshot, run by run;
//! compaction writes a new snapshot and empties the journal in one transaction.

use futures_util::TryStreamExt;

use super::types::{from_db, to_db};
use super::{
    AckBatch, CohortKey, CohortState, IDS_PER_CHUNK, Lease, Op, PendingExport, StateError, Store,
    fenced, keyed, with_pool,
};
use crate::members::{self, IdSet, IdSetBuilder};

/// A row of the cohorts table with its journal summary.
type CohortRow = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<String>,
    i64,
    i64,
    i64,
);

/// The snapshot chunks, then the journal, in the order they must be applied.
const LOAD_SQL: &str = "\
    SELECT 0 AS part, seq, '' AS run_id, 'add' AS op, ids FROM snapshot_chunks \
    WHERE project = $1 AND cohort_id = $2 AND account = $3 \
    UNION ALL \
    SELECT 1 AS part, seq, run_id, op, ids FROM journal \
    WHERE project = $1 AND cohort_id = $2 AND account = $3 \
    ORDER BY part, seq";

impl Store {
    /// What is known about `key`; all empty when the cohort was never written.
    ///
    /// `acknowledged` counts the snapshot plus journaled adds minus journaled removes, which
    /// is exact when batches come from a diff against [`Store::load_acknowledged`].
    ///
    /// # Errors
    ///
    /// [`StateError::Query`] when the database fails.
    pub async fn cohort(&self, key: &CohortKey) -> Result<CohortState, StateError> {
        let sql = "SELECT c.list_id, c.synced_computed, c.pending_request_id, \
            c.pending_started_at, c.pending_computed, c.pending_properties, c.snapshot_count, \
            (SELECT COUNT(*) FROM journal j WHERE j.project = c.project \
             AND j.cohort_id = c.cohort_id AND j.account = c.account), \
            (SELECT CAST(COALESCE(SUM(CASE WHEN j.op = 'add' THEN j.id_count \
             ELSE -j.id_count END), 0) AS BIGINT) FROM journal j WHERE j.project = c.project \
             AND j.cohort_id = c.cohort_id AND j.account = c.account) \
            FROM cohorts c WHERE c.project = $1 AND c.cohort_id = $2 AND c.account = $3";
        let row: Option<CohortRow> = with_pool!(self, |db| {
            sqlx::query_as(sql)
                .bind(key.project.as_str())
                .bind(key.cohort_id.as_str())
                .bind(key.account.as_str())
                .fetch_optional(db)
                .await
        })
        .map_err(StateError::query("read a cohort"))?;

        let Some((
            list_id,
            synced_computed,
            request_id,
            started_at,
            computed,
            properties,
            snapshot,
            batches,
            net,
        )) = row
        else {
            return Ok(CohortState::default());
        };
        let pending = request_id.map(|request_id| PendingExport {
            request_id,
            started_at: started_at.unwrap_or_default(),
            computed,
            properties,
        });
        Ok(CohortState {
            list_id,
            synced_computed,
            pending,
            acknowledged: from_db(snapshot.saturating_add(net)),
            journal_batches: from_db(batches),
        })
    }

    /// The acknowledged ids of `key`: the snapshot, then each run's confirmed batches.
    ///
    /// Reads everything in one statement, so a concurrent compaction is seen whole or not.
    ///
    /// # Errors
    ///
    /// [`StateError::Corrupt`] when a stored id list cannot be decoded; [`StateError::Query`].
    pub async fn load_acknowledged(&self, key: &CohortKey) -> Result<IdSet, StateError> {
        let sizes = "SELECT CAST(COALESCE(SUM(id_count), 0) AS BIGINT), \
                     CAST(COALESCE(SUM(LENGTH(ids)), 0) AS BIGINT) FROM snapshot_chunks \
                     WHERE project = $1 AND cohort_id = $2 AND account = $3";
        let (ids, bytes): (i64, i64) = with_pool!(self, |db| {
            sqlx::query_as(sizes)
                .bind(key.project.as_str())
                .bind(key.cohort_id.as_str())
                .bind(key.account.as_str())
                .fetch_one(db)
                .await
        })
        .map_err(StateError::query("load acknowledged ids"))?;

        // Sized up front so the arena is not grown by doubling (and left up to twice too big).
        let ids = usize::try_from(ids).unwrap_or(0);
        let bytes = usize::try_from(bytes).unwrap_or(0).saturating_sub(2 * ids);
        let mut replay = Replay::new(key, IdSetBuilder::with_capacity(ids, bytes));
        with_pool!(self, |db| {
            let mut rows = keyed(LOAD_SQL, key).fetch(db);
            while let Some(row) = rows
                .try_next()
                .await
                .map_err(StateError::query("load acknowledged ids"))?
            {
                let (part, _seq, run_id, op, ids): (i32, i64, String, String, Vec<u8>) =
                    sqlx::FromRow::from_row(&row)
                        .map_err(StateError::query("load acknowledged ids"))?;
                replay.row(part == 0, run_id, &op, &ids)?;
            }
        });
        Ok(replay.finish())
    }

    /// Sets (or clears) the 1Flow list id of the lease's cohort.
    ///
    /// # Errors
    ///
    /// [`StateError::LeaseLost`]; [`StateError::Query`].
    pub async fn set_list_id(
        &self,
        lease: &Lease,
        list_id: Option<&str>,
    ) -> Result<(), StateError> {
        let sql = "UPDATE cohorts SET list_id = $4 \
                   WHERE project = $1 AND cohort_id = $2 AND account = $3";
        fenced!(self, lease, "set a list id", |tx, _now| {
            keyed(sql, &lease.key)
                .bind(list_id)
                .execute(&mut *tx)
                .await
                .map_err(StateError::query("set a list id"))?;
        });
        Ok(())
    }

    /// Starts over on a new list after 1Flow said the old one is gone: sets the list id and
    /// forgets the acknowledged ids and the synced `lastComputed`. A pending export is kept.
    ///
    /// # Errors
    ///
    /// [`StateError::LeaseLost`]; [`StateError::Query`].
    pub async fn reset_list(&self, lease: &Lease, new_list_id: &str) -> Result<(), StateError> {
        const ACTION: &str = "reset a list";
        let sql = "UPDATE cohorts SET list_id = $4, synced_computed = NULL, snapshot_count = 0 \
                   WHERE project = $1 AND cohort_id = $2 AND account = $3";
        fenced!(self, lease, ACTION, |tx, _now| {
            for sql in [DELETE_SNAPSHOT, DELETE_JOURNAL] {
                keyed(sql, &lease.key)
                    .execute(&mut *tx)
                    .await
                    .map_err(StateError::query(ACTION))?;
            }
            keyed(sql, &lease.key)
                .bind(new_list_id)
                .execute(&mut *tx)
                .await
                .map_err(StateError::query(ACTION))?;
        });
        Ok(())
    }

    /// Journals confirmed batches of run `run_id`, all in one transaction.
    ///
    /// Within one run, added and removed ids must be disjoint.
    ///
    /// # Errors
    ///
    /// [`StateError::LeaseLost`]; [`StateError::Query`]. Either all batches are recorded
    /// or none.
    pub async fn record_batches(
        &self,
        lease: &Lease,
        run_id: &str,
        batches: &[AckBatch],
    ) -> Result<(), StateError> {
        const ACTION: &str = "record confirmed batches";
        let sql = "INSERT INTO journal \
                   (project, cohort_id, account, run_id, op, id_count, ids, recorded_at) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
        fenced!(self, lease, ACTION, |tx, now| {
            for batch in batches {
                keyed(sql, &lease.key)
                    .bind(run_id)
                    .bind(batch.op.as_str())
                    .bind(i64::from(batch.count))
                    .bind(batch.ids.as_slice())
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(StateError::query(ACTION))?;
            }
        });
        Ok(())
    }

    /// Replaces the snapshot by `acknowledged` and empties the journal, in one transaction.
    ///
    /// With `Some(computed)`, also marks that export as fully synced and clears the pending
    /// export.
    ///
    /// # Errors
    ///
    /// [`StateError::LeaseLost`]; [`StateError::Query`]. On error nothing changed.
    pub async fn compact(
        &self,
        lease: &Lease,
        acknowledged: &IdSet,
        synced_computed: Option<&str>,
    ) -> Result<(), StateError> {
        const ACTION: &str = "compact acknowledged ids";
        let insert = "INSERT INTO snapshot_chunks \
                      (project, cohort_id, account, seq, id_count, ids) \
                      VALUES ($1, $2, $3, $4, $5, $6)";
        let update = match synced_computed {
            Some(_) => {
                "UPDATE cohorts SET snapshot_count = $4, synced_computed = $5, \
                 pending_request_id = NULL, pending_started_at = NULL, pending_computed = NULL, \
                 pending_properties = NULL \
                 WHERE project = $1 AND cohort_id = $2 AND account = $3"
            }
            None => {
                "UPDATE cohorts SET snapshot_count = $4 \
                 WHERE project = $1 AND cohort_id = $2 AND account = $3"
            }
        };
        // Chunks are encoded one at a time inside the transaction, so memory holds at most
        // one encoded chunk besides the set. (Indexing directly keeps this linear.)
        let total = acknowledged.len();

        fenced!(self, lease, ACTION, |tx, _now| {
            for sql in [DELETE_SNAPSHOT, DELETE_JOURNAL] {
                keyed(sql, &lease.key)
                    .execute(&mut *tx)
                    .await
                    .map_err(StateError::query(ACTION))?;
            }
            for (seq, first) in (0..total).step_by(IDS_PER_CHUNK).enumerate() {
                let end = (first + IDS_PER_CHUNK).min(total);
                let chunk = members::encode((first..end).map(|i| acknowledged.get(i)));
                keyed(insert, &lease.key)
                    .bind(seq as i64)
                    .bind((end - first) as i64)
                    .bind(chunk)
                    .execute(&mut *tx)
                    .await
                    .map_err(StateError::query(ACTION))?;
            }
            let mut query = keyed(update, &lease.key).bind(to_db(total as u64));
            if let Some(computed) = synced_computed {
                query = query.bind(computed);
            }
            query
                .execute(&mut *tx)
                .await
                .map_err(StateError::query(ACTION))?;
        });
        Ok(())
    }

    /// Records (or clears) the export requested and not yet fully synced.
    ///
    /// # Errors
    ///
    /// [`StateError::LeaseLost`]; [`StateError::Query`].
    pub async fn set_pending(
        &self,
        lease: &Lease,
        pending: Option<&PendingExport>,
    ) -> Result<(), StateError> {
        const ACTION: &str = "record the pending export";
        let sql = "UPDATE cohorts SET pending_request_id = $4, pending_started_at = $5, \
                   pending_computed = $6, pending_properties = $7 \
                   WHERE project = $1 AND cohort_id = $2 AND account = $3";
        fenced!(self, lease, ACTION, |tx, _now| {
            keyed(sql, &lease.key)
                .bind(pending.map(|p| p.request_id.as_str()))
                .bind(pending.map(|p| p.started_at))
                .bind(pending.and_then(|p| p.computed.as_deref()))
                .bind(pending.and_then(|p| p.properties.as_deref()))
                .execute(&mut *tx)
                .await
                .map_err(StateError::query(ACTION))?;
        });
        Ok(())
    }
}

const DELETE_SNAPSHOT: &str =
    "DELETE FROM snapshot_chunks WHERE project = $1 AND cohort_id = $2 AND account = $3";
const DELETE_JOURNAL: &str =
    "DELETE FROM journal WHERE project = $1 AND cohort_id = $2 AND account = $3";

/// Rebuilds the acknowledged set from rows in load order.
struct Replay<'k> {
    key: &'k CohortKey,
    snapshot: Option<IdSetBuilder>,
    acked: IdSet,
    run: Option<String>,
    adds: IdSetBuilder,
    removes: IdSetBuilder,
}

impl<'k> Replay<'k> {
    fn new(key: &'k CohortKey, snapshot: IdSetBuilder) -> Replay<'k> {
        Replay {
            key,
            snapshot: Some(snapshot),
            acked: IdSet::default(),
            run: None,
            adds: IdSetBuilder::default(),
            removes: IdSetBuilder::default(),
        }
    }

    fn row(
        &mut self,
        snapshot: bool,
        run_id: String,
        op: &str,
        ids: &[u8],
    ) -> Result<(), StateError> {
        let key = self.key;
        let corrupt = |detail: String| StateError::Corrupt {
            cohort: key.to_string(),
            detail,
        };

        let target = if snapshot {
            self.snapshot
                .as_mut()
                .ok_or_else(|| corrupt("a snapshot chunk follows the journal".into()))?
        } else {
            self.end_snapshot();
            if self.run.as_deref() != Some(run_id.as_str()) {
                self.end_run();
                self.run = Some(run_id);
            }
            match Op::parse(op) {
                Some(Op::Add) => &mut self.adds,
                Some(Op::Remove) => &mut self.removes,
                None => return Err(corrupt(format!("unknown journal operation {op:?}"))),
            }
        };
        target
            .extend_encoded(ids)
            .map_err(|e| corrupt(e.to_string()))
    }

    fn end_snapshot(&mut self) {
        if let Some(builder) = self.snapshot.take() {
            self.acked = builder.finish();
        }
    }

    fn end_run(&mut self) {
        let adds = std::mem::take(&mut self.adds).finish();
        let removes = std::mem::take(&mut self.removes).finish();
        if !adds.is_empty() || !removes.is_empty() {
            self.acked = self.acked.apply(&adds, &removes);
        }
    }

    fn finish(mut self) -> IdSet {
        self.end_snapshot();
        self.end_run();
        self.acked
    }
}
