//! `ferry.progress` and `ferry.table_progress`: what PostgreSQL has applied, committed in the
//! same transaction as the rows it covers. The layout is specified in `proto/progress.md`.
//!
//! Invariants:
//! - `progress.lsn` is the LSN of the last log record whose effect is in PostgreSQL; it only
//!   moves forward, and every advance is a compare-and-set on the previous value, so two
//!   shippers on one source cannot both advance it;
//! - a source's `log_id` never changes: a log with another id is refused;
//! - `table_progress.source_schema` is the SQLite schema of the table as of `progress.lsn`,
//!   so a restarted shipper knows the source columns without re-reading the snapshot.

use crate::error::PgError;
use ferry_core::{Lsn, TableSchema, UnixMicros};
use tokio_postgres::GenericClient;

/// The progress tables' format version (column `format_version`).
pub const PROGRESS_FORMAT_VERSION: i32 = 1;

pub const PROGRESS_DDL: &str = "
CREATE SCHEMA IF NOT EXISTS ferry;
CREATE TABLE IF NOT EXISTS ferry.progress (
    source_id          text PRIMARY KEY,
    log_id             text NOT NULL,
    lsn                bigint NOT NULL,
    source_position    text NOT NULL DEFAULT '',
    state              text NOT NULL,
    snapshot_begin_lsn bigint,
    snapshot_end_lsn   bigint,
    target_schema      text NOT NULL,
    table_prefix       text NOT NULL DEFAULT '',
    mode               text NOT NULL,
    captured_at        timestamptz,
    applied_at         timestamptz NOT NULL DEFAULT now(),
    cutover_at         timestamptz,
    format_version     integer NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS ferry.table_progress (
    source_id     text NOT NULL REFERENCES ferry.progress (source_id) ON DELETE CASCADE,
    source_table  text NOT NULL,
    target_schema text NOT NULL,
    target_table  text NOT NULL,
    state         text NOT NULL,
    rows_loaded   bigint NOT NULL DEFAULT 0,
    rows_replaced bigint NOT NULL DEFAULT 0,
    source_schema jsonb NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_id, source_table)
);
";

/// Creates the `ferry` schema and progress tables if missing. Serialised by an advisory lock
/// so that shippers of several sources starting together do not race on `CREATE`.
pub async fn ensure_progress_tables(client: &mut tokio_postgres::Client) -> Result<(), PgError> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| PgError::pg("starting the transaction that creates ferry.progress", e))?;
    tx.execute("SELECT pg_advisory_xact_lock(7265726679)", &[])
        .await
        .map_err(|e| PgError::pg("locking for ferry.progress creation", e))?;
    tx.batch_execute(PROGRESS_DDL)
        .await
        .map_err(|e| PgError::pg("creating the ferry schema and ferry.progress", e))?;
    tx.commit()
        .await
        .map_err(|e| PgError::pg("committing ferry.progress creation", e))
}

/// A source's overall state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceState {
    /// The initial load is under way (tables have their own states).
    Loading,
    /// Every table is loaded and changes stream.
    Streaming,
}

impl SourceState {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceState::Loading => "loading",
            SourceState::Streaming => "streaming",
        }
    }
    fn parse(s: &str) -> SourceState {
        if s == "loading" {
            SourceState::Loading
        } else {
            SourceState::Streaming
        }
    }
}

/// A table's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableState {
    /// Created, rows not (all) loaded yet.
    Loading,
    /// All snapshot rows are in; waiting for the snapshot to finish.
    Loaded,
    /// Streaming changes.
    Streaming,
}

impl TableState {
    pub fn as_str(self) -> &'static str {
        match self {
            TableState::Loading => "loading",
            TableState::Loaded => "loaded",
            TableState::Streaming => "streaming",
        }
    }
    fn parse(s: &str) -> TableState {
        match s {
            "loading" => TableState::Loading,
            "loaded" => TableState::Loaded,
            _ => TableState::Streaming,
        }
    }
}

/// One source's row of `ferry.progress`.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    pub source_id: String,
    pub log_id: String,
    pub lsn: Lsn,
    pub source_position: String,
    pub state: SourceState,
    pub snapshot_begin_lsn: Option<Lsn>,
    pub snapshot_end_lsn: Option<Lsn>,
    pub target_schema: String,
    pub table_prefix: String,
    pub mode: String,
    pub captured_at: Option<UnixMicros>,
    pub applied_at: UnixMicros,
    pub cutover_at: Option<UnixMicros>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TableProgress {
    pub source_table: String,
    pub target_schema: String,
    pub target_table: String,
    pub state: TableState,
    pub rows_loaded: i64,
    pub rows_replaced: i64,
    pub source_schema: TableSchema,
}

