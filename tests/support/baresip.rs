//! A baresip 1.0.0 phone registered on the test PBX, controlled over `ctrl_tcp` (JSON in netstrings).
//!
//! Each phone gets a temp dir with `config`, `accounts`, `contacts`, its log (`baresip.log`) and, unless
//! [`BaresipOptions::record_dir`] says otherwise, its recordings in `rec/`. Modules: g711 (PCMU/PCMA
//! only), aufile (source), aubridge (null player/alert), sndfile (recorder), account, contact, menu,
//! ctrl_tcp.
//!
//! What baresip 1.0.0 actually does here (checked by hand and by `tests/pbx.rs`):
//! * `net_interface 127.0.0.1` is required, else SDP and RTP use the default interface's address;
//!   `net_interface lo` fails ("could not get network address").
//! * `sip_listen` binds UDP *and* TCP on that port.
//! * The `stdio` module cannot run with stdin on /dev/null (epoll EPERM), so commands go over ctrl_tcp.
//! * aufile needs a 16-bit (S16LE) WAV and does NOT loop: when the file ends, menu reports
//!   "audio error (end of file)" and HANGS UP the call. Calls therefore last at most as long as the
//!   played WAV; without `play_wav` the harness plays 120 s of silence (so RTP flows both ways).
//!   Give WAVs at 8000 Hz mono (PCMU is all it negotiates).
//! * sndfile writes two files per call into `snd_path`: `dump-<YYYY-MM-DD-HH-MM-SS>-dec.wav` (what the
//!   phone received and decoded) and `...-enc.wav` (what it sent), 8 kHz 16-bit mono. The WAV header is
//!   only complete once the call is closed, so read recordings after `CALL_CLOSED`. Two calls starting
//!   in the same second overwrite each other's files.
//! * ctrl_tcp only sends events to connected clients, so events before the harness connects (early
//!   `REGISTER_OK`) are not seen; registration is checked with the `reginfo` command instead.
//! * `answermode=auto` answers at once with 200; `manual` rings until `accept`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};

use super::audio;
use super::pbx::PASSWORD;
use super::ports;
use super::process::{print_log, ChildGuard};

/// How the phone behaves.
#[derive(Debug, Clone, Default)]
pub struct BaresipOptions {
    /// Answer incoming calls at once (`answermode=auto`); otherwise they ring until [`Baresip::accept`].
    pub auto_answer: bool,
    /// WAV to send as the phone's microphone (16-bit, 8 kHz mono); the call ends when it ends.
    pub play_wav: Option<PathBuf>,
    /// Where sndfile writes recordings; default: `rec/` in the phone's temp dir.
    pub record_dir: Option<PathBuf>,
}

/// One event from baresip (`{"event":true,"type":"CALL_ESTABLISHED",...}`).
#[derive(Debug, Clone)]
pub struct BaresipEvent {
    /// `CALL_INCOMING`, `CALL_RINGING`, `CALL_PROGRESS`, `CALL_ESTABLISHED`, `CALL_CLOSED`, ...
    pub kind: String,
    /// e.g. the reason of `CALL_CLOSED` ("480 Temporarily Unavailable", "Connection reset by user").
    pub param: String,
    pub peer_uri: String,
    pub direction: String,
    pub raw: serde_json::Value,
}

struct Control {
    writer: OwnedWriteHalf,
    responses: mpsc::UnboundedReceiver<serde_json::Value>,
    next_token: u64,
}

/// A running baresip phone; killed on drop (log printed if the test panicked).
pub struct Baresip {
    account: String,
    pbx: SocketAddr,
    sip_port: u16,
    dir: TempDir,
    record_dir: PathBuf,
    child: ChildGuard,
    control: tokio::sync::Mutex<Control>,
    events: Arc<Mutex<Vec<BaresipEvent>>>,
    event_notify: Arc<Notify>,
    cursor: Mutex<usize>,
    /// The tone a [`Baresip::tone_phone`] plays, kept as long as the phone runs.
    _tone: Option<TempDir>,
}

