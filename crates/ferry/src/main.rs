//! The `ferry` binary: parses the command line, sets up logging, and hands each subcommand
//! to its module in `cmd/`. It owns no algorithm: capture, the log, shipping and comparison
//! live in the library crates.
//!
//! Exit codes: 0 success; 1 only where a command defines it (`verify`: "different"); 2 for
//! every error.

mod admin;
mod archiving;
mod cli;
mod cmd;
mod config;
mod control;
mod cutover;
mod cutover_mark;
mod fence;
mod load_bar;
mod logview;
mod metrics;
mod pipeline;
mod runfile;
mod signals;
mod sqlite_read;
mod status;
mod verify_progress;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    cmd::init_tracing(&cli.global);
    let json_logs = cli.global.log_format == cli::LogFormat::Json;
    match cmd::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            // With JSON logs every stderr line is a JSON object, the final error included.
            if json_logs {
                tracing::error!(error = %format!("{e:#}"), "ferry stopped");
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::from(2)
        }
    }
}
