//! Small HTTP helpers shared by the fake servers.
//!
//! Basic credentials are decoded by hand and query strings are split by hand, because the
//! fakes must see repeated keys (`propKeys=A&propKeys=B`) exactly as a client sent them.

use axum::http::header::{AUTHORIZATION, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;

/// The `(user, password)` of a `Basic` Authorization header, if there is a well-formed one.
pub(super) fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let text = String::from_utf8(decode_base64(encoded.trim())?).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn decode_base64(input: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &c in input.trim_end_matches('=').as_bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// The decoded `(key, value)` pairs of a raw query string, in order, repeats kept.
pub(super) fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    raw.unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (other, _) => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `len` random lowercase hex digits.
pub(super) fn random_hex(rng: &mut fastrand::Rng, len: usize) -> String {
    (0..len)
        .map(|_| char::from_digit(rng.u32(0..16), 16).unwrap_or('0'))
        .collect()
}

/// Adds `Retry-After: value` to a response, when a value is given and is a valid header.
pub(super) fn with_retry_after(mut response: Response, retry_after: Option<&str>) -> Response {
    if let Some(value) = retry_after.and_then(|v| HeaderValue::from_str(v).ok()) {
        response.headers_mut().insert(RETRY_AFTER, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_basic_credentials() {
        let mut headers = HeaderMap::new();
        // "key:se:cret" in base64; the password may itself hold a colon.
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Basic a2V5OnNlOmNyZXQ="),
        );
        let credentials = basic_credentials(&headers);
        assert_eq!(credentials, Some(("key".into(), "se:cret".into())));

        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic a2V5Og=="));
        assert_eq!(
            basic_credentials(&headers),
            Some(("key".into(), String::new()))
        );

        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer a2V5Og=="));
        assert_eq!(basic_credentials(&headers), None);
    }

    #[test]
    fn splits_queries_keeping_repeats() {
        let pairs = query_pairs(Some("props=1&propKeys=plan&propKeys=first%20name+x&flag"));
        let expected = [
            ("props", "1"),
            ("propKeys", "plan"),
            ("propKeys", "first name x"),
        ];
        for (pair, (key, value)) in pairs.iter().zip(expected) {
            assert_eq!((pair.0.as_str(), pair.1.as_str()), (key, value));
        }
        assert_eq!(pairs[3], ("flag".to_owned(), String::new()));
        assert_eq!(percent_decode("100%"), "100%");
    }
}
