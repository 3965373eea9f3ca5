//! JSON lines written straight into a byte buffer.
//!
//! A fleet is millions of small objects; building `serde_json::Value` trees for each would
//! cost more than everything else the generator does. These writers append the text of one
//! object to a reusable buffer, keys in the order written. Keys are the generator's own
//! ASCII literals and are written as given; every string value is escaped.

use std::fmt::{self, Write as _};
use std::io::Write as _;

/// Appends `s` as the inside of a JSON string.
fn escape_into(buf: &mut Vec<u8>, s: &str) {
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        buf.extend_from_slice(&s.as_bytes()[start..i]);
        if escaped.is_empty() {
            // Other control characters: \u00XX.
            let _ = write!(buf, "\\u{b:04x}");
        } else {
            buf.extend_from_slice(escaped);
        }
        start = i + 1;
    }
    buf.extend_from_slice(&s.as_bytes()[start..]);
}

/// Formats into a buffer, escaping as it goes, so that formatted values need no scratch string.
struct Escaper<'a>(&'a mut Vec<u8>);

impl fmt::Write for Escaper<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape_into(self.0, s);
        Ok(())
    }
}

fn quoted(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    escape_into(buf, s);
    buf.push(b'"');
}

fn quoted_fmt(buf: &mut Vec<u8>, args: fmt::Arguments<'_>) {
    buf.push(b'"');
    // Writing into a Vec cannot fail.
    let _ = Escaper(buf).write_fmt(args);
    buf.push(b'"');
}

/// Writes `micros` since the Unix epoch as DECNET's producers do (Python's `isoformat()`
/// of an aware UTC datetime): `2026-03-01T00:00:05.554000+00:00`.
pub fn write_time(buf: &mut Vec<u8>, micros: i64) {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let (y, m, d) = ttpflow_dataflows::time::civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let _ =
        write!(buf, "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}+00:00", sod / 3600, sod % 3600 / 60, sod % 60);
}

/// An open JSON object; [`Obj::close`] writes its `}`.
pub struct Obj<'a> {
    buf: &'a mut Vec<u8>,
    empty: bool,
}

impl<'a> Obj<'a> {
    /// Opens an object at the end of `buf`.
    pub fn open(buf: &'a mut Vec<u8>) -> Obj<'a> {
        buf.push(b'{');
        Obj { buf, empty: true }
    }

    fn key(&mut self, key: &str) -> &mut Vec<u8> {
        if !self.empty {
            self.buf.push(b',');
        }
        self.empty = false;
        self.buf.push(b'"');
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.extend_from_slice(b"\":");
        self.buf
    }

    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        quoted(self.key(key), value);
        self
    }

    /// A string value formatted in place: `o.fmt("id", format_args!("s-{n}"))`.
    pub fn fmt(&mut self, key: &str, value: fmt::Arguments<'_>) -> &mut Self {
        quoted_fmt(self.key(key), value);
        self
    }

    pub fn opt_str(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        match value {
            Some(v) => self.str(key, v),
            None => self.null(key),
        }
    }

    pub fn null(&mut self, key: &str) -> &mut Self {
        self.key(key).extend_from_slice(b"null");
        self
    }

