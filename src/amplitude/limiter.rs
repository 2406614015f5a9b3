//! The shared limit on calls to one Amplitude project.
//!
//! Amplitude allows a handful of concurrent requests per project and 60 export
//! requests per 10 minutes. Every cohort of a project shares one [`Limiter`], so the
//! daemon as a whole stays under both, however many cohorts fire at once.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// Calls in flight at once, across all cohorts of a project.
pub const MAX_IN_FLIGHT: usize = 4;
/// Export requests allowed in any [`EXPORT_WINDOW`].
pub const MAX_EXPORTS_PER_WINDOW: usize = 60;
/// The sliding window for export requests.
pub const EXPORT_WINDOW: Duration = Duration::from_secs(600);

/// Bounds concurrent calls and the rate of export requests for one project.
#[derive(Debug)]
pub struct Limiter {
    in_flight: Semaphore,
    exports: Mutex<VecDeque<Instant>>,
    max_exports: usize,
    window: Duration,
}

impl Default for Limiter {
    fn default() -> Limiter {
        Limiter::new(MAX_IN_FLIGHT, MAX_EXPORTS_PER_WINDOW, EXPORT_WINDOW)
    }
}

impl Limiter {
    /// A limiter with explicit bounds.
    pub fn new(in_flight: usize, max_exports: usize, window: Duration) -> Limiter {
        Limiter {
            in_flight: Semaphore::new(in_flight.max(1)),
            exports: Mutex::new(VecDeque::new()),
            max_exports: max_exports.max(1),
            window,
        }
    }

    /// Waits for a slot for one call; the slot frees when the permit drops.
    pub async fn call(&self) -> SemaphorePermit<'_> {
        self.in_flight
            .acquire()
            .await
            .expect("the limiter's semaphore is never closed")
    }

    /// Waits until one more export request fits in the window, and records it.
    pub async fn export(&self) {
        loop {
            let wait = {
                let mut starts = self.exports.lock().expect("limiter lock");
                let now = Instant::now();
                while starts
                    .front()
                    .is_some_and(|&t| now.duration_since(t) >= self.window)
                {
                    starts.pop_front();
                }
                if starts.len() < self.max_exports {
                    starts.push_back(now);
                    return;
                }
                self.window - now.duration_since(starts[0])
            };
            tracing::warn!(
                wait_secs = wait.as_secs(),
                "Export request rate limit reached; waiting."
            );
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn export_requests_wait_for_the_window() {
        let limiter = Limiter::new(4, 2, Duration::from_secs(600));
        let start = Instant::now();
        limiter.export().await;
        limiter.export().await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        limiter.export().await;
        assert!(start.elapsed() >= Duration::from_secs(600));
    }

    #[tokio::test]
    async fn calls_are_bounded() {
        let limiter = Limiter::new(2, 60, EXPORT_WINDOW);
        let a = limiter.call().await;
        let _b = limiter.call().await;
        assert!(limiter.in_flight.try_acquire().is_err());
        drop(a);
        assert!(limiter.in_flight.try_acquire().is_ok());
    }
}
