//! Reads a downloaded cohort export into a member set, as a stream.
//!
//! Bytes go through gunzip (detected by its magic bytes, whatever the headers said),
//! then the CSV reader, then the cohort's [`Mapper`], straight into an
//! [`IdSetBuilder`]: neither the file nor its rows are ever held whole. This runs on a
//! blocking thread, so parsing uses one core while the network uses the other.

use std::io::{BufRead, BufReader, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::config::UserIdSource;
use crate::mapping::{Mapped, Mapper};
use crate::members::{IdSet, IdSetBuilder};

/// How often, in rows, the parser publishes progress and checks for cancellation.
const CHECK_EVERY_ROWS: u64 = 16_384;

/// Why an export file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The bytes stopped coming or could not be decompressed.
    #[error("reading the export failed: {0}")]
    Read(#[source] std::io::Error),
    /// The file is not the CSV we expect.
    #[error("the export is not valid CSV at line {line}: {message}")]
    Csv {
        /// The 1-based line where the problem was found.
        line: u64,
        /// What the CSV reader said.
        message: String,
    },
    /// The header has no column for the configured id.
    #[error("the export has no `{column}` column (its columns: {header})")]
    MissingColumn {
        /// The column the cohort's `user_id` setting names.
        column: String,
        /// The header row, as found.
        header: String,
    },
    /// The id column is a user property that is empty in every row: no member has the
    /// property, so the setting almost surely names the wrong one.
    #[error(
        "the export's `{column}` column is empty in all {rows} rows: no member has the user \
         property {column} (check the cohort's user_id)"
    )]
    EmptyColumn {
        /// The property the cohort's `user_id` setting names.
        column: String,
        /// The data rows read.
        rows: u64,
    },
    /// The file is empty: not even a header row.
    #[error("the export file is empty (no header row)")]
    Empty,
    /// The run was stopped while parsing.
    #[error("parsing was cancelled")]
    Cancelled,
}

impl ExportError {
    /// Whether downloading the file again may help (a cut connection or stream).
    pub fn is_transient(&self) -> bool {
        matches!(self, ExportError::Read(_))
    }

    /// Whether the file lacks a usable id column for the cohort's `user_id` setting, so
    /// an export requested with other settings cannot serve this one.
    pub fn is_column_error(&self) -> bool {
        matches!(
            self,
            ExportError::MissingColumn { .. } | ExportError::EmptyColumn { .. }
        )
    }
}

/// Counts of what a parse saw, beside the members themselves.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExportCounts {
    /// Data rows read (the header excluded).
    pub rows: u64,
    /// Rows with an empty id: anonymous members.
    pub anonymous: u64,
    /// Rows the lookup table or transforms could not map.
    pub unmapped: u64,
    /// Rows whose id is not UTF-8 or is longer than 1,024 bytes.
    pub invalid: u64,
    /// Distinct mapped ids.
    pub members: u64,
}

/// A fully parsed export.
#[derive(Debug)]
pub struct Parsed {
    /// The distinct 1Flow ids of the cohort, sorted.
    pub members: IdSet,
    /// What the parse counted.
    pub counts: ExportCounts,
}

/// Progress shared with whoever reports it, and a way to stop the parse.
#[derive(Debug, Default)]
pub struct ParseProgress {
    /// Bytes read from the network so far (before decompression).
    pub bytes: AtomicU64,
    /// Data rows parsed so far.
    pub rows: AtomicU64,
    /// Set to stop the parse at the next check.
    pub cancel: AtomicBool,
}

/// Counts bytes as they are read.
struct Counted<'a, R> {
    inner: R,
    progress: &'a ParseProgress,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Parses an export body (gzip or not) into the cohort's member set.
