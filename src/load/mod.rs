//! `srbridge-load`: drives concurrent calls through a running bridge and measures it from
//! outside (see `cli.rs` for what a run does). Kept out of the bridge's own modules: it only
//! uses the library's public API, like any other client would.

pub mod call;
pub mod cli;
pub mod hub;
pub mod procfs;
pub mod report;
pub mod rtpengine;
pub mod sipp;
pub mod soak;
pub mod stats;
pub mod step;

use std::sync::Arc;

use anyhow::Context;
use srbridge::media::webrtc_leg::LegCodec;
use srbridge::ops::Direction;

use self::call::{CallPlan, Replay};
use self::cli::{Args, Peer};
use self::report::RunReport;
use self::rtpengine::{NgClient, RtpenginePlan};
use self::sipp::SippSettings;
use self::step::{run_step, StepContext, Target};

/// Runs every step of `args` (or the soak); prints the table and writes the JSON report.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let codec = if args.relay {
        LegCodec::Pcmu
    } else {
        LegCodec::Opus
    };
    let plan = Arc::new(CallPlan {
        local_ip: args.local_ip,
        replay: Replay::new(codec)?,
        setup_timeout: args.setup_timeout,
        epoch: tokio::time::Instant::now(),
        certificate: srbridge::media::webrtc_leg::dtls_certificate()?,
    });
    let sipp = SippSettings {
        sipp: args.sipp.clone(),
        pbx: args.pbx,
        local_ip: args.local_ip,
        password: args.sip_password.clone(),
    };
    let directions = args.direction.list();
    let mut echo = None;
    let target = match args.peer {
        Peer::Srbridge => {
            if directions.contains(&Direction::WebToSip) {
                eprintln!(
                    "registering SIPp's echo UAS as {} at {}",
                    args.callee, args.pbx
                );
                echo = Some(sipp.echo_uas(&args.callee).await?);
            }
            Target::Bridge
        }
        Peer::Rtpengine => {
            let ng = NgClient { addr: args.ng };
            ng.ping()
                .await
                .context("rtpengine's ng port (is rtpengine running? scripts/bench.sh PEER=rtpengine starts it)")?;
            let (uas, media) = sipp.echo_only().await?;
            eprintln!("rtpengine answers at {}; SIPp echoes at {media}", args.ng);
            echo = Some(uas);
            Target::Rtpengine(RtpenginePlan {
                ng,
                echo: media,
                transcode: !args.relay,
            })
        }
    };
    if let Some(total) = args.soak {
        if !matches!(target, Target::Bridge) || !directions.contains(&Direction::WebToSip) {
            anyhow::bail!("--soak makes web→SIP calls through srbridge (--peer srbridge, --direction web-to-sip)");
        }
        let report = soak::run_soak(&args, Arc::clone(&plan), total).await?;
        println!("{}", report.table());
        for f in &report.failures {
            eprintln!("  failure: {f}");
        }
        if let Some(path) = &args.json {
            let text = serde_json::to_string_pretty(&report)?;
            std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
        }
        return Ok(());
    }
    let mut report = RunReport {
        peer: args.peer,
        bridge_pid: args.bridge_pid,
        duration_s: args.duration.as_secs_f64(),
        rate: args.rate,
        relay: args.relay,
        steps: Vec::new(),
    };
    for (step_no, n) in args.calls.iter().copied().enumerate() {
        for direction in &directions {
            if let Some(uas) = echo.as_mut() {
                if !uas.is_running() {
                    anyhow::bail!("SIPp's echo UAS exited: {}", uas.output());
                }
            }
            let ctx = StepContext {
                args: &args,
                target,
                plan: Arc::clone(&plan),
                sipp: &sipp,
                step_no,
            };
            let step = run_step(&ctx, *direction, n).await?;
            eprintln!("{}", report::row(&step));
            for f in &step.failures {
                eprintln!("  failure: {f}");
            }
            report.steps.push(step);
            if let Some(path) = &args.json {
                write_json(path, &report)?;
            }
        }
    }
    println!("{}", report::table(&report.steps));
    Ok(())
}

fn write_json(path: &std::path::Path, report: &RunReport) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}
