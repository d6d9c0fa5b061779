//! The command line. Every option that the config file also knows can come from a flag or a
//! `FERRY_…` environment variable.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "ferry",
    version,
    about = "Move an application's embedded database (SQLite, sled) into PostgreSQL while it keeps running",
    long_about = "ferry captures every change of an application's SQLite database into a durable local log, replays the log continuously into PostgreSQL, proves both sides hold the same rows, and cuts over with less than a second of write pause.\n\nStart with `ferry demo`."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "FERRY_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log filter (tracing env-filter syntax), e.g. `info` or `ferry=debug`.
    #[arg(
        long,
        global = true,
        default_value = "info,tokio_postgres=warn",
        env = "FERRY_LOG"
    )]
    pub log: String,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Capture and ship in one process, for one or many sources (the operator's main command).
    Run(RunArgs),
    /// Tail a SQLite database into the durable log (no shipping).
    Capture(CaptureArgs),
    /// Replay a state directory's log into PostgreSQL.
    Ship(ShipArgs),
    /// One-shot copy of a SQLite database into PostgreSQL (what pgloader does), without the log.
    Snapshot(SnapshotArgs),
    /// Show what each source is doing: captured and shipped positions, lag, errors.
    Status(StatusArgs),
    /// Prove row by row that PostgreSQL holds what SQLite holds. Exit 0 equal, 1 different, 2 error.
    Verify(VerifyArgs),
    /// Switch the application over to PostgreSQL with a sub-second write pause.
    Cutover(CutoverArgs),
    /// Watch a live application replicate into a throwaway PostgreSQL and cut over.
    Demo(DemoArgs),
    /// Inspect and check a durable log.
    #[command(subcommand)]
    Log(LogCommand),
    /// Backups: take one now, list what the archive holds.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Rebuild a database (SQLite or PostgreSQL) as it was at a point in time.
    Restore(RestoreArgs),
    /// A sample application that keeps writing to a SQLite database (used by the demo and tests).
    #[command(hide = true)]
    SampleApp(SampleAppArgs),
}

#[derive(Args, Debug)]
pub struct SampleAppArgs {
    #[arg(long)]
    pub db: PathBuf,
    /// Transactions per second (0: as fast as possible).
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    /// Stop after this many seconds (default: until SIGTERM/SIGINT).
    #[arg(long)]
    pub seconds: Option<f64>,
    #[arg(long, default_value_t = 1000)]
    pub initial_users: u64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Only create the schema and initial data, then exit.
    #[arg(long)]
    pub prepare_only: bool,
    /// Run `PRAGMA wal_checkpoint(<mode>)` after every N commits (0: only SQLite's own
    /// automatic checkpoints), the way some applications checkpoint themselves.
    #[arg(long, default_value_t = 0)]
    pub checkpoint_every: u64,
    /// The mode of those checkpoints: passive, full, restart or truncate.
    #[arg(long, default_value = "truncate", value_parser = ["passive", "full", "restart", "truncate"])]
    pub checkpoint_mode: String,
    /// On SIGUSR1, move to this PostgreSQL (what a cutover's `--then` does to a real
    /// application) and keep writing there; the stall then lasts from the first write SQLite
    /// held up to the first commit on PostgreSQL.
    #[arg(long)]
    pub switch_to: Option<String>,
    /// The schema of the application's tables on PostgreSQL.
    #[arg(long, default_value = "public", requires = "switch_to")]
    pub switch_schema: String,
}

#[derive(Args, Debug, Clone)]
pub struct StateDirArg {
    /// The state directory (positional form).
    #[arg(value_name = "STATE_DIR", conflicts_with = "state_dir")]
    pub state_dir_pos: Option<PathBuf>,
    /// The state directory.
    #[arg(long = "state-dir", env = "FERRY_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

impl StateDirArg {
    pub fn get(&self) -> anyhow::Result<PathBuf> {
        self.state_dir_pos
            .clone()
            .or_else(|| self.state_dir.clone())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no state directory given: pass it as an argument or with --state-dir"
                )
            })
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum TargetModeArg {
    Create,
    Existing,
}

#[derive(Args, Debug, Clone)]
pub struct TargetArgs {
    /// PostgreSQL URL or libpq key=value string (libpq environment variables and ~/.pgpass apply).
    #[arg(long, env = "FERRY_TARGET")]
    pub target: Option<String>,
    /// Target schema.
    #[arg(long, env = "FERRY_SCHEMA", default_value = "public")]
    pub schema: String,
    /// Prefix for every table name in PostgreSQL.
    #[arg(long, env = "FERRY_TABLE_PREFIX", default_value = "")]
    pub table_prefix: String,
    /// `create`: ferry creates the tables; `existing`: the application created its own schema.
    #[arg(long, value_enum, env = "FERRY_MODE", default_value_t = TargetModeArg::Create)]
    pub mode: TargetModeArg,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The SQLite database to capture (quick form; use --config for several sources).
    #[arg(long, env = "FERRY_SOURCE")]
    pub source: Option<PathBuf>,
    #[command(flatten)]
    pub target: TargetArgs,
    #[arg(long, env = "FERRY_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// TOML configuration with one or more `[[source]]` entries.
    #[arg(long, env = "FERRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Read-only admin HTTP endpoint (status, health, metrics).
    #[arg(long, env = "FERRY_ADMIN_ADDR")]
    pub admin_addr: Option<String>,
    /// Archive base backups and sealed log segments here, for point-in-time restore
    /// (overrides `[archive] dir`).
    #[arg(long, env = "FERRY_ARCHIVE_DIR")]
    pub archive_dir: Option<PathBuf>,
    /// Take a base backup this often, e.g. "6h" (overrides `[archive] base_interval`).
    #[arg(long, env = "FERRY_BASE_INTERVAL", requires = "archive_dir")]
    pub base_interval: Option<String>,
    /// A file holding PostgreSQL's password (overrides `[target] password_file`).
    #[arg(long, env = "FERRY_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CaptureArgs {
    /// The SQLite database to capture.
    #[arg(long, env = "FERRY_SOURCE")]
    pub source: PathBuf,
    #[arg(long, env = "FERRY_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Source id (default: the database file's stem).
    #[arg(long)]
    pub source_id: Option<String>,
    /// Capture the initial snapshot (first run) and everything committed so far, then exit.
    #[arg(long)]
    pub once: bool,
    /// Archive base backups and sealed log segments here, for point-in-time restore (as
    /// `ferry run --archive-dir`).
    #[arg(long, env = "FERRY_ARCHIVE_DIR")]
    pub archive_dir: Option<PathBuf>,
    /// Take a base backup this often, e.g. "6h".
    #[arg(long, env = "FERRY_BASE_INTERVAL", requires = "archive_dir")]
    pub base_interval: Option<String>,
}