fn lsn_i64(lsn: Lsn) -> i64 {
    i64::try_from(lsn.0).unwrap_or(i64::MAX)
}

fn lsn_from(v: i64) -> Lsn {
    Lsn(u64::try_from(v).unwrap_or(0))
}

/// Reads a source's progress; `None` when the source never shipped to this database (or
/// the progress tables do not exist yet).
pub async fn read_progress<C: GenericClient>(
    client: &C,
    source_id: &str,
) -> Result<Option<Progress>, PgError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('ferry.progress') IS NOT NULL", &[])
        .await
        .map_err(|e| PgError::pg("looking for ferry.progress", e))?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let row = client
        .query_opt(
            "SELECT log_id, lsn, source_position, state, snapshot_begin_lsn, snapshot_end_lsn,
                    target_schema, table_prefix, mode,
                    (extract(epoch FROM captured_at) * 1000000)::bigint,
                    (extract(epoch FROM applied_at) * 1000000)::bigint,
                    (extract(epoch FROM cutover_at) * 1000000)::bigint
             FROM ferry.progress WHERE source_id = $1",
            &[&source_id],
        )
        .await
        .map_err(|e| PgError::pg(format!("reading ferry.progress for {source_id:?}"), e))?;
    Ok(row.map(|r| Progress {
        source_id: source_id.to_string(),
        log_id: r.get(0),
        lsn: lsn_from(r.get(1)),
        source_position: r.get(2),
        state: SourceState::parse(r.get(3)),
        snapshot_begin_lsn: r.get::<_, Option<i64>>(4).map(lsn_from),
        snapshot_end_lsn: r.get::<_, Option<i64>>(5).map(lsn_from),
        target_schema: r.get(6),
        table_prefix: r.get(7),
        mode: r.get(8),
        captured_at: r.get(9),
        applied_at: r.get(10),
        cutover_at: r.get(11),
    }))
}

pub async fn read_table_progress<C: GenericClient>(
    client: &C,
    source_id: &str,
) -> Result<Vec<TableProgress>, PgError> {
    let rows = client
        .query(
            "SELECT source_table, target_schema, target_table, state, rows_loaded, rows_replaced,
                    source_schema::text
             FROM ferry.table_progress WHERE source_id = $1 ORDER BY source_table",
            &[&source_id],
        )
        .await
        .map_err(|e| PgError::pg(format!("reading ferry.table_progress for {source_id:?}"), e))?;
    rows.iter()
        .map(|r| {
            let json: String = r.get(6);
            let table: String = r.get(0);
            let source_schema = serde_json::from_str(&json).map_err(|e| PgError::Table {
                table: table.clone(),
                reason: format!("ferry.table_progress.source_schema does not parse: {e}"),
            })?;
            Ok(TableProgress {
                source_table: table,
                target_schema: r.get(1),
                target_table: r.get(2),
                state: TableState::parse(r.get(3)),
                rows_loaded: r.get(4),
                rows_replaced: r.get(5),
                source_schema,
            })
        })
        .collect()
}

pub(crate) struct NewProgress<'a> {
    pub source_id: &'a str,
    pub log_id: &'a str,
    pub lsn: Lsn,
    pub state: SourceState,
    pub snapshot_begin_lsn: Option<Lsn>,
    pub snapshot_end_lsn: Option<Lsn>,
    pub target_schema: &'a str,
    pub table_prefix: &'a str,
    pub mode: &'a str,
}

pub(crate) async fn insert_progress<C: GenericClient>(
    client: &C,
    p: &NewProgress<'_>,
) -> Result<(), PgError> {
    client
        .execute(
            "INSERT INTO ferry.progress (source_id, log_id, lsn, state, snapshot_begin_lsn,
                 snapshot_end_lsn, target_schema, table_prefix, mode, format_version)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &p.source_id,
                &p.log_id,
                &lsn_i64(p.lsn),
                &p.state.as_str(),
                &p.snapshot_begin_lsn.map(lsn_i64),
                &p.snapshot_end_lsn.map(lsn_i64),
                &p.target_schema,
                &p.table_prefix,
                &p.mode,
                &PROGRESS_FORMAT_VERSION,
            ],
        )
        .await
        .map_err(|e| PgError::pg("inserting the ferry.progress row", e))?;
    Ok(())
}

