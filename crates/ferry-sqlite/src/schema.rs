//! Parsing `sqlite_schema` rows into [`TableSchema`]s.
//!
//! A real tokenizer (the four identifier quotings `"x"`, `[x]`, `` `x` `` and bare words,
//! string and blob literals, numbers, comments) feeds a recursive-descent parser of
//! `CREATE TABLE` that understands every column and table constraint SQLite accepts, WITHOUT
//! ROWID, STRICT, AUTOINCREMENT, generated columns and DEFAULT constants. Expressions (CHECK,
//! generated columns, parenthesised defaults) are skipped as balanced token runs; only
//! constant defaults are evaluated, with the column's affinity applied, because those are
//! what SQLite returns for rows written before an `ADD COLUMN`.
//!
//! How a table is keyed follows SQLite's own rules: an `INTEGER PRIMARY KEY` (declared type
//! exactly "INTEGER", not the `PRIMARY KEY DESC` column-constraint quirk) aliases the rowid;
//! any other declared primary key is the key; a table without one is keyed by its rowid.

use ferry_core::{Affinity, Column, KeyColumns, SchemaRow, TableSchema, Value};
use ferry_core::{ForeignKey, Generated};

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("cannot parse the schema of table {table:?} at token {at}: {problem}; SQL: {sql}")]
pub struct SchemaError {
    pub table: String,
    pub at: usize,
    pub problem: String,
    pub sql: String,
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    /// A bare or quoted identifier / keyword; `quoted` says whether it can be a keyword.
    Ident {
        text: String,
        quoted: bool,
    },
    Str(String),
    Blob(Vec<u8>),
    Num(String),
    Punct(char),
}

fn tokenize(sql: &str) -> Result<Vec<Tok>, String> {
    let b = sql.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    let quoted_until = |i: usize, close: u8, doubling: bool| -> Result<(String, usize), String> {
        let mut s = Vec::new();
        let mut j = i + 1;
        loop {
            match b.get(j) {
                None => return Err(format!("unterminated quote starting at byte {i}")),
                Some(&c) if c == close => {
                    if doubling && b.get(j + 1) == Some(&close) {
                        s.push(close);
                        j += 2;
                    } else {
                        return Ok((String::from_utf8_lossy(&s).into_owned(), j + 1));
                    }
                }
                Some(&c) => {
                    s.push(c);
                    j += 1;
                }
            }
        }
    };
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0c => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                    i += 1;
                }
                i += 2;
            }
            b'\'' => {
                let (s, j) = quoted_until(i, b'\'', true)?;
                out.push(Tok::Str(s));
                i = j;
            }
            b'"' => {
                let (s, j) = quoted_until(i, b'"', true)?;
                out.push(Tok::Ident {
                    text: s,
                    quoted: true,
                });
                i = j;
            }
            b'`' => {
                let (s, j) = quoted_until(i, b'`', true)?;
                out.push(Tok::Ident {
                    text: s,
                    quoted: true,
                });
                i = j;
            }
            b'[' => {
                let (s, j) = quoted_until(i, b']', false)?;
                out.push(Tok::Ident {
                    text: s,
                    quoted: true,
                });
                i = j;
            }
            b'x' | b'X' if b.get(i + 1) == Some(&b'\'') => {
                let (s, j) = quoted_until(i + 1, b'\'', false)?;
                let bytes = (0..s.len() / 2)
                    .map(|k| u8::from_str_radix(s.get(2 * k..2 * k + 2).unwrap_or("zz"), 16))
                    .collect::<Result<Vec<u8>, _>>()
                    .map_err(|_| format!("bad blob literal X'{s}'"))?;
                out.push(Tok::Blob(bytes));
                i = j;
            }
            b'0'..=b'9' | b'.' if c != b'.' || b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let start = i;
                if c == b'0' && matches!(b.get(i + 1), Some(b'x' | b'X')) {
                    i += 2;
                    while i < b.len() && b[i].is_ascii_hexdigit() {
                        i += 1;
                    }
                } else {
                    while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                        i += 1;
                    }
                    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
                        i += 1;
                        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
                            i += 1;
                        }
                        while i < b.len() && b[i].is_ascii_digit() {
                            i += 1;
                        }
                    }
                }
                out.push(Tok::Num(sql[start..i].to_string()));
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                let start = i;
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric()
                        || b[i] == b'_'
                        || b[i] == b'$'
                        || b[i] >= 0x80)
                {
                    i += 1;
                }
                out.push(Tok::Ident {
                    text: sql[start..i].to_string(),
                    quoted: false,
                });
            }
            _ => {
                // Multi-byte operators (||, <=, ...) only occur inside skipped expressions;
                // single characters are enough to keep parentheses balanced.
                out.push(Tok::Punct(c as char));
                i += 1;
            }
        }
    }
    Ok(out)
}

