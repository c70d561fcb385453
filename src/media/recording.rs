//! Call recording (`[media.recording]`): one WAV per call, 8 kHz 16-bit, mixed mono or stereo
//! (left: the browser, right: the SIP side).
//!
//! The pipeline hands 20 ms frames to a [`RecorderTap`] (`try_send` on a bounded channel: a full
//! channel drops the frame and counts it, the media path never waits on the disk); a writer thread
//! pairs the two sides' frames and writes them with `hound`. The file is finalized when every tap
//! is gone (the call's media closed).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::config::RecordingMode;
use crate::media::pipeline::FRAME;

/// Frames held for the writer (about 5 s of both sides).
const QUEUE: usize = 512;

/// Which side a frame is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// What the browser said.
    Browser,
    /// What the SIP side said.
    Sip,
}

/// Why a recording could not start.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// The directory or file could not be created.
    #[error("cannot create recording {path}: {reason}")]
    Create {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// The pipeline's end of a recording; cheap to clone (one per direction).
#[derive(Debug, Clone)]
pub struct RecorderTap {
    tx: mpsc::Sender<(Side, [i16; FRAME])>,
    dropped: Arc<AtomicU64>,
}

impl RecorderTap {
    /// Queues one frame; never waits.
    pub fn record(&self, side: Side, pcm: &[i16; FRAME]) {
        if self.tx.try_send((side, *pcm)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Frames lost because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The file name for a call: `<dir>/<call id>.wav` with the id reduced to safe characters.
pub fn path_for(dir: &Path, call_id: &str) -> PathBuf {
    let safe: String = call_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    dir.join(format!("{safe}.wav"))
}

/// Starts recording a call into `path`; the writer runs on its own thread until the taps drop.
pub fn start(path: &Path, mode: RecordingMode) -> Result<RecorderTap, RecordingError> {
    let err = |reason: String| RecordingError::Create {
        path: path.to_owned(),
        reason,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    let spec = hound::WavSpec {
        channels: match mode {
            RecordingMode::Mixed => 1,
            RecordingMode::Stereo => 2,
        },
        sample_rate: crate::media::opus::PCM_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let writer = hound::WavWriter::create(path, spec).map_err(|e| err(e.to_string()))?;
    let (tx, rx) = mpsc::channel(QUEUE);
    let name = path.display().to_string();
    std::thread::Builder::new()
        .name("srbridge-recorder".into())
        .spawn(move || write_loop(writer, rx, mode, &name))
        .map_err(|e| err(e.to_string()))?;
    Ok(RecorderTap {
        tx,
        dropped: Arc::new(AtomicU64::new(0)),
    })
}

fn write_loop(
    mut writer: hound::WavWriter<std::io::BufWriter<std::fs::File>>,
    mut rx: mpsc::Receiver<(Side, [i16; FRAME])>,
    mode: RecordingMode,
    name: &str,
) {
    let mut browser = std::collections::VecDeque::with_capacity(QUEUE);
    let mut sip = std::collections::VecDeque::with_capacity(QUEUE);
    let mut failed = false;
    let mut write_pair = |writer: &mut hound::WavWriter<_>, b: &[i16; FRAME], s: &[i16; FRAME]| {
        for i in 0..FRAME {
            let r = match mode {
                RecordingMode::Mixed => writer.write_sample(b[i].saturating_add(s[i])),
                RecordingMode::Stereo => writer
                    .write_sample(b[i])
                    .and_then(|()| writer.write_sample(s[i])),
            };
            if r.is_err() && !failed {
                failed = true;
                tracing::warn!(file = name, "recording write failed; the rest is lost");
            }
        }
    };
    const SILENT: [i16; FRAME] = [0; FRAME];
    while let Some((side, frame)) = rx.blocking_recv() {
        match side {
            Side::Browser => browser.push_back(frame),
            Side::Sip => sip.push_back(frame),
        }
        // One side may be missing for a while (its pipeline not started yet): do not hold more
        // than the queue's worth of the other.
        while browser.len() > QUEUE || sip.len() > QUEUE {
            let b = browser.pop_front().unwrap_or(SILENT);
            let s = sip.pop_front().unwrap_or(SILENT);
            write_pair(&mut writer, &b, &s);
        }
        while let (Some(b), Some(s)) = (browser.front(), sip.front()) {
            let (b, s) = (*b, *s);
            browser.pop_front();
            sip.pop_front();
            write_pair(&mut writer, &b, &s);
        }
    }
    while !browser.is_empty() || !sip.is_empty() {
        let b = browser.pop_front().unwrap_or(SILENT);
        let s = sip.pop_front().unwrap_or(SILENT);
        write_pair(&mut writer, &b, &s);
    }
    if let Err(e) = writer.finalize() {
        tracing::warn!(file = name, error = %e, "recording not finalized");
    }
}
