//! Embedded input and output: JSONL files in, JSONL files out (DESIGN §1.4, §1.5).
//!
//! Inputs are read in the order given, one record per line; a line's offset is its
//! 0-based index in its file (`-` is standard input). A line longer than the record limit
//! ([`MAX_RECORD_BYTES`]) is skipped to its end as it is read, holding none of it, and
//! becomes an `oversize` dead letter with its length; with an artifacts directory, emails
//! get their stored bodies as they are read ([`crate::artifacts`]). Outputs go to a directory:
//! `tags.jsonl` (one stored tag per line, DECNET's tag fields plus `observed_at`) and
//! `dead_letters.jsonl` (input, line, topic, reason, detail).

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use ttpflow_dataflows::decode::MAX_RECORD_BYTES;
use ttpflow_dataflows::json::write_str;
use ttpflow_dataflows::record::{DeadLetter, Line, LineError, Pos, Tag};
use ttpflow_dataflows::rollup::RollupRow;
use ttpflow_dataflows::time::format_rfc3339;

use crate::artifacts::Artifacts;

/// Errors of the file source and sinks.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("failed to open input \"{}\"", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to read input \"{}\" at line {line}", path.display())]
    Read {
        path: PathBuf,
        line: u64,
        #[source]
        source: io::Error,
    },
    #[error("failed to write \"{}\"", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Reads the lines of the inputs, in order, as records.
pub struct LineSource {
    inputs: Vec<PathBuf>,
    current: Option<(u32, u64, Box<dyn BufRead>)>,
    next_input: usize,
    buf: Vec<u8>,
    /// Where email bodies missing from payloads are read from, when given.
    artifacts: Option<Artifacts>,
}

impl LineSource {
    pub fn new(inputs: Vec<PathBuf>) -> LineSource {
        LineSource { inputs, current: None, next_input: 0, buf: Vec::new(), artifacts: None }
    }

    /// Fills in the bodies of emails from the stored messages in `dir` (see [`crate::artifacts`]).
    pub fn with_artifacts(mut self, dir: Option<PathBuf>) -> LineSource {
        self.artifacts = dir.map(Artifacts::new);
        self
    }

    /// Emails whose stored body could not be read.
    pub fn artifacts_missing(&self) -> u64 {
        self.artifacts.as_ref().map_or(0, Artifacts::missing)
    }

    fn open(path: &Path) -> Result<Box<dyn BufRead>, FileError> {
        if path == Path::new("-") {
            return Ok(Box::new(BufReader::with_capacity(1 << 20, io::stdin())));
        }
        let file = File::open(path).map_err(|source| FileError::Open { path: path.to_path_buf(), source })?;
        Ok(Box::new(BufReader::with_capacity(1 << 20, file)))
    }

    /// The next record, `None` at the end of the last input. Blank lines are skipped
    /// (their offsets are kept, so line numbers stay true).
    pub fn next_line(&mut self) -> Result<Option<Line>, FileError> {
        loop {
            let Some((input, offset, reader)) = &mut self.current else {
                let Some(path) = self.inputs.get(self.next_input) else { return Ok(None) };
                self.current = Some((self.next_input as u32, 0, LineSource::open(path)?));
                self.next_input += 1;
                continue;
            };
            self.buf.clear();
            let read = read_bounded_line(reader, &mut self.buf, MAX_RECORD_BYTES).map_err(|source| {
                FileError::Read { path: self.inputs[*input as usize].clone(), line: *offset + 1, source }
            })?;
            let pos = Pos { ts: 0, input: *input, offset: *offset };
            match read {
                Bounded::End => {
                    self.current = None;
                    continue;
                }
                Bounded::Oversize { bytes } => {
                    *offset += 1;
                    return Ok(Some(Line { pos, topic: None, text: Err(LineError::Oversize { bytes }) }));
                }
                Bounded::Line => {}
            }
            *offset += 1;
            while matches!(self.buf.last(), Some(b'\n' | b'\r')) {
                self.buf.pop();
            }
            if self.buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let text = String::from_utf8(std::mem::take(&mut self.buf))
                .map_err(|e| LineError::InvalidUtf8(format!("invalid UTF-8 at byte {}", e.utf8_error().valid_up_to())))
                .map(|text| match &mut self.artifacts {
                    Some(artifacts) => artifacts.fill(text),
                    None => text,
                });
            return Ok(Some(Line { pos, topic: None, text }));
        }
    }
}

