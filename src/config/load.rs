//! Reading the file, layering the environment with the `config` crate, and turning that
//! crate's errors into located [`ConfigError`]s.
//!
//! The file is read once; its text feeds both the `config` crate and the span index that
//! gives errors their line. Every error is scrubbed of known secret values on the way out.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use ::config::{ConfigError as CrateError, Environment, File, FileFormat};

use super::error::{ConfigError, Origin};
use super::raw::RawConfig;
use super::spans::{self, Document, ENV_SEPARATOR};
use super::{Config, validate};

/// What an error about the whole file, not one key, is reported against.
const TOP_LEVEL: &str = "(top level)";

/// Secrets shorter than this are not scrubbed from messages: they would mangle words.
const MIN_SCRUB_LEN: usize = 4;

/// See [`super::load`].
pub fn load(path: &Path, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;

    let doc = Document::parse(&text).map_err(|err| ConfigError::Syntax {
        path: path.to_owned(),
        line: err.line,
        column: err.column,
        message: err.message,
    })?;

    let mut secrets = doc.secret_values();
    secrets.extend(spans::env_secret_values(env));
    secrets.retain(|s| s.len() >= MIN_SCRUB_LEN);

    let ctx = Ctx::new(path, &doc, env);
    build(&text, env, &ctx).map_err(|err| err.redact(&secrets))
}

fn build(text: &str, env: &HashMap<String, String>, ctx: &Ctx) -> Result<Config, ConfigError> {
    let prefix = spans::ENV_PREFIX.trim_end_matches(ENV_SEPARATOR);
    let environment = Environment::with_prefix(prefix)
        .prefix_separator(ENV_SEPARATOR)
        .separator(ENV_SEPARATOR)
        .source(Some(
            env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        ));

    let merged = ::config::Config::builder()
        .add_source(File::from_str(text, FileFormat::Toml))
        .add_source(environment)
        .build()
        .map_err(|err| ctx.map_crate_error(err))?;

    let raw: RawConfig = merged
        .try_deserialize()
        .map_err(|err| ctx.map_crate_error(err))?;
    validate::config(raw, ctx)
}

/// What validation needs to know to build located errors and resolve paths.
pub struct Ctx<'a> {
    /// The configuration file, as given.
    pub path: &'a Path,
    /// Its directory, against which relative paths are resolved.
    pub dir: PathBuf,
    doc: &'a Document,
    env_keys: BTreeMap<String, String>,
}

impl<'a> Ctx<'a> {
    fn new(path: &'a Path, doc: &'a Document, env: &HashMap<String, String>) -> Self {
        let dir = path.parent().map(Path::to_owned).unwrap_or_default();
        Self {
            path,
            dir,
            doc,
            env_keys: spans::env_keys(env),
        }
    }

    /// Where the value at `key` came from: an overriding variable, else a line of the file.
    pub fn origin(&self, key: &str) -> Origin {
        if let Some(var) = self.env_keys.get(key) {
            return Origin::Env(var.clone());
        }
        self.doc.line_of(key).map_or(Origin::Unknown, Origin::Line)
    }

    /// The line of `key` in the file, if it is there.
    pub fn line(&self, key: &str) -> Option<usize> {
        self.doc.line_of(key)
    }

    /// An [`ConfigError::Invalid`] about `key`.
    pub fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            key: key.to_owned(),
            origin: self.origin(key),
            message: message.into(),
        }
    }

    /// `value` as a path, resolved against the configuration's directory.
    pub fn resolve(&self, value: &str) -> PathBuf {
        let path = Path::new(value);
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.dir.join(path)
        }
    }

    /// Maps an error of the `config` crate, never quoting the value it was about.
    fn map_crate_error(&self, err: CrateError) -> ConfigError {
        match err {
            CrateError::Type {
                unexpected,
                expected,
                key,
                ..
            } => {
                let found = kind_of(&unexpected.to_string());
                let key = key.filter(|k| !k.is_empty());
                let key = key.as_deref().unwrap_or(TOP_LEVEL);
                self.invalid(
                    key,
                    format!("expected {}, found {found}", tidy_expected(expected)),
                )
            }
            CrateError::At { error, key, .. } => {
                self.map_message(&dotted(key.as_deref().unwrap_or("")), &error.to_string())
            }
            CrateError::Message(message) => self.map_message("", &message),
            CrateError::NotFound(key) => self.invalid(&dotted(&key), "required"),
            other => self.invalid(TOP_LEVEL, other.to_string()),
        }
    }

    /// Maps a serde message raised while deserializing the value at `parent`.
    fn map_message(&self, parent: &str, message: &str) -> ConfigError {
        if let Some(rest) = message.strip_prefix("unknown field `") {
            let name = rest.split('`').next().unwrap_or_default();
            let key = join(parent, name);
            return ConfigError::UnknownKey {
                path: self.path.to_owned(),
                origin: self.origin(&key),
                key,
            };
        }

        let key = if parent.is_empty() { TOP_LEVEL } else { parent };
        if let Some(rest) = message.strip_prefix("invalid type: ") {
            let (found, expected) = rest
                .rsplit_once(", expected ")
                .unwrap_or((rest, "another type"));
            let text = format!(
                "expected {}, found {}",
                tidy_expected(expected),
                kind_of(found)
            );
            return self.invalid(key, text);
        }
        if let Some(rest) = message.strip_prefix("missing field `") {
            let name = rest.split('`').next().unwrap_or_default();
            return self.invalid(&join(parent, name), "required");
        }
        self.invalid(key, message)
    }
}

/// The config crate writes `cohorts[0]transform`; make that `cohorts[0].transform`.
fn dotted(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    let mut chars = key.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == ']' && chars.peek().is_some_and(|&next| next != '[' && next != '.') {
            out.push('.');
        }
    }
    out
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}.{name}")
    }
}

/// The kind of a value from serde's or the config crate's description of it, without the
/// value itself (which may be a secret).
fn kind_of(unexpected: &str) -> &'static str {
    let text = unexpected.trim_start();
    if text.starts_with("string") {
        "a string"
    } else if text.starts_with("boolean") {
        "a boolean"
    } else if text.contains("integer") {
        "an integer"
    } else if text.starts_with("floating") {
        "a number"
    } else if text.starts_with("sequence") {
        "an array"
    } else if text.starts_with("map") {
        "a table"
    } else if text.starts_with("unit") {
        "an empty value"
    } else {
        "a value of another type"
    }
}

/// Serde's and the config crate's "expected" texts in TOML terms.
fn tidy_expected(expected: &str) -> &str {
    match expected {
        "a map" => "a table",
        "a sequence" => "an array",
        "a floating point" => "a number",
        e if e.starts_with("struct ") => "a table",
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_drop_the_value() {
        assert_eq!(kind_of("string \"hunter2\""), "a string");
        assert_eq!(kind_of("64-bit integer `42`"), "an integer");
        assert_eq!(kind_of("sequence"), "an array");
        assert_eq!(tidy_expected("struct RawAmplitude"), "a table");
    }

    #[test]
    fn keys_get_dots_after_indexes() {
        assert_eq!(
            dotted("cohorts[0]transform.trim"),
            "cohorts[0].transform.trim"
        );
        assert_eq!(dotted("a[0][1].b"), "a[0][1].b");
        assert_eq!(dotted("cohorts[2]"), "cohorts[2]");
    }
}
