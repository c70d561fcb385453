//! `srbridge` command line: run the bridge with a config (like `./SRProxy rtx.conf`), or
//! check a config and print what it resolves to.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use srbridge::config::Config;

/// WebRTC-to-SIP bridge: browsers call SIP extensions, SIP phones reach browser users.
#[derive(Debug, Parser)]
#[command(
    name = "srbridge",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Config file to run with: SRProxy rtx.conf or srbridge .toml
    #[arg(value_name = "CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the bridge (same as `srbridge CONFIG`)
    Run {
        /// Config file: SRProxy rtx.conf or srbridge .toml
        #[arg(value_name = "CONFIG")]
        config: PathBuf,
    },
    /// Validate a config and print the resolved settings (secrets masked); exit 2 if invalid
    Check {
        /// Config file: SRProxy rtx.conf or srbridge .toml
        #[arg(value_name = "CONFIG")]
        config: PathBuf,
    },
}

/// Exit code for an invalid config (like `nginx -t` style tools: distinct from runtime failure).
const EXIT_BAD_CONFIG: u8 = 2;

fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("srbridge: {e}");
        ExitCode::from(EXIT_BAD_CONFIG)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (path, check_only) = match (cli.command, cli.config) {
        (Some(Command::Check { config }), _) => (config, true),
        (Some(Command::Run { config }), _) | (None, Some(config)) => (config, false),
        (None, None) => {
            eprintln!("srbridge: no config file given (try `srbridge --help`)");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let config = match load(&path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    if check_only {
        print!("{config}");
        println!("config OK");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("srbridge: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(srbridge::app::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("srbridge: {e:#}");
            ExitCode::FAILURE
        }
    }
}