struct Parser<'a> {
    toks: Vec<Tok>,
    pos: usize,
    table: &'a str,
    sql: &'a str,
}

impl Parser<'_> {
    fn err(&self, problem: impl Into<String>) -> SchemaError {
        SchemaError {
            table: self.table.to_string(),
            at: self.pos,
            problem: problem.into(),
            sql: self.sql.to_string(),
        }
    }
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn peek_kw(&self, kw: &str) -> bool {
        self.peek_kw_at(0, kw)
    }
    fn peek_kw_at(&self, ahead: usize, kw: &str) -> bool {
        matches!(self.toks.get(self.pos + ahead), Some(Tok::Ident { text, quoted: false }) if text.eq_ignore_ascii_case(kw))
    }
    fn eat_kw(&mut self, kw: &str) -> bool {
        if self.peek_kw(kw) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn expect_kw(&mut self, kw: &str) -> Result<(), SchemaError> {
        if self.eat_kw(kw) {
            Ok(())
        } else {
            Err(self.err(format!("expected {kw}")))
        }
    }
    fn eat_punct(&mut self, c: char) -> bool {
        if self.peek() == Some(&Tok::Punct(c)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn expect_punct(&mut self, c: char) -> Result<(), SchemaError> {
        if self.eat_punct(c) {
            Ok(())
        } else {
            Err(self.err(format!("expected '{c}'")))
        }
    }
    fn name(&mut self) -> Result<String, SchemaError> {
        match self.peek().cloned() {
            Some(Tok::Ident { text, .. }) | Some(Tok::Str(text)) => {
                self.pos += 1;
                Ok(text)
            }
            _ => Err(self.err("expected a name")),
        }
    }
    /// Skips a balanced parenthesised run; the current token must be '('.
    fn skip_parens(&mut self) -> Result<(), SchemaError> {
        self.expect_punct('(')?;
        let mut depth = 1;
        while depth > 0 {
            match self.peek() {
                None => return Err(self.err("unbalanced parentheses")),
                Some(Tok::Punct('(')) => depth += 1,
                Some(Tok::Punct(')')) => depth -= 1,
                _ => {}
            }
            self.pos += 1;
        }
        Ok(())
    }
    fn skip_conflict_clause(&mut self) -> Result<(), SchemaError> {
        if self.peek_kw("ON") && self.peek_kw_at(1, "CONFLICT") {
            self.pos += 2;
            self.name()?;
        }
        Ok(())
    }
    /// Parenthesised list of indexed columns: names (with COLLATE/ASC/DESC) → names.
    fn column_list(&mut self) -> Result<Vec<String>, SchemaError> {
        self.expect_punct('(')?;
        let mut cols = Vec::new();
        loop {
            cols.push(self.name()?);
            // Skip COLLATE x, ASC, DESC, or anything until ',' or ')' at this depth.
            let mut depth = 0;
            loop {
                match self.peek() {
                    None => return Err(self.err("unterminated column list")),
                    Some(Tok::Punct('(')) => depth += 1,
                    Some(Tok::Punct(')')) if depth == 0 => break,
                    Some(Tok::Punct(')')) => depth -= 1,
                    Some(Tok::Punct(',')) if depth == 0 => break,
                    _ => {}
                }
                self.pos += 1;
            }
            if self.eat_punct(',') {
                continue;
            }
            self.expect_punct(')')?;
            return Ok(cols);
        }
    }
    fn foreign_key_tail(&mut self, columns: Vec<String>) -> Result<ForeignKey, SchemaError> {
        self.expect_kw("REFERENCES")?;
        let parent_table = self.name()?;
        let parent_columns = if self.peek() == Some(&Tok::Punct('(')) {
            self.column_list()?
        } else {
            Vec::new()
        };
        let mut fk = ForeignKey {
            columns,
            parent_table,
            parent_columns,
            on_delete: None,
            on_update: None,
        };
        loop {
            if self.eat_kw("ON") {
                let which_delete = if self.eat_kw("DELETE") {
                    true
                } else {
                    self.expect_kw("UPDATE")?;
                    false
                };
                let action = if self.eat_kw("SET") {
                    format!("SET {}", self.name()?.to_ascii_uppercase())
                } else if self.eat_kw("NO") {
                    self.expect_kw("ACTION")?;
                    "NO ACTION".to_string()
                } else {
                    self.name()?.to_ascii_uppercase()
                };
                if which_delete {
                    fk.on_delete = Some(action);
                } else {
                    fk.on_update = Some(action);
                }
            } else if self.eat_kw("MATCH") {
                self.name()?;
            } else if self.peek_kw("NOT") && self.peek_kw_at(1, "DEFERRABLE") {
                self.pos += 2;
            } else if self.eat_kw("DEFERRABLE") {
            } else if self.eat_kw("INITIALLY") {
                self.name()?;
            } else {
                return Ok(fk);
            }
        }
    }
}

const CONSTRAINT_WORDS: &[&str] = &[
    "CONSTRAINT",
    "PRIMARY",
    "NOT",
    "NULL",
    "UNIQUE",
    "CHECK",
    "DEFAULT",
    "COLLATE",
    "REFERENCES",
    "GENERATED",
    "AS",
];

struct ColDef {
    col: Column,
    pk_desc: bool,
    pk: bool,
    autoinc: bool,
    unique: bool,
    fk: Option<ForeignKey>,
}

/// Parses a `CREATE TABLE` statement stored in `sqlite_schema` for table `name`.
pub fn parse_create_table(name: &str, sql: &str) -> Result<TableSchema, SchemaError> {
    let toks = tokenize(sql).map_err(|problem| SchemaError {
        table: name.to_string(),
        at: 0,
        problem,
        sql: sql.to_string(),
    })?;
    let mut p = Parser {
        toks,
        pos: 0,
        table: name,
        sql,
    };
    p.expect_kw("CREATE")?;
    let _ = p.eat_kw("TEMP") || p.eat_kw("TEMPORARY");
    p.expect_kw("TABLE")?;
    if p.eat_kw("IF") {
        p.expect_kw("NOT")?;
        p.expect_kw("EXISTS")?;
    }
    let mut tname = p.name()?;
    if p.eat_punct('.') {
        tname = p.name()?;
    }
    p.expect_punct('(')?;
    let mut defs: Vec<ColDef> = Vec::new();
    let mut table_pk: Option<Vec<String>> = None;
    let mut uniques: Vec<Vec<String>> = Vec::new();
    let mut fks = Vec::new();
    loop {
        let is_table_constraint = p.peek_kw("CONSTRAINT")
            || (p.peek_kw("PRIMARY") && p.peek_kw_at(1, "KEY"))
            || (p.peek_kw("UNIQUE") && p.toks.get(p.pos + 1) == Some(&Tok::Punct('(')))
            || (p.peek_kw("CHECK") && p.toks.get(p.pos + 1) == Some(&Tok::Punct('(')))
            || (p.peek_kw("FOREIGN") && p.peek_kw_at(1, "KEY"));
        if is_table_constraint && !defs.is_empty() {
            if p.eat_kw("CONSTRAINT") {
                p.name()?;
            }
            if p.eat_kw("PRIMARY") {
                p.expect_kw("KEY")?;
                table_pk = Some(p.column_list()?);
                p.skip_conflict_clause()?;
            } else if p.eat_kw("UNIQUE") {
                uniques.push(p.column_list()?);
                p.skip_conflict_clause()?;
            } else if p.eat_kw("CHECK") {
                p.skip_parens()?;
            } else if p.eat_kw("FOREIGN") {
                p.expect_kw("KEY")?;
                let cols = p.column_list()?;
                fks.push(p.foreign_key_tail(cols)?);
            } else {
                return Err(p.err("expected a table constraint"));
            }
        } else {
            defs.push(column_def(&mut p)?);
        }
        if p.eat_punct(',') {
            continue;
        }
        p.expect_punct(')')?;
        break;
    }
    let mut without_rowid = false;
    let mut strict = false;
    loop {
        if p.eat_kw("WITHOUT") {
            p.expect_kw("ROWID")?;
            without_rowid = true;
        } else if p.eat_kw("STRICT") {
            strict = true;
        } else if p.eat_punct(',') || p.eat_punct(';') {
        } else if p.peek().is_none() {
            break;
        } else {
            return Err(p.err("unexpected text after the column list"));
        }
    }

    let mut columns: Vec<Column> = Vec::with_capacity(defs.len());
    let mut col_pk: Option<(usize, bool)> = None;
    let mut autoincrement = false;
    let mut unique_idx = Vec::new();
    let mut foreign_keys = Vec::new();
    for (i, d) in defs.into_iter().enumerate() {
        if d.pk {
            col_pk = Some((i, d.pk_desc));
        }
        autoincrement |= d.autoinc;
        if d.unique {
            unique_idx.push(vec![i]);
        }
        if let Some(fk) = d.fk {
            foreign_keys.push(fk);
        }
        columns.push(d.col);
    }
    foreign_keys.extend(fks);
    let find = |n: &str, columns: &[Column]| -> Option<usize> {
        columns.iter().position(|c| c.name.eq_ignore_ascii_case(n))
    };
    let mut pk: Vec<usize> = Vec::new();
    let mut pk_desc_quirk = false;
    if let Some(names) = &table_pk {
        for n in names {
            let i = find(n, &columns)
                .ok_or_else(|| p.err(format!("PRIMARY KEY names unknown column {n:?}")))?;
            pk.push(i);
        }
    } else if let Some((i, desc)) = col_pk {
        pk.push(i);
        pk_desc_quirk = desc;
    }
    for u in uniques {
        let idx: Option<Vec<usize>> = u.iter().map(|n| find(n, &columns)).collect();
        if let Some(idx) = idx {
            unique_idx.push(idx);
        }
    }
    for (pos, &i) in pk.iter().enumerate() {
        columns[i].pk_position = pos as u32 + 1;
    }
    let rowid_alias = (!without_rowid
        && pk.len() == 1
        && columns[pk[0]].decl_type.eq_ignore_ascii_case("INTEGER")
        && !pk_desc_quirk)
        .then(|| pk[0]);
    if without_rowid && pk.is_empty() {
        return Err(p.err("WITHOUT ROWID table without a PRIMARY KEY"));
    }
    let key = if pk.is_empty() {
        KeyColumns::Rowid
    } else {
        KeyColumns::PrimaryKey(pk)
    };
    if without_rowid || strict {
        // STRICT and WITHOUT ROWID primary keys are NOT NULL implicitly (for WITHOUT ROWID).
        if without_rowid && let KeyColumns::PrimaryKey(idx) = &key {
            for &i in idx {
                columns[i].not_null = true;
            }
        }
    }
    Ok(TableSchema {
        name: tname,
        columns,
        key,
        rowid_alias,
        without_rowid,
        strict,
        autoincrement,
        unique: unique_idx,
        foreign_keys,
        sql: sql.to_string(),
    })
}

fn column_def(p: &mut Parser<'_>) -> Result<ColDef, SchemaError> {
    let name = p.name()?;
    // Type name: words up to a constraint keyword, then an optional (n[, m]).
    let mut type_words: Vec<String> = Vec::new();
    while let Some(Tok::Ident { text, quoted }) = p.peek().cloned() {
        if !quoted
            && CONSTRAINT_WORDS
                .iter()
                .any(|k| text.eq_ignore_ascii_case(k))
        {
            break;
        }
        type_words.push(text);
        p.pos += 1;
    }
    let mut decl_type = type_words.join(" ");
    if p.peek() == Some(&Tok::Punct('(')) {
        let start = p.pos;
        p.skip_parens()?;
        let inner: Vec<String> = p.toks[start + 1..p.pos - 1]
            .iter()
            .map(|t| match t {
                Tok::Num(n) => n.clone(),
                Tok::Punct(c) => c.to_string(),
                Tok::Ident { text, .. } | Tok::Str(text) => text.clone(),
                Tok::Blob(_) => String::new(),
            })
            .collect();
        decl_type = format!("{decl_type}({})", inner.join(""));
    }
    let mut col = Column {
        name,
        affinity: Affinity::from_declared_type(&decl_type),
        decl_type,
        not_null: false,
        default_sql: None,
        default_value: None,
        pk_position: 0,
        generated: None,
        collation: None,
    };
    let mut d = ColDef {
        col: col.clone(),
        pk_desc: false,
        pk: false,
        autoinc: false,
        unique: false,
        fk: None,
    };
    loop {
        if p.eat_kw("CONSTRAINT") {
            p.name()?;
        } else if p.eat_kw("PRIMARY") {
            p.expect_kw("KEY")?;
            d.pk = true;
            if p.eat_kw("DESC") {
                d.pk_desc = true;
            } else {
                p.eat_kw("ASC");
            }
            p.skip_conflict_clause()?;
            if p.eat_kw("AUTOINCREMENT") {
                d.autoinc = true;
            }
        } else if p.eat_kw("NOT") {
            p.expect_kw("NULL")?;
            col.not_null = true;
            p.skip_conflict_clause()?;
        } else if p.eat_kw("NULL") {
            p.skip_conflict_clause()?;
        } else if p.eat_kw("UNIQUE") {
            d.unique = true;
            p.skip_conflict_clause()?;
        } else if p.eat_kw("CHECK") {
            p.skip_parens()?;
        } else if p.eat_kw("DEFAULT") {
            let start = p.pos;
            let value = default_value(p)?;
            col.default_sql = Some(tokens_to_sql(&p.toks[start..p.pos]));
            col.default_value = value.map(|v| apply_affinity(v, col.affinity));
        } else if p.eat_kw("COLLATE") {
            col.collation = Some(p.name()?);
        } else if p.peek_kw("REFERENCES") {
            d.fk = Some(p.foreign_key_tail(vec![col.name.clone()])?);
        } else if p.eat_kw("GENERATED") {
            p.expect_kw("ALWAYS")?;
            p.expect_kw("AS")?;
            col.generated = Some(generated_tail(p)?);
        } else if p.eat_kw("AS") {
            col.generated = Some(generated_tail(p)?);
        } else {
            break;
        }
    }
    d.col = col;
    Ok(d)
}

fn generated_tail(p: &mut Parser<'_>) -> Result<Generated, SchemaError> {
    p.skip_parens()?;
    if p.eat_kw("STORED") {
        Ok(Generated::Stored)
    } else {
        p.eat_kw("VIRTUAL");
        Ok(Generated::Virtual)
    }
}

/// Parses a DEFAULT clause's value; `None` when it is not a constant.
fn default_value(p: &mut Parser<'_>) -> Result<Option<Value>, SchemaError> {
    let mut sign = 1i8;
    if p.eat_punct('-') {
        sign = -1;
    } else {
        p.eat_punct('+');
    }
    match p.peek().cloned() {
        Some(Tok::Num(n)) => {
            p.pos += 1;
            Ok(parse_number(&n, sign))
        }
        Some(Tok::Str(s)) => {
            p.pos += 1;
            Ok(Some(Value::Text(s.into_bytes())))
        }
        Some(Tok::Blob(b)) => {
            p.pos += 1;
            Ok(Some(Value::Blob(b)))
        }
        Some(Tok::Punct('(')) => {
            let start = p.pos;
            p.skip_parens()?;
            // A parenthesised single literal is still a constant.
            let inner = &p.toks[start + 1..p.pos - 1];
            Ok(match inner {
                [Tok::Num(n)] => parse_number(n, 1),
                [Tok::Punct('-'), Tok::Num(n)] => parse_number(n, -1),
                [Tok::Str(s)] => Some(Value::Text(s.clone().into_bytes())),
                _ => None,
            })
        }
        Some(Tok::Ident { text, quoted }) => {
            p.pos += 1;
            let up = text.to_ascii_uppercase();
            Ok(match (quoted, up.as_str()) {
                (false, "NULL") => Some(Value::Null),
                (false, "TRUE") => Some(Value::Integer(1)),
                (false, "FALSE") => Some(Value::Integer(0)),
                (false, "CURRENT_TIME" | "CURRENT_DATE" | "CURRENT_TIMESTAMP") => None,
                // A bare identifier default is taken as a string (SQLite's legacy behaviour).
                _ => Some(Value::Text(text.into_bytes())),
            })
        }
        _ => Err(p.err("expected a DEFAULT value")),
    }
}

fn parse_number(n: &str, sign: i8) -> Option<Value> {
    if let Some(hex) = n.strip_prefix("0x").or_else(|| n.strip_prefix("0X")) {
        let v = u64::from_str_radix(hex, 16).ok()? as i64;
        return Some(Value::Integer(if sign < 0 { v.wrapping_neg() } else { v }));
    }
    if !n.contains(['.', 'e', 'E'])
        && let Ok(v) = n.parse::<i64>()
    {
        return Some(Value::Integer(if sign < 0 { -v } else { v }));
    }
    if !n.contains(['.', 'e', 'E']) && sign < 0 && n == "9223372036854775808" {
        return Some(Value::Integer(i64::MIN));
    }
    let f: f64 = n.parse().ok()?;
    Some(Value::Real(if sign < 0 { -f } else { f }))
}

fn tokens_to_sql(toks: &[Tok]) -> String {
    toks.iter()
        .map(|t| match t {
            Tok::Ident { text, quoted: true } => format!("\"{}\"", text.replace('"', "\"\"")),
            Tok::Ident { text, .. } | Tok::Num(text) => text.clone(),
            Tok::Str(s) => format!("'{}'", s.replace('\'', "''")),
            Tok::Blob(b) => format!(
                "X'{}'",
                b.iter().map(|x| format!("{x:02X}")).collect::<String>()
            ),
            Tok::Punct(c) => c.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// SQLite's affinity conversion of a value on its way into a column (datatype3 §3.4),
/// for the constants a DEFAULT can hold.
pub fn apply_affinity(v: Value, aff: Affinity) -> Value {
    match (aff, v) {
        (Affinity::Text, Value::Integer(i)) => Value::Text(i.to_string().into_bytes()),
        (Affinity::Text, Value::Real(r)) => Value::Text(format!("{r:?}").into_bytes()),
        (Affinity::Real, Value::Integer(i)) => Value::Real(i as f64),
        (Affinity::Integer | Affinity::Numeric | Affinity::Real, Value::Text(t)) => {
            let s = String::from_utf8_lossy(&t);
            let s = s.trim();
            if let Ok(i) = s.parse::<i64>() {
                if aff == Affinity::Real {
                    Value::Real(i as f64)
                } else {
                    Value::Integer(i)
                }
            } else if let Ok(f) = s.parse::<f64>()
                && !s.is_empty()
                && !s
                    .chars()
                    .any(|c| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
            {
                if aff != Affinity::Real && f.fract() == 0.0 && f.abs() < 9.0e18 {
                    Value::Integer(f as i64)
                } else {
                    Value::Real(f)
                }
            } else {
                Value::Text(t)
            }
        }
        (Affinity::Integer | Affinity::Numeric, Value::Real(r))
            if r.fract() == 0.0 && r.abs() < 9.0e18 =>
        {
            Value::Integer(r as i64)
        }
        (_, v) => v,
    }
}

/// What capture does with one `sqlite_schema` row of type `table`.
#[derive(Clone, Debug, PartialEq)]
pub enum TableDisposition {
    Captured(TableSchema),
    /// Internal (`sqlite_stat*`), virtual, or a virtual table's shadow table.
    Skipped,
}

/// The captured tables of a database, from all its `sqlite_schema` rows.
pub fn captured_tables(rows: &[SchemaRow]) -> Result<Vec<(i64, TableSchema)>, SchemaError> {
    let virtuals: Vec<String> = rows
        .iter()
        .filter(|r| r.kind == "table" && r.sql.as_deref().is_some_and(is_virtual_sql))
        .map(|r| r.name.to_ascii_lowercase())
        .collect();
    let mut out = Vec::new();
    for r in rows {
        if r.kind != "table" {
            continue;
        }
        if let TableDisposition::Captured(t) = disposition(r, &virtuals)? {
            out.push((r.rootpage, t));
        }
    }
    Ok(out)
}

fn is_virtual_sql(sql: &str) -> bool {
    let up: String = sql
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_uppercase();
    up == "CREATE VIRTUAL"
}

pub fn disposition(r: &SchemaRow, virtuals: &[String]) -> Result<TableDisposition, SchemaError> {
    let Some(sql) = r.sql.as_deref() else {
        return Ok(TableDisposition::Skipped);
    };
    if TableSchema::is_internal_name(&r.name) || is_virtual_sql(sql) || r.rootpage <= 0 {
        return Ok(TableDisposition::Skipped);
    }
    let lower = r.name.to_ascii_lowercase();
    if virtuals.iter().any(|v| {
        lower
            .strip_prefix(v.as_str())
            .and_then(|rest| rest.strip_prefix('_'))
            .is_some_and(|suffix| {
                matches!(
                    suffix,
                    "content"
                        | "data"
                        | "idx"
                        | "docsize"
                        | "config"
                        | "segments"
                        | "segdir"
                        | "stat"
                        | "node"
                        | "rowid"
                        | "parent"
                )
            })
    }) {
        return Ok(TableDisposition::Skipped);
    }
    Ok(TableDisposition::Captured(parse_create_table(
        &r.name, sql,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_identifiers_and_constraints() {
        let t = parse_create_table(
            "t",
            r#"CREATE TABLE "my ""t""" ([a b] INTEGER PRIMARY KEY AUTOINCREMENT, `c` VARCHAR(20) NOT NULL DEFAULT 'x''y' COLLATE NOCASE,
               "d" REAL DEFAULT -1 CHECK (d > 0 AND (d < 5)), e DECIMAL(10, 2) UNIQUE REFERENCES p(id) ON DELETE CASCADE,
               f TEXT GENERATED ALWAYS AS (c || 'z') VIRTUAL, g AS (d*2) STORED, h DEFAULT CURRENT_TIMESTAMP, i BOOLEAN DEFAULT TRUE,
               CONSTRAINT u UNIQUE (c, "d"), FOREIGN KEY (c) REFERENCES q ON UPDATE SET NULL, CHECK (1)) STRICT"#,
        )
        .unwrap();
        assert_eq!(t.name, "my \"t\"");
        let names: Vec<_> = t.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a b", "c", "d", "e", "f", "g", "h", "i"]);
        assert_eq!(t.rowid_alias, Some(0));
        assert_eq!(t.key, KeyColumns::PrimaryKey(vec![0]));
        assert!(t.autoincrement && t.strict && !t.without_rowid);
        assert_eq!(t.columns[1].decl_type, "VARCHAR(20)");
        assert_eq!(t.columns[1].default_value, Some(Value::text("x'y")));
        assert!(t.columns[1].not_null);
        assert_eq!(t.columns[1].collation.as_deref(), Some("NOCASE"));
        assert_eq!(t.columns[2].default_value, Some(Value::Real(-1.0)));
        assert_eq!(t.columns[3].decl_type, "DECIMAL(10,2)");
        assert_eq!(t.columns[4].generated, Some(Generated::Virtual));
        assert_eq!(t.columns[5].generated, Some(Generated::Stored));
        assert_eq!(t.columns[6].default_value, None);
        assert_eq!(t.columns[7].default_value, Some(Value::Integer(1)));
        assert_eq!(t.unique, vec![vec![3], vec![1, 2]]);
        assert_eq!(t.foreign_keys.len(), 2);
        assert_eq!(t.foreign_keys[0].on_delete.as_deref(), Some("CASCADE"));
        assert_eq!(t.foreign_keys[1].on_update.as_deref(), Some("SET NULL"));
    }

    #[test]
    fn keys() {
        let t = parse_create_table(
            "w",
            "CREATE TABLE w(a, b TEXT, c INT, PRIMARY KEY (c, a)) WITHOUT ROWID",
        )
        .unwrap();
        assert_eq!(t.key, KeyColumns::PrimaryKey(vec![2, 0]));
        assert!(t.without_rowid && t.rowid_alias.is_none());
        let t = parse_create_table("n", "CREATE TABLE n(a, b)").unwrap();
        assert_eq!(t.key, KeyColumns::Rowid);
        let t = parse_create_table("q", "CREATE TABLE q(id INTEGER PRIMARY KEY DESC, b)").unwrap();
        assert_eq!(t.rowid_alias, None, "the DESC quirk: not a rowid alias");
        let t =
            parse_create_table("q", "CREATE TABLE q(id INTEGER, b, PRIMARY KEY(id DESC))").unwrap();
        assert_eq!(t.rowid_alias, Some(0));
        let t = parse_create_table("q", "CREATE TABLE q(id INT PRIMARY KEY, b)").unwrap();
        assert_eq!(t.rowid_alias, None, "INT is not INTEGER");
        assert_eq!(t.key, KeyColumns::PrimaryKey(vec![0]));
        let t =
            parse_create_table("s", "CREATE TABLE IF NOT EXISTS main.s(x) -- comment\n").unwrap();
        assert_eq!(t.name, "s");
    }

    #[test]
    fn bad_sql_is_an_error_not_a_panic() {
        for sql in [
            "CREATE TABLE",
            "CREATE TABLE t(a",
            "CREATE TABLE t(a CHECK (x)",
            "CREATE VIEW v AS SELECT 1",
            "CREATE TABLE t('unterminated)",
        ] {
            assert!(parse_create_table("t", sql).is_err(), "{sql}");
        }
    }

    #[test]
    fn internal_and_shadow_tables_are_skipped() {
        let row = |name: &str, sql: &str| SchemaRow {
            kind: "table".into(),
            name: name.into(),
            tbl_name: name.into(),
            rootpage: if sql.contains("VIRTUAL") { 0 } else { 2 },
            sql: Some(sql.into()),
        };
        let rows = vec![
            row("docs", "CREATE VIRTUAL TABLE docs USING fts5(body)"),
            row(
                "docs_data",
                "CREATE TABLE 'docs_data'(id INTEGER PRIMARY KEY, block BLOB)",
            ),
            row("sqlite_stat1", "CREATE TABLE sqlite_stat1(tbl,idx,stat)"),
            row("sqlite_sequence", "CREATE TABLE sqlite_sequence(name,seq)"),
            row("users", "CREATE TABLE users(id INTEGER PRIMARY KEY)"),
        ];
        let names: Vec<String> = captured_tables(&rows)
            .unwrap()
            .into_iter()
            .map(|(_, t)| t.name)
            .collect();
        assert_eq!(names, ["sqlite_sequence", "users"]);
    }
}
