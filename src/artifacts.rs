//! Stored email bodies: `email.received` records get their `body_text` from the stored message.
//!
//! DECNET's SMTP deckies store every message they receive as `<decky_id>/smtp/<stored_as>`
//! in an artifacts directory, and may publish the event without the body. With
//! `--artifacts-dir`, the file source reads that message for an `email.received` record
//! whose payload has no string `body_text` but names a `decky_id` and a `stored_as`, and
//! puts the message's text body into the payload before the record enters the graph (the
//! graph does no I/O). A body that cannot be had — a name that is not a single path
//! component, a missing, unreadable or oversized file, a message without a text part, a
//! record that would outgrow the decoder's size limit — never fails the record or the run:
//! the record goes on as it was, and is counted.
//!
//! The MIME reading is the part of RFC 5322 and RFC 2045/2046 a body needs: header fields
//! with folding, nested multipart boundaries, the first text/plain part preferred over the
//! first text/html part (used with its markup, so the email predicates see what was sent),
//! attachments skipped, base64 and quoted-printable transfer encodings, UTF-8 and Latin-1
//! charsets (any other charset is read as UTF-8, lossily).

use std::borrow::Cow;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use ttpflow_dataflows::decode::MAX_RECORD_BYTES;
use ttpflow_dataflows::json::Json;

/// Stored messages larger than this are not read.
const MAX_MESSAGE_BYTES: u64 = 64 << 20;

/// Multiparts nested deeper than this are not looked into.
const MAX_DEPTH: usize = 16;

/// The artifacts directory, and how many bodies it could not provide.
#[derive(Debug)]
pub struct Artifacts {
    dir: PathBuf,
    missing: u64,
}

/// What one record needs.
enum Fill {
    /// Not an email waiting for its body: passes unchanged.
    Unneeded,
    /// The record with its body.
    Filled(String),
    /// The body could not be had.
    Unavailable,
}

impl Artifacts {
    pub fn new(dir: PathBuf) -> Artifacts {
        Artifacts { dir, missing: 0 }
    }

    /// Emails whose stored body could not be read, so far.
    pub fn missing(&self) -> u64 {
        self.missing
    }

    /// The record, with its stored body when it is an email that needs one.
    pub fn fill(&mut self, record: String) -> String {
        // Cheap test on the raw line, so other records are not parsed twice.
        if !(record.contains("\"email.received\"") && record.contains("\"stored_as\"")) {
            return record;
        }
        match self.fill_record(&record) {
            Fill::Unneeded => record,
            Fill::Filled(filled) => filled,
            Fill::Unavailable => {
                self.missing += 1;
                record
            }
        }
    }

    fn fill_record(&self, record: &str) -> Fill {
        // A record that does not parse is the decoder's to report.
        let Ok(mut value) = Json::parse(record) else { return Fill::Unneeded };
        if value.get("topic").and_then(Json::as_str) != Some("email.received") {
            return Fill::Unneeded;
        }
        let Some(mut payload) = value.get("payload").filter(|p| matches!(p, Json::Obj(_))).cloned() else {
            return Fill::Unneeded;
        };
        if matches!(payload.get("body_text"), Some(Json::Str(_))) {
            return Fill::Unneeded;
        }
        let name = |field: &str| payload.get(field).and_then(Json::as_str);
        let (Some(decky_id), Some(stored_as)) = (name("decky_id"), name("stored_as")) else { return Fill::Unneeded };
        let Some(path) = self.message_path(decky_id, stored_as) else {
            tracing::trace!(decky_id, stored_as, "stored message name is not a single path component");
            return Fill::Unavailable;
        };
        let Some(body) = read_message(&path).as_deref().and_then(text_body) else {
            tracing::trace!(path = %path.display(), "no text body in the stored message");
            return Fill::Unavailable;
        };
        payload.set("body_text", Json::Str(body));
        value.set("payload", payload);
        let filled = value.to_json_string();
        if filled.len() > MAX_RECORD_BYTES {
            return Fill::Unavailable;
        }
        Fill::Filled(filled)
    }

