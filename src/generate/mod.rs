//! `ttpflow generate`: a deterministic synthetic fleet in the embedded input format
//! (DESIGN §1.4), for sizing benchmarks and soak runs.
//!
//! Output: table records (`decnet.campaigns`, `decnet.attacker_identities`,
//! `decnet.attackers`, `decnet.attacker_intel`), then bus envelopes
//! (`{"v":1,"id","topic","type","ts","payload"}`) in simulated time, in the payload shapes
//! of DECNET's producers. Late attackers' rows are among the events, at the point of the
//! run where they appear. The same options write the same bytes: all randomness is the
//! project's own SplitMix64 ([`rng`]) and uuids are v5 under a namespace of the seed.
//!
//! The fleet ([`fleet`]) is held in memory (linear in attackers and identities); events
//! are written one at a time through a buffered writer ([`events`]), so a run of any
//! length uses the same memory.
//!
//! Every line decodes without a dead letter, except the malformed lines asked for with
//! `malformed_permille`. In a run, orphan events (`orphan_permille`: addresses no attacker
//! row claims) end as `unanchored` dead letters; everything else anchors.

mod commands;
mod events;
mod fleet;
mod out;
mod rng;
mod tables;

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use events::{Counts, START_MICROS};
pub use fleet::MAX_ATTACKERS;

/// Buffer size of the output writers.
const BUFFER_BYTES: usize = 1 << 20;

/// What to generate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Bus events (replays and malformed lines included; late attacker rows are extra lines).
    pub events: u64,
    pub attackers: u64,
    pub identities: u64,
    pub campaigns: u64,
    pub seed: u64,
    /// ‰ of attackers whose row comes among the events instead of in the tables.
    pub late_permille: u32,
    /// ‰ of events naming an address that no attacker row ever claims.
    pub orphan_permille: u32,
    /// ‰ of events that repeat a recent event verbatim.
    pub replay_permille: u32,
    /// ‰ of deliberately malformed lines.
    pub malformed_permille: u32,
}

impl Default for Options {
    /// A fleet the size of DECNET's dev corpus.
    fn default() -> Options {
        Options {
            events: 20_000,
            attackers: 500,
            identities: 100,
            campaigns: 10,
            seed: 1,
            late_permille: 20,
            orphan_permille: 2,
            replay_permille: 30,
            malformed_permille: 0,
        }
    }
}

/// What was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Lines of the tables output.
    pub tables: u64,
    pub counts: Counts,
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Failures of `ttpflow generate`.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("invalid generate options: {0}")]
    Options(String),
    #[error("failed to create the output directory \"{}\"", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to write {target}")]
    Write {
        /// `"DIR/events.jsonl"` (quoted) or `standard output`.
        target: String,
        #[source]
        source: io::Error,
    },
}

impl Options {
    fn validate(&self) -> Result<(), GenerateError> {
        let bad = |m: String| Err(GenerateError::Options(m));
        if self.attackers == 0 {
            return bad("--attackers must be at least 1: events name attackers".into());
        }
        if self.attackers > MAX_ATTACKERS {
            return bad(format!("--attackers is at most {MAX_ATTACKERS} (one 100.64.0.0/10 address each)"));
        }
        if self.identities > fleet::MAX_GROUPS || self.campaigns > fleet::MAX_GROUPS {
            return bad(format!("--identities and --campaigns are at most {}", fleet::MAX_GROUPS));
        }
        for (name, value) in [
            ("--late-permille", self.late_permille),
            ("--orphan-permille", self.orphan_permille),
            ("--replay-permille", self.replay_permille),
            ("--malformed-permille", self.malformed_permille),
        ] {
            if value > 1000 {
                return bad(format!("{name} is a per-mille rate, at most 1000 (got {value})"));
            }
        }
        Ok(())
    }
}

/// Counts the bytes that pass, for the summary.
struct Counted<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the tables into `tables` and the events into `events` (both buffered here).
/// The targets name the writers in errors.
pub fn generate(
    options: &Options,
    tables: (impl Write, &str),
    events: (impl Write, &str),
) -> Result<Summary, GenerateError> {
    options.validate()?;
    let started = Instant::now();
    let fleet = fleet::Fleet::new(
        options.seed,
        options.attackers,
        options.identities,
        options.campaigns,
        options.late_permille,
    );
    let failed = |target: &str| {
        let target = target.to_string();
        move |source| GenerateError::Write { target, source }
    };
    let mut w = Counted { inner: BufWriter::with_capacity(BUFFER_BYTES, tables.0), bytes: 0 };
    let table_lines = tables::write(&fleet, &mut w).and_then(|n| w.flush().map(|()| n)).map_err(failed(tables.1))?;
    let mut bytes = w.bytes;

    let rates = events::Rates {
        orphan: options.orphan_permille,
        replay: options.replay_permille,
        malformed: options.malformed_permille,
    };
    let mut stream = events::Stream::new(&fleet, options.events, rates);
    let mut w = Counted { inner: BufWriter::with_capacity(BUFFER_BYTES, events.0), bytes: 0 };
    let mut line = Vec::with_capacity(16 << 10);
    let written: io::Result<()> = (|| {
        for n in 0..options.events {
            line.clear();
            stream.next(n, &mut line);
            w.write_all(&line)?;
        }
        w.flush()
    })();
    written.map_err(failed(events.1))?;
    bytes += w.bytes;
    Ok(Summary { tables: table_lines, counts: stream.counts, bytes, elapsed: started.elapsed() })
}

/// Writes `DIR/tables.jsonl` and `DIR/events.jsonl`, creating `DIR` when needed.
pub fn to_dir(options: &Options, dir: &Path) -> Result<Summary, GenerateError> {
    options.validate()?;
    std::fs::create_dir_all(dir).map_err(|source| GenerateError::CreateDir { path: dir.to_path_buf(), source })?;
    let open = |name: &str| {
        let path = dir.join(name);
        let target = format!("\"{}\"", path.display());
        File::create(&path).map(|f| (f, target.clone())).map_err(|source| GenerateError::Write { target, source })
    };
    let (tables, tables_target) = open("tables.jsonl")?;
    let (events, events_target) = open("events.jsonl")?;
    generate(options, (tables, &tables_target), (events, &events_target))
}

/// Writes the tables, then the events, to standard output.
pub fn to_stdout(options: &Options) -> Result<Summary, GenerateError> {
    let stdout = io::stdout();
    generate(options, (stdout.lock(), "standard output"), (stdout.lock(), "standard output"))
}

#[cfg(test)]
mod tests;
