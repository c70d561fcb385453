//! PBX reachability by periodic OPTIONS (like FreeSWITCH gateway pings): a sans-IO monitor turning
//! ping results into Up/Down, and the task that sends the pings through rsipstack transactions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rsipstack::sip::{Method, SipMessage, StatusCodeKind};
use rsipstack::transaction::key::{TransactionKey, TransactionRole};
use rsipstack::transaction::make_tag;
use rsipstack::transaction::transaction::Transaction;
use tracing::{info, warn};

use super::status::PbxInternal;
use super::ua::UaInner;

/// How one ping ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PingResult {
    /// A final response `code` after `rtt`.
    Answered { code: u16, rtt: Duration },
    /// Nothing in time.
    NoAnswer,
    /// Could not send.
    Transport(String),
}

/// What changed with a ping result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    /// Same as before (or first Up).
    None,
    /// Was Down, now answers: the PBX may have restarted and forgotten us.
    CameBack,
    /// Stopped answering.
    WentDown,
}

/// Up/Down state of the PBX from ping results. Any final response proves the PBX is alive except
/// 408/503 (a proxy saying the PBX behind it is gone).
#[derive(Debug, Clone)]
pub(crate) struct PbxMonitor {
    state: PbxInternal,
}

impl PbxMonitor {
    pub(crate) fn new() -> Self {
        PbxMonitor {
            state: PbxInternal::Unknown,
        }
    }

    pub(crate) fn state(&self) -> &PbxInternal {
        &self.state
    }

    pub(crate) fn on_ping(&mut self, result: &PingResult, now: Instant) -> Transition {
        let error = match result {
            PingResult::Answered { code, rtt } if *code != 408 && *code != 503 => {
                let was_down = matches!(self.state, PbxInternal::Down { .. });
                self.state = PbxInternal::Up {
                    rtt_ms: rtt.as_millis() as u64,
                };
                return if was_down {
                    Transition::CameBack
                } else {
                    Transition::None
                };
            }
            PingResult::Answered { code, .. } => format!("OPTIONS answered {code}"),
            PingResult::NoAnswer => "no answer to OPTIONS".to_string(),
            PingResult::Transport(e) => format!("cannot send OPTIONS: {e}"),
        };
        match &mut self.state {
            PbxInternal::Down { error: last, .. } => {
                *last = error;
                Transition::None
            }
            _ => {
                self.state = PbxInternal::Down { since: now, error };
                Transition::WentDown
            }
        }
    }
}

/// Pings the PBX every `options_interval` until the UA stops.
pub(crate) async fn run(ua: Arc<UaInner>, interval: Duration) {
    let mut monitor = PbxMonitor::new();
    let timeout = interval.clamp(Duration::from_millis(500), Duration::from_secs(5));
    let mut seq = 0u32;
    loop {
        seq = seq.wrapping_add(1);
        let result = tokio::select! {
            _ = ua.token.cancelled() => return,
            r = ping(&ua, seq, timeout) => r,
        };
        match monitor.on_ping(&result, Instant::now()) {
            Transition::CameBack => {
                info!(pbx = %ua.pbx, "PBX answers again");
                ua.reregister.notify_one();
            }
            Transition::WentDown => warn!(pbx = %ua.pbx, result = ?result, "PBX does not answer"),
            Transition::None => {}
        }
        ua.set_pbx_state(monitor.state().clone());
        tokio::select! {
            _ = ua.token.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

async fn ping(ua: &UaInner, seq: u32, timeout: Duration) -> PingResult {
    let request = match ua
        .out_of_dialog_request(Method::Options, seq, make_tag().to_string())
        .await
    {
        Ok(r) => r,
        Err(e) => return PingResult::Transport(e.to_string()),
    };
    let key = match TransactionKey::from_request(&request, TransactionRole::Client) {
        Ok(k) => k,
        Err(e) => return PingResult::Transport(e.to_string()),
    };
    let mut tx = Transaction::new_client(key, request, ua.endpoint.clone(), None);
    tx.destination = Some(ua.pbx_sipaddr());
    let started = Instant::now();
    let exchange = async {
        tx.send().await.map_err(|e| e.to_string())?;
        while let Some(msg) = tx.receive().await {
            if let SipMessage::Response(resp) = msg {
                if resp.status_code.kind() != StatusCodeKind::Provisional {
                    return Ok(Some(resp.status_code.code()));
                }
            }
        }
        Ok(None)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(Some(code))) => PingResult::Answered {
            code,
            rtt: started.elapsed(),
        },
        Ok(Ok(None)) | Err(_) => PingResult::NoAnswer,
        Ok(Err(e)) => PingResult::Transport(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_mean_up_silence_means_down_and_recovery_is_reported() {
        let mut m = PbxMonitor::new();
        let t0 = Instant::now();
        assert!(matches!(m.state(), PbxInternal::Unknown));
        let ok = PingResult::Answered {
            code: 200,
            rtt: Duration::from_millis(12),
        };
        assert_eq!(m.on_ping(&ok, t0), Transition::None);
        assert!(matches!(m.state(), PbxInternal::Up { rtt_ms: 12 }));
        assert_eq!(m.on_ping(&PingResult::NoAnswer, t0), Transition::WentDown);
        let later = t0 + Duration::from_secs(5);
        assert_eq!(
            m.on_ping(&PingResult::Transport("refused".into()), later),
            Transition::None
        );
        match m.state() {
            PbxInternal::Down { since, error } => {
                assert_eq!(*since, t0, "down since the first failure");
                assert!(error.contains("refused"), "{error}");
            }
            s => panic!("{s:?}"),
        }
        assert_eq!(m.on_ping(&ok, later), Transition::CameBack);
    }

    #[test]
    fn any_final_answer_but_408_and_503_is_alive() {
        let mut m = PbxMonitor::new();
        let now = Instant::now();
        let code = |c| PingResult::Answered {
            code: c,
            rtt: Duration::from_millis(1),
        };
        m.on_ping(&code(404), now);
        assert!(
            matches!(m.state(), PbxInternal::Up { .. }),
            "404 still proves the PBX runs"
        );
        assert_eq!(m.on_ping(&code(503), now), Transition::WentDown);
        m.on_ping(&code(407), now);
        m.on_ping(&code(408), now);
        assert!(matches!(m.state(), PbxInternal::Down { .. }));
    }
}