    /// `DIR/<decky_id>/smtp/<stored_as>`, when both names are single path components.
    fn message_path(&self, decky_id: &str, stored_as: &str) -> Option<PathBuf> {
        (is_single_component(decky_id) && is_single_component(stored_as))
            .then(|| self.dir.join(decky_id).join("smtp").join(stored_as))
    }
}

/// Whether `name` names an entry of a directory and nothing else: no separator, no `..`,
/// no NUL, not `.`, not empty.
fn is_single_component(name: &str) -> bool {
    !name.is_empty()
        && !name.contains(['/', '\\', '\0'])
        && !name.contains("..")
        && matches!(Path::new(name).components().collect::<Vec<_>>()[..], [Component::Normal(_)])
}

fn read_message(path: &Path) -> Option<Vec<u8>> {
    let file = std::fs::File::open(path).ok()?;
    let mut bytes = Vec::new();
    file.take(MAX_MESSAGE_BYTES + 1).read_to_end(&mut bytes).ok()?;
    (bytes.len() as u64 <= MAX_MESSAGE_BYTES).then_some(bytes)
}

/// The text body of a message: its first text/plain part, else its first text/html part,
/// attachments aside; `None` when it has neither or only blank ones.
pub fn text_body(message: &[u8]) -> Option<String> {
    let message = unix_newlines(message);
    let mut texts = Vec::new();
    collect_texts(&message, 0, &mut texts);
    if texts.is_empty() {
        return None;
    }
    let chosen = texts.swap_remove(texts.iter().position(|t| !t.html).unwrap_or(0));
    let body = chosen.text.trim_end_matches(['\r', '\n']);
    (!body.trim().is_empty()).then(|| body.to_string())
}

/// One text part, decoded.
struct TextPart {
    html: bool,
    text: String,
}

/// CRLF line ends as LF, so that one rule splits lines.
fn unix_newlines(bytes: &[u8]) -> Cow<'_, [u8]> {
    if !bytes.contains(&b'\r') {
        return Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len());
    for (i, &b) in bytes.iter().enumerate() {
        if !(b == b'\r' && bytes.get(i + 1) == Some(&b'\n')) {
            out.push(b);
        }
    }
    Cow::Owned(out)
}

/// The header fields of an entity (names lower-cased, folded lines unfolded) and its body.
fn split_entity(entity: &[u8]) -> (Vec<(String, String)>, &[u8]) {
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut rest = entity;
    while !rest.is_empty() {
        let (line, after) = match rest.iter().position(|&b| b == b'\n') {
            Some(end) => (&rest[..end], &rest[end + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = after;
        if line.is_empty() {
            break;
        }
        let line = latin1(line);
        if line.starts_with([' ', '\t']) {
            // RFC 5322 unfolding: the line break goes, the white space stays.
            if let Some((_, value)) = fields.last_mut() {
                value.push_str(&line);
            }
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_ascii_lowercase(), value.to_string()));
        }
    }
    (fields, rest)
}

fn header<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.trim())
}

/// A parsed Content-Type: `type/subtype` lower-cased, and its parameters (names lower-cased).
struct ContentType {
    mime: String,
    params: Vec<(String, String)>,
}

