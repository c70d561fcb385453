//! The process's `tracing` subscriber, built from `[log]`: SRProxy levels 0-5, a file with
//! size-based rotation (or stderr), a level that SIGHUP can change, and credential
//! redaction on every line at every level (see [`super::redact`]).
//!
//! Level 0 SENSITIVE is `trace`: SIP/SDP bodies and HTTP headers are logged there, so the
//! redacting writer is what keeps `Authorization:` values and tokens out of the file.
//! `RUST_LOG`, when set, overrides the configured level (at start and on reload).
//! Output has no ANSI colour codes, so the redactor always sees plain `key=value` text.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::{LogConfig, LogLevel};

use super::redact::redact;

/// Why logging could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log file (or its directory) cannot be created or opened.
    #[error("cannot open log file {}: {source}", path.display())]
    Open {
        /// The configured `[log] file`.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The reloadable filter is gone (the subscriber was dropped).
    #[error("cannot change the log level: {0}")]
    Reload(String),
}

/// Where formatted, redacted lines end up.
type Sink = Arc<Mutex<Box<dyn Write + Send>>>;

/// A `MakeWriter` whose writers collect one event and write it redacted, in one piece,
/// when dropped (the fmt layer formats each event into one buffer and writes it once).
#[derive(Clone)]
pub struct RedactingWriter {
    sink: Sink,
}

impl RedactingWriter {
    /// Redacting writer over any sink (tests use a `Vec`, the bridge a file or stderr).
    pub fn new(sink: Box<dyn Write + Send>) -> Self {
        RedactingWriter {
            sink: Arc::new(Mutex::new(sink)),
        }
    }
}

/// One event being formatted.
pub struct EventWriter {
    buf: Vec<u8>,
    sink: Sink,
}

impl Write for EventWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.buf);
        let clean = redact(&text);
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        // A full disk or closed stderr must not take the bridge down: drop the line.
        let _ = sink.write_all(clean.as_bytes());
        let _ = sink.flush();
    }
}

impl<'a> MakeWriter<'a> for RedactingWriter {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> EventWriter {
        EventWriter {
            buf: Vec::with_capacity(256),
            sink: self.sink.clone(),
        }
    }
}

/// Opens `[log] file` for appending with rotation at `max_file_size` MB, keeping
/// `max_files` old files (`file.1` newest). Fails now, with the path, rather than
/// silently logging nowhere.
pub fn open_log_file(config: &LogConfig, path: &Path) -> Result<Box<dyn Write + Send>, LogError> {
    let open_err = |source| LogError::Open {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(open_err)?;
    }
    // Probe: FileRotate would otherwise swallow an open error and drop every line.
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(open_err)?;
    let limit = match usize::try_from(config.max_file_size_mb.saturating_mul(1024 * 1024)) {
        Ok(0) => ContentLimit::None,
        Ok(bytes) => ContentLimit::BytesSurpassed(bytes),
        Err(_) => ContentLimit::None,
    };
    let mut options = OpenOptions::new();
    options.read(true).create(true).append(true);
    Ok(Box::new(FileRotate::new(
        path,
        AppendCount::new(config.max_files.max(1)),
        limit,
        Compression::None,
        Some(options),
    )))
}

/// Crates whose debug/trace lines print network payloads (tungstenite: every WebSocket frame as
/// `payload: 0x7b22…`, i.e. login tokens and SDP with ICE passwords). Held at WARN at every
/// `[log] level` and under `RUST_LOG` too, so no frame is ever formatted into a line.
const PAYLOAD_DUMPERS: &[&str] = &["tungstenite", "tokio_tungstenite"];

/// Crates kept out of the log altogether, at every level and under `RUST_LOG`. async_nats: its
/// trace lines dump every cluster message (browser signalling, ICE passwords), and it logs an
/// ERROR per connection attempt while the NATS server refuses us (every second);
/// `src/cluster/health.rs` says each new reason once instead.
const SILENCED: &[&str] = &["async_nats"];

/// The directives capping [`PAYLOAD_DUMPERS`] at WARN (or lower when `level` is lower).
fn payload_caps(level: LogLevel) -> Vec<String> {
    let cap = level.max(LogLevel::Warn).filter_directive();
    PAYLOAD_DUMPERS
        .iter()
        .map(|target| format!("{target}={cap}"))
        .collect()
}

fn filter_for(level: LogLevel) -> (EnvFilter, bool) {
    let (mut filter, from_env) = base_filter(level);
    let silenced = SILENCED.iter().map(|target| format!("{target}=off"));
    for cap in payload_caps(level).into_iter().chain(silenced) {
        if let Ok(directive) = cap.parse() {
            filter = filter.add_directive(directive);
        }
    }
    (filter, from_env)
}

fn base_filter(level: LogLevel) -> (EnvFilter, bool) {
    match EnvFilter::try_from_default_env() {
        Ok(filter) => (filter, true),
        // rsipstack logs whole SIP messages (bodies included) at INFO: held to WARN below
        // SENSITIVE so SIP/SDP bodies only appear at level 0. webrtc-rs warns once per refused
        // datagram: held to ERROR below DEBUG.
        Err(_) => (
            EnvFilter::new(format!(
                "{},{},{}{}",
                level.filter_directive(),
                crate::sip::log_directives(level),
                crate::media::webrtc_leg::log_directives(level),
                auth_directive(level)
            )),
            false,
        ),
    }
}

