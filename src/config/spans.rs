//! Where things are in the raw configuration file and the environment.
//!
//! The file is parsed once more, keeping byte spans, so an error about a key path such as
//! `cohorts[2].timezone` can give the line it is on; environment overrides are mapped back to
//! the variable that set them. Also collects secret values so messages can be scrubbed.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// The prefix of every environment override, including its separator.
pub const ENV_PREFIX: &str = "COHORT_SYNC__";

/// The separator between key segments in an environment variable name.
pub const ENV_SEPARATOR: &str = "__";

/// Leaf key names whose values are credentials.
const SECRET_KEYS: [&str; 2] = ["api_key", "secret_key"];

/// A TOML syntax error, located.
#[derive(Debug)]
pub struct SyntaxError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// The raw file: its text and a tree of keys with their spans.
pub struct Document {
    line_starts: Vec<usize>,
    root: Located,
}

/// A value and, when toml knows it, its byte span.
struct Located {
    span: Option<Range<usize>>,
    node: Node,
}

enum Node {
    Table(Vec<(String, Located)>),
    Array(Vec<Located>),
    Str(String),
    Other,
}

impl Document {
    /// Parses `text`, or says where its syntax is wrong.
    pub fn parse(text: &str) -> Result<Self, SyntaxError> {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(at, _)| at + 1))
            .collect();
        match toml::from_str::<Located>(text) {
            Ok(root) => Ok(Self { line_starts, root }),
            Err(err) => {
                let at = err.span().map_or(0, |span| span.start);
                let doc = Self {
                    line_starts,
                    root: Located {
                        span: None,
                        node: Node::Other,
                    },
                };
                let (line, column) = doc.line_column(text, at);
                Err(SyntaxError {
                    line,
                    column,
                    message: one_line(err.message()),
                })
            }
        }
    }

    /// The line (from 1) of the deepest part of `key` that the file spells out, if any.
    pub fn line_of(&self, key: &str) -> Option<usize> {
        let mut node = &self.root;
        let mut found = None;
        for segment in segments(key) {
            let next = match (segment, &node.node) {
                (Segment::Key(name), Node::Table(entries)) => {
                    entries.iter().find(|(k, _)| k == name).map(|(_, v)| v)
                }
                (Segment::Index(i), Node::Array(items)) => items.get(i),
                _ => None,
            };
            let Some(child) = next else { break };
            if let Some(span) = &child.span {
                found = Some(self.line(span.start));
            }
            node = child;
        }
        found
    }

    /// The string values of every `api_key` and `secret_key`, and passwords inside `url`s.
    pub fn secret_values(&self) -> Vec<String> {
        let mut out = Vec::new();
        collect_secrets(&self.root.node, None, &mut out);
        out
    }

    fn line(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&start| start <= offset)
    }

    fn line_column(&self, text: &str, at: usize) -> (usize, usize) {
        let line = self.line(at);
        let start = self.line_starts[line - 1];
        let column = text.get(start..at).map_or(1, |s| s.chars().count() + 1);
        (line, column)
    }
}

/// The parser's message, which may span lines, as one line.
fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines.join("; ")
}

fn collect_secrets(node: &Node, key: Option<&str>, out: &mut Vec<String>) {
    match node {
        Node::Table(entries) => {
            for (k, v) in entries {
                collect_secrets(&v.node, Some(k), out);
            }
        }
        Node::Array(items) => items
            .iter()
            .for_each(|v| collect_secrets(&v.node, key, out)),
        Node::Str(value) => match key {
            Some(k) if SECRET_KEYS.contains(&k) => out.push(value.clone()),
            Some("url") => out.extend(url_password(value).map(str::to_owned)),
            _ => {}
        },
        Node::Other => {}
    }
}

/// The password part of `scheme://user:password@host/...`, if there is one.
pub fn url_password(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    let password = &userinfo[userinfo.find(':')? + 1..];
    (!password.is_empty()).then_some(password)
}

/// Environment overrides as the config crate sees them: dotted key path to variable name.
pub fn env_keys(env: &HashMap<String, String>) -> BTreeMap<String, String> {
    let prefix = ENV_PREFIX.to_lowercase();
    env.keys()
        .filter_map(|var| {
            let lower = var.to_lowercase();
            let rest = lower.strip_prefix(&prefix)?;
            Some((rest.replace(ENV_SEPARATOR, "."), var.clone()))
        })
        .collect()
}

/// Secret values given through the environment, so messages can be scrubbed of them.
pub fn env_secret_values(env: &HashMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for (key, var) in env_keys(env) {
        let Some(value) = env.get(&var) else { continue };
        let leaf = key.rsplit('.').next().unwrap_or_default();
        if SECRET_KEYS.contains(&leaf) {
            out.push(value.clone());
        } else if leaf == "url" {
            out.extend(url_password(value).map(str::to_owned));
        }
    }
    out
}

/// The variable that overrides `key`, e.g. `COHORT_SYNC__AMPLITUDE__SECRET_KEY`.
pub fn env_var_for(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.replace('.', ENV_SEPARATOR).to_uppercase()
    )
}

#[derive(Debug, PartialEq)]
enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// Splits `a.b[2].c` into `a`, `b`, `[2]`, `c`.
fn segments(key: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let (name, mut indexes) = part.split_once('[').map_or((part, ""), |(n, i)| (n, i));
        if !name.is_empty() {
            out.push(Segment::Key(name));
        }
        while let Some((index, rest)) = indexes.split_once(']') {
            out.extend(index.parse().ok().map(Segment::Index));
            indexes = rest.strip_prefix('[').unwrap_or(rest);
        }
    }
    out
}

