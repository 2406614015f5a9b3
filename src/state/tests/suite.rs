//! The behaviour both backends must share, declared once and run on each.

use super::*;

/// Declares each named suite function as a test on SQLite and a test on PostgreSQL.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::Postgres).await
                }
            )*
        }
    };
}

on_both_backends!(
    migrations_are_idempotent_on_reopen,
    unknown_cohort_reads_empty,
    journal_replays_runs_in_order,
    id_added_in_one_run_and_removed_in_the_next,
    compaction_replaces_snapshot_and_journal,
    leases_fence_and_expire,
    stale_lease_writes_change_nothing,
    pending_export_and_list_reset,
    run_history_is_newest_first,
    export_budget_holds_under_concurrency,
);

async fn migrations_are_idempotent_on_reopen(kind: Kind) {
    let f = Fixture::new(kind).await;
    let lease = f.lease(&key(), "a").await;
    f.store.set_list_id(&lease, Some("L1")).await.unwrap();
    f.store.close().await;

    for _ in 0..2 {
        let store = f.reopen().await;
        assert_eq!(
            store.cohort(&key()).await.unwrap().list_id.as_deref(),
            Some("L1")
        );
        store.ping().await.unwrap();
        store.close().await;
    }
    let f = Fixture {
        store: f.reopen().await,
        ..f
    };
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
        .unwrap()
        .count() as i64;
    assert_eq!(
        f.scalar("SELECT COUNT(*) FROM _sqlx_migrations").await,
        migrations
    );
    f.cleanup().await;
}

async fn unknown_cohort_reads_empty(kind: Kind) {
    let f = Fixture::new(kind).await;
    assert_eq!(
        f.store.cohort(&key()).await.unwrap(),
        CohortState::default()
    );
    assert!(f.store.load_acknowledged(&key()).await.unwrap().is_empty());
    assert!(f.store.runs(&key(), 10).await.unwrap().is_empty());
    assert!(f.store.cohort_keys().await.unwrap().is_empty());
    assert_eq!(f.store.lease_holder(&key()).await.unwrap(), None);
    assert_eq!(f.store.exports_used("default", "2026-12").await.unwrap(), 0);
    f.cleanup().await;
}

async fn journal_replays_runs_in_order(kind: Kind) {
    let f = Fixture::new(kind).await;
    let lease = f.lease(&key(), "a").await;
    let runs = [
        (
            "r1",
            vec![batch(Op::Add, &["a", "b"]), batch(Op::Add, &["c"])],
        ),
        (
            "r2",
            vec![batch(Op::Add, &["d"]), batch(Op::Remove, &["a"])],
        ),
        (
            "r3",
            vec![batch(Op::Remove, &["b", "c"]), batch(Op::Add, &["a"])],
        ),
    ];
    for (run, batches) in &runs {
        f.store.record_batches(&lease, run, batches).await.unwrap();
    }

    assert_eq!(
        strings(&f.store.load_acknowledged(&key()).await.unwrap()),
        ["a", "d"]
    );
    let state = f.store.cohort(&key()).await.unwrap();
    assert_eq!((state.acknowledged, state.journal_batches), (2, 6));

    let other = CohortKey::new("p2", "c1", "default");
    assert!(f.store.load_acknowledged(&other).await.unwrap().is_empty());
    assert_eq!(f.store.cohort_keys().await.unwrap(), [key()]);

    let reopened = f.reopen().await;
    assert_eq!(
        strings(&reopened.load_acknowledged(&key()).await.unwrap()),
        ["a", "d"]
    );
    reopened.close().await;
    f.cleanup().await;
}

async fn id_added_in_one_run_and_removed_in_the_next(kind: Kind) {
    let f = Fixture::new(kind).await;
    let lease = f.lease(&key(), "a").await;
    f.store
        .record_batches(&lease, "r1", &[batch(Op::Add, &["x", "y"])])
        .await
        .unwrap();
    f.store
        .record_batches(&lease, "r2", &[batch(Op::Remove, &["x"])])
        .await
        .unwrap();
    assert_eq!(
        strings(&f.store.load_acknowledged(&key()).await.unwrap()),
        ["y"]
    );

    f.store
        .record_batches(&lease, "r3", &[batch(Op::Add, &["x"])])
        .await
        .unwrap();
    assert_eq!(
        strings(&f.store.load_acknowledged(&key()).await.unwrap()),
        ["x", "y"]
    );
    assert_eq!(f.store.cohort(&key()).await.unwrap().acknowledged, 2);
    f.cleanup().await;
}