///
/// # Errors
///
/// When the stream fails, the CSV is malformed, or the id column is missing.
pub fn parse(
    body: impl Read,
    source: &UserIdSource,
    mapper: &Mapper,
    progress: &ParseProgress,
) -> Result<Parsed, ExportError> {
    let mut raw = BufReader::with_capacity(
        256 * 1024,
        Counted {
            inner: body,
            progress,
        },
    );
    let head = raw.fill_buf().map_err(ExportError::Read)?;
    if head.is_empty() {
        return Err(ExportError::Empty);
    }
    let input: Box<dyn Read + '_> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(raw))
    } else {
        Box::new(raw)
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .buffer_capacity(256 * 1024)
        .from_reader(input);

    let mut record = csv::ByteRecord::new();
    if !read_record(&mut reader, &mut record)? {
        return Err(ExportError::Empty);
    }
    let column = find_column(&record, source)?;

    let mut builder = IdSetBuilder::with_capacity(1 << 16, 1 << 20);
    let mut counts = ExportCounts::default();
    let mut buf = Vec::with_capacity(64);
    while read_record(&mut reader, &mut record)? {
        counts.rows += 1;
        let value = record.get(column).unwrap_or_default();
        match mapper.map(value, &mut buf) {
            Mapped::Id(id) => builder.push(id),
            Mapped::Anonymous => counts.anonymous += 1,
            Mapped::Unmapped => counts.unmapped += 1,
            Mapped::Invalid => counts.invalid += 1,
        }
        if counts.rows.is_multiple_of(CHECK_EVERY_ROWS) {
            progress.rows.store(counts.rows, Ordering::Relaxed);
            if progress.cancel.load(Ordering::Relaxed) {
                return Err(ExportError::Cancelled);
            }
        }
    }
    progress.rows.store(counts.rows, Ordering::Relaxed);
    if let UserIdSource::Property(name) = source
        && counts.rows > 0
        && counts.anonymous == counts.rows
    {
        return Err(ExportError::EmptyColumn {
            column: name.clone(),
            rows: counts.rows,
        });
    }

    let members = builder.finish();
    counts.members = members.len() as u64;
    Ok(Parsed { members, counts })
}

fn read_record<R: Read>(
    reader: &mut csv::Reader<R>,
    record: &mut csv::ByteRecord,
) -> Result<bool, ExportError> {
    reader.read_byte_record(record).map_err(|error| {
        let line = error.position().map_or(0, csv::Position::line);
        let message = error.to_string();
        match error.into_kind() {
            csv::ErrorKind::Io(io) => ExportError::Read(io),
            _ => ExportError::Csv { line, message },
        }
    })
}

