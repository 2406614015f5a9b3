//! Getting a complete export of one cohort: reuse or start a request, wait, download
//! and parse it, retrying the download (with the same request id) when it breaks.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::TryStreamExt;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::amplitude::{AmplitudeClient, AmplitudeError};
use crate::config::UserIdSource;
use crate::export::{self, ExportError, ParseProgress, Parsed};
use crate::mapping::Mapper;
use crate::retry;

/// Why an export could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Amplitude refused or failed.
    #[error(transparent)]
    Amplitude(#[from] AmplitudeError),
    /// The file could not be parsed.
    #[error(transparent)]
    Export(#[from] ExportError),
}

/// Downloads and parses a completed export, trying again (same request id, fresh
/// link) when the stream breaks, up to `attempts` times.
///
/// # Errors
///
/// The last failure when every attempt failed, or the first permanent one.
pub async fn download_and_parse(
    client: &AmplitudeClient,
    request_id: &str,
    source: Arc<UserIdSource>,
    mapper: Arc<Mapper>,
    progress: Arc<ParseProgress>,
    attempts: u32,
) -> Result<Parsed, FetchError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = download_once(client, request_id, &source, &mapper, &progress).await;
        match result {
            Err(FetchError::Export(error)) if error.is_transient() && attempt < attempts => {
                tracing::warn!(request_id, attempt, %error, "Export download broke; downloading again.");
                progress.bytes.store(0, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
            }
            other => return other,
        }
    }
}

async fn download_once(
    client: &AmplitudeClient,
    request_id: &str,
    source: &Arc<UserIdSource>,
    mapper: &Arc<Mapper>,
    progress: &Arc<ParseProgress>,
) -> Result<Parsed, FetchError> {
    let response = client.download(request_id).await?;
    let stream = response
        .bytes_stream()
        .map_err(|error| std::io::Error::other(retry::describe_transport(&error.without_url())));
    let reader = SyncIoBridge::new(StreamReader::new(stream));

    let (source, mapper, progress) = (source.clone(), mapper.clone(), progress.clone());
    let parsed =
        tokio::task::spawn_blocking(move || export::parse(reader, &source, &mapper, &progress))
            .await
            .map_err(|join| ExportError::Read(std::io::Error::other(join.to_string())))??;
    Ok(parsed)
}