/// Advances `lsn` from `expected` to `new` (compare-and-set), with the position and capture
/// time of the last applied record.
pub(crate) async fn advance<C: GenericClient>(
    client: &C,
    source_id: &str,
    expected: Lsn,
    new: Lsn,
    position: &str,
    captured_at: Option<UnixMicros>,
) -> Result<(), PgError> {
    let n = client
        .execute(
            "UPDATE ferry.progress
             SET lsn = $3, source_position = $4,
                 captured_at = COALESCE(to_timestamp($5::bigint / 1000000.0), captured_at),
                 applied_at = now()
             WHERE source_id = $1 AND lsn = $2",
            &[
                &source_id,
                &lsn_i64(expected),
                &lsn_i64(new),
                &position,
                &captured_at,
            ],
        )
        .await
        .map_err(|e| PgError::pg("advancing ferry.progress", e))?;
    if n != 1 {
        let found = read_progress(client, source_id)
            .await?
            .map_or(Lsn::ZERO, |p| p.lsn);
        return Err(PgError::ConcurrentShipper {
            source_id: source_id.to_string(),
            expected,
            found,
        });
    }
    Ok(())
}

pub(crate) async fn set_state<C: GenericClient>(
    client: &C,
    source_id: &str,
    state: SourceState,
) -> Result<(), PgError> {
    client
        .execute(
            "UPDATE ferry.progress SET state = $2 WHERE source_id = $1",
            &[&source_id, &state.as_str()],
        )
        .await
        .map_err(|e| PgError::pg("updating ferry.progress state", e))?;
    Ok(())
}

pub(crate) async fn set_cutover<C: GenericClient>(
    client: &C,
    source_id: &str,
    at: UnixMicros,
) -> Result<(), PgError> {
    client
        .execute(
            "UPDATE ferry.progress SET cutover_at = to_timestamp($2::bigint / 1000000.0) WHERE source_id = $1",
            &[&source_id, &at],
        )
        .await
        .map_err(|e| PgError::pg("recording the cutover in ferry.progress", e))?;
    Ok(())
}

pub(crate) async fn upsert_table<C: GenericClient>(
    client: &C,
    source_id: &str,
    source_table: &str,
    target_schema: &str,
    target_table: &str,
    state: TableState,
    schema: &TableSchema,
) -> Result<(), PgError> {
    let json = serde_json::to_string(schema).map_err(|e| PgError::Table {
        table: source_table.to_string(),
        reason: format!("cannot encode the table schema: {e}"),
    })?;
    client
        .execute(
            "INSERT INTO ferry.table_progress (source_id, source_table, target_schema, target_table, state, source_schema)
             VALUES ($1, $2, $3, $4, $5, $6::text::jsonb)
             ON CONFLICT (source_id, source_table) DO UPDATE
             SET target_schema = EXCLUDED.target_schema, target_table = EXCLUDED.target_table,
                 state = EXCLUDED.state, source_schema = EXCLUDED.source_schema, updated_at = now()",
            &[&source_id, &source_table, &target_schema, &target_table, &state.as_str(), &json],
        )
        .await
        .map_err(|e| PgError::pg(format!("recording table {source_table:?} in ferry.table_progress"), e))?;
    Ok(())
}

pub(crate) async fn set_table_loaded<C: GenericClient>(
    client: &C,
    source_id: &str,
    source_table: &str,
    rows: i64,
    replaced: i64,
) -> Result<(), PgError> {
    client
        .execute(
            "UPDATE ferry.table_progress SET state = 'loaded', rows_loaded = $3, rows_replaced = $4, updated_at = now()
             WHERE source_id = $1 AND source_table = $2",
            &[&source_id, &source_table, &rows, &replaced],
        )
        .await
        .map_err(|e| PgError::pg(format!("marking table {source_table:?} loaded"), e))?;
    Ok(())
}

pub(crate) async fn set_all_tables_streaming<C: GenericClient>(
    client: &C,
    source_id: &str,
) -> Result<(), PgError> {
    client
        .execute(
            "UPDATE ferry.table_progress SET state = 'streaming', updated_at = now() WHERE source_id = $1",
            &[&source_id],
        )
        .await
        .map_err(|e| PgError::pg("marking tables streaming", e))?;
    Ok(())
}

pub(crate) async fn delete_table<C: GenericClient>(
    client: &C,
    source_id: &str,
    source_table: &str,
) -> Result<(), PgError> {
    client
        .execute(
            "DELETE FROM ferry.table_progress WHERE source_id = $1 AND source_table = $2",
            &[&source_id, &source_table],
        )
        .await
        .map_err(|e| {
            PgError::pg(
                format!("removing table {source_table:?} from ferry.table_progress"),
                e,
            )
        })?;
    Ok(())
}
