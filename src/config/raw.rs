//! The configuration exactly as written, before validation.
//!
//! Every field is optional here so that defaults and "required" checks live in one place
//! (`validate`), and every struct denies unknown keys. Numbers and booleans accept strings
//! too, because environment overrides are always strings.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::secret::Secret;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub amplitude: RawAmplitude,
    #[serde(default)]
    pub amplitude_projects: BTreeMap<String, RawAmplitude>,
    #[serde(default)]
    pub oneflow: RawOneflow,
    #[serde(default)]
    pub oneflow_accounts: BTreeMap<String, RawOneflow>,
    #[serde(default)]
    pub state: RawState,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub daemon: RawDaemon,
    #[serde(default)]
    pub cohorts: Vec<RawCohort>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAmplitude {
    pub api_key: Option<Secret>,
    pub secret_key: Option<Secret>,
    pub region: Option<String>,
    pub base_url: Option<String>,
    pub poll_interval: Option<String>,
    pub export_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub max_retries: Option<Int>,
    pub monthly_export_budget: Option<Int>,
    pub export_reserve: Option<Int>,
    pub size_tolerance: Option<Float>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawOneflow {
    pub api_key: Option<Secret>,
    pub base_url: Option<String>,
    pub batch_size: Option<Int>,
    pub max_batch_bytes: Option<Int>,
    pub concurrency: Option<Int>,
    pub request_timeout: Option<String>,
    pub max_retries: Option<Int>,
    pub max_retry_after: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    pub path: Option<String>,
    pub url: Option<String>,
    pub lease_ttl: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<String>,
    pub level: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawDaemon {
    pub shutdown_grace: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawCohort {
    pub amplitude_id: Option<String>,
    pub name: Option<String>,
    pub schedule: Option<String>,
    pub timezone: Option<String>,
    pub user_id: Option<String>,
    #[serde(default)]
    pub transform: RawTransform,
    pub lookup: Option<String>,
    pub enabled: Option<Bool>,
    pub max_removal_ratio: Option<Float>,
    pub amplitude_project: Option<String>,
    pub oneflow_account: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTransform {
    pub trim: Option<Bool>,
    pub lowercase: Option<Bool>,
    pub strip_prefix: Option<String>,
    pub add_prefix: Option<String>,
}

/// An integer, written as a TOML integer or as a decimal string.
pub struct Int(pub i64);

/// A number, written as a TOML float or integer, or as a string.
pub struct Float(pub f64);

/// A boolean, written as a TOML boolean or as `"true"` / `"false"`.
pub struct Bool(pub bool);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor::<Int>::new("an integer"))
    }
}

impl<'de> Deserialize<'de> for Float {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor::<Float>::new("a number"))
    }
}

impl<'de> Deserialize<'de> for Bool {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor::<Bool>::new("true or false"))
    }
}

/// How a scalar is built from each kind of input; `None` means the kind is refused.
trait Scalar: Sized {
    fn from_i64(_: i64) -> Option<Self> {
        None
    }
    fn from_f64(_: f64) -> Option<Self> {
        None
    }
    fn from_bool(_: bool) -> Option<Self> {
        None
    }
    fn from_text(text: &str) -> Option<Self>;
}

impl Scalar for Int {
    fn from_i64(value: i64) -> Option<Self> {
        Some(Self(value))
    }
    fn from_text(text: &str) -> Option<Self> {
        text.trim().parse().ok().map(Self)
    }
}

impl Scalar for Float {
    fn from_i64(value: i64) -> Option<Self> {
        Some(Self(value as f64))
    }
    fn from_f64(value: f64) -> Option<Self> {
        Some(Self(value))
    }
    fn from_text(text: &str) -> Option<Self> {
        text.trim().parse().ok().map(Self)
    }
}

impl Scalar for Bool {
    fn from_bool(value: bool) -> Option<Self> {
        Some(Self(value))
    }
    fn from_text(text: &str) -> Option<Self> {
        match text.trim() {
            "true" => Some(Self(true)),
            "false" => Some(Self(false)),
            _ => None,
        }
    }
}

struct ScalarVisitor<T> {
    expected: &'static str,
    kind: std::marker::PhantomData<T>,
}

impl<T> ScalarVisitor<T> {
    fn new(expected: &'static str) -> Self {
        Self {
            expected,
            kind: std::marker::PhantomData,
        }
    }

    fn refuse<E: de::Error>(&self, found: impl fmt::Display) -> E {
        E::custom(format!("expected {}, found {found}", self.expected))
    }
}

impl<T: Scalar> Visitor<'_> for ScalarVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expected)
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<T, E> {
        T::from_bool(value).ok_or_else(|| self.refuse(format_args!("{value}")))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<T, E> {
        T::from_i64(value).ok_or_else(|| self.refuse(format_args!("{value}")))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<T, E> {
        let value = i64::try_from(value).map_err(|_| self.refuse(format_args!("{value}")))?;
        self.visit_i64(value)
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<T, E> {
        T::from_f64(value).ok_or_else(|| self.refuse(format_args!("{value}")))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<T, E> {
        T::from_text(value).ok_or_else(|| self.refuse(format_args!("{value:?}")))
    }
}