/// What [`read_bounded_line`] read.
#[derive(Debug, PartialEq, Eq)]
enum Bounded {
    /// The input has ended.
    End,
    /// A line (its newline included, when it had one) is in the buffer.
    Line,
    /// The line was longer than the limit: it was read to its end and dropped; `bytes`
    /// counts what was read, its line ending included.
    Oversize { bytes: u64 },
}

/// Reads one line into `buf` as `read_until` would, but holds at most `limit` bytes (plus a
/// line ending) of it: the rest of a longer line is consumed from the reader's buffer
/// without being kept, so memory stays bounded whatever the input (`/dev/zero` included).
fn read_bounded_line(reader: &mut dyn BufRead, buf: &mut Vec<u8>, limit: usize) -> io::Result<Bounded> {
    let mut total = 0u64;
    let mut over = false;
    loop {
        let chunk = match reader.fill_buf() {
            Ok(chunk) => chunk,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            break;
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        total += take as u64;
        // A line ending may follow the limit: `limit` bytes of record are still a record.
        if !over && buf.len() + take > limit + 2 {
            over = true;
            buf.clear();
        }
        if !over {
            buf.extend_from_slice(&chunk[..take]);
        }
        reader.consume(take);
        if done {
            break;
        }
    }
    if total == 0 {
        return Ok(Bounded::End);
    }
    let ending = if buf.ends_with(b"\r\n") { 2 } else { usize::from(buf.ends_with(b"\n")) };
    if over || buf.len() - ending > limit {
        buf.clear();
        return Ok(Bounded::Oversize { bytes: total });
    }
    Ok(Bounded::Line)
}

/// A JSONL output file.
pub struct JsonlWriter {
    path: PathBuf,
    out: BufWriter<File>,
    line: String,
    pub written: u64,
}

impl JsonlWriter {
    pub fn create(path: PathBuf) -> Result<JsonlWriter, FileError> {
        let file = File::create(&path).map_err(|source| FileError::Write { path: path.clone(), source })?;
        Ok(JsonlWriter { path, out: BufWriter::with_capacity(1 << 20, file), line: String::new(), written: 0 })
    }

    /// Writes one line built by `build`.
    pub fn write_with(&mut self, build: impl FnOnce(&mut String)) -> Result<(), FileError> {
        self.line.clear();
        build(&mut self.line);
        self.line.push('\n');
        self.written += 1;
        self.out.write_all(self.line.as_bytes()).map_err(|source| FileError::Write { path: self.path.clone(), source })
    }

    pub fn finish(mut self) -> Result<u64, FileError> {
        self.out.flush().map_err(|source| FileError::Write { path: self.path.clone(), source })?;
        Ok(self.written)
    }
}

fn opt_str(value: &Option<String>, out: &mut String) {
    match value {
        Some(s) => write_str(s, out),
        None => out.push_str("null"),
    }
}

/// A stored tag as one JSON object with DECNET's tag fields plus `observed_at`.
pub fn tag_json(tag: &Tag, out: &mut String) {
    let uuid = uuid::Uuid::from_bytes(tag.uuid);
    out.push_str("{\"uuid\":\"");
    out.push_str(uuid.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()));
    out.push_str("\",\"source_kind\":");
    write_str(&tag.source_kind, out);
    out.push_str(",\"source_id\":");
    write_str(&tag.source_id, out);
    for (name, value) in [
        ("attacker_uuid", &tag.attacker_uuid),
        ("identity_uuid", &tag.identity_uuid),
        ("session_id", &tag.session_id),
        ("decky_id", &tag.decky_id),
    ] {
        out.push_str(",\"");
        out.push_str(name);
        out.push_str("\":");
        opt_str(value, out);
    }
    out.push_str(",\"tactic\":");
    write_str(&tag.tactic, out);
    out.push_str(",\"technique_id\":");
    write_str(&tag.technique_id, out);
    out.push_str(",\"sub_technique_id\":");
    opt_str(&tag.sub_technique_id, out);
    out.push_str(&format!(",\"confidence\":{:?}", tag.confidence.0));
    out.push_str(",\"rule_id\":");
    write_str(&tag.rule_id, out);
    out.push_str(&format!(",\"rule_version\":{}", tag.rule_version));
    out.push_str(",\"evidence\":");
    tag.evidence.write_to(out);
    out.push_str(",\"attack_release\":");
    write_str(&tag.attack_release, out);
    out.push_str(",\"observed_at\":");
    opt_str(&tag.observed_at.map(format_rfc3339), out);
    out.push('}');
}

