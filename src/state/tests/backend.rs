//! Cases particular to one backend: SQLite files and their failures, PostgreSQL URLs,
//! and the timing of two-million-id cohorts.

use super::*;

#[tokio::test]
async fn sqlite_file_is_tuned_and_created_with_its_directory() {
    let f = Fixture::new(Kind::Sqlite).await;
    assert!(f.path().is_file());
    assert_eq!(f.store.backend(), "sqlite");
    let mode: String = with_pool!(f.store, |db| sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(db)
        .await
        .unwrap());
    assert_eq!(mode, "wal");
    assert_eq!(f.scalar("PRAGMA synchronous").await, 1);
    assert_eq!(f.scalar("PRAGMA busy_timeout").await, 5_000);
    assert_eq!(f.scalar("PRAGMA foreign_keys").await, 1);
    f.cleanup().await;
}

#[tokio::test]
async fn sqlite_unusable_path_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let err = Store::open_sqlite(&file.join("state.db"))
        .await
        .unwrap_err();
    assert!(matches!(err, StateError::Open { .. }), "{err}");
    assert!(err.to_string().contains("plain-file/state.db"), "{err}");

    let err = Store::open_sqlite(&file).await.unwrap_err();
    assert!(err.to_string().contains("plain-file"), "{err}");
}

#[tokio::test]
async fn sqlite_read_only_file_gives_errors_and_keeps_state() {
    let f = Fixture::new(Kind::Sqlite).await;
    let lease = f.lease(&key(), "a").await;
    f.store
        .record_batches(&lease, "r1", &[batch(Op::Add, &["x"])])
        .await
        .unwrap();
    f.store.close().await;

    // Tests may run as root, which ignores file modes; open the file read-only instead,
    // which is what SQLite falls back to for a file it cannot write.
    let options = SqliteConnectOptions::new()
        .filename(f.path())
        .read_only(true);
    let pool = SqlitePool::connect_with(options).await.unwrap();
    let read_only = Store::new(Pool::Sqlite(pool));
    assert_eq!(
        strings(&read_only.load_acknowledged(&key()).await.unwrap()),
        ["x"]
    );
    let err = read_only
        .acquire_lease(&key(), "a", 1_000)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("readonly"), "{err}");
    let err = read_only
        .record_batches(&lease, "r2", &[batch(Op::Add, &["y"])])
        .await
        .unwrap_err();
    assert!(matches!(err, StateError::Query { .. }), "{err}");
    assert!(!err.is_transient());
    read_only.close().await;

    let store = f.reopen().await;
    assert_eq!(
        strings(&store.load_acknowledged(&key()).await.unwrap()),
        ["x"]
    );
    store.close().await;
}

#[tokio::test]
async fn sqlite_full_disk_gives_an_error_and_keeps_state() {
    let f = Fixture::new(Kind::Sqlite).await;
    let lease = f.lease(&key(), "a").await;
    let small = numbered(1_000);
    f.store.compact(&lease, &small, Some("t1")).await.unwrap();
    let pages = f.scalar("PRAGMA page_count").await;
    f.store.close().await;

    // A page limit makes SQLite behave as on a disk that has just filled up.
    let limit = (pages + 20).to_string();
    let options = SqliteConnectOptions::new()
        .filename(f.path())
        .journal_mode(SqliteJournalMode::Wal)
        .pragma("max_page_count", limit);
    let pool = SqlitePool::connect_with(options).await.unwrap();
    let full = Store::new(Pool::Sqlite(pool));
    let err = full
        .compact(&lease, &numbered(200_000), Some("t2"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("full"), "{err}");
    assert!(!err.is_transient());
    assert_eq!(full.load_acknowledged(&key()).await.unwrap(), small);
    assert_eq!(
        full.cohort(&key())
            .await
            .unwrap()
            .synced_computed
            .as_deref(),
        Some("t1")
    );
    full.close().await;
}

#[tokio::test]
async fn sqlite_damaged_id_list_is_reported_as_corrupt() {
    let f = Fixture::new(Kind::Sqlite).await;
    let lease = f.lease(&key(), "a").await;
    f.store
        .record_batches(&lease, "r1", &[batch(Op::Add, &["x"])])
        .await
        .unwrap();
    let damage = "UPDATE journal SET ids = X'0500616263'";
    with_pool!(f.store, |db| sqlx::query(damage)
        .execute(db)
        .await
        .map(drop))
    .unwrap();

    let err = f.store.load_acknowledged(&key()).await.unwrap_err();
    assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("default/c1/default"), "{err}");
    f.cleanup().await;
}

