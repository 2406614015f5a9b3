//! Turns the Amplitude value of one export row into a 1Flow User ID.
//!
//! A cohort maps its configured field through an optional lookup table, then through
//! its transforms (trim, strip a prefix, lowercase, add a prefix). Rows that yield no
//! usable id are counted by kind and never sent. This runs once per member, so it
//! writes into a reused buffer instead of allocating.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::config::Transform;
use crate::members::MAX_ID_BYTES;

/// Amplitude values and the 1Flow ids they map to.
pub type LookupTable = HashMap<Box<[u8]>, Box<[u8]>>;

/// What one row's value became.
#[derive(Debug, PartialEq, Eq)]
pub enum Mapped<'a> {
    /// A usable 1Flow User ID.
    Id(&'a [u8]),
    /// The value is empty: an anonymous member.
    Anonymous,
    /// The lookup table has no entry, or the transforms left nothing.
    Unmapped,
    /// Not UTF-8, or longer than 1,024 bytes.
    Invalid,
}

/// A lookup table could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The file could not be opened or read.
    #[error("lookup table {path}: {source}")]
    Read {
        /// The table's path.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A row is not `amplitude_value,oneflow_user_id`.
    #[error("lookup table {path}: line {line}: {message}")]
    Row {
        /// The table's path.
        path: PathBuf,
        /// The 1-based line of the row.
        line: u64,
        /// What is wrong with it.
        message: String,
    },
}

/// Maps raw Amplitude values of one cohort to 1Flow User IDs.
#[derive(Debug, Default)]
pub struct Mapper {
    transform: Transform,
    lookup: Option<LookupTable>,
}

impl Mapper {
    /// A mapper applying `transform`, and the lookup `table` when there is one.
    pub fn new(transform: Transform, lookup: Option<LookupTable>) -> Mapper {
        Mapper { transform, lookup }
    }

    /// Maps one raw value, using `buf` as scratch space.
    pub fn map<'a>(&'a self, raw: &'a [u8], buf: &'a mut Vec<u8>) -> Mapped<'a> {
        if raw.is_empty() {
            return Mapped::Anonymous;
        }
        let value = match &self.lookup {
            Some(table) => match table.get(raw) {
                Some(mapped) => &mapped[..],
                None => return Mapped::Unmapped,
            },
            None => raw,
        };
        let Ok(text) = std::str::from_utf8(value) else {
            return Mapped::Invalid;
        };

        let t = &self.transform;
        let mut text = if t.trim { text.trim() } else { text };
        if let Some(prefix) = &t.strip_prefix {
            text = text.strip_prefix(prefix.as_str()).unwrap_or(text);
        }
        buf.clear();
        if let Some(prefix) = &t.add_prefix {
            buf.extend_from_slice(prefix.as_bytes());
        }
        let prefix_len = buf.len();
        if t.lowercase && text.bytes().any(|b| b.is_ascii_uppercase() || b >= 0x80) {
            buf.extend_from_slice(text.to_lowercase().as_bytes());
        } else {
            buf.extend_from_slice(text.as_bytes());
        }

        if buf.len() == prefix_len {
            Mapped::Unmapped
        } else if buf.len() > MAX_ID_BYTES {
            Mapped::Invalid
        } else {
            Mapped::Id(&buf[..])
        }
    }
}

/// Reads a lookup table: CSV rows of `amplitude_value,oneflow_user_id`, with an
/// optional header row of exactly those names.
///
/// # Errors
///
/// When the file cannot be read, or a row does not have two fields.
pub fn read_lookup(path: &Path) -> Result<LookupTable, LookupError> {
    let file = std::fs::File::open(path).map_err(|source| LookupError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(std::io::BufReader::new(file));
    let mut table = HashMap::new();
    let mut record = csv::ByteRecord::new();
    loop {
        let line = reader.position().line();
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(error) => {
                return Err(LookupError::Row {
                    path: path.to_owned(),
                    line,
                    message: error.to_string(),
                });
            }
        }
        if record.len() != 2 {
            return Err(LookupError::Row {
                path: path.to_owned(),
                line,
                message: format!("expected 2 fields, found {}", record.len()),
            });
        }
        let (from, to) = (
            record[0]
                .strip_prefix(b"\xEF\xBB\xBF")
                .unwrap_or(&record[0]),
            &record[1],
        );
        if table.is_empty() && from == b"amplitude_value" && to == b"oneflow_user_id" {
            continue;
        }
        table.insert(from.into(), to.into());
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(mapper: &Mapper, raw: &str) -> Result<String, String> {
        let mut buf = Vec::new();
        match mapper.map(raw.as_bytes(), &mut buf) {
            Mapped::Id(id) => Ok(String::from_utf8(id.to_vec()).unwrap()),
            other => Err(format!("{other:?}")),
        }
    }

    #[test]
    fn plain_ids_pass_through() {
        let mapper = Mapper::default();
        assert_eq!(map(&mapper, "user-1"), Ok("user-1".into()));
        assert_eq!(map(&mapper, ""), Err("Anonymous".into()));
        assert_eq!(map(&mapper, &"x".repeat(1025)), Err("Invalid".into()));
        let mut buf = Vec::new();
        assert_eq!(mapper.map(b"\xff\xfe", &mut buf), Mapped::Invalid);
    }

    #[test]
    fn transforms_apply_in_order() {
        let transform = Transform {
            trim: true,
            lowercase: true,
            strip_prefix: Some("U_".into()),
            add_prefix: Some("amp:".into()),
        };
        let mapper = Mapper::new(transform, None);
        assert_eq!(map(&mapper, "  U_Alice "), Ok("amp:alice".into()));
        assert_eq!(map(&mapper, "Bob"), Ok("amp:bob".into()));
        assert_eq!(map(&mapper, "ÉMILE"), Ok("amp:émile".into()));
        assert_eq!(map(&mapper, "   "), Err("Unmapped".into()));
    }

    #[test]
    fn lookup_maps_and_counts_misses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lookup.csv");
        std::fs::write(
            &path,
            "amplitude_value,oneflow_user_id\na1,of-1\n\"a,2\",of-2\n",
        )
        .unwrap();
        let mapper = Mapper::new(Transform::default(), Some(read_lookup(&path).unwrap()));
        assert_eq!(map(&mapper, "a1"), Ok("of-1".into()));
        assert_eq!(map(&mapper, "a,2"), Ok("of-2".into()));
        assert_eq!(map(&mapper, "a3"), Err("Unmapped".into()));
    }

    #[test]
    fn bad_lookup_rows_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lookup.csv");
        std::fs::write(&path, "a1,of-1\na2\n").unwrap();
        let error = read_lookup(&path).unwrap_err().to_string();
        assert!(error.contains("line 2"), "{error}");
        let missing = read_lookup(&dir.path().join("nope.csv"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("nope.csv"), "{missing}");
    }
}
