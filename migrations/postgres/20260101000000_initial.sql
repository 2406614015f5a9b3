-- The durable state of cohort-sync. Keep in step with ../sqlite (same tables, same columns).

CREATE TABLE cohorts (
    project            TEXT    NOT NULL,
    cohort_id          TEXT    NOT NULL,
    account            TEXT    NOT NULL,
    list_id            TEXT,
    synced_computed    TEXT,
    pending_request_id TEXT,
    pending_started_at BIGINT,
    pending_computed   TEXT,
    snapshot_count     BIGINT  NOT NULL DEFAULT 0,
    updated_at         BIGINT  NOT NULL,
    PRIMARY KEY (project, cohort_id, account)
);

CREATE TABLE snapshot_chunks (
    project   TEXT    NOT NULL,
    cohort_id TEXT    NOT NULL,
    account   TEXT    NOT NULL,
    seq       BIGINT  NOT NULL,
    id_count  BIGINT  NOT NULL,
    ids       BYTEA   NOT NULL,
    PRIMARY KEY (project, cohort_id, account, seq),
    FOREIGN KEY (project, cohort_id, account)
        REFERENCES cohorts (project, cohort_id, account) ON DELETE CASCADE
);

CREATE TABLE journal (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project     TEXT    NOT NULL,
    cohort_id   TEXT    NOT NULL,
    account     TEXT    NOT NULL,
    run_id      TEXT    NOT NULL,
    op          TEXT    NOT NULL CHECK (op IN ('add', 'remove')),
    id_count    BIGINT  NOT NULL,
    ids         BYTEA   NOT NULL,
    recorded_at BIGINT  NOT NULL,
    FOREIGN KEY (project, cohort_id, account)
        REFERENCES cohorts (project, cohort_id, account) ON DELETE CASCADE
);

CREATE INDEX journal_by_cohort ON journal (project, cohort_id, account, seq);

CREATE TABLE runs (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project     TEXT    NOT NULL,
    cohort_id   TEXT    NOT NULL,
    account     TEXT    NOT NULL,
    run_id      TEXT    NOT NULL,
    started_at  BIGINT  NOT NULL,
    finished_at BIGINT,
    result      TEXT    NOT NULL,
    members     BIGINT  NOT NULL DEFAULT 0,
    anonymous   BIGINT  NOT NULL DEFAULT 0,
    unmapped    BIGINT  NOT NULL DEFAULT 0,
    invalid     BIGINT  NOT NULL DEFAULT 0,
    adds        BIGINT  NOT NULL DEFAULT 0,
    removes     BIGINT  NOT NULL DEFAULT 0,
    batches     BIGINT  NOT NULL DEFAULT 0,
    retries     BIGINT  NOT NULL DEFAULT 0,
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
    expires_at BIGINT  NOT NULL,
    fence      BIGINT  NOT NULL,
    PRIMARY KEY (project, cohort_id, account)
);

CREATE TABLE export_ledger (
    project TEXT    NOT NULL,
    month   TEXT    NOT NULL,
    exports BIGINT  NOT NULL,
    PRIMARY KEY (project, month)
);

-- Encoded id lists are large: keep them out of line and uncompressed, so that writing a
-- two-million-id snapshot is not spent compressing it.
ALTER TABLE snapshot_chunks ALTER COLUMN ids SET STORAGE EXTERNAL;
ALTER TABLE journal ALTER COLUMN ids SET STORAGE EXTERNAL;