impl ContentType {
    /// RFC 2045: a message without a (usable) Content-Type is US-ASCII text/plain.
    fn parse(value: Option<&str>) -> ContentType {
        let mut pieces = split_params(value.unwrap_or_default()).into_iter();
        let mime = pieces.next().unwrap_or_default().trim().to_ascii_lowercase();
        let params = pieces
            .filter_map(|p| {
                let (name, value) = p.split_once('=')?;
                Some((name.trim().to_ascii_lowercase(), unquote(value.trim())))
            })
            .collect();
        let mime = if mime.contains('/') { mime } else { "text/plain".to_string() };
        ContentType { mime, params }
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Splits a header value at the semicolons that are not inside a quoted string.
fn split_params(value: &str) -> Vec<String> {
    let (mut pieces, mut current, mut quoted, mut escaped) = (Vec::new(), String::new(), false, false);
    for c in value.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => {
                pieces.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    pieces.push(current);
    pieces
}

/// A parameter value without its quotes and quoting backslashes.
fn unquote(value: &str) -> String {
    let Some(inner) = value.strip_prefix('"') else { return value.to_string() };
    let inner = inner.strip_suffix('"').unwrap_or(inner);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// Adds the text parts of an entity, in order, to `out`.
fn collect_texts(entity: &[u8], depth: usize, out: &mut Vec<TextPart>) {
    let (fields, body) = split_entity(entity);
    let content_type = ContentType::parse(header(&fields, "content-type"));
    if content_type.mime.starts_with("multipart/") {
        if let Some(boundary) = content_type.param("boundary").filter(|b| !b.is_empty() && depth < MAX_DEPTH) {
            for part in multipart_parts(body, boundary) {
                collect_texts(part, depth + 1, out);
            }
        }
        return;
    }
    let html = match content_type.mime.as_str() {
        "text/plain" => false,
        "text/html" => true,
        _ => return,
    };
    let disposition = header(&fields, "content-disposition").unwrap_or_default();
    if disposition.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case("attachment") {
        return;
    }
    let encoding = header(&fields, "content-transfer-encoding").unwrap_or_default().to_ascii_lowercase();
    let bytes = match encoding.as_str() {
        "base64" => Cow::Owned(decode_base64(body)),
        "quoted-printable" => Cow::Owned(decode_quoted_printable(body)),
        _ => Cow::Borrowed(body),
    };
    out.push(TextPart { html, text: decode_charset(&bytes, content_type.param("charset")) });
}

/// The body parts of a multipart body: what lies between its `--boundary` lines, up to the
/// `--boundary--` line (or the end, when that line is missing). The line break before a
/// delimiter belongs to the delimiter.
fn multipart_parts<'a>(body: &'a [u8], boundary: &str) -> Vec<&'a [u8]> {
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut start: Option<usize> = None;
    let mut line_start = 0;
    while line_start < body.len() {
        let line_end = body[line_start..].iter().position(|&b| b == b'\n').map_or(body.len(), |i| line_start + i);
        let line = &body[line_start..line_end];
        if let Some(rest) = line.strip_prefix(delimiter.as_bytes()) {
            let closing = rest.starts_with(b"--");
            let rest = if closing { &rest[2..] } else { rest };
            if rest.iter().all(|b| b.is_ascii_whitespace()) {
                if let Some(s) = start {
                    parts.push(&body[s..line_start.saturating_sub(1).max(s)]);
                }
                if closing {
                    return parts;
                }
                start = Some((line_end + 1).min(body.len()));
            }
        }
        line_start = line_end + 1;
    }
    if let Some(s) = start {
        parts.push(&body[s..]);
    }
    parts
}

/// Base64 (RFC 2045): characters outside the alphabet are skipped, `=` ends the data.
fn decode_base64(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * 3 / 4);
    let (mut bits, mut count) = (0u32, 0u32);
    for &c in data {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => continue,
        };
        bits = (bits << 6) | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    out
}

/// Quoted-printable (RFC 2045): `=XX` is a byte, `=` at the end of a line (trailing white
/// space allowed) joins it to the next; a malformed `=` is kept as it is.
fn decode_quoted_printable(data: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i] != b'=' {
            out.push(data[i]);
            i += 1;
            continue;
        }
        let after = &data[i + 1..];
        let padding = after.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
        if after.get(padding) == Some(&b'\n') {
            i += padding + 2;
        } else if after.len() == padding {
            i = data.len();
        } else if let (Some(h), Some(l)) = (after.first().and_then(|&b| hex(b)), after.get(1).and_then(|&b| hex(b))) {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b'=');
            i += 1;
        }
    }
    out
}

