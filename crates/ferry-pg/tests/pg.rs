//! ferry-pg against a real PostgreSQL (the testkit's) and real SQLite files (rusqlite,
//! bundled). Each test has its own fresh database.

#[path = "../src/bin/ferry-pg-ship-test/workload.rs"]
#[allow(dead_code)] // shared with the ship test binary; not every item is used here
mod workload;

use ferry_core::fold::Fold;
use ferry_core::{
    Affinity, Column, KeyColumns, Lsn, Record, RowChange, SchemaChange, SchemaChangeKind,
    SnapshotBegin, SnapshotEnd, SnapshotRow, SnapshotRows, SourcePosition, TableSchema,
    Transaction, Value,
};
use ferry_pg::types::Datum;
use ferry_pg::{
    PgError, PgTarget, ShipOptions, Shipper, TargetMode, TargetRowReader, VecRecordSource,
    read_progress, row_matches,
};
use ferry_testkit::pg::TestDb;
use std::time::{Duration, Instant};

const LOG_ID: &str = "0123456789abcdef0123456789abcdef";

fn col(name: &str, decl: &str, pk: u32) -> Column {
    Column {
        name: name.into(),
        decl_type: decl.into(),
        affinity: Affinity::from_declared_type(decl),
        not_null: false,
        default_sql: None,
        default_value: None,
        pk_position: pk,
        generated: None,
        collation: None,
    }
}

fn table(name: &str, columns: Vec<Column>) -> TableSchema {
    let pk: Vec<usize> = columns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.pk_position > 0)
        .map(|(i, _)| i)
        .collect();
    let rowid_alias =
        (pk.len() == 1 && columns[pk[0]].decl_type.eq_ignore_ascii_case("INTEGER")).then(|| pk[0]);
    TableSchema {
        name: name.into(),
        columns,
        key: if pk.is_empty() {
            KeyColumns::Rowid
        } else {
            KeyColumns::PrimaryKey(pk)
        },
        rowid_alias,
        without_rowid: false,
        strict: false,
        autoincrement: false,
        unique: vec![],
        foreign_keys: vec![],
        sql: String::new(),
    }
}

fn pos() -> SourcePosition {
    SourcePosition::None
}

fn snapshot(tables: Vec<TableSchema>, rows: Vec<(&str, Vec<SnapshotRow>)>) -> Vec<Record> {
    let mut out = vec![Record::SnapshotBegin(SnapshotBegin {
        position: pos(),
        captured_at: 0,
        tables: tables.clone(),
        schema_rows: vec![],
    })];
    let mut counts = Vec::new();
    for (t, r) in rows {
        counts.push((t.to_string(), r.len() as u64));
        out.push(Record::SnapshotRows(SnapshotRows {
            table: t.into(),
            rows: r,
        }));
    }
    out.push(Record::SnapshotEnd(SnapshotEnd {
        position: pos(),
        captured_at: 0,
        row_counts: counts,
    }));
    out
}

fn txn(changes: Vec<RowChange>) -> Record {
    Record::Transaction(Transaction {
        position: pos(),
        captured_at: ferry_core::now_micros(),
        schema_changes: vec![],
        changes,
        resync: false,
    })
}

fn schema_txn(schema_changes: Vec<SchemaChange>, changes: Vec<RowChange>) -> Record {
    Record::Transaction(Transaction {
        position: pos(),
        captured_at: 0,
        schema_changes,
        changes,
        resync: false,
    })
}

fn opts(source_id: &str) -> ShipOptions {
    ShipOptions {
        source_id: source_id.into(),
        batch_max_delay: Duration::from_millis(10),
        load_connections: 2,
        ..ShipOptions::default()
    }
}

async fn ship_all(url: &str, records: Vec<Record>, opts: ShipOptions) -> Result<Shipper, PgError> {
    let mut source = VecRecordSource::new(LOG_ID, records);
    let last = source.last_lsn();
    let mut shipper = Shipper::new(PgTarget::parse(url)?, opts).await?;
    shipper.run_until_caught_up(&mut source, last).await?;
    Ok(shipper)
}

