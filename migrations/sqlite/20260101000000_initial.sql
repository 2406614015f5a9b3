-- The durable state of cohort-sync. Keep in step with ../postgres (same tables, same columns).

CREATE TABLE cohorts (
    project            TEXT    NOT NULL,
    cohort_id          TEXT    NOT NULL,
    account            TEXT    NOT NULL,
    list_id            TEXT,
    synced_computed    TEXT,
    pending_request_id TEXT,
    pending_started_at INTEGER,
    pending_computed   TEXT,
    snapshot_count     INTEGER NOT NULL DEFAULT 0,
    updated_at         INTEGER NOT NULL,
    PRIMARY KEY (project, cohort_id, account)
);

CREATE TABLE snapshot_chunks (
    project   TEXT    NOT NULL,
    cohort_id TEXT    NOT NULL,
    account   TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    id_count  INTEGER NOT NULL,
    ids       BLOB    NOT NULL,
    PRIMARY KEY (project, cohort_id, account, seq),
    FOREIGN KEY (project, cohort_id, account)
        REFERENCES cohorts (project, cohort_id, account) ON DELETE CASCADE
);

CREATE TABLE journal (
    seq         INTEGER PRIMARY KEY,
    project     TEXT    NOT NULL,
    cohort_id   TEXT    NOT NULL,
    account     TEXT    NOT NULL,
    run_id      TEXT    NOT NULL,
    op          TEXT    NOT NULL CHECK (op IN ('add', 'remove')),
    id_count    INTEGER NOT NULL,
    ids         BLOB    NOT NULL,
    recorded_at INTEGER NOT NULL,
    FOREIGN KEY (project, cohort_id, account)
        REFERENCES cohorts (project, cohort_id, account) ON DELETE CASCADE
);

CREATE INDEX journal_by_cohort ON journal (project, cohort_id, account, seq);

CREATE TABLE runs (
    seq         INTEGER PRIMARY KEY,
    project     TEXT    NOT NULL,
    cohort_id   TEXT    NOT NULL,
    account     TEXT    NOT NULL,
    run_id      TEXT    NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    result      TEXT    NOT NULL,
    members     INTEGER NOT NULL DEFAULT 0,
    anonymous   INTEGER NOT NULL DEFAULT 0,
    unmapped    INTEGER NOT NULL DEFAULT 0,
    invalid     INTEGER NOT NULL DEFAULT 0,
    adds        INTEGER NOT NULL DEFAULT 0,
    removes     INTEGER NOT NULL DEFAULT 0,
    batches     INTEGER NOT NULL DEFAULT 0,
    retries     INTEGER NOT NULL DEFAULT 0,
    error       TEXT,
    holder      TEXT    NOT NULL,
    UNIQUE (project, cohort_id, account, run_id),
    FOREIGN KEY (project, cohort_id, account)
        REFERENCES cohorts (project, cohort_id, account) ON DELETE CASCADE
);

CREATE INDEX runs_by_cohort ON runs (project, cohort_id, account, started_at);

CREATE TABLE leases (
    project    TEXT    NOT NULL,
    cohort_id  TEXT    NOT NULL,
    account    TEXT    NOT NULL,
    holder     TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    fence      INTEGER NOT NULL,
    PRIMARY KEY (project, cohort_id, account)
);

CREATE TABLE export_ledger (
    project TEXT    NOT NULL,
    month   TEXT    NOT NULL,
    exports INTEGER NOT NULL,
    PRIMARY KEY (project, month)
);
