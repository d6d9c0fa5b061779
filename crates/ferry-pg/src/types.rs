//! Type mapping and value conversion, SQLite → PostgreSQL and back.
//!
//! One conversion function, [`PgType::convert`], decides how a SQLite [`Value`] is stored in a
//! PostgreSQL column of a given type. Everything uses it: the initial load, the streaming
//! apply, the profiler that picks types from the snapshot (a type is acceptable for a column
//! when every value converts), and `verify`, which compares a SQLite value with the
//! PostgreSQL value by converting the former and comparing [`Datum`]s
//! ([`Datum::same_as`]). Because the shipper and verify share it, a value verify accepts is
//! exactly a value the shipper would have written.
//!
//! Storage rules (documented in TYPES.md):
//! - NaN is NULL (SQLite stores NaN as NULL); −0.0 in a REAL-affinity column is 0.0 (SQLite
//!   stores integral reals there as integers);
//! - text must be valid UTF-8 without NUL to enter a text-like column: anything else is a
//!   conversion error (never a silent replacement);
//! - integers enter float columns only when exactly representable; reals enter integer
//!   columns only when integral and in range; text enters numeric columns only when it is a
//!   number;
//! - timestamps: ISO-8601 text (`YYYY-MM-DD[ T]HH:MM[:SS[.ffffff]][Z|±HH:MM]`, or a date
//!   alone), a REAL is a Julian day number, an INTEGER is Unix time in seconds — the three
//!   forms SQLite's date functions understand; stored to the microsecond.
//!
//! Values travel in PostgreSQL's binary format ([`Datum`] implements `ToSql` for any type and
//! writes the encoding of the type it was converted for), so COPY BINARY needs no text
//! parsing on the server. Types ferry does not know (enums, domains, arrays in `existing`
//! mode) travel as text into a text staging column and are cast by the server's input
//! function.

use bytes::{BufMut, BytesMut};
use ferry_core::{Affinity, Column, Value};
use postgres_types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
use std::error::Error as StdError;

/// A PostgreSQL column type ferry writes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PgType {
    Bigint,
    Integer,
    Smallint,
    Double,
    Real,
    /// `numeric` or `numeric(p, s)`.
    Numeric(Option<(u32, u32)>),
    Text,
    Varchar(Option<u32>),
    Bytea,
    Boolean,
    Date,
    Timestamp,
    Timestamptz,
    Jsonb,
    Json,
    Uuid,
    /// Any other type, by its SQL name: sent as text through the type's input function.
    Other(String),
}

impl PgType {
    /// The type as written in DDL.
    pub fn sql_name(&self) -> String {
        match self {
            PgType::Bigint => "bigint".into(),
            PgType::Integer => "integer".into(),
            PgType::Smallint => "smallint".into(),
            PgType::Double => "double precision".into(),
            PgType::Real => "real".into(),
            PgType::Numeric(None) => "numeric".into(),
            PgType::Numeric(Some((p, s))) => format!("numeric({p},{s})"),
            PgType::Text => "text".into(),
            PgType::Varchar(None) => "varchar".into(),
            PgType::Varchar(Some(n)) => format!("varchar({n})"),
            PgType::Bytea => "bytea".into(),
            PgType::Boolean => "boolean".into(),
            PgType::Date => "date".into(),
            PgType::Timestamp => "timestamp".into(),
            PgType::Timestamptz => "timestamptz".into(),
            PgType::Jsonb => "jsonb".into(),
            PgType::Json => "json".into(),
            PgType::Uuid => "uuid".into(),
            PgType::Other(name) => name.clone(),
        }
    }

    /// Parses a type name as `format_type()` prints it or as a user writes an override.
    pub fn parse(name: &str) -> PgType {
        let n = name.trim().to_ascii_lowercase();
        let args = |s: &str| -> Vec<u32> {
            s.split_once('(')
                .and_then(|(_, r)| r.strip_suffix(')'))
                .map(|inner| {
                    inner
                        .split(',')
                        .filter_map(|x| x.trim().parse().ok())
                        .collect()
                })
                .unwrap_or_default()
        };
        let base = n.split('(').next().unwrap_or("").trim();
        match base {
            "bigint" | "int8" | "bigserial" => PgType::Bigint,
            "integer" | "int" | "int4" | "serial" => PgType::Integer,
            "smallint" | "int2" => PgType::Smallint,
            "double precision" | "float8" | "float" => PgType::Double,
            "real" | "float4" => PgType::Real,
            "numeric" | "decimal" => {
                let a = args(&n);
                match a.as_slice() {
                    [p, s] => PgType::Numeric(Some((*p, *s))),
                    [p] => PgType::Numeric(Some((*p, 0))),
                    _ => PgType::Numeric(None),
                }
            }
            "text" => PgType::Text,
            "character varying" | "varchar" => PgType::Varchar(args(&n).first().copied()),
            "bytea" => PgType::Bytea,
            "boolean" | "bool" => PgType::Boolean,
            "date" => PgType::Date,
            "timestamp" | "timestamp without time zone" => PgType::Timestamp,
            "timestamptz" | "timestamp with time zone" => PgType::Timestamptz,
            "jsonb" => PgType::Jsonb,
            "json" => PgType::Json,
            "uuid" => PgType::Uuid,
            _ => PgType::Other(name.trim().to_string()),
        }
    }

    /// The type the value travels as (binary COPY, staging tables). Unknown types travel as
    /// text and are cast by the server.
    pub fn wire_type(&self) -> Type {
        match self {
            PgType::Bigint => Type::INT8,
            PgType::Integer => Type::INT4,
            PgType::Smallint => Type::INT2,
            PgType::Double => Type::FLOAT8,
            PgType::Real => Type::FLOAT4,
            PgType::Numeric(_) => Type::NUMERIC,
            PgType::Text | PgType::Other(_) => Type::TEXT,
            PgType::Varchar(_) => Type::VARCHAR,
            PgType::Bytea => Type::BYTEA,
            PgType::Boolean => Type::BOOL,
            PgType::Date => Type::DATE,
            PgType::Timestamp => Type::TIMESTAMP,
            PgType::Timestamptz => Type::TIMESTAMPTZ,
            PgType::Jsonb => Type::JSONB,
            PgType::Json => Type::JSON,
            PgType::Uuid => Type::UUID,
        }
    }

