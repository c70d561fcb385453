//! One step of a run: N users log in, N calls come up in one direction, the bridge is measured
//! while they run, then everything hangs up.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use srbridge::media::webrtc_leg::LegCodec;
use srbridge::ops::Direction;
use srbridge::signal::mint_token;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::call::{run_call, CallNews, CallPlan, CallProbe, Role};
use super::cli::Args;
use super::hub::HubSession;
use super::procfs::{self, ProcSample};
use super::report::{BridgeCost, StepReport};
use super::rtpengine::{self, RtpenginePlan};
use super::sipp::SippSettings;
use super::stats::{Histogram, Percentiles, ReceiveStats};

/// Logins in flight at once.
const PARALLEL_LOGINS: usize = 32;
/// Returned audio above this level counts as "the tone came back".
const AUDIO_DBFS: f64 = -30.0;
/// How long hung-up calls get to finish their tasks.
const HANGUP_WAIT: Duration = Duration::from_secs(15);

/// What carries the calls.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// srbridge: hub sessions, invitations, SIP through the PBX.
    Bridge,
    /// rtpengine, signalled by the tool over ng.
    Rtpengine(RtpenginePlan),
}

/// Everything a step needs from the run.
pub struct StepContext<'a> {
    pub args: &'a Args,
    pub target: Target,
    pub plan: Arc<CallPlan>,
    pub sipp: &'a SippSettings,
    pub step_no: usize,
}

fn sample_bridge(pid: Option<u32>) -> Option<ProcSample> {
    pid.and_then(|pid| procfs::sample(pid).ok())
}

fn sample_self() -> Option<ProcSample> {
    procfs::sample(std::process::id()).ok()
}

