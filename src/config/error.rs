//! The errors of loading a configuration.
//!
//! Every message starts with the file, then the line or the environment variable the bad
//! value came from when known, then the key path (`cohorts[2].timezone`), then what is wrong.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use super::secret::REDACTED;

/// Where a bad value was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A line of the configuration file, counted from 1.
    Line(usize),
    /// An environment variable that overrode the file.
    Env(String),
    /// Not known: a default, or a key the file does not spell out.
    Unknown,
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The configuration file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },

    /// The file is not valid TOML.
    #[error("{}:{line}:{column}: TOML syntax error: {message}", path.display())]
    Syntax {
        /// The configuration file.
        path: PathBuf,
        /// The line of the error, counted from 1.
        line: usize,
        /// The column of the error in characters, counted from 1.
        column: usize,
        /// What the parser expected.
        message: String,
    },

    /// A key that cohort-sync does not know (often a typo).
    #[error("{}: unknown key", Located(path, key, origin))]
    UnknownKey {
        /// The configuration file.
        path: PathBuf,
        /// The full key path, e.g. `cohorts[0].transfrom`.
        key: String,
        /// Where the key was written.
        origin: Origin,
    },

    /// A value of the wrong type or out of its allowed range.
    #[error("{}: {message}", Located(path, key, origin))]
    Invalid {
        /// The configuration file.
        path: PathBuf,
        /// The full key path.
        key: String,
        /// Where the value was written.
        origin: Origin,
        /// What is wrong, never quoting a secret.
        message: String,
    },

    /// A required credential is absent or empty.
    #[error("{}: {key}: missing; set it in the file or with {env_var}", path.display())]
    MissingSecret {
        /// The configuration file.
        path: PathBuf,
        /// The key path, e.g. `amplitude.secret_key`.
        key: String,
        /// The environment variable that can supply it.
        env_var: String,
    },

    /// A cohort's lookup file does not exist or cannot be read.
    #[error("{}: cannot read lookup file {}: {source}", Located(path, key, origin), file.display())]
    Lookup {
        /// The configuration file.
        path: PathBuf,
        /// The key path, e.g. `cohorts[1].lookup`.
        key: String,
        /// Where the key was written.
        origin: Origin,
        /// The lookup file, resolved against the configuration's directory.
        file: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
}

impl ConfigError {
    /// The key path the error is about, if it is about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Read { .. } | Self::Syntax { .. } => None,
            Self::UnknownKey { key, .. }
            | Self::Invalid { key, .. }
            | Self::MissingSecret { key, .. }
            | Self::Lookup { key, .. } => Some(key),
        }
    }

    /// Replaces every occurrence of the given secret values in the free-text parts.
    ///
    /// A second line of defence: no message is built from a secret in the first place.
    pub(crate) fn redact(mut self, secrets: &[String]) -> Self {
        let scrub = |text: &mut String| {
            for secret in secrets {
                if text.contains(secret.as_str()) {
                    *text = text.replace(secret.as_str(), REDACTED);
                }
            }
        };
        match &mut self {
            Self::Syntax { message, .. } | Self::Invalid { message, .. } => scrub(message),
            _ => {}
        }
        self
    }
}

/// Formats `path[:line]: key[ (from VAR)]`.
struct Located<'a>(&'a Path, &'a str, &'a Origin);

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Located(path, key, origin) = self;
        match origin {
            Origin::Line(line) => write!(f, "{}:{line}: {key}", path.display()),
            Origin::Env(var) => write!(f, "{}: {key} (from {var})", path.display()),
            Origin::Unknown => write!(f, "{}: {key}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_file_line_and_key() {
        let err = ConfigError::Invalid {
            path: "config/x.toml".into(),
            key: "cohorts[1].schedule".into(),
            origin: Origin::Line(12),
            message: "must not be empty".into(),
        };
        assert_eq!(
            err.to_string(),
            "config/x.toml:12: cohorts[1].schedule: must not be empty"
        );

        let err = ConfigError::UnknownKey {
            path: "x.toml".into(),
            key: "amplitude.foo".into(),
            origin: Origin::Env("COHORT_SYNC__AMPLITUDE__FOO".into()),
        };
        assert_eq!(
            err.to_string(),
            "x.toml: amplitude.foo (from COHORT_SYNC__AMPLITUDE__FOO): unknown key"
        );
    }

    #[test]
    fn redact_scrubs_free_text() {
        let err = ConfigError::Invalid {
            path: "x.toml".into(),
            key: "k".into(),
            origin: Origin::Unknown,
            message: "bad value sekrit-1".into(),
        };
        let text = err.redact(&["sekrit-1".into()]).to_string();
        assert_eq!(text, "x.toml: k: bad value [redacted]");
    }
}
