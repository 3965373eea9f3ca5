//! The Kafka job: `ttpflow run` (continuous) and `ttpflow replay` (to the watermarks read at
//! start), on timely workers in one process or a cluster of them.
//!
//! # Epochs
//!
//! Every worker reads the partitions it owns ([`crate::kafka`]) and cuts its records into
//! epochs: an epoch ends after `epoch_records` records of that worker, or when the clock
//! reaches the next multiple of `epoch_interval_ms`. Live epoch numbers are derived from the
//! clock (`LIVE_BASE + tick << 16 + n`), so workers that read little keep pace with busy ones
//! without talking to them, and an epoch completes at most an interval after its tick ended.
//! A worker holds back its next epoch until the graph has completed all but the previous
//! one (backpressure). With every epoch a worker also sends, as data, the next offset of
//! every partition that moved: worker 0 learns from the same stream as the output which
//! positions an epoch covers.
//!
//! # Exactly-once in effect
//!
//! Worker 0 commits each complete epoch (several at once when several are complete) in one
//! PostgreSQL transaction: new tags, netted rollup changes, the messages to publish (into
//! `ttp_outbox`) and the positions. Kafka group offsets are committed afterwards for lag
//! monitors only. After the commit the messages are published and then cleared from the
//! outbox; a crash in between publishes them again at the next start (at-least-once, with
//! deterministic keys).
//!
//! The graph's state (attackers, identities, windows, stored uuids, rollup accumulators)
//! lives in memory and is rebuilt at start: every partition is read from its beginning up
//! to its stored position in *rehydration* epochs (numbers below `LIVE_BASE`), whose output
//! is already in the database and is neither committed nor published. Records at or past
//! the stored position wait for the first live epoch. Since the graph's output at an
//! epoch depends only on the records up to it, the rollup collection after the rehydration
//! epochs is the one the stored rows were committed from, and the live epochs' differences
//! apply to them exactly. The tags of rehydration epochs are committed once more, without
//! positions: a tag stored already is absorbed by `ON CONFLICT DO NOTHING` and, not being
//! new, is not published, while one that the earlier run never committed (its records
//! were all read before the stored positions, but in epochs cut differently) is stored and
//! published now instead of being lost. Table topics have positions like bus topics, so a table
//! row that arrived after the last commit is not folded into the rehydrated state.
//!
//! A replay from the start rebuilds the same tables: its first commit forgets the stored
//! rollups and progress, and it publishes nothing. A replay from an offset or a time reads
//! only part of the bus, so it stores tags only: its rollups would not be the fleet's.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use differential_dataflow::input::Input;
use timely::dataflow::channels::pact::Exchange as ExchangePact;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::ProbeHandle;
use ttpflow_dataflows::record::{DeadLetter, Line, Tag};
use ttpflow_dataflows::rollup::{Emission, RollupRow};
use ttpflow_dataflows::rules::RulePack;
use ttpflow_dataflows::time::earliest;
use ttpflow_dataflows::types::{Coll, Diff, Time};
use ttpflow_dataflows::PackSchedule;

use crate::config::{JobConfig, KafkaConfig, PublishConfig};
use crate::kafka::{self, KafkaError, Partition, Publisher, Source};
use crate::metrics::{self, BudgetWarnings, Health, Metrics, Published};
use crate::postgres::{Message, Position, PostgresError, SinkStats, StreamSink};
use crate::publish;
use crate::reload::{Reload, RuleWatcher};

/// Epoch numbers from here on are live; below are rehydration epochs.
pub const LIVE_BASE: Time = 1 << 40;

/// Records a worker takes from its consumer before it lets the graph run.
const POLL_BATCH: usize = 4096;

/// Where a replay starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom {
    Start,
    /// This offset of every bus partition (tables are read from the start).
    Offset(u64),
    /// The first record at or after this time (milliseconds since the Unix epoch).
    Time(i64),
}

/// Which command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Run,
    Replay(ReplayFrom),
}

/// Options of a Kafka job.
pub struct StreamOptions {
    pub config: JobConfig,
    pub kafka: KafkaConfig,
    pub postgres: String,
    pub mode: Mode,
    pub pack: Arc<RulePack>,
    /// Watches the rules directory (and `ttp_rule_state`) while the job runs: a changed pack
    /// that loads is swapped in at an epoch boundary; one that does not is reported and the
    /// last good pack stays.
    pub watcher: Option<RuleWatcher>,
    pub timely: timely::Config,
    /// Set by SIGINT/SIGTERM: finish the open epoch, commit it and stop.
    pub stop: Arc<AtomicBool>,
    /// Show progress on standard error (replay).
    pub progress: bool,
}