    pub fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.key(key).extend_from_slice(if value { b"true" } else { b"false" });
        self
    }

    pub fn u64(&mut self, key: &str, value: u64) -> &mut Self {
        let _ = write!(self.key(key), "{value}");
        self
    }

    /// A number with `decimals` digits after the point (a JSON float, as Python writes them).
    pub fn f64(&mut self, key: &str, value: f64, decimals: usize) -> &mut Self {
        let _ = write!(self.key(key), "{value:.decimals$}");
        self
    }

    /// An event time as an ISO-8601 string (see [`write_time`]).
    pub fn time(&mut self, key: &str, micros: i64) -> &mut Self {
        let buf = self.key(key);
        buf.push(b'"');
        write_time(buf, micros);
        buf.push(b'"');
        self
    }

    /// Seconds since the epoch with milliseconds, the envelope's `ts`.
    pub fn epoch_seconds(&mut self, key: &str, micros: i64) -> &mut Self {
        let millis = micros.div_euclid(1000);
        let _ = write!(self.key(key), "{}.{:03}", millis.div_euclid(1000), millis.rem_euclid(1000));
        self
    }

    pub fn strs<'s>(&mut self, key: &str, values: impl IntoIterator<Item = &'s str>) -> &mut Self {
        let mut arr = self.arr(key);
        for v in values {
            arr.str(v);
        }
        arr.close();
        self
    }

    pub fn u64s(&mut self, key: &str, values: impl IntoIterator<Item = u64>) -> &mut Self {
        let mut arr = self.arr(key);
        for v in values {
            arr.u64(v);
        }
        arr.close();
        self
    }

    /// A nested object under `key`.
    pub fn obj(&mut self, key: &str) -> Obj<'_> {
        Obj::open(self.key(key))
    }

    /// A nested array under `key`.
    pub fn arr(&mut self, key: &str) -> Arr<'_> {
        let buf = self.key(key);
        buf.push(b'[');
        Arr { buf, empty: true }
    }

    pub fn close(self) {
        self.buf.push(b'}');
    }
}

/// An open JSON array; [`Arr::close`] writes its `]`.
pub struct Arr<'a> {
    buf: &'a mut Vec<u8>,
    empty: bool,
}

impl Arr<'_> {
    fn sep(&mut self) -> &mut Vec<u8> {
        if !self.empty {
            self.buf.push(b',');
        }
        self.empty = false;
        self.buf
    }

    pub fn str(&mut self, value: &str) -> &mut Self {
        quoted(self.sep(), value);
        self
    }

    pub fn fmt(&mut self, value: fmt::Arguments<'_>) -> &mut Self {
        quoted_fmt(self.sep(), value);
        self
    }

    pub fn u64(&mut self, value: u64) -> &mut Self {
        let _ = write!(self.sep(), "{value}");
        self
    }

    pub fn obj(&mut self) -> Obj<'_> {
        Obj::open(self.sep())
    }

    pub fn close(self) {
        self.buf.push(b']');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_valid_json_whatever_the_strings() {
        let tricky = "echo \"a\\b\"\n\t\r\u{1}\u{1f} é ${jndi:ldap://x/a}";
        let mut buf = Vec::new();
        let mut o = Obj::open(&mut buf);
        o.str("s", tricky).fmt("f", format_args!("{tricky}#{}", 3)).null("n").bool("b", false).u64("u", 42);
        o.f64("x", 1.5, 3).strs("l", ["a", "\""]).u64s("e", []);
        let mut inner = o.obj("o");
        inner.str("k", "v");
        inner.close();
        let mut arr = o.arr("a");
        arr.u64(1).str("two");
        arr.obj().close();
        arr.close();
        o.close();
        let text = String::from_utf8(buf).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(value["s"], tricky);
        assert_eq!(value["f"], format!("{tricky}#3"));
        assert_eq!(value["x"].as_f64(), Some(1.5));
        assert_eq!(value["l"], serde_json::json!(["a", "\""]));
        assert_eq!(value["e"], serde_json::json!([]));
        assert_eq!(value["a"], serde_json::json!([1, "two", {}]));
        assert!(text.starts_with(r#"{"s":"#), "keys in the order written: {text}");
    }

    #[test]
    fn times_round_trip_through_the_decoder() {
        for micros in [0, 1_772_323_200_000_000, 1_772_323_205_554_321, 4_102_444_799_999_999, -1] {
            let mut buf = Vec::new();
            write_time(&mut buf, micros);
            let text = String::from_utf8(buf).unwrap();
            assert_eq!(ttpflow_dataflows::time::parse_iso8601(&text), Some(micros), "{text}");
        }
        let mut buf = Vec::new();
        write_time(&mut buf, 1_772_323_205_554_000);
        assert_eq!(buf, b"2026-03-01T00:00:05.554000+00:00");
        let mut buf = Vec::new();
        let mut o = Obj::open(&mut buf);
        o.epoch_seconds("ts", 1_772_323_205_554_999);
        o.close();
        assert_eq!(buf, br#"{"ts":1772323205.554}"#);
    }
}
