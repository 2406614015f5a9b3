//! Run history per cohort, the list of known cohorts, and the export ledger per project.
//!
//! The ledger counts exports started per calendar month; a reservation is one atomic
//! upsert, so several processes on one PostgreSQL never pass the monthly limit together.

use super::types::{from_db, to_db};
use super::{
    CohortKey, Lease, RUN_IN_PROGRESS, RunCounts, RunRecord, StateError, Store, fenced, keyed,
    with_pool,
};

/// A runs row: ids, times, result, the eight counts, error, holder.
type RunRow = (
    String,
    i64,
    Option<i64>,
    String,
    (i64, i64, i64, i64, i64, i64, i64, i64),
    Option<String>,
    String,
);

impl Store {
    /// Records that run `run_id` started now, with result [`RUN_IN_PROGRESS`].
    ///
    /// Starting a run id that is already recorded changes nothing.
    ///
    /// # Errors
    ///
    /// [`StateError::LeaseLost`]; [`StateError::Query`].
    pub async fn start_run(&self, lease: &Lease, run_id: &str) -> Result<(), StateError> {
        const ACTION: &str = "record a run start";
        let sql = "INSERT INTO runs \
                   (project, cohort_id, account, run_id, started_at, result, holder) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7) \
                   ON CONFLICT (project, cohort_id, account, run_id) DO NOTHING";
        fenced!(self, lease, ACTION, |tx, now| {
            keyed(sql, &lease.key)
                .bind(run_id)
                .bind(now)
                .bind(RUN_IN_PROGRESS)
                .bind(lease.holder.as_str())
                .execute(&mut *tx)
                .await
                .map_err(StateError::query(ACTION))?;
        });
        Ok(())
    }