/// Errors of a Kafka job.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Postgres(#[from] PostgresError),
    #[error("timely workers failed: {0}")]
    Workers(String),
    #[error("failed to serve metrics on \"{addr}\"")]
    Metrics {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// What a Kafka job did.
#[derive(Debug, Clone, Default)]
pub struct StreamSummary {
    pub records: u64,
    /// Records read only to rebuild the state.
    pub rehydrated: u64,
    pub published: u64,
    pub postgres: Option<SinkStats>,
    pub elapsed: Duration,
}

/// One partition as the job reads it.
#[derive(Debug, Clone)]
struct Plan {
    partition: Partition,
    /// First offset to read.
    start: u64,
    /// Records before it were committed by an earlier run: they only rebuild the state.
    stored: u64,
    /// Replay: the high watermark at start, where reading stops.
    stop: Option<u64>,
}

/// Reads the stored positions and the cluster's partitions, and plans each partition.
fn plan(options: &StreamOptions, sink: &mut StreamSink) -> Result<Vec<Plan>, StreamError> {
    let partitions = kafka::discover(&options.kafka)?;
    let marks = kafka::watermarks(&options.kafka, &partitions)?;
    let stored: BTreeMap<(String, i32), u64> =
        sink.stored()?.into_iter().map(|p| ((p.input, p.partition), p.next_offset)).collect();
    let is_table = |p: &Partition| options.kafka.tables.contains(&p.topic);
    let starts: Vec<u64> = match options.mode {
        Mode::Replay(ReplayFrom::Time(millis)) => kafka::offsets_for_time(&options.kafka, &partitions, millis)?,
        Mode::Replay(ReplayFrom::Offset(n)) => vec![n; partitions.len()],
        _ => vec![0; partitions.len()],
    };
    let mut plans = Vec::with_capacity(partitions.len());
    for ((partition, (low, high)), start) in partitions.into_iter().zip(marks).zip(starts) {
        let (low, high) = (low.max(0) as u64, high.max(0) as u64);
        let start = if is_table(&partition) { low } else { start.max(low) };
        if low > 0 {
            tracing::warn!(topic = %partition.topic, partition = partition.partition, low,
                "records before the partition's first offset are gone; the state is rebuilt from what is left");
        }
        let stored = match options.mode {
            Mode::Run => stored.get(&(partition.topic.clone(), partition.partition)).copied().unwrap_or(0),
            Mode::Replay(_) => 0,
        };
        if stored > high {
            return Err(KafkaError::BeyondPartition {
                topic: partition.topic,
                partition: partition.partition,
                stored,
                high: high as i64,
            }
            .into());
        }
        let stop = matches!(options.mode, Mode::Replay(_)).then_some(high);
        plans.push(Plan { partition, start: start.min(high), stored, stop });
    }
    Ok(plans)
}

/// Runs a Kafka job until it is stopped (run) or has read to the watermarks (replay).
pub fn run(options: StreamOptions) -> Result<StreamSummary, StreamError> {
    let started = Instant::now();
    let (metrics, health) = (Arc::new(Metrics::new()), Arc::new(Health::new()));
    let _server = match &options.config.metrics_addr {
        Some(addr) => {
            let failed = |source| StreamError::Metrics { addr: addr.clone(), source };
            let parsed = addr
                .parse()
                .map_err(|e| failed(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}"))))?;
            let server = metrics::serve(parsed, Arc::clone(&metrics), Arc::clone(&health)).map_err(failed)?;
            tracing::info!(addr = %server.local_addr(), "serving metrics");
            Some(server)
        }
        None => None,
    };
    let reset = options.mode == Mode::Replay(ReplayFrom::Start);
    let mut sink = StreamSink::open(
        &options.postgres,
        &options.config.job,
        options.config.epoch_records,
        reset,
        options.config.sink_timeout(),
    )?;
    let (retry_health, retry_metrics) = (Arc::clone(&health), Arc::clone(&metrics));
    sink.on_retry(move |e| {
        retry_metrics.sink_retry(metrics::Sink::Postgres, 1);
        retry_health.set_unhealthy(format!("postgres: {e}; retrying"));
    });
    let plans = plan(&options, &mut sink)?;
    let publisher = match (options.mode, options.kafka.publish.enabled) {
        (Mode::Run, true) => Some(Publisher::new(&options.kafka)?),
        _ => None,
    };
    if let Some(publisher) = &publisher {
        republish_leftovers(&mut sink, publisher, &health)?;
    }
    let rehydrating: u64 = plans.iter().map(|p| p.stored.saturating_sub(p.start)).sum();
    tracing::info!(partitions = plans.len(), rehydrating, mode = ?options.mode, "starting kafka job");
    let observed = _server.is_some().then(|| Arc::clone(&metrics));
    let schedule = PackSchedule::fixed(Arc::clone(&options.pack));
    let mut options = options;
    let watcher = Mutex::new(options.watcher.take());
    let shared = Arc::new(Shared {
        plans,
        schedule,
        watcher,
        options,
        sink: Mutex::new(Some(sink)),
        publisher: Mutex::new(publisher),
        metrics,
        health,
        observed,
        expected: AtomicU64::new(0),
        taken: AtomicU64::new(0),
        done: AtomicBool::new(false),
    });
    let config = shared.options.timely.clone();
    let worker_shared = Arc::clone(&shared);
    let guards =
        timely::execute(config, move |worker| run_worker(worker, &worker_shared)).map_err(StreamError::Workers)?;
    let reporter = shared.options.progress.then(|| {
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || report_progress(&shared))
    });
    let results = guards.join();
    shared.done.store(true, Ordering::Relaxed);
    if let Some(reporter) = reporter {
        let _ = reporter.join();
    }
    let mut summary = StreamSummary::default();
    for result in results {
        let part = result.map_err(StreamError::Workers)??;
        summary.records += part.records;
        summary.rehydrated += part.rehydrated;
        summary.published += part.published;
        summary.postgres = summary.postgres.or(part.postgres);
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Publishes what a previous run committed and perhaps did not publish.
fn republish_leftovers(sink: &mut StreamSink, publisher: &Publisher, health: &Health) -> Result<(), StreamError> {
    let leftovers = sink.leftover_messages()?;
    if let Some((last, _)) = leftovers.last() {
        let messages: Vec<Message> = leftovers.iter().map(|(_, m)| m.clone()).collect();
        tracing::info!(messages = messages.len(), "publishing messages committed before the last stop");
        publish_with_retries(publisher, &messages, health);
        sink.published(*last);
        sink.finish()?;
    }
    Ok(())
}

/// Publishes, waiting out broker outages (the messages stay in the outbox meanwhile).
fn publish_with_retries(publisher: &Publisher, messages: &[Message], health: &Health) {
    let mut pause = Duration::from_millis(100);
    while let Err(e) = publisher.publish(messages) {
        tracing::warn!(error = %e, messages = messages.len(), "publishing failed, retrying");
        health.set_unhealthy(format!("kafka: {e}; retrying"));
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(10));
    }
}

/// What all workers of a process share.
struct Shared {
    plans: Vec<Plan>,
    /// The packs by epoch, shared by the workers of this process.
    schedule: PackSchedule,
    /// Taken by the first worker of this process that starts.
    watcher: Mutex<Option<RuleWatcher>>,
    options: StreamOptions,
    /// Taken by worker 0.
    sink: Mutex<Option<StreamSink>>,
    publisher: Mutex<Option<Publisher>>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// The registry the consumers report lag to, when metrics are served.
    observed: Option<Arc<Metrics>>,
    /// Replay: the records this process's workers are to read, and have read.
    expected: AtomicU64,
    taken: AtomicU64,
    done: AtomicBool,
}

/// Replay's progress: on a terminal a line rewritten four times a second (records/s, share
/// of the watermarks, time left), else a log line every ten seconds.
fn report_progress(shared: &Shared) {
    use std::io::{IsTerminal, Write};
    let terminal = std::io::stderr().is_terminal();
    let (started, mut last_log) = (Instant::now(), Instant::now());
    let line = || {
        let (taken, expected) = (shared.taken.load(Ordering::Relaxed), shared.expected.load(Ordering::Relaxed));
        let rate = taken as f64 / started.elapsed().as_secs_f64().max(1e-3);
        let share = if expected == 0 { 100.0 } else { 100.0 * taken as f64 / expected as f64 };
        let eta = if rate > 0.0 { expected.saturating_sub(taken) as f64 / rate } else { 0.0 };
        (taken, expected, rate, share, eta)
    };
    while !shared.done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(250));
        let (taken, expected, rate, share, eta) = line();
        if terminal {
            eprint!("\rreplay: {taken}/{expected} records ({share:.1}%), {rate:.0} records/s, ETA {eta:.0} s   ");
            let _ = std::io::stderr().flush();
        } else if last_log.elapsed() >= Duration::from_secs(10) {
            last_log = Instant::now();
            tracing::info!(
                records = taken,
                of = expected,
                records_per_s = rate as u64,
                eta_s = eta as u64,
                "replaying"
            );
        }
    }
    let (taken, expected, rate, _, _) = line();
    if terminal {
        eprintln!("\rreplay: {taken}/{expected} records, {rate:.0} records/s                    ");
    }
}