// toml hands out spans through serde_spanned's protocol: a struct with these magic names
// becomes a map of start, end and value. Implicit tables (`a` in `[a.b]`) have no span and
// arrive as a plain map, which `toml::Spanned` cannot take, hence this tolerant version.
const SPANNED_NAME: &str = "$__serde_spanned_private_Spanned";
const SPANNED_START: &str = "$__serde_spanned_private_start";
const SPANNED_END: &str = "$__serde_spanned_private_end";
const SPANNED_VALUE: &str = "$__serde_spanned_private_value";
const SPANNED_FIELDS: &[&str] = &[SPANNED_START, SPANNED_END, SPANNED_VALUE];

impl<'de> Deserialize<'de> for Located {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_struct(SPANNED_NAME, SPANNED_FIELDS, LocatedVisitor)
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(LocatedVisitor)
            .map(|located| located.node)
    }
}

struct LocatedVisitor;

fn unspanned<E>(node: Node) -> Result<Located, E> {
    Ok(Located { span: None, node })
}

impl<'de> Visitor<'de> for LocatedVisitor {
    type Value = Located;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Located, E> {
        unspanned(Node::Other)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Located, E> {
        unspanned(Node::Other)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Located, E> {
        unspanned(Node::Other)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Located, E> {
        unspanned(Node::Other)
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Located, E> {
        unspanned(Node::Str(value.to_owned()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Located, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        unspanned(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Located, A::Error> {
        let Some(first) = map.next_key::<String>()? else {
            return unspanned(Node::Table(Vec::new()));
        };

        if first == SPANNED_START {
            let start: usize = map.next_value()?;
            let mut end = start;
            let mut node = Node::Other;
            while let Some(key) = map.next_key::<String>()? {
                match key.as_str() {
                    SPANNED_END => end = map.next_value()?,
                    SPANNED_VALUE => node = map.next_value()?,
                    _ => return Err(de::Error::unknown_field(&key, SPANNED_FIELDS)),
                }
            }
            return Ok(Located {
                span: Some(start..end),
                node,
            });
        }

        let mut entries = vec![(first, map.next_value()?)];
        while let Some(key) = map.next_key::<String>()? {
            entries.push((key, map.next_value()?));
        }
        unspanned(Node::Table(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
[amplitude]
api_key = \"k1\"

[amplitude_projects.mobile]
secret_key = \"k2\"

[[cohorts]]
amplitude_id = \"a\"

[[cohorts]]
amplitude_id = \"b\"
transform = { trim = true }

[[cohorts]]
[cohorts.transform]
lowercase = true
";

    #[test]
    fn finds_lines_of_key_paths() {
        let doc = Document::parse(TEXT).unwrap();
        assert_eq!(doc.line_of("amplitude.api_key"), Some(2));
        assert_eq!(doc.line_of("amplitude_projects.mobile"), Some(4));
        assert_eq!(doc.line_of("amplitude_projects.mobile.secret_key"), Some(5));
        assert_eq!(doc.line_of("cohorts[1].amplitude_id"), Some(11));
        assert_eq!(doc.line_of("cohorts[1].transform.trim"), Some(12));
        assert_eq!(doc.line_of("cohorts[1].transform"), Some(12));
        assert_eq!(doc.line_of("cohorts[2].transform"), Some(15));
        assert_eq!(doc.line_of("cohorts[2].transform.lowercase"), Some(16));
        // Missing leaf: the deepest ancestor the file has.
        assert_eq!(doc.line_of("amplitude.secret_key"), Some(1));
        assert_eq!(doc.line_of("server.listen"), None);
    }

    #[test]
    fn syntax_errors_have_line_and_column() {
        let err = Document::parse("[log]\nlevel = \"info\"\nformat = json\n")
            .err()
            .unwrap();
        assert_eq!((err.line, err.column), (3, 10), "{err:?}");
    }

    #[test]
    fn collects_secret_values() {
        let doc =
            Document::parse("[a]\napi_key = \"k1\"\n[state]\nurl = \"postgres://u:pw9@h/db\"")
                .unwrap();
        assert_eq!(doc.secret_values(), ["k1", "pw9"]);
    }

    #[test]
    fn splits_key_paths() {
        use Segment::*;
        assert_eq!(
            segments("a.b[2].c"),
            [Key("a"), Key("b"), Index(2), Key("c")]
        );
        assert_eq!(segments("x"), [Key("x")]);
    }

    #[test]
    fn maps_environment_variables() {
        let env = HashMap::from([
            (
                "COHORT_SYNC__AMPLITUDE_PROJECTS__MOBILE__SECRET_KEY".to_owned(),
                "s".to_owned(),
            ),
            ("COHORT_SYNC_CONFIG".to_owned(), "x".to_owned()),
        ]);
        let keys = env_keys(&env);
        assert_eq!(keys.len(), 1);
        assert!(keys.contains_key("amplitude_projects.mobile.secret_key"));
        assert_eq!(env_secret_values(&env), ["s"]);
        assert_eq!(
            env_var_for("amplitude.secret_key"),
            "COHORT_SYNC__AMPLITUDE__SECRET_KEY"
        );
    }

    #[test]
    fn extracts_url_passwords() {
        assert_eq!(url_password("postgres://user:pw@host:5432/db"), Some("pw"));
        assert_eq!(url_password("postgres://user@host/db"), None);
        assert_eq!(url_password("postgres://host/db"), None);
    }
}
