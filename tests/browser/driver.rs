//! The web-demo page in headless Chromium, driven line by line through
//! `tests/browser/softphone.mjs` (one JSON command on its stdin, one JSON answer on its stdout).
//! Needs node, `node_modules/playwright-core` (scripts/deps.sh) and /usr/bin/chromium.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Fails with what to install when node, playwright-core or chromium is missing.
pub fn check_prerequisites() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is not installed: run scripts/deps.sh (Debian package nodejs)"
    );
    assert!(
        root.join("node_modules/playwright-core/package.json")
            .exists(),
        "node_modules/playwright-core is missing: run scripts/deps.sh (it runs `npm ci`)"
    );
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run scripts/deps.sh (Debian package chromium)"
    );
}

/// One Chromium with the softphone page; closed on drop.
pub struct Page {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    stderr_log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Page {
    /// Starts Chromium whose fake microphone loops `mic_wav` (16-bit PCM WAV).
    pub async fn launch(mic_wav: &Path) -> Page {
        Page::start(mic_wav, false).await
    }

    /// Starts Chromium where the user refuses the microphone.
    pub async fn launch_denying_microphone(mic_wav: &Path) -> Page {
        Page::start(mic_wav, true).await
    }

    async fn start(mic_wav: &Path, deny_mic: bool) -> Page {
        check_prerequisites();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = tempfile::tempdir().unwrap();
        let stderr_log = dir.path().join("node.log");
        let mut child = Command::new("node")
            .arg(root.join("tests/browser/softphone.mjs"))
            .arg(mic_wav)
            .args(deny_mic.then_some("deny-mic"))
            .current_dir(root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("node starts");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Page {
            child,
            stdin,
            lines,
            stderr_log,
            _dir: dir,
        }
    }

    /// Runs one command; returns its answer, or panics with the page's state when it failed.
    pub async fn cmd(&mut self, command: Value) -> Value {
        let answer = self.try_cmd(command.clone()).await;
        assert_eq!(
            answer["ok"], true,
            "browser command {command} failed: {answer:#}"
        );
        answer
    }

    /// Runs one command and returns its answer (`ok` false when it failed).
    pub async fn try_cmd(&mut self, command: Value) -> Value {
        let line = format!("{command}\n");
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
        let next = tokio::time::timeout(Duration::from_secs(90), self.lines.next_line()).await;
        match next {
            Ok(Ok(Some(line))) => serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("browser driver printed no JSON ({e}): {line}")),
            other => {
                let log = std::fs::read_to_string(&self.stderr_log).unwrap_or_default();
                panic!("browser driver gave no answer to {command} ({other:?}); its log:\n{log}");
            }
        }
    }

    /// Opens the page at `base` (`http://127.0.0.1:PORT`) with optional query (`?audio=raw`).
    pub async fn goto(&mut self, url: &str) {
        self.cmd(json!({"cmd": "goto", "url": url})).await;
    }

    /// Logs in with `uid` through the form; returns the page state afterwards.
    pub async fn login(&mut self, uid: &str, appid: &str) -> Value {
        self.cmd(json!({"cmd": "login", "uid": uid, "appid": appid}))
            .await
    }

    /// Waits until the page is in `phase` (`idle`, `calling`, `incoming`, `in-call`).
    pub async fn wait_phase(&mut self, phase: &str) -> Value {
        self.cmd(json!({"cmd": "waitPhase", "phase": phase, "timeoutMs": 20000}))
            .await
    }

    /// Waits for an error message on the page; returns the state (its `banner`).
    pub async fn wait_banner(&mut self) -> Value {
        self.cmd(json!({"cmd": "waitBanner", "timeoutMs": 20000}))
            .await
    }

    /// Records what the page's speaker plays for `ms` into a WAV at `path`.
    pub async fn record(&mut self, path: &Path, ms: u64) {
        self.cmd(json!({"cmd": "record", "path": path, "ms": ms}))
            .await;
    }

    /// For a ringing call whose audio path is already up (the bridge's early set-up): starts
    /// recording its remote track, lets it ring `ring_ms` more, clicks Accept and records `ms`
    /// into a WAV at `path`. Returns
    /// where in the recording the click was, in samples (to within one 4096-sample block), and
    /// what the browser's jitter buffer did with the incoming audio (`getStats`, ms).
    pub async fn accept_and_record(&mut self, path: &Path, ms: u64, ring_ms: u64) -> (u64, Value) {
        let answer = self
            .cmd(json!({"cmd": "acceptAndRecord", "path": path, "ms": ms, "ringMs": ring_ms}))
            .await;
        (
            answer["acceptSample"].as_u64().unwrap_or(0),
            answer["inbound"].clone(),
        )
    }

    /// The JS errors the page had.
    pub async fn page_errors(&mut self) -> Value {
        self.cmd(json!({"cmd": "errors"})).await["pageErrors"].clone()
    }

    /// Closes Chromium.
    pub async fn close(mut self) {
        let _ = self.stdin.write_all(b"{\"cmd\":\"close\"}\n").await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}