/// Finds the id column by header name: `user_id`, `amplitude_id`, or a property
/// (also accepted with Amplitude's `gp:` prefix for custom user properties).
fn find_column(header: &csv::ByteRecord, source: &UserIdSource) -> Result<usize, ExportError> {
    let wanted = match source {
        UserIdSource::UserId => "user_id",
        UserIdSource::AmplitudeId => "amplitude_id",
        UserIdSource::Property(name) => name.as_str(),
    };
    let names: Vec<String> = header
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let name = if i == 0 {
                name.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(name)
            } else {
                name
            };
            String::from_utf8_lossy(name).trim().to_owned()
        })
        .collect();
    let exact = names.iter().position(|name| name == wanted);
    let prefixed = || {
        let is_property = matches!(source, UserIdSource::Property(_));
        names
            .iter()
            .position(|name| is_property && name.strip_prefix("gp:") == Some(wanted))
    };
    exact
        .or_else(prefixed)
        .ok_or_else(|| ExportError::MissingColumn {
            column: wanted.to_owned(),
            header: names.join(","),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::io::Write;

    fn parse_bytes(bytes: &[u8], source: &UserIdSource) -> Result<Parsed, ExportError> {
        parse(bytes, source, &Mapper::default(), &ParseProgress::default())
    }

    fn ids(parsed: &Parsed) -> Vec<String> {
        parsed
            .members
            .iter()
            .map(|id| String::from_utf8(id.to_vec()).unwrap())
            .collect()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    const SAMPLE: &str =
        "\"amplitude_id\",\"user_id\"\n\"1\",\"b\"\n\"2\",\"\"\n\"3\",\"a\"\n\"4\",\"b\"\n";

    #[test]
    fn plain_csv_counts_and_deduplicates() {
        let parsed = parse_bytes(SAMPLE.as_bytes(), &UserIdSource::UserId).unwrap();
        assert_eq!(ids(&parsed), ["a", "b"]);
        assert_eq!(parsed.counts.rows, 4);
        assert_eq!(parsed.counts.anonymous, 1);
        assert_eq!(parsed.counts.members, 2);
    }

    #[test]
    fn gzip_is_detected_by_magic_bytes() {
        let parsed = parse_bytes(&gzip(SAMPLE.as_bytes()), &UserIdSource::UserId).unwrap();
        assert_eq!(ids(&parsed), ["a", "b"]);
    }

    #[test]
    fn bom_crlf_and_quoted_newlines() {
        let text = "\u{feff}\"amplitude_id\",\"user_id\"\r\n\"1\",\"x\r\ny\"\r\n\"2\",\"say \"\"hi\"\"\"\r\n";
        let parsed = parse_bytes(text.as_bytes(), &UserIdSource::UserId).unwrap();
        assert_eq!(ids(&parsed), ["say \"hi\"", "x\r\ny"]);
        let by_amplitude = parse_bytes(text.as_bytes(), &UserIdSource::AmplitudeId).unwrap();
        assert_eq!(ids(&by_amplitude), ["1", "2"]);
    }

    #[test]
    fn property_column_by_name_or_gp_prefix() {
        let text = "amplitude_id,user_id,gp:email,plan\n1,u1,a@x,pro\n2,,b@x,free\n";
        let email = UserIdSource::Property("email".into());
        assert_eq!(
            ids(&parse_bytes(text.as_bytes(), &email).unwrap()),
            ["a@x", "b@x"]
        );
        let plan = UserIdSource::Property("plan".into());
        assert_eq!(
            ids(&parse_bytes(text.as_bytes(), &plan).unwrap()),
            ["free", "pro"]
        );
    }

    #[test]
    fn missing_column_names_it() {
        let error = parse_bytes(b"amplitude_id\n1\n", &UserIdSource::UserId).unwrap_err();
        assert!(error.to_string().contains("`user_id`"), "{error}");
        assert!(!error.is_transient());
    }

    #[test]
    fn a_property_column_empty_in_every_row_is_an_error() {
        let text = "amplitude_id,user_id,nope\n1,u1,\n2,u2,\n";
        let nope = UserIdSource::Property("nope".into());
        let error = parse_bytes(text.as_bytes(), &nope).unwrap_err();
        assert!(
            matches!(error, ExportError::EmptyColumn { rows: 2, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("`nope`"), "{error}");
        assert!(error.is_column_error() && !error.is_transient());

        // Empty user ids are anonymous members, not a misconfiguration.
        let anonymous = parse_bytes(b"amplitude_id,user_id\n1,\n", &UserIdSource::UserId);
        assert_eq!(anonymous.unwrap().counts.anonymous, 1);
        let some = "amplitude_id,user_id,nope\n1,u1,\n2,u2,x\n";
        assert_eq!(ids(&parse_bytes(some.as_bytes(), &nope).unwrap()), ["x"]);
    }

    #[test]
    fn empty_and_header_only() {
        assert!(matches!(
            parse_bytes(b"", &UserIdSource::UserId),
            Err(ExportError::Empty)
        ));
        let parsed = parse_bytes(b"amplitude_id,user_id\n", &UserIdSource::UserId).unwrap();
        assert_eq!(parsed.counts.rows, 0);
        assert!(parsed.members.is_empty());
    }

    #[test]
    fn truncated_gzip_is_a_read_error() {
        let big: String = (0..20_000)
            .map(|i| format!("\"{i}\",\"user-{i}\"\n"))
            .collect();
        let mut compressed = gzip(format!("amplitude_id,user_id\n{big}").as_bytes());
        compressed.truncate(compressed.len() / 2);
        let error = parse_bytes(&compressed, &UserIdSource::UserId).unwrap_err();
        assert!(error.is_transient(), "{error}");
    }

    #[test]
    fn invalid_utf8_and_extra_columns_are_counted_not_fatal() {
        let mut bytes = b"amplitude_id,user_id,extra\n1,ok,x\n2,".to_vec();
        bytes.extend_from_slice(b"\xff\xfe,y\n");
        let parsed = parse_bytes(&bytes, &UserIdSource::UserId).unwrap();
        assert_eq!(ids(&parsed), ["ok"]);
        assert_eq!(parsed.counts.invalid, 1);
    }

    #[test]
    fn ragged_rows_name_the_line() {
        let error =
            parse_bytes(b"amplitude_id,user_id\n1,a\n2\n", &UserIdSource::UserId).unwrap_err();
        assert!(matches!(error, ExportError::Csv { line: 3, .. }), "{error}");
    }

    /// Deterministic arbitrary inputs for the property tests below.
    struct Inputs {
        rng: fastrand::Rng,
    }

    /// Bytes that matter to a CSV reader, gzip and UTF-8, drawn more often than others.
    const SPECIAL: &[u8] = b"\",\r\n\0\xef\xbb\xbf\xff\x1f\x8b \t;";

    impl Inputs {
        fn byte(&mut self) -> u8 {
            if self.rng.bool() {
                SPECIAL[self.rng.usize(..SPECIAL.len())]
            } else {
                self.rng.u8(..)
            }
        }

        /// Random bytes of a random length.
        fn bytes(&mut self, max: usize) -> Vec<u8> {
            let len = self.rng.usize(..=max);
            (0..len).map(|_| self.byte()).collect()
        }

        /// `seed` with a few random flips, insertions, deletions and a possible cut.
        fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
            let mut out = seed.to_vec();
            for _ in 0..self.rng.usize(1..8) {
                let at = self.rng.usize(..=out.len());
                match self.rng.u8(..4) {
                    0 if at < out.len() => out[at] = self.byte(),
                    1 => out.insert(at, self.byte()),
                    2 if at < out.len() => {
                        out.remove(at);
                    }
                    _ => out.truncate(at),
                }
            }
            out
        }

        /// A valid export of random ids, in one of the shapes Amplitude may send.
        fn export(&mut self) -> (Vec<u8>, BTreeSet<Vec<u8>>) {
            let mut ids = BTreeSet::new();
            let mut writer = csv::WriterBuilder::new()
                .terminator(if self.rng.bool() {
                    csv::Terminator::CRLF
                } else {
                    csv::Terminator::Any(b'\n')
                })
                .quote_style(if self.rng.bool() {
                    csv::QuoteStyle::Always
                } else {
                    csv::QuoteStyle::Necessary
                })
                .from_writer(Vec::new());
            writer
                .write_record(["amplitude_id", "user_id", "extra"])
                .unwrap();
            for row in 0..self.rng.usize(..60) {
                let len = self.rng.usize(1..40);
                let id: String = (0..len)
                    .map(|_| match self.rng.u8(..6) {
                        0 => ['"', ',', '\r', '\n', 'é', '\u{1F600}'][self.rng.usize(..6)],
                        _ => self.rng.alphanumeric(),
                    })
                    .collect();
                writer
                    .write_record([row.to_string().as_str(), id.as_str(), "x"])
                    .unwrap();
                ids.insert(id.into_bytes());
            }
            let mut bytes = writer.into_inner().unwrap();
            if self.rng.bool() {
                bytes.splice(0..0, b"\xef\xbb\xbf".iter().copied());
            }
            if self.rng.bool() {
                bytes = gzip(&bytes);
            }
            (bytes, ids)
        }
    }

    fn sources() -> [UserIdSource; 3] {
        [
            UserIdSource::UserId,
            UserIdSource::AmplitudeId,
            UserIdSource::Property("email".into()),
        ]
    }

    /// Parses `bytes` with every source and two mappers; a panic names the input.
    fn parse_never_panics(bytes: &[u8]) {
        let transform = crate::config::Transform {
            trim: true,
            lowercase: true,
            strip_prefix: Some("\"".into()),
            add_prefix: Some("p:".into()),
        };
        let mappers = [Mapper::default(), Mapper::new(transform, None)];
        for source in sources() {
            for mapper in &mappers {
                let run = || parse(bytes, &source, mapper, &ParseProgress::default());
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run));
                let Ok(result) = result else {
                    panic!("parse panicked on {:?}", bytes.escape_ascii().to_string());
                };
                if let Ok(parsed) = result {
                    let c = parsed.counts;
                    assert!(c.anonymous + c.unmapped + c.invalid + c.members <= c.rows);
                    assert_eq!(c.members, parsed.members.len() as u64);
                    let all: Vec<&[u8]> = parsed.members.iter().collect();
                    assert!(all.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
                    assert!(all.iter().all(|id| std::str::from_utf8(id).is_ok()));
                }
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut inputs = Inputs {
            rng: fastrand::Rng::with_seed(0x5eed_0001),
        };
        for _ in 0..500 {
            let bytes = inputs.bytes(300);
            parse_never_panics(&bytes);
            let mut gzipped = gzip(&bytes);
            parse_never_panics(&gzipped);
            let cut = inputs.rng.usize(..=gzipped.len());
            gzipped.truncate(cut);
            parse_never_panics(&gzipped);
        }
    }

    #[test]
    fn mutated_exports_never_panic() {
        let mut inputs = Inputs {
            rng: fastrand::Rng::with_seed(0x5eed_0002),
        };
        for _ in 0..800 {
            let (export, _) = inputs.export();
            let mutated = inputs.mutate(&export);
            parse_never_panics(&mutated);
        }
    }

    #[test]
    fn valid_exports_round_trip_exactly() {
        let mut inputs = Inputs {
            rng: fastrand::Rng::with_seed(0x5eed_0003),
        };
        for _ in 0..500 {
            let (export, want) = inputs.export();
            let parsed = parse_bytes(&export, &UserIdSource::UserId)
                .unwrap_or_else(|e| panic!("{e}: {:?}", export.escape_ascii().to_string()));
            let got: BTreeSet<Vec<u8>> = parsed.members.iter().map(<[u8]>::to_vec).collect();
            assert_eq!(got, want, "{:?}", export.escape_ascii().to_string());
        }
    }
}
