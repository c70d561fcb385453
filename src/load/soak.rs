//! `--soak N`: N short web→SIP calls back to back, `--calls` of them at a time, each a fresh
//! login, an invitation, `--duration` of media and a hang-up; then whether the bridge went back
//! to where it started. Its RSS, open fds, threads and tokio tasks (`tasks` of `/api/status`) are
//! read before the first login, at their highest while calls run, and after `--soak-settle` (the
//! bridge hands freed heap back every 10 s).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context};
use serde::Serialize;
use serde_json::Value;
use srbridge::signal::mint_token;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::call::{run_call, CallNews, CallPlan, CallProbe, Role};
use super::cli::Args;
use super::hub::HubSession;
use super::procfs;
use super::report::p50_p99;
use super::stats::Percentiles;

/// How long one call may take beyond its hold time before it counts as stuck.
const CALL_GRACE: Duration = Duration::from_secs(30);

/// What the bridge holds at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Holdings {
    pub rss_kb: Option<u64>,
    pub fds: Option<u64>,
    pub threads: Option<u64>,
    /// Tokio tasks alive (`/api/status` `tasks`), without the one serving that request.
    pub tasks: Option<u64>,
}

impl Holdings {
    /// The larger of each figure.
    fn max(self, other: Holdings) -> Holdings {
        let m = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        Holdings {
            rss_kb: m(self.rss_kb, other.rss_kb),
            fds: m(self.fds, other.fds),
            threads: m(self.threads, other.threads),
            tasks: m(self.tasks, other.tasks),
        }
    }

    fn line(&self) -> String {
        let f = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        format!(
            "RSS {} KB, {} fds, {} threads, {} tasks",
            f(self.rss_kb),
            f(self.fds),
            f(self.threads),
            f(self.tasks)
        )
    }
}

/// The soak's result (the JSON report of `--soak`).
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// Calls asked for, and how many were in flight at once.
    pub calls: usize,
    pub concurrency: usize,
    /// Media time of each call once up.
    pub hold_s: f64,
    /// Calls that came up and were hung up by the tool.
    pub completed: usize,
    pub failed: usize,
    /// A few distinct failure reasons.
    pub failures: Vec<String>,
    pub elapsed_s: f64,
    pub calls_per_sec: f64,
    /// The bridge's CPU (`--bridge-pid`) from the first login to the last hang-up, ms per
    /// finished call: a whole call's cost (login, set-up, `hold_s` of media, hang-up).
    pub cpu_ms_per_call: Option<f64>,
    /// The same, as a share of one core over that time.
    pub cpu_percent: Option<f64>,
    /// invite → call up (accepted and media connected), ms.
    pub setup_ms: Option<Percentiles>,
    /// invite → `ACCEPTED_BY_REMOTE`, ms.
    pub accepted_ms: Option<Percentiles>,
    /// Before the first login.
    pub baseline: Holdings,
    /// The highest of each figure while the calls ran.
    pub peak: Holdings,
    /// After the last call and `--soak-settle`.
    pub after: Holdings,
    pub settle_s: f64,
}

impl SoakReport {
    /// The summary printed at the end.
    pub fn table(&self) -> String {
        let f = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        let delta = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => format!("{:+}", b as i64 - a as i64),
            _ => "-".to_string(),
        };
        let b = &self.baseline;
        let p = &self.peak;
        let a = &self.after;
        let cpu = match (self.cpu_ms_per_call, self.cpu_percent) {
            (Some(ms), Some(pct)) => {
                format!("; bridge {ms:.2} ms CPU per call, {pct:.1} % of a core")
            }
            _ => String::new(),
        };
        let mut out = format!(
            "soak: {} of {} calls completed, {} failed, {} at a time, {:.1} s each, {:.1} calls/s; setup p50/p99 {} ms, accepted p50/p99 {} ms{cpu}\n",
            self.completed,
            self.calls,
            self.failed,
            self.concurrency,
            self.hold_s,
            self.calls_per_sec,
            p50_p99(self.setup_ms),
            p50_p99(self.accepted_ms),
        );
        out.push_str(&format!(
            "{:<8} {:>10} {:>10} {:>10} {:>14}\n",
            "",
            "baseline",
            "peak",
            format!("after {:.0}s", self.settle_s),
            "after-baseline"
        ));
        for (name, x, y, z) in [
            ("RSS KB", b.rss_kb, p.rss_kb, a.rss_kb),
            ("fds", b.fds, p.fds, a.fds),
            ("threads", b.threads, p.threads, a.threads),
            ("tasks", b.tasks, p.tasks, a.tasks),
        ] {
            out.push_str(&format!(
                "{name:<8} {:>10} {:>10} {:>10} {:>14}\n",
                f(x),
                f(y),
                f(z),
                delta(x, z)
            ));
        }
        out
    }
}

/// `http://HOST:PORT/api/status` of the bridge whose hub is `ws` (same listener).
pub fn status_url_for(ws: &str) -> Option<String> {
    let rest = ws.strip_prefix("ws://")?;
    let host = rest.split('/').next()?;
    Some(format!("http://{host}/api/status"))
}

