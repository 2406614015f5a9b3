//! Tests of the state store: one suite run against SQLite (a temporary file) and against
//! the PostgreSQL at [`POSTGRES_URL`] (one fresh schema per test), plus SQLite-only cases.
//!
//! The PostgreSQL tests fail, never skip, when the server is unreachable.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use tempfile::TempDir;

use super::*;
use crate::members::IdSet;

mod backend;
mod suite;

const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const START: i64 = 1_000_000;
const STATE_FILE: &str = "state/cohort-sync.db";

#[derive(Clone, Copy, Debug)]
enum Kind {
    Sqlite,
    Postgres,
}

/// A store on a fresh location, with a clock the test moves by hand.
struct Fixture {
    kind: Kind,
    store: Store,
    time: Arc<AtomicI64>,
    dir: TempDir,
    schema: String,
}

impl Fixture {
    async fn new(kind: Kind) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let schema = format!("state_test_{}_{}", std::process::id(), fastrand::u64(..));
        let time = Arc::new(AtomicI64::new(START));
        let store = open(kind, &dir.path().join(STATE_FILE), &schema, &time).await;
        Fixture {
            kind,
            store,
            time,
            dir,
            schema,
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join(STATE_FILE)
    }

    async fn reopen(&self) -> Store {
        open(self.kind, &self.path(), &self.schema, &self.time).await
    }

    fn set_time(&self, ms: i64) {
        self.time.store(ms, Ordering::SeqCst);
    }

    async fn lease(&self, key: &CohortKey, holder: &str) -> Lease {
        self.store
            .acquire_lease(key, holder, 60_000)
            .await
            .unwrap()
            .expect("lease is free")
    }

    async fn scalar(&self, sql: &str) -> i64 {
        with_pool!(self.store, |db| sqlx::query_scalar(sql)
            .fetch_one(db)
            .await
            .unwrap())
    }

    async fn cleanup(self) {
        self.store.close().await;
        if let Kind::Postgres = self.kind {
            let mut conn = sqlx::PgConnection::connect(POSTGRES_URL).await.unwrap();
            let drop = format!("DROP SCHEMA \"{}\" CASCADE", self.schema);
            sqlx::raw_sql(&drop).execute(&mut conn).await.unwrap();
        }
    }
}

async fn open(kind: Kind, path: &Path, schema: &str, time: &Arc<AtomicI64>) -> Store {
    let store = match kind {
        Kind::Sqlite => Store::open_sqlite(path).await,
        Kind::Postgres => Store::open_postgres_schema(POSTGRES_URL, schema).await,
    };
    let store = store.expect("open the state store (is PostgreSQL running?)");
    let time = time.clone();
    store.with_clock(Arc::new(move || time.load(Ordering::SeqCst)))
}

fn key() -> CohortKey {
    CohortKey::single("c1")
}

fn set(ids: &[&str]) -> IdSet {
    IdSet::from_ids(ids.iter().map(|id| id.as_bytes()))
}

fn strings(set: &IdSet) -> Vec<String> {
    set.iter()
        .map(|id| String::from_utf8(id.to_vec()).unwrap())
        .collect()
}

fn batch(op: Op, ids: &[&str]) -> AckBatch {
    AckBatch::new(op, ids.iter().map(|id| id.as_bytes()))
}

fn numbered(count: usize) -> IdSet {
    let ids: Vec<String> = (0..count)
        .map(|i| format!("user-{i:010}-{:08x}", i * 7919))
        .collect();
    IdSet::from_ids(ids.iter().map(|id| id.as_bytes()))
}

fn lost(result: Result<(), StateError>) -> bool {
    matches!(result, Err(StateError::LeaseLost { .. }))
}
