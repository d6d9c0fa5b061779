//! Golden byte vectors (`proto/vectors/`): the files are decoded and their fields checked,
//! and today's encoders must reproduce them byte for byte, so neither the log format nor the
//! record payload encoding can drift unnoticed. A vector never changes: a format change gets
//! a new version number and new vectors, and the old ones must still decode.

use ferry_core::{
    Affinity, Column, CutoverRecord, Heartbeat, KeyColumns, Lsn, Record, RowChange, SchemaChange,
    SchemaChangeKind, SchemaRow, SnapshotBegin, SnapshotEnd, SnapshotRow, SnapshotRows,
    SourcePosition, TableSchema, Transaction, Value, WalPosition,
};
use ferry_log::format::{self, Frame, SegmentHeader};
use ferry_log::{Log, LogId, LogOptions};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

pub const LOG_ID: LogId = LogId([
    0x6c, 0x6f, 0x67, 0x2d, 0x69, 0x64, 0x2d, 0x66, 0x6f, 0x72, 0x2d, 0x76, 0x65, 0x63, 0x74, 0x73,
]);
pub const IDENTITY: &str = "sqlite:/srv/app.db";
pub const CREATED_AT: i64 = 1_795_000_000_000_000;
pub const SEALED_AT: i64 = 1_795_000_060_000_000;

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto/vectors")
}

