//! A MessagePack payload read into the document the JSON path works on, so that a generic
//! rule's `include`, `exclude`, `job_id` and `label` pointers name its fields unchanged.
//!
//! Maps become objects, arrays arrays, strings, numbers, booleans and nil themselves; what
//! JSON lacks (binary, extensions, map keys that are not strings, NaN) is written as
//! [`document`] says. A string that is not UTF-8 (the old raw type carried any bytes) is
//! read as bytes.
//!
//! The reader is written over `rmp`'s markers rather than `rmpv`'s values because it must
//! be bounded: a header's count is checked against the bytes left before anything is
//! allocated (every value takes at least one byte), nesting stops at [`MAX_DEPTH`], and a
//! payload holds at most [`MAX_ELEMENTS`] values and [`MAX_INPUT`] bytes. Past a bound, or
//! on malformed input, the payload is not read: the guard counts it `unread` and passes it,
//! as it does a payload that is not JSON.

use rmp::Marker;
use serde_json::{Map, Value};

use super::document;

/// The longest payload read, in bytes.
pub const MAX_INPUT: usize = 1 << 20;
/// The deepest nesting of arrays and maps read (serde_json's own limit for JSON).
pub const MAX_DEPTH: usize = 128;
/// The most values (containers included) one payload may hold.
pub const MAX_ELEMENTS: usize = 100_000;
/// The most bytes of text written for map keys that are not strings. A key is written as
/// JSON text, and a map used as a key inside a key escapes that text again, doubling it
/// level after level: without this bound, a few hundred bytes would write 2^100.
pub const MAX_KEY_TEXT: usize = 1 << 20;

/// Why a MessagePack payload was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MsgpackError {
    /// Longer than [`MAX_INPUT`].
    #[error("payload over {MAX_INPUT} bytes")]
    TooLong,
    /// A value, or a count, runs past the end.
    #[error("truncated")]
    Truncated,
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("nested deeper than {MAX_DEPTH}")]
    TooDeep,
    /// More than [`MAX_ELEMENTS`] values.
    #[error("more than {MAX_ELEMENTS} values")]
    TooMany,
    /// The never-used marker 0xc1.
    #[error("reserved marker 0xc1")]
    Reserved,
    /// More than [`MAX_KEY_TEXT`] bytes of keys that are not strings.
    #[error("keys over {MAX_KEY_TEXT} bytes of text")]
    KeysTooLong,
    /// Bytes after the payload's one value.
    #[error("{0} bytes after the value")]
    Trailing(usize),
}

/// The document in `input`, one MessagePack value.
pub fn decode(input: &[u8]) -> Result<Value, MsgpackError> {
    if input.len() > MAX_INPUT {
        return Err(MsgpackError::TooLong);
    }
    let mut r = Reader {
        rest: input,
        elements: 0,
        key_text: 0,
    };
    let v = r.value(0)?;
    match r.rest.len() {
        0 => Ok(v),
        n => Err(MsgpackError::Trailing(n)),
    }
}

