//! Configuration: read the YAML file, lay the command line and environment over it, check
//! everything, and hand out a `Config` that cannot hold a bad value.
//!
//! - `raw`: serde types mirroring the file, unknown keys refused.
//! - `units`: durations and sizes with units.
//! - `yaml`: the YAML library, behind one function.
//! - `validate`: defaults, merging routes over `defaults`, range checks.
//! - `types`: the validated result the rest of the crate reads.
//! - `path`: the normal form of request paths that route matching compares.
//! - `memory`: the memory a config may hold, for `outrigger check`.
//!
//! Precedence is flag > environment > file > built-in default. Clap already folds flags over
//! environment variables, so this module only sees "what the command line said" as
//! [`Overrides`] and lays it over the file.

pub mod client_cert;
pub mod concurrency;
pub mod grpc;
pub mod hedge;
pub mod memory;
pub mod path;
pub mod raw;
mod reach;
pub mod shared;
pub mod tracing;
pub mod types;
pub mod units;
pub mod validate;
pub mod yaml;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use types::*;
pub use validate::upstream_url;

/// Settings given on the command line or in the environment; they win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub upstream: Option<String>,
    pub worker_threads: Option<usize>,
}

/// A configuration problem, printed as `PATH:LINE:COLUMN: field.path: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, when there is one.
    pub file: Option<PathBuf>,
    /// One-based line and column, when the parser knows them.
    pub location: Option<(usize, usize)>,
    /// Where in the document, e.g. `routes[2].retry.attempts`; empty for the whole file.
    pub field: String,
    pub message: String,
}

impl ConfigError {
    /// An error about one field, position unknown.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: None,
            location: None,
            field: field.into(),
            message: message.into(),
        }
    }

    fn at(mut self, location: Option<(usize, usize)>) -> Self {
        self.location = location;
        self
    }

    fn in_file(mut self, file: Option<&Path>) -> Self {
        self.file = file.map(Path::to_path_buf);
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.location) {
            (Some(file), Some((line, col))) => write!(f, "{}:{line}:{col}: ", file.display())?,
            (Some(file), None) => write!(f, "{}: ", file.display())?,
            (None, _) => f.write_str("config: ")?,
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Loads and validates a configuration from an optional file plus overrides.
pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
    let text = match file {
        Some(path) => read_bounded(path).map_err(|e| e.in_file(file))?,
        None => String::new(),
    };
    from_text(&text, file, overrides)
}

/// Reads at most [`yaml::MAX_FILE_BYTES`] (plus one, to tell "too large"), so that a huge
/// file or `/dev/zero` fails at once instead of filling memory.
fn read_bounded(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let unreadable =
        |e: std::io::Error| ConfigError::new("", format!("cannot read the config file: {e}"));
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let mut text = String::new();
    file.take(yaml::MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(unreadable)?;
    if text.len() as u64 > yaml::MAX_FILE_BYTES {
        return Err(yaml::too_large());
    }
    Ok(text)
}

/// Validates configuration text as if it had been read from `file`.
pub fn from_text(
    text: &str,
    file: Option<&Path>,
    overrides: &Overrides,
) -> Result<Config, ConfigError> {
    let mut raw: raw::RawConfig = yaml::parse(text).map_err(|e| e.in_file(file))?;
    if let Some(addr) = overrides.listen {
        raw.listen = Some(raw::Addr(addr));
    }
    if let Some(addr) = overrides.admin_listen {
        raw.admin_listen = Some(raw::Addr(addr));
    }
    if let Some(url) = &overrides.upstream {
        raw.upstream.get_or_insert_with(Default::default).url = Some(url.clone());
    }
    if let Some(n) = overrides.worker_threads {
        raw.worker_threads = Some(n);
    }
    let dir = file
        .and_then(Path::parent)
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let mut config = validate::validate(raw, &dir).map_err(|e| e.in_file(file))?;
    config.source = file.map(Path::to_path_buf);
    if config.worker_threads == 0 {
        config.worker_threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    }
    Ok(config)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_half_work;