/// `tasks` from the bridge's `/api/status` (plain HTTP through hyper's client, as the webhook
/// posts; loopback admin access), less the task serving the request.
async fn tasks_of(status_url: &str) -> anyhow::Result<u64> {
    use http_body_util::{BodyExt, Empty};
    let uri: hyper::Uri = status_url
        .parse()
        .with_context(|| format!("{status_url}: not a URL"))?;
    if uri.scheme_str() != Some("http") {
        anyhow::bail!("{status_url}: only http:// is supported");
    }
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow!("{status_url}: no host"))?
        .as_str()
        .to_owned();
    let stream = tokio::net::TcpStream::connect(authority.as_str())
        .await
        .with_context(|| format!("connect {status_url}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    let connection = tokio::spawn(connection);
    let request = hyper::Request::get(uri.path())
        .header(hyper::header::HOST, authority)
        .body(Empty::<bytes::Bytes>::new())?;
    let exchange = async {
        let response = sender.send_request(request).await?;
        let status = response.status();
        anyhow::Ok((status, response.into_body().collect().await?.to_bytes()))
    };
    // The connection task ends with the exchange, whatever its outcome.
    let outcome = exchange.await;
    connection.abort();
    let (status, body) = outcome?;
    if !status.is_success() {
        anyhow::bail!("{status_url}: HTTP {status}");
    }
    let status: Value =
        serde_json::from_slice(&body).with_context(|| format!("{status_url}: not JSON"))?;
    let tasks = status["tasks"]
        .as_u64()
        .ok_or_else(|| anyhow!("{status_url}: no `tasks` (a bridge older than that field?)"))?;
    Ok(tasks.saturating_sub(1))
}

async fn holdings(pid: Option<u32>, status_url: Option<&str>) -> Holdings {
    let proc = pid.and_then(|pid| procfs::sample(pid).ok());
    let tasks = match status_url {
        Some(url) => tasks_of(url).await.ok(),
        None => None,
    };
    Holdings {
        rss_kb: proc.as_ref().map(|p| p.rss_kb),
        fds: proc.as_ref().map(|p| p.fds),
        threads: proc.as_ref().map(|p| p.threads),
        tasks,
    }
}

/// How one call ended.
struct Outcome {
    result: Result<(), String>,
    setup: Option<Duration>,
    accepted: Option<Duration>,
}

/// Runs the soak: `total` calls, web→SIP.
pub async fn run_soak(
    args: &Args,
    plan: Arc<CallPlan>,
    total: usize,
) -> anyhow::Result<SoakReport> {
    let concurrency = args
        .calls
        .first()
        .copied()
        .unwrap_or(10)
        .clamp(1, total.max(1));
    let status_url = args.status_url.clone().or_else(|| status_url_for(&args.ws));
    if let Some(url) = &status_url {
        if let Err(e) = tasks_of(url).await {
            eprintln!("[soak] no task count: {e:#}");
        }
    }
    let status_url = status_url.as_deref();
    let baseline = holdings(args.bridge_pid, status_url).await;
    eprintln!(
        "[soak] {total} calls, {concurrency} at a time, {:?} each; baseline {}",
        args.duration,
        baseline.line()
    );

    let next = Arc::new(AtomicUsize::new(0));
    // Calls start no faster than --rate.
    let pace = Arc::new(Mutex::new(Instant::now()));
    let (done_tx, mut done) = mpsc::unbounded_channel::<Outcome>();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let next = Arc::clone(&next);
        let pace = Arc::clone(&pace);
        let plan = Arc::clone(&plan);
        let done_tx = done_tx.clone();
        let ws = args.ws.clone();
        let appid = args.appid.clone();
        let callee = args.callee.clone();
        let prefix = args.uid_prefix.clone();
        let secret = args.token_secret.clone();
        let hold = args.duration;
        let gap = Duration::from_secs_f64(1.0 / args.rate.max(0.001));
        workers.push(tokio::spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= total {
                    break;
                }
                let start_at = {
                    let mut p = pace.lock().unwrap_or_else(|e| e.into_inner());
                    let at = (*p).max(Instant::now());
                    *p = at + gap;
                    at
                };
                tokio::time::sleep_until(start_at).await;
                let uid = format!("{prefix}soak{k}");
                let token = secret.as_deref().map(|s| {
                    let expiry = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs() + 3600)
                        .unwrap_or(u64::MAX);
                    mint_token(s, &uid, expiry)
                });
                let outcome = one_call(&ws, &appid, &uid, token, &callee, &plan, hold).await;
                if done_tx.send(outcome).is_err() {
                    break;
                }
            }
        }));
    }
    drop(done_tx);

    let started = Instant::now();
    let cpu_from = args.bridge_pid.and_then(|pid| procfs::sample(pid).ok());
    let mut peak = baseline;
    let (mut completed, mut failed) = (0usize, 0usize);
    let mut failures = BTreeSet::new();
    let (mut setups, mut accepted) = (Vec::new(), Vec::new());
    let mut progress = tokio::time::interval(Duration::from_secs(1));
    let mut last = (Instant::now(), 0usize);
    loop {
        tokio::select! {
            outcome = done.recv() => {
                let Some(outcome) = outcome else { break };
                match outcome.result {
                    Ok(()) => completed += 1,
                    Err(reason) => {
                        failed += 1;
                        if failures.len() < 8 {
                            failures.insert(reason);
                        }
                    }
                }
                if let Some(s) = outcome.setup {
                    setups.push(s.as_secs_f64() * 1000.0);
                }
                if let Some(a) = outcome.accepted {
                    accepted.push(a.as_secs_f64() * 1000.0);
                }
            }
            _ = progress.tick() => {
                let now = holdings(args.bridge_pid, status_url).await;
                peak = peak.max(now);
                let finished = completed + failed;
                let rate = (finished - last.1) as f64 / last.0.elapsed().as_secs_f64().max(0.001);
                last = (Instant::now(), finished);
                eprintln!("[soak] {finished}/{total} done ({rate:.1}/s), {failed} failed; {}", now.line());
            }
        }
    }
    for w in workers {
        let _ = w.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_to = args.bridge_pid.and_then(|pid| procfs::sample(pid).ok());
    let (cpu_ms_per_call, cpu_percent) = match (&cpu_from, &cpu_to) {
        (Some(from), Some(to)) => (
            Some(procfs::cpu_seconds(from, to) * 1000.0 / (completed + failed).max(1) as f64),
            Some(procfs::cpu_percent(from, to)),
        ),
        _ => (None, None),
    };
    eprintln!(
        "[soak] {completed} completed, {failed} failed in {elapsed:.1} s; settling {:?}",
        args.soak_settle
    );
    tokio::time::sleep(args.soak_settle).await;
    let after = holdings(args.bridge_pid, status_url).await;
    Ok(SoakReport {
        calls: total,
        concurrency,
        hold_s: args.duration.as_secs_f64(),
        completed,
        failed,
        failures: failures.into_iter().collect(),
        elapsed_s: elapsed,
        calls_per_sec: (completed + failed) as f64 / elapsed.max(0.001),
        cpu_ms_per_call,
        cpu_percent,
        setup_ms: Percentiles::of(&setups),
        accepted_ms: Percentiles::of(&accepted),
        baseline,
        peak,
        after,
        settle_s: args.soak_settle.as_secs_f64(),
    })
}

