//! The durable state store: list ids, acknowledged members, pending exports, run history,
//! leases and the export ledger, in SQLite (a file, the default) or PostgreSQL (a URL).
//!
//! Both backends share one schema and one behaviour behind [`Store`]. Every write that
//! changes a cohort carries its [`Lease`] and is refused, changing nothing, once the lease
//! has passed to another holder. Migrations are applied when the store is opened.

mod cohort;
mod error;
mod lease;
mod lock;
mod runs;
mod types;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, Database, Encode, Type};

pub use error::StateError;
pub use lease::{process_holder, replica_name};
pub use lock::{SqliteLock, lock_sqlite};
pub use types::{
    AckBatch, CohortKey, CohortState, DEFAULT_ACCOUNT, DEFAULT_PROJECT, Lease, Op, PendingExport,
    RUN_IN_PROGRESS, RunCounts, RunRecord,
};

/// The most ids one stored snapshot chunk holds.
pub const IDS_PER_CHUNK: usize = 65_536;

/// Milliseconds since the epoch; injected so tests can move time by hand.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The wall clock.
pub fn system_clock() -> Clock {
    Arc::new(|| chrono::Utc::now().timestamp_millis())
}

static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// SQLite admits one writer at a time anyway; one connection per process means a
/// write that failed (a full disk, say) can never leave another connection of ours
/// waiting on its lock, and in-process calls queue instead of meeting SQLITE_BUSY.
const SQLITE_MAX_CONNECTIONS: u32 = 1;
const POSTGRES_MAX_CONNECTIONS: u32 = 8;
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// A handle on the state store. Cloning is cheap and shares the connections.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    clock: Clock,
}

#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.backend())
    }
}

/// Evaluates `$body` with `$db` bound to the pool of whichever backend is open.
///
/// The body is compiled once per backend, so the same SQL and binds serve both.
macro_rules! with_pool {
    ($store:expr, |$db:ident| $body:expr) => {
        match &$store.pool {
            $crate::state::Pool::Sqlite($db) => $body,
            $crate::state::Pool::Postgres($db) => $body,
        }
    };
}

/// Runs `$body` in one transaction that first checks `$lease` still holds its cohort and
/// makes sure the cohort's row exists. `$now` is the store's clock at the start.
///
/// The lease check is an `UPDATE` of the lease row, so on PostgreSQL the row stays locked
/// until commit and on SQLite the write lock is taken before anything is read. An error
/// (`?`) in the body drops the transaction, which rolls it back.
macro_rules! fenced {
    ($store:expr, $lease:expr, $action:expr, |$tx:ident, $now:ident| $body:block) => {
        with_pool!($store, |pool| {
            let lease: &$crate::state::Lease = $lease;
            let $now = ($store.clock)();
            let mut $tx = pool.begin().await.map_err(StateError::query($action))?;

            let held = $crate::state::keyed(
                "UPDATE leases SET fence = fence WHERE project = $1 AND cohort_id = $2 \
                 AND account = $3 AND holder = $4 AND fence = $5",
                &lease.key,
            )
            .bind(lease.holder.as_str())
            .bind(lease.fence)
            .execute(&mut *$tx)
            .await
            .map_err(StateError::query($action))?;
            if held.rows_affected() != 1 {
                return Err(StateError::LeaseLost {
                    cohort: lease.key.to_string(),
                });
            }

            $crate::state::keyed(
                "INSERT INTO cohorts (project, cohort_id, account, updated_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (project, cohort_id, account) \
                 DO UPDATE SET updated_at = excluded.updated_at",
                &lease.key,
            )
            .bind($now)
            .execute(&mut *$tx)
            .await
            .map_err(StateError::query($action))?;

            let out = $body;
            $tx.commit().await.map_err(StateError::query($action))?;
            out
        })
    };
}

use {fenced, with_pool};

/// A query whose first three parameters are the cohort key.
type KeyedQuery<'q, DB> = sqlx::query::Query<'q, DB, <DB as Database>::Arguments<'q>>;

fn keyed<'q, DB>(sql: &'q str, key: &'q CohortKey) -> KeyedQuery<'q, DB>
where
    DB: Database,
    &'q str: Encode<'q, DB> + Type<DB>,
{
    sqlx::query(sql)
        .bind(key.project.as_str())
        .bind(key.cohort_id.as_str())
        .bind(key.account.as_str())
}

impl Store {
    /// Opens (creating if missing) the SQLite state file at `path`, and its directory.
    ///
    /// The file runs in WAL mode with `synchronous=NORMAL`, a 5 s busy timeout and foreign
    /// keys on. Take [`lock_sqlite`] first so that a second process cannot share it.
    ///
    /// # Errors
    ///
    /// [`StateError::Open`] naming the path, or [`StateError::Migrate`].
    pub async fn open_sqlite(path: &Path) -> Result<Store, StateError> {
        Store::open_sqlite_with(path, false).await
    }