/// A rollup row as one JSON object with the columns of `ttp_rollup`.
pub fn rollup_json(row: &RollupRow, out: &mut String) {
    out.push_str("{\"scope_kind\":");
    write_str(row.scope_kind.as_str(), out);
    for (name, value) in [
        ("scope_id", &row.scope_id),
        ("technique_id", &row.technique_id),
        ("sub_technique_id", &row.sub_technique_id),
        ("tactic", &row.tactic),
    ] {
        out.push_str(",\"");
        out.push_str(name);
        out.push_str("\":");
        write_str(value, out);
    }
    out.push_str(&format!(
        ",\"tag_count\":{},\"attacker_count\":{},\"identity_count\":{}",
        row.tag_count, row.attacker_count, row.identity_count
    ));
    out.push_str(",\"first_seen\":");
    opt_str(&row.first_seen.map(format_rfc3339), out);
    out.push_str(",\"last_seen\":");
    opt_str(&row.last_seen.map(format_rfc3339), out);
    out.push_str(&format!(",\"confidence_max\":{:?}", row.confidence_max.0));
    out.push('}');
}

/// A dead letter as one JSON object; `inputs` names the input of each position.
pub fn dead_letter_json(dead: &DeadLetter, inputs: &[PathBuf], out: &mut String) {
    out.push_str("{\"input\":");
    let input = inputs.get(dead.pos.input as usize).map(|p| p.display().to_string()).unwrap_or_default();
    write_str(&input, out);
    out.push_str(&format!(",\"line\":{}", dead.pos.offset + 1));
    out.push_str(",\"topic\":");
    opt_str(&dead.topic, out);
    out.push_str(",\"reason\":");
    write_str(dead.reason.as_str(), out);
    out.push_str(",\"detail\":");
    write_str(&dead.detail, out);
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader of `len` bytes of `a` and then one newline, made as it is read.
    struct Endless {
        left: u64,
        chunk: Vec<u8>,
        newline_sent: bool,
    }

    impl io::Read for Endless {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            unreachable!("read through BufRead")
        }
    }

    impl BufRead for Endless {
        fn fill_buf(&mut self) -> io::Result<&[u8]> {
            if self.left > 0 {
                let n = self.left.min(self.chunk.len() as u64) as usize;
                Ok(&self.chunk[..n])
            } else if !self.newline_sent {
                Ok(b"\n")
            } else {
                Ok(&[])
            }
        }
        fn consume(&mut self, amt: usize) {
            if self.left > 0 {
                self.left -= amt as u64;
            } else {
                self.newline_sent = true;
            }
        }
    }

    fn lines(input: &[u8], limit: usize) -> Vec<(Bounded, Vec<u8>)> {
        let mut reader = io::Cursor::new(input.to_vec());
        let mut out = Vec::new();
        loop {
            let mut buf = Vec::new();
            let read = read_bounded_line(&mut reader, &mut buf, limit).unwrap();
            if read == Bounded::End {
                return out;
            }
            out.push((read, buf));
        }
    }

    #[test]
    fn lines_up_to_the_limit_are_read_and_longer_ones_skipped_to_their_end() {
        let got = lines(b"abcd\nabcde\nab\r\nabcd\r\nabcdef\r\nabc", 4);
        assert_eq!(
            got,
            [
                (Bounded::Line, b"abcd\n".to_vec()),
                (Bounded::Oversize { bytes: 6 }, vec![]),
                (Bounded::Line, b"ab\r\n".to_vec()),
                (Bounded::Line, b"abcd\r\n".to_vec()),
                (Bounded::Oversize { bytes: 8 }, vec![]),
                (Bounded::Line, b"abc".to_vec()),
            ]
        );
        assert_eq!(lines(b"abcdefgh", 4), [(Bounded::Oversize { bytes: 8 }, vec![])]);
    }

    #[test]
    fn a_huge_line_is_skipped_in_bounded_memory() {
        let mut reader = Endless { left: 200 << 20, chunk: vec![b'a'; 1 << 16], newline_sent: false };
        let mut buf = Vec::new();
        let read = read_bounded_line(&mut reader, &mut buf, 1 << 20).unwrap();
        assert_eq!(read, Bounded::Oversize { bytes: (200 << 20) + 1 });
        assert!(buf.capacity() <= 4 << 20, "held {} bytes", buf.capacity());
        assert_eq!(read_bounded_line(&mut reader, &mut buf, 1 << 20).unwrap(), Bounded::End);
    }
}
