//! A deterministic record stream for the exactly-once tests: accounts that move amounts
//! between each other (the total never changes), owners that swap between accounts (a
//! unique swap inside one transaction), accounts closed (children first: their ledger rows)
//! and opened, and a ledger child table with a foreign key. The same seed always gives the
//! same records, so a restarted shipper and the test's oracle see one log.

use ferry_core::{
    Affinity, Column, ForeignKey, KeyColumns, Lsn, Record, RowChange, SnapshotBegin, SnapshotEnd,
    SnapshotRow, SnapshotRows, SourcePosition, TableSchema, Transaction, Value,
};
use std::collections::BTreeMap;

pub const ACCOUNTS: i64 = 40;
pub const START_BALANCE: i64 = 1000;
#[allow(dead_code)] // used by the tests, which include this module
pub const TOTAL: i64 = ACCOUNTS * START_BALANCE;

fn col(name: &str, decl: &str, pk: u32) -> Column {
    Column {
        name: name.into(),
        decl_type: decl.into(),
        affinity: Affinity::from_declared_type(decl),
        not_null: pk > 0,
        default_sql: None,
        default_value: None,
        pk_position: pk,
        generated: None,
        collation: None,
    }
}

pub fn accounts_schema() -> TableSchema {
    TableSchema {
        name: "accounts".into(),
        columns: vec![
            col("id", "INTEGER", 1),
            col("owner", "TEXT", 0),
            col("balance", "INTEGER", 0),
        ],
        key: KeyColumns::PrimaryKey(vec![0]),
        rowid_alias: Some(0),
        without_rowid: false,
        strict: false,
        autoincrement: false,
        unique: vec![vec![1]],
        foreign_keys: vec![],
        sql: "CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT UNIQUE, balance INTEGER)"
            .into(),
    }
}