    async fn open_sqlite_with(path: &Path, read_only: bool) -> Result<Store, StateError> {
        let failed = |cause| StateError::Open {
            target: path.display().to_string(),
            cause,
        };

        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| failed(sqlx::Error::Io(e)))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(!read_only)
            .read_only(read_only)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(SQLITE_BUSY_TIMEOUT)
            .foreign_keys(true)
            // Checkpoints (the only fsyncs under synchronous=NORMAL) every 64 MB of WAL
            // instead of every 4 MB: a first sync of two million ids journals ~40 MB, and
            // each checkpoint stalls the acknowledgements waiting behind it.
            .pragma("wal_autocheckpoint", "16384");
        // Creating the file, switching it to WAL and migrating it are done by one opener
        // at a time: SQLite refuses concurrent first connections with "database is locked"
        // and lets two migrators both apply the same migration.
        let turn = lock::open_lock(path).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(SQLITE_MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(failed)?;

        SQLITE_MIGRATOR
            .run(&pool)
            .await
            .map_err(StateError::Migrate)?;
        drop(turn);
        Ok(Store::new(Pool::Sqlite(pool)))
    }

    /// Connects to PostgreSQL at `url` and applies the migrations.
    ///
    /// The schema is the connection's `search_path`, which the URL may set
    /// (`?options=-csearch_path%3Dmyschema`); see also [`Store::open_postgres_schema`].
    ///
    /// # Errors
    ///
    /// [`StateError::Open`] naming the URL without its password, or [`StateError::Migrate`].
    pub async fn open_postgres(url: &str) -> Result<Store, StateError> {
        let options = postgres_options(url)?;
        Store::open_postgres_with(options, url).await
    }

    /// Like [`Store::open_postgres`], in `schema`, which is created if missing.
    ///
    /// # Errors
    ///
    /// As [`Store::open_postgres`]; also when `schema` is not a plain identifier
    /// (ASCII letters, digits and `_`, not starting with a digit, at most 63 bytes).
    pub async fn open_postgres_schema(url: &str, schema: &str) -> Result<Store, StateError> {
        let failed = |cause| StateError::Open {
            target: error::redact_url(url),
            cause,
        };

        let plain = !schema.is_empty()
            && schema.len() <= 63
            && !schema.starts_with(|c: char| c.is_ascii_digit())
            && schema
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !plain {
            let reason = format!("schema name {schema:?} is not a plain SQL identifier");
            return Err(failed(sqlx::Error::Configuration(reason.into())));
        }

        let options = postgres_options(url)?;
        let mut conn = sqlx::PgConnection::connect_with(&options)
            .await
            .map_err(failed)?;
        sqlx::raw_sql(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
            .execute(&mut conn)
            .await
            .map_err(failed)?;
        conn.close().await.map_err(failed)?;

        Store::open_postgres_with(options.options([("search_path", schema)]), url).await
    }

    async fn open_postgres_with(options: PgConnectOptions, url: &str) -> Result<Store, StateError> {
        let pool = PgPoolOptions::new()
            .max_connections(POSTGRES_MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|cause| StateError::Open {
                target: error::redact_url(url),
                cause,
            })?;

        POSTGRES_MIGRATOR
            .run(&pool)
            .await
            .map_err(StateError::Migrate)?;
        Ok(Store::new(Pool::Postgres(pool)))
    }

    fn new(pool: Pool) -> Store {
        Store {
            pool,
            clock: system_clock(),
        }
    }

    /// The same store, reading time from `clock` instead of the wall clock.
    pub fn with_clock(mut self, clock: Clock) -> Store {
        self.clock = clock;
        self
    }

    /// The store's clock, in milliseconds since the epoch.
    pub fn now(&self) -> i64 {
        (self.clock)()
    }

    /// "sqlite" or "postgres".
    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    /// Checks that the database answers.
    ///
    /// # Errors
    ///
    /// [`StateError::Query`] when it does not.
    pub async fn ping(&self) -> Result<(), StateError> {
        with_pool!(self, |db| sqlx::query("SELECT 1")
            .execute(db)
            .await
            .map(drop))
        .map_err(StateError::query("answer a ping"))
    }

    /// Closes every connection; later calls fail.
    pub async fn close(&self) {
        with_pool!(self, |db| db.close().await)
    }
}

fn postgres_options(url: &str) -> Result<PgConnectOptions, StateError> {
    PgConnectOptions::from_str(url).map_err(|cause| StateError::Open {
        target: error::redact_url(url),
        cause,
    })
}