/// Reads a vector file: hexadecimal digits, whitespace ignored, `#` starts a comment line.
fn read_hex(name: &str) -> Vec<u8> {
    let path = vectors_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let digits: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
        .collect();
    hex::decode(digits).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn wal(frame: u32) -> WalPosition {
    WalPosition {
        salt1: 0x1122_3344,
        salt2: 0x5566_7788,
        frame,
        checksum1: 0xdead_beef,
        checksum2: 0x0bad_f00d,
        db_pages: 9,
    }
}

fn users_schema() -> TableSchema {
    let col = |name: &str, decl: &str, aff, pk| Column {
        name: name.into(),
        decl_type: decl.into(),
        affinity: aff,
        not_null: pk == 1,
        default_sql: None,
        default_value: None,
        pk_position: pk,
        generated: None,
        collation: None,
    };
    TableSchema {
        name: "users".into(),
        columns: vec![
            col("id", "INTEGER", Affinity::Integer, 1),
            col("name", "TEXT", Affinity::Text, 0),
            col("score", "REAL", Affinity::Real, 0),
            col("avatar", "BLOB", Affinity::Blob, 0),
        ],
        key: KeyColumns::PrimaryKey(vec![0]),
        rowid_alias: Some(0),
        without_rowid: false,
        strict: false,
        autoincrement: false,
        unique: vec![],
        foreign_keys: vec![],
        sql: "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT, score REAL, avatar BLOB)"
            .into(),
    }
}

fn users_schema_row() -> SchemaRow {
    SchemaRow {
        kind: "table".into(),
        name: "users".into(),
        tbl_name: "users".into(),
        rootpage: 2,
        sql: Some(users_schema().sql),
    }
}

/// One record of every kind, with the file that holds its encoding.
pub fn record_vectors() -> Vec<(&'static str, Record)> {
    vec![
        (
            "record-transaction.hex",
            Record::Transaction(Transaction {
                position: SourcePosition::SqliteWal(wal(12)),
                captured_at: 1_795_000_001_000_000,
                schema_changes: vec![SchemaChange {
                    kind: SchemaChangeKind::CreateTable,
                    table: "users".into(),
                    before: None,
                    after: Some(users_schema_row()),
                    schema: Some(users_schema()),
                }],
                changes: vec![
                    RowChange::insert(
                        "users",
                        vec![Value::Integer(1)],
                        vec![
                            Value::Integer(1),
                            Value::text("ada"),
                            Value::Real(2.5),
                            Value::Blob(vec![0, 0xff]),
                        ],
                    ),
                    RowChange::update(
                        "users",
                        vec![Value::Integer(2)],
                        vec![
                            Value::Integer(2),
                            Value::text("bob"),
                            Value::Null,
                            Value::Null,
                        ],
                        vec![
                            Value::Integer(2),
                            Value::Text(vec![0x62, 0xff]),
                            Value::Real(-0.0),
                            Value::Null,
                        ],
                    ),
                    RowChange::delete(
                        "users",
                        vec![Value::Integer(-3)],
                        vec![
                            Value::Integer(-3),
                            Value::text(""),
                            Value::Real(1e300),
                            Value::Blob(vec![]),
                        ],
                    ),
                ],
                resync: false,
            }),
        ),
        (
            "record-snapshot-begin.hex",
            Record::SnapshotBegin(SnapshotBegin {
                position: SourcePosition::SqliteFile {
                    change_counter: 7,
                    wal: Some(wal(3)),
                },
                captured_at: 1_795_000_000_500_000,
                tables: vec![users_schema()],
                schema_rows: vec![users_schema_row()],
            }),
        ),
        (
            "record-snapshot-rows.hex",
            Record::SnapshotRows(SnapshotRows {
                table: "users".into(),
                rows: vec![
                    SnapshotRow {
                        rowid: Some(1),
                        values: vec![
                            Value::Integer(1),
                            Value::text("ada"),
                            Value::Real(2.5),
                            Value::Null,
                        ],
                    },
                    SnapshotRow {
                        rowid: Some(i64::MAX),
                        values: vec![
                            Value::Integer(i64::MAX),
                            Value::Null,
                            Value::Null,
                            Value::Blob(vec![1, 2, 3]),
                        ],
                    },
                ],
            }),
        ),
        (
            "record-snapshot-end.hex",
            Record::SnapshotEnd(SnapshotEnd {
                position: SourcePosition::SqliteFile {
                    change_counter: 7,
                    wal: None,
                },
                captured_at: 1_795_000_000_600_000,
                row_counts: vec![("users".into(), 2)],
            }),
        ),
        (
            "record-heartbeat.hex",
            Record::Heartbeat(Heartbeat {
                at: 1_795_000_002_000_000,
                position: SourcePosition::SledOutbox { seq: 300 },
            }),
        ),
        (
            "record-cutover.hex",
            Record::Cutover(CutoverRecord {
                at: 1_795_000_003_000_000,
                last_applied: Lsn(2),
                note: "switched to postgres".into(),
            }),
        ),
    ]
}

/// The payloads of the three records in the segment vector.
pub fn segment_records() -> Vec<Record> {
    let all = record_vectors();
    vec![all[4].1.clone(), all[0].1.clone(), all[5].1.clone()]
}

/// The segment vector, built with today's encoders.
pub fn segment_bytes() -> Vec<u8> {
    let mut out = SegmentHeader {
        log_id: LOG_ID,
        first_lsn: Lsn(1),
        created_at_micros: CREATED_AT,
        source_identity: IDENTITY.into(),
    }
    .encode();
    for (i, r) in segment_records().iter().enumerate() {
        format::encode_frame(&mut out, Lsn(i as u64 + 1), &r.encode());
    }
    out.extend_from_slice(&format::encode_trailer(Lsn(3), SEALED_AT));
    out
}

#[test]
fn record_payload_vectors_decode_and_reencode() {
    for (file, record) in record_vectors() {
        let bytes = read_hex(file);
        assert_eq!(bytes[0], 1, "{file}: record format version byte");
        let decoded = Record::decode(&bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(decoded, record, "{file}: decoded fields differ");
        assert_eq!(
            record.encode(),
            bytes,
            "{file}: today's encoding differs from the vector"
        );
    }
    // Spot checks that do not go through the expected values above.
    let Record::Transaction(t) = Record::decode(&read_hex("record-transaction.hex")).unwrap()
    else {
        panic!("record-transaction.hex is not a transaction");
    };
    assert_eq!(t.position.to_string(), "wal:11223344-55667788:12");
    assert_eq!(t.changes.len(), 3);
    assert_eq!(
        t.changes[1].after.as_ref().unwrap()[1],
        Value::Text(vec![0x62, 0xff])
    );
    assert_eq!(
        t.schema_changes[0].schema.as_ref().unwrap().key_names(),
        vec!["id"]
    );
    let Record::Cutover(c) = Record::decode(&read_hex("record-cutover.hex")).unwrap() else {
        panic!("record-cutover.hex is not a cutover");
    };
    assert_eq!(
        (c.last_applied, c.note.as_str()),
        (Lsn(2), "switched to postgres")
    );
}

#[test]
fn segment_vector_decodes_field_by_field_and_opens_as_a_log() {
    let bytes = read_hex("segment-3-records.hex");
    assert_eq!(
        bytes,
        segment_bytes(),
        "today's segment encoding differs from the vector"
    );

    let (header, header_len) = SegmentHeader::decode(&bytes).unwrap();
    assert_eq!(&bytes[..8], b"FERRYLOG");
    assert_eq!(header_len, 46 + IDENTITY.len() + 4);
    assert_eq!(header.log_id, LOG_ID);
    assert_eq!(
        header.log_id.to_string(),
        "6c6f672d69642d666f722d7665637473"
    );
    assert_eq!(header.first_lsn, Lsn(1));
    assert_eq!(header.created_at_micros, CREATED_AT);
    assert_eq!(header.source_identity, IDENTITY);
    let mut off = header_len;
    let records = segment_records();
    for (i, want) in records.iter().enumerate() {
        match format::parse_frame(&bytes[off..]) {
            Frame::Record {
                lsn,
                payload_start,
                payload_len,
            } => {
                assert_eq!(lsn, Lsn(i as u64 + 1));
                let p = &bytes[off + payload_start..off + payload_start + payload_len];
                assert_eq!(&Record::decode(p).unwrap(), want);
                off += 16 + payload_len;
            }
            other => panic!("frame {i}: {other:?}"),
        }
    }
    assert_eq!(
        format::parse_frame(&bytes[off..]),
        Frame::Trailer {
            last_lsn: Lsn(3),
            sealed_at_micros: SEALED_AT
        }
    );
    assert_eq!(off + 24, bytes.len());

    // The log itself accepts the file as a sealed segment of a log.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("00000000000000000001.seg"), &bytes).unwrap();
    let log = Log::open(dir.path(), IDENTITY, LogOptions::default()).unwrap();
    assert_eq!(log.log_id(), LOG_ID);
    assert_eq!(log.durable_lsn(), Lsn(3));
    let segs = log.segments().unwrap();
    assert_eq!(segs.len(), 1);
    assert!(segs[0].sealed);
    assert_eq!(
        segs[0].created_at,
        SystemTime::UNIX_EPOCH + Duration::from_micros(CREATED_AT as u64)
    );
    assert_eq!(
        segs[0].sealed_at,
        Some(SystemTime::UNIX_EPOCH + Duration::from_micros(SEALED_AT as u64))
    );
    let got: Vec<Record> = crate::common::read_all(&log)
        .into_iter()
        .map(|(_, p)| Record::decode(&p).unwrap())
        .collect();
    assert_eq!(got, records);
}