impl Baresip {
    /// Starts a phone for `account` (e.g. "1001", password 1234) on the PBX at `pbx` and waits until
    /// it is registered. Panics (with the phone's log) if it cannot start or register in 10 s.
    pub async fn start(pbx: SocketAddr, account: &str, options: BaresipOptions) -> Baresip {
        let dir = tempfile::Builder::new()
            .prefix("srbridge-baresip-")
            .tempdir()
            .expect("temp dir for baresip");
        let record_dir = options
            .record_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("rec"));
        std::fs::create_dir_all(&record_dir)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", record_dir.display()));
        let source = match &options.play_wav {
            Some(path) => {
                check_wav(path);
                path.clone()
            }
            None => {
                let path = dir.path().join("silence.wav");
                audio::write_tone_wav(&path, 0.0, 0.0, Duration::from_secs(120), 8000);
                path
            }
        };
        // baresip also opens SIP/TLS on the next port (it cannot be turned off in the config):
        // claim both, or another test's port may sit there and baresip fails to start.
        let sip_port = ports::free_port_pair();
        let ctrl_port = ports::free_port();
        let rtp_first = ports::free_port_range(8);
        let config = format!(
            "poll_method epoll\n\
             net_interface 127.0.0.1\n\
             sip_listen 127.0.0.1:{sip_port}\n\
             sip_trans_def udp\n\
             call_local_timeout 120\n\
             call_max_calls 4\n\
             audio_player aubridge,play-{sip_port}\n\
             audio_alert aubridge,alert-{sip_port}\n\
             audio_source aufile,{source}\n\
             audio_channels 1\n\
             rtp_ports {rtp_first}-{rtp_last}\n\
             module_path /usr/lib/baresip/modules\n\
             module g711.so\n\
             module aufile.so\n\
             module aubridge.so\n\
             module sndfile.so\n\
             module_app account.so\n\
             module_app contact.so\n\
             module_app menu.so\n\
             module_app ctrl_tcp.so\n\
             ctrl_tcp_listen 127.0.0.1:{ctrl_port}\n\
             snd_path {rec}\n",
            source = source.display(),
            rtp_last = rtp_first + 7,
            rec = record_dir.display(),
        );
        let answermode = if options.auto_answer {
            "auto"
        } else {
            "manual"
        };
        let accounts = format!(
            "<sip:{account}@{pbx}>;auth_pass={PASSWORD};answermode={answermode};regint=300;ptime=20;\
             audio_codecs=PCMU,PCMA\n"
        );
        write(&dir.path().join("config"), &config);
        write(&dir.path().join("accounts"), &accounts);
        write(&dir.path().join("contacts"), "");

        let log_path = dir.path().join("baresip.log");
        let mut cmd = Command::new("baresip");
        cmd.current_dir(dir.path()).arg("-f").arg(dir.path());
        let mut child = ChildGuard::spawn("baresip", cmd, &log_path)
            .unwrap_or_else(|e| panic!("cannot run baresip: {e} (install it: scripts/deps.sh)"));