    /// Records how run `record.run_id` ended, inserting it if it was never started.
    ///
    /// A started run keeps its recorded start time; `finished_at` defaults to now and the
    /// holder is the lease's.
    ///
    /// # Errors
    ///
    /// [`StateError::LeaseLost`]; [`StateError::Query`].
    pub async fn finish_run(&self, lease: &Lease, record: &RunRecord) -> Result<(), StateError> {
        const ACTION: &str = "record a run end";
        let sql = "INSERT INTO runs (project, cohort_id, account, run_id, started_at, \
                   finished_at, result, members, anonymous, unmapped, invalid, adds, removes, \
                   batches, retries, error, holder) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
                   $10, $11, $12, $13, $14, $15, $16, $17) \
                   ON CONFLICT (project, cohort_id, account, run_id) DO UPDATE SET \
                   finished_at = excluded.finished_at, result = excluded.result, \
                   members = excluded.members, anonymous = excluded.anonymous, \
                   unmapped = excluded.unmapped, invalid = excluded.invalid, \
                   adds = excluded.adds, removes = excluded.removes, \
                   batches = excluded.batches, retries = excluded.retries, \
                   error = excluded.error, holder = excluded.holder";
        let c = &record.counts;
        fenced!(self, lease, ACTION, |tx, now| {
            keyed(sql, &lease.key)
                .bind(record.run_id.as_str())
                .bind(record.started_at)
                .bind(record.finished_at.unwrap_or(now))
                .bind(record.result.as_str())
                .bind(to_db(c.members))
                .bind(to_db(c.anonymous))
                .bind(to_db(c.unmapped))
                .bind(to_db(c.invalid))
                .bind(to_db(c.adds))
                .bind(to_db(c.removes))
                .bind(to_db(c.batches))
                .bind(to_db(c.retries))
                .bind(record.error.as_deref())
                .bind(lease.holder.as_str())
                .execute(&mut *tx)
                .await
                .map_err(StateError::query(ACTION))?;
        });
        Ok(())
    }

    /// The latest `limit` runs of `key`, newest first.
    ///
    /// # Errors
    ///
    /// [`StateError::Query`] when the database fails.
    pub async fn runs(&self, key: &CohortKey, limit: u32) -> Result<Vec<RunRecord>, StateError> {
        let sql = "SELECT run_id, started_at, finished_at, result, members, anonymous, \
                   unmapped, invalid, adds, removes, batches, retries, error, holder FROM runs \
                   WHERE project = $1 AND cohort_id = $2 AND account = $3 \
                   ORDER BY started_at DESC, seq DESC LIMIT $4";
        let rows = with_pool!(self, |db| {
            let rows = keyed(sql, key)
                .bind(i64::from(limit))
                .fetch_all(db)
                .await
                .map_err(StateError::query("read run history"))?;
            rows.iter()
                .map(run_row)
                .collect::<Result<Vec<RunRow>, _>>()
                .map_err(StateError::query("read run history"))?
        });
        Ok(rows.into_iter().map(run_record).collect())
    }

    /// Every cohort with stored state, sorted.
    ///
    /// # Errors
    ///
    /// [`StateError::Query`] when the database fails.
    pub async fn cohort_keys(&self) -> Result<Vec<CohortKey>, StateError> {
        let sql = "SELECT project, cohort_id, account FROM cohorts \
                   ORDER BY project, cohort_id, account";
        let rows: Vec<(String, String, String)> =
            with_pool!(self, |db| sqlx::query_as(sql).fetch_all(db).await)
                .map_err(StateError::query("list cohorts"))?;
        Ok(rows
            .into_iter()
            .map(|(project, cohort_id, account)| CohortKey {
                project,
                cohort_id,
                account,
            })
            .collect())
    }

    /// Counts one more export started by `project` in `month` ("2026-12", UTC), unless
    /// `limit` are already counted. Returns the new count, or `None` when the budget is spent.
    ///
    /// # Errors
    ///
    /// [`StateError::Query`] when the database fails; nothing is counted then.
    pub async fn reserve_export(
        &self,
        project: &str,
        month: &str,
        limit: u32,
    ) -> Result<Option<u32>, StateError> {
        if limit == 0 {
            return Ok(None);
        }
        let sql = "INSERT INTO export_ledger (project, month, exports) VALUES ($1, $2, 1) \
                   ON CONFLICT (project, month) DO UPDATE SET \
                   exports = export_ledger.exports + 1 WHERE export_ledger.exports < $3 \
                   RETURNING exports";
        // In an explicit transaction: SQLite commits a RETURNING statement only when it
        // is reset, after the row was read, and a commit that fails there (a full disk)
        // would go unreported; `commit()` reports it.
        let count: Option<(i64,)> = with_pool!(self, |db| {
            async {
                let mut tx = db.begin().await?;
                let count = sqlx::query_as(sql)
                    .bind(project)
                    .bind(month)
                    .bind(i64::from(limit))
                    .fetch_optional(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok::<_, sqlx::Error>(count)
            }
            .await
        })
        .map_err(StateError::query("reserve an export"))?;
        Ok(count.map(|(count,)| u32::try_from(count).unwrap_or(u32::MAX)))
    }

    /// Exports counted for `project` in `month`.
    ///
    /// # Errors
    ///
    /// [`StateError::Query`] when the database fails.
    pub async fn exports_used(&self, project: &str, month: &str) -> Result<u32, StateError> {
        let sql = "SELECT exports FROM export_ledger WHERE project = $1 AND month = $2";
        let count: Option<(i64,)> = with_pool!(self, |db| {
            sqlx::query_as(sql)
                .bind(project)
                .bind(month)
                .fetch_optional(db)
                .await
        })
        .map_err(StateError::query("read the export ledger"))?;
        Ok(count.map_or(0, |(count,)| u32::try_from(count).unwrap_or(u32::MAX)))
    }
}

fn run_row<R>(row: &R) -> Result<RunRow, sqlx::Error>
where
    R: sqlx::Row,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    let count = |i: usize| row.try_get::<i64, _>(i);
    Ok((
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
        (
            count(4)?,
            count(5)?,
            count(6)?,
            count(7)?,
            count(8)?,
            count(9)?,
            count(10)?,
            count(11)?,
        ),
        row.try_get(12)?,
        row.try_get(13)?,
    ))
}

fn run_record(row: RunRow) -> RunRecord {
    let (run_id, started_at, finished_at, result, counts, error, holder) = row;
    let (members, anonymous, unmapped, invalid, adds, removes, batches, retries) = counts;
    RunRecord {
        run_id,
        started_at,
        finished_at,
        result,
        counts: RunCounts {
            members: from_db(members),
            anonymous: from_db(anonymous),
            unmapped: from_db(unmapped),
            invalid: from_db(invalid),
            adds: from_db(adds),
            removes: from_db(removes),
            batches: from_db(batches),
            retries: from_db(retries),
        },
        error,
        holder,
    }
}