/// Text in `charset`: Latin-1 byte for byte, anything else as UTF-8 (lossily).
fn decode_charset(bytes: &[u8], charset: Option<&str>) -> String {
    let charset = charset.unwrap_or_default().trim().to_ascii_lowercase();
    match charset.as_str() {
        "iso-8859-1" | "iso8859-1" | "iso_8859-1" | "latin1" | "latin-1" | "l1" | "cp819" => latin1(bytes),
        _ => String::from_utf8_lossy(bytes).into_owned(),
    }
}

fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(message: &str) -> Option<String> {
        text_body(message.as_bytes())
    }

    #[test]
    fn a_plain_message_is_its_body() {
        let message = "From: a@example.org\r\nSubject: hello\r\n there\r\n\r\nPay the invoice today.\r\nThanks\r\n";
        assert_eq!(body(message).as_deref(), Some("Pay the invoice today.\nThanks"));
        assert_eq!(body("Subject: no type\n\nline one\n").as_deref(), Some("line one"));
    }

    #[test]
    fn headers_unfold_and_parameters_unquote() {
        let (fields, rest) =
            split_entity(b"Subject: a\n  b\nContent-Type: multipart/mixed;\n\tboundary=\"x;y\"\n\nbody");
        assert_eq!(header(&fields, "subject"), Some("a  b"));
        let content_type = ContentType::parse(header(&fields, "content-type"));
        assert_eq!(content_type.mime, "multipart/mixed");
        assert_eq!(content_type.param("boundary"), Some("x;y"));
        assert_eq!(rest, b"body");
        assert_eq!(unquote(r#""a\"b""#), "a\"b");
    }

    #[test]
    fn alternative_parts_prefer_plain_text() {
        let message = "Content-Type: multipart/alternative; boundary=\"b1\"\n\npreamble\n--b1\nContent-Type: text/html\n\n<p>Wire the money</p>\n--b1\nContent-Type: text/plain; charset=utf-8\n\nWire the money\n--b1--\nepilogue\n";
        assert_eq!(body(message).as_deref(), Some("Wire the money"));
        let html_only =
            "Content-Type: multipart/alternative; boundary=b1\n\n--b1\nContent-Type: text/html\n\n<p>Hi</p>\n--b1--\n";
        assert_eq!(body(html_only).as_deref(), Some("<p>Hi</p>"));
    }

    #[test]
    fn base64_and_quoted_printable_bodies_decode() {
        let message = "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\nVXJnZW50OiBz\nZW5kIG5vdyDinJM=\n";
        assert_eq!(body(message).as_deref(), Some("Urgent: send now ✓"));
        let message = "Content-Type: text/plain; charset=\"ISO-8859-1\"\nContent-Transfer-Encoding: quoted-printable\n\nCaf=E9 =\nau lait =3D 3=\u{20}\n=ZZ";
        assert_eq!(body(message).as_deref(), Some("Café au lait = 3=ZZ"));
        assert_eq!(decode_base64(b"QUJD\r\nREVG=="), b"ABCDEF");
        assert_eq!(decode_charset(b"caf\xc3\xa9 \xff", Some("windows-1252")), "café \u{fffd}");
    }

    #[test]
    fn nested_multiparts_are_searched_and_attachments_skipped() {
        let message = "\
Content-Type: multipart/mixed; boundary=outer\r
\r
--outer\r
Content-Type: text/plain\r
Content-Disposition: attachment; filename=notes.txt\r
\r
not the body\r
--outer\r
Content-Type: multipart/alternative; boundary=inner\r
\r
--inner\r
Content-Type: text/plain; charset=latin1\r
Content-Transfer-Encoding: quoted-printable\r
\r
Transfer =A3500 today\r
--inner\r
Content-Type: text/html\r
\r
<b>Transfer</b>\r
--inner--\r
--outer\r
Content-Type: application/pdf\r
Content-Transfer-Encoding: base64\r
\r
JVBERi0=\r
--outer--\r
";
        assert_eq!(body(message).as_deref(), Some("Transfer £500 today"));
    }

    #[test]
    fn a_message_without_a_text_part_has_no_body() {
        let message = "Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: application/zip\n\nPK\n--b--\n";
        assert_eq!(body(message), None);
        assert_eq!(body("Content-Type: image/png\n\n\u{89}PNG"), None);
        assert_eq!(body("Subject: empty\n\n\n \n"), None);
        assert_eq!(body("Content-Type: multipart/mixed\n\nno boundary\n"), None);
    }

    #[test]
    fn a_multipart_without_its_closing_line_ends_at_the_end() {
        let message = "Content-Type: multipart/mixed; boundary=b\n\n--b\n\nlast part\n";
        assert_eq!(body(message).as_deref(), Some("last part"));
        let parts = multipart_parts(b"--b\nx\n--bb\ny\n--b--\n", "b");
        assert_eq!(parts, [b"x\n--bb\ny".as_slice()], "--bb is not a delimiter of b");
    }

    #[test]
    fn only_single_path_components_are_read() {
        for good in ["decky-01", "00000001-83d4dcff.eml", "msg.eml"] {
            assert!(is_single_component(good), "{good}");
        }
        for bad in ["", ".", "..", "../x.eml", "a/b", "a\\b", "x..eml", "/etc/passwd", "a\0b"] {
            assert!(!is_single_component(bad), "{bad:?}");
        }
        let artifacts = Artifacts::new(PathBuf::from("/srv/artifacts"));
        assert_eq!(
            artifacts.message_path("decky-01", "m.eml"),
            Some(PathBuf::from("/srv/artifacts/decky-01/smtp/m.eml"))
        );
        assert_eq!(artifacts.message_path("..", "m.eml"), None);
        assert_eq!(artifacts.message_path("decky-01", "../../secret"), None);
    }

    #[test]
    fn only_emails_without_a_body_are_touched() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("d1/smtp")).unwrap();
        std::fs::write(dir.path().join("d1/smtp/m.eml"), "Subject: x\r\n\r\nsend the wire\r\n").unwrap();
        let mut artifacts = Artifacts::new(dir.path().to_path_buf());
        let email = r#"{"topic":"email.received","payload":{"decky_id":"d1","stored_as":"m.eml","rcpt_count":3}}"#;
        assert_eq!(
            artifacts.fill(email.to_string()),
            r#"{"topic":"email.received","payload":{"decky_id":"d1","stored_as":"m.eml","rcpt_count":3,"body_text":"send the wire"}}"#
        );
        let null_body =
            r#"{"topic":"email.received","payload":{"body_text":null,"decky_id":"d1","stored_as":"m.eml"}}"#;
        assert!(artifacts.fill(null_body.to_string()).contains(r#""body_text":"send the wire""#));
        for unchanged in [
            r#"{"topic":"email.received","payload":{"body_text":"","decky_id":"d1","stored_as":"m.eml"}}"#,
            r#"{"topic":"email.received","payload":{"stored_as":"m.eml"}}"#,
            r#"{"topic":"attacker.observed","payload":{"x":"email.received","decky_id":"d1","stored_as":"m.eml"}}"#,
            r#"{"topic":"email.received","payload":{"stored_as":"m.eml""#,
        ] {
            assert_eq!(artifacts.fill(unchanged.to_string()), unchanged);
        }
        assert_eq!(artifacts.missing(), 0);
        for unavailable in [
            r#"{"topic":"email.received","payload":{"decky_id":"d1","stored_as":"gone.eml"}}"#,
            r#"{"topic":"email.received","payload":{"decky_id":"..","stored_as":"m.eml"}}"#,
        ] {
            assert_eq!(artifacts.fill(unavailable.to_string()), unavailable);
        }
        assert_eq!(artifacts.missing(), 2);
    }
}