/// The auth-failure line (fail2ban's input) stays on at every level but NONE.
fn auth_directive(level: LogLevel) -> String {
    match level {
        LogLevel::None => String::new(),
        _ => format!(",{}=warn", super::auth_log::TARGET),
    }
}

/// Changes the level of the installed subscriber (SIGHUP).
#[derive(Clone)]
pub struct LogHandle {
    reload: Option<reload::Handle<EnvFilter, Registry>>,
}

impl LogHandle {
    /// A handle that changes nothing: another subscriber was already installed (tests
    /// running the bridge in-process).
    pub fn inert() -> Self {
        LogHandle { reload: None }
    }

    /// Applies `level` unless `RUST_LOG` is set (it keeps priority). Returns whether the
    /// level was changed.
    pub fn set_level(&self, level: LogLevel) -> Result<bool, LogError> {
        let Some(handle) = &self.reload else {
            return Ok(false);
        };
        let (filter, from_env) = filter_for(level);
        if from_env {
            return Ok(false);
        }
        handle
            .reload(filter)
            .map_err(|e| LogError::Reload(e.to_string()))?;
        Ok(true)
    }
}

/// Installs the global subscriber from `[log]`. If one is already installed, leaves it and
/// returns an inert handle.
pub fn init(config: &LogConfig) -> Result<LogHandle, LogError> {
    let sink: Box<dyn Write + Send> = match &config.file {
        Some(path) => open_log_file(config, path)?,
        None => Box::new(io::stderr()),
    };
    let (filter, _) = filter_for(config.level);
    let (filter, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(RedactingWriter::new(sink))
        .with_ansi(false)
        .log_internal_errors(false);
    match tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init()
    {
        Ok(()) => Ok(LogHandle {
            reload: Some(handle),
        }),
        Err(_) => Ok(LogHandle::inert()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, d: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(d);
            Ok(d.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn events_are_redacted_before_reaching_the_sink() {
        let shared = Shared::default();
        let writer = RedactingWriter::new(Box::new(shared.clone()));
        let subscriber = tracing_subscriber::fmt()
            .with_writer(writer)
            .with_ansi(false)
            .with_max_level(tracing::Level::TRACE)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let body = "REGISTER sip:x SIP/2.0\r\nAuthorization: Digest response=\"d1g3st\"\r\n";
            tracing::trace!(sip = %body, "sent");
            tracing::trace!(msg = ?body, "sent");
            tracing::info!(token = "t0k3n", "login");
            tracing::debug!("json {}", r#"{"password":"hunter2"}"#);
        });
        let text = String::from_utf8(shared.0.lock().unwrap().clone()).unwrap();
        for secret in ["d1g3st", "t0k3n", "hunter2"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert_eq!(text.matches("***").count(), 4, "{text}");
    }

    #[test]
    fn frame_dumping_crates_are_capped_at_every_level() {
        assert_eq!(
            payload_caps(LogLevel::Sensitive),
            ["tungstenite=warn", "tokio_tungstenite=warn"]
        );
        assert_eq!(payload_caps(LogLevel::Debug)[0], "tungstenite=warn");
        assert_eq!(payload_caps(LogLevel::Error)[0], "tungstenite=error");
        assert_eq!(payload_caps(LogLevel::None)[0], "tungstenite=off");
        let shared = Shared::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(RedactingWriter::new(Box::new(shared.clone())))
            .with_ansi(false)
            .with_env_filter(filter_for(LogLevel::Sensitive).0)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::trace!(target: "tungstenite::protocol", "received frame payload: 0x7b22");
            tracing::debug!(target: "tokio_tungstenite", "frame");
            tracing::trace!(target: "async_nats::connection", "read operation: frame MSG");
            tracing::error!(target: "async_nats::connector", "authorization violation frame");
            tracing::trace!(target: "srbridge::x", "kept");
        });
        let text = String::from_utf8(shared.0.lock().unwrap().clone()).unwrap();
        assert!(!text.contains("frame"), "{text}");
        assert!(text.contains("kept"), "{text}");
    }

    #[test]
    fn writer_drops_lines_instead_of_failing_on_a_broken_sink() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Err(io::Error::other("disk full"))
            }
        }
        let writer = RedactingWriter::new(Box::new(Broken));
        let mut w = writer.make_writer();
        w.write_all(b"line\n").unwrap();
        drop(w); // must not panic
    }

    #[test]
    fn unopenable_log_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "").unwrap();
        let path = blocker.join("srbridge.log"); // parent is a file
        let config = LogConfig {
            file: Some(path.clone()),
            ..LogConfig::default()
        };
        let err = match open_log_file(&config, &path) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("opened a log file under a regular file"),
        };
        assert!(err.contains("cannot open log file"), "{err}");
        assert!(err.contains("srbridge.log"), "{err}");
    }

    #[test]
    fn rotation_keeps_a_bounded_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/s.log");
        let config = LogConfig {
            file: Some(path.clone()),
            max_file_size_mb: 1,
            max_files: 2,
            ..LogConfig::default()
        };
        let mut sink = open_log_file(&config, &path).unwrap();
        let line = vec![b'x'; 1023];
        for _ in 0..(5 * 1024) {
            sink.write_all(&line).unwrap();
            sink.write_all(b"\n").unwrap();
        }
        sink.flush().unwrap();
        let mut names: Vec<String> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["s.log", "s.log.1", "s.log.2"]);
        for name in &names {
            let len = std::fs::metadata(dir.path().join("logs").join(name))
                .unwrap()
                .len();
            assert!(len <= 1024 * 1024 + 1024, "{name} is {len} bytes");
        }
    }
}