/// What worker 0 commits, in one stream so that its frontier covers all of it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
enum Commit {
    Tag(Box<Tag>),
    Rollup(RollupRow),
    Dead(DeadLetter),
    /// A partition (by number) and its next offset after the epoch.
    Progress(u32, u64),
    /// The least Kafka timestamp (milliseconds) of a worker's records in the epoch.
    Oldest(i64),
    /// One event waiting for its attacker (counted, for the gauge).
    Pending,
}

/// An epoch's changes as they arrive.
#[derive(Default)]
struct Pending {
    tags: Vec<Tag>,
    rollups: Vec<(RollupRow, Diff)>,
    dead: Vec<DeadLetter>,
    progress: BTreeMap<u32, u64>,
    /// The least Kafka timestamp of the epoch's records, in milliseconds.
    oldest: Option<i64>,
}

/// Worker 0's committer.
struct Committer {
    sink: StreamSink,
    publisher: Option<Publisher>,
    publish: PublishConfig,
    partitions: Vec<Partition>,
    /// Tags only (a replay from an offset or time).
    tags_only: bool,
    published: u64,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    budget_warnings: BudgetWarnings,
    /// Informational group offsets, when configured.
    group: Option<kafka::GroupOffsets>,
    error: Option<PostgresError>,
}

