//! Property tests of the loader: arbitrary TOML-ish text and environments never panic,
//! and every error can be shown.

use std::collections::HashMap;

use super::{FULL, Fixture, load};

const EXAMPLE: &str = include_str!("../../../config/cohort-sync.example.toml");

/// Fragments a mutation may insert: TOML punctuation, keys, odd values, wide characters.
const FRAGMENTS: &[&str] = &[
    "[",
    "]",
    "[[",
    "]]",
    "=",
    "\"",
    "'",
    "'''",
    "\"\"\"",
    ".",
    ",",
    "#",
    "\n",
    "\r\n",
    "\\",
    "\\u",
    "{",
    "}",
    " ",
    "\t",
    "é",
    "\u{1F600}",
    "\u{feff}",
    "\0",
    "0",
    "-1",
    "1e999",
    "99999999999999999999",
    "true",
    "nan",
    "inf",
    "1979-05-27T07:32:00Z",
    "\"5s\"",
    "\"0s\"",
    "\"-5s\"",
    "\"1000000000000h\"",
    "\"\"",
    "api_key",
    "secret_key",
    "cohorts",
    "amplitude",
    "oneflow",
    "state",
    "schedule",
    "timezone",
    "\"Mars/Olympus\"",
    "\"* * * * * * *\"",
    "amplitude_projects.x",
    "oneflow_accounts.y",
    "transform",
    "property:",
    "\"property:\"",
];

struct Gen {
    rng: fastrand::Rng,
}

impl Gen {
    fn fragment(&mut self) -> &'static str {
        FRAGMENTS[self.rng.usize(..FRAGMENTS.len())]
    }

    /// `seed` with random line edits and random fragments spliced in at char boundaries.
    fn mutate(&mut self, seed: &str) -> String {
        let mut lines: Vec<String> = seed.lines().map(str::to_owned).collect();
        for _ in 0..self.rng.usize(1..6) {
            if lines.is_empty() {
                break;
            }
            let at = self.rng.usize(..lines.len());
            match self.rng.u8(..4) {
                0 => {
                    lines.remove(at);
                }
                1 => lines.insert(at, lines[at].clone()),
                2 => {
                    let other = self.rng.usize(..lines.len());
                    lines.swap(at, other);
                }
                _ => {
                    let line = &lines[at];
                    let key = line.split('=').next().unwrap_or("").to_owned();
                    lines[at] = format!("{key}= {}", self.fragment());
                }
            }
        }
        let mut text = lines.join("\n");
        for _ in 0..self.rng.usize(..6) {
            let boundaries: Vec<usize> = text
                .char_indices()
                .map(|(i, _)| i)
                .chain([text.len()])
                .collect();
            let at = boundaries[self.rng.usize(..boundaries.len())];
            text.insert_str(at, self.fragment());
        }
        text
    }

    /// `seed` with the values of a few `key = value` lines replaced by well-formed TOML
    /// of any type, so the text parses and the values reach validation.
    fn revalue(&mut self, seed: &str) -> String {
        const VALUES: &[&str] = &[
            "\"x\"",
            "\"\"",
            "0",
            "-1",
            "1.5",
            "-0.0",
            "true",
            "[]",
            "{}",
            "[1, \"a\"]",
            "\"5s\"",
            "\"0s\"",
            "\"-1s\"",
            "\"1000000000000h\"",
            "\"bogus\"",
            "\"eu\"",
            "\"Mars/Olympus\"",
            "\"property:\"",
            "\"property:é\"",
            "\"amplitude_id\"",
            "99999999999999999999",
            "18446744073709551615",
            "4294967296",
            "1e308",
            "\"0.0.0.0:99999\"",
            "\"* * * *\"",
            "\"every 0m\"",
            "\"hourly\"",
            "\"::\"",
            "1979-05-27T07:32:00Z",
            "\"\u{1F600}\"",
            "\"postgres://u:p@h/db\"",
        ];
        let mut lines: Vec<String> = seed.lines().map(str::to_owned).collect();
        let values: Vec<usize> = (0..lines.len())
            .filter(|&i| !lines[i].trim_start().starts_with('#') && lines[i].contains('='))
            .collect();
        for _ in 0..self.rng.usize(1..4) {
            if let Some(&at) = values.get(self.rng.usize(..values.len().max(1))) {
                let key = lines[at].split('=').next().unwrap_or("").to_owned();
                lines[at] = format!("{key}= {}", VALUES[self.rng.usize(..VALUES.len())]);
            }
        }
        lines.join("\n")
    }

    /// Pure noise of fragments.
    fn noise(&mut self) -> String {
        (0..self.rng.usize(..80)).map(|_| self.fragment()).collect()
    }

    /// A few `COHORT_SYNC__...` variables with odd names and values.
    fn env(&mut self) -> HashMap<String, String> {
        const SEGMENTS: &[&str] = &[
            "AMPLITUDE",
            "ONEFLOW",
            "STATE",
            "LOG",
            "COHORTS",
            "AMPLITUDE_PROJECTS",
            "X",
            "API_KEY",
            "SECRET_KEY",
            "BATCH_SIZE",
            "URL",
            "PATH",
            "",
            "0",
            "LEVEL",
        ];
        let mut env = HashMap::new();
        for _ in 0..self.rng.usize(..4) {
            let depth = self.rng.usize(1..5);
            let name: Vec<&str> = (0..depth)
                .map(|_| SEGMENTS[self.rng.usize(..SEGMENTS.len())])
                .collect();
            let value = self.fragment().to_owned();
            env.insert(format!("COHORT_SYNC__{}", name.join("__")), value);
        }
        env
    }
}

