//! A credential read from the configuration.
//!
//! [`Secret`] keeps its value in a zeroizing [`SecretString`] and prints as `[redacted]` in
//! both Debug and Display, so a `Config` can be logged or shown in an error without leaking.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::de::{self, Deserialize, Deserializer, Visitor};

/// What a secret prints as, whatever its value.
pub const REDACTED: &str = "[redacted]";

/// An API key or similar credential; only [`Secret::expose`] gives its value.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }

    /// The value, for the one place that must send it (an HTTP header).
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// True when the value is the empty string (which the loader treats as missing).
    pub fn is_empty(&self) -> bool {
        self.expose().is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // `deserialize_any`, so a deserializer never builds its own message quoting a value.
        deserializer.deserialize_any(SecretVisitor)
    }
}

struct SecretVisitor;

impl Visitor<'_> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Secret, E> {
        Ok(Secret::new(value))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Secret, E> {
        Ok(Secret::new(value))
    }

    // serde's default messages for scalars quote the value; these must not.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Secret, E> {
        Err(E::custom("expected a string, found a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Secret, E> {
        Err(E::custom("expected a string, found a number"))
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Secret, E> {
        Err(E::custom("expected a string, found a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Secret, E> {
        Err(E::custom("expected a string, found a number"))
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Secret, E> {
        Err(E::custom("expected a string, found a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Secret, E> {
        Err(E::custom("expected a string, found a number"))
    }

    fn visit_char<E: de::Error>(self, _: char) -> Result<Secret, E> {
        Err(E::custom("expected a string, found a character"))
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Secret, E> {
        Err(E::custom("expected a string, found bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_redacted_and_exposes_value() {
        let secret = Secret::new("hunter2-value");
        assert_eq!(format!("{secret:?}"), REDACTED);
        assert_eq!(format!("{secret}"), REDACTED);
        assert_eq!(secret.expose(), "hunter2-value");
        assert!(Secret::new("").is_empty());
    }

    #[test]
    fn deserializes_from_a_string() {
        let secret: Secret = serde_json::from_str("\"abc-123\"").unwrap();
        assert_eq!(secret.expose(), "abc-123");
    }

    #[test]
    fn wrong_type_error_does_not_echo_the_value() {
        let err = serde_json::from_str::<Secret>("12345678")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("12345678"), "{err}");
    }
}