impl Committer {
    /// Commits the complete epochs merged into one transaction, then publishes.
    fn commit(&mut self, epoch: Time, pending: Pending) {
        if self.error.is_some() {
            return;
        }
        let Pending { mut tags, rollups, dead, progress, oldest } = pending;
        tags.sort();
        let positions: Vec<Position> = progress
            .iter()
            .filter_map(|(number, next)| {
                let p = self.partitions.get(*number as usize)?;
                Some(Position { input: p.topic.clone(), partition: p.partition, next_offset: *next })
            })
            .collect();
        let (rollups, positions) = if self.tags_only { (Vec::new(), Vec::new()) } else { (rollups, positions) };
        let publish = self.publisher.is_some();
        let (config, partitions) = (&self.publish, &self.partitions);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let compose = |fresh: &[&Tag], refused: &[DeadLetter]| -> Vec<Message> {
            let mut messages = publish::tag_messages(config, fresh, now);
            messages.extend(dead.iter().chain(refused).map(|d| publish::dead_letter_message(config, d, partitions)));
            messages
        };
        let rollup_changes = if publish && !rollups.is_empty() {
            crate::postgres::net_rollups(epoch, rollups.clone()).ok()
        } else {
            None
        };
        let compose_rollups = |fresh: &[&Tag], refused: &[DeadLetter]| -> Vec<Message> {
            let mut messages = compose(fresh, refused);
            if let Some(changes) = &rollup_changes {
                messages.extend(publish::rollup_messages(config, changes));
            }
            messages
        };
        let outbox: Option<crate::postgres::Compose<'_>> = publish.then_some(&compose_rollups);
        let (started, inserted) = (Instant::now(), self.sink.stats().rows_inserted);
        match self.sink.commit(epoch, &positions, &tags, rollups, outbox) {
            Ok(crate::postgres::StreamCommitted { messages, last, refused }) => {
                self.metrics.observe_commit(started.elapsed());
                if let Some(oldest) = oldest.filter(|ms| *ms > 0) {
                    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
                    self.metrics.observe_latency((now_ms - oldest).max(0) as f64 / 1000.0);
                }
                self.metrics.tags_stored(self.sink.stats().rows_inserted - inserted);
                for letter in dead.iter().chain(&refused) {
                    self.metrics.dead_letter_of(letter);
                    self.budget_warnings.note(letter);
                }
                self.health.set_ok();
                if let Some(group) = &self.group {
                    let next: Vec<(String, i32, u64)> =
                        positions.iter().map(|p| (p.input.clone(), p.partition, p.next_offset)).collect();
                    group.commit(&next);
                }
                let committed = started.elapsed();
                if let (Some(publisher), Some(last)) = (&self.publisher, last) {
                    publish_with_retries(publisher, &messages, &self.health);
                    tracing::debug!(epoch, tags = tags.len(), messages = messages.len(), ?committed,
                        published = ?(started.elapsed() - committed), "committed and published");
                    self.health.set_ok();
                    self.published += messages.len() as u64;
                    for message in &messages {
                        self.metrics.published(published_kind(&self.publish, &message.topic), 1);
                    }
                    self.sink.published(last);
                }
            }
            Err(e) => self.error = Some(e),
        }
    }
}

