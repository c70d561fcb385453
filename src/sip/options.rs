//! PBX reachability by periodic OPTIONS (like FreeSWITCH gateway pings): one task per PBX sends
//! the pings through rsipstack transactions and feeds the results to the UA's
//! [`PbxSet`](super::pbx_set::PbxSet), which decides up and down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rsipstack::sip::{Method, SipMessage, StatusCodeKind};
use rsipstack::transaction::key::{TransactionKey, TransactionRole};
use rsipstack::transaction::make_tag;
use rsipstack::transaction::transaction::Transaction;
use tracing::{info, warn};

use super::pbx_set::{PingResult, Transition};
use super::ua::UaInner;

/// Pings PBX `index` every `options_interval` until the UA stops.
pub(crate) async fn run(ua: Arc<UaInner>, index: usize, interval: Duration) {
    let Some(pbx) = ua.pbxs.get(index).map(|p| p.addr) else {
        return;
    };
    let timeout = interval.clamp(Duration::from_millis(500), Duration::from_secs(5));
    let mut seq = 0u32;
    loop {
        seq = seq.wrapping_add(1);
        let result = tokio::select! {
            _ = ua.token.cancelled() => return,
            r = ping(&ua, index, seq, timeout) => r,
        };
        match ua.on_ping(index, &result) {
            Transition::CameBack => info!(%pbx, "PBX answers again"),
            Transition::WentDown => warn!(%pbx, result = ?result, "PBX does not answer"),
            Transition::None => {}
        }
        tokio::select! {
            _ = ua.token.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

async fn ping(ua: &UaInner, index: usize, seq: u32, timeout: Duration) -> PingResult {
    let request = match ua
        .out_of_dialog_request(index, Method::Options, seq, make_tag().to_string())
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
    tx.destination = Some(ua.pbx_sipaddr(index));
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
