//! Restore to a SQLite file: the base, then the archived records replayed with SQL.
//!
//! Order of operations and why:
//! 1. The base is copied next to the output under a temporary name, and its CRC-32C compared
//!    with the manifest's while copying: a damaged base is never restored from.
//! 2. Triggers are dropped (their SQL kept) and `foreign_keys` is off for the whole replay:
//!    the log holds every row the application's triggers and foreign-key actions wrote, as
//!    row changes of their own, so letting them fire again would write those rows twice.
//!    Triggers created or dropped by replayed schema changes only update the kept SQL; all
//!    of it is recreated at the end, so the restored file has the application's triggers as
//!    of the target point.
//! 3. Each source transaction is replayed as its net effect, which has no order inside it
//!    (the WAL gives only the net effect): first the rows it deleted or updated are removed
//!    by key, then the rows it inserted or updated are written with their key (and rowid,
//!    where the key is the rowid), so values that moved between rows never collide with a
//!    UNIQUE constraint halfway. `sqlite_sequence` rows are written last, replacing what
//!    SQLite's AUTOINCREMENT bookkeeping made of the explicit ids. Schema changes come first
//!    in their transaction, as in the log: CREATE/DROP TABLE run the recorded SQL; an ALTER
//!    (or a rename with a new definition) rebuilds the table from the recorded
//!    `CREATE TABLE`, copying columns by name and recreating its indexes; indexes and views
//!    run their recorded SQL.
//! 4. Work is committed in batches with `synchronous=OFF` (nothing is visible at the output
//!    path yet); at the end `PRAGMA integrity_check` must say `ok`, the connection closes
//!    (checkpointing any WAL into the file), the file is fsynced and renamed to the output.
//!
//! A table whose key is a declared non-INTEGER primary key keeps its rows and key, but not
//! SQLite's hidden rowid (the log does not carry it): `SELECT *` is equal, `rowid` may not be.

use crate::ArchiveError;
use crate::base_snapshot::BaseFile;
use crate::coverage::RestorePlan;
use crate::fsio;
use crate::segment_file::SegmentRecords;
use ferry_core::{
    Lsn, Op, Record, RowChange, SchemaChange, SchemaChangeKind, TableSchema, Transaction, Value,
};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ToSql, params_from_iter};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Records replayed per SQLite transaction.
const RECORDS_PER_COMMIT: usize = 5_000;

/// What a restore to SQLite did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqliteRestoreSummary {
    pub output: PathBuf,
    pub base_lsn: Lsn,
    pub target: Lsn,
    pub records_replayed: u64,
    pub row_changes: u64,
    pub base_bytes: u64,
    pub duration: Duration,
}

/// Rebuilds the database as of `plan.target` into `output` (which must not exist).
pub fn restore_to_sqlite(
    plan: &RestorePlan,
    output: &Path,
) -> Result<SqliteRestoreSummary, ArchiveError> {
    let started = Instant::now();
    if output.exists() {
        return Err(ArchiveError::Options(format!(
            "{} already exists: restore writes a new file; remove it or choose another --output",
            output.display()
        )));
    }
    // Every file is checked before the (possibly large) base is copied; the base's CRC is
    // checked while copying it.
    plan.verify(false)?;
    let (tmp, crc, bytes) = fsio::copy_to_temp(&plan.base_path, output).map_err(|e| match e {
        ArchiveError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            ArchiveError::MissingFile {
                what: "archived base",
                path: plan.base_path.clone(),
            }
        }
        e => e,
    })?;
    let result = (|| {
        if crc != plan.base.crc32c || bytes != plan.base.bytes {
            return Err(ArchiveError::CorruptBase {
                path: plan.base_path.clone(),
                reason: format!(
                    "CRC-32C {crc:08x} over {bytes} bytes, the manifest says {:08x} over {} bytes",
                    plan.base.crc32c, plan.base.bytes
                ),
            });
        }
        let tables: HashMap<String, TableSchema> = {
            let base = BaseFile::open(&tmp)?;
            base.tables()?
                .into_iter()
                .map(|t| (t.name.clone(), t))
                .collect()
        };
        let mut replay = Replay::open(&tmp, tables)?;
        let mut records = 0u64;
        let mut since_commit = 0usize;
        replay.begin()?;
        for (entry, path) in &plan.segments {
            let seg = SegmentRecords::open(path, entry.first_lsn)?;
            for r in seg.records(plan.base.lsn.next(), plan.target) {
                let (lsn, record) = r?;
                replay.apply(lsn, &record)?;
                records += 1;
                since_commit += 1;
                if since_commit >= RECORDS_PER_COMMIT {
                    replay.commit()?;
                    replay.begin()?;
                    since_commit = 0;
                }
            }
        }
        replay.commit()?;
        let changes = replay.row_changes;
        replay.finish()?;
        Ok((records, changes))
    })();
    let (records, row_changes) = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = fsio::remove_if_present(&tmp);
            let _ = fsio::remove_if_present(&with_suffix(&tmp, "-wal"));
            let _ = fsio::remove_if_present(&with_suffix(&tmp, "-shm"));
            let _ = fsio::remove_if_present(&with_suffix(&tmp, "-journal"));
            return Err(e);
        }
    };
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| ArchiveError::io("syncing", &tmp, e))?;
    fsio::rename_into_place(&tmp, output)?;
    Ok(SqliteRestoreSummary {
        output: output.to_path_buf(),
        base_lsn: plan.base.lsn,
        target: plan.target,
        records_replayed: records,
        row_changes,
        base_bytes: bytes,
        duration: started.elapsed(),
    })
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// SQL identifiers are quoted here and nowhere else.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A value bound as SQLite stores it (text stays bytes, even when not UTF-8).
struct Bind<'a>(&'a Value);