    /// The SQL type of the staging column for this type.
    pub fn wire_sql_name(&self) -> String {
        match self {
            PgType::Other(_) => "text".into(),
            t => t.sql_name(),
        }
    }

    pub fn is_integer(&self) -> bool {
        matches!(self, PgType::Bigint | PgType::Integer | PgType::Smallint)
    }

    /// Converts a SQLite value for a column of this type. `affinity` is the SQLite column's
    /// affinity (it decides the −0.0 rule).
    pub fn convert(&self, v: &Value, affinity: Affinity) -> Result<Datum, ConvertError> {
        use PgType as T;
        let v = match v {
            Value::Real(r) if r.is_nan() => return Ok(Datum::Null),
            Value::Real(r) if *r == 0.0 && affinity == Affinity::Real => &Value::Real(0.0),
            Value::Null => return Ok(Datum::Null),
            other => other,
        };
        match self {
            T::Bigint | T::Integer | T::Smallint => {
                let i = match v {
                    Value::Integer(i) => *i,
                    Value::Real(r) => real_to_i64(*r).ok_or(ConvertError::NotInteger)?,
                    Value::Text(b) => text_to_i64(b).ok_or(ConvertError::NotInteger)?,
                    Value::Blob(_) => return Err(ConvertError::WrongClass),
                    Value::Null => unreachable_null(),
                };
                match self {
                    T::Bigint => Ok(Datum::Int8(i)),
                    T::Integer => i32::try_from(i)
                        .map(Datum::Int4)
                        .map_err(|_| ConvertError::OutOfRange),
                    _ => i16::try_from(i)
                        .map(Datum::Int2)
                        .map_err(|_| ConvertError::OutOfRange),
                }
            }
            T::Double | T::Real => {
                let f = match v {
                    Value::Integer(i) => {
                        let f = *i as f64;
                        if !(-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&f)
                            || f as i64 != *i
                        {
                            return Err(ConvertError::Inexact);
                        }
                        f
                    }
                    Value::Real(r) => *r,
                    Value::Text(b) => std::str::from_utf8(b)
                        .ok()
                        .and_then(|s| s.trim().parse::<f64>().ok())
                        .filter(|f| !f.is_nan())
                        .ok_or(ConvertError::NotNumber)?,
                    Value::Blob(_) => return Err(ConvertError::WrongClass),
                    Value::Null => unreachable_null(),
                };
                if *self == T::Real {
                    let g = f as f32;
                    if f64::from(g) != f {
                        return Err(ConvertError::Inexact);
                    }
                    Ok(Datum::Float4(g))
                } else {
                    Ok(Datum::Float8(f))
                }
            }
            T::Numeric(ps) => {
                let d = match v {
                    Value::Integer(i) => Decimal::parse(&i.to_string()),
                    Value::Real(r) => {
                        if r.is_infinite() {
                            Some(Decimal::infinity(*r < 0.0))
                        } else {
                            Decimal::parse(&format!("{r}"))
                        }
                    }
                    Value::Text(b) => std::str::from_utf8(b).ok().and_then(Decimal::parse),
                    Value::Blob(_) => return Err(ConvertError::WrongClass),
                    Value::Null => unreachable_null(),
                }
                .ok_or(ConvertError::NotNumber)?;
                if let Some((p, s)) = ps
                    && !d.fits(*p, *s)
                {
                    return Err(ConvertError::OutOfRange);
                }
                Ok(Datum::Numeric(d))
            }
            T::Text | T::Varchar(_) | T::Other(_) => {
                let s = value_as_text(v)?;
                if let T::Varchar(Some(n)) = self
                    && s.chars().count() > *n as usize
                {
                    return Err(ConvertError::TooLong(*n));
                }
                Ok(Datum::Text(s))
            }
            T::Bytea => Ok(Datum::Bytea(match v {
                Value::Blob(b) | Value::Text(b) => b.clone(),
                Value::Integer(i) => i.to_string().into_bytes(),
                Value::Real(r) => real_to_text(*r).into_bytes(),
                Value::Null => unreachable_null(),
            })),
            T::Boolean => {
                let b = match v {
                    Value::Integer(0) => false,
                    Value::Integer(1) => true,
                    Value::Real(r) if *r == 0.0 => false,
                    Value::Real(r) if *r == 1.0 => true,
                    Value::Text(t) => match t.to_ascii_lowercase().as_slice() {
                        b"0" | b"f" | b"false" => false,
                        b"1" | b"t" | b"true" => true,
                        _ => return Err(ConvertError::NotBoolean),
                    },
                    _ => return Err(ConvertError::NotBoolean),
                };
                Ok(Datum::Bool(b))
            }
            T::Date => {
                let micros = value_to_timestamp(v)?;
                if micros.rem_euclid(MICROS_PER_DAY) != 0 {
                    return Err(ConvertError::NotDate);
                }
                let days = micros.div_euclid(MICROS_PER_DAY);
                i32::try_from(days)
                    .map(Datum::Date)
                    .map_err(|_| ConvertError::OutOfRange)
            }
            T::Timestamp => Ok(Datum::Timestamp(value_to_timestamp(v)?)),
            T::Timestamptz => Ok(Datum::Timestamptz(value_to_timestamp(v)?)),
            T::Jsonb | T::Json => {
                let s = match v {
                    Value::Integer(i) => i.to_string(),
                    Value::Real(r) if r.is_finite() => real_to_text(*r),
                    Value::Text(_) => value_as_text(v)?,
                    _ => return Err(ConvertError::NotJson),
                };
                if serde_json::from_str::<serde_json::Value>(&s).is_err() {
                    return Err(ConvertError::NotJson);
                }
                Ok(if *self == T::Jsonb {
                    Datum::Jsonb(s)
                } else {
                    Datum::Json(s)
                })
            }
            T::Uuid => match v {
                Value::Blob(b) if b.len() == 16 => {
                    let mut u = [0u8; 16];
                    u.copy_from_slice(b);
                    Ok(Datum::Uuid(u))
                }
                Value::Text(t) => parse_uuid(t).map(Datum::Uuid).ok_or(ConvertError::NotUuid),
                _ => Err(ConvertError::NotUuid),
            },
        }
    }
}

