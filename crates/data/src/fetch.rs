//! Downloading data files: resume from a partial file, verify SHA-256, replace a bad file.
//!
//! A file is written to `<path>.part` and renamed into place only once its SHA-256 matches the
//! manifest, so an interrupted fetch never leaves a file that looks complete. The next fetch resumes
//! the `.part` file with an HTTP range request (a server that ignores ranges sends the whole file,
//! which is fine too). A file in the cache whose hash is wrong is downloaded again.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::manifest::DataFile;

/// Where files are downloaded from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Source {
    /// Each file's public origin, as the manifest gives it.
    #[default]
    Origin,
    /// A mirror of the cache's layout: a file's URL is `<base>/<path>`.
    Mirror(String),
}

impl Source {
    /// The URL `file` is fetched from.
    pub fn url(&self, file: &DataFile) -> String {
        match self {
            Source::Origin => file.url.clone(),
            Source::Mirror(base) => format!("{}/{}", base.trim_end_matches('/'), file.path),
        }
    }
}

/// How to fetch.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Where from.
    pub source: Source,
    /// How many times a file whose download does not verify is downloaded again from scratch.
    pub retries: u32,
    /// The longest a single request may take.
    pub timeout: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            source: Source::Origin,
            retries: 1,
            timeout: Duration::from_secs(600),
        }
    }
}

/// What happened to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    /// It was in the cache and verified; nothing was downloaded.
    AlreadyValid,
    /// It was downloaded whole.
    Downloaded,
    /// A partial download was continued from this many bytes.
    Resumed {
        /// Bytes already on disk when the fetch started.
        from: u64,
    },
    /// The cached copy failed verification and was downloaded again.
    Replaced,
}

/// Progress reported while fetching.
#[derive(Debug, Clone, Copy)]
pub enum FetchEvent<'a> {
    /// A download of `file` starts at byte `offset`.
    Started {
        /// The file.
        file: &'a DataFile,
        /// Where the download starts.
        offset: u64,
    },
    /// `done` of the file's bytes are on disk.
    Progress {
        /// The file.
        file: &'a DataFile,
        /// Bytes on disk.
        done: u64,
    },
    /// The file is in place and verified.
    Finished {
        /// The file.
        file: &'a DataFile,
        /// What was done.
        outcome: FetchOutcome,
    },
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The request failed (connection, TLS, timeout).
    #[error("GET {url}: {message}")]
    Http {
        /// The URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// The server answered with an error status.
    #[error("GET {url}: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// A local file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The downloaded file is not the one the manifest records.
    #[error("{}: downloaded from {url}, but its SHA-256 is {actual}, not {expected} (tried {attempts} times); the origin may have changed or a proxy altered it", path.display())]
    Checksum {
        /// The file.
        path: PathBuf,
        /// Where it came from.
        url: String,
        /// The manifest's hash.
        expected: String,
        /// The downloaded file's hash.
        actual: String,
        /// How many downloads were tried.
        attempts: u32,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The HTTP client every download of the project uses: certificates checked against the
/// platform's trust store (as pip and curl do, so that a proxy's or company's root the system
/// trusts is trusted too), at most `timeout` per request; with `status_as_error`, an HTTP error
/// status is an error rather than a response.
pub fn http_agent(timeout: Option<Duration>, status_as_error: bool) -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_global(timeout)
        .http_status_as_error(status_as_error)
        .build()
        .into()
}

/// The SHA-256 of a file, lower-case hex.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher)?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// Whether `path` holds exactly `file`'s bytes.
pub fn is_valid(path: &Path, file: &DataFile) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.len() == file.bytes)
        && sha256_file(path).is_ok_and(|hash| hash == file.sha256)
}