        // ctrl_tcp listens once modules are loaded
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match TcpStream::connect(("127.0.0.1", ctrl_port)).await {
                Ok(s) => break s,
                Err(e) => {
                    if child.try_status().is_some() || Instant::now() > deadline {
                        print_log(&format!("baresip {account} log"), &child.log());
                        panic!("baresip {account} did not open ctrl_tcp on {ctrl_port}: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let (reader, writer) = stream.into_split();
        let events = Arc::new(Mutex::new(Vec::new()));
        let event_notify = Arc::new(Notify::new());
        let (resp_tx, responses) = mpsc::unbounded_channel();
        tokio::spawn(read_control(
            reader,
            events.clone(),
            event_notify.clone(),
            resp_tx,
        ));

        let phone = Baresip {
            account: account.to_string(),
            pbx,
            sip_port,
            dir,
            record_dir,
            child,
            control: tokio::sync::Mutex::new(Control {
                writer,
                responses,
                next_token: 1,
            }),
            events,
            event_notify,
            cursor: Mutex::new(0),
            _tone: None,
        };
        phone.wait_registered(Duration::from_secs(10)).await;
        phone
    }

    pub fn account(&self) -> &str {
        &self.account
    }

    /// The phone's SIP port (UDP and TCP on 127.0.0.1).
    pub fn sip_port(&self) -> u16 {
        self.sip_port
    }

    /// The phone most media tests need: registered as `account` (as every started phone),
    /// playing a half-scale `hz` tone (8 kHz) for `length` (baresip hangs up when it ends).
    pub async fn tone_phone(
        pbx: SocketAddr,
        account: &str,
        hz: f64,
        length: Duration,
        auto_answer: bool,
    ) -> Baresip {
        let tone_dir = tempfile::Builder::new()
            .prefix("srbridge-tone-")
            .tempdir()
            .expect("temp dir for the tone");
        let wav = tone_dir.path().join("tone.wav");
        audio::write_tone_wav(&wav, hz, 0.5, length, 8000);
        let mut phone = Baresip::start(
            pbx,
            account,
            BaresipOptions {
                auto_answer,
                play_wav: Some(wav),
                record_dir: None,
            },
        )
        .await;
        phone._tone = Some(tone_dir);
        phone
    }

    /// Polls `reginfo` until the account shows "OK"; panics with the log after `timeout`.
    pub async fn wait_registered(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let info = self.command("reginfo", "").await.unwrap_or_default();
            if info.contains("OK ") {
                return;
            }
            if Instant::now() > deadline {
                self.print_log();
                panic!(
                    "baresip {} did not register at {} within {timeout:?}: {info}",
                    self.account, self.pbx
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends a ctrl_tcp command (e.g. "dial", "hangup", "accept", "reginfo") and returns its output;
    /// `Err` with the output if baresip reports failure.
    pub async fn command(&self, command: &str, params: &str) -> Result<String, String> {
        let mut control = self.control.lock().await;
        let token = control.next_token.to_string();
        control.next_token += 1;
        let body =
            serde_json::json!({"command": command, "params": params, "token": token}).to_string();
        let frame = format!("{}:{},", body.len(), body);
        control
            .writer
            .write_all(frame.as_bytes())
            .await
            .map_err(|e| format!("ctrl_tcp write: {e}"))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let resp = tokio::time::timeout_at(deadline, control.responses.recv())
                .await
                .map_err(|_| format!("no response to {command}"))?
                .ok_or_else(|| "ctrl_tcp closed".to_string())?;
            if resp["token"].as_str() != Some(token.as_str()) {
                continue;
            }
            let data = resp["data"].as_str().unwrap_or_default().to_string();
            return if resp["ok"].as_bool() == Some(true) {
                Ok(data)
            } else {
                Err(data)
            };
        }
    }

    /// Calls `target`: a full `sip:` URI, or a user/number at the PBX (e.g. "0alice", "1001").
    pub async fn dial(&self, target: &str) {
        let uri = if target.starts_with("sip:") {
            target.to_string()
        } else {
            format!("sip:{target}@{}", self.pbx)
        };
        if let Err(e) = self.command("dial", &uri).await {
            self.print_log();
            panic!("baresip {} could not dial {uri}: {e}", self.account);
        }
    }

    /// Hangs up the current call.
    pub async fn hangup(&self) {
        if let Err(e) = self.command("hangup", "").await {
            panic!("baresip {} hangup failed: {e}", self.account);
        }
    }

    /// Sends DTMF digits in the current call (`sndcode`: RFC 4733 telephone-events when the call
    /// negotiated them). The far end sees them; this phone reports received ones as
    /// `CALL_DTMF_START` events with the digit as `param`.
    pub async fn send_dtmf(&self, digits: &str) {
        if let Err(e) = self.command("sndcode", digits).await {
            self.print_log();
            panic!("baresip {} sndcode {digits} failed: {e}", self.account);
        }
    }

    /// Answers the ringing incoming call.
    pub async fn accept(&self) {
        if let Err(e) = self.command("accept", "").await {
            self.print_log();
            panic!("baresip {} accept failed: {e}", self.account);
        }
    }

    /// Waits for the next event of `kind` after the last one returned by `wait_for`, and returns it.
    /// Panics (printing the events so far and the log) after `timeout`.
    pub async fn wait_for(&self, kind: &str, timeout: Duration) -> BaresipEvent {
        match self.try_wait_for(kind, timeout).await {
            Some(event) => event,
            None => {
                let seen: Vec<String> = self
                    .events()
                    .iter()
                    .map(|e| format!("{} ({})", e.kind, e.param))
                    .collect();
                self.print_log();
                panic!(
                    "baresip {}: no {kind} within {timeout:?}; events so far: {seen:?}",
                    self.account
                );
            }
        }
    }

    /// Like [`Baresip::wait_for`] but returns `None` on timeout.
    pub async fn try_wait_for(&self, kind: &str, timeout: Duration) -> Option<BaresipEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.event_notify.notified();
            {
                let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
                let mut cursor = self.cursor.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(i) = events.iter().skip(*cursor).position(|e| e.kind == kind) {
                    let index = *cursor + i;
                    *cursor = index + 1;
                    return Some(events[index].clone());
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// All events received so far.
    pub fn events(&self) -> Vec<BaresipEvent> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Recordings in the record dir (sorted by name = by call start time).
    pub fn recordings(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.record_dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|x| x == "wav"));
        files.sort();
        files
    }

    /// The audio received in the latest call (`*-dec.wav`); complete once the call has closed.
    pub fn received_wav(&self) -> Option<PathBuf> {
        self.recordings()
            .into_iter()
            .rev()
            .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
    }

    /// The audio sent in the latest call (`*-enc.wav`).
    pub fn sent_wav(&self) -> Option<PathBuf> {
        self.recordings()
            .into_iter()
            .rev()
            .find(|p| p.to_string_lossy().ends_with("-enc.wav"))
    }

    pub fn log(&self) -> String {
        self.child.log()
    }

    pub fn print_log(&self) {
        print_log(&format!("baresip {} log", self.account), &self.log());
    }

    /// The phone's temp dir (config, log, default recordings).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_log();
        }
        self.child.kill();
    }
}

async fn read_control(
    mut reader: tokio::net::tcp::OwnedReadHalf,
    events: Arc<Mutex<Vec<BaresipEvent>>>,
    notify: Arc<Notify>,
    responses: mpsc::UnboundedSender<serde_json::Value>,
) {
    let mut buf: VecDeque<u8> = VecDeque::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend(&chunk[..n]);
        while let Some(msg) = take_netstring(&mut buf) {
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(&msg) else {
                continue;
            };
            if value["event"].as_bool() == Some(true) {
                let field = |k: &str| value[k].as_str().unwrap_or_default().to_string();
                let event = BaresipEvent {
                    kind: field("type"),
                    param: field("param"),
                    peer_uri: field("peeruri"),
                    direction: field("direction"),
                    raw: value.clone(),
                };
                events.lock().unwrap_or_else(|e| e.into_inner()).push(event);
                notify.notify_waiters();
            } else if value["response"].as_bool() == Some(true) {
                let _ = responses.send(value);
            }
        }
    }
}

/// Removes one complete `LEN:DATA,` frame from the front of `buf`.
fn take_netstring(buf: &mut VecDeque<u8>) -> Option<Vec<u8>> {
    let colon = buf.iter().position(|b| *b == b':')?;
    let len: usize = std::str::from_utf8(&buf.iter().take(colon).copied().collect::<Vec<u8>>())
        .ok()?
        .parse()
        .ok()?;
    if buf.len() < colon + 1 + len + 1 {
        return None;
    }
    let frame: Vec<u8> = buf.drain(..colon + 1 + len + 1).collect();
    Some(frame[colon + 1..colon + 1 + len].to_vec())
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// aufile only plays 16-bit PCM and the call runs at 8 kHz; fail early instead of a closed call.
fn check_wav(path: &Path) {
    let reader =
        hound::WavReader::open(path).unwrap_or_else(|e| panic!("play_wav {}: {e}", path.display()));
    let spec = reader.spec();
    assert!(
        spec.bits_per_sample == 16
            && spec.sample_format == hound::SampleFormat::Int
            && spec.channels == 1
            && spec.sample_rate == 8000,
        "play_wav {}: give baresip's aufile 16-bit PCM, mono, 8000 Hz (what PCMU carries), got {spec:?}",
        path.display()
    );
}

/// A baresip phone registered as `account` that plays silence (so RTP flows both ways), answering
/// at once when `auto_answer`; waits until the PBX has its registration.
pub async fn silent_phone(pbx: &super::Pbx, account: &str, auto_answer: bool) -> Baresip {
    let phone = Baresip::start(
        pbx.addr(),
        account,
        BaresipOptions {
            auto_answer,
            play_wav: None,
            record_dir: None,
        },
    )
    .await;
    phone.wait_registered(Duration::from_secs(15)).await;
    phone
}
