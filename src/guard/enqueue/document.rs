//! How values JSON has no word for are written into the document a payload is read into, so
//! that MessagePack and pickle payloads are fingerprinted with the JSON path's pointers and
//! canonical hashing unchanged.
//!
//! The rules, the same for both formats (and documented in `docs/guards.md`):
//! - bytes (MessagePack `bin`, Python `bytes` and `bytearray`) are `{"$bytes": "<hex>"}`,
//!   lowercase hexadecimal;
//! - a MessagePack extension is `{"$ext": <type>, "$bytes": "<hex>"}`;
//! - an integer outside 64 bits is `{"$int": "<sign>0x<hex>"}`, its magnitude in hexadecimal;
//! - a float JSON cannot hold is `{"$float": "nan"}`, `"inf"` or `"-inf"`;
//! - a map key that is not a string is the compact JSON text of the key as rendered here
//!   (`1`, `true`, `[1,2]`); when two keys render alike, the later one wins, as a repeated
//!   JSON key does.
//!
//! A document built this way can be told from a JSON one only by these `$` objects; the
//! guard never needs to, since one rule reads one format.

use serde_json::{Map, Number, Value};

/// Lowercase hexadecimal of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Bytes as `{"$bytes": "<hex>"}`.
pub fn bytes(b: &[u8]) -> Value {
    single("$bytes", Value::String(hex(b)))
}

/// A float, or `{"$float": ...}` for the ones JSON cannot hold.
pub fn float(f: f64) -> Value {
    match Number::from_f64(f) {
        Some(n) => Value::Number(n),
        None if f.is_nan() => single("$float", "nan".into()),
        None if f > 0.0 => single("$float", "inf".into()),
        None => single("$float", "-inf".into()),
    }
}

/// An object key for `key`: a string is itself, anything else its compact JSON text.
pub fn key(key: Value) -> String {
    match key {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

/// `{name: value}`.
pub fn single(name: &str, value: Value) -> Value {
    let mut m = Map::new();
    m.insert(name.to_string(), value);
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn foreign_values_have_one_spelling() {
        assert_eq!(bytes(&[0, 0xab, 0x10]), json!({"$bytes": "00ab10"}));
        assert_eq!(float(1.5), json!(1.5));
        assert_eq!(float(f64::NAN), json!({"$float": "nan"}));
        assert_eq!(float(f64::INFINITY), json!({"$float": "inf"}));
        assert_eq!(float(f64::NEG_INFINITY), json!({"$float": "-inf"}));
        assert_eq!(key(json!("a")), "a");
        assert_eq!(key(json!(1)), "1");
        assert_eq!(key(json!([1, "x"])), r#"[1,"x"]"#);
        assert_eq!(key(json!(null)), "null");
    }
}