#[tokio::test]
async fn postgres_unreachable_is_an_open_error_without_the_password() {
    let err = Store::open_postgres("postgres://u:s3cret@127.0.0.1:1/test")
        .await
        .unwrap_err();
    assert!(matches!(err, StateError::Open { .. }), "{err}");
    assert!(err.is_transient(), "{err}");
    let text = format!("{err} {err:?}");
    assert!(!text.contains("s3cret"), "{text}");
    assert!(text.contains("postgres://u:***@127.0.0.1:1/test"), "{text}");
}

#[tokio::test]
async fn postgres_schema_can_come_from_the_url() {
    let f = Fixture::new(Kind::Postgres).await;
    assert_eq!(f.store.backend(), "postgres");
    let lease = f.lease(&key(), "a").await;
    f.store.set_list_id(&lease, Some("L1")).await.unwrap();

    let url = format!("{POSTGRES_URL}?options=-csearch_path%3D{}", f.schema);
    let store = Store::open_postgres(&url).await.unwrap();
    assert_eq!(
        store.cohort(&key()).await.unwrap().list_id.as_deref(),
        Some("L1")
    );
    store.close().await;

    let err = Store::open_postgres_schema(POSTGRES_URL, "bad\"name")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not a plain SQL identifier"),
        "{err}"
    );
    f.cleanup().await;
}

async fn time_two_million_ids(kind: Kind) {
    use std::time::Instant;

    let f = Fixture::new(kind).await;
    let lease = f.lease(&key(), "a").await;
    let ids = numbered(2_000_000);
    let bytes: usize = ids.iter().map(<[u8]>::len).sum();

    let clock = Instant::now();
    f.store.compact(&lease, &ids, Some("t1")).await.unwrap();
    let compact = clock.elapsed();

    let clock = Instant::now();
    let loaded = f.store.load_acknowledged(&key()).await.unwrap();
    let load = clock.elapsed();
    assert_eq!(loaded, ids);

    let batches: Vec<AckBatch> = (0..100)
        .map(|b| {
            let names: Vec<String> = (0..1_000).map(|i| format!("new-{b:03}-{i:04}")).collect();
            AckBatch::new(Op::Add, names.iter().map(|n| n.as_bytes()))
        })
        .collect();
    let clock = Instant::now();
    f.store
        .record_batches(&lease, "r2", &batches)
        .await
        .unwrap();
    let record = clock.elapsed();

    let clock = Instant::now();
    let loaded = f.store.load_acknowledged(&key()).await.unwrap();
    let replay = clock.elapsed();
    assert_eq!(loaded.len(), 2_100_000);

    println!(
        "{kind:?}: 2M ids ({bytes} id bytes): compact {compact:?}, load {load:?}; \
         record 100x1000 {record:?}; load with that journal {replay:?}"
    );
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "timing; run with --ignored --nocapture"]
async fn timing_two_million_ids_sqlite() {
    time_two_million_ids(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "timing; run with --ignored --nocapture"]
async fn timing_two_million_ids_postgres() {
    time_two_million_ids(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_opened_by_several_at_once_is_migrated_once() {
    // A `status` started while a first `sync` creates the file opens it too.
    for round in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let opens: Vec<_> = (0..4)
            .map(|_| {
                let path = path.clone();
                tokio::spawn(async move { Store::open_sqlite(&path).await })
            })
            .collect();
        for open in opens {
            let store = open
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(store.cohort(&key()).await.unwrap(), CohortState::default());
            store.close().await;
        }
    }
}