/// Runs one step of `n` calls in `direction`.
pub async fn run_step(
    ctx: &StepContext<'_>,
    direction: Direction,
    n: usize,
) -> anyhow::Result<StepReport> {
    let args = ctx.args;
    let label = direction.label();
    let baseline = sample_bridge(args.bridge_pid);

    let mut failures = BTreeSet::new();
    let sessions = match ctx.target {
        Target::Bridge => log_in(ctx, direction, n, &mut failures).await?,
        Target::Rtpengine(_) => Vec::new(),
    };
    let logged_in = sample_bridge(args.bridge_pid);

    // Calls.
    let (news_tx, mut news) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let probes: Vec<Arc<CallProbe>> = (0..n).map(|_| Arc::new(CallProbe::default())).collect();
    let ramp_cpu_start = sample_bridge(args.bridge_pid);
    let ramp_start = Instant::now();
    let start_at = |k: usize| ramp_start + Duration::from_secs_f64(k as f64 / args.rate.max(0.001));
    let mut tasks = Vec::new();
    let mut uac = None;
    match ctx.target {
        Target::Bridge => {
            let uids: Vec<String> = sessions.iter().map(|(_, uid, _)| uid.clone()).collect();
            for (k, (i, _, session)) in sessions.into_iter().enumerate() {
                let role = match direction {
                    Direction::WebToSip => Role::Caller {
                        callee: args.callee.clone(),
                    },
                    Direction::SipToWeb => Role::Callee,
                };
                tasks.push(tokio::spawn(run_call(
                    session,
                    role,
                    Arc::clone(&ctx.plan),
                    Arc::clone(&probes[i]),
                    start_at(k),
                    news_tx.clone(),
                    stop_rx.clone(),
                )));
            }
            if direction == Direction::SipToWeb && !uids.is_empty() {
                uac = Some(ctx.sipp.dial_web_users(&args.caller, &uids, args.rate)?);
            }
        }
        Target::Rtpengine(peer) => {
            for (k, probe) in probes.iter().enumerate() {
                tasks.push(tokio::spawn(rtpengine::call::run_call(
                    peer,
                    direction,
                    Arc::clone(&ctx.plan),
                    Arc::clone(probe),
                    start_at(k),
                    news_tx.clone(),
                    stop_rx.clone(),
                )));
            }
        }
    }
    drop(news_tx);
    let expected_calls = tasks.len();

    // Ramp: wait until every call is up or failed.
    let ramp_limit = ramp_start
        + Duration::from_secs_f64(n as f64 / args.rate.max(0.001))
        + args.setup_timeout
        + Duration::from_secs(5);
    let mut tally = Tally::new(ramp_start);
    let mut progress = tokio::time::interval(Duration::from_secs(1));
    let mut last_sample = sample_bridge(args.bridge_pid);
    while tally.settled() < expected_calls && Instant::now() < ramp_limit {
        tokio::select! {
            item = news.recv() => match item {
                Some(item) => tally.apply(item),
                None => break,
            },
            _ = progress.tick() => {
                let now = sample_bridge(args.bridge_pid);
                eprintln!("[{label} {n}] ramp: up {}, failed {}{}", tally.up, tally.failed + tally.dropped, cost_line(last_sample.as_ref(), now.as_ref()));
                last_sample = now;
            }
        }
    }
    let setups_per_sec = tally.setups_per_sec(ramp_start);
    // The bridge's CPU while the calls came up, per call up (the media of the calls already up
    // is in it too): 2 ms per setup is 500 setups/s on a core.
    let cpu_ms_per_setup = match (ramp_cpu_start, sample_bridge(args.bridge_pid)) {
        (Some(a), Some(b)) if tally.up > 0 => {
            Some(procfs::cpu_seconds(&a, &b) * 1000.0 / tally.up as f64)
        }
        _ => None,
    };
    eprintln!(
        "[{label} {n}] {} calls up ({setups_per_sec:.1}/s, bridge CPU {} ms per setup), {} failed; settling",
        tally.up,
        cpu_ms_per_setup.map_or("-".to_string(), |c| format!("{c:.2}")),
        n - tally.up
    );

    // Measurement window.
    tokio::time::sleep(args.settle).await;
    for p in &probes {
        if let Ok(mut r) = p.received.lock() {
            *r = ReceiveStats::default();
        }
        p.sent.store(0, Ordering::Relaxed);
        if let Ok(mut e) = p.echo.lock() {
            e.reset_round_trips();
        }
    }
    let tags_at_start: Vec<u32> = probes
        .iter()
        .map(|p| p.tagged.load(Ordering::Relaxed))
        .collect();
    let pinned = args.bridge_pid.and_then(procfs::pinned_cpu);
    let core_start = pinned.and_then(procfs::sample_cpu_busy);
    let window_start_bridge = sample_bridge(args.bridge_pid);
    let window_start_self = sample_self();
    let window_start = Instant::now();
    let mut peak = window_start_bridge;
    let window_end = window_start + args.duration;
    let mut last_sample = window_start_bridge;
    let mut ticker = tokio::time::interval_at(
        window_start + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(window_end) => break,
            _ = ticker.tick() => {
                let now = sample_bridge(args.bridge_pid);
                if let (Some(p), Some(s)) = (peak.as_mut(), now.as_ref()) {
                    p.rss_kb = p.rss_kb.max(s.rss_kb);
                    p.threads = p.threads.max(s.threads);
                    p.fds = p.fds.max(s.fds);
                }
                tally.drain(&mut news);
                eprintln!(
                    "[{label} {n}] measuring {:>3.0}/{:.0}s: up {}{}",
                    window_start.elapsed().as_secs_f64(),
                    args.duration.as_secs_f64(),
                    tally.up,
                    cost_line(last_sample.as_ref(), now.as_ref())
                );
                last_sample = now;
            }
        }
    }
    let window_end_bridge = sample_bridge(args.bridge_pid);
    let core_end = pinned.and_then(procfs::sample_cpu_busy);
    let window_end_self = sample_self();
    let window = window_start.elapsed().as_secs_f64();
    tally.drain(&mut news);
    let calls_up = tally.up;

    // What the browsers received in the window.
    let mut round_trips = Histogram::default();
    let (mut echo_sent, mut echo_returned) = (0u64, 0u64);
    for (p, from) in probes.iter().zip(&tags_at_start) {
        // The last 0.5 s may still be on its way.
        let to = p
            .tagged
            .load(Ordering::Relaxed)
            .saturating_sub(25)
            .max(*from);
        if let Ok(e) = p.echo.lock() {
            echo_sent += u64::from(to - from);
            echo_returned += e.returned(*from, to);
            round_trips.merge(e.round_trips());
        }
    }
    let tagged = ctx.plan.replay.tagged() && echo_sent > 0;
    let mut jitter = Histogram::default();
    let (mut sent, mut received, mut lost, mut with_audio) = (0u64, 0u64, 0u64, 0usize);
    for p in &probes {
        sent += p.sent.load(Ordering::Relaxed);
        if let Ok(r) = p.received.lock() {
            received += r.received();
            lost += r.lost();
            jitter.merge(r.jitter());
            if r.level_dbfs() > AUDIO_DBFS {
                with_audio += 1;
            }
        }
    }

    // Hang up.
    let _ = stop_tx.send(true);
    let hangup_deadline = Instant::now() + HANGUP_WAIT;
    for t in tasks {
        let _ = tokio::time::timeout_at(hangup_deadline, t).await;
    }
    let mut setup_ms = Percentiles::of(&tally.setups_ms);
    failures.extend(tally.reasons.iter().cloned());
    if let Some(mut uac) = uac {
        match uac.wait(HANGUP_WAIT).await {
            Some(0) => {}
            code => {
                failures.insert(format!("SIPp UAC exit {code:?}: {}", uac.errors().trim()));
            }
        }
        setup_ms = Percentiles::of(&uac.response_times_ms());
    }
    tokio::time::sleep(args.cooldown).await;
    let after = sample_bridge(args.bridge_pid);

    let bridge = match (
        baseline,
        logged_in,
        window_start_bridge,
        window_end_bridge,
        peak,
        after,
    ) {
        (Some(b), Some(l), Some(ws), Some(we), Some(p), Some(a)) => {
            let cpu_s = procfs::cpu_seconds(&ws, &we);
            Some(BridgeCost {
                cpu_percent: procfs::cpu_percent(&ws, &we),
                pinned_cpu: pinned,
                pinned_cpu_busy_percent: core_start.zip(core_end).map(|(a, b)| {
                    b.saturating_sub(a) as f64 * 100.0
                        / procfs::ticks_per_second() as f64
                        / window.max(0.001)
                }),
                cpu_ms_per_call_second: if calls_up > 0 {
                    cpu_s * 1000.0 / (calls_up as f64 * window)
                } else {
                    0.0
                },
                rss_baseline_kb: b.rss_kb,
                rss_sessions_kb: l.rss_kb,
                rss_peak_kb: p.rss_kb.max(we.rss_kb),
                rss_after_kb: a.rss_kb,
                rss_per_session_kb: l.rss_kb.saturating_sub(b.rss_kb) as f64 / n.max(1) as f64,
                rss_per_call_kb: p.rss_kb.max(we.rss_kb).saturating_sub(l.rss_kb) as f64
                    / calls_up.max(1) as f64,
                threads_baseline: b.threads,
                threads_peak: p.threads,
                threads_after: a.threads,
                fds_baseline: b.fds,
                fds_peak: p.fds,
                fds_after: a.fds,
            })
        }
        _ => None,
    };
    let tool_cpu_percent = match (window_start_self, window_end_self) {
        (Some(a), Some(b)) => procfs::cpu_percent(&a, &b),
        _ => 0.0,
    };
    let expected = received + lost;
    let nominal = (calls_up as f64 * 50.0 * window).round() as u64;
    Ok(StepReport {
        peer: args.peer,
        direction,
        codec: match ctx.plan.replay.offered().first() {
            Some(LegCodec::Pcmu) => "pcmu",
            _ => "opus",
        },
        calls: n,
        calls_up,
        calls_failed: n - calls_up - tally.dropped,
        calls_dropped: tally.dropped,
        failures: failures.into_iter().collect(),
        window_s: window,
        bridge,
        tool_cpu_percent,
        packets_sent: sent,
        packets_received: received,
        packets_nominal: nominal,
        missing_percent: if nominal > 0 {
            nominal.saturating_sub(received) as f64 * 100.0 / nominal as f64
        } else {
            100.0
        },
        packets_lost: lost,
        seq_gap_loss_percent: if expected > 0 {
            lost as f64 * 100.0 / expected as f64
        } else {
            100.0
        },
        jitter_samples: jitter.count(),
        jitter_p50_ms: jitter.quantile(0.5),
        jitter_p99_ms: jitter.quantile(0.99),
        echo_packets: tagged.then_some(echo_sent),
        echo_loss_percent: tagged
            .then(|| echo_sent.saturating_sub(echo_returned) as f64 * 100.0 / echo_sent as f64),
        echo_round_trip_p50_ms: round_trips.quantile(0.5).filter(|_| tagged),
        echo_round_trip_p99_ms: round_trips.quantile(0.99).filter(|_| tagged),
        calls_with_audio: with_audio,
        setup_ms,
        accepted_ms: Percentiles::of(&tally.accepted_ms),
        setups_per_sec,
        cpu_ms_per_setup,
    })
}

