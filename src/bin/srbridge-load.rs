//! `srbridge-load`: a load generator for srbridge (web→SIP and SIP→web calls with WebRTC media),
//! measuring the bridge's CPU, memory, loss, jitter and setup times. `srbridge-load --help`.

#[path = "../load/mod.rs"]
mod load;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = load::cli::Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("srbridge-load: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(load::run(args)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("srbridge-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}