impl ToSql for Bind<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self.0 {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(r) => ValueRef::Real(*r),
            Value::Text(b) => ValueRef::Text(b),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

struct Replay {
    path: PathBuf,
    conn: Connection,
    tables: HashMap<String, TableSchema>,
    /// The application's triggers (name -> SQL), recreated at the end.
    triggers: BTreeMap<String, String>,
    row_changes: u64,
}

fn rowid_name(t: &TableSchema) -> &'static str {
    ["rowid", "_rowid_", "oid"]
        .into_iter()
        .find(|n| t.column_index(n).is_none())
        .unwrap_or("rowid")
}

impl Replay {
    fn open(path: &Path, tables: HashMap<String, TableSchema>) -> Result<Replay, ArchiveError> {
        let conn = Connection::open(path).map_err(ArchiveError::sqlite("opening", path))?;
        conn.set_prepared_statement_cache_capacity(256);
        conn.execute_batch("PRAGMA foreign_keys=OFF; PRAGMA synchronous=OFF;")
            .map_err(ArchiveError::sqlite("setting up the replay", path))?;
        let mut triggers = BTreeMap::new();
        {
            let mut stmt = conn
                .prepare("SELECT name, sql FROM sqlite_schema WHERE type = 'trigger'")
                .map_err(ArchiveError::sqlite("listing triggers", path))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
                })
                .map_err(ArchiveError::sqlite("listing triggers", path))?;
            for row in rows {
                let (name, sql) = row.map_err(ArchiveError::sqlite("listing triggers", path))?;
                if let Some(sql) = sql {
                    triggers.insert(name, sql);
                }
            }
        }
        for name in triggers.keys() {
            conn.execute_batch(&format!("DROP TRIGGER {}", quote_ident(name)))
                .map_err(ArchiveError::sqlite(
                    format!("dropping trigger {name:?}"),
                    path,
                ))?;
        }
        Ok(Replay {
            path: path.to_path_buf(),
            conn,
            tables,
            triggers,
            row_changes: 0,
        })
    }

    fn sql_err(&self, lsn: Lsn, what: String) -> impl Fn(rusqlite::Error) -> ArchiveError {
        move |e| ArchiveError::Replay {
            lsn,
            reason: format!("{what}: {e}"),
        }
    }

    fn begin(&self) -> Result<(), ArchiveError> {
        self.conn
            .execute_batch("BEGIN")
            .map_err(ArchiveError::sqlite("starting a transaction", &self.path))
    }

    fn commit(&self) -> Result<(), ArchiveError> {
        self.conn
            .execute_batch("COMMIT")
            .map_err(ArchiveError::sqlite("committing", &self.path))
    }

    fn apply(&mut self, lsn: Lsn, record: &Record) -> Result<(), ArchiveError> {
        match record {
            Record::Transaction(t) => self.transaction(lsn, t),
            Record::Heartbeat(_) | Record::Cutover(_) => Ok(()),
            Record::SnapshotBegin(_) | Record::SnapshotRows(_) | Record::SnapshotEnd(_) => {
                Err(ArchiveError::Replay {
                    lsn,
                    reason: "a new snapshot of the source starts here (the log was re-snapshotted); restore to a point before it, or to one after its end from a base taken after it".into(),
                })
            }
        }
    }

    fn transaction(&mut self, lsn: Lsn, t: &Transaction) -> Result<(), ArchiveError> {
        for sc in &t.schema_changes {
            self.schema_change(lsn, sc)?;
        }
        let is_seq = |c: &&RowChange| c.table.eq_ignore_ascii_case("sqlite_sequence");
        for c in t.changes.iter().filter(|c| !is_seq(c)) {
            if matches!(c.op, Op::Delete | Op::Update) {
                self.delete_row(lsn, c)?;
            }
        }
        for c in t.changes.iter().filter(|c| !is_seq(c)) {
            if matches!(c.op, Op::Insert | Op::Update) {
                self.insert_row(lsn, c)?;
            }
        }
        for c in t.changes.iter().filter(is_seq) {
            self.sequence_row(lsn, c)?;
        }
        self.row_changes += t.changes.len() as u64;
        Ok(())
    }

    fn table(&self, lsn: Lsn, name: &str) -> Result<&TableSchema, ArchiveError> {
        self.tables.get(name).ok_or_else(|| ArchiveError::Replay {
            lsn,
            reason: format!(
                "a change to table {name:?}, which the restored database does not have"
            ),
        })
    }

    fn key_condition(t: &TableSchema) -> String {
        if t.keyed_by_rowid() {
            return format!("{} = ?", rowid_name(t));
        }
        t.key_names()
            .iter()
            .map(|k| format!("{} = ?", quote_ident(k)))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    fn delete_row(&mut self, lsn: Lsn, c: &RowChange) -> Result<(), ArchiveError> {
        let t = self.table(lsn, &c.table)?;
        let sql = format!(
            "DELETE FROM {} WHERE {}",
            quote_ident(&t.name),
            Self::key_condition(t)
        );
        let err = self.sql_err(lsn, format!("deleting key {:?} from {:?}", c.key, c.table));
        let mut stmt = self.conn.prepare_cached(&sql).map_err(&err)?;
        stmt.execute(params_from_iter(c.key.iter().map(Bind)))
            .map_err(&err)?;
        Ok(())
    }

    fn insert_row(&mut self, lsn: Lsn, c: &RowChange) -> Result<(), ArchiveError> {
        let t = self.table(lsn, &c.table)?;
        let Some(after) = &c.after else {
            return Err(ArchiveError::Replay {
                lsn,
                reason: format!("{} of {:?} lacks its after image", c.op.as_str(), c.table),
            });
        };
        let mut names = Vec::new();
        let mut values: Vec<&Value> = Vec::new();
        if t.keyed_by_rowid() {
            names.push(rowid_name(t).to_string());
            values.push(c.key.first().unwrap_or(&Value::Null));
        }
        for (i, col) in t.columns.iter().enumerate() {
            if col.generated.is_some() {
                continue;
            }
            names.push(quote_ident(&col.name));
            values.push(after.get(i).unwrap_or(&Value::Null));
        }
        let sql = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            quote_ident(&t.name),
            names.join(", "),
            vec!["?"; names.len()].join(", ")
        );
        let err = self.sql_err(lsn, format!("writing key {:?} of {:?}", c.key, c.table));
        let mut stmt = self.conn.prepare_cached(&sql).map_err(&err)?;
        stmt.execute(params_from_iter(values.into_iter().map(Bind)))
            .map_err(&err)?;
        Ok(())
    }

    /// `sqlite_sequence` rows replace whatever AUTOINCREMENT bookkeeping made of the explicit
    /// ids written before them (matched by table name and by rowid).
    fn sequence_row(&mut self, lsn: Lsn, c: &RowChange) -> Result<(), ArchiveError> {
        let err = self.sql_err(lsn, "replaying sqlite_sequence".into());
        let image = c.after.as_ref().or(c.before.as_ref());
        let name = image.and_then(|v| v.first()).unwrap_or(&Value::Null);
        self.conn
            .prepare_cached("DELETE FROM sqlite_sequence WHERE name = ?1 OR rowid = ?2")
            .and_then(|mut s| s.execute([Bind(name), Bind(c.key.first().unwrap_or(&Value::Null))]))
            .map_err(&err)?;
        if let Some(after) = &c.after {
            let seq = after.get(1).unwrap_or(&Value::Null);
            self.conn
                .prepare_cached(
                    "INSERT INTO sqlite_sequence (rowid, name, seq) VALUES (?1, ?2, ?3)",
                )
                .and_then(|mut s| {
                    s.execute([
                        Bind(c.key.first().unwrap_or(&Value::Null)),
                        Bind(after.first().unwrap_or(&Value::Null)),
                        Bind(seq),
                    ])
                })
                .map_err(&err)?;
        }
        Ok(())
    }

    fn exec(&self, lsn: Lsn, what: String, sql: &str) -> Result<(), ArchiveError> {
        self.conn
            .execute_batch(sql)
            .map_err(self.sql_err(lsn, what))
    }

    fn object_exists(&self, lsn: Lsn, kind: &str, name: &str) -> Result<bool, ArchiveError> {
        self.conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = ?1 AND name = ?2",
                [kind, name],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
            .map_err(self.sql_err(lsn, format!("looking up {kind} {name:?}")))
    }

    fn schema_change(&mut self, lsn: Lsn, sc: &SchemaChange) -> Result<(), ArchiveError> {
        let after_sql = sc.after.as_ref().and_then(|r| r.sql.clone());
        let before_sql = sc.before.as_ref().and_then(|r| r.sql.clone());
        let internal = TableSchema::is_internal_name(&sc.table)
            || sc.table.eq_ignore_ascii_case("sqlite_sequence");
        match &sc.kind {
            SchemaChangeKind::CreateTable => {
                let schema = self.need_schema(lsn, sc)?;
                // sqlite_sequence appears by itself with the first AUTOINCREMENT table.
                if !self.object_exists(lsn, "table", &sc.table)? {
                    let sql = after_sql.ok_or_else(|| ArchiveError::Replay {
                        lsn,
                        reason: format!("CREATE TABLE {:?} without its SQL", sc.table),
                    })?;
                    self.exec(lsn, format!("creating table {:?}", sc.table), &sql)?;
                }
                self.tables.insert(sc.table.clone(), schema);
            }
            SchemaChangeKind::DropTable => {
                if !internal {
                    self.exec(
                        lsn,
                        format!("dropping table {:?}", sc.table),
                        &format!("DROP TABLE IF EXISTS {}", quote_ident(&sc.table)),
                    )?;
                }
                self.tables.remove(&sc.table);
            }
            SchemaChangeKind::AlterTable => {
                let schema = self.need_schema(lsn, sc)?;
                if before_sql != after_sql {
                    self.rebuild(lsn, &sc.table, &schema)?;
                }
                self.tables.insert(sc.table.clone(), schema);
            }
            SchemaChangeKind::RenameTable { from } => {
                let schema = self.need_schema(lsn, sc)?;
                self.exec(
                    lsn,
                    format!("renaming table {from:?} to {:?}", sc.table),
                    &format!(
                        "ALTER TABLE {} RENAME TO {}",
                        quote_ident(from),
                        quote_ident(&sc.table)
                    ),
                )?;
                let now_sql: Option<String> = self
                    .conn
                    .query_row(
                        "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?1",
                        [&sc.table],
                        |r| r.get(0),
                    )
                    .map_err(self.sql_err(lsn, format!("reading table {:?}", sc.table)))?;
                if now_sql != after_sql {
                    self.rebuild(lsn, &sc.table, &schema)?;
                }
                self.tables.remove(from);
                self.tables.insert(sc.table.clone(), schema);
            }
            SchemaChangeKind::Other => {
                let row = sc.after.as_ref().or(sc.before.as_ref());
                let Some(row) = row else { return Ok(()) };
                let kind = row.kind.as_str();
                match kind {
                    "trigger" => {
                        if let Some(b) = &sc.before {
                            self.triggers.remove(&b.name);
                        }
                        if let (Some(a), Some(sql)) = (&sc.after, after_sql) {
                            self.triggers.insert(a.name.clone(), sql);
                        }
                    }
                    "index" | "view" => {
                        let keyword = if kind == "index" { "INDEX" } else { "VIEW" };
                        if let Some(b) = &sc.before {
                            self.exec(
                                lsn,
                                format!("dropping {kind} {:?}", b.name),
                                &format!("DROP {keyword} IF EXISTS {}", quote_ident(&b.name)),
                            )?;
                        }
                        // Automatic indexes (UNIQUE, PRIMARY KEY) have no SQL: their table
                        // makes them.
                        if let (Some(a), Some(sql)) = (&sc.after, after_sql) {
                            self.exec(
                                lsn,
                                format!("dropping {kind} {:?}", a.name),
                                &format!("DROP {keyword} IF EXISTS {}", quote_ident(&a.name)),
                            )?;
                            self.exec(lsn, format!("creating {kind} {:?}", a.name), &sql)?;
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn need_schema(&self, lsn: Lsn, sc: &SchemaChange) -> Result<TableSchema, ArchiveError> {
        sc.schema.clone().ok_or_else(|| ArchiveError::Replay {
            lsn,
            reason: format!("schema change of {:?} without the parsed table", sc.table),
        })
    }

    /// Rebuilds `table` to `schema` (its recorded `CREATE TABLE`): rename the old table
    /// aside, create the new one, copy the columns both have (and the rowid), drop the old
    /// one, recreate its indexes.
    fn rebuild(&mut self, lsn: Lsn, table: &str, schema: &TableSchema) -> Result<(), ArchiveError> {
        let old = self
            .tables
            .get(table)
            .cloned()
            .ok_or_else(|| ArchiveError::Replay {
                lsn,
                reason: format!(
                    "ALTER of table {table:?}, which the restored database does not have"
                ),
            })?;
        let aside = format!("{table}__ferry_restore_old");
        let indexes: Vec<(String, String)> = {
            let mut stmt = self
                .conn
                .prepare("SELECT name, sql FROM sqlite_schema WHERE type = 'index' AND tbl_name = ?1 AND sql IS NOT NULL")
                .map_err(self.sql_err(lsn, format!("listing the indexes of {table:?}")))?;
            stmt.query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(self.sql_err(lsn, format!("listing the indexes of {table:?}")))?
        };
        let common: Vec<String> = schema
            .columns
            .iter()
            .filter(|c| c.generated.is_none())
            .filter(|c| {
                old.column_index(&c.name)
                    .is_some_and(|i| old.columns[i].generated.is_none())
            })
            .map(|c| quote_ident(&c.name))
            .collect();
        let rowid = if !old.without_rowid && !schema.without_rowid {
            "rowid, "
        } else {
            ""
        };
        let sql = format!(
            "PRAGMA legacy_alter_table=ON;
             ALTER TABLE {t} RENAME TO {a};
             {create};
             INSERT INTO {t} ({rowid}{cols}) SELECT {rowid}{cols} FROM {a};
             DROP TABLE {a};
             PRAGMA legacy_alter_table=OFF;",
            t = quote_ident(table),
            a = quote_ident(&aside),
            create = schema.sql,
            cols = common.join(", "),
        );
        self.exec(
            lsn,
            format!("rebuilding table {table:?} to its new definition"),
            &sql,
        )?;
        for (name, sql) in indexes {
            self.exec(
                lsn,
                format!("recreating index {name:?} after the ALTER of {table:?}"),
                &sql,
            )?;
        }
        Ok(())
    }

    /// Recreates the triggers, checks integrity, closes.
    fn finish(self) -> Result<(), ArchiveError> {
        let path = self.path.clone();
        for (name, sql) in &self.triggers {
            self.conn.execute_batch(sql).map_err(ArchiveError::sqlite(
                format!("recreating trigger {name:?}"),
                &path,
            ))?;
        }
        let report: Vec<String> = {
            let mut stmt = self
                .conn
                .prepare("PRAGMA integrity_check")
                .map_err(ArchiveError::sqlite("checking integrity", &path))?;
            stmt.query_map([], |r| r.get::<_, String>(0))
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(ArchiveError::sqlite("checking integrity", &path))?
        };
        if report != ["ok"] {
            return Err(ArchiveError::Integrity {
                path,
                report: report.join("; "),
            });
        }
        self.conn
            .execute_batch("PRAGMA synchronous=FULL")
            .map_err(ArchiveError::sqlite("closing", &path))?;
        self.conn
            .close()
            .map_err(|(_, e)| ArchiveError::sqlite("closing", &path)(e))
    }
}