/// Fetches `files` into the cache at `dir`, reporting progress to `on_event`.
pub fn fetch<'a>(
    files: &[&'a DataFile],
    dir: &Path,
    options: &FetchOptions,
    on_event: &mut dyn FnMut(FetchEvent<'a>),
) -> Result<Vec<(&'a DataFile, FetchOutcome)>, FetchError> {
    let agent = http_agent(Some(options.timeout), false);
    files
        .iter()
        .map(|file| {
            let outcome = fetch_one(&agent, file, dir, options, on_event)?;
            on_event(FetchEvent::Finished { file, outcome });
            Ok((*file, outcome))
        })
        .collect()
}

fn fetch_one<'a>(
    agent: &ureq::Agent,
    file: &'a DataFile,
    dir: &Path,
    options: &FetchOptions,
    on_event: &mut dyn FnMut(FetchEvent<'a>),
) -> Result<FetchOutcome, FetchError> {
    let target = dir.join(&file.path);
    let partial = PathBuf::from(format!("{}.part", target.display()));
    let mut replaced = false;
    if target.exists() {
        if is_valid(&target, file) {
            return Ok(FetchOutcome::AlreadyValid);
        }
        fs::remove_file(&target).map_err(io_error(&target))?;
        replaced = true;
    }
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(io_error(parent))?;
    }

    let url = options.source.url(file);
    let mut resumed_from = None;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let on_disk = fs::metadata(&partial).map_or(0, |meta| meta.len());
        let offset = if on_disk > file.bytes {
            fs::remove_file(&partial).map_err(io_error(&partial))?;
            0
        } else {
            on_disk
        };
        on_event(FetchEvent::Started { file, offset });
        let started_at = download(agent, &url, &partial, offset, file, on_event)?;
        if started_at > 0 && resumed_from.is_none() {
            resumed_from = Some(started_at);
        }
        let actual = sha256_file(&partial).map_err(io_error(&partial))?;
        if actual == file.sha256 {
            fs::rename(&partial, &target).map_err(io_error(&target))?;
            return Ok(match (replaced, resumed_from) {
                (true, _) => FetchOutcome::Replaced,
                (false, Some(from)) => FetchOutcome::Resumed { from },
                (false, None) => FetchOutcome::Downloaded,
            });
        }
        // A bad download (or a stale partial file) is discarded whole, then tried again.
        fs::remove_file(&partial).map_err(io_error(&partial))?;
        if attempts > options.retries {
            return Err(FetchError::Checksum {
                path: target,
                url,
                expected: file.sha256.clone(),
                actual,
                attempts,
            });
        }
    }
}

/// Downloads `url` into `partial`, continuing from `offset` when the server honours ranges.
/// Returns the offset the download really continued from.
fn download<'a>(
    agent: &ureq::Agent,
    url: &str,
    partial: &Path,
    offset: u64,
    file: &'a DataFile,
    on_event: &mut dyn FnMut(FetchEvent<'a>),
) -> Result<u64, FetchError> {
    let http_error = |error: ureq::Error| FetchError::Http {
        url: url.to_string(),
        message: error.to_string(),
    };
    let mut request = agent.get(url);
    if offset > 0 {
        request = request.header("Range", format!("bytes={offset}-"));
    }
    let mut response = request.call().map_err(http_error)?;
    let status = response.status().as_u16();
    let start = match status {
        206 if content_range_start(&response) == Some(offset) => offset,
        206 => {
            // A range we did not ask for: start over without one.
            drop(response);
            fs::remove_file(partial).map_err(io_error(partial))?;
            return download(agent, url, partial, 0, file, on_event);
        }
        200 => 0,
        416 if offset > 0 => {
            fs::remove_file(partial).map_err(io_error(partial))?;
            return download(agent, url, partial, 0, file, on_event);
        }
        _ => {
            return Err(FetchError::Status {
                url: url.to_string(),
                status,
            })
        }
    };
    let mut out = OpenOptions::new()
        .create(true)
        .write(true)
        .append(start > 0)
        .truncate(start == 0)
        .open(partial)
        .map_err(io_error(partial))?;
    let mut reader = response.body_mut().with_config().limit(u64::MAX).reader();
    let mut buffer = vec![0u8; 1 << 16];
    let mut done = start;
    loop {
        let read = reader.read(&mut buffer).map_err(|e| FetchError::Http {
            url: url.to_string(),
            message: e.to_string(),
        })?;
        if read == 0 {
            break;
        }
        out.write_all(&buffer[..read]).map_err(io_error(partial))?;
        done += read as u64;
        on_event(FetchEvent::Progress { file, done });
    }
    out.flush().map_err(io_error(partial))?;
    Ok(start)
}

/// The first byte of a `Content-Range: bytes START-END/TOTAL` header.
fn content_range_start(response: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    let value = response.headers().get("content-range")?.to_str().ok()?;
    let range = value.strip_prefix("bytes ")?;
    range.split('-').next()?.trim().parse().ok()
}
