//! Leases: at most one replica runs a cohort at a time.
//!
//! A lease is a row per cohort with a holder, an expiry and a fence. Taking over a free or
//! expired lease bumps the fence, so writes still carrying the old fence are refused. The
//! fence, not the clock, guards writes: an expired lease nobody took over still writes.
//! On PostgreSQL holders are per process ([`process_holder`]), so a restarted replica
//! waits for its old process's lease to expire (or be released) like any other replica.

use super::{CohortKey, Lease, StateError, Store, keyed, with_pool};

/// Separates the replica name from the process nonce in a lease holder.
const NONCE_MARK: char = '#';
/// Hex digits of the process nonce.
const NONCE_DIGITS: usize = 16;

/// The lease holder of one process of `replica`: the name and a random nonce.
///
/// A holder re-acquires its own live lease without waiting, so the nonce keeps two live
/// processes that share a replica name (a restart while the old process still runs, or a
/// copied name) from both holding one cohort. Call it once per process.
pub fn process_holder(replica: &str) -> String {
    format!("{replica}{NONCE_MARK}{:0NONCE_DIGITS$x}", fastrand::u64(..))
}

/// The replica name of a holder made by [`process_holder`]; any other holder as it is.
pub fn replica_name(holder: &str) -> &str {
    match holder.rsplit_once(NONCE_MARK) {
        Some((name, nonce))
            if nonce.len() == NONCE_DIGITS && nonce.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            name
        }
        _ => holder,
    }
}

impl Store {
    /// Takes the lease on `key` for `ttl_ms`, when it is free, expired, or already held by
    /// `holder`. Returns `None` when another holder has it.
    ///
    /// The fence grows on every acquisition that is not a live holder re-acquiring its own
    /// lease (a new holder, or any holder after expiry or release).
    ///
    /// # Errors
    ///
    /// [`StateError::Query`] when the database fails.
    pub async fn acquire_lease(
        &self,
        key: &CohortKey,
        holder: &str,
        ttl_ms: i64,
    ) -> Result<Option<Lease>, StateError> {
        let now = self.now();
        let expires_at = now.saturating_add(ttl_ms);
        // SET reads the old row on both backends, so the fence test sees the old holder.
        let sql = "INSERT INTO leases (project, cohort_id, account, holder, expires_at, fence) \
                   VALUES ($1, $2, $3, $4, $5, 1) \
                   ON CONFLICT (project, cohort_id, account) DO UPDATE SET \
                   fence = CASE WHEN leases.holder = excluded.holder AND leases.expires_at > $6 \
                           THEN leases.fence ELSE leases.fence + 1 END, \
                   holder = excluded.holder, expires_at = excluded.expires_at \
                   WHERE leases.holder = excluded.holder OR leases.expires_at <= $6 \
                   RETURNING fence";
        // In an explicit transaction: SQLite commits a RETURNING statement only when it
        // is reset, after the row was read, and a commit that fails there (a full disk)
        // would hand out a lease that was never written; `commit()` reports it.
        let fence: Option<i64> = with_pool!(self, |db| {
            async {
                let mut tx = db.begin().await?;
                let row = keyed(sql, key)
                    .bind(holder)
                    .bind(expires_at)
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await?;
                let fence = row.map(|row| sqlx::Row::try_get(&row, 0)).transpose()?;
                tx.commit().await?;
                Ok::<_, sqlx::Error>(fence)
            }
            .await
        })
        .map_err(StateError::query("acquire a lease"))?;

        Ok(fence.map(|fence| Lease {
            key: key.clone(),
            holder: holder.to_owned(),
            fence,
            expires_at,
        }))
    }

    /// Extends `lease` to `ttl_ms` from now, if nobody has taken it over since.
    ///
    /// A lease that expired but was not taken over is renewed: its fence still matches.
    ///
    /// # Errors
    ///
    /// [`StateError::LeaseLost`] when another holder has it; [`StateError::Query`].
    pub async fn renew_lease(&self, lease: &mut Lease, ttl_ms: i64) -> Result<(), StateError> {
        let expires_at = self.now().saturating_add(ttl_ms);
        let renewed = self
            .update_lease(lease, expires_at, "renew a lease")
            .await?;
        if !renewed {
            return Err(StateError::LeaseLost {
                cohort: lease.key.to_string(),
            });
        }
        lease.expires_at = expires_at;
        Ok(())
    }

    /// Gives the lease up now. Releasing a lease already taken over does nothing.
    ///
    /// # Errors
    ///
    /// [`StateError::Query`] when the database fails.
    pub async fn release_lease(&self, lease: Lease) -> Result<(), StateError> {
        let now = self.now();
        self.update_lease(&lease, now, "release a lease")
            .await
            .map(drop)
    }

    async fn update_lease(
        &self,
        lease: &Lease,
        expires_at: i64,
        action: &'static str,
    ) -> Result<bool, StateError> {
        let sql = "UPDATE leases SET expires_at = $4 WHERE project = $1 AND cohort_id = $2 \
                   AND account = $3 AND holder = $5 AND fence = $6";
        let done = with_pool!(self, |db| {
            keyed(sql, &lease.key)
                .bind(expires_at)
                .bind(lease.holder.as_str())
                .bind(lease.fence)
                .execute(db)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(StateError::query(action))?;
        Ok(done == 1)
    }

    /// Who holds the lease on `key` and until when; `None` when it is free or expired.
    ///
    /// # Errors
    ///
    /// [`StateError::Query`] when the database fails.
    pub async fn lease_holder(&self, key: &CohortKey) -> Result<Option<(String, i64)>, StateError> {
        let sql = "SELECT holder, expires_at FROM leases WHERE project = $1 AND cohort_id = $2 \
                   AND account = $3 AND expires_at > $4";
        let now = self.now();
        with_pool!(self, |db| {
            sqlx::query_as(sql)
                .bind(key.project.as_str())
                .bind(key.cohort_id.as_str())
                .bind(key.account.as_str())
                .bind(now)
                .fetch_optional(db)
                .await
        })
        .map_err(StateError::query("read a lease"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_holder_shows_its_replica_name_and_differs_per_process() {
        let a = process_holder("host-a");
        let b = process_holder("host-a");
        assert_ne!(a, b);
        assert!(a.starts_with("host-a#") && a.len() == "host-a#".len() + NONCE_DIGITS);
        assert_eq!(replica_name(&a), "host-a");
        assert_eq!(replica_name(&process_holder("db#1")), "db#1");
        assert_eq!(replica_name("plain"), "plain");
        assert_eq!(replica_name("odd#name"), "odd#name");
    }
}