/// Which kind of publication a topic carries.
fn published_kind(config: &PublishConfig, topic: &str) -> Published {
    if topic == config.tagged {
        Published::Tagged
    } else if topic == config.dead_letter {
        Published::DeadLetter
    } else if topic.starts_with(&config.rollup_prefix) {
        Published::Rollup
    } else {
        Published::RuleFired
    }
}

/// What one worker did.
#[derive(Default)]
struct WorkerSummary {
    records: u64,
    rehydrated: u64,
    published: u64,
    postgres: Option<SinkStats>,
}

/// A partition as one worker reads it.
struct Reading {
    number: u32,
    plan: Plan,
    /// The next offset after the last record taken.
    next: u64,
    /// Whether `next` moved in the open epoch.
    moved: bool,
    /// Replay: a record at or past the stop offset was seen.
    past_stop: bool,
    /// Records taken since the last report to the metrics.
    unreported: u64,
}

impl Reading {
    fn rehydrated(&self) -> bool {
        self.next >= self.plan.stored
    }

    fn finished(&self) -> bool {
        self.past_stop || self.plan.stop.is_some_and(|stop| self.next >= stop)
    }
}

/// The live epoch of the clock's current tick.
fn clock_epoch(interval_ms: u64) -> Time {
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    LIVE_BASE + ((millis / interval_ms.max(1)) << 16)
}

