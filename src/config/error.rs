//! Config errors: one line each, naming file, line, key and what is wrong.

use std::fmt;
use std::path::{Path, PathBuf};

/// Why a config file was refused. `Display` is the single line the CLI prints, e.g.
/// `config/rtx.conf:12: [global] sip_svr: "10.0.0.1" is not IP:port`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{}: cannot read config file: {source}", file.display())]
    Read {
        /// The file as given.
        file: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but something in it is wrong.
    #[error("{}", Invalid { file, line: *line, key: key.as_deref(), message })]
    Invalid {
        /// The file as given.
        file: PathBuf,
        /// 1-based line, when the problem has one.
        line: Option<usize>,
        /// `[section] key`, when the problem is about a key.
        key: Option<String>,
        /// What is wrong.
        message: String,
    },
}

/// Formats the `file:line: key: message` line.
struct Invalid<'a> {
    file: &'a Path,
    line: Option<usize>,
    key: Option<&'a str>,
    message: &'a str,
}

impl fmt::Display for Invalid<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(": ")?;
        if let Some(key) = self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(self.message)
    }
}

impl ConfigError {
    /// 1-based line of the problem, if it has one.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Invalid { line, .. } => *line,
        }
    }

    /// `[section] key` the problem is about, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Invalid { key, .. } => key.as_deref(),
        }
    }

    /// The file the problem is in.
    pub fn file(&self) -> &Path {
        match self {
            ConfigError::Read { file, .. } | ConfigError::Invalid { file, .. } => file,
        }
    }
}
