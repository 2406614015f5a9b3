//! Fake cohorts, their members, and the export file rendered from them.
//!
//! A file is rendered straight into one `Vec<u8>` (every field quoted, `""` escaping a
//! quote) and gzipped at flate2's fast level, so a two-million-member cohort is cheap to
//! put. [`sample_members`] makes deterministic member lists of any size.

use std::collections::BTreeSet;
use std::io::Write;

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;

/// One member of a fake cohort.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FakeMember {
    /// Amplitude's numeric id for the user.
    pub amplitude_id: u64,
    /// The Amplitude user id; `""` for an anonymous member.
    pub user_id: String,
    /// User properties, exported as columns when an export asks for them.
    pub properties: Vec<(String, String)>,
}

impl FakeMember {
    /// A member without properties.
    pub fn new(amplitude_id: u64, user_id: impl Into<String>) -> Self {
        FakeMember {
            amplitude_id,
            user_id: user_id.into(),
            properties: Vec::new(),
        }
    }

    /// The member with one more user property.
    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.push((key.into(), value.into()));
        self
    }

    fn property(&self, key: &str) -> &str {
        self.properties
            .iter()
            .find(|(k, _)| k == key)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// How the fake Amplitude hands an export file over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Delivery {
    /// `/file` answers 200 with the body itself.
    Inline,
    /// `/file` answers 302 to a pre-signed link on the fake S3.
    #[default]
    Redirect,
}

/// The shape of a cohort's export file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileOptions {
    /// Gzip the body (default true).
    pub gzip: bool,
    /// Send `Content-Encoding: gzip` with a gzipped body (default false: only the magic
    /// bytes tell).
    pub content_encoding_header: bool,
    /// Start the CSV with a UTF-8 byte order mark.
    pub bom: bool,
    /// End lines with `\r\n` instead of `\n`.
    pub crlf: bool,
    /// Inline body or redirect to S3 (default redirect).
    pub delivery: Delivery,
    /// Serve only the first half of the body, then end the response cleanly.
    pub truncate: bool,
    /// Include every property column in every export, whatever was requested (a wide
    /// export, to show that memory follows the members, not the file).
    pub all_properties: bool,
}

impl Default for FileOptions {
    fn default() -> Self {
        FileOptions {
            gzip: true,
            content_encoding_header: false,
            bom: false,
            crlf: false,
            delivery: Delivery::Redirect,
            truncate: false,
            all_properties: false,
        }
    }
}

/// A cohort to put in the fake Amplitude.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FakeCohort {
    /// The cohort id, as Amplitude shows it.
    pub id: String,
    /// The cohort name.
    pub name: String,
    /// The members, in file order.
    pub members: Vec<FakeMember>,
    /// Listed as archived.
    pub archived: bool,
    /// The listed `size`: `None` lists `members.len()`, `Some(None)` lists `null`,
    /// `Some(Some(n))` lists `n` whatever the members are.
    pub listed_size: Option<Option<u64>>,
    /// The listed `lastComputed`; `None` lets the sandbox advance it when members change.
    pub last_computed: Option<i64>,
    /// The shape of the export file.
    pub file: FileOptions,
    /// Bytes served as every export file of this cohort instead of a file rendered from
    /// `members` (which then only set the listed size), for files no member list can
    /// produce: a missing column, bytes that are not UTF-8, an empty body.
    pub raw_file: Option<Bytes>,
}

impl FakeCohort {
    /// A cohort with default file options, listed size and timestamps.
    pub fn new(id: impl Into<String>, name: impl Into<String>, members: Vec<FakeMember>) -> Self {
        FakeCohort {
            id: id.into(),
            name: name.into(),
            members,
            ..FakeCohort::default()
        }
    }
}

/// Every property key some member has, sorted: the columns of a `props=1` export that
/// names no `propKeys`.
pub(super) fn all_property_keys(members: &[FakeMember]) -> Vec<String> {
    let keys: BTreeSet<&str> = members
        .iter()
        .flat_map(|m| m.properties.iter().map(|(k, _)| k.as_str()))
        .collect();
    keys.into_iter().map(str::to_owned).collect()
}

/// The served body of an export with these property columns.
pub(super) fn render_file(
    members: &[FakeMember],
    props: &[String],
    options: &FileOptions,
) -> Bytes {
    let csv = render_csv(members, props, options);
    if !options.gzip {
        return Bytes::from(csv);
    }
    let mut encoder = GzEncoder::new(Vec::with_capacity(csv.len() / 3 + 64), Compression::fast());
    let gzipped = encoder.write_all(&csv).and_then(|()| encoder.finish());
    Bytes::from(gzipped.expect("gzip into a Vec cannot fail"))
}