/// Loads `text` with `env`; a panic names the input. Errors must display.
fn load_never_panics(fixture: &Fixture, text: &str, env: &HashMap<String, String>) {
    let path = fixture.write("fuzz.toml", text);
    let run = || load(&path, env).map(|config| format!("{config:?}"));
    match std::panic::catch_unwind(run) {
        Err(_) => panic!("load panicked on {text:?} with {env:?}"),
        Ok(Err(error)) => {
            let shown = format!("{error} {error:?}");
            assert!(!shown.trim().is_empty());
        }
        Ok(Ok(_)) => {}
    }
}

#[test]
fn mutated_configs_never_panic() {
    let fixture = Fixture::new();
    let mut inputs = Gen {
        rng: fastrand::Rng::with_seed(0xc0f1_0001),
    };
    let minimal = "[amplitude]\napi_key = \"k\"\nsecret_key = \"s\"\n[oneflow]\napi_key = \"o\"\n\
                   [state]\npath = \"s.db\"\n[[cohorts]]\namplitude_id = \"a\"\nschedule = \"daily\"\n";
    for i in 0..1_200 {
        let seed = [FULL, EXAMPLE, minimal][i % 3];
        let text = if i % 2 == 0 {
            inputs.revalue(seed)
        } else {
            inputs.mutate(seed)
        };
        let mut env = if inputs.rng.bool() {
            inputs.env()
        } else {
            HashMap::new()
        };
        if seed == EXAMPLE {
            // The example leaves its secrets to the environment.
            for name in [
                "AMPLITUDE__API_KEY",
                "AMPLITUDE__SECRET_KEY",
                "ONEFLOW__API_KEY",
            ] {
                env.entry(format!("COHORT_SYNC__{name}"))
                    .or_insert_with(|| "fuzz-secret".into());
            }
        }
        load_never_panics(&fixture, &text, &env);
    }
}

#[test]
fn noise_and_deep_nesting_never_panic() {
    let fixture = Fixture::new();
    let mut inputs = Gen {
        rng: fastrand::Rng::with_seed(0xc0f1_0002),
    };
    for _ in 0..1_000 {
        let text = inputs.noise();
        let env = inputs.env();
        load_never_panics(&fixture, &text, &env);
    }
    let empty = HashMap::new();
    for depth in [100, 10_000] {
        load_never_panics(&fixture, &format!("x = {}", "[".repeat(depth)), &empty);
        load_never_panics(&fixture, &format!("x = {}", "{a=".repeat(depth)), &empty);
        load_never_panics(&fixture, &"[a]\n".repeat(depth), &empty);
    }
}