pub fn ledger_schema() -> TableSchema {
    TableSchema {
        name: "ledger".into(),
        columns: vec![
            col("id", "INTEGER", 1),
            col("account_id", "INTEGER", 0),
            col("amount", "INTEGER", 0),
        ],
        key: KeyColumns::PrimaryKey(vec![0]),
        rowid_alias: Some(0),
        without_rowid: false,
        strict: false,
        autoincrement: false,
        unique: vec![],
        foreign_keys: vec![ForeignKey {
            columns: vec!["account_id".into()],
            parent_table: "accounts".into(),
            parent_columns: vec![],
            on_delete: None,
            on_update: None,
        }],
        sql: "CREATE TABLE ledger (id INTEGER PRIMARY KEY, account_id INTEGER REFERENCES accounts, amount INTEGER)".into(),
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn acct(id: i64, owner: &str, balance: i64) -> Vec<Value> {
    vec![
        Value::Integer(id),
        Value::text(owner),
        Value::Integer(balance),
    ]
}

/// The stream: snapshot of `ACCOUNTS` accounts, then `txns` transactions.
pub fn records(seed: u64, txns: usize) -> Vec<Record> {
    let mut rng = Rng(seed | 1);
    let mut out = Vec::new();
    let pos = |n: u32| SourcePosition::SledOutbox { seq: u64::from(n) };
    out.push(Record::SnapshotBegin(SnapshotBegin {
        position: pos(0),
        captured_at: 1_700_000_000_000_000,
        tables: vec![accounts_schema(), ledger_schema()],
        schema_rows: vec![],
    }));
    // id -> (owner, balance)
    let mut accounts: BTreeMap<i64, (String, i64)> = BTreeMap::new();
    let mut rows = Vec::new();
    for id in 1..=ACCOUNTS {
        let owner = format!("owner-{id}");
        rows.push(SnapshotRow {
            rowid: Some(id),
            values: acct(id, &owner, START_BALANCE),
        });
        accounts.insert(id, (owner, START_BALANCE));
    }
    for chunk in rows.chunks(16) {
        out.push(Record::SnapshotRows(SnapshotRows {
            table: "accounts".into(),
            rows: chunk.to_vec(),
        }));
    }
    out.push(Record::SnapshotEnd(SnapshotEnd {
        position: pos(0),
        captured_at: 1_700_000_000_000_000,
        row_counts: vec![("accounts".into(), ACCOUNTS as u64), ("ledger".into(), 0)],
    }));
    let mut next_account = ACCOUNTS + 1;
    let mut next_ledger = 1i64;
    let mut ledger: BTreeMap<i64, (i64, i64)> = BTreeMap::new(); // id -> (account, amount)
    for n in 0..txns {
        let ids: Vec<i64> = accounts.keys().copied().collect();
        let a = ids[rng.below(ids.len() as u64) as usize];
        let mut b = ids[rng.below(ids.len() as u64) as usize];
        if a == b {
            b = ids[(ids.iter().position(|x| *x == a).unwrap_or(0) + 1) % ids.len()];
        }
        let mut changes = Vec::new();
        match n % 20 {
            7 => {
                // Swap the owners of a and b: a unique swap inside one transaction.
                let (oa, ba) = accounts[&a].clone();
                let (ob, bb) = accounts[&b].clone();
                changes.push(RowChange::update(
                    "accounts",
                    vec![Value::Integer(a)],
                    acct(a, &oa, ba),
                    acct(a, &ob, ba),
                ));
                changes.push(RowChange::update(
                    "accounts",
                    vec![Value::Integer(b)],
                    acct(b, &ob, bb),
                    acct(b, &oa, bb),
                ));
                accounts.insert(a, (ob, ba));
                accounts.insert(b, (oa, bb));
            }
            13 => {
                // Close a: its balance moves to b, its ledger rows go (children first in
                // PostgreSQL), and a new empty account opens.
                let (oa, ba) = accounts[&a].clone();
                let (ob, bb) = accounts[&b].clone();
                let gone: Vec<i64> = ledger
                    .iter()
                    .filter(|(_, (acc, _))| *acc == a)
                    .map(|(id, _)| *id)
                    .collect();
                for id in gone {
                    let (acc, amount) = ledger.remove(&id).unwrap_or((a, 0));
                    changes.push(RowChange::delete(
                        "ledger",
                        vec![Value::Integer(id)],
                        vec![
                            Value::Integer(id),
                            Value::Integer(acc),
                            Value::Integer(amount),
                        ],
                    ));
                }
                changes.push(RowChange::delete(
                    "accounts",
                    vec![Value::Integer(a)],
                    acct(a, &oa, ba),
                ));
                changes.push(RowChange::update(
                    "accounts",
                    vec![Value::Integer(b)],
                    acct(b, &ob, bb),
                    acct(b, &ob, bb + ba),
                ));
                accounts.remove(&a);
                accounts.insert(b, (ob, bb + ba));
                let id = next_account;
                next_account += 1;
                let owner = format!("owner-{id}");
                changes.push(RowChange::insert(
                    "accounts",
                    vec![Value::Integer(id)],
                    acct(id, &owner, 0),
                ));
                accounts.insert(id, (owner, 0));
            }
            _ => {
                let (oa, ba) = accounts[&a].clone();
                let (ob, bb) = accounts[&b].clone();
                let amount = (rng.below(50) as i64).min(ba);
                changes.push(RowChange::update(
                    "accounts",
                    vec![Value::Integer(a)],
                    acct(a, &oa, ba),
                    acct(a, &oa, ba - amount),
                ));
                changes.push(RowChange::update(
                    "accounts",
                    vec![Value::Integer(b)],
                    acct(b, &ob, bb),
                    acct(b, &ob, bb + amount),
                ));
                accounts.insert(a, (oa, ba - amount));
                accounts.insert(b, (ob, bb + amount));
                let id = next_ledger;
                next_ledger += 1;
                changes.push(RowChange::insert(
                    "ledger",
                    vec![Value::Integer(id)],
                    vec![
                        Value::Integer(id),
                        Value::Integer(a),
                        Value::Integer(-amount),
                    ],
                ));
                ledger.insert(id, (a, -amount));
            }
        }
        out.push(Record::Transaction(Transaction {
            position: pos(n as u32 + 1),
            captured_at: 1_700_000_000_000_000 + n as i64,
            schema_changes: vec![],
            changes,
            resync: false,
        }));
    }
    out
}

/// The LSN of the last record.
pub fn last_lsn(records: &[Record]) -> Lsn {
    Lsn(records.len() as u64)
}

/// A 32-hex-character log id derived from the seed.
pub fn log_id(seed: u64) -> String {
    format!("{:032x}", u128::from(seed) * 0x9E37_79B9_7F4A_7C15)
}