fn run_worker(worker: &mut timely::worker::Worker, shared: &Shared) -> Result<WorkerSummary, StreamError> {
    let (index, peers) = (worker.index(), worker.peers());
    let options = &shared.options;
    let committer = if index == 0 {
        let sink = shared.sink.lock().map_err(|_| StreamError::Workers("sink lock poisoned".into()))?.take();
        let publisher =
            shared.publisher.lock().map_err(|_| StreamError::Workers("publisher lock poisoned".into()))?.take();
        // A replay does not move the group's offsets: lag monitors follow the running job.
        let group = match (&sink, options.mode) {
            (Some(_), Mode::Run) => kafka::GroupOffsets::new(&options.kafka)?,
            _ => None,
        };
        sink.map(|sink| {
            Rc::new(RefCell::new(Committer {
                sink,
                publisher,
                publish: options.kafka.publish.clone(),
                partitions: shared.plans.iter().map(|p| p.partition.clone()).collect(),
                tags_only: matches!(options.mode, Mode::Replay(ReplayFrom::Offset(_) | ReplayFrom::Time(_))),
                published: 0,
                metrics: Arc::clone(&shared.metrics),
                health: Arc::clone(&shared.health),
                budget_warnings: BudgetWarnings::default(),
                group,
                error: None,
            }))
        })
    } else {
        None
    };
    let mut owned: Vec<Reading> = shared
        .plans
        .iter()
        .enumerate()
        .filter(|(number, _)| number % peers == index)
        .map(|(number, plan)| Reading {
            number: number as u32,
            plan: plan.clone(),
            next: plan.start,
            moved: false,
            past_stop: false,
            unreported: 0,
        })
        .collect();
    let expected: u64 = owned.iter().map(|r| r.plan.stop.unwrap_or(r.plan.start).saturating_sub(r.plan.start)).sum();
    shared.expected.fetch_add(expected, Ordering::Relaxed);
    let assignment: Vec<(u32, Partition, u64)> =
        owned.iter().map(|r| (r.number, r.plan.partition.clone(), r.plan.start)).collect();
    let source = Source::assign(&options.kafka, &assignment, shared.observed.clone())?;

    let probe = ProbeHandle::new();
    let mut reloader = shared
        .watcher
        .lock()
        .map_err(|_| StreamError::Workers("watcher lock poisoned".into()))?
        .take()
        .map(|watcher| Reloader::new(watcher, shared));
    let (mut records, mut progress) = worker.dataflow::<Time, _, _>(|scope| {
        let (records_in, records) = scope.new_collection::<Line, Diff>();
        let (progress_in, progress) = scope.new_collection::<Commit, Diff>();
        let outputs = ttpflow_dataflows::build(records, shared.schedule.clone(), Emission::EveryEpoch);
        let changes = outputs
            .tags
            .map(|tag| Commit::Tag(Box::new(tag)))
            .concat(outputs.rollups.map(Commit::Rollup))
            .concat(outputs.dead_letters.map(Commit::Dead))
            .concat(progress)
            .concat(outputs.pending.map(|_| Commit::Pending))
            .probe_with(&probe);
        commit_epochs(changes, committer.clone(), Arc::clone(&shared.metrics));
        (records_in, progress_in)
    });

    let interval = options.config.epoch_interval_ms.max(1);
    let epoch_records = options.config.epoch_records.max(1);
    let replay = matches!(options.mode, Mode::Replay(_));
    let mut live = owned.iter().all(Reading::rehydrated);
    if live {
        records.advance_to(clock_epoch(interval));
        progress.advance_to(*records.time());
    }
    let mut held: Vec<Line> = Vec::new();
    // The least Kafka timestamp of the live records in the open epoch, for the latency metric.
    let mut oldest: Option<i64> = None;
    let (mut taken, mut rehydrated, mut in_epoch) = (0u64, 0u64, 0u64);
    let mut last_position_check = Instant::now();
    let mut last_consume_warning: Option<Instant> = None;
    loop {
        let stopping = options.stop.load(Ordering::Relaxed);
        if stopping || (replay && live && owned.iter().all(Reading::finished)) {
            // Once per process, by whichever of its workers sees it first.
            static SAID: AtomicBool = AtomicBool::new(false);
            if stopping && !SAID.swap(true, Ordering::Relaxed) {
                tracing::info!("stop requested (SIGINT or SIGTERM): finishing the open epoch, then exiting");
            }
            break;
        }
        let mut polled = 0;
        while polled < POLL_BATCH {
            let line = match source.poll(Duration::ZERO) {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(e) => {
                    // librdkafka reconnects by itself: an unreachable broker is waited out.
                    if last_consume_warning.is_none_or(|at: Instant| at.elapsed() > Duration::from_secs(5)) {
                        tracing::warn!(error = %e, worker = index, "kafka consumer error, retrying");
                        last_consume_warning = Some(Instant::now());
                    }
                    shared.health.set_unhealthy(format!("kafka: {e}"));
                    break;
                }
            };
            polled += 1;
            let Some(reading) = owned.iter_mut().find(|r| r.number == line.pos.input) else { continue };
            if reading.plan.stop.is_some_and(|stop| line.pos.offset >= stop) {
                reading.past_stop = true;
                continue;
            }
            reading.next = line.pos.offset + 1;
            reading.moved = true;
            reading.unreported += 1;
            if !live && line.pos.offset >= reading.plan.stored {
                held.push(line);
                continue;
            }
            if !live {
                rehydrated += 1;
            }
            taken += 1;
            in_epoch += 1;
            if live {
                oldest = earliest(oldest, Some(line.pos.ts));
            }
            records.insert(line);
        }
        if polled == 0 && last_position_check.elapsed() > Duration::from_millis(50) {
            // Gaps (compaction, transaction markers) move the fetch position past the last
            // record: a partition can be read to its stored position or watermark without
            // a record at the offset before it.
            last_position_check = Instant::now();
            for (number, position) in source.positions() {
                if let Some(r) = owned.iter_mut().find(|r| r.number == number) {
                    if position > r.next && r.plan.stop.is_none_or(|stop| position <= stop) {
                        r.next = position;
                        r.moved = true;
                    }
                }
            }
        }
        let time = *records.time();
        let mut went_live = false;
        let next_epoch = if !live && owned.iter().all(Reading::rehydrated) {
            (live, went_live) = (true, true);
            Some(clock_epoch(interval).max(time + 1))
        } else if in_epoch >= epoch_records {
            Some(time + 1)
        } else if live && clock_epoch(interval) > time {
            Some(clock_epoch(interval))
        } else {
            None
        };
        if let Some(next_epoch) = next_epoch {
            if let Some(ms) = oldest.take() {
                progress.insert(Commit::Oldest(ms));
            }
            for reading in owned.iter_mut().filter(|r| r.moved) {
                progress.insert(Commit::Progress(reading.number, reading.next));
                reading.moved = false;
                if reading.unreported > 0 {
                    shared.taken.fetch_add(reading.unreported, Ordering::Relaxed);
                    shared.metrics.records_in(&reading.plan.partition.topic, std::mem::take(&mut reading.unreported));
                }
            }
            records.advance_to(next_epoch);
            progress.advance_to(next_epoch);
            records.flush();
            progress.flush();
            in_epoch = 0;
            if went_live {
                // The positions reached while rebuilding are committed with the first
                // live epoch, with the records held back for it.
                owned.iter_mut().for_each(|r| r.moved = true);
                for line in held.drain(..) {
                    taken += 1;
                    in_epoch += 1;
                    oldest = earliest(oldest, Some(line.pos.ts));
                    records.insert(line);
                }
            }
            worker.step_while(|| probe.less_than(&time));
            shared.schedule.retire_before(time);
            if let Some(reloader) = reloader.as_mut().filter(|_| live) {
                reloader.at_boundary(&shared.schedule, interval);
            }
        }
        if polled == 0 {
            worker.step_or_park(Some(Duration::from_millis(2)));
        } else {
            worker.step();
        }
    }
    // Close the open epoch with its positions, then let the graph drain.
    for reading in owned.iter_mut().filter(|r| r.moved && live) {
        progress.insert(Commit::Progress(reading.number, reading.next));
    }
    let _ = held;
    drop(records);
    drop(progress);
    while worker.has_dataflows() {
        worker.step_or_park(None);
    }
    let mut summary = WorkerSummary { records: taken, rehydrated, ..WorkerSummary::default() };
    if let Some(committer) = committer {
        let committer = Rc::try_unwrap(committer)
            .map_err(|_| StreamError::Workers("committer still in use after the dataflow ended".into()))?
            .into_inner();
        let Committer { mut sink, error, published, .. } = committer;
        if let Some(e) = error {
            return Err(e.into());
        }
        sink.finish()?;
        summary.published = published;
        summary.postgres = Some(sink.stats());
    }
    Ok(summary)
}