impl PgType {
    /// Whether [`PgType::convert`] would accept `v` — the same answer, without building a
    /// [`Datum`] (no allocation) for the cases the initial load's profiler meets on every
    /// row; the rest ask `convert`.
    pub fn accepts(&self, v: &Value, affinity: Affinity) -> bool {
        use PgType as T;
        match (self, v) {
            (_, Value::Null) => true,
            (_, Value::Real(r)) if r.is_nan() => true,
            (T::Bigint, Value::Integer(_)) => true,
            (T::Integer, Value::Integer(i)) => i32::try_from(*i).is_ok(),
            (T::Smallint, Value::Integer(i)) => i16::try_from(*i).is_ok(),
            (T::Double, Value::Real(_)) => true,
            // Every integer, and every real written out in full, is a numeric.
            (T::Numeric(None), Value::Integer(_) | Value::Real(_)) => true,
            (T::Text | T::Varchar(None) | T::Other(_), Value::Integer(_) | Value::Real(_)) => true,
            (T::Text | T::Varchar(None) | T::Other(_), Value::Text(b)) => text_fits(b).is_ok(),
            (T::Bytea, _) => true,
            _ => self.convert(v, affinity).is_ok(),
        }
    }

    /// Appends `v`, converted for a column of this type, to a binary COPY row as one field
    /// (length word, then the value in the type's binary format; length -1 for NULL).
    /// Exactly what `convert` followed by `Datum::to_sql` writes, without the intermediate
    /// `Datum` (and its copy of text and blobs) for the common cases. Returns whether the
    /// field was NULL.
    pub fn encode_copy_field(
        &self,
        v: &Value,
        affinity: Affinity,
        out: &mut BytesMut,
    ) -> Result<bool, ConvertError> {
        use PgType as T;
        match (self, v) {
            (_, Value::Null) => {
                out.put_i32(-1);
                return Ok(true);
            }
            (_, Value::Real(r)) if r.is_nan() => {
                out.put_i32(-1);
                return Ok(true);
            }
            (T::Bigint, Value::Integer(i)) => {
                out.put_i32(8);
                out.put_i64(*i);
            }
            (T::Double, Value::Real(r)) => {
                // SQLite reads -0.0 back from a REAL column as 0 (see `convert`).
                let r = if *r == 0.0 && affinity == Affinity::Real {
                    0.0
                } else {
                    *r
                };
                out.put_i32(8);
                out.put_f64(r);
            }
            (T::Text | T::Varchar(None), Value::Text(b)) => {
                let s = text_fits(b)?;
                put_field(out, s.as_bytes())?;
            }
            (T::Bytea, Value::Blob(b) | Value::Text(b)) => put_field(out, b)?,
            _ => {
                let d = self.convert(v, affinity)?;
                if d == Datum::Null {
                    out.put_i32(-1);
                    return Ok(true);
                }
                let at = out.len();
                out.put_i32(0);
                d.to_sql(&self.wire_type(), out)
                    .map_err(|_| ConvertError::OutOfRange)?;
                let len =
                    i32::try_from(out.len() - at - 4).map_err(|_| ConvertError::OutOfRange)?;
                out[at..at + 4].copy_from_slice(&len.to_be_bytes());
            }
        }
        Ok(false)
    }
}

fn put_field(out: &mut BytesMut, bytes: &[u8]) -> Result<(), ConvertError> {
    let len = i32::try_from(bytes.len()).map_err(|_| ConvertError::OutOfRange)?;
    out.put_i32(len);
    out.put_slice(bytes);
    Ok(())
}

/// Text PostgreSQL can hold: UTF-8 without NUL.
fn text_fits(b: &[u8]) -> Result<&str, ConvertError> {
    let s = std::str::from_utf8(b).map_err(|_| ConvertError::InvalidUtf8)?;
    if b.contains(&0) {
        return Err(ConvertError::NulInText);
    }
    Ok(s)
}

fn unreachable_null() -> ! {
    // Null is handled before the match on the target type.
    panic!("NULL reached a typed conversion")
}

/// Why a value does not fit a type. Carried into [`crate::PgError::BadValue`] with the table,
/// key, column and value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("text contains a NUL byte, which PostgreSQL text cannot hold")]
    NulInText,
    #[error("text is not valid UTF-8 (a text column needs UTF-8; map the column to bytea)")]
    InvalidUtf8,
    #[error("a blob cannot be stored in this type")]
    WrongClass,
    #[error("not an integer (or out of the 64-bit range)")]
    NotInteger,
    #[error("out of range for this type")]
    OutOfRange,
    #[error("cannot be represented exactly in this type")]
    Inexact,
    #[error("not a number")]
    NotNumber,
    #[error("longer than {0} characters")]
    TooLong(u32),
    #[error("not a boolean (0/1, true/false)")]
    NotBoolean,
    #[error(
        "not a timestamp (ISO-8601 text, Julian-day real or Unix-time integer as SQLite's date functions read them)"
    )]
    NotTimestamp,
    #[error("not a date (a timestamp with a time of day other than midnight)")]
    NotDate,
    #[error("not valid JSON")]
    NotJson,
    #[error("not a UUID")]
    NotUuid,
}

fn value_as_text(v: &Value) -> Result<String, ConvertError> {
    match v {
        Value::Text(b) => Ok(text_fits(b)?.to_string()),
        Value::Integer(i) => Ok(i.to_string()),
        Value::Real(r) => Ok(real_to_text(*r)),
        Value::Blob(_) => Err(ConvertError::WrongClass),
        Value::Null => unreachable_null(),
    }
}

/// A real as text: the shortest representation that reads back to the same bits, with a
/// `.0` on integral values as SQLite writes them.
pub fn real_to_text(r: f64) -> String {
    if r.is_infinite() {
        return if r > 0.0 { "Inf".into() } else { "-Inf".into() };
    }
    let s = format!("{r:?}");
    s
}

fn real_to_i64(r: f64) -> Option<i64> {
    if r.fract() != 0.0 || !(-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&r)
    {
        return None;
    }
    Some(r as i64)
}

fn text_to_i64(b: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(b).ok()?;
    let i: i64 = s.parse().ok()?;
    // Only the canonical spelling: "007" or "+5" would not read back as the same text.
    (i.to_string() == s).then_some(i)
}

fn parse_uuid(t: &[u8]) -> Option<[u8; 16]> {
    let s = std::str::from_utf8(t).ok()?;
    let hexs: String = s
        .trim_start_matches('{')
        .trim_end_matches('}')
        .chars()
        .filter(|c| *c != '-')
        .collect();
    if hexs.len() != 32 {
        return None;
    }
    let bytes = hex::decode(hexs).ok()?;
    let mut u = [0u8; 16];
    u.copy_from_slice(&bytes);
    Some(u)
}