fn sqlite_rows(conn: &rusqlite::Connection, sql: &str) -> Vec<Vec<Value>> {
    let mut stmt = conn.prepare(sql).unwrap();
    let n = stmt.column_count();
    stmt.query_map([], |r| {
        Ok((0..n)
            .map(|i| ferry_sqlite::value_of(r.get_ref(i).unwrap()))
            .collect())
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

async fn read_back(shipper: &Shipper, db: &TestDb, table: &str) -> Vec<(Vec<Value>, Vec<Datum>)> {
    let map = shipper
        .table_maps()
        .into_iter()
        .find(|m| m.source.name == table)
        .unwrap_or_else(|| panic!("no map for {table}"));
    let client = db.connect().await;
    let mut reader = TargetRowReader::new(map, 3);
    let mut all = Vec::new();
    loop {
        let page = reader.next_page(&client).await.unwrap();
        if page.is_empty() {
            break;
        }
        all.extend(page);
    }
    all
}

/// Every storage class and the edge values go through the snapshot load and the streaming
/// apply; PostgreSQL's values, converted back, equal what SQLite's own SELECT returns, bit
/// for bit, for every typed column (the mixed column by the verify rule).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_round_trip_matches_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("app.db")).unwrap();
    conn.execute_batch(
        "CREATE TABLE edge (id INTEGER PRIMARY KEY, i INTEGER, r REAL, t TEXT, b BLOB, m)",
    )
    .unwrap();
    let big_blob: Vec<u8> = (0..(1 << 20)).map(|i| (i * 7 % 251) as u8).collect();
    let long_text = "ünïcødé ✓ 日本語 ".repeat(2000);
    use rusqlite::types::Value as SV;
    let inputs: Vec<[SV; 6]> = vec![
        [
            SV::Integer(1),
            SV::Integer(i64::MIN),
            SV::Real(-0.0),
            SV::Text(String::new()),
            SV::Blob(vec![]),
            SV::Integer(1),
        ],
        [
            SV::Integer(2),
            SV::Integer(i64::MAX),
            SV::Real(f64::INFINITY),
            SV::Text("héllo wörld ✓ 日本".into()),
            SV::Blob(big_blob.clone()),
            SV::Real(2.5),
        ],
        [
            SV::Integer(3),
            SV::Integer(0),
            SV::Real(f64::NEG_INFINITY),
            SV::Text(long_text.clone()),
            SV::Blob(vec![0, 1, 2, 255]),
            SV::Text("text".into()),
        ],
        [
            SV::Integer(4),
            SV::Null,
            SV::Real(f64::NAN),
            SV::Null,
            SV::Null,
            SV::Null,
        ],
        [
            SV::Integer(5),
            SV::Integer(-1),
            SV::Real(3.0),
            SV::Text("'quoted' \"x\" \\".into()),
            SV::Blob(vec![0; 3]),
            SV::Integer(3),
        ],
        [
            SV::Integer(6),
            SV::Integer(42),
            SV::Integer(7),
            SV::Text("x".into()),
            SV::Blob(vec![9]),
            SV::Real(0.1),
        ],
        [
            SV::Integer(7),
            SV::Integer(1 << 53),
            SV::Real(5e-324),
            SV::Text("z".into()),
            SV::Blob(vec![1]),
            SV::Real(1e300),
        ],
        [
            SV::Integer(8),
            SV::Integer(-(1 << 53) - 1),
            SV::Real(1e300),
            SV::Text("ok".into()),
            SV::Blob(vec![2]),
            SV::Text("12".into()),
        ],
    ];
    for row in &inputs {
        conn.execute(
            "INSERT INTO edge VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            rusqlite::params_from_iter(row.iter()),
        )
        .unwrap();
    }
    let oracle = sqlite_rows(&conn, "SELECT id, i, r, t, b, m FROM edge ORDER BY id");
    let raw: Vec<Vec<Value>> = inputs
        .iter()
        .map(|r| {
            r.iter()
                .map(|v| ferry_sqlite::value_of(rusqlite::types::ValueRef::from(v)))
                .collect()
        })
        .collect();
    assert_eq!(
        oracle[0][2],
        Value::Real(0.0),
        "SQLite stores -0.0 in a REAL column as 0"
    );
    assert_eq!(oracle[3][2], Value::Null, "SQLite stores NaN as NULL");

    let schema = table(
        "edge",
        vec![
            col("id", "INTEGER", 1),
            col("i", "INTEGER", 0),
            col("r", "REAL", 0),
            col("t", "TEXT", 0),
            col("b", "BLOB", 0),
            col("m", "", 0),
        ],
    );
    // Rows 1–4 through the snapshot (as captured: what SQLite stored), 5–8 through streaming
    // inserts of the application's raw values (NaN, −0.0, an integer in a REAL column), and
    // an update that rewrites row 3 to its own values.
    let snap_rows: Vec<SnapshotRow> = oracle[..4]
        .iter()
        .map(|r| SnapshotRow {
            rowid: r[0].as_i64(),
            values: r.clone(),
        })
        .collect();
    let mut records = snapshot(vec![schema], vec![("edge", snap_rows)]);
    records.push(txn(raw[4..]
        .iter()
        .map(|r| RowChange::insert("edge", vec![r[0].clone()], r.clone()))
        .collect()));
    records.push(txn(vec![RowChange::update(
        "edge",
        vec![oracle[2][0].clone()],
        oracle[2].clone(),
        raw[2].clone(),
    )]));

    let db = TestDb::new().await;
    let shipper = ship_all(db.url(), records, opts("edge")).await.unwrap();
    let client = db.connect().await;
    let types: Vec<(String, String)> = client
        .query("SELECT column_name::text, data_type::text FROM information_schema.columns WHERE table_name = 'edge' ORDER BY ordinal_position", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expect = [
        ("id", "bigint"),
        ("i", "bigint"),
        ("r", "double precision"),
        ("t", "text"),
        ("b", "bytea"),
        ("m", "text"),
    ];
    assert_eq!(
        types,
        expect
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    );
    let back = read_back(&shipper, &db, "edge").await;
    assert_eq!(back.len(), oracle.len());
    let map = shipper
        .table_maps()
        .into_iter()
        .find(|m| m.source.name == "edge")
        .unwrap();
    for ((key, pg), want) in back.iter().zip(&oracle) {
        assert_eq!(key[0], want[0]);
        for c in 0..5 {
            let got = pg[c].to_value();
            assert_eq!(
                got, want[c],
                "row {:?} column {c}: PostgreSQL {got:?}, SQLite {:?}",
                want[0], want[c]
            );
            if let (Value::Real(a), Value::Real(b)) = (&got, &want[c]) {
                assert_eq!(a.to_bits(), b.to_bits());
            }
        }
        assert!(
            row_matches(&map, want, None, pg),
            "verify rule rejects row {:?}: {pg:?}",
            want[0]
        );
    }
    // The verify rule is not vacuous: a changed value is a difference.
    let mut changed = oracle[1].clone();
    changed[2] = Value::Real(1.0);
    assert!(!row_matches(&map, &changed, None, &back[1].1));
}

async fn expect_bad_value(records: Vec<Record>, opts: ShipOptions, want: &[&str]) {
    let db = TestDb::new().await;
    let err = match ship_all(db.url(), records, opts).await {
        Ok(_) => panic!("shipping succeeded; expected a bad-value error"),
        Err(e) => e,
    };
    assert!(
        matches!(err, PgError::BadValue(_)),
        "wrong error kind: {err:?}"
    );
    let msg = err.to_string();
    for w in want {
        assert!(msg.contains(w), "error {msg:?} does not mention {w:?}");
    }
}

/// NUL in text, invalid UTF-8 in a text column, an out-of-range number and an unparsable
/// timestamp each stop the source with one error naming table, key, column and value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_postgres_cannot_hold_stop_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("app.db")).unwrap();
    conn.execute_batch(
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
         INSERT INTO notes VALUES (1, 'fine'), (2, 'nul' || char(0) || 'inside'), (3, CAST(X'41FF42' AS TEXT));",
    )
    .unwrap();
    let rows = sqlite_rows(&conn, "SELECT id, body FROM notes ORDER BY id");
    assert_eq!(rows[1][1], Value::Text(b"nul\0inside".to_vec()));
    let schema = table(
        "notes",
        vec![col("id", "INTEGER", 1), col("body", "TEXT", 0)],
    );
    let snap = |r: &[Vec<Value>]| {
        snapshot(
            vec![schema.clone()],
            vec![(
                "notes",
                r.iter()
                    .map(|v| SnapshotRow {
                        rowid: v[0].as_i64(),
                        values: v.clone(),
                    })
                    .collect(),
            )],
        )
    };
    // NUL in the snapshot.
    expect_bad_value(
        snap(&rows[..2]),
        opts("nul"),
        &["\"notes\"", "id=2", "\"body\"", "NUL"],
    )
    .await;
    // Invalid UTF-8 while streaming.
    let mut recs = snap(&rows[..1]);
    recs.push(txn(vec![RowChange::insert(
        "notes",
        vec![Value::Integer(3)],
        rows[2].clone(),
    )]));
    expect_bad_value(
        recs,
        opts("utf8"),
        &["\"notes\"", "id=3", "\"body\"", "UTF-8", "41FF42"],
    )
    .await;
    // Unparsable timestamp under a type override.
    let mut o = opts("ts");
    o.type_overrides
        .insert("notes.body".into(), "timestamp".into());
    let mut recs = snap(&[vec![Value::Integer(1), Value::text("2024-01-02 03:04:05")]]);
    recs.push(txn(vec![RowChange::insert(
        "notes",
        vec![Value::Integer(9)],
        vec![Value::Integer(9), Value::text("next tuesday")],
    )]));
    expect_bad_value(recs, o, &["id=9", "\"body\"", "next tuesday", "timestamp"]).await;
    // Out of range for an application's integer column (existing mode).
    let db = TestDb::new().await;
    db.connect()
        .await
        .batch_execute("CREATE TABLE notes (id integer PRIMARY KEY, body text)")
        .await
        .unwrap();
    let mut o = opts("range");
    o.mode = TargetMode::Existing;
    let recs = snapshot(
        vec![schema.clone()],
        vec![(
            "notes",
            vec![SnapshotRow {
                rowid: Some(1),
                values: vec![Value::Integer(1 << 40), Value::text("x")],
            }],
        )],
    );
    let err = ship_all(db.url(), recs, o)
        .await
        .err()
        .expect("out of range must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("1099511627776") && msg.contains("\"id\"") && msg.contains("out of range"),
        "{msg}"
    );
}

/// An application's own schema, created the way an ORM creates it: serial ids, booleans,
/// timestamps, jsonb, an enum, a composite key with a float, a foreign key, and a default
/// row the application inserted itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_mode_maps_onto_an_orm_schema() {
    let db = TestDb::new().await;
    let client = db.connect().await;
    client
        .batch_execute(
            "CREATE TYPE mood AS ENUM ('happy', 'sad');
             CREATE TABLE users (id serial PRIMARY KEY, email varchar(200) NOT NULL UNIQUE,
                                 is_admin boolean NOT NULL DEFAULT false, created_at timestamp,
                                 prefs jsonb, feeling mood, token uuid, version integer DEFAULT 1);
             CREATE TABLE readings (sensor_id integer, at double precision, value numeric(10,3),
                                    PRIMARY KEY (sensor_id, at));
             CREATE TABLE posts (id bigserial PRIMARY KEY, user_id integer NOT NULL REFERENCES users(id),
                                 title text);
             INSERT INTO users (email, is_admin) VALUES ('admin@example.com', true);
             INSERT INTO readings VALUES (1, 1.5, 2.125);",
        )
        .await
        .unwrap();
    let users = table(
        "Users",
        vec![
            col("ID", "INTEGER", 1),
            col("Email", "VARCHAR(200)", 0),
            col("is_admin", "BOOLEAN", 0),
            col("created_at", "DATETIME", 0),
            col("prefs", "JSON", 0),
            col("feeling", "TEXT", 0),
            col("token", "TEXT", 0),
        ],
    );
    let readings = table(
        "readings",
        vec![
            col("sensor_id", "INTEGER", 1),
            col("at", "REAL", 2),
            col("value", "NUMERIC", 0),
        ],
    );
    let mut posts = table(
        "posts",
        vec![
            col("id", "INTEGER", 1),
            col("user_id", "INTEGER", 0),
            col("title", "TEXT", 0),
        ],
    );
    posts.foreign_keys.push(ferry_core::ForeignKey {
        columns: vec!["user_id".into()],
        parent_table: "Users".into(),
        parent_columns: vec![],
        on_delete: None,
        on_update: None,
    });
    let u = |id: i64, email: &str, admin: i64, at: Value| {
        vec![
            Value::Integer(id),
            Value::text(email),
            Value::Integer(admin),
            at,
            Value::text("{\"theme\": \"dark\", \"n\": [1, 2]}"),
            Value::text("happy"),
            Value::text("6f1c9a3e-3c1b-4d4e-9f0a-2b3c4d5e6f70"),
        ]
    };
    let records = {
        let mut r = snapshot(
            vec![users.clone(), readings.clone(), posts.clone()],
            vec![
                (
                    "Users",
                    vec![
                        SnapshotRow {
                            rowid: Some(1),
                            values: u(
                                1,
                                "root@example.com",
                                1,
                                Value::text("2024-05-06 07:08:09.5"),
                            ),
                        },
                        SnapshotRow {
                            rowid: Some(2),
                            values: u(2, "bob@example.com", 0, Value::Integer(1_700_000_000)),
                        },
                        SnapshotRow {
                            rowid: Some(3),
                            values: u(3, "eve@example.com", 0, Value::Real(2_460_000.25)),
                        },
                    ],
                ),
                (
                    "readings",
                    vec![
                        SnapshotRow {
                            rowid: None,
                            values: vec![Value::Integer(1), Value::Real(0.5), Value::Real(1.25)],
                        },
                        SnapshotRow {
                            rowid: None,
                            values: vec![Value::Integer(1), Value::Real(1.5), Value::text("2.125")],
                        },
                    ],
                ),
                (
                    "posts",
                    vec![SnapshotRow {
                        rowid: Some(10),
                        values: vec![Value::Integer(10), Value::Integer(2), Value::text("hi")],
                    }],
                ),
            ],
        );
        // Streaming: a post by a new user (parent first), an update, a unique swap of
        // e-mails between two users (the application's constraint is not deferrable), and
        // a delete of a reading.
        r.push(txn(vec![
            RowChange::insert(
                "posts",
                vec![Value::Integer(11)],
                vec![Value::Integer(11), Value::Integer(4), Value::text("new")],
            ),
            RowChange::insert(
                "Users",
                vec![Value::Integer(4)],
                u(4, "dan@example.com", 0, Value::Null),
            ),
        ]));
        r.push(txn(vec![
            RowChange::update(
                "Users",
                vec![Value::Integer(2)],
                u(2, "bob@example.com", 0, Value::Integer(1_700_000_000)),
                u(2, "eve@example.com", 0, Value::Integer(1_700_000_000)),
            ),
            RowChange::update(
                "Users",
                vec![Value::Integer(3)],
                u(3, "eve@example.com", 0, Value::Real(2_460_000.25)),
                u(3, "bob@example.com", 0, Value::Real(2_460_000.25)),
            ),
        ]));
        r.push(txn(vec![RowChange::delete(
            "readings",
            vec![Value::Integer(1), Value::Real(0.5)],
            vec![Value::Integer(1), Value::Real(0.5), Value::Real(1.25)],
        )]));
        r
    };
    let mut o = opts("orm");
    o.mode = TargetMode::Existing;
    let shipper = ship_all(db.url(), records.clone(), o.clone())
        .await
        .unwrap();
    let status = shipper.status();
    assert!(
        status.stats.batches_split >= 1,
        "the e-mail swap against the application's immediate UNIQUE must go through the one-transaction-at-a-time fallback: {:?}",
        status.stats
    );
    assert!(
        status.notices.iter().any(|n| n.contains("\"Users\"")
            && n.contains("1 rows")
            && n.contains("replaced")
            && n.contains("(ID=1)")),
        "no notice naming the replaced application row: {:?}",
        status.notices
    );
    assert!(
        status
            .notices
            .iter()
            .any(|n| n.contains("\"readings\"") && n.contains("1 rows") && n.contains("identical")),
        "no notice about the identical application row: {:?}",
        status.notices
    );
    assert!(
        !status
            .notices
            .iter()
            .any(|n| n.contains("\"readings\"") && n.contains("replaced")),
        "an identical row is not a replaced one: {:?}",
        status.notices
    );
    let rows = client
        .query("SELECT id, email, is_admin, created_at::text, prefs->>'theme', feeling::text, token::text, version FROM users ORDER BY id", &[])
        .await
        .unwrap();
    type UserRow = (
        i32,
        String,
        bool,
        Option<String>,
        String,
        String,
        String,
        i32,
    );
    let got: Vec<UserRow> = rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
                r.get(7),
            )
        })
        .collect();
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(
        got[0].1, "root@example.com",
        "the application's row with id 1 was replaced by SQLite's"
    );
    assert!(got[0].2);
    assert_eq!(got[0].3.as_deref(), Some("2024-05-06 07:08:09.5"));
    assert_eq!(
        (got[1].1.as_str(), got[1].3.as_deref()),
        ("eve@example.com", Some("2023-11-14 22:13:20"))
    );
    assert_eq!(
        (got[2].1.as_str(), got[2].3.as_deref()),
        ("bob@example.com", Some("2023-02-24 18:00:00"))
    );
    assert_eq!(got[3].3, None);
    assert_eq!((got[0].4.as_str(), got[0].5.as_str()), ("dark", "happy"));
    assert_eq!(got[0].6, "6f1c9a3e-3c1b-4d4e-9f0a-2b3c4d5e6f70");
    assert_eq!(got[0].7, 1, "columns SQLite lacks keep their defaults");
    let readings_back: Vec<(i32, f64, String)> = client
        .query(
            "SELECT sensor_id, at, value::text FROM readings ORDER BY at",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(readings_back, vec![(1, 1.5, "2.125".to_string())]);
    let posts_n: i64 = client
        .query_one("SELECT count(*) FROM posts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(posts_n, 2);
    // Verify's read-back agrees with the fold for every table.
    let mut fold = Fold::new();
    for r in &records {
        fold.apply(r).unwrap();
    }
    for map in shipper.table_maps() {
        let back = read_back(&shipper, &db, &map.source.name).await;
        let folded = &fold.tables[&map.source.name];
        assert_eq!(back.len(), folded.rows.len(), "{}", map.source.name);
        for ((_, pg), (key, row)) in back.iter().zip(&folded.rows) {
            let rowid = if map.source.keyed_by_rowid() {
                key[0].as_i64()
            } else {
                None
            };
            assert!(
                row_matches(&map, row, rowid, pg),
                "{}: {row:?} vs {pg:?}",
                map.source.name
            );
        }
    }

    // A SQLite column with no PostgreSQL column is reported, with every other problem,
    // before any row is copied.
    let db2 = TestDb::new().await;
    db2.connect()
        .await
        .batch_execute("CREATE TABLE readings (sensor_id integer, at double precision)")
        .await
        .unwrap();
    let mut o2 = opts("orm2");
    o2.mode = TargetMode::Existing;
    let err = ship_all(db2.url(), records, o2)
        .await
        .err()
        .expect("mismatch must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("\"value\"") && msg.contains("users") && msg.contains("no primary key"),
        "{msg}"
    );
}