/// Polls the rule watcher and the rule states at epoch boundaries and installs a new pack
/// from an epoch no worker of this process has opened: the first of the clock tick after
/// next, since workers open epochs of the current tick only.
struct Reloader {
    watcher: RuleWatcher,
    /// Where `ttp_rule_state` is read, every `reload_interval_s`.
    postgres: String,
    client: Option<postgres::Client>,
    /// The states of the `--rule-state` file, which the table's rows override.
    file_states: BTreeMap<String, ttpflow_dataflows::rules::RuleState>,
    every: Duration,
    last: Option<Instant>,
    /// A pack not installed yet (its epoch was refused), with its rule count.
    waiting: Option<(Arc<RulePack>, usize)>,
}

impl Reloader {
    fn new(watcher: RuleWatcher, shared: &Shared) -> Reloader {
        let every = Duration::from_secs(shared.options.config.reload_interval_s.max(1));
        let watcher = watcher.with_min_interval(every);
        let file_states = watcher.states().clone();
        let postgres = shared.options.postgres.clone();
        Reloader { watcher, postgres, client: None, file_states, every, last: None, waiting: None }
    }

    fn at_boundary(&mut self, schedule: &PackSchedule, interval_ms: u64) {
        if self.last.is_some_and(|at| at.elapsed() < self.every) && self.waiting.is_none() {
            return;
        }
        self.last = Some(Instant::now());
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
        self.read_states(now);
        match self.watcher.poll(now) {
            Reload::Unchanged => {}
            Reload::Swapped { pack, rules } => self.waiting = Some((pack, rules)),
            Reload::Rejected { problems } => {
                tracing::warn!(problems = problems.len(), "changed rule pack does not load; the last good pack stays");
            }
        }
        if let Some((pack, rules)) = self.waiting.take() {
            let from = clock_epoch_after(interval_ms, 2);
            match schedule.install(from, Arc::clone(&pack)) {
                Ok(()) => tracing::info!(rules, epoch = from, "reloaded rule pack"),
                Err(e) => {
                    tracing::debug!(error = %e, "rule pack not installed yet");
                    self.waiting = Some((pack, rules));
                }
            }
        }
    }

