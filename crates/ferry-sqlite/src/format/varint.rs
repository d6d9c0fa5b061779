//! SQLite's variable-length integers: 1–9 bytes, big-endian, seven bits per byte with the
//! high bit meaning "more"; the ninth byte contributes all eight bits.

use super::FormatError;

/// Reads a varint at `offset` of `data`; returns the value and its length in bytes.
#[inline]
pub fn read(data: &[u8], page: u32, offset: usize) -> Result<(u64, usize), FormatError> {
    // Most varints in a record are one byte (header sizes, serial types, small rowids).
    if let Some(&b) = data.get(offset)
        && b < 0x80
    {
        return Ok((u64::from(b), 1));
    }
    read_long(data, page, offset)
}

fn read_long(data: &[u8], page: u32, offset: usize) -> Result<(u64, usize), FormatError> {
    let mut v: u64 = 0;
    for i in 0..9 {
        let b = *data
            .get(offset + i)
            .ok_or_else(|| FormatError::at(page, offset + i, "varint runs past the end"))?;
        if i == 8 {
            return Ok(((v << 8) | u64::from(b), 9));
        }
        v = (v << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            return Ok((v, i + 1));
        }
    }
    Ok((v, 9))
}

/// Encodes a varint (used by tests that build pages by hand).
pub fn write(v: u64, out: &mut Vec<u8>) {
    if v > 0x00ff_ffff_ffff_ffff {
        let mut buf = [0u8; 9];
        buf[8] = v as u8;
        let mut x = v >> 8;
        for i in (0..8).rev() {
            buf[i] = (x as u8 & 0x7f) | 0x80;
            x >>= 7;
        }
        out.extend_from_slice(&buf);
        return;
    }
    let mut tmp = [0u8; 9];
    let mut n = 0;
    let mut x = v;
    loop {
        tmp[n] = (x as u8 & 0x7f) | 0x80;
        n += 1;
        x >>= 7;
        if x == 0 {
            break;
        }
    }
    tmp[0] &= 0x7f;
    for i in (0..n).rev() {
        out.push(tmp[i]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(v: u64) {
            let mut b = Vec::new();
            write(v, &mut b);
            prop_assert_eq!(read(&b, 1, 0).unwrap(), (v, b.len()));
        }

        #[test]
        fn never_panics(b: Vec<u8>, off in 0usize..20) {
            let _ = read(&b, 1, off);
        }
    }

    #[test]
    fn known_encodings() {
        assert_eq!(read(&[0x7f], 1, 0).unwrap(), (127, 1));
        assert_eq!(read(&[0x81, 0x00], 1, 0).unwrap(), (128, 2));
        assert_eq!(read(&[0xff; 9], 1, 0).unwrap(), (u64::MAX, 9));
        assert!(read(&[0x81], 1, 0).is_err());
    }
}
