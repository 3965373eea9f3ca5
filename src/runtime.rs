//! The runtime: timely workers driving the graph over file inputs into file sinks.
//!
//! Worker 0 reads the inputs in order and cuts them into epochs of `epoch_records`
//! records; the records are spread over all workers by offset before decoding, so
//! parsing scales with workers. Worker 0 holds back a new epoch until the graph has
//! finished all but the previous one (backpressure). Sinks collect on worker 0 and
//! write each epoch once it is complete, sorted by input position, so the files do not
//! depend on the number of workers. Events still unanchored when the input ends become
//! dead letters (`unanchored`). With a PostgreSQL sink, worker 0 also commits each
//! complete epoch's tags and rollup changes with the progress of every input
//! ([`crate::postgres`]).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use differential_dataflow::input::Input;
use differential_dataflow::AsCollection;
use timely::dataflow::channels::pact::Exchange as ExchangePact;
use timely::dataflow::operators::core::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::ProbeHandle;
use ttpflow_dataflows::record::{DeadLetter, Event, Line, Pos, Reason, Tag};
use ttpflow_dataflows::rollup::{Emission, RollupRow};
use ttpflow_dataflows::rules::RulePack;
use ttpflow_dataflows::types::{Coll, Diff, Time};
use ttpflow_dataflows::PackSchedule;

use crate::files::{dead_letter_json, rollup_json, tag_json, FileError, JsonlWriter, LineSource};
use crate::metrics::BudgetWarnings;
use crate::postgres::{PostgresError, Sink, SinkStats};
use crate::rollup_table::RollupTable;
use crate::stage_times::StageTimes;

/// Options of an embedded run.
#[derive(Clone)]
pub struct RunOptions {
    pub inputs: Vec<PathBuf>,
    pub out: PathBuf,
    pub workers: usize,
    pub epoch_records: u64,
    pub pack: Arc<RulePack>,
    /// DECNET's artifacts directory, from which email bodies missing from payloads are read.
    pub artifacts_dir: Option<PathBuf>,
    /// PostgreSQL connection string: commit tags and progress there too, per epoch.
    pub postgres: Option<String>,
    /// How long the PostgreSQL sink waits out an outage; none: for as long as it takes.
    pub sink_timeout: Option<std::time::Duration>,
    /// Where to sum the time spent per stage, when wanted.
    pub stage_times: Option<StageTimes>,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub records: u64,
    pub tags: u64,
    pub dead_letters: u64,
    /// The dead letters by reason.
    pub dead_letter_reasons: BTreeMap<String, u64>,
    /// Rollup rows in `rollups.jsonl`.
    pub rollups: u64,
    /// Emails whose stored body could not be read from the artifacts directory.
    pub artifacts_missing: u64,
    /// What the PostgreSQL sink did, when there is one.
    pub postgres: Option<SinkStats>,
    pub elapsed: Duration,
}