    /// Hands the current `ttp_rule_state` to the watcher; a failure keeps the last states.
    fn read_states(&mut self, now_micros: i64) {
        if self.client.is_none() {
            self.client = crate::postgres::connect(&self.postgres).ok();
        }
        let Some(client) = self.client.as_mut() else { return };
        match crate::postgres::read_rule_states(client, now_micros) {
            Ok(table) => {
                let mut states = self.file_states.clone();
                states.extend(table);
                if &states != self.watcher.states() {
                    self.watcher.set_states(states);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "failed to read ttp_rule_state; the last states stay");
                self.client = None;
            }
        }
    }
}

/// The first live epoch of the clock tick `ticks` after the current one.
fn clock_epoch_after(interval_ms: u64, ticks: u64) -> Time {
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    LIVE_BASE + ((millis / interval_ms.max(1) + ticks) << 16)
}

/// Commits each complete epoch on worker 0; when several are complete they are committed
/// together. Of a rehydration epoch only the tags are committed.
fn commit_epochs(changes: Coll<'_, Commit>, committer: Option<Rc<RefCell<Committer>>>, metrics: Arc<Metrics>) {
    let mut stash: BTreeMap<Time, Pending> = BTreeMap::new();
    let mut pending_events: Diff = 0;
    let pact = ExchangePact::new(|_: &(Commit, Time, Diff)| 0u64);
    changes.inner.sink(pact, "commit epochs", move |(input, frontier)| {
        input.for_each(|_cap, data| {
            for (change, time, diff) in data.drain(..) {
                if change == Commit::Pending {
                    pending_events += diff;
                    metrics.set_pending(pending_events.max(0) as u64);
                    continue;
                }
                // A rehydration epoch's rollups, letters and positions are stored already;
                // its tags are committed again (see the module's essay).
                if time < LIVE_BASE && !matches!(change, Commit::Tag(_)) {
                    continue;
                }
                let epoch = stash.entry(time).or_default();
                match change {
                    Commit::Tag(tag) if diff > 0 => epoch.tags.push(*tag),
                    Commit::Tag(_) => {}
                    Commit::Rollup(row) => epoch.rollups.push((row, diff)),
                    Commit::Dead(dead) if diff > 0 => epoch.dead.push(dead),
                    Commit::Dead(_) => {}
                    Commit::Progress(number, next) if diff > 0 => {
                        let at = epoch.progress.entry(number).or_insert(next);
                        *at = (*at).max(next);
                    }
                    Commit::Oldest(ms) if diff > 0 => epoch.oldest = earliest(epoch.oldest, Some(ms)),
                    Commit::Progress(..) | Commit::Oldest(_) | Commit::Pending => {}
                }
            }
        });
        let Some(committer) = &committer else { return };
        let mut merged: Option<(Time, Pending)> = None;
        while let Some(entry) = stash.first_entry() {
            if frontier.frontier().less_equal(entry.key()) {
                break;
            }
            let (time, pending) = entry.remove_entry();
            let into = &mut merged.get_or_insert_with(|| (time, Pending::default())).1;
            into.tags.extend(pending.tags);
            into.rollups.extend(pending.rollups);
            into.dead.extend(pending.dead);
            for (number, next) in pending.progress {
                let at = into.progress.entry(number).or_insert(next);
                *at = (*at).max(next);
            }
            into.oldest = earliest(into.oldest, pending.oldest);
        }
        if let Some((time, pending)) = merged {
            committer.borrow_mut().commit(time, pending);
        }
    });
}
