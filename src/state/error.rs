//! Errors of the state store, and whether retrying can help.
//!
//! Every message names what failed (the path, the URL without its password, the cohort)
//! and carries the database's own reason, so one log line is enough to act on.

use std::path::PathBuf;

use sqlx::migrate::MigrateError;

/// A failure of the durable state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The store could not be opened: bad path or URL, unreachable server, refused login.
    #[error("cannot open the state store at {target}: {cause}{}", hint(cause))]
    Open {
        /// The file path, or the URL with any password replaced by `***`.
        target: String,
        /// The reason given by the driver.
        cause: sqlx::Error,
    },

    /// The schema migrations could not be applied.
    #[error("cannot apply the state store migrations: {0}")]
    Migrate(MigrateError),

    /// A read or a write failed; a failed write changed nothing.
    #[error("state store could not {action}: {cause}{}", hint(cause))]
    Query {
        /// What the store was doing, as a verb phrase ("record confirmed batches").
        action: &'static str,
        /// The reason given by the database.
        cause: sqlx::Error,
    },

    /// Another replica took over the cohort's lease; the write was refused and nothing changed.
    #[error("lost the lease on cohort {cohort} to another replica; nothing was written")]
    LeaseLost {
        /// The cohort, as `project/cohort/account`.
        cohort: String,
    },

    /// Another process holds the lock on the SQLite state file.
    #[error("another cohort-sync process is using the state file {}", path.display())]
    Locked {
        /// The state file.
        path: PathBuf,
    },

    /// The lock file next to the SQLite state file could not be created or locked.
    #[error("cannot lock the state file {}: {cause}", path.display())]
    LockFile {
        /// The state file.
        path: PathBuf,
        /// The operating system's reason.
        cause: std::io::Error,
    },

    /// Stored data cannot be read back: the database was damaged or edited by hand.
    #[error("stored state of cohort {cohort} is damaged: {detail}")]
    Corrupt {
        /// The cohort, as `project/cohort/account`.
        cohort: String,
        /// What was wrong.
        detail: String,
    },
}

impl StateError {
    /// Whether the same call may succeed if retried later (busy database, lost connection).
    pub fn is_transient(&self) -> bool {
        match self {
            StateError::Open { cause, .. } | StateError::Query { cause, .. } => transient(cause),
            StateError::Migrate(MigrateError::Execute(cause)) => transient(cause),
            StateError::Migrate(_)
            | StateError::LeaseLost { .. }
            | StateError::Locked { .. }
            | StateError::LockFile { .. }
            | StateError::Corrupt { .. } => false,
        }
    }

    /// Wraps a driver error with what the store was doing.
    pub(crate) fn query(action: &'static str) -> impl FnOnce(sqlx::Error) -> StateError {
        move |cause| StateError::Query { action, cause }
    }
}

/// Whether a driver error is worth a retry.
fn transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                transient_postgres(pg.code())
            } else if let Some(code) = db.code() {
                // SQLite reports extended codes; the low byte is the primary code.
                code.parse::<i32>()
                    .is_ok_and(|code| matches!(code & 0xff, SQLITE_BUSY | SQLITE_LOCKED))
            } else {
                false
            }
        }
        _ => false,
    }
}

const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;
const SQLITE_PERM: i32 = 3;
const SQLITE_READONLY: i32 = 8;
const SQLITE_IOERR: i32 = 10;
const SQLITE_FULL: i32 = 13;
const SQLITE_CANTOPEN: i32 = 14;

/// What an operator should check for SQLite errors whose own text is terse ("disk I/O
/// error"): the disk's free space, or the file's permissions.
fn hint(error: &sqlx::Error) -> &'static str {
    let sqlx::Error::Database(db) = error else {
        return "";
    };
    let Some(code) = db.code().and_then(|code| code.parse::<i32>().ok()) else {
        return "";
    };
    match code & 0xff {
        SQLITE_IOERR | SQLITE_FULL => " (is the disk full? the state is unchanged)",
        SQLITE_PERM | SQLITE_READONLY | SQLITE_CANTOPEN => {
            " (are the state file and its directory writable? the state is unchanged)"
        }
        _ => "",
    }
}

/// SQLSTATEs that mean "try again": connection trouble, serialization, overload, restarts.
fn transient_postgres(code: &str) -> bool {
    code.starts_with("08")
        || matches!(
            code,
            "40001" | "40P01" | "53000" | "53300" | "55P03" | "57P01" | "57P02" | "57P03"
        )
}

/// The URL with any password (in the user info or a `password` parameter) replaced by `***`.
pub(crate) fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };

    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let authority = match authority.rsplit_once('@') {
                Some((user_info, host)) => match user_info.split_once(':') {
                    Some((user, _)) => format!("{user}:***@{host}"),
                    None => format!("{user_info}@{host}"),
                },
                None => authority.to_owned(),
            };
            format!("{scheme}://{authority}{path}")
        }
        None => base.to_owned(),
    };

    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => param.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_message() {
        let cases = [
            (
                "postgres://u:s3cret@db:5432/x",
                "postgres://u:***@db:5432/x",
            ),
            (
                "postgres://u@db/x?password=s3cret&sslmode=require",
                "postgres://u@db/x?password=***&sslmode=require",
            ),
            (
                "postgres://u:p%40ss@db/x?options=-csearch_path%3Ds",
                "postgres://u:***@db/x?options=-csearch_path%3Ds",
            ),
            ("postgres://db/x", "postgres://db/x"),
        ];
        for (url, expected) in cases {
            assert_eq!(redact_url(url), expected);
        }
    }

    #[test]
    fn only_retryable_failures_are_transient() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let open = StateError::Open {
            target: "x".into(),
            cause: io,
        };
        assert!(open.is_transient());
        assert!(StateError::query("read")(sqlx::Error::PoolTimedOut).is_transient());
        assert!(
            !StateError::LeaseLost {
                cohort: "a/b/c".into()
            }
            .is_transient()
        );
        assert!(!StateError::query("read")(sqlx::Error::RowNotFound).is_transient());
        assert!(transient_postgres("40001") && transient_postgres("08006"));
        assert!(!transient_postgres("23505"));
    }
}