impl Summary {
    pub fn records_per_second(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Errors of a run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("failed to create output directory \"{}\"", dir.display())]
    OutputDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Postgres(#[from] PostgresError),
    #[error("timely workers failed: {0}")]
    Workers(String),
}

/// `dead_letters.jsonl`, with the count of letters by reason.
struct DeadLetterFile {
    writer: JsonlWriter,
    inputs: Vec<PathBuf>,
    by_reason: BTreeMap<&'static str, u64>,
}

impl DeadLetterFile {
    fn write(&mut self, dead: &DeadLetter) -> Result<(), FileError> {
        *self.by_reason.entry(dead.reason.as_str()).or_default() += 1;
        let inputs = &self.inputs;
        self.writer.write_with(|line| dead_letter_json(dead, inputs, line))
    }
}

/// The output files, owned by worker 0.
struct Writers {
    tags: JsonlWriter,
    dead_letters: DeadLetterFile,
    rollups: JsonlWriter,
    /// The letters of records still unanchored when the input ended, written after every
    /// epoch's letters: the sinks finish in an order that depends on the workers.
    unanchored: Vec<DeadLetter>,
    error: Option<FileError>,
}

impl Writers {
    fn write(&mut self, which: impl FnOnce(&mut Writers) -> Result<(), FileError>) {
        if self.error.is_none() {
            if let Err(e) = which(self) {
                self.error = Some(e);
            }
        }
    }
}

/// The PostgreSQL sink on worker 0, with the end positions of the epochs read so far.
struct Committer {
    sink: Sink,
    /// Per epoch, the next offset of every input after the epoch's last record.
    ends: BTreeMap<Time, Vec<u64>>,
    error: Option<PostgresError>,
}

/// Runs the graph over file inputs until they are exhausted.
pub fn run_files(options: RunOptions) -> Result<Summary, RunError> {
    let started = Instant::now();
    std::fs::create_dir_all(&options.out).map_err(|source| RunError::OutputDir { dir: options.out.clone(), source })?;
    let artifacts_dir = options.artifacts_dir.clone();
    // Connect, migrate and read the progress before the workers start, so that a failure
    // stops the run before any worker has built its dataflow.
    let sink = match &options.postgres {
        Some(url) => Some(Sink::open(url, &options.inputs, options.epoch_records.max(1), options.sink_timeout)?),
        None => None,
    };
    let sink = Mutex::new(sink);
    let config = timely::Config::process(options.workers.max(1));
    let guards = timely::execute(config, move |worker| {
        let sink = if worker.index() == 0 { sink.lock().ok().and_then(|mut s| s.take()) } else { None };
        run_worker(worker, &options, sink)
    })
    .map_err(RunError::Workers)?;
    let mut summary = Summary::default();
    for result in guards.join() {
        let part = result.map_err(RunError::Workers)??;
        summary.records += part.records;
        summary.tags += part.tags;
        summary.dead_letters += part.dead_letters;
        for (reason, n) in part.dead_letter_reasons {
            *summary.dead_letter_reasons.entry(reason).or_default() += n;
        }
        summary.rollups += part.rollups;
        summary.artifacts_missing += part.artifacts_missing;
        summary.postgres = summary.postgres.or(part.postgres);
    }
    if let Some(dir) = artifacts_dir.filter(|_| summary.artifacts_missing > 0) {
        tracing::warn!(
            emails = summary.artifacts_missing,
            dir = %dir.display(),
            "email bodies not read from the artifacts directory"
        );
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}

fn run_worker(
    worker: &mut timely::worker::Worker,
    options: &RunOptions,
    sink: Option<Sink>,
) -> Result<Summary, RunError> {
    let index = worker.index();
    let committer = sink.map(|sink| Rc::new(RefCell::new(Committer { sink, ends: BTreeMap::new(), error: None })));
    let writers = match index {
        0 => Some(Rc::new(RefCell::new(Writers {
            tags: JsonlWriter::create(options.out.join("tags.jsonl"))?,
            dead_letters: DeadLetterFile {
                writer: JsonlWriter::create(options.out.join("dead_letters.jsonl"))?,
                inputs: options.inputs.clone(),
                by_reason: BTreeMap::new(),
            },
            rollups: JsonlWriter::create(options.out.join("rollups.jsonl"))?,
            unanchored: Vec::new(),
            error: None,
        }))),
        _ => None,
    };
    if let Some(times) = &options.stage_times {
        times.install(worker);
    }
    let probe = ProbeHandle::new();
    let packs = PackSchedule::fixed(Arc::clone(&options.pack));
    let mut input = worker.dataflow::<Time, _, _>(|scope| {
        let (input, records) = scope.new_collection::<Line, Diff>();
        let records = records.inner.exchange(|(line, _, _): &(Line, Time, Diff)| line.pos.offset).as_collection();
        // Rows go to PostgreSQL as they change; the JSONL file only needs them at the end.
        let emission = if options.postgres.is_some() { Emission::EveryEpoch } else { Emission::Final };
        let outputs = ttpflow_dataflows::build(records, packs, emission);
        let tags = outputs.tags.probe_with(&probe);
        let rollups = outputs.rollups.probe_with(&probe);
        if options.postgres.is_some() {
            // One stream, so the committer's frontier passes an epoch only once both the
            // epoch's tags and its rollup changes are in.
            let changes =
                tags.clone().map(|tag| Commit::Tag(Box::new(tag))).concat(rollups.clone().map(Commit::Rollup));
            commit_epochs(changes, committer.clone(), writers.clone());
        }
        write_tags(tags, writers.clone());
        write_dead_letters(outputs.dead_letters.probe_with(&probe), writers.clone());
        write_unanchored(outputs.pending.probe_with(&probe), writers.clone());
        write_rollups(rollups, writers.clone());
        input
    });

    let (mut records, mut artifacts_missing) = (0u64, 0u64);
    if index == 0 {
        let mut source = LineSource::new(options.inputs.clone()).with_artifacts(options.artifacts_dir.clone());
        let epoch_records = options.epoch_records.max(1);
        let mut next = vec![0u64; options.inputs.len()];
        while let Some(line) = source.next_line()? {
            next[line.pos.input as usize] = line.pos.offset + 1;
            input.insert(line);
            records += 1;
            if records % epoch_records == 0 {
                if let Some(committer) = &committer {
                    let mut committer = committer.borrow_mut();
                    committer.ends.insert(*input.time(), next.clone());
                    if committer.error.is_some() {
                        break;
                    }
                }
                let epoch = *input.time() + 1;
                input.advance_to(epoch);
                input.flush();
                worker.step_while(|| probe.less_than(&(epoch - 1)));
            }
        }
        artifacts_missing = source.artifacts_missing();
        if let Some(committer) = &committer {
            committer.borrow_mut().ends.insert(*input.time(), next);
        }
    }
    drop(input);
    while worker.has_dataflows() {
        worker.step_or_park(None);
    }

    let postgres = match committer {
        Some(committer) => {
            let committer = Rc::try_unwrap(committer)
                .map_err(|_| RunError::Workers("postgres sink still in use after the dataflow ended".to_string()))?
                .into_inner();
            if let Some(e) = committer.error {
                return Err(e.into());
            }
            Some(committer.sink.stats())
        }
        None => None,
    };
    let Some(writers) = writers else { return Ok(Summary::default()) };
    let Writers { tags, mut dead_letters, rollups, unanchored, error } = Rc::try_unwrap(writers)
        .map_err(|_| RunError::Workers("output files still in use after the dataflow ended".to_string()))?
        .into_inner();
    if let Some(e) = error {
        return Err(e.into());
    }
    for dead in &unanchored {
        dead_letters.write(dead)?;
    }
    let dead_letter_reasons = dead_letters.by_reason.iter().map(|(r, n)| (r.to_string(), *n)).collect();
    Ok(Summary {
        records,
        tags: tags.finish()?,
        dead_letters: dead_letters.writer.finish()?,
        dead_letter_reasons,
        rollups: rollups.finish()?,
        artifacts_missing,
        postgres,
        elapsed: Duration::ZERO,
    })
}

/// Collects a collection's updates on worker 0 and hands over each complete epoch, sorted
/// when `order` is [`Order::Sorted`].
fn on_worker_zero<D: timely::ExchangeData + Ord>(
    updates: Coll<'_, D>,
    name: &str,
    order: Order,
    mut epoch_done: impl FnMut(Time, Vec<(D, Diff)>) + 'static,
    mut input_done: impl FnMut() + 'static,
) {
    let mut stash: BTreeMap<Time, Vec<(D, Diff)>> = BTreeMap::new();
    let mut finished = false;
    updates.inner.sink(ExchangePact::new(|_: &(D, Time, Diff)| 0u64), name, move |(input, frontier)| {
        input.for_each(|_cap, data| {
            for (d, t, r) in data.drain(..) {
                stash.entry(t).or_default().push((d, r));
            }
        });
        while let Some(entry) = stash.first_entry() {
            if frontier.frontier().less_equal(entry.key()) {
                break;
            }
            let time = *entry.key();
            let mut batch = entry.remove();
            if order == Order::Sorted {
                batch.sort();
            }
            epoch_done(time, batch);
        }
        if frontier.frontier().is_empty() && !finished {
            finished = true;
            input_done();
        }
    });
}

/// Whether a sink needs an epoch's updates in order.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    Sorted,
    /// The sink orders what it writes itself.
    Any,
}

/// What the PostgreSQL sink commits per epoch.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
enum Commit {
    Tag(Box<Tag>),
    Rollup(RollupRow),
}

/// An epoch's changes as they arrive: new tags, and rollup rows with their differences.
#[derive(Default)]
struct EpochChanges {
    tags: Vec<Tag>,
    rollups: Vec<(RollupRow, Diff)>,
}

/// Commits each complete epoch to PostgreSQL, in epoch order, with the epoch's end
/// positions, also when the epoch has no changes (its progress still moves).
/// Commits every epoch once the frontier passes it; the dead letters of the tags the
/// server refused go to `dead_letters.jsonl`.
fn commit_epochs(
    changes: Coll<'_, Commit>,
    committer: Option<Rc<RefCell<Committer>>>,
    writers: Option<Rc<RefCell<Writers>>>,
) {
    let mut stash: BTreeMap<Time, EpochChanges> = BTreeMap::new();
    let mut finished = false;
    let pact = ExchangePact::new(|_: &(Commit, Time, Diff)| 0u64);
    changes.inner.sink(pact, "commit to postgres", move |(input, frontier)| {
        input.for_each(|_cap, data| {
            for (change, t, r) in data.drain(..) {
                let epoch = stash.entry(t).or_default();
                match change {
                    // Stored rows are never updated: only additions are committed.
                    Commit::Tag(tag) if r > 0 => epoch.tags.push(*tag),
                    Commit::Tag(_) => {}
                    Commit::Rollup(row) => epoch.rollups.push((row, r)),
                }
            }
        });
        let Some(committer) = &committer else { return };
        let mut committer = committer.borrow_mut();
        let committer = &mut *committer;
        while let Some(entry) = committer.ends.first_entry() {
            if frontier.frontier().less_equal(entry.key()) {
                break;
            }
            let (time, end) = entry.remove_entry();
            let changes = stash.remove(&time).unwrap_or_default();
            if committer.error.is_none() {
                committer.error = committer.sink.epoch(&end, &changes.tags, changes.rollups).err();
                let refused = committer.sink.take_rejected();
                if let (Some(w), false) = (&writers, refused.is_empty()) {
                    w.borrow_mut().write(|w| refused.iter().try_for_each(|dead| w.dead_letters.write(dead)));
                }
            }
        }
        if frontier.frontier().is_empty() && !finished {
            finished = true;
            if committer.error.is_none() {
                committer.error = committer.sink.finish().err();
            }
        }
    });
}

fn write_tags(tags: Coll<'_, Tag>, writers: Option<Rc<RefCell<Writers>>>) {
    on_worker_zero(
        tags,
        "write tags.jsonl",
        Order::Sorted,
        move |_, batch| {
            if let Some(w) = &writers {
                w.borrow_mut()
                    .write(|w| batch.iter().try_for_each(|(tag, _)| w.tags.write_with(|line| tag_json(tag, line))));
            }
        },
        || {},
    );
}

/// Writes the dead letters as their epochs complete, except `merge_cycle` letters: a
/// cycle is reported when the input leaves it in place, so they are written from the
/// collection's final state (a cycle that one record closes and a later one breaks would
/// otherwise be reported or not depending on whether the two share an epoch).
fn write_dead_letters(dead: Coll<'_, DeadLetter>, writers: Option<Rc<RefCell<Writers>>>) {
    let mut warnings = BudgetWarnings::default();
    let cycles: Rc<RefCell<BTreeMap<DeadLetter, Diff>>> = Rc::default();
    let (collect, write_cycles) = (Rc::clone(&cycles), writers.clone());
    on_worker_zero(
        dead,
        "write dead_letters.jsonl",
        Order::Sorted,
        move |_, batch| {
            let mut cycles = collect.borrow_mut();
            let Some(w) = &writers else { return };
            w.borrow_mut().write(|w| {
                batch.iter().try_for_each(|(dead, r)| {
                    if dead.reason == Reason::MergeCycle {
                        *cycles.entry(dead.clone()).or_default() += r;
                        return Ok(());
                    }
                    if *r <= 0 {
                        return Ok(());
                    }
                    warnings.note(dead);
                    w.dead_letters.write(dead)
                })
            });
        },
        move || {
            let Some(w) = &write_cycles else { return };
            let cycles = std::mem::take(&mut *cycles.borrow_mut());
            w.borrow_mut().write(|w| {
                cycles.iter().filter(|(_, count)| **count > 0).try_for_each(|(dead, _)| w.dead_letters.write(dead))
            });
        },
    );
}

/// Folds the rollup changes into a table on worker 0 as they arrive (in any order: a key's
/// changes add up the same), and writes its rows once the input ends.
fn write_rollups(rollups: Coll<'_, RollupRow>, writers: Option<Rc<RefCell<Writers>>>) {
    let mut table = RollupTable::default();
    let mut written = false;
    let pact = ExchangePact::new(|_: &(RollupRow, Time, Diff)| 0u64);
    rollups.inner.sink(pact, "collect rollups", move |(input, frontier)| {
        input.for_each(|_cap, data| {
            for (row, _, diff) in data.drain(..) {
                table.update(&row, diff);
            }
        });
        if frontier.frontier().is_empty() && !written {
            written = true;
            let table = std::mem::take(&mut table);
            if let Some(w) = &writers {
                w.borrow_mut().write(|w| table.for_each_row(|row| w.rollups.write_with(|line| rollup_json(row, line))));
            }
        }
    });
}

/// Events waiting for their IP, by position: (IP, topic, multiplicity).
type Waiting = BTreeMap<Pos, (String, String, Diff)>;

/// Accumulates the pending collection; what remains when the input ends is unanchored.
fn write_unanchored(pending: Coll<'_, (String, Event)>, writers: Option<Rc<RefCell<Writers>>>) {
    let state: Rc<RefCell<Waiting>> = Rc::default();
    let accumulate = Rc::clone(&state);
    on_worker_zero(
        pending,
        "collect unanchored",
        Order::Any,
        move |_, batch| {
            let mut state = accumulate.borrow_mut();
            for ((ip, event), diff) in batch {
                let entry = state.entry(event.pos).or_insert_with(|| (ip, event.topic, 0));
                entry.2 += diff;
                if entry.2 == 0 {
                    state.remove(&event.pos);
                }
            }
        },
        move || {
            let Some(w) = &writers else { return };
            let state = state.borrow();
            let letters = state.iter().filter(|(_, (_, _, n))| *n > 0).map(|(pos, (ip, topic, _))| DeadLetter {
                pos: *pos,
                topic: Some(topic.clone()),
                reason: Reason::Unanchored,
                detail: format!("no attacker known for IP \"{ip}\" by the end of input"),
            });
            w.borrow_mut().unanchored.extend(letters);
        },
    );
}
