use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::fmt;

/// A SQLite value in one of SQLite's five storage classes.
///
/// Text is kept as the bytes SQLite stored (converted to UTF-8 when the database is UTF-16),
/// so text that is not valid UTF-8 survives capture and the log unchanged; the sink's policy
/// decides what to do with it.
///
/// Equality is exact (same storage class, reals compared bit for bit), which is what
/// differential tests need. [`Ord`] is SQLite's own sort order for the BINARY collation:
/// NULL, then numbers (integers and reals compared by value), then text, then blobs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

impl Value {
    pub fn text(s: impl Into<String>) -> Value {
        Value::Text(s.into().into_bytes())
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The text as UTF-8, if this is text and valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// Name of the storage class, as SQLite's `typeof()` spells it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Integer(_) => "integer",
            Value::Real(_) => "real",
            Value::Text(_) => "text",
            Value::Blob(_) => "blob",
        }
    }

    /// Approximate heap plus inline size, used to bound batches by bytes.
    pub fn approx_size(&self) -> usize {
        match self {
            Value::Text(b) | Value::Blob(b) => 16 + b.len(),
            _ => 16,
        }
    }

    fn class_rank(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Integer(_) | Value::Real(_) => 1,
            Value::Text(_) => 2,
            Value::Blob(_) => 3,
        }
    }
}

/// Compares an integer with a real the way SQLite does: by mathematical value, exactly, even
/// where the integer has no exact f64 representation.
fn cmp_int_real(i: i64, r: f64) -> Ordering {
    if r.is_nan() {
        // SQLite never stores NaN; order it after every number so the order stays total.
        return Ordering::Less;
    }
    // 2^63 is exactly representable; every f64 at or above it exceeds every i64.
    const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;
    if r >= TWO_POW_63 {
        return Ordering::Less;
    }
    if r < -TWO_POW_63 {
        return Ordering::Greater;
    }
    let t = r.trunc();
    // t is in i64 range here.
    let ti = t as i64;
    match i.cmp(&ti) {
        Ordering::Equal => {
            let frac = r - t;
            if frac > 0.0 {
                Ordering::Less
            } else if frac < 0.0 {
                Ordering::Greater
            } else {
                Ordering::Equal
            }
        }
        o => o,
    }
}

impl Ord for Value {
    fn cmp(&self, other: &Self) -> Ordering {
        use Value::*;
        match (self, other) {
            (Null, Null) => Ordering::Equal,
            (Integer(a), Integer(b)) => a.cmp(b),
            (Real(a), Real(b)) => a.total_cmp(b),
            // An integer and an equal real: integer first, so the order stays total and
            // consistent with exact equality.
            (Integer(a), Real(b)) => cmp_int_real(*a, *b).then(Ordering::Less),
            (Real(a), Integer(b)) => cmp_int_real(*b, *a).reverse().then(Ordering::Greater),
            (Text(a), Text(b)) => a.cmp(b),
            (Blob(a), Blob(b)) => a.cmp(b),
            _ => self.class_rank().cmp(&other.class_rank()),
        }
    }
}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        use Value::*;
        match (self, other) {
            (Null, Null) => true,
            (Integer(a), Integer(b)) => a == b,
            (Real(a), Real(b)) => a.to_bits() == b.to_bits(),
            (Text(a), Text(b)) => a == b,
            (Blob(a), Blob(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Value {}

impl std::hash::Hash for Value {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            Value::Null => {}
            Value::Integer(i) => i.hash(state),
            Value::Real(r) => r.to_bits().hash(state),
            Value::Text(b) | Value::Blob(b) => b.hash(state),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Integer(i) => write!(f, "{i}"),
            Value::Real(r) => write!(f, "{r:?}"),
            Value::Text(b) => match std::str::from_utf8(b) {
                Ok(s) => write!(f, "'{}'", s.replace('\'', "''")),
                Err(_) => write!(f, "CAST(X'{}' AS TEXT)", hex::encode_upper(b)),
            },
            Value::Blob(b) => write!(f, "X'{}'", hex::encode_upper(b)),
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Integer(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Real(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.as_bytes().to_vec())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_sort_order() {
        let mut v = vec![
            Value::Blob(vec![0]),
            Value::text("a"),
            Value::Real(1.5),
            Value::Integer(2),
            Value::Integer(1),
            Value::Null,
        ];
        v.sort();
        assert_eq!(
            v,
            vec![
                Value::Null,
                Value::Integer(1),
                Value::Real(1.5),
                Value::Integer(2),
                Value::text("a"),
                Value::Blob(vec![0]),
            ]
        );
    }

    #[test]
    fn int_real_compare_is_exact_at_the_edges() {
        assert_eq!(
            cmp_int_real(i64::MAX, 9_223_372_036_854_775_808.0),
            Ordering::Less
        );
        assert_eq!(
            cmp_int_real(i64::MIN, -9_223_372_036_854_775_808.0),
            Ordering::Equal
        );
        assert_eq!(cmp_int_real(3, 3.0), Ordering::Equal);
        assert_eq!(cmp_int_real(-3, -3.5), Ordering::Greater);
        assert!(Value::Integer(3) < Value::Real(3.0));
        assert_ne!(Value::Integer(3), Value::Real(3.0));
    }

    #[test]
    fn reals_compare_bit_for_bit() {
        assert_ne!(Value::Real(0.0), Value::Real(-0.0));
        assert_eq!(Value::Real(f64::INFINITY), Value::Real(f64::INFINITY));
    }
}