#[derive(Args, Debug)]
pub struct ShipArgs {
    #[arg(long, env = "FERRY_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Which source of the state directory (default: its only source).
    #[arg(long)]
    pub source_id: Option<String>,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Apply until caught up with the log's end, then exit.
    #[arg(long)]
    pub once: bool,
}

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    #[arg(long)]
    pub source: PathBuf,
    #[command(flatten)]
    pub target: TargetArgs,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub state_dir: StateDirArg,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[arg(long)]
    pub source: PathBuf,
    #[command(flatten)]
    pub target: TargetArgs,
    /// State directory of a `ferry run` replicating this source: verify then compares at a
    /// consistent position while the application writes.
    #[arg(long, env = "FERRY_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Which source of the state directory this database is (default: its only source).
    #[arg(long, requires = "state_dir")]
    pub source_id: Option<String>,
    /// Compare only these tables (repeatable or comma-separated; the source's `include`).
    #[arg(long, value_delimiter = ',')]
    pub include: Vec<String>,
    /// Leave these tables out (repeatable or comma-separated; the source's `exclude`).
    #[arg(long, value_delimiter = ',')]
    pub exclude: Vec<String>,
}

#[derive(Args, Debug)]
pub struct CutoverArgs {
    #[arg(long, env = "FERRY_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Command that switches the application to PostgreSQL, run while the fence is held.
    #[arg(long)]
    pub then: Option<String>,
    /// Verify every row under the fence, not only what changed since the pre-fence verify.
    #[arg(long)]
    pub full: bool,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Leave everything running at the end and print how to connect.
    #[arg(long)]
    pub keep: bool,
    /// How long the sample application writes before the cutover, in seconds.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
}

#[derive(Subcommand, Debug)]
pub enum LogCommand {
    /// Print the records of a log (a table, or one JSON object per line with --json).
    Inspect(LogInspectArgs),
    /// Check every CRC of a log; exit 2 on corruption.
    Verify(LogVerifyArgs),
}

#[derive(Args, Debug)]
pub struct LogInspectArgs {
    #[command(flatten)]
    pub state_dir: StateDirArg,
    /// Which source (default: the only one).
    #[arg(long)]
    pub source_id: Option<String>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// First LSN to print.
    #[arg(long, default_value_t = 1)]
    pub from: u64,
    /// Print at most this many records.
    #[arg(long)]
    pub limit: Option<u64>,
}

#[derive(Args, Debug)]
pub struct LogVerifyArgs {
    #[command(flatten)]
    pub state_dir: StateDirArg,
    #[arg(long)]
    pub source_id: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum BackupCommand {
    /// Take a base snapshot now (asks the running process).
    Now(BackupNowArgs),
    /// List base snapshots and the restorable time range.
    List(BackupListArgs),
}

#[derive(Args, Debug)]
pub struct BackupNowArgs {
    #[arg(long, env = "FERRY_STATE_DIR")]
    pub state_dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct BackupListArgs {
    #[arg(long, env = "FERRY_ARCHIVE_DIR")]
    pub archive_dir: PathBuf,
    /// Only this source (default: every source in the archive).
    #[arg(long)]
    pub source_id: Option<String>,
    /// PostgreSQL target: show which archived LSN it reflects (from `ferry.progress`).
    #[arg(long, env = "FERRY_TARGET")]
    pub target: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    #[arg(long, env = "FERRY_ARCHIVE_DIR")]
    pub archive_dir: PathBuf,
    #[arg(long, conflicts_with_all = ["to_time", "latest"])]
    pub to_lsn: Option<u64>,
    #[arg(long, conflicts_with_all = ["to_lsn", "latest"])]
    pub to_time: Option<String>,
    #[arg(long)]
    pub latest: bool,
    /// Rebuild a SQLite database file.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Rebuild into PostgreSQL.
    #[arg(long)]
    pub target: Option<String>,
    #[arg(long, default_value = "public")]
    pub schema: String,
    /// The archived source to restore (needed when the archive holds several).
    #[arg(long)]
    pub source_id: Option<String>,
    /// Print what the restore did as one JSON object (duration, bytes, records).
    #[arg(long)]
    pub json: bool,
    /// Also write the restore's metrics to this file in the Prometheus text format (for the
    /// node exporter's textfile collector), replacing it atomically.
    #[arg(long)]
    pub metrics_file: Option<PathBuf>,
}