async fn compaction_replaces_snapshot_and_journal(kind: Kind) {
    let f = Fixture::new(kind).await;
    let lease = f.lease(&key(), "a").await;
    let pending = PendingExport {
        request_id: "req-1".into(),
        started_at: START,
        computed: Some("t1".into()),
        properties: None,
    };
    f.store.set_pending(&lease, Some(&pending)).await.unwrap();
    f.store
        .record_batches(&lease, "r1", &[batch(Op::Add, &["old"])])
        .await
        .unwrap();

    let big = numbered(150_000);
    f.store.compact(&lease, &big, Some("t1")).await.unwrap();
    let state = f.store.cohort(&key()).await.unwrap();
    assert_eq!(state.synced_computed.as_deref(), Some("t1"));
    assert_eq!(state.pending, None);
    assert_eq!((state.acknowledged, state.journal_batches), (150_000, 0));
    assert_eq!(f.store.load_acknowledged(&key()).await.unwrap(), big);
    assert_eq!(f.scalar("SELECT COUNT(*) FROM snapshot_chunks").await, 3);

    let first = String::from_utf8(big.get(0).to_vec()).unwrap();
    let next = [batch(Op::Remove, &[&first]), batch(Op::Add, &["zzz"])];
    f.store.record_batches(&lease, "r2", &next).await.unwrap();
    let expected = big.apply(&set(&["zzz"]), &set(&[&first]));
    let loaded = f.store.load_acknowledged(&key()).await.unwrap();
    assert_eq!(loaded, expected);

    f.store.compact(&lease, &loaded, None).await.unwrap();
    let state = f.store.cohort(&key()).await.unwrap();
    assert_eq!(state.synced_computed.as_deref(), Some("t1"));
    assert_eq!((state.acknowledged, state.journal_batches), (150_000, 0));
    assert_eq!(f.store.load_acknowledged(&key()).await.unwrap(), expected);

    f.store
        .compact(&lease, &IdSet::default(), None)
        .await
        .unwrap();
    assert!(f.store.load_acknowledged(&key()).await.unwrap().is_empty());
    assert_eq!(f.scalar("SELECT COUNT(*) FROM snapshot_chunks").await, 0);
    f.cleanup().await;
}