/// Create mode as a role that may not set session_replication_role: deferrable unique
/// constraints take a unique swap inside one batch, foreign keys hold (parents first,
/// children first for deletes), schema changes apply, sequences move past the ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_mode_swaps_schema_changes_and_sequences_as_a_plain_role() {
    let db = TestDb::new().await;
    let role = format!("ferry_plain_{}", std::process::id());
    let admin = db.connect().await;
    admin
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN; GRANT CREATE ON DATABASE \"{}\" TO {role}; GRANT CREATE ON SCHEMA public TO {role}",
            db.name()
        ))
        .await
        .unwrap();
    let url = db.url().replacen("postgres@", &format!("{role}@"), 1);
    let mut parent = table(
        "parent",
        vec![col("id", "INTEGER", 1), col("code", "TEXT", 0)],
    );
    parent.unique.push(vec![1]);
    let mut child = table(
        "child",
        vec![col("id", "INTEGER", 1), col("parent_id", "INTEGER", 0)],
    );
    child.foreign_keys.push(ferry_core::ForeignKey {
        columns: vec!["parent_id".into()],
        parent_table: "parent".into(),
        parent_columns: vec![],
        on_delete: None,
        on_update: None,
    });
    let nokey = table("nokey", vec![col("a", "TEXT", 0)]);
    let p = |id: i64, code: &str| vec![Value::Integer(id), Value::text(code)];
    let mut records = snapshot(
        vec![parent.clone(), child.clone(), nokey.clone()],
        vec![
            (
                "parent",
                vec![
                    SnapshotRow {
                        rowid: Some(1),
                        values: p(1, "a"),
                    },
                    SnapshotRow {
                        rowid: Some(2),
                        values: p(2, "b"),
                    },
                ],
            ),
            (
                "child",
                vec![SnapshotRow {
                    rowid: Some(1),
                    values: vec![Value::Integer(1), Value::Integer(1)],
                }],
            ),
            (
                "nokey",
                vec![SnapshotRow {
                    rowid: Some(77),
                    values: vec![Value::text("x")],
                }],
            ),
        ],
    );
    records.push(txn(vec![
        RowChange::update("parent", vec![Value::Integer(1)], p(1, "a"), p(1, "b")),
        RowChange::update("parent", vec![Value::Integer(2)], p(2, "b"), p(2, "a")),
    ]));
    records.push(txn(vec![
        RowChange::insert(
            "child",
            vec![Value::Integer(2)],
            vec![Value::Integer(2), Value::Integer(3)],
        ),
        RowChange::insert("parent", vec![Value::Integer(3)], p(3, "c")),
        RowChange::delete(
            "child",
            vec![Value::Integer(1)],
            vec![Value::Integer(1), Value::Integer(1)],
        ),
        RowChange::delete("parent", vec![Value::Integer(1)], p(1, "b")),
        RowChange::insert("nokey", vec![Value::Integer(78)], vec![Value::text("y")]),
    ]));
    // ALTER TABLE parent ADD COLUMN note TEXT DEFAULT 'n/a', then a row using it.
    let mut parent2 = parent.clone();
    let mut note = col("note", "TEXT", 0);
    note.default_sql = Some("'n/a'".into());
    note.default_value = Some(Value::text("n/a"));
    parent2.columns.push(note);
    records.push(schema_txn(
        vec![SchemaChange {
            kind: SchemaChangeKind::AlterTable,
            table: "parent".into(),
            before: None,
            after: None,
            schema: Some(parent2.clone()),
        }],
        vec![RowChange::insert(
            "parent",
            vec![Value::Integer(9)],
            vec![Value::Integer(9), Value::text("z"), Value::text("nine")],
        )],
    ));
    // CREATE TABLE extra, a row, then DROP TABLE nokey.
    let extra = table("Extra", vec![col("k", "TEXT", 1), col("v", "REAL", 0)]);
    records.push(schema_txn(
        vec![SchemaChange {
            kind: SchemaChangeKind::CreateTable,
            table: "Extra".into(),
            before: None,
            after: None,
            schema: Some(extra.clone()),
        }],
        vec![RowChange::insert(
            "Extra",
            vec![Value::text("k1")],
            vec![Value::text("k1"), Value::Real(0.25)],
        )],
    ));
    records.push(schema_txn(
        vec![SchemaChange {
            kind: SchemaChangeKind::DropTable,
            table: "nokey".into(),
            before: None,
            after: None,
            schema: None,
        }],
        vec![],
    ));

    let shipper = ship_all(&url, records.clone(), opts("plain"))
        .await
        .unwrap();
    let status = shipper.status();
    assert!(
        !status.replica_role,
        "a plain role cannot set session_replication_role"
    );
    let client = db.connect().await;
    let parents: Vec<(i64, String, Option<String>)> = client
        .query("SELECT id, code, note FROM parent ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        parents,
        vec![
            (2, "a".into(), Some("n/a".into())),
            (3, "c".into(), Some("n/a".into())),
            (9, "z".into(), Some("nine".into()))
        ]
    );
    let extra_v: f64 = client
        .query_one("SELECT v FROM extra WHERE k = 'k1'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(extra_v, 0.25);
    let nokey_exists: bool = client
        .query_one("SELECT to_regclass('public.nokey') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!nokey_exists);
    // PostgreSQL equals the fold.
    let mut fold = Fold::new();
    for r in &records {
        fold.apply(r).unwrap();
    }
    for map in shipper.table_maps() {
        if map.target_schema == "ferry" {
            continue;
        }
        let back = read_back(&shipper, &db, &map.source.name).await;
        let folded = &fold.tables[&map.source.name];
        assert_eq!(back.len(), folded.rows.len(), "{}", map.source.name);
        for ((_, pg), (key, row)) in back.iter().zip(&folded.rows) {
            let rowid = if map.source.keyed_by_rowid() {
                key[0].as_i64()
            } else {
                None
            };
            assert!(
                row_matches(&map, row, rowid, pg),
                "{}: {row:?} vs {pg:?}",
                map.source.name
            );
        }
    }
    // Sequences: the next id PostgreSQL hands out is past SQLite's.
    let maps = shipper.table_maps();
    let adv = ferry_pg::advance_sequences(&client, &maps, None)
        .await
        .unwrap();
    assert!(
        adv.iter().any(|a| a.table == "parent" && a.value >= 9),
        "{adv:?}"
    );
    let next: i64 = client
        .query_one("INSERT INTO parent (code) VALUES ('new') RETURNING id", &[])
        .await
        .unwrap()
        .get(0);
    assert!(next > 9, "identity handed out {next}");
    let p = read_progress(&client, "plain").await.unwrap().unwrap();
    assert_eq!(p.lsn, Lsn(records.len() as u64));
    admin
        .batch_execute(&format!("DROP OWNED BY {role} CASCADE"))
        .await
        .ok();
}

/// A log whose id differs from the one ferry.progress recorded is refused; a missing
/// database and an unreachable server fail with what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_log_missing_database_and_unreachable_server_are_clear_errors() {
    let db = TestDb::new().await;
    let t = table("t", vec![col("id", "INTEGER", 1)]);
    let records = snapshot(
        vec![t],
        vec![(
            "t",
            vec![SnapshotRow {
                rowid: Some(1),
                values: vec![Value::Integer(1)],
            }],
        )],
    );
    ship_all(db.url(), records.clone(), opts("src"))
        .await
        .unwrap();
    let mut other = VecRecordSource::new("ffffffffffffffffffffffffffffffff", records);
    let mut shipper = Shipper::new(PgTarget::parse(db.url()).unwrap(), opts("src"))
        .await
        .unwrap();
    let err = shipper
        .run_until_caught_up(&mut other, Lsn(3))
        .await
        .unwrap_err();
    assert!(matches!(err, PgError::LogIdMismatch { .. }), "{err:?}");
    assert!(
        err.to_string().contains("ffffffffffffffffffffffffffffffff")
            && err.to_string().contains(LOG_ID)
    );

    let missing = ferry_testkit::pg::with_database(db.url(), "ferry_no_such_db");
    let err = PgTarget::parse(&missing)
        .unwrap()
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, PgError::DatabaseMissing { .. }), "{err:?}");
    assert!(err.to_string().contains("createdb"));

    let mut t =
        PgTarget::parse("postgresql://postgres@127.0.0.1:1/x?sslmode=disable&password=hunter2")
            .unwrap();
    t.connect_wait = Duration::from_millis(300);
    let started = Instant::now();
    let err = t.connect().await.unwrap_err();
    assert!(matches!(err, PgError::Unreachable { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        !format!("{err} {err:?} {t:?}").contains("hunter2"),
        "the password leaked"
    );
}

/// Exactly once: the ship process is killed with SIGKILL at random points and its
/// PostgreSQL sessions terminated, again and again, while a reader checks that the total
/// of all balances is the same in every snapshot it takes. At the end PostgreSQL equals the
/// fold of the log and ferry.progress is at the last LSN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_under_kill_and_connection_drops() {
    let kills: usize = std::env::var("FERRY_PG_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let txns: usize = std::env::var("FERRY_PG_KILL_TXNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    let seed = 7 + std::process::id() as u64;
    let db = TestDb::new().await;
    let bin = env!("CARGO_BIN_EXE_ferry-pg-ship-test");
    let spawn = || {
        std::process::Command::new(bin)
            .args([db.url(), "bank", &seed.to_string(), &txns.to_string(), "7"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // The reader: every snapshot must show the constant total (or the table before load).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let url = db.url().to_string();
        let stop = stop.clone();
        tokio::spawn(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut checks = 0u64;
            let mut bad = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = client
                    .query_one(
                        "SELECT coalesce(sum(balance), 0)::bigint, count(*) FROM accounts",
                        &[],
                    )
                    .await;
                if let Ok(row) = r {
                    let (sum, n): (i64, i64) = (row.get(0), row.get(1));
                    if n > 0 {
                        checks += 1;
                        if sum != workload::TOTAL {
                            bad.push((sum, n));
                        }
                    }
                }
                tokio::task::yield_now().await;
            }
            (checks, bad)
        })
    };
    let admin = db.connect().await;
    let mut rng = rand::random::<u64>() | 1;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut killed = 0;
    let mut terminated = 0;
    for round in 0..kills {
        let mut child = spawn();
        let delay = Duration::from_millis(30 + next() % 400);
        let deadline = Instant::now() + delay;
        let mut exited = None;
        while Instant::now() < deadline {
            if let Some(st) = child.try_wait().unwrap() {
                exited = Some(st);
                break;
            }
            if round % 3 == 1 && terminated <= round / 3 {
                // Drop the shipper's connections mid-stream.
                let n: i64 = admin
                    .query_one(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name LIKE 'ferry-ship:%' AND datname = current_database()",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                if n > 0 {
                    terminated += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if exited.is_none() {
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            killed += 1;
        }
        let _ = child.wait();
    }
    // Finally run to completion.
    let out = spawn().wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "final run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (checks, bad) = reader.await.unwrap();
    assert!(
        bad.is_empty(),
        "torn or doubled batches seen by the reader: {bad:?}"
    );
    assert!(checks > 0, "the reader never saw the loaded table");
    assert!(
        killed >= kills / 2,
        "only {killed} of {kills} runs were killed mid-way; raise FERRY_PG_KILL_TXNS"
    );

    let records = workload::records(seed, txns);
    let mut fold = Fold::new();
    for r in &records {
        fold.apply(r).unwrap();
    }
    let client = db.connect().await;
    let p = read_progress(&client, "bank").await.unwrap().unwrap();
    assert_eq!(p.lsn, workload::last_lsn(&records));
    for (name, cols) in [
        ("accounts", "id, owner, balance"),
        ("ledger", "id, account_id, amount"),
    ] {
        let rows: Vec<Vec<Value>> = client
            .query(&format!("SELECT {cols} FROM {name} ORDER BY id"), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| {
                (0..3)
                    .map(|i| match r.try_get::<_, i64>(i) {
                        Ok(v) => Value::Integer(v),
                        Err(_) => Value::text(r.get::<_, String>(i)),
                    })
                    .collect()
            })
            .collect();
        let want: Vec<Vec<Value>> = fold.tables[name].rows.values().cloned().collect();
        assert_eq!(rows.len(), want.len(), "{name}");
        assert!(rows == want, "{name} differs from the fold");
    }
    eprintln!("kills: {killed}, connection drops: {terminated}, reader checks: {checks}");
}

/// `run` ships until told to stop, and applies heartbeats and the cutover mark; the
/// AUTOINCREMENT counter in sqlite_sequence moves the identity even past deleted ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_until_stopped_with_sqlite_sequence_and_cutover() {
    let db = TestDb::new().await;
    let mut t = table("t", vec![col("id", "INTEGER", 1), col("v", "TEXT", 0)]);
    t.autoincrement = true;
    let seq = table(
        "sqlite_sequence",
        vec![col("name", "", 0), col("seq", "", 0)],
    );
    let mut records = snapshot(
        vec![t.clone(), seq.clone()],
        vec![
            (
                "t",
                vec![SnapshotRow {
                    rowid: Some(5),
                    values: vec![Value::Integer(5), Value::text("five")],
                }],
            ),
            (
                "sqlite_sequence",
                vec![SnapshotRow {
                    rowid: Some(1),
                    values: vec![Value::text("t"), Value::Integer(40)],
                }],
            ),
        ],
    );
    records.push(Record::Heartbeat(ferry_core::Heartbeat {
        at: 1,
        position: pos(),
    }));
    records.push(Record::Cutover(ferry_core::CutoverRecord {
        at: 1_800_000_000_000_000,
        last_applied: Lsn(5),
        note: "test".into(),
    }));
    let last = Lsn(records.len() as u64);
    let mut source = VecRecordSource::new(LOG_ID, records);
    let mut shipper = Shipper::new(PgTarget::parse(db.url()).unwrap(), opts("stop"))
        .await
        .unwrap();
    let status = shipper.status_handle();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopper = async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while status.lock().unwrap().applied_lsn < last {
            assert!(Instant::now() < deadline, "shipper did not reach {last}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop_tx.send(true).unwrap();
    };
    let (summary, ()) = tokio::join!(shipper.run(&mut source, stop_rx), stopper);
    assert_eq!(summary.unwrap().applied_lsn, last);
    let client = db.connect().await;
    let p = read_progress(&client, "stop").await.unwrap().unwrap();
    assert_eq!(p.cutover_at, Some(1_800_000_000_000_000));
    let notices = shipper.status().notices;
    assert!(
        notices.iter().all(|n| !n.contains("sqlite_sequence")),
        "a column without a declared type is typed by its values, not \"widened\": {notices:?}"
    );
    let adv = shipper.advance_sequences().await.unwrap();
    assert!(
        adv.iter().any(|a| a.table == "t" && a.value == 40),
        "{adv:?}"
    );
    let next: i64 = client
        .query_one("INSERT INTO t (v) VALUES ('new') RETURNING id", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        next, 41,
        "AUTOINCREMENT never reuses ids below sqlite_sequence"
    );
}

/// A log shared with a writer task: records appear while the shipper runs. `read_batch`
/// honours `wait` the way the durable log does (it blocks until a record or the deadline).
#[derive(Clone)]
struct GrowingSource {
    records: std::sync::Arc<(std::sync::Mutex<Vec<Record>>, std::sync::Condvar)>,
}

impl GrowingSource {
    fn new() -> Self {
        GrowingSource {
            records: Default::default(),
        }
    }

    fn push(&self, r: Record) -> Lsn {
        let (m, cv) = &*self.records;
        let mut v = m.lock().unwrap();
        v.push(r);
        cv.notify_all();
        Lsn(v.len() as u64)
    }
}

impl ferry_pg::RecordSource for GrowingSource {
    fn log_id(&self) -> String {
        LOG_ID.into()
    }

    fn read_batch(
        &mut self,
        after: Lsn,
        max_records: usize,
        wait: Duration,
    ) -> Result<Vec<(Lsn, Record)>, ferry_pg::RecordSourceError> {
        let (m, cv) = &*self.records;
        let deadline = Instant::now() + wait;
        let mut v = m.lock().unwrap();
        while v.len() as u64 <= after.0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(vec![]);
            }
            v = cv.wait_timeout(v, left).unwrap().0;
        }
        Ok(v.iter()
            .enumerate()
            .skip(after.0 as usize)
            .take(max_records)
            .map(|(i, r)| (Lsn(i as u64 + 1), r.clone()))
            .collect())
    }
}

/// `run` on a log that is still empty waits for the first record instead of returning, and
/// an idle shipper gives the runtime back: on a single-threaded runtime the writer and the
/// stopper (joined in the same task) still run, and `run` returns once asked to stop, with
/// every record applied — including trailing heartbeats, which advance `applied_lsn`.
#[tokio::test(flavor = "current_thread")]
async fn idle_shipper_on_a_growing_log_yields_and_stops_on_request() {
    let db = TestDb::new().await;
    let t = table("t", vec![col("id", "INTEGER", 1), col("v", "TEXT", 0)]);
    let source = GrowingSource::new();
    let mut shipper_source = source.clone();
    let mut shipper = Shipper::new(PgTarget::parse(db.url()).unwrap(), opts("grow"))
        .await
        .unwrap();
    let status = shipper.status_handle();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait_for = |lsn: Lsn| {
        let status = status.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while status.lock().unwrap().applied_lsn < lsn {
                assert!(Instant::now() < deadline, "shipper did not reach {lsn}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let driver = async {
        // Let the shipper find the log empty first.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(status.lock().unwrap().applied_lsn, Lsn::ZERO);
        for r in snapshot(vec![t.clone()], vec![("t", vec![])]) {
            source.push(r);
        }
        for i in 1..=3i64 {
            let lsn = source.push(txn(vec![RowChange::insert(
                "t",
                vec![Value::Integer(i)],
                vec![Value::Integer(i), Value::text(format!("v{i}"))],
            )]));
            wait_for(lsn).await;
        }
        let last = source.push(Record::Heartbeat(ferry_core::Heartbeat {
            at: 1,
            position: pos(),
        }));
        wait_for(last).await;
        stop_tx.send(true).unwrap();
        last
    };
    let (summary, last) = tokio::join!(shipper.run(&mut shipper_source, stop_rx), driver);
    assert_eq!(summary.unwrap().applied_lsn, last);
    let client = db.connect().await;
    let p = read_progress(&client, "grow").await.unwrap().unwrap();
    assert_eq!(p.lsn, last);
    let n: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
}

/// The naming policy (lower-case unless quoting is needed, or `keep_case`), schema and
/// prefix, include/exclude lists, per-column type overrides, and the widening warning when a
/// column holds values its declared type cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_filters_overrides_and_widening() {
    let db = TestDb::new().await;
    let accounts = table(
        "UserAccounts",
        vec![
            col("id", "INTEGER", 1),
            col("Display Name", "TEXT", 0),
            col("Score", "INTEGER", 0),
            col("Meta", "TEXT", 0),
            col("Created", "DATETIME", 0),
        ],
    );
    let items = table(
        "Order Items",
        vec![col("id", "INTEGER", 1), col("qty", "INTEGER", 0)],
    );
    let secret = table("Secret", vec![col("id", "INTEGER", 1)]);
    let logs = table("Logs", vec![col("id", "INTEGER", 1)]);
    let acc = |id: i64, score: Value| SnapshotRow {
        rowid: Some(id),
        values: vec![
            Value::Integer(id),
            Value::text(format!("Name {id}")),
            score,
            Value::text(r#"{"a": [1, 2]}"#),
            Value::text("2024-05-06 07:08:09"),
        ],
    };
    let one = |id: i64| SnapshotRow {
        rowid: Some(id),
        values: vec![Value::Integer(id)],
    };
    let mut records = snapshot(
        vec![
            accounts.clone(),
            items.clone(),
            secret.clone(),
            logs.clone(),
        ],
        vec![
            (
                "UserAccounts",
                vec![acc(1, Value::Integer(10)), acc(2, Value::text("n/a"))],
            ),
            (
                "Order Items",
                vec![SnapshotRow {
                    rowid: Some(1),
                    values: vec![Value::Integer(1), Value::Integer(3)],
                }],
            ),
            ("Secret", vec![one(1)]),
            ("Logs", vec![one(1)]),
        ],
    );
    records.push(txn(vec![
        RowChange::insert("Secret", vec![Value::Integer(2)], vec![Value::Integer(2)]),
        RowChange::insert("Logs", vec![Value::Integer(2)], vec![Value::Integer(2)]),
        RowChange::insert(
            "Order Items",
            vec![Value::Integer(2)],
            vec![Value::Integer(2), Value::Integer(5)],
        ),
    ]));
    let mut o = opts("names");
    o.include = vec!["useraccounts".into(), "ORDER ITEMS".into(), "secret".into()];
    o.exclude = vec!["SECRET".into()];
    o.type_overrides
        .insert("useraccounts.META".into(), "jsonb".into());
    o.type_overrides
        .insert("useraccounts.nope".into(), "text".into());
    let shipper = ship_all(db.url(), records.clone(), o).await.unwrap();
    let client = db.connect().await;
    let tables: Vec<String> = client
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        tables,
        vec!["Order Items".to_string(), "useraccounts".into()]
    );
    let columns = |schema: &'static str, table: &'static str| {
        let name = format!("\"{schema}\".\"{table}\"");
        let client = &client;
        async move { ferry_testkit::pg::table_columns(client, &name).await }
    };
    let s = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        columns("public", "useraccounts").await,
        vec![
            s("id", "bigint"),
            s("Display Name", "text"),
            s("score", "text"),
            s("meta", "jsonb"),
            s("created", "timestamp without time zone"),
        ]
    );
    let n: i64 = client
        .query_one("SELECT count(*) FROM \"Order Items\"", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2, "the streamed row of an included table arrives");
    let (score, meta): (String, serde_json::Value) = client
        .query_one("SELECT score, meta FROM useraccounts WHERE id = 2", &[])
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(score, "n/a");
    assert_eq!(meta, serde_json::json!({"a": [1, 2]}));
    let notices = shipper.status().notices;
    assert!(
        notices.iter().any(|n| n.contains("\"UserAccounts\"")
            && n.contains("\"Score\"")
            && n.contains("widened to text")),
        "no widening notice: {notices:?}"
    );
    assert!(
        notices
            .iter()
            .any(|n| n.contains("useraccounts.nope") && n.contains("matches no column")),
        "no notice about the override that matches nothing: {notices:?}"
    );

    // keep_case, another schema and a prefix, same log under another source id.
    let mut o = opts("kept");
    o.keep_case = true;
    o.schema = "App".into();
    o.table_prefix = "old_".into();
    o.include = vec!["useraccounts".into()];
    ship_all(db.url(), records.clone(), o).await.unwrap();
    let cols: Vec<String> = columns("App", "old_UserAccounts")
        .await
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(cols, vec!["id", "Display Name", "Score", "Meta", "Created"]);

    // Two SQLite names landing on one PostgreSQL name: an error naming both.
    let clash = snapshot(
        vec![
            table("Users", vec![col("id", "INTEGER", 1)]),
            table("users", vec![col("id", "INTEGER", 1)]),
        ],
        vec![],
    );
    let err = ship_all(db.url(), clash, opts("clash"))
        .await
        .err()
        .expect("a clash must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("\"Users\"") && msg.contains("\"users\"") && msg.contains("keep_case"),
        "{msg}"
    );
}

/// The initial load reports its progress (for the binary's bar and log lines): steps in
/// order, rows never past the snapshot's total and never going back within a step, and at
/// the end every row and table counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_load_reports_progress() {
    let db = TestDb::new().await;
    let tables: Vec<TableSchema> = (0..3)
        .map(|i| {
            table(
                &format!("t{i}"),
                vec![col("id", "INTEGER", 1), col("v", "TEXT", 0)],
            )
        })
        .collect();
    let per_table = 20_000i64;
    let rows: Vec<(String, Vec<SnapshotRow>)> = tables
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                (1..=per_table)
                    .map(|id| SnapshotRow {
                        rowid: Some(id),
                        values: vec![Value::Integer(id), Value::text(format!("row {id}"))],
                    })
                    .collect(),
            )
        })
        .collect();
    // Split each table's rows into several records, as the capture does.
    let mut records = snapshot(tables.clone(), vec![]);
    let end = records.pop().unwrap();
    for (t, r) in &rows {
        for chunk in r.chunks(1000) {
            records.push(Record::SnapshotRows(SnapshotRows {
                table: t.clone(),
                rows: chunk.to_vec(),
            }));
        }
    }
    let Record::SnapshotEnd(mut end) = end else {
        unreachable!()
    };
    end.row_counts = rows
        .iter()
        .map(|(t, r)| (t.clone(), r.len() as u64))
        .collect();
    records.push(Record::SnapshotEnd(end));
    let total = (per_table * 3) as u64;
    let mut source = VecRecordSource::new(LOG_ID, records);
    let last = source.last_lsn();
    let mut shipper = Shipper::new(PgTarget::parse(db.url()).unwrap(), opts("bar"))
        .await
        .unwrap();
    let status = shipper.status_handle();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut seen: Vec<(String, u64)> = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(l) = status.lock().unwrap().load.clone() {
                    if l.rows_total > 0 {
                        assert!(l.rows_done <= l.rows_total, "{l:?}");
                    }
                    seen.push((l.step, l.rows_done));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            seen
        })
    };
    shipper
        .run_until_caught_up(&mut source, last)
        .await
        .unwrap();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = watcher.await.unwrap();
    let order = ["profiling", "copying", "indexing", "done"];
    for w in seen.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let (ia, ib) = (
            order.iter().position(|s| *s == a.0).unwrap(),
            order.iter().position(|s| *s == b.0).unwrap(),
        );
        assert!(ia <= ib, "steps went back: {a:?} then {b:?}");
        if ia == ib {
            assert!(a.1 <= b.1, "rows went back within a step: {a:?} then {b:?}");
        }
    }
    let st = shipper.status();
    let l = st.load.clone().expect("no load progress");
    assert_eq!(l.step, "done");
    assert_eq!(st.stats.rows_loaded, total);
    assert!(
        st.tables.iter().all(|t| t.rows_loaded == per_table as u64),
        "{:?}",
        st.tables
    );
    // The copy counted every row and table against the snapshot's total.
    assert_eq!((l.rows_done, l.rows_total), (total, total), "{l:?}");
    assert_eq!((l.tables_started, l.tables_total), (3, 3), "{l:?}");
    assert!(
        seen.iter().any(|(s, _)| s == "copying"),
        "the copy step was never seen"
    );
}

