//! The record format (fileformat2 §2.1): a header-size varint that counts itself, one
//! serial-type varint per field, then the field bodies in order.
//!
//! Text is returned as UTF-8 bytes: a UTF-16 database's text is converted (unpaired
//! surrogates become U+FFFD, which is what SQLite's own conversion does too).

use super::{FormatError, slice, varint};
use ferry_core::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextEncoding {
    Utf8,
    Utf16Le,
    Utf16Be,
}

impl TextEncoding {
    pub fn to_utf8(self, bytes: &[u8]) -> Vec<u8> {
        match self {
            TextEncoding::Utf8 => bytes.to_vec(),
            TextEncoding::Utf16Le | TextEncoding::Utf16Be => {
                let units = bytes.chunks_exact(2).map(|c| {
                    if self == TextEncoding::Utf16Le {
                        u16::from_le_bytes([c[0], c[1]])
                    } else {
                        u16::from_be_bytes([c[0], c[1]])
                    }
                });
                char::decode_utf16(units)
                    .map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
                    .collect::<String>()
                    .into_bytes()
            }
        }
    }
}

/// Decodes a whole record. `page` names where the record came from, for errors; offsets in
/// errors are relative to the start of the record payload.
pub fn decode_record(
    payload: &[u8],
    page: u32,
    enc: TextEncoding,
) -> Result<Vec<Value>, FormatError> {
    let (hdr_len, n) = varint::read(payload, page, 0)?;
    let hdr_len = usize::try_from(hdr_len)
        .ok()
        .filter(|&h| h >= n && h <= payload.len())
        .ok_or_else(|| {
            FormatError::at(
                page,
                0,
                format!("record header size {hdr_len} out of range"),
            )
        })?;
    let mut types = Vec::new();
    let mut pos = n;
    while pos < hdr_len {
        let (t, n) = varint::read(&payload[..hdr_len], page, pos)?;
        types.push(t);
        pos += n;
    }
    let mut body = hdr_len;
    let mut out = Vec::with_capacity(types.len());
    for t in types {
        let (v, len) = decode_serial(payload, page, body, t, enc)?;
        out.push(v);
        body += len;
    }
    Ok(out)
}

fn decode_serial(
    p: &[u8],
    page: u32,
    off: usize,
    t: u64,
    enc: TextEncoding,
) -> Result<(Value, usize), FormatError> {
    let int = |len: usize| -> Result<(Value, usize), FormatError> {
        let b = slice(p, page, off, len)?;
        let mut v: i64 = if b[0] & 0x80 != 0 { -1 } else { 0 };
        for &x in b {
            v = (v << 8) | i64::from(x);
        }
        Ok((Value::Integer(v), len))
    };
    match t {
        0 => Ok((Value::Null, 0)),
        1 => int(1),
        2 => int(2),
        3 => int(3),
        4 => int(4),
        5 => int(6),
        6 => int(8),
        7 => {
            let b = slice(p, page, off, 8)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            Ok((Value::Real(f64::from_be_bytes(a)), 8))
        }
        8 => Ok((Value::Integer(0), 0)),
        9 => Ok((Value::Integer(1), 0)),
        10 | 11 => Err(FormatError::at(
            page,
            off,
            format!("reserved serial type {t}"),
        )),
        t => {
            let len = usize::try_from((t - 12) / 2)
                .map_err(|_| FormatError::at(page, off, "field length overflows"))?;
            let b = slice(p, page, off, len)?;
            if t % 2 == 0 {
                Ok((Value::Blob(b.to_vec()), len))
            } else {
                Ok((Value::Text(enc.to_utf8(b)), len))
            }
        }
    }
}

/// Encodes values as a record (used by tests that build pages by hand).
pub fn encode_record(values: &[Value]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut body = Vec::new();
    for v in values {
        match v {
            Value::Null => varint::write(0, &mut types),
            Value::Integer(i) => {
                varint::write(6, &mut types);
                body.extend_from_slice(&i.to_be_bytes());
            }
            Value::Real(r) => {
                varint::write(7, &mut types);
                body.extend_from_slice(&r.to_be_bytes());
            }
            Value::Text(b) => {
                varint::write(13 + 2 * b.len() as u64, &mut types);
                body.extend_from_slice(b);
            }
            Value::Blob(b) => {
                varint::write(12 + 2 * b.len() as u64, &mut types);
                body.extend_from_slice(b);
            }
        }
    }
    let mut hdr_len = types.len() + 1;
    let mut probe = Vec::new();
    varint::write(hdr_len as u64, &mut probe);
    if probe.len() > 1 {
        hdr_len = types.len() + probe.len();
    }
    let mut out = Vec::new();
    varint::write(hdr_len as u64, &mut out);
    out.extend_from_slice(&types);
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::Integer),
            any::<f64>().prop_map(Value::Real),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Value::Blob),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(vals in proptest::collection::vec(value(), 0..20)) {
            let rec = encode_record(&vals);
            prop_assert_eq!(decode_record(&rec, 1, TextEncoding::Utf8).unwrap(), vals);
        }

        #[test]
        fn random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_record(&b, 1, TextEncoding::Utf16Le);
        }
    }

    #[test]
    fn small_integer_serial_types_sign_extend() {
        // header 3 bytes: [3, 1, 3] then body -1 (1 byte), 0x800000 (3 bytes, negative)
        let rec = [3u8, 1, 3, 0xff, 0x80, 0, 0];
        assert_eq!(
            decode_record(&rec, 1, TextEncoding::Utf8).unwrap(),
            vec![Value::Integer(-1), Value::Integer(-8_388_608)]
        );
    }

    #[test]
    fn utf16_text_becomes_utf8() {
        assert_eq!(
            TextEncoding::Utf16Le.to_utf8(&[0x68, 0, 0xe9, 0]),
            "hé".as_bytes()
        );
        assert_eq!(TextEncoding::Utf16Be.to_utf8(&[0, 0x68]), b"h");
    }
}
