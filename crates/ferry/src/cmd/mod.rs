//! One module per subcommand; `dispatch` routes to them.

pub mod backup;
pub mod capture;
pub mod cutover;
pub mod demo;
pub mod log;
pub mod restore;
pub mod run;
pub mod sample_app;
pub mod ship;
pub mod snapshot;
pub mod status;
pub mod verify;

use crate::cli::{Cli, Command, GlobalArgs, LogFormat, SampleAppArgs};
use std::process::ExitCode;

pub fn init_tracing(g: &GlobalArgs) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&g.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match g.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(a) => run::run(a),
        Command::Capture(a) => capture::run(a),
        Command::Ship(a) => ship::run(a),
        Command::Snapshot(a) => snapshot::run(a),
        Command::Status(a) => status::run(a),
        Command::Verify(a) => verify::run(a),
        Command::Cutover(a) => cutover::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Log(crate::cli::LogCommand::Inspect(a)) => log::inspect(a),
        Command::Log(crate::cli::LogCommand::Verify(a)) => log::verify(a),
        Command::Backup(crate::cli::BackupCommand::List(a)) => backup::list(a),
        Command::Backup(crate::cli::BackupCommand::Now(a)) => backup::now(a),
        Command::Restore(a) => restore::run(a),
        Command::SampleApp(a) => run_sample_app(a),
    }
}

fn run_sample_app(a: SampleAppArgs) -> anyhow::Result<ExitCode> {
    if a.prepare_only {
        sample_app::prepare(&a.db, a.initial_users)?;
        return Ok(ExitCode::SUCCESS);
    }
    let stop = crate::signals::stop_flag();
    let opts = sample_app::SampleAppOptions {
        rate: a.rate,
        duration: a.seconds.map(std::time::Duration::from_secs_f64),
        initial_users: a.initial_users,
        seed: a.seed,
        checkpoint_every: a.checkpoint_every,
        checkpoint_mode: a.checkpoint_mode.to_ascii_uppercase(),
        switch_to: a
            .switch_to
            .map(|url| (url, a.switch_schema, crate::signals::switch_flag())),
    };
    let summary = sample_app::run(&a.db, &opts, stop)?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(ExitCode::SUCCESS)
}