/// A TCP proxy in front of the test server that, for chosen COMMITs (counted over all
/// connections, 1-based), forwards the COMMIT, waits for the server's answer — so the
/// transaction is committed — and then drops the connection instead of passing the answer
/// on: the client sees a COMMIT whose outcome it cannot know.
struct CommitCutter {
    port: u16,
    cuts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CommitCutter {
    async fn start(upstream: std::net::SocketAddr, cut: Vec<usize>) -> CommitCutter {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cuts = std::sync::Arc::new(AtomicUsize::new(0));
        let commits = std::sync::Arc::new(AtomicUsize::new(0));
        let cut = std::sync::Arc::new(cut);
        let cuts2 = cuts.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (cuts, commits, cut) = (cuts2.clone(), commits.clone(), cut.clone());
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let (mut c, mut s) = (client, server);
                    let (mut cb, mut sb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
                    let mut cutting = false;
                    loop {
                        tokio::select! {
                            n = c.read(&mut cb) => {
                                let Ok(n) = n else { return };
                                if n == 0 || s.write_all(&cb[..n]).await.is_err() {
                                    return;
                                }
                                if cb[..n].windows(7).any(|w| w == b"COMMIT\0") {
                                    let k = commits.fetch_add(1, Ordering::SeqCst) + 1;
                                    cutting |= cut.contains(&k);
                                }
                            }
                            n = s.read(&mut sb) => {
                                let Ok(n) = n else { return };
                                if n == 0 {
                                    return;
                                }
                                if cutting {
                                    // The server answered the COMMIT: it is durable. Drop
                                    // the answer and both sockets.
                                    cuts.fetch_add(1, Ordering::SeqCst);
                                    return;
                                }
                                if c.write_all(&sb[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        CommitCutter { port, cuts }
    }
}

/// Commits whose outcome the shipper cannot know (the COMMIT reached PostgreSQL and took
/// effect, the answer never came back) are resolved by re-reading ferry.progress: nothing
/// is applied twice — an ALWAYS trigger records every row PostgreSQL writes — nothing is
/// skipped, and the progress ends at the log's last LSN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_commit_outcomes_are_resolved_from_progress() {
    use std::net::ToSocketAddrs;
    let db = TestDb::new().await;
    let client = db.connect().await;
    client
        .batch_execute(
            "CREATE TABLE t (id bigint PRIMARY KEY, n bigint);
             CREATE TABLE audit (id bigint, op text);
             CREATE FUNCTION record_write() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN INSERT INTO audit VALUES (NEW.id, TG_OP); RETURN NEW; END $$;
             CREATE TRIGGER t_audit AFTER INSERT OR UPDATE ON t
               FOR EACH ROW EXECUTE FUNCTION record_write();
             ALTER TABLE t ENABLE ALWAYS TRIGGER t_audit;",
        )
        .await
        .unwrap();
    let t = table("t", vec![col("id", "INTEGER", 1), col("n", "INTEGER", 0)]);
    let row = |id: i64, n: i64| vec![Value::Integer(id), Value::Integer(n)];
    let mut records = snapshot(
        vec![t.clone()],
        vec![(
            "t",
            (0..=10)
                .map(|id| SnapshotRow {
                    rowid: Some(id),
                    values: row(id, 0),
                })
                .collect(),
        )],
    );
    let txns = 60i64;
    for i in 1..=txns {
        records.push(txn(vec![
            RowChange::insert("t", vec![Value::Integer(1000 + i)], row(1000 + i, i)),
            RowChange::update("t", vec![Value::Integer(0)], row(0, i - 1), row(0, i)),
        ]));
    }
    let last = Lsn(records.len() as u64);
    let config = db.config();
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        other => panic!("the test server must be on TCP: {other:?}"),
    };
    let upstream = (host.as_str(), config.get_ports()[0])
        .to_socket_addrs()
        .unwrap()
        .next()
        .unwrap();
    // Cut the load's commit and several batch commits.
    let cutter = CommitCutter::start(upstream, vec![1, 3, 6, 10, 15]).await;
    let url = format!(
        "postgresql://{}@127.0.0.1:{}/{}?sslmode=disable",
        config.get_user().unwrap(),
        cutter.port,
        db.name()
    );
    let mut o = opts("unknown");
    o.mode = TargetMode::Existing;
    o.batch_max_records = 3;
    let mut source = VecRecordSource::new(LOG_ID, records);
    let mut shipper = Shipper::new(PgTarget::parse(&url).unwrap(), o)
        .await
        .unwrap();
    let summary = shipper
        .run_until_caught_up(&mut source, last)
        .await
        .unwrap();
    assert_eq!(summary.applied_lsn, last);
    let cuts = cutter.cuts.load(std::sync::atomic::Ordering::SeqCst);
    assert!(cuts >= 4, "only {cuts} COMMIT answers were cut");
    // The first cut hits Shipper::new's setup, which `run` retries without counting it.
    assert!(
        summary.stats.reconnects + 1 >= cuts as u64,
        "{:?}",
        summary.stats
    );
    let p = read_progress(&client, "unknown").await.unwrap().unwrap();
    assert_eq!(p.lsn, last);
    // Every key but the counter row was written exactly once, by an INSERT.
    let writes: Vec<(i64, String, i64)> = client
        .query(
            "SELECT id, string_agg(op, ',' ORDER BY op), count(*) FROM audit WHERE id <> 0 GROUP BY id ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let want: Vec<(i64, String, i64)> = (1..=10)
        .chain((1..=txns).map(|i| 1000 + i))
        .map(|id| (id, "INSERT".to_string(), 1))
        .collect();
    assert_eq!(writes, want, "a row was applied twice or never");
    let n: i64 = client
        .query_one("SELECT n FROM t WHERE id = 0", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, txns);
}

fn index_row(name: &str, table: &str, sql: &str) -> ferry_core::SchemaRow {
    ferry_core::SchemaRow {
        kind: "index".into(),
        name: name.into(),
        tbl_name: table.into(),
        rootpage: 9,
        sql: Some(sql.into()),
    }
}

/// Schema changes in create mode, as the SQLite capture logs them (a changed table is
/// compared in full, rows carried over by column name): DROP COLUMN, RENAME COLUMN (the
/// renamed column's values arrive as updates), a table rename, and a 12-step rebuild that
/// changes a column's type. PostgreSQL ends equal to the fold, and the index follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_mode_follows_drop_rename_and_rebuild() {
    let db = TestDb::new().await;
    let v1 = table(
        "items",
        vec![
            col("id", "INTEGER", 1),
            col("name", "TEXT", 0),
            col("qty", "INTEGER", 0),
            col("old", "TEXT", 0),
        ],
    );
    let mut records = snapshot(
        vec![v1.clone()],
        vec![(
            "items",
            (1..=3)
                .map(|i| SnapshotRow {
                    rowid: Some(i),
                    values: vec![
                        Value::Integer(i),
                        Value::text(format!("n{i}")),
                        Value::Integer(i * 10),
                        Value::text("x"),
                    ],
                })
                .collect(),
        )],
    );
    if let Record::SnapshotBegin(b) = &mut records[0] {
        b.schema_rows.push(index_row(
            "items_name",
            "items",
            "CREATE INDEX items_name ON items (name)",
        ));
    }
    let alter = |kind: SchemaChangeKind, t: &TableSchema| SchemaChange {
        kind,
        table: t.name.clone(),
        before: None,
        after: None,
        schema: Some(t.clone()),
    };
    // ALTER TABLE items DROP COLUMN old: the carried rows equal the new rows, no changes.
    let mut v2 = v1.clone();
    v2.columns.pop();
    records.push(schema_txn(
        vec![alter(SchemaChangeKind::AlterTable, &v2)],
        vec![],
    ));
    // ALTER TABLE items RENAME COLUMN name TO title: SQLite rewrites the index too.
    let mut v3 = v2.clone();
    v3.columns[1].name = "title".into();
    let renamed_index = SchemaChange {
        kind: SchemaChangeKind::Other,
        table: "items_name".into(),
        before: Some(index_row(
            "items_name",
            "items",
            "CREATE INDEX items_name ON items (name)",
        )),
        after: Some(index_row(
            "items_name",
            "items",
            "CREATE INDEX items_name ON items (title)",
        )),
        schema: None,
    };
    let r3 = |i: i64, title: Value| vec![Value::Integer(i), title, Value::Integer(i * 10)];
    records.push(schema_txn(
        vec![alter(SchemaChangeKind::AlterTable, &v3), renamed_index],
        (1..=3)
            .map(|i| {
                RowChange::update(
                    "items",
                    vec![Value::Integer(i)],
                    r3(i, Value::Null),
                    r3(i, Value::text(format!("n{i}"))),
                )
            })
            .collect(),
    ));
    // ALTER TABLE items RENAME TO goods.
    let mut v4 = v3.clone();
    v4.name = "goods".into();
    records.push(schema_txn(
        vec![
            alter(
                SchemaChangeKind::RenameTable {
                    from: "items".into(),
                },
                &v4,
            ),
            SchemaChange {
                kind: SchemaChangeKind::Other,
                table: "items_name".into(),
                before: Some(index_row(
                    "items_name",
                    "items",
                    "CREATE INDEX items_name ON items (title)",
                )),
                after: Some(index_row(
                    "items_name",
                    "goods",
                    "CREATE INDEX items_name ON \"goods\" (title)",
                )),
                schema: None,
            },
        ],
        vec![],
    ));
    // A 12-step rebuild making qty TEXT: SQLite's copy stores the integers as text.
    let mut v5 = v4.clone();
    v5.columns[2] = col("qty", "TEXT", 0);
    let r5 = |i: i64, qty: Value| vec![Value::Integer(i), Value::text(format!("n{i}")), qty];
    records.push(schema_txn(
        vec![alter(SchemaChangeKind::AlterTable, &v5)],
        (1..=3)
            .map(|i| {
                RowChange::update(
                    "goods",
                    vec![Value::Integer(i)],
                    r5(i, Value::Integer(i * 10)),
                    r5(i, Value::text(format!("{}", i * 10))),
                )
            })
            .collect(),
    ));
    records.push(txn(vec![
        RowChange::insert(
            "goods",
            vec![Value::Integer(4)],
            r5(4, Value::text("a lot")),
        ),
        RowChange::delete("goods", vec![Value::Integer(1)], r5(1, Value::text("10"))),
    ]));

    let shipper = ship_all(db.url(), records.clone(), opts("ddl"))
        .await
        .unwrap();
    let mut fold = Fold::new();
    for r in &records {
        fold.apply(r).unwrap();
    }
    let map = shipper
        .table_maps()
        .into_iter()
        .find(|m| m.source.name == "goods")
        .expect("no map for goods");
    assert_eq!(map.qualified(), "\"public\".\"goods\"");
    let back = read_back(&shipper, &db, "goods").await;
    let folded = &fold.tables["goods"];
    assert_eq!(back.len(), folded.rows.len());
    for ((_, pg), (_, row)) in back.iter().zip(&folded.rows) {
        assert!(row_matches(&map, row, None, pg), "{row:?} vs {pg:?}");
    }
    let client = db.connect().await;
    let cols = ferry_testkit::pg::table_columns(&client, "public.goods").await;
    let s = |a: &str, b: &str| (a.to_string(), b.to_string());
    // A renamed column is renamed in PostgreSQL too and keeps its place (its values also
    // arrive as updates, as the log's carry-over by column name sends them).
    assert_eq!(
        cols,
        vec![s("id", "bigint"), s("title", "text"), s("qty", "text")]
    );
    let gone: bool = client
        .query_one("SELECT to_regclass('public.items') IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(gone, "the old table name is gone");
    let index_cols: Vec<String> = client
        .query(
            "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a
               ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
             WHERE i.indrelid = 'public.goods'::regclass AND NOT i.indisprimary",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        index_cols,
        vec!["title".to_string()],
        "one index, following both renames"
    );
}

/// PostgreSQL crashes (SIGKILL) mid-stream and comes back after crash recovery: the running
/// shipper waits for it, resumes from ferry.progress, and ends equal to the fold with the
/// progress at the log's last LSN; the bank's total holds in PostgreSQL throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crash_and_restart_mid_stream() {
    let mut server = tokio::task::spawn_blocking(|| {
        ferry_pgserver::LocalServer::start(ferry_pgserver::ServerOptions::default())
            .expect("starting a private PostgreSQL")
    })
    .await
    .unwrap();
    // Over the server's private unix socket: while the server is down its TCP port is free,
    // and under a loaded machine another process's ephemeral port can take it, so the
    // restarted server would listen on the socket only.
    let url = format!(
        "postgresql://postgres@/postgres?host={}&port={}&sslmode=disable",
        server.socket_dir().display(),
        server.port()
    );
    let seed = 11;
    let records = workload::records(seed, 3000);
    let last = workload::last_lsn(&records);
    let source = GrowingSource::new();
    let mut pushed = 0usize;
    let mut push_until = |n: usize| {
        while pushed < n.min(records.len()) {
            source.push(records[pushed].clone());
            pushed += 1;
        }
    };
    push_until(records.len() / 3);
    let mut o = opts("crash");
    o.batch_max_records = 50;
    let mut shipper = Shipper::new(PgTarget::parse(&url).unwrap(), o)
        .await
        .unwrap();
    let status = shipper.status_handle();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut shipper_source = source.clone();
    let run = tokio::spawn(async move {
        let r = shipper.run(&mut shipper_source, stop_rx).await;
        (r, shipper)
    });
    let applied = || status.lock().unwrap().applied_lsn;
    let wait_for = |lsn: Lsn| {
        let status = status.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                let s = status.lock().unwrap().clone();
                if s.applied_lsn >= lsn {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "shipper stuck at {} (want {lsn}), phase {}, last error {:?}",
                    s.applied_lsn,
                    s.phase,
                    s.last_error
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    // Past the snapshot and some batches, then crash the server while the log grows.
    wait_for(Lsn(records.len() as u64 / 6)).await;
    let server = tokio::task::spawn_blocking(move || {
        server.kill_and_wait();
        server
    })
    .await
    .unwrap();
    let at_crash = applied();
    push_until(2 * records.len() / 3);
    let mut server = tokio::task::spawn_blocking(move || {
        let mut server = server;
        // LocalServer::restart trusts the stale postmaster.pid the killed server left (it
        // says "ready"). Restart until the server answers. (That the old server's processes
        // are all gone, so the new postmaster finds its shared memory free, is
        // `kill_and_wait`'s job.)
        // A new postmaster can still find the old shared memory attached for a moment on a
        // loaded machine ("pre-existing shared memory block is still in use"): it exits, and
        // the next attempt starts it again.
        for attempt in 0..8 {
            if let Err(e) = server.restart() {
                eprintln!("restart attempt {attempt}: {e}");
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if server.psql("postgres", "SELECT 1").is_ok() {
                    return server;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("PostgreSQL did not come back after 8 restarts");
    })
    .await
    .unwrap();
    push_until(records.len());
    wait_for(last).await;
    stop_tx.send(true).unwrap();
    let (r, _shipper) = run.await.unwrap();
    let summary = r.unwrap();
    assert_eq!(summary.applied_lsn, last);
    assert!(
        summary.stats.reconnects >= 1,
        "the crash at {at_crash} went unnoticed: {:?}",
        summary.stats
    );
    let client = PgTarget::parse(&url).unwrap().connect().await.unwrap();
    let p = read_progress(&client, "crash").await.unwrap().unwrap();
    assert_eq!(p.lsn, last);
    let mut fold = Fold::new();
    for r in &records {
        fold.apply(r).unwrap();
    }
    let rows: Vec<Vec<Value>> = client
        .query("SELECT id, owner, balance FROM accounts ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            vec![
                Value::Integer(r.get(0)),
                Value::text(r.get::<_, String>(1)),
                Value::Integer(r.get(2)),
            ]
        })
        .collect();
    let want: Vec<Vec<Value>> = fold.tables["accounts"].rows.values().cloned().collect();
    assert!(rows == want, "accounts differ from the fold");
    let ledger: i64 = client
        .query_one("SELECT count(*) FROM ledger", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ledger as usize, fold.tables["ledger"].rows.len());
    server.stop();
}

/// Create mode copies into tables without their primary key and builds the key after the
/// rows. Keys that SQLite kept distinct but the mapping makes equal (a text key overridden to
/// timestamp: '2024-01-02 03:04:05' and '2024-01-02T03:04:05') cannot become a key: the load stops with an error naming the table
/// and the reason, and the source is not marked streaming. With distinct keys the key is
/// there, named as PostgreSQL names a declared key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_keys_are_built_after_the_rows_and_a_collapsed_key_stops_the_load() {
    let db = TestDb::new().await;
    let codes = table(
        "codes",
        vec![col("code", "TEXT", 1), col("label", "TEXT", 0)],
    );
    let row = |code: &str, label: &str| SnapshotRow {
        rowid: None,
        values: vec![Value::text(code), Value::text(label)],
    };
    let mut o = opts("collapsed");
    o.type_overrides
        .insert("codes.code".into(), "timestamp".into());
    o.max_retries = 0;
    let records = snapshot(
        vec![codes.clone()],
        vec![(
            "codes",
            vec![
                row("2024-01-02 03:04:05", "one"),
                row("2024-01-02T03:04:05", "the same moment"),
            ],
        )],
    );
    let err = ship_all(db.url(), records, o)
        .await
        .err()
        .expect("a collapsed key must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("codes") && msg.contains("primary key") && msg.contains("load again"),
        "{msg}"
    );
    let client = db.connect().await;
    let state: String = client
        .query_one(
            "SELECT state FROM ferry.progress WHERE source_id = 'collapsed'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        state, "loading",
        "nothing may stream onto a table without its key"
    );

    let db = TestDb::new().await;
    let records = snapshot(
        vec![codes],
        vec![("codes", vec![row("a", "one"), row("b", "two")])],
    );
    ship_all(db.url(), records, opts("distinct")).await.unwrap();
    let key: String = db
        .connect()
        .await
        .query_one(
            "SELECT conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint
             WHERE conrelid = 'public.codes'::regclass AND contype = 'p'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(key, "codes_pkey PRIMARY KEY (code)");
}