async fn leases_fence_and_expire(kind: Kind) {
    let f = Fixture::new(kind).await;
    let k = key();
    f.set_time(1_000);
    let mut a = f
        .store
        .acquire_lease(&k, "a", 1_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((a.fence, a.expires_at), (1, 2_000));
    assert_eq!(
        f.store.lease_holder(&k).await.unwrap(),
        Some(("a".into(), 2_000))
    );
    assert_eq!(f.store.acquire_lease(&k, "b", 1_000).await.unwrap(), None);

    f.set_time(1_500);
    let again = f
        .store
        .acquire_lease(&k, "a", 1_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((again.fence, again.expires_at), (1, 2_500));
    f.store.renew_lease(&mut a, 1_000).await.unwrap();
    assert_eq!(a.expires_at, 2_500);

    f.set_time(2_500);
    assert_eq!(f.store.lease_holder(&k).await.unwrap(), None);
    let mut b = f
        .store
        .acquire_lease(&k, "b", 1_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((b.fence, b.expires_at), (2, 3_500));
    assert!(lost(f.store.renew_lease(&mut a, 1_000).await));
    assert!(lost(f.store.set_list_id(&a, Some("L")).await));
    assert_eq!(f.store.acquire_lease(&k, "a", 1_000).await.unwrap(), None);

    f.set_time(4_000);
    f.store.renew_lease(&mut b, 1_000).await.unwrap();
    assert_eq!(b.expires_at, 5_000);
    f.store.release_lease(a.clone()).await.unwrap();
    assert_eq!(
        f.store.lease_holder(&k).await.unwrap(),
        Some(("b".into(), 5_000))
    );
    f.store.release_lease(b).await.unwrap();
    assert_eq!(f.store.lease_holder(&k).await.unwrap(), None);

    let a = f
        .store
        .acquire_lease(&k, "a", 1_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.fence, 3);
    f.store.set_list_id(&a, Some("L")).await.unwrap();

    let elsewhere = CohortKey::single("c2");
    assert_eq!(
        f.store
            .acquire_lease(&elsewhere, "b", 1_000)
            .await
            .unwrap()
            .unwrap()
            .fence,
        1
    );
    f.cleanup().await;
}

async fn stale_lease_writes_change_nothing(kind: Kind) {
    let f = Fixture::new(kind).await;
    let k = key();
    let stale = f
        .store
        .acquire_lease(&k, "a", 1_000)
        .await
        .unwrap()
        .unwrap();
    f.store.set_list_id(&stale, Some("L1")).await.unwrap();
    f.store
        .record_batches(&stale, "r1", &[batch(Op::Add, &["x", "y"])])
        .await
        .unwrap();
    f.store.start_run(&stale, "r1").await.unwrap();

    f.set_time(START + 5_000);
    let fresh = f
        .store
        .acquire_lease(&k, "b", 1_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fresh.fence, stale.fence + 1);

    let before = f.store.cohort(&k).await.unwrap();
    let pending = PendingExport {
        request_id: "req".into(),
        started_at: 1,
        computed: None,
        properties: None,
    };
    let record = RunRecord {
        run_id: "r1".into(),
        result: "ok".into(),
        ..RunRecord::default()
    };
    assert!(lost(f.store.set_list_id(&stale, Some("L2")).await));
    assert!(lost(f.store.reset_list(&stale, "L2").await));
    assert!(lost(
        f.store
            .record_batches(&stale, "r1", &[batch(Op::Remove, &["x"])])
            .await
    ));
    assert!(lost(
        f.store.compact(&stale, &set(&["q"]), Some("t9")).await
    ));
    assert!(lost(f.store.set_pending(&stale, Some(&pending)).await));
    assert!(lost(f.store.start_run(&stale, "r2").await));
    assert!(lost(f.store.finish_run(&stale, &record).await));

    assert_eq!(f.store.cohort(&k).await.unwrap(), before);
    assert_eq!(
        strings(&f.store.load_acknowledged(&k).await.unwrap()),
        ["x", "y"]
    );
    let runs = f.store.runs(&k, 10).await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].result, RUN_IN_PROGRESS);

    let wrong_holder = Lease {
        holder: "a".into(),
        ..fresh.clone()
    };
    assert!(lost(f.store.set_list_id(&wrong_holder, Some("L2")).await));
    f.store.set_list_id(&fresh, Some("L2")).await.unwrap();
    f.cleanup().await;
}

async fn pending_export_and_list_reset(kind: Kind) {
    let f = Fixture::new(kind).await;
    let lease = f.lease(&key(), "a").await;
    let pending = PendingExport {
        request_id: "req-7".into(),
        started_at: 1234,
        computed: Some("2026-12-01T00:00:00".into()),
        properties: None,
    };
    f.store.set_list_id(&lease, Some("L1")).await.unwrap();
    f.store.set_pending(&lease, Some(&pending)).await.unwrap();
    f.store
        .compact(&lease, &set(&["a", "b"]), None)
        .await
        .unwrap();
    f.store
        .record_batches(&lease, "r1", &[batch(Op::Add, &["c"])])
        .await
        .unwrap();
    f.store
        .compact(&lease, &set(&["a", "b", "c"]), Some("t1"))
        .await
        .unwrap();
    f.store.set_pending(&lease, Some(&pending)).await.unwrap();

    let state = f.store.cohort(&key()).await.unwrap();
    assert_eq!(state.pending.as_ref(), Some(&pending));
    assert_eq!(state.synced_computed.as_deref(), Some("t1"));

    f.store
        .record_batches(&lease, "r2", &[batch(Op::Add, &["d"])])
        .await
        .unwrap();
    f.store.reset_list(&lease, "L2").await.unwrap();
    let state = f.store.cohort(&key()).await.unwrap();
    assert_eq!(state.list_id.as_deref(), Some("L2"));
    assert_eq!(state.synced_computed, None);
    assert_eq!(state.pending.as_ref(), Some(&pending));
    assert_eq!((state.acknowledged, state.journal_batches), (0, 0));
    assert!(f.store.load_acknowledged(&key()).await.unwrap().is_empty());

    f.store.set_pending(&lease, None).await.unwrap();
    f.store.set_list_id(&lease, None).await.unwrap();
    assert_eq!(
        f.store.cohort(&key()).await.unwrap(),
        CohortState::default()
    );
    f.cleanup().await;
}

async fn run_history_is_newest_first(kind: Kind) {
    let f = Fixture::new(kind).await;
    let lease = f.lease(&key(), "replica-1").await;

    f.set_time(10_000);
    f.store.start_run(&lease, "r1").await.unwrap();
    let started = f.store.runs(&key(), 10).await.unwrap();
    assert_eq!(started.len(), 1);
    assert_eq!(
        (started[0].started_at, started[0].finished_at),
        (10_000, None)
    );
    assert_eq!(started[0].result, RUN_IN_PROGRESS);

    f.set_time(11_000);
    let r1 = RunRecord {
        run_id: "r1".into(),
        started_at: 999,
        finished_at: None,
        result: "ok".into(),
        counts: RunCounts {
            members: 2_000_000,
            anonymous: 1,
            unmapped: 2,
            invalid: 3,
            adds: 4,
            removes: 5,
            batches: 6,
            retries: 7,
        },
        error: None,
        holder: "ignored".into(),
    };
    f.store.finish_run(&lease, &r1).await.unwrap();

    f.set_time(20_000);
    f.store.start_run(&lease, "r2").await.unwrap();
    let r2 = RunRecord {
        run_id: "r2".into(),
        started_at: 20_000,
        finished_at: Some(21_000),
        result: "failed".into(),
        error: Some("1Flow answered 500".into()),
        ..RunRecord::default()
    };
    f.store.finish_run(&lease, &r2).await.unwrap();
    let r3 = RunRecord {
        run_id: "r3".into(),
        started_at: 30_000,
        finished_at: Some(30_000),
        result: "unchanged".into(),
        ..RunRecord::default()
    };
    f.store.finish_run(&lease, &r3).await.unwrap();

    let runs = f.store.runs(&key(), 10).await.unwrap();
    let ids: Vec<&str> = runs.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(ids, ["r3", "r2", "r1"]);
    let expected_r1 = RunRecord {
        started_at: 10_000,
        finished_at: Some(11_000),
        holder: "replica-1".into(),
        ..r1
    };
    assert_eq!(runs[2], expected_r1);
    assert_eq!(runs[1].error.as_deref(), Some("1Flow answered 500"));
    assert_eq!(f.store.runs(&key(), 2).await.unwrap().len(), 2);
    f.cleanup().await;
}

async fn export_budget_holds_under_concurrency(kind: Kind) {
    let f = Fixture::new(kind).await;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = f.store.clone();
            tokio::spawn(async move { store.reserve_export("p1", "2026-12", 7).await })
        })
        .collect();
    let mut granted = Vec::new();
    for task in tasks {
        if let Some(count) = task.await.unwrap().unwrap() {
            granted.push(count);
        }
    }
    granted.sort_unstable();
    assert_eq!(granted, (1..=7).collect::<Vec<u32>>());
    assert_eq!(f.store.exports_used("p1", "2026-12").await.unwrap(), 7);
    assert_eq!(
        f.store.reserve_export("p1", "2026-12", 7).await.unwrap(),
        None
    );
    assert_eq!(
        f.store.reserve_export("p1", "2026-12", 8).await.unwrap(),
        Some(8)
    );
    assert_eq!(
        f.store.reserve_export("p1", "2027-01", 7).await.unwrap(),
        Some(1)
    );
    assert_eq!(
        f.store.reserve_export("p2", "2026-12", 0).await.unwrap(),
        None
    );
    assert_eq!(f.store.exports_used("p2", "2026-12").await.unwrap(), 0);
    f.cleanup().await;
}