pub(crate) const MICROS_PER_DAY: i64 = 86_400_000_000;
/// Days from 1970-01-01 to 2000-01-01, PostgreSQL's epoch.
const PG_EPOCH_DAYS: i64 = 10_957;

/// Microseconds since 1970-01-01 00:00 UTC.
fn value_to_timestamp(v: &Value) -> Result<i64, ConvertError> {
    match v {
        Value::Integer(secs) => secs.checked_mul(1_000_000).ok_or(ConvertError::OutOfRange),
        Value::Real(jd) => {
            if !jd.is_finite() {
                return Err(ConvertError::NotTimestamp);
            }
            // Julian day 2440587.5 is 1970-01-01 00:00 UTC.
            let micros = ((jd - 2_440_587.5) * 86_400_000_000.0).round();
            if micros.abs() > 9.0e18 {
                return Err(ConvertError::OutOfRange);
            }
            Ok(micros as i64)
        }
        Value::Text(b) => std::str::from_utf8(b)
            .ok()
            .and_then(parse_iso8601)
            .ok_or(ConvertError::NotTimestamp),
        _ => Err(ConvertError::NotTimestamp),
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Parses the ISO-8601 forms SQLite's date functions accept into microseconds since the
/// Unix epoch (UTC; an offset is applied, no offset means UTC).
pub fn parse_iso8601(s: &str) -> Option<i64> {
    let s = s.trim();
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) {
        return None;
    }
    let mut micros = days_from_civil(y, mo, d) * MICROS_PER_DAY;
    let mut i = 10;
    if i == b.len() {
        return Some(micros);
    }
    if b[i] != b'T' && b[i] != b' ' {
        return None;
    }
    i += 1;
    let h = num(i..i + 2)?;
    if b.get(i + 2) != Some(&b':') {
        return None;
    }
    let mi = num(i + 3..i + 5)?;
    i += 5;
    let mut sec = 0;
    let mut frac_micros = 0;
    if b.get(i) == Some(&b':') {
        sec = num(i + 1..i + 3)?;
        i += 3;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i == start {
                return None;
            }
            let digits = &s[start..i];
            let mut scaled = String::from(digits);
            scaled.truncate(6);
            while scaled.len() < 6 {
                scaled.push('0');
            }
            frac_micros = scaled.parse::<i64>().ok()?;
            // Round on the 7th digit, as PostgreSQL does.
            if digits.len() > 6 && digits.as_bytes()[6] >= b'5' {
                frac_micros += 1;
            }
        }
    }
    if h > 24 || mi > 59 || sec > 60 {
        return None;
    }
    micros += ((h * 60 + mi) * 60 + sec) * 1_000_000 + frac_micros;
    let rest = &s[i..];
    let offset_secs = match rest {
        "" | "Z" | "z" => 0,
        r if (r.starts_with('+') || r.starts_with('-')) && r.len() == 6 && &r[3..4] == ":" => {
            let sign = if r.starts_with('-') { -1 } else { 1 };
            let oh: i64 = r[1..3].parse().ok()?;
            let om: i64 = r[4..6].parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    Some(micros - offset_secs * 1_000_000)
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]` of microseconds since the Unix epoch.
pub fn format_timestamp(micros: i64) -> String {
    let days = micros.div_euclid(MICROS_PER_DAY);
    let rem = micros.rem_euclid(MICROS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    let secs = rem / 1_000_000;
    let us = rem % 1_000_000;
    let base = format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    if us == 0 {
        base
    } else {
        format!("{base}.{us:06}")
    }
}

/// A decimal number, kept as sign, digits and a power of ten: exact for anything SQLite or
/// PostgreSQL hold, and comparable after normalisation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Decimal {
    pub negative: bool,
    /// Significant digits without leading or trailing zeros (empty for zero).
    pub digits: Vec<u8>,
    /// value = digits × 10^exponent.
    pub exponent: i64,
    /// Number of fractional digits as written (PostgreSQL's display scale).
    pub dscale: u32,
    /// ±Infinity (PostgreSQL 14+ numeric); `digits` is empty.
    pub infinite: bool,
}

impl Decimal {
    pub fn infinity(negative: bool) -> Decimal {
        Decimal {
            negative,
            digits: vec![],
            exponent: 0,
            dscale: 0,
            infinite: true,
        }
    }

    /// Parses `[-+]digits[.digits][e[-+]digits]`, or `Infinity`/`-Infinity`.
    pub fn parse(s: &str) -> Option<Decimal> {
        let s = s.trim();
        let (negative, body) = match s.as_bytes().first()? {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        if body.eq_ignore_ascii_case("infinity") || body.eq_ignore_ascii_case("inf") {
            return Some(Decimal::infinity(negative));
        }
        let (mantissa, exp) = match body.find(['e', 'E']) {
            Some(i) => (&body[..i], body[i + 1..].parse::<i64>().ok()?),
            None => (body, 0),
        };
        let (int_part, frac_part) = match mantissa.split_once('.') {
            Some((a, b)) => (a, b),
            None => (mantissa, ""),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        if !int_part
            .bytes()
            .chain(frac_part.bytes())
            .all(|c| c.is_ascii_digit())
        {
            return None;
        }
        let mut digits: Vec<u8> = int_part
            .bytes()
            .chain(frac_part.bytes())
            .map(|c| c - b'0')
            .collect();
        let mut exponent = exp - frac_part.len() as i64;
        let dscale = u32::try_from((-exponent).max(0)).ok()?;
        while digits.first() == Some(&0) {
            digits.remove(0);
        }
        while digits.last() == Some(&0) {
            digits.pop();
            exponent += 1;
        }
        if digits.is_empty() {
            exponent = 0;
        }
        Some(Decimal {
            negative: negative && !digits.is_empty(),
            digits,
            exponent,
            dscale,
            infinite: false,
        })
    }

    /// Whether the value fits `numeric(p, s)` without rounding.
    pub fn fits(&self, p: u32, s: u32) -> bool {
        if self.infinite {
            return false;
        }
        if self.digits.is_empty() {
            return true;
        }
        let frac_digits = (-self.exponent).max(0);
        let int_digits = self.digits.len() as i64 + self.exponent;
        frac_digits <= i64::from(s) && int_digits <= i64::from(p) - i64::from(s)
    }

    /// Equality of value (not of display scale).
    pub fn same_value(&self, other: &Decimal) -> bool {
        self.negative == other.negative
            && self.digits == other.digits
            && self.exponent == other.exponent
            && self.infinite == other.infinite
    }

    pub fn to_text(&self) -> String {
        if self.infinite {
            return if self.negative {
                "-Infinity"
            } else {
                "Infinity"
            }
            .into();
        }
        let mut s = String::new();
        if self.negative {
            s.push('-');
        }
        let ds: String = self.digits.iter().map(|d| char::from(b'0' + d)).collect();
        if self.digits.is_empty() {
            s.push('0');
        } else if self.exponent >= 0 {
            s.push_str(&ds);
            for _ in 0..self.exponent {
                s.push('0');
            }
        } else {
            let frac = (-self.exponent) as usize;
            if ds.len() > frac {
                s.push_str(&ds[..ds.len() - frac]);
                s.push('.');
                s.push_str(&ds[ds.len() - frac..]);
            } else {
                s.push_str("0.");
                for _ in 0..frac - ds.len() {
                    s.push('0');
                }
                s.push_str(&ds);
            }
        }
        s
    }

    /// PostgreSQL's binary numeric: ndigits, weight, sign, dscale, then base-10000 digits.
    fn encode(&self, out: &mut BytesMut) {
        if self.infinite {
            out.put_i16(0);
            out.put_i16(0);
            out.put_u16(if self.negative { 0xF000 } else { 0xD000 });
            out.put_i16(0);
            return;
        }
        if self.digits.is_empty() {
            out.put_i16(0);
            out.put_i16(0);
            out.put_u16(0);
            out.put_i16(self.dscale.min(16383) as i16);
            return;
        }
        // Position of each decimal digit relative to the decimal point: digit i has power
        // p_i = exponent + (len - 1 - i). Group powers into base-10000 digits by floor(p/4).
        let len = self.digits.len() as i64;
        let top_pow = self.exponent + len - 1;
        let low_pow = self.exponent;
        let top_group = top_pow.div_euclid(4);
        let low_group = low_pow.div_euclid(4);
        let mut groups: Vec<i16> = Vec::with_capacity((top_group - low_group + 1) as usize);
        for g in (low_group..=top_group).rev() {
            let mut val: i16 = 0;
            for k in (0..4).rev() {
                let pow = g * 4 + k;
                let idx = top_pow - pow;
                let d = if (0..len).contains(&idx) {
                    self.digits[idx as usize] as i16
                } else {
                    0
                };
                val = val * 10 + d;
            }
            groups.push(val);
        }
        while groups.last() == Some(&0) {
            groups.pop();
        }
        out.put_i16(groups.len() as i16);
        out.put_i16(top_group as i16);
        out.put_u16(if self.negative { 0x4000 } else { 0 });
        out.put_i16(self.dscale.min(16383) as i16);
        for g in groups {
            out.put_i16(g);
        }
    }

    fn decode(raw: &[u8]) -> Option<Decimal> {
        let rd = |i: usize| -> Option<i16> {
            Some(i16::from_be_bytes([*raw.get(i)?, *raw.get(i + 1)?]))
        };
        let ndigits = rd(0)? as usize;
        let weight = i64::from(rd(2)?);
        let sign = rd(4)? as u16;
        let dscale = rd(6)? as u32;
        match sign {
            0xD000 => return Some(Decimal::infinity(false)),
            0xF000 => return Some(Decimal::infinity(true)),
            0xC000 => return None,
            _ => {}
        }
        let mut text = String::new();
        for k in 0..ndigits {
            text.push_str(&format!("{:04}", rd(8 + 2 * k)?));
        }
        if text.is_empty() {
            text.push('0');
        }
        // text holds groups from power weight down to weight - ndigits + 1.
        let exp = (weight - ndigits as i64 + 1) * 4;
        let mut d = Decimal::parse(&format!("{text}e{exp}"))?;
        d.negative = sign == 0x4000 && !d.digits.is_empty();
        d.dscale = dscale;
        Some(d)
    }
}

/// A value in PostgreSQL terms, in the form it travels on the wire.
#[derive(Clone, Debug, PartialEq)]
pub enum Datum {
    Null,
    Int8(i64),
    Int4(i32),
    Int2(i16),
    Float8(f64),
    Float4(f32),
    Numeric(Decimal),
    Text(String),
    Bytea(Vec<u8>),
    Bool(bool),
    /// Days since 1970-01-01.
    Date(i32),
    /// Microseconds since 1970-01-01 00:00 (UTC for timestamptz).
    Timestamp(i64),
    Timestamptz(i64),
    Jsonb(String),
    Json(String),
    Uuid([u8; 16]),
}

impl Datum {
    /// The comparison rule of `verify`: does the value converted from SQLite (`self`) equal
    /// the value read from PostgreSQL (`pg`)? Exact, except that numerics compare by value
    /// (PostgreSQL pads to the column's scale) and JSON compares by structure (jsonb
    /// normalises spacing and key order).
    pub fn same_as(&self, pg: &Datum) -> bool {
        match (self, pg) {
            (Datum::Float8(a), Datum::Float8(b)) => a.to_bits() == b.to_bits(),
            (Datum::Float4(a), Datum::Float4(b)) => a.to_bits() == b.to_bits(),
            (Datum::Numeric(a), Datum::Numeric(b)) => a.same_value(b),
            (Datum::Jsonb(a) | Datum::Json(a), Datum::Jsonb(b) | Datum::Json(b)) => {
                match (
                    serde_json::from_str::<serde_json::Value>(a),
                    serde_json::from_str::<serde_json::Value>(b),
                ) {
                    (Ok(x), Ok(y)) => x == y,
                    _ => a == b,
                }
            }
            (a, b) => a == b,
        }
    }

    /// The datum as a SQLite-comparable value (for keys in verify): integers, reals, text,
    /// blobs; booleans as 0/1; timestamps, numerics and JSON as their text.
    pub fn to_value(&self) -> Value {
        match self {
            Datum::Null => Value::Null,
            Datum::Int8(i) => Value::Integer(*i),
            Datum::Int4(i) => Value::Integer(i64::from(*i)),
            Datum::Int2(i) => Value::Integer(i64::from(*i)),
            Datum::Float8(f) => Value::Real(*f),
            Datum::Float4(f) => Value::Real(f64::from(*f)),
            Datum::Numeric(d) => Value::text(d.to_text()),
            Datum::Text(s) | Datum::Jsonb(s) | Datum::Json(s) => Value::text(s.clone()),
            Datum::Bytea(b) => Value::Blob(b.clone()),
            Datum::Bool(b) => Value::Integer(i64::from(*b)),
            Datum::Date(d) => {
                let (y, m, dd) = civil_from_days(i64::from(*d));
                Value::text(format!("{y:04}-{m:02}-{dd:02}"))
            }
            Datum::Timestamp(t) | Datum::Timestamptz(t) => Value::text(format_timestamp(*t)),
            Datum::Uuid(u) => Value::text(format_uuid(u)),
        }
    }

    /// A short, printable rendering for error messages.
    pub fn describe(&self) -> String {
        let v = self.to_value();
        truncate_for_message(&v.to_string())
    }
}

pub(crate) fn format_uuid(u: &[u8; 16]) -> String {
    let h = hex::encode(u);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Values in error messages are cut to a readable length.
pub fn truncate_for_message(s: &str) -> String {
    const MAX: usize = 120;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut}… ({} bytes in all)", s.len())
    }
}

impl ToSql for Datum {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match self {
            Datum::Null => return Ok(IsNull::Yes),
            Datum::Int8(v) => out.put_i64(*v),
            Datum::Int4(v) => out.put_i32(*v),
            Datum::Int2(v) => out.put_i16(*v),
            Datum::Float8(v) => out.put_f64(*v),
            Datum::Float4(v) => out.put_f32(*v),
            Datum::Numeric(d) => d.encode(out),
            Datum::Text(s) => out.put_slice(s.as_bytes()),
            Datum::Bytea(b) => out.put_slice(b),
            Datum::Bool(b) => out.put_u8(u8::from(*b)),
            Datum::Date(d) => out.put_i32(
                i32::try_from(i64::from(*d) - PG_EPOCH_DAYS).map_err(|_| "date out of range")?,
            ),
            Datum::Timestamp(t) | Datum::Timestamptz(t) => {
                out.put_i64(t - PG_EPOCH_DAYS * MICROS_PER_DAY)
            }
            Datum::Jsonb(s) => {
                out.put_u8(1);
                out.put_slice(s.as_bytes());
            }
            Datum::Json(s) => out.put_slice(s.as_bytes()),
            Datum::Uuid(u) => out.put_slice(u),
        }
        Ok(IsNull::No)
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for Datum {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        let be8 = |raw: &[u8]| -> Result<[u8; 8], Box<dyn StdError + Sync + Send>> {
            raw.try_into().map_err(|_| "bad 8-byte value".into())
        };
        Ok(match *ty {
            Type::INT8 => Datum::Int8(i64::from_be_bytes(be8(raw)?)),
            Type::INT4 => Datum::Int4(i32::from_be_bytes(raw.try_into().map_err(|_| "bad int4")?)),
            Type::INT2 => Datum::Int2(i16::from_be_bytes(raw.try_into().map_err(|_| "bad int2")?)),
            Type::FLOAT8 => Datum::Float8(f64::from_be_bytes(be8(raw)?)),
            Type::FLOAT4 => Datum::Float4(f32::from_be_bytes(
                raw.try_into().map_err(|_| "bad float4")?,
            )),
            Type::NUMERIC => Datum::Numeric(Decimal::decode(raw).ok_or("bad numeric")?),
            Type::BYTEA => Datum::Bytea(raw.to_vec()),
            Type::BOOL => Datum::Bool(raw.first().copied().unwrap_or(0) != 0),
            Type::DATE => Datum::Date(
                (i64::from(i32::from_be_bytes(raw.try_into().map_err(|_| "bad date")?))
                    + PG_EPOCH_DAYS) as i32,
            ),
            Type::TIMESTAMP => {
                Datum::Timestamp(i64::from_be_bytes(be8(raw)?) + PG_EPOCH_DAYS * MICROS_PER_DAY)
            }
            Type::TIMESTAMPTZ => {
                Datum::Timestamptz(i64::from_be_bytes(be8(raw)?) + PG_EPOCH_DAYS * MICROS_PER_DAY)
            }
            Type::JSONB => Datum::Jsonb(String::from_utf8(raw.get(1..).unwrap_or(&[]).to_vec())?),
            Type::JSON => Datum::Json(String::from_utf8(raw.to_vec())?),
            Type::UUID => Datum::Uuid(raw.try_into().map_err(|_| "bad uuid")?),
            // text, varchar, bpchar, name, and anything selected as ::text
            _ => Datum::Text(String::from_utf8(raw.to_vec())?),
        })
    }

    fn from_sql_null(_ty: &Type) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(Datum::Null)
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }
}

/// The type a SQLite column maps to by its declared type alone (before profiling), and the
/// chain of wider types the profiler may fall back to, in order.
pub fn declared_mapping(col: &Column) -> (PgType, Vec<PgType>) {
    let decl = col.decl_type.trim().to_ascii_uppercase();
    let base = decl.split('(').next().unwrap_or("").trim().to_string();
    let args: Vec<u32> = decl
        .split_once('(')
        .and_then(|(_, r)| r.split(')').next())
        .map(|inner| {
            inner
                .split(',')
                .filter_map(|x| x.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default();
    use PgType as T;
    let text_chain = || vec![T::Text, T::Bytea];
    let number_chain = || vec![T::Double, T::Numeric(None), T::Text, T::Bytea];
    match base.as_str() {
        "BOOLEAN" | "BOOL" => (
            T::Boolean,
            vec![T::Bigint, T::Double, T::Numeric(None), T::Text, T::Bytea],
        ),
        "DATE" => (T::Date, vec![T::Timestamp, T::Text, T::Bytea]),
        "DATETIME" | "TIMESTAMP" => (T::Timestamp, text_chain()),
        "TIMESTAMPTZ" | "TIMESTAMP WITH TIME ZONE" => (T::Timestamptz, text_chain()),
        "JSON" | "JSONB" => (T::Jsonb, text_chain()),
        "UUID" => (T::Uuid, text_chain()),
        "NUMERIC" | "DECIMAL" => {
            let first = match args.as_slice() {
                [p, s] if *p > 0 && *p <= 1000 && s <= p => T::Numeric(Some((*p, *s))),
                [p] if *p > 0 && *p <= 1000 => T::Numeric(Some((*p, 0))),
                _ => T::Numeric(None),
            };
            let mut chain = vec![T::Numeric(None), T::Text, T::Bytea];
            if first == T::Numeric(None) {
                chain.remove(0);
            }
            (first, chain)
        }
        "VARCHAR" | "CHARACTER VARYING" | "NVARCHAR" | "VARYING CHARACTER" | "NATIVE CHARACTER"
            if args.len() == 1 =>
        {
            (T::Varchar(Some(args[0])), text_chain())
        }
        _ => match col.affinity {
            Affinity::Integer => {
                let mut chain = number_chain();
                chain.insert(0, T::Bigint);
                let first = chain.remove(0);
                (first, chain)
            }
            Affinity::Real => (T::Double, vec![T::Numeric(None), T::Text, T::Bytea]),
            Affinity::Text => (T::Text, vec![T::Bytea]),
            Affinity::Blob if decl.is_empty() => (
                T::Bigint,
                vec![T::Double, T::Numeric(None), T::Text, T::Bytea],
            ),
            Affinity::Blob => (T::Bytea, vec![]),
            Affinity::Numeric => (
                T::Bigint,
                vec![T::Double, T::Numeric(None), T::Text, T::Bytea],
            ),
        },
    }
}

/// What the profiler learned about one column from the snapshot rows.
#[derive(Clone, Debug)]
pub struct ColumnProfile {
    /// Candidate types, narrowest first; `ok[i]` stays true while every value converted.
    pub candidates: Vec<PgType>,
    pub ok: Vec<bool>,
    pub non_null: u64,
    pub saw_blob: bool,
    /// The first value that no candidate accepted, kept for the error.
    pub first_rejected: Option<Value>,
}

impl ColumnProfile {
    pub fn new(col: &Column) -> ColumnProfile {
        let (first, chain) = declared_mapping(col);
        let mut candidates = vec![first];
        candidates.extend(chain);
        let n = candidates.len();
        ColumnProfile {
            candidates,
            ok: vec![true; n],
            non_null: 0,
            saw_blob: false,
            first_rejected: None,
        }
    }

    pub fn observe(&mut self, v: &Value, affinity: Affinity) {
        if v.is_null() {
            return;
        }
        self.non_null += 1;
        if matches!(v, Value::Blob(_)) {
            self.saw_blob = true;
        }
        let mut any = false;
        for (i, t) in self.candidates.iter().enumerate() {
            if self.ok[i] {
                if t.accepts(v, affinity) {
                    any = true;
                } else {
                    self.ok[i] = false;
                }
            }
        }
        if !any && self.first_rejected.is_none() {
            self.first_rejected = Some(v.clone());
        }
    }

    /// The chosen type: the declared mapping when it held everything, else the narrowest
    /// candidate that did. Bytea is chosen only when blobs were seen: text that PostgreSQL
    /// cannot hold (NUL, invalid UTF-8) is an error under the text policy, not a reason to
    /// turn a text column into bytes. A column with no values keeps the declared mapping,
    /// except that an untyped column becomes text.
    pub fn choose(&self, col: &Column) -> PgType {
        if self.non_null == 0 {
            if col.decl_type.trim().is_empty() {
                return PgType::Text;
            }
            return self.candidates[0].clone();
        }
        for (i, t) in self.candidates.iter().enumerate() {
            if self.ok[i] && (*t != PgType::Bytea || self.saw_blob) {
                return t.clone();
            }
        }
        // Nothing held every value: keep the widest text-like type so that the load fails
        // on the offending value with the clear error.
        if self.saw_blob {
            PgType::Bytea
        } else {
            PgType::Text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(decl: &str) -> Column {
        Column {
            name: "c".into(),
            decl_type: decl.into(),
            affinity: Affinity::from_declared_type(decl),
            not_null: false,
            default_sql: None,
            default_value: None,
            pk_position: 0,
            generated: None,
            collation: None,
        }
    }

    /// Values that exercise every conversion rule: edges of every integer width, reals
    /// with and without fractions, ±0, ±inf, NaN, texts that parse as numbers, dates,
    /// booleans, JSON and UUIDs, and texts PostgreSQL cannot hold.
    fn tricky_values(rng: &mut rand::rngs::StdRng) -> Vec<Value> {
        use rand::Rng;
        let mut v = vec![
            Value::Null,
            Value::Integer(0),
            Value::Integer(1),
            Value::Integer(-1),
            Value::Integer(i64::MIN),
            Value::Integer(i64::MAX),
            Value::Integer(i64::from(i32::MAX) + 1),
            Value::Integer(i64::from(i16::MIN) - 1),
            Value::Integer(1 << 53),
            Value::Integer((1 << 53) + 1),
            Value::Integer(1_700_000_000),
            Value::Real(0.0),
            Value::Real(-0.0),
            Value::Real(1.0),
            Value::Real(2.5),
            Value::Real(f64::INFINITY),
            Value::Real(f64::NEG_INFINITY),
            Value::Real(f64::NAN),
            Value::Real(1e300),
            Value::Real(5e-324),
            Value::Real(2_460_000.5),
            Value::Real(f64::from(f32::MAX)),
            Value::Real(0.1),
        ];
        for t in [
            "",
            "0",
            "1",
            "t",
            "false",
            "007",
            "+5",
            " 3.5 ",
            "1e5",
            "abc",
            "12345678901234567890",
            "2024-01-02",
            "2024-01-02 03:04:05",
            "2024-01-02T03:04:05.123+02:00",
            "now",
            "{\"a\": [1, 2]}",
            "[1,",
            "550e8400-e29b-41d4-a716-446655440000",
            "héllo wörld",
            "inf",
            "-Infinity",
            "NaN",
        ] {
            v.push(Value::Text(t.as_bytes().to_vec()));
        }
        v.push(Value::Text(vec![b'a', 0, b'b']));
        v.push(Value::Text(vec![0xff, 0xfe]));
        v.push(Value::Blob(vec![]));
        v.push(Value::Blob((0..16).collect()));
        v.push(Value::Blob(vec![0; 1000]));
        for _ in 0..300 {
            v.push(match rng.random_range(0..4) {
                0 => Value::Integer(rng.random::<i64>() >> rng.random_range(0..63)),
                1 => Value::Real(f64::from_bits(rng.random())),
                2 => Value::Real(rng.random_range(-1e6..1e6)),
                _ => Value::Text(format!("{}", rng.random_range(-1e9..1e9)).into_bytes()),
            });
        }
        v
    }

    fn all_types() -> Vec<PgType> {
        [
            "bigint",
            "integer",
            "smallint",
            "double precision",
            "real",
            "numeric",
            "numeric(10,2)",
            "text",
            "varchar",
            "varchar(3)",
            "bytea",
            "boolean",
            "date",
            "timestamp",
            "timestamptz",
            "jsonb",
            "json",
            "uuid",
            "mood",
        ]
        .iter()
        .map(|n| PgType::parse(n))
        .collect()
    }

    #[test]
    fn accepts_and_encode_copy_field_agree_with_convert() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let values = tricky_values(&mut rng);
        let affinities = [
            Affinity::Integer,
            Affinity::Real,
            Affinity::Text,
            Affinity::Blob,
            Affinity::Numeric,
        ];
        let mut checked = 0;
        for t in all_types() {
            for v in &values {
                for a in affinities {
                    let converted = t.convert(v, a);
                    assert_eq!(
                        t.accepts(v, a),
                        converted.is_ok(),
                        "accepts vs convert for {v:?} as {t:?} ({a:?}): {converted:?}"
                    );
                    let mut fast = BytesMut::new();
                    let got = t.encode_copy_field(v, a, &mut fast);
                    let mut slow = BytesMut::new();
                    let want = converted.map(|d| {
                        if d == Datum::Null {
                            slow.put_i32(-1);
                            return true;
                        }
                        let mut body = BytesMut::new();
                        d.to_sql(&t.wire_type(), &mut body).expect("to_sql");
                        slow.put_i32(body.len() as i32);
                        slow.put_slice(&body);
                        false
                    });
                    assert_eq!(got, want, "encode_copy_field for {v:?} as {t:?} ({a:?})");
                    if want.is_ok() {
                        assert_eq!(fast, slow, "bytes for {v:?} as {t:?} ({a:?})");
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked > 10_000, "{checked}");
    }

    #[test]
    fn iso_timestamps() {
        assert_eq!(parse_iso8601("1970-01-01"), Some(0));
        assert_eq!(parse_iso8601("1970-01-01 00:00:01"), Some(1_000_000));
        assert_eq!(parse_iso8601("1970-01-01T00:00:01.5Z"), Some(1_500_000));
        assert_eq!(parse_iso8601("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_iso8601("2024-02-30"), None);
        assert_eq!(parse_iso8601("yesterday"), None);
        assert_eq!(
            format_timestamp(parse_iso8601("2024-02-29 13:14:15.123456").unwrap()),
            "2024-02-29 13:14:15.123456"
        );
        // Julian day of the Unix epoch.
        assert_eq!(
            PgType::Timestamp.convert(&Value::Real(2_440_587.5), Affinity::Numeric),
            Ok(Datum::Timestamp(0))
        );
    }

    #[test]
    fn numeric_binary_round_trip() {
        for s in [
            "0",
            "1",
            "-1",
            "10000",
            "12345.678",
            "0.0001",
            "-0.00001234",
            "1e30",
            "9223372036854775807",
            "0.1",
            "123456789.987654321",
        ] {
            let d = Decimal::parse(s).unwrap();
            let mut buf = BytesMut::new();
            d.encode(&mut buf);
            let back = Decimal::decode(&buf).unwrap();
            assert!(back.same_value(&d), "{s}: {d:?} vs {back:?}");
        }
        assert!(Decimal::parse("12.34").unwrap().fits(4, 2));
        assert!(!Decimal::parse("12.345").unwrap().fits(5, 2));
        assert!(!Decimal::parse("123.4").unwrap().fits(4, 2));
        assert!(Decimal::parse("abc").is_none());
    }

    #[test]
    fn conversions_follow_the_policy() {
        let a = Affinity::Real;
        assert_eq!(
            PgType::Double.convert(&Value::Real(f64::NAN), a),
            Ok(Datum::Null)
        );
        assert_eq!(
            PgType::Double
                .convert(&Value::Real(-0.0), a)
                .map(|d| matches!(d, Datum::Float8(f) if f.to_bits() == 0)),
            Ok(true)
        );
        assert_eq!(
            PgType::Text.convert(&Value::Text(b"a\0b".to_vec()), Affinity::Text),
            Err(ConvertError::NulInText)
        );
        assert_eq!(
            PgType::Text.convert(&Value::Text(vec![0xff]), Affinity::Text),
            Err(ConvertError::InvalidUtf8)
        );
        assert_eq!(
            PgType::Bigint.convert(&Value::Real(2.5), Affinity::Integer),
            Err(ConvertError::NotInteger)
        );
        assert_eq!(
            PgType::Double.convert(&Value::Integer(i64::MAX), Affinity::Real),
            Err(ConvertError::Inexact)
        );
    }

    #[test]
    fn profiler_widens() {
        let c = col("INTEGER");
        let mut p = ColumnProfile::new(&c);
        p.observe(&Value::Integer(1), c.affinity);
        assert_eq!(p.choose(&c), PgType::Bigint);
        p.observe(&Value::Real(1.5), c.affinity);
        assert_eq!(p.choose(&c), PgType::Double);
        p.observe(&Value::text("x"), c.affinity);
        assert_eq!(p.choose(&c), PgType::Text);
        p.observe(&Value::Blob(vec![1]), c.affinity);
        assert_eq!(p.choose(&c), PgType::Bytea);

        let c = col("TEXT");
        let mut p = ColumnProfile::new(&c);
        p.observe(&Value::Text(vec![0xff]), c.affinity);
        assert_eq!(
            p.choose(&c),
            PgType::Text,
            "invalid UTF-8 must not silently become bytea"
        );

        let c = col("DATETIME");
        let mut p = ColumnProfile::new(&c);
        p.observe(&Value::text("2024-01-01 10:00:00"), c.affinity);
        p.observe(&Value::Integer(1_700_000_000), c.affinity);
        assert_eq!(p.choose(&c), PgType::Timestamp);
        p.observe(&Value::text("not a date"), c.affinity);
        assert_eq!(p.choose(&c), PgType::Text);
    }
}
