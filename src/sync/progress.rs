//! Progress of long phases: a bar on a terminal, a log line every 10 seconds elsewhere.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::export::ParseProgress;

/// How often a long phase logs its progress when no bar is shown.
const LOG_EVERY: Duration = Duration::from_secs(10);

static BARS: AtomicBool = AtomicBool::new(false);

/// Shows progress bars (on an interactive terminal) instead of periodic log lines.
pub fn enable_bars(enabled: bool) {
    BARS.store(enabled, Ordering::Relaxed);
}

/// Reports one phase until [`Reporter::finish`] is called.
pub struct Reporter {
    task: tokio::task::JoinHandle<()>,
    bar: Option<ProgressBar>,
}

impl Reporter {
    /// Stops reporting and clears the bar.
    pub fn finish(self) {
        self.task.abort();
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

fn spawn(
    bar: Option<ProgressBar>,
    tick: impl Fn(Option<&ProgressBar>) + Send + 'static,
) -> Reporter {
    let shown = bar.clone();
    let task = tokio::spawn(async move {
        let period = if shown.is_some() {
            Duration::from_millis(200)
        } else {
            LOG_EVERY
        };
        let mut interval = tokio::time::interval(period);
        interval.tick().await;
        loop {
            interval.tick().await;
            tick(shown.as_ref());
        }
    });
    Reporter { task, bar }
}

fn bar(template: &str, total: Option<u64>) -> Option<ProgressBar> {
    if !BARS.load(Ordering::Relaxed) {
        return None;
    }
    let bar = match total {
        Some(total) => ProgressBar::new(total),
        None => ProgressBar::new_spinner(),
    };
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    Some(bar)
}

/// Reports a download and parse: bytes received and rows parsed.
pub fn watch_download(label: &str, progress: Arc<ParseProgress>) -> Reporter {
    let label = label.to_owned();
    let shown = bar("{spinner} {msg}", None);
    spawn(shown, move |bar| {
        let bytes = progress.bytes.load(Ordering::Relaxed);
        let rows = progress.rows.load(Ordering::Relaxed);
        match bar {
            Some(bar) => {
                bar.set_message(format!(
                    "{label}: downloading, {:.1} MB, {rows} rows",
                    bytes as f64 / 1e6
                ));
                bar.tick();
            }
            None => tracing::info!(cohort = %label, bytes, rows, "Downloading the export."),
        }
    })
}

/// Reports a push: ids confirmed out of `total`.
pub fn watch_push(label: &str, total: u64, sent: Arc<AtomicU64>) -> Reporter {
    let label = label.to_owned();
    let shown = bar("{msg} [{bar:30}] {pos}/{len} ids ({per_sec})", Some(total));
    if let Some(bar) = &shown {
        bar.set_message(format!("{label}: pushing"));
    }
    spawn(shown, move |bar| {
        let done = sent.load(Ordering::Relaxed);
        match bar {
            Some(bar) => bar.set_position(done),
            None => tracing::info!(cohort = %label, sent = done, total, "Pushing to 1Flow."),
        }
    })
}