fn render_csv(members: &[FakeMember], props: &[String], options: &FileOptions) -> Vec<u8> {
    let eol: &[u8] = if options.crlf { b"\r\n" } else { b"\n" };
    let mut out = Vec::with_capacity(members.len() * (36 + 8 * props.len()) + 64);
    if options.bom {
        out.extend_from_slice("\u{feff}".as_bytes());
    }

    push_field(&mut out, "amplitude_id");
    out.push(b',');
    push_field(&mut out, "user_id");
    for key in props {
        out.push(b',');
        push_field(&mut out, key);
    }
    out.extend_from_slice(eol);

    for member in members {
        out.push(b'"');
        push_u64(&mut out, member.amplitude_id);
        out.extend_from_slice(b"\",");
        push_field(&mut out, &member.user_id);
        for key in props {
            out.push(b',');
            push_field(&mut out, member.property(key));
        }
        out.extend_from_slice(eol);
    }
    out
}

fn push_field(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    if text.contains('"') {
        for &byte in text.as_bytes() {
            if byte == b'"' {
                out.push(b'"');
            }
            out.push(byte);
        }
    } else {
        out.extend_from_slice(text.as_bytes());
    }
    out.push(b'"');
}

fn push_u64(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// `count` members, the same for the same `seed` (and a shorter list is a prefix of a
/// longer one). Amplitude ids are distinct and ascending; user ids look like `user-000123`
/// with 6 to 8 digits, distinct; about `anonymous_share` of the members are anonymous
/// (`user_id` `""`). Members carry no properties, to keep millions of them small.
pub fn sample_members(count: usize, anonymous_share: f64, seed: u64) -> Vec<FakeMember> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..count)
        .map(|i| {
            let amplitude_id = 100_000_000 + (i as u64) * 8 + rng.u64(0..8);
            let user_id = if rng.f64() < anonymous_share {
                String::new()
            } else {
                let width = 6 + rng.usize(0..3);
                format!("user-{i:0width$}")
            };
            FakeMember {
                amplitude_id,
                user_id,
                properties: Vec::new(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::io::Read;

    use flate2::read::MultiGzDecoder;

    use super::*;

    fn plain() -> FileOptions {
        FileOptions {
            gzip: false,
            ..FileOptions::default()
        }
    }

    #[test]
    fn renders_quoted_csv_with_escapes_and_property_columns() {
        let members = vec![
            FakeMember::new(1, "a\"b").with_property("plan", "pro"),
            FakeMember::new(22, "").with_property("city", "Köln, \"Alt\""),
        ];
        let props = vec!["plan".to_owned(), "city".to_owned()];
        let body = render_file(&members, &props, &plain());
        let expected = "\"amplitude_id\",\"user_id\",\"plan\",\"city\"\n\
                        \"1\",\"a\"\"b\",\"pro\",\"\"\n\
                        \"22\",\"\",\"\",\"Köln, \"\"Alt\"\"\"\n";
        assert_eq!(std::str::from_utf8(&body).unwrap(), expected);
        assert_eq!(all_property_keys(&members), vec!["city", "plan"]);
    }

    #[test]
    fn bom_crlf_and_gzip() {
        let members = vec![FakeMember::new(7, "u")];
        let options = FileOptions {
            bom: true,
            crlf: true,
            ..FileOptions::default()
        };
        let body = render_file(&members, &[], &options);
        assert_eq!(&body[..2], &[0x1f, 0x8b]);

        let mut text = String::new();
        MultiGzDecoder::new(&body[..])
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(
            text,
            "\u{feff}\"amplitude_id\",\"user_id\"\r\n\"7\",\"u\"\r\n"
        );
    }

    #[test]
    fn sample_members_is_deterministic_with_the_right_anonymous_share() {
        let members = sample_members(20_000, 0.25, 42);
        assert_eq!(members, sample_members(20_000, 0.25, 42));
        assert_eq!(&members[..100], &sample_members(100, 0.25, 42)[..]);
        assert_ne!(members, sample_members(20_000, 0.25, 43));

        let anonymous = members.iter().filter(|m| m.user_id.is_empty()).count();
        let share = anonymous as f64 / members.len() as f64;
        assert!((0.23..0.27).contains(&share), "anonymous share {share}");

        let named: Vec<&str> = members
            .iter()
            .filter(|m| !m.user_id.is_empty())
            .map(|m| &*m.user_id)
            .collect();
        assert_eq!(named.iter().collect::<HashSet<_>>().len(), named.len());
        assert!(named.iter().all(|id| id.starts_with("user-")));
        let lengths: HashSet<usize> = named.iter().map(|id| id.len()).collect();
        assert!(lengths.len() > 1, "user id lengths should vary");
        assert!(
            members
                .windows(2)
                .all(|w| w[0].amplitude_id < w[1].amplitude_id)
        );
    }
}