/// What is left to read, how many values were read, how much key text was written.
struct Reader<'a> {
    rest: &'a [u8],
    elements: usize,
    key_text: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MsgpackError> {
        if n > self.rest.len() {
            return Err(MsgpackError::Truncated);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], MsgpackError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// A big-endian unsigned length of `n` bytes.
    fn len(&mut self, n: usize) -> Result<usize, MsgpackError> {
        let b = self.take(n)?;
        Ok(b.iter().fold(0usize, |acc, &x| (acc << 8) | usize::from(x)))
    }

    fn value(&mut self, depth: usize) -> Result<Value, MsgpackError> {
        self.elements += 1;
        if self.elements > MAX_ELEMENTS {
            return Err(MsgpackError::TooMany);
        }
        let marker = Marker::from_u8(self.take(1)?[0]);
        Ok(match marker {
            Marker::Null => Value::Null,
            Marker::True => Value::Bool(true),
            Marker::False => Value::Bool(false),
            Marker::FixPos(n) => n.into(),
            Marker::FixNeg(n) => n.into(),
            Marker::U8 => self.array::<1>()?[0].into(),
            Marker::U16 => u16::from_be_bytes(self.array()?).into(),
            Marker::U32 => u32::from_be_bytes(self.array()?).into(),
            Marker::U64 => u64::from_be_bytes(self.array()?).into(),
            Marker::I8 => i8::from_be_bytes(self.array()?).into(),
            Marker::I16 => i16::from_be_bytes(self.array()?).into(),
            Marker::I32 => i32::from_be_bytes(self.array()?).into(),
            Marker::I64 => i64::from_be_bytes(self.array()?).into(),
            Marker::F32 => document::float(f32::from_be_bytes(self.array()?).into()),
            Marker::F64 => document::float(f64::from_be_bytes(self.array()?)),
            Marker::FixStr(n) => self.str(usize::from(n))?,
            Marker::Str8 => self.sized(1, Self::str)?,
            Marker::Str16 => self.sized(2, Self::str)?,
            Marker::Str32 => self.sized(4, Self::str)?,
            Marker::Bin8 => self.sized(1, Self::bin)?,
            Marker::Bin16 => self.sized(2, Self::bin)?,
            Marker::Bin32 => self.sized(4, Self::bin)?,
            Marker::FixArray(n) => self.seq(usize::from(n), depth)?,
            Marker::Array16 => self.sized_in(2, depth, Self::seq)?,
            Marker::Array32 => self.sized_in(4, depth, Self::seq)?,
            Marker::FixMap(n) => self.map(usize::from(n), depth)?,
            Marker::Map16 => self.sized_in(2, depth, Self::map)?,
            Marker::Map32 => self.sized_in(4, depth, Self::map)?,
            Marker::FixExt1 => self.ext(1)?,
            Marker::FixExt2 => self.ext(2)?,
            Marker::FixExt4 => self.ext(4)?,
            Marker::FixExt8 => self.ext(8)?,
            Marker::FixExt16 => self.ext(16)?,
            Marker::Ext8 => self.sized(1, Self::ext)?,
            Marker::Ext16 => self.sized(2, Self::ext)?,
            Marker::Ext32 => self.sized(4, Self::ext)?,
            Marker::Reserved => return Err(MsgpackError::Reserved),
        })
    }

    /// `read` of a value whose length is in the next `width` bytes.
    fn sized(
        &mut self,
        width: usize,
        read: fn(&mut Self, usize) -> Result<Value, MsgpackError>,
    ) -> Result<Value, MsgpackError> {
        let n = self.len(width)?;
        read(self, n)
    }

    /// `read` of a container whose count is in the next `width` bytes.
    fn sized_in(
        &mut self,
        width: usize,
        depth: usize,
        read: fn(&mut Self, usize, usize) -> Result<Value, MsgpackError>,
    ) -> Result<Value, MsgpackError> {
        let n = self.len(width)?;
        read(self, n, depth)
    }

    fn str(&mut self, n: usize) -> Result<Value, MsgpackError> {
        let b = self.take(n)?;
        Ok(match std::str::from_utf8(b) {
            Ok(s) => Value::String(s.to_string()),
            Err(_) => document::bytes(b),
        })
    }

    fn bin(&mut self, n: usize) -> Result<Value, MsgpackError> {
        Ok(document::bytes(self.take(n)?))
    }

    fn ext(&mut self, n: usize) -> Result<Value, MsgpackError> {
        let kind = i8::from_be_bytes(self.array()?);
        let data = self.take(n)?;
        let mut m = Map::new();
        m.insert("$ext".into(), kind.into());
        m.insert("$bytes".into(), document::hex(data).into());
        Ok(Value::Object(m))
    }

    /// Before a container of `values` is allocated: it fits the bytes left (each value
    /// takes at least one) and the nesting bound.
    fn room(&self, values: usize, depth: usize) -> Result<(), MsgpackError> {
        if depth >= MAX_DEPTH {
            return Err(MsgpackError::TooDeep);
        }
        if values > self.rest.len() {
            return Err(MsgpackError::Truncated);
        }
        Ok(())
    }

    fn seq(&mut self, n: usize, depth: usize) -> Result<Value, MsgpackError> {
        self.room(n, depth)?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.value(depth + 1)?);
        }
        Ok(Value::Array(items))
    }

    /// A key that is not a string, as text, counted against [`MAX_KEY_TEXT`].
    fn key_text(&mut self, key: Value) -> Result<String, MsgpackError> {
        let text = document::key(key);
        self.key_text += text.len();
        if self.key_text > MAX_KEY_TEXT {
            return Err(MsgpackError::KeysTooLong);
        }
        Ok(text)
    }

    fn map(&mut self, n: usize, depth: usize) -> Result<Value, MsgpackError> {
        self.room(n.saturating_mul(2), depth)?;
        let mut m = Map::new();
        for _ in 0..n {
            let key = match self.value(depth + 1)? {
                Value::String(s) => s,
                other => self.key_text(other)?,
            };
            let value = self.value(depth + 1)?;
            m.insert(key, value);
        }
        Ok(Value::Object(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `value` written by rmp's encoder, the crate's other half.
    fn encoded(write: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
        let mut buf = Vec::new();
        write(&mut buf);
        buf
    }

    #[test]
    fn every_marker_reads_into_the_json_model() {
        use rmp::encode::*;
        let buf = encoded(|b| {
            write_map_len(b, 9).unwrap();
            write_str(b, "ints").unwrap();
            write_array_len(b, 10).unwrap();
            write_pfix(b, 7).unwrap();
            write_nfix(b, -3).unwrap();
            write_u8(b, 200).unwrap();
            write_u16(b, 60000).unwrap();
            write_u32(b, 4_000_000_000).unwrap();
            write_u64(b, u64::MAX).unwrap();
            write_i8(b, -100).unwrap();
            write_i16(b, -30000).unwrap();
            write_i32(b, -2_000_000_000).unwrap();
            write_i64(b, i64::MIN).unwrap();
            write_str(b, "floats").unwrap();
            write_array_len(b, 3).unwrap();
            write_f32(b, 1.5).unwrap();
            write_f64(b, -0.25).unwrap();
            write_f64(b, f64::NAN).unwrap();
            write_str(b, "plain").unwrap();
            write_array_len(b, 3).unwrap();
            write_nil(b).unwrap();
            write_bool(b, true).unwrap();
            write_bool(b, false).unwrap();
            // Str8, Str16, Str32 by length.
            write_str(b, "strs").unwrap();
            write_array_len(b, 3).unwrap();
            write_str(b, &"a".repeat(40)).unwrap();
            write_str(b, &"b".repeat(300)).unwrap();
            write_str(b, &"c".repeat(70_000)).unwrap();
            write_str(b, "bins").unwrap();
            write_array_len(b, 3).unwrap();
            write_bin(b, &[1, 2]).unwrap();
            write_bin(b, &[0xff; 300]).unwrap();
            write_bin(b, &vec![0u8; 70_000]).unwrap();
            write_str(b, "exts").unwrap();
            write_array_len(b, 2).unwrap();
            write_ext_meta(b, 1, 5).unwrap();
            b.push(9);
            write_ext_meta(b, 3, -1).unwrap();
            b.extend_from_slice(&[1, 2, 3]);
            // Keys that are not strings.
            write_uint(b, 1).unwrap();
            write_str(b, "one").unwrap();
            write_array_len(b, 2).unwrap();
            write_uint(b, 1).unwrap();
            write_str(b, "x").unwrap();
            write_str(b, "tuple key").unwrap();
            write_str(b, "raw").unwrap();
            write_str_len(b, 2).unwrap();
            b.extend_from_slice(&[0xc3, 0x28]);
        });
        let doc = decode(&buf).unwrap();
        assert_eq!(
            doc["ints"],
            json!([
                7,
                -3,
                200,
                60000,
                4_000_000_000u64,
                u64::MAX,
                -100,
                -30000,
                -2_000_000_000,
                i64::MIN
            ])
        );
        assert_eq!(doc["floats"], json!([1.5, -0.25, {"$float": "nan"}]));
        assert_eq!(doc["plain"], json!([null, true, false]));
        assert_eq!(doc["strs"][1], json!("b".repeat(300)));
        assert_eq!(doc["strs"][2].as_str().unwrap().len(), 70_000);
        assert_eq!(doc["bins"][0], json!({"$bytes": "0102"}));
        assert_eq!(doc["bins"][2]["$bytes"].as_str().unwrap().len(), 140_000);
        assert_eq!(
            doc["exts"],
            json!([{"$ext": 5, "$bytes": "09"}, {"$ext": -1, "$bytes": "010203"}])
        );
        assert_eq!(doc["1"], json!("one"));
        assert_eq!(doc[r#"[1,"x"]"#], json!("tuple key"));
        assert_eq!(doc["raw"], json!({"$bytes": "c328"}));
    }

    #[test]
    fn big_containers_by_their_wide_headers() {
        use rmp::encode::*;
        let buf = encoded(|b| {
            write_array_len(b, 2).unwrap();
            write_array_len(b, 20).unwrap();
            (0..20).for_each(|i| write_uint(b, i).map(drop).unwrap());
            write_map_len(b, 70_000).unwrap();
            for i in 0..70_000u64 {
                write_uint(b, i).unwrap();
                write_nil(b).unwrap();
            }
        });
        // 70,000 keys and as many values are over the element bound.
        assert_eq!(decode(&buf), Err(MsgpackError::TooMany));
        let buf = encoded(|b| {
            write_array_len(b, 70_000).unwrap();
            b.extend(std::iter::repeat_n(0xc0, 70_000));
        });
        assert_eq!(decode(&buf).unwrap().as_array().unwrap().len(), 70_000);
        let buf = encoded(|b| {
            write_map_len(b, 1).unwrap();
            write_str(b, "k").unwrap();
            write_u8(b, 1).unwrap();
        });
        assert_eq!(decode(&buf).unwrap(), json!({"k": 1}));
    }

    #[test]
    fn malformed_and_hostile_input_is_refused_without_allocating() {
        assert_eq!(decode(b""), Err(MsgpackError::Truncated));
        assert_eq!(decode(&[0xc1]), Err(MsgpackError::Reserved));
        assert_eq!(decode(&[0xc0, 0xc0]), Err(MsgpackError::Trailing(1)));
        assert_eq!(decode(&[0xcd, 0x01]), Err(MsgpackError::Truncated));
        assert_eq!(decode(&[0xa5, b'a']), Err(MsgpackError::Truncated));
        // An array32 and a map32 claiming four billion values, with nothing behind them.
        assert_eq!(
            decode(&[0xdd, 0xff, 0xff, 0xff, 0xff]),
            Err(MsgpackError::Truncated)
        );
        assert_eq!(
            decode(&[0xdf, 0xff, 0xff, 0xff, 0xff, 0xc0]),
            Err(MsgpackError::Truncated)
        );
        assert_eq!(
            decode(&[0xdb, 0xff, 0xff, 0xff, 0xff, b'a']),
            Err(MsgpackError::Truncated)
        );
        // Nesting: 128 arrays read, 129 do not.
        let nested = |n: usize| [vec![0x91; n], vec![0xc0]].concat();
        assert!(decode(&nested(MAX_DEPTH)).is_ok());
        assert_eq!(decode(&nested(MAX_DEPTH + 1)), Err(MsgpackError::TooDeep));
        assert_eq!(decode(&nested(1 << 19)), Err(MsgpackError::TooDeep));
        // Maps as keys of maps, 100 deep, around a key `"`: each level escapes the text of
        // the one inside, which would double it a hundred times.
        let keys = [vec![0x81; 100], vec![0xa1, b'"', 0xc0], vec![0xc0; 99]].concat();
        assert_eq!(decode(&keys), Err(MsgpackError::KeysTooLong));
        assert_eq!(
            decode(&vec![0xc0; MAX_INPUT + 1]),
            Err(MsgpackError::TooLong)
        );
        // Every prefix of a valid payload is refused, none panics.
        let mut buf = Vec::new();
        rmp::encode::write_map_len(&mut buf, 2).unwrap();
        rmp::encode::write_str(&mut buf, "args").unwrap();
        rmp::encode::write_array_len(&mut buf, 2).unwrap();
        rmp::encode::write_f64(&mut buf, 2.5).unwrap();
        rmp::encode::write_bin(&mut buf, b"xyz").unwrap();
        rmp::encode::write_u32(&mut buf, 7).unwrap();
        rmp::encode::write_ext_meta(&mut buf, 4, 2).unwrap();
        buf.extend_from_slice(b"abcd");
        assert!(decode(&buf).is_ok());
        for cut in 0..buf.len() {
            assert!(decode(&buf[..cut]).is_err(), "prefix of {cut} bytes");
        }
    }
}