/// Logs in the step's `n` users (their sessions are not part of the setup times): `(call index,
/// uid, session)` of those who could; the others' reasons go to `failures`.
async fn log_in(
    ctx: &StepContext<'_>,
    direction: Direction,
    n: usize,
    failures: &mut BTreeSet<String>,
) -> anyhow::Result<Vec<(usize, String, HubSession)>> {
    let args = ctx.args;
    let tag = match direction {
        Direction::WebToSip => 'w',
        Direction::SipToWeb => 's',
    };
    let uids: Vec<String> = (0..n)
        .map(|i| format!("{}{tag}{}x{i}", args.uid_prefix, ctx.step_no))
        .collect();
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() + 86_400)
        .unwrap_or(u64::MAX);
    let logins: Vec<anyhow::Result<HubSession>> = futures::stream::iter(uids.iter().map(|uid| {
        let token = args
            .token_secret
            .as_deref()
            .map(|secret| mint_token(secret, uid, expiry));
        HubSession::login(&args.ws, &args.appid, uid, token, Duration::from_secs(10))
    }))
    .buffered(PARALLEL_LOGINS)
    .collect()
    .await;
    let mut sessions = Vec::new();
    for (i, (login, uid)) in logins.into_iter().zip(uids).enumerate() {
        match login {
            Ok(s) => sessions.push((i, uid, s)),
            Err(e) => {
                failures.insert(format!("login: {e:#}"));
            }
        }
    }
    if sessions.is_empty() && n > 0 {
        let why = failures.iter().next().cloned().unwrap_or_default();
        anyhow::bail!("no user could log in to {}: {why}", args.ws);
    }
    eprintln!(
        "[{} {n}] {} users logged in",
        direction.label(),
        sessions.len()
    );
    Ok(sessions)
}