/// One user: logs in, calls `callee`, holds the call up for `hold`, hangs up, closes the tab.
async fn one_call(
    ws: &str,
    appid: &str,
    uid: &str,
    token: Option<String>,
    callee: &str,
    plan: &Arc<CallPlan>,
    hold: Duration,
) -> Outcome {
    let failed = |reason: String| Outcome {
        result: Err(reason),
        setup: None,
        accepted: None,
    };
    let session = match HubSession::login(ws, appid, uid, token, Duration::from_secs(10)).await {
        Ok(s) => s,
        Err(e) => return failed(format!("login: {e:#}")),
    };
    let (news_tx, mut news) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let call = tokio::spawn(run_call(
        session,
        Role::Caller {
            callee: callee.to_string(),
        },
        Arc::clone(plan),
        Arc::new(CallProbe::default()),
        Instant::now(),
        news_tx,
        stop_rx,
    ));
    let deadline = Instant::now() + plan.setup_timeout + hold + CALL_GRACE;
    let mut outcome = failed("ended before it was up".to_string());
    match tokio::time::timeout_at(deadline, news.recv()).await {
        Ok(Some(CallNews::Up { setup, accepted })) => {
            outcome = Outcome {
                result: Ok(()),
                setup,
                accepted,
            };
            // Up: hold, unless the call ends early.
            if let Ok(Some(CallNews::Failed { reason, .. })) =
                tokio::time::timeout(hold, news.recv()).await
            {
                outcome.result = Err(format!("dropped: {reason}"));
            }
        }
        Ok(Some(CallNews::Failed { reason, .. })) => outcome = failed(reason),
        Ok(None) => {}
        Err(_) => outcome = failed("stuck".to_string()),
    }
    let _ = stop_tx.send(true);
    if tokio::time::timeout(CALL_GRACE, call).await.is_err() {
        outcome.result = Err("did not hang up".to_string());
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_url_is_the_hubs_listener() {
        assert_eq!(
            status_url_for("ws://127.0.0.1:8080/ws").as_deref(),
            Some("http://127.0.0.1:8080/api/status")
        );
        assert_eq!(status_url_for("wss://bridge.example/ws"), None);
    }

    #[test]
    fn the_peak_keeps_the_highest_of_each_figure() {
        let a = Holdings {
            rss_kb: Some(10),
            fds: Some(5),
            threads: None,
            tasks: Some(3),
        };
        let b = Holdings {
            rss_kb: Some(8),
            fds: Some(9),
            threads: Some(2),
            tasks: None,
        };
        assert_eq!(
            a.max(b),
            Holdings {
                rss_kb: Some(10),
                fds: Some(9),
                threads: Some(2),
                tasks: Some(3),
            }
        );
    }
}
