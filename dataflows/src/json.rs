//! A JSON value that can live inside differential collections.
//!
//! `serde_json::Value` is neither `Ord` (differential consolidates by sorting) nor
//! bincode-friendly (timely serializes exchanged records with bincode between
//! processes, and bincode cannot drive `deserialize_any`). `Json` is a plain enum with
//! derived `Ord` and serde, so payloads can cross workers and processes unchanged.
//!
//! Numbers keep their textual form: evidence is copied out of payloads verbatim, and
//! a round trip through `f64` would change what an analyst sees (and what DECNET
//! stored). Objects keep their key order (duplicate keys: the last one wins, as with
//! Python's `json` module).

use std::fmt::{self, Write as _};

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// A JSON value with total order and bincode-compatible serde.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Json {
    Null,
    Bool(bool),
    /// The number as written in the input (normalised by serde_json's parser).
    Num(String),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

/// The error of [`Json::parse`]: serde_json's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError(pub String);

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for JsonError {}

impl Json {
    /// Parses one JSON document.
    pub fn parse(text: &str) -> Result<Json, JsonError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let value = JsonSeed.deserialize(&mut de).map_err(|e| JsonError(e.to_string()))?;
        de.end().map_err(|e| JsonError(e.to_string()))?;
        Ok(value)
    }

    /// The value of `key` when `self` is an object holding it.
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Whether `self` is an object holding `key` (whatever its value, `null` included).
    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key` on an object, replacing an existing value in place.
    pub fn set(&mut self, key: &str, value: Json) {
        if let Json::Obj(fields) = self {
            match fields.iter_mut().find(|(k, _)| k == key) {
                Some((_, v)) => *v = value,
                None => fields.push((key.to_string(), value)),
            }
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Python truthiness, which DECNET's `a or b or c` chains rely on.
    pub fn is_truthy(&self) -> bool {
        match self {
            Json::Null => false,
            Json::Bool(b) => *b,
            Json::Num(n) => n.parse::<f64>().map(|x| x != 0.0).unwrap_or(true),
            Json::Str(s) => !s.is_empty(),
            Json::Arr(a) => !a.is_empty(),
            Json::Obj(o) => !o.is_empty(),
        }
    }

    /// Python's `str()` of a scalar, as DECNET applies it to ids; `None` for
    /// arrays and objects, whose Python reprs no id should ever be built from.
    pub fn python_str(&self) -> Option<String> {
        match self {
            Json::Null => Some("None".to_string()),
            Json::Bool(true) => Some("True".to_string()),
            Json::Bool(false) => Some("False".to_string()),
            Json::Num(n) => Some(python_number(n)),
            Json::Str(s) => Some(s.clone()),
            Json::Arr(_) | Json::Obj(_) => None,
        }
    }

    /// A short name of the value's type for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "boolean",
            Json::Num(_) => "number",
            Json::Str(_) => "string",
            Json::Arr(_) => "array",
            Json::Obj(_) => "object",
        }
    }

    /// Compact JSON text.
    pub fn write_to(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Num(n) => out.push_str(n),
            Json::Str(s) => write_str(s, out),
            Json::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write_to(out);
                }
                out.push(']');
            }
            Json::Obj(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_str(k, out);
                    out.push(':');
                    v.write_to(out);
                }
                out.push('}');
            }
        }
    }

    pub fn to_json_string(&self) -> String {
        let mut out = String::new();
        self.write_to(&mut out);
        out
    }
}

/// Writes `s` as a JSON string literal.
pub fn write_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `str()` of a JSON number: integers as written, floats in repr form.
fn python_number(text: &str) -> String {
    if text.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        return text.to_string();
    }
    match text.parse::<f64>() {
        Ok(x) if x.is_finite() && x == x.trunc() && x.abs() < 1e16 => format!("{x:.1}"),
        Ok(x) => {
            let s = format!("{x:?}");
            // Rust writes `1e20`, Python `1e+20`.
            match s.split_once('e') {
                Some((m, e)) if !e.starts_with('-') => format!("{m}e+{e}"),
                _ => s,
            }
        }
        Err(_) => text.to_string(),
    }
}

/// Drives serde_json into [`Json`] (bincode uses the derived impl instead).
struct JsonSeed;

impl<'de> DeserializeSeed<'de> for JsonSeed {
    type Value = Json;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Json, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Num(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Num(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
        if !v.is_finite() {
            return Err(E::custom("number out of range"));
        }
        Ok(Json::Num(format!("{v:?}")))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Json, E> {
        Ok(Json::Str(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Json, E> {
        Ok(Json::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(JsonSeed)? {
            items.push(item);
        }
        Ok(Json::Arr(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut fields: Vec<(String, Json)> = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(JsonSeed)?;
            match fields.iter_mut().find(|(k, _)| *k == key) {
                Some((_, v)) => *v = value,
                None => fields.push((key, value)),
            }
        }
        Ok(Json::Obj(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_compact_text() {
        let text = r#"{"a":1,"b":[true,null,"x\"y"],"c":{"d":0.05},"e":-3}"#;
        assert_eq!(Json::parse(text).unwrap().to_json_string(), text);
    }

    #[test]
    fn duplicate_keys_keep_the_last_value() {
        let v = Json::parse(r#"{"a":1,"a":2}"#).unwrap();
        assert_eq!(v, Json::Obj(vec![("a".into(), Json::Num("2".into()))]));
    }

    #[test]
    fn python_str_of_scalars() {
        let cases = [("5", "5"), ("5.0", "5.0"), ("0.25", "0.25"), ("1e20", "1e+20"), ("true", "True"), ("\"x\"", "x")];
        for (text, want) in cases {
            assert_eq!(Json::parse(text).unwrap().python_str().unwrap(), want, "{text}");
        }
        assert_eq!(Json::parse("[1]").unwrap().python_str(), None);
    }

    #[test]
    fn truthiness_follows_python() {
        for (text, want) in [
            ("0", false),
            ("0.0", false),
            ("\"\"", false),
            ("[]", false),
            ("{}", false),
            ("null", false),
            ("1", true),
            ("\"0\"", true),
        ] {
            assert_eq!(Json::parse(text).unwrap().is_truthy(), want, "{text}");
        }
    }

    #[test]
    fn rejects_trailing_garbage_and_invalid_text() {
        assert!(Json::parse("{} x").is_err());
        assert!(Json::parse("{").is_err());
    }
}