/// ", bridge 43.0% CPU, RSS 120.3 MB" between two samples.
fn cost_line(from: Option<&ProcSample>, to: Option<&ProcSample>) -> String {
    match (from, to) {
        (Some(a), Some(b)) => format!(
            ", bridge {:.1}% CPU, RSS {:.1} MB, {} threads, {} fds",
            procfs::cpu_percent(a, b),
            b.rss_kb as f64 / 1024.0,
            b.threads,
            b.fds
        ),
        _ => String::new(),
    }
}

/// Calls up, failed and dropped so far, from the calls' news.
struct Tally {
    up: usize,
    failed: usize,
    dropped: usize,
    setups_ms: Vec<f64>,
    accepted_ms: Vec<f64>,
    last_up: Instant,
    reasons: BTreeSet<String>,
}

impl Tally {
    fn new(start: Instant) -> Tally {
        Tally {
            up: 0,
            failed: 0,
            dropped: 0,
            setups_ms: Vec::new(),
            accepted_ms: Vec::new(),
            last_up: start,
            reasons: BTreeSet::new(),
        }
    }

    fn apply(&mut self, news: CallNews) {
        match news {
            CallNews::Up { setup, accepted } => {
                self.up += 1;
                self.last_up = Instant::now();
                if let Some(s) = setup {
                    self.setups_ms.push(s.as_secs_f64() * 1000.0);
                }
                if let Some(a) = accepted {
                    self.accepted_ms.push(a.as_secs_f64() * 1000.0);
                }
            }
            CallNews::Failed { was_up, reason, .. } => {
                if was_up {
                    self.up -= 1;
                    self.dropped += 1;
                } else {
                    self.failed += 1;
                }
                if self.reasons.len() < 8 {
                    self.reasons.insert(reason);
                }
            }
        }
    }

    fn drain(&mut self, news: &mut mpsc::UnboundedReceiver<CallNews>) {
        while let Ok(item) = news.try_recv() {
            self.apply(item);
        }
    }

    /// Calls that are up, failed or dropped.
    fn settled(&self) -> usize {
        self.up + self.failed + self.dropped
    }

    /// Calls up per second from `start` to the last call up.
    fn setups_per_sec(&self, start: Instant) -> f64 {
        if self.up == 0 {
            return 0.0;
        }
        self.up as f64 / self.last_up.duration_since(start).as_secs_f64().max(0.001)
    }
}
