//! The PostgreSQL sink: stored tags, rollup rows and the job's progress, one transaction
//! per epoch (DESIGN §1.5, §2.10).
//!
//! # Migrations
//!
//! The numbered files `schemas/NNN_*.sql` are built into the binary and applied at start in
//! one transaction, each once: `ttpflow_migrations` records the versions applied, and the
//! table is locked while the job looks at it, so two jobs starting together do not both apply
//! a file.
//!
//! # Exactly-once in effect
//!
//! Worker 0 cuts the inputs into epochs of `--epoch-records` records, so the epochs of a file
//! run are a function of the inputs and the epoch size alone: the same inputs and the same
//! size give the same boundaries, whatever the number of workers. The graph is deterministic,
//! so the tags that come out complete at epoch `t` are a function of the records of epochs
//! `0..=t`, and the same for every run over the same inputs.
//!
//! When an epoch is complete, worker 0 commits, in one transaction, that epoch's new tags
//! (`ON CONFLICT (uuid) DO NOTHING`), that epoch's rollup changes and, for every input, the
//! next offset after the epoch's last record of that input. A crash therefore leaves the
//! database at the end of some epoch `k`: the tags of epochs `0..=k`, the rollup rows as
//! they stood at the end of `k`, and the progress of epoch `k`, never a part of an epoch.
//!
//! The rollup rows arrive as differences: a row that changes is retracted and its new
//! version inserted at the same epoch, a row that goes away is only retracted. The sink
//! nets an epoch's differences per row key ([`net_rollups`]): a key with a row left over
//! is upserted to it, a key with only retractions is deleted. The table is thus
//! maintained from the deltas alone; it is right after epoch `k` only if it was right after
//! `k - 1`, which is why skipped and committed epochs must line up exactly (below).
//!
//! On start the job reads that progress back. It cannot start reading at the stored
//! offsets, because the graph's state (attackers, identities, pending events, windows, the
//! set of tags already stored) is built from everything before them and lives only in
//! memory. So it reads every input from the start again and rebuilds that state, and the
//! sink skips every epoch whose end positions are all at or before the stored progress: those
//! are exactly the epochs `0..=k`, whose tags are in the table already and whose rollup
//! changes made the stored rollup rows, so nothing is re-inserted and nothing is applied
//! twice. From epoch `k + 1` on it commits as an uninterrupted run would, with the same
//! tags and the same rollup changes, since the state it reached at the end of `k` is the
//! same (the rollup collection at each epoch is a function of the records up to it, so its
//! per-epoch differences are too, whatever the number of workers). The tables after any
//! number of crashes and restarts are thus those of one run without crashes. (`ON CONFLICT
//! DO NOTHING` would absorb a replayed tag anyway; the skipping is what keeps the progress
//! and the rollup rows right.)
//!
//! This rests on the stored progress falling on an epoch boundary of the new run. With
//! another `--epoch-records` it may not: the stored offsets can fall inside one of the new
//! epochs, and committing that epoch would store again the part of it that was committed,
//! while skipping it would lose the rest. The epoch size of the last committing run is
//! therefore kept in `ttp_job`, and a run whose epochs do not pass exactly through the stored
//! progress refuses to start committing, with an error naming both sizes. When they do (a
//! finished run, or sizes that divide evenly) the new size is fine and is stored. Stored
//! progress for an input this run does not read, or beyond the end of the inputs, is refused
//! the same way: the state it was reached with cannot be rebuilt.
//!
//! # Errors
//!
//! Failures of the connection or of the server's resources are transient: a commit is
//! retried with backoff (up to 5 s between attempts) on a new connection, the transaction
//! having rolled back, for as long as the sink timeout allows (unlimited by default, for
//! file runs and the Kafka job alike). The first failure of an outage is logged as a
//! warning, the recovery with the time it took; a timeout ends the job. Everything
//! else (a rejected statement, a progress that does not fit this run) is fatal and stops the
//! job; its restart resumes from the last committed epoch.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime};

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};
use postgres::{Client, NoTls, Transaction};
use ttpflow_dataflows::record::{DeadLetter, Reason, Tag};
use ttpflow_dataflows::rollup::RollupRow;
use ttpflow_dataflows::rules::RuleState;
use ttpflow_dataflows::types::Diff;

use crate::rules;

/// A numbered migration, built into the binary.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "001_ttp_tag", sql: include_str!("../schemas/001_ttp_tag.sql") },
    Migration { version: 2, name: "002_progress", sql: include_str!("../schemas/002_progress.sql") },
    Migration { version: 3, name: "003_rollup", sql: include_str!("../schemas/003_rollup.sql") },
    Migration { version: 4, name: "004_views", sql: include_str!("../schemas/004_views.sql") },
    Migration { version: 5, name: "005_rule_state", sql: include_str!("../schemas/005_rule_state.sql") },
    Migration { version: 6, name: "006_stream", sql: include_str!("../schemas/006_stream.sql") },
];

/// The file job's name in `ttp_job` and `ttp_progress`.
pub const FILE_JOB: &str = "embedded";

/// The longest pause between two attempts while PostgreSQL is unavailable.
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// Errors of the PostgreSQL sink.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error("invalid PostgreSQL connection string")]
    Url(#[source] postgres::Error),
    #[error("failed to connect to PostgreSQL")]
    Connect(#[source] postgres::Error),
    #[error("failed to apply migration \"{name}\"")]
    Migrate {
        name: &'static str,
        #[source]
        source: postgres::Error,
    },
    #[error("failed to read the stored progress")]
    ReadProgress(#[source] postgres::Error),
    #[error("failed to commit epoch {epoch}")]
    Commit {
        epoch: u64,
        #[source]
        source: postgres::Error,
    },
    #[error("tag \"{uuid}\" has rule_version {version}, which does not fit an integer column")]
    RuleVersion { uuid: String, version: i64 },
    #[error("input \"{0}\" is given twice; progress is stored per input name")]
    DuplicateInput(String),
    #[error(
        "stored progress names input \"{0}\", which this run does not read: give the inputs of the run that \
         stored it (the same files, by any path), or start over with a fresh database (or delete the file job's \
         rows: DELETE FROM ttp_progress WHERE job = 'embedded')"
    )]
    ForeignInput(String),
    #[error(
        "stored progress ({stored}) is not on an epoch boundary of this run (--epoch-records {epoch_records}; \
         the progress was stored with {stored_epoch_records}): rerun with the stored epoch size"
    )]
    NotOnBoundary { stored: String, epoch_records: u64, stored_epoch_records: String },
    #[error("stored progress ({stored}) is beyond the end of the inputs ({end})")]
    BeyondInput { stored: String, end: String },
    #[error("epoch {epoch} leaves two rollup rows for the key {key}; the rollup collection must hold one row per key")]
    RollupConflict { epoch: u64, key: String },
    #[error("failed to read the rule states from \"ttp_rule_state\"")]
    ReadRuleStates(#[source] postgres::Error),
    #[error("failed to read the rule state of \"{rule_id}\": {message}")]
    RuleState { rule_id: String, message: String },
    #[error("gave up after {waited_s:.1} s of PostgreSQL being unavailable (the sink timeout)")]
    Unavailable {
        waited_s: f64,
        #[source]
        source: Box<PostgresError>,
    },
}

impl PostgresError {
    /// Whether retrying (on a new connection, after a pause) may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            PostgresError::Connect(e)
            | PostgresError::Migrate { source: e, .. }
            | PostgresError::ReadProgress(e)
            | PostgresError::ReadRuleStates(e)
            | PostgresError::Commit { source: e, .. } => is_transient(e),
            PostgresError::Url(_)
            | PostgresError::RuleVersion { .. }
            | PostgresError::DuplicateInput(_)
            | PostgresError::ForeignInput(_)
            | PostgresError::NotOnBoundary { .. }
            | PostgresError::BeyondInput { .. }
            | PostgresError::RollupConflict { .. }
            | PostgresError::RuleState { .. }
            | PostgresError::Unavailable { .. } => false,
        }
    }
}

/// Connection failures, and the server's classes for them, resource shortage, operator
/// intervention and serialization failures.
fn is_transient(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => ["08", "40", "53", "57P"].iter().any(|class| code.code().starts_with(class)),
        // Not an answer of the server: I/O, a dropped connection, a timeout.
        None => e.as_db_error().is_none(),
    }
}

/// Connects to `url` (a `postgres://` URL or `key=value` pairs).
pub fn connect(url: &str) -> Result<Client, PostgresError> {
    let mut config = postgres::Config::from_str(url).map_err(PostgresError::Url)?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    config.connect(NoTls).map_err(PostgresError::Connect)
}

/// Applies the migrations not applied yet, in one transaction; returns their versions.
pub fn migrate(client: &mut Client) -> Result<Vec<i32>, PostgresError> {
    let bookkeeping = |source| PostgresError::Migrate { name: "ttpflow_migrations", source };
    let mut tx = client.transaction().map_err(bookkeeping)?;
    // Processes of one cluster start together: a transaction-scoped advisory lock makes
    // them migrate one after the other (two concurrent `CREATE TABLE IF NOT EXISTS` of
    // the same table conflict in the catalog).
    tx.batch_execute(
        "SELECT pg_advisory_xact_lock(7346275016593522001);
         CREATE TABLE IF NOT EXISTS ttpflow_migrations (
             version integer PRIMARY KEY,
             name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );
         LOCK TABLE ttpflow_migrations IN SHARE ROW EXCLUSIVE MODE",
    )
    .map_err(bookkeeping)?;
    let applied: BTreeSet<i32> = tx
        .query("SELECT version FROM ttpflow_migrations", &[])
        .map_err(bookkeeping)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut new = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        let failed = |source| PostgresError::Migrate { name: m.name, source };
        tx.batch_execute(m.sql).map_err(failed)?;
        tx.execute("INSERT INTO ttpflow_migrations (version, name) VALUES ($1, $2)", &[&m.version, &m.name])
            .map_err(failed)?;
        new.push(m.version);
    }
    tx.commit().map_err(bookkeeping)?;
    Ok(new)
}

/// What a previous run committed: next offsets by input name, and its epoch size.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredProgress {
    pub offsets: BTreeMap<String, u64>,
    pub epoch_records: Option<u64>,
}

/// The name under which a file input's progress is stored: its canonical path, so that a
/// rerun that names the same file another way (relative, absolute, through a link) resumes;
/// `-` (standard input) as it is.
pub fn input_name(path: &Path) -> String {
    if path == Path::new("-") {
        return "-".to_string();
    }
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()).display().to_string()
}

/// Renames the file job's stored progress rows from each old input name to its new one.
fn rename_inputs(client: &mut Client, renames: &[(String, String)]) -> Result<(), PostgresError> {
    let mut tx = client.transaction().map_err(PostgresError::ReadProgress)?;
    for (old, new) in renames {
        tx.execute("UPDATE ttp_progress SET input = $1 WHERE job = $2 AND input = $3", &[new, &FILE_JOB, old])
            .map_err(PostgresError::ReadProgress)?;
    }
    tx.commit().map_err(PostgresError::ReadProgress)
}

/// Reads the file job's stored progress (partition 0 of every input).
pub fn read_progress(client: &mut Client) -> Result<StoredProgress, PostgresError> {
    let offsets = read_positions(client, FILE_JOB)?
        .into_iter()
        .filter(|p| p.partition == 0)
        .map(|p| (p.input, p.next_offset))
        .collect();
    let epoch_records = client
        .query_opt("SELECT epoch_records FROM ttp_job WHERE job = $1", &[&FILE_JOB])
        .map_err(PostgresError::ReadProgress)?
        .map(|row| row.get::<_, i64>(0).max(0) as u64);
    Ok(StoredProgress { offsets, epoch_records })
}

/// Where a job stands in one partition of an input (a file is partition 0).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub input: String,
    pub partition: i32,
    /// The next offset to read: every record before it is covered by the committed output.
    pub next_offset: u64,
}

/// Reads a job's stored positions, ordered by input and partition.
pub fn read_positions(client: &mut Client, job: &str) -> Result<Vec<Position>, PostgresError> {
    Ok(client
        .query(
            "SELECT input, partition, next_offset FROM ttp_progress WHERE job = $1 ORDER BY input, partition",
            &[&job],
        )
        .map_err(PostgresError::ReadProgress)?
        .iter()
        .map(|row| Position {
            input: row.get(0),
            partition: row.get(1),
            next_offset: row.get::<_, i64>(2).max(0) as u64,
        })
        .collect())
}

/// Reads `ttp_rule_state` as rule states by rule id, resolved at `now_micros` exactly as a
/// state file's are ([`crate::rules::load_states`]): a state whose `expires_at` has passed is
/// expired, and an expired rule emits nothing. Read at epoch boundaries and handed to the
/// rule watcher ([`crate::reload::RuleWatcher::set_states`]), so a change, and an expiry
/// passing, applies live; a state for a rule the pack lacks is the watcher's warning.
pub fn read_rule_states(client: &mut Client, now_micros: i64) -> Result<BTreeMap<String, RuleState>, PostgresError> {
    let rows = client
        .query("SELECT rule_id, state, confidence_max, expires_at FROM ttp_rule_state", &[])
        .map_err(PostgresError::ReadRuleStates)?;
    let mut states = BTreeMap::new();
    for row in rows {
        let rule_id: String = row.try_get(0).map_err(PostgresError::ReadRuleStates)?;
        let state: String = row.try_get(1).map_err(PostgresError::ReadRuleStates)?;
        let confidence_max: Option<f64> = row.try_get(2).map_err(PostgresError::ReadRuleStates)?;
        let expires_at: Option<SystemTime> = row.try_get(3).map_err(PostgresError::ReadRuleStates)?;
        let state = rule_state_row(&state, confidence_max, expires_at.map(unix_micros), now_micros)
            .map_err(|message| PostgresError::RuleState { rule_id: rule_id.clone(), message })?;
        states.insert(rule_id, state);
    }
    Ok(states)
}

/// One `ttp_rule_state` row (its `state`, `confidence_max` and `expires_at` in microseconds
/// since the Unix epoch) as the rule state at `now_micros`.
pub fn rule_state_row(
    state: &str,
    confidence_max: Option<f64>,
    expires_at_micros: Option<i64>,
    now_micros: i64,
) -> Result<RuleState, String> {
    let mode = rules::state_mode(Some(state))?;
    Ok(rules::resolve_state(mode, confidence_max, expires_at_micros, now_micros))
}

/// Microseconds since the Unix epoch, saturating (PostgreSQL's `infinity` is far beyond).
fn unix_micros(time: SystemTime) -> i64 {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_micros()).map_or(i64::MIN, |m| -m),
    }
}

/// What the sink did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkStats {
    pub epochs_committed: u64,
    pub epochs_skipped: u64,
    /// Tag rows new to `ttp_tag`.
    pub rows_inserted: u64,
    /// Tag rows sent (new or already stored).
    pub rows_sent: u64,
    /// Rollup rows upserted (inserted or updated) and deleted.
    pub rollups_upserted: u64,
    pub rollups_deleted: u64,
    /// Time spent committing.
    pub elapsed: Duration,
}

/// The sink of one run: commits each complete epoch, skipping those already committed.
pub struct Sink {
    url: String,
    client: Option<Client>,
    inputs: Vec<String>,
    epoch_records: u64,
    stored: StoredProgress,
    /// The stored offsets, in the order of `inputs`.
    stored_ends: Vec<u64>,
    /// The end positions of the last epoch seen.
    last_end: Vec<u64>,
    /// Whether an epoch past the stored progress was reached (and the boundary checked).
    resumed: bool,
    epoch: u64,
    stats: SinkStats,
    /// How long an outage is waited out; none: for as long as it takes.
    timeout: Option<Duration>,
    /// Dead letters of the tags the server refused, not taken yet.
    rejected: Vec<DeadLetter>,
}

impl SinkStats {
    /// Rows written per second of commit time: tag rows sent and rollup rows upserted or
    /// deleted.
    pub fn rows_per_second(&self) -> f64 {
        (self.rows_sent + self.rollups_upserted + self.rollups_deleted) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// What an epoch does to one rollup key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollupChange {
    /// Insert the row, or update the stored row of its key to it.
    Upsert(RollupRow),
    /// Delete the stored row of this row's key (the row is the retracted one).
    Delete(RollupRow),
}

/// A rollup row's key: scope kind, scope id, technique, sub-technique, tactic.
fn rollup_key(row: &RollupRow) -> (ttpflow_dataflows::rollup::ScopeKind, &str, &str, &str, &str) {
    (row.scope_kind, &row.scope_id, &row.technique_id, &row.sub_technique_id, &row.tactic)
}

fn describe_key(row: &RollupRow) -> String {
    format!(
        "({}, \"{}\", {}, \"{}\", {})",
        row.scope_kind.as_str(),
        row.scope_id,
        row.technique_id,
        row.sub_technique_id,
        row.tactic
    )
}

/// Nets one epoch's rollup differences per key: the rows are consolidated first (a row
/// inserted and retracted within the epoch cancels out), then a key with a row of positive
/// multiplicity left becomes an upsert of that row, and a key with only retracted rows a
/// delete. The result is ordered by key. Two rows left for one key are refused.
pub fn net_rollups(epoch: u64, mut changes: Vec<(RollupRow, Diff)>) -> Result<Vec<RollupChange>, PostgresError> {
    changes.sort_by(|a, b| rollup_key(&a.0).cmp(&rollup_key(&b.0)).then_with(|| a.0.cmp(&b.0)));
    let mut rows: Vec<(RollupRow, Diff)> = Vec::with_capacity(changes.len());
    for (row, diff) in changes {
        match rows.last_mut() {
            Some((last, n)) if *last == row => *n += diff,
            _ => rows.push((row, diff)),
        }
    }
    rows.retain(|(_, n)| *n != 0);
    let mut net = Vec::new();
    for group in rows.chunk_by(|a, b| rollup_key(&a.0) == rollup_key(&b.0)) {
        let mut left = group.iter().filter(|(_, n)| *n > 0).map(|(row, _)| row);
        net.push(match (left.next(), left.next()) {
            (Some(_), Some(second)) => return Err(PostgresError::RollupConflict { epoch, key: describe_key(second) }),
            (Some(row), None) => RollupChange::Upsert(row.clone()),
            (None, _) => RollupChange::Delete(group[0].0.clone()),
        });
    }
    Ok(net)
}

impl Sink {
    /// Connects, applies the migrations and reads the stored progress for a run over `inputs`
    /// (named by their paths as given) in epochs of `epoch_records`.
    pub fn open(
        url: &str,
        paths: &[PathBuf],
        epoch_records: u64,
        timeout: Option<Duration>,
    ) -> Result<Sink, PostgresError> {
        let inputs: Vec<String> = paths.iter().map(|p| input_name(p)).collect();
        let mut seen = BTreeSet::new();
        if let Some(twice) = inputs.iter().find(|name| !seen.insert(name.as_str())) {
            return Err(PostgresError::DuplicateInput(twice.clone()));
        }
        let mut client = None;
        let applied = with_retries(url, &mut client, 0, timeout, &|_| {}, migrate)?;
        if !applied.is_empty() {
            tracing::info!(versions = ?applied, "applied migrations");
        }
        let mut stored = with_retries(url, &mut client, 0, timeout, &|_| {}, read_progress)?;
        // Progress stored under another name of one of this run's inputs (the path as an
        // earlier run gave it) is renamed to the input's canonical name.
        let renames: Vec<(String, String)> = stored
            .offsets
            .keys()
            .filter(|name| !inputs.contains(name))
            .map(|name| {
                let same = paths.iter().zip(&inputs).find(|(path, canonical)| {
                    path.display().to_string() == **name || input_name(Path::new(name)) == **canonical
                });
                same.map(|(_, canonical)| (name.clone(), canonical.clone()))
                    .ok_or_else(|| PostgresError::ForeignInput(name.clone()))
            })
            .collect::<Result<_, _>>()?;
        if !renames.is_empty() {
            with_retries(url, &mut client, 0, timeout, &|_| {}, |client| rename_inputs(client, &renames))?;
            for (old, new) in &renames {
                tracing::info!(old = %old, new = %new, "stored progress renamed to the input's canonical path");
                if let Some(offset) = stored.offsets.remove(old) {
                    stored.offsets.insert(new.clone(), offset);
                }
            }
        }
        let stored_ends = inputs.iter().map(|name| stored.offsets.get(name).copied().unwrap_or(0)).collect();
        let last_end = vec![0; inputs.len()];
        Ok(Sink {
            url: url.to_string(),
            client,
            timeout,
            rejected: Vec::new(),
            inputs,
            epoch_records,
            stored,
            stored_ends,
            last_end,
            resumed: false,
            epoch: 0,
            stats: SinkStats::default(),
        })
    }

    /// The dead letters of the tags the server refused since the last call.
    pub fn take_rejected(&mut self) -> Vec<DeadLetter> {
        std::mem::take(&mut self.rejected)
    }

    /// The progress found at start.
    pub fn stored(&self) -> &StoredProgress {
        &self.stored
    }

    pub fn stats(&self) -> SinkStats {
        self.stats
    }

    fn describe(&self, ends: &[u64]) -> String {
        self.inputs.iter().zip(ends).map(|(name, n)| format!("\"{name}\": {n}")).collect::<Vec<_>>().join(", ")
    }

    /// Takes the next complete epoch: `end` holds, per input, the next offset after the
    /// epoch's last record of it; `tags` are the epoch's new tags and `rollups` its rollup
    /// differences. Skips the epoch when the stored progress covers it, else commits it.
    pub fn epoch(&mut self, end: &[u64], tags: &[Tag], rollups: Vec<(RollupRow, Diff)>) -> Result<(), PostgresError> {
        let epoch = self.epoch;
        self.epoch += 1;
        if !self.resumed {
            if end.iter().zip(&self.stored_ends).all(|(e, s)| e <= s) {
                self.last_end = end.to_vec();
                self.stats.epochs_skipped += 1;
                return Ok(());
            }
            if self.last_end != self.stored_ends {
                return Err(PostgresError::NotOnBoundary {
                    stored: self.describe(&self.stored_ends),
                    epoch_records: self.epoch_records,
                    stored_epoch_records: self.stored.epoch_records.map_or("an unknown size".into(), |n| n.to_string()),
                });
            }
            self.resumed = true;
            if self.epoch > 1 {
                tracing::info!(epochs = self.stats.epochs_skipped, "resuming after the stored progress");
            }
        }
        self.last_end = end.to_vec();
        let started = Instant::now();
        let rollups = net_rollups(epoch, rollups)?;
        let rows = self.commit_with_retries(epoch, end, tags, &rollups)?;
        self.stats.elapsed += started.elapsed();
        self.stats.epochs_committed += 1;
        self.stats.rows_inserted += rows;
        self.stats.rows_sent += tags.len() as u64;
        let upserted = rollups.iter().filter(|c| matches!(c, RollupChange::Upsert(_))).count() as u64;
        self.stats.rollups_upserted += upserted;
        self.stats.rollups_deleted += rollups.len() as u64 - upserted;
        Ok(())
    }

    /// Called when the inputs are exhausted: refuses stored progress beyond them.
    pub fn finish(&mut self) -> Result<(), PostgresError> {
        if !self.resumed && self.last_end != self.stored_ends {
            return Err(PostgresError::BeyondInput {
                stored: self.describe(&self.stored_ends),
                end: self.describe(&self.last_end),
            });
        }
        Ok(())
    }

    fn commit_with_retries(
        &mut self,
        epoch: u64,
        end: &[u64],
        tags: &[Tag],
        rollups: &[RollupChange],
    ) -> Result<u64, PostgresError> {
        let positions: Vec<Position> = self
            .inputs
            .iter()
            .zip(end)
            .map(|(input, &next_offset)| Position { input: input.clone(), partition: 0, next_offset })
            .collect();
        let batch = Batch {
            epoch,
            job: FILE_JOB,
            positions: &positions,
            epoch_records: self.epoch_records,
            tags,
            rollups,
            outbox: None,
            reset: false,
        };
        let committed =
            with_retries(&self.url, &mut self.client, epoch, self.timeout, &|_| {}, |client| commit(client, &batch))?;
        self.rejected.extend(committed.rejected);
        Ok(committed.inserted)
    }
}

/// Runs `attempt` on the connection (a new one when there is none or the last failed),
/// retrying transient failures with backoff until `timeout` (none: for as long as it
/// takes) has passed since the first failure; a failed attempt's transaction has rolled
/// back. The first failure is logged as a warning, the later ones at debug level, and a
/// recovery with the attempts and the time it took.
pub(crate) fn with_retries<T>(
    url: &str,
    client: &mut Option<Client>,
    epoch: u64,
    timeout: Option<Duration>,
    on_retry: &dyn Fn(&PostgresError),
    mut attempt: impl FnMut(&mut Client) -> Result<T, PostgresError>,
) -> Result<T, PostgresError> {
    let mut pause = Duration::from_millis(100);
    // The timeout counts from the first attempt.
    let started = Instant::now();
    let mut failed_since: Option<Instant> = None;
    let mut tries: u64 = 1;
    loop {
        let result = match client.take() {
            Some(client) => Ok(client),
            None => connect(url).and_then(|mut client| {
                prepare(&mut client).map_err(PostgresError::Connect)?;
                Ok(client)
            }),
        }
        .and_then(|mut connection| {
            let value = attempt(&mut connection)?;
            *client = Some(connection);
            Ok(value)
        });
        match result {
            Ok(value) => {
                if let Some(since) = failed_since {
                    tracing::info!(
                        epoch,
                        attempts = tries,
                        waited_s = since.elapsed().as_secs_f64(),
                        "postgres is back"
                    );
                }
                return Ok(value);
            }
            Err(e) if e.is_transient() => {
                failed_since.get_or_insert_with(Instant::now);
                let waited = started.elapsed();
                let left = timeout.map(|limit| limit.saturating_sub(waited));
                if left.is_some_and(|left| left.is_zero()) {
                    tracing::error!(epoch, attempts = tries, waited_s = waited.as_secs_f64(), error = %e, "postgres unavailable, giving up");
                    return Err(PostgresError::Unavailable { waited_s: waited.as_secs_f64(), source: Box::new(e) });
                }
                // A warning at the first failure and about once a minute after it.
                if tries == 1 || tries % 12 == 0 {
                    tracing::warn!(epoch, attempt = tries, error = %e, "postgres unavailable, retrying until it is back");
                } else {
                    tracing::debug!(epoch, attempt = tries, error = %e, "postgres still unavailable");
                }
                on_retry(&e);
                std::thread::sleep(left.map_or(pause, |left| pause.min(left)));
                pause = (pause * 2).min(MAX_PAUSE);
                tries += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The sink of a Kafka job: commits epochs with the positions they moved and, when
/// publishing, the messages of their new tags through the outbox.
///
/// Resuming needs no epoch arithmetic here: the source rebuilds the graph's state by
/// reading every partition up to its stored position in epochs the sink never sees
/// committed ([`crate::stream`]), so every epoch handed to [`StreamSink::commit`] starts
/// where the stored progress ends.
pub struct StreamSink {
    url: String,
    client: Option<Client>,
    job: String,
    epoch_records: u64,
    /// Forget the stored rollups and progress in the first commit (a replay from the start).
    reset: bool,
    /// Outbox messages published but not yet cleared, up to this id.
    published_through: Option<i64>,
    stats: SinkStats,
    /// How long an outage is waited out; none: for as long as it takes.
    timeout: Option<Duration>,
    /// Told of every transient failure before its retry.
    on_retry: Box<dyn Fn(&PostgresError) + Send>,
}

/// What a Kafka job's commit did.
pub struct StreamCommitted {
    /// The messages to publish now.
    pub messages: Vec<Message>,
    /// The outbox id to report to [`StreamSink::published`] once they are delivered.
    pub last: Option<i64>,
    /// The dead letters of the tags the server refused.
    pub refused: Vec<DeadLetter>,
}

impl StreamSink {
    /// Connects and applies the migrations.
    pub fn open(
        url: &str,
        job: &str,
        epoch_records: u64,
        reset: bool,
        timeout: Option<Duration>,
    ) -> Result<StreamSink, PostgresError> {
        let mut client = None;
        let applied = with_retries(url, &mut client, 0, timeout, &|_| {}, migrate)?;
        if !applied.is_empty() {
            tracing::info!(versions = ?applied, "applied migrations");
        }
        Ok(StreamSink {
            url: url.to_string(),
            client,
            timeout,
            job: job.to_string(),
            epoch_records,
            reset,
            published_through: None,
            stats: SinkStats::default(),
            on_retry: Box::new(|_| {}),
        })
    }

    /// Calls `on_retry` with every transient failure before it is retried.
    pub fn on_retry(&mut self, on_retry: impl Fn(&PostgresError) + Send + 'static) {
        self.on_retry = Box::new(on_retry);
    }

    /// The job's stored positions (none when this run starts over).
    pub fn stored(&mut self) -> Result<Vec<Position>, PostgresError> {
        if self.reset {
            return Ok(Vec::new());
        }
        let (url, job) = (self.url.clone(), self.job.clone());
        with_retries(&url, &mut self.client, 0, self.timeout, &*self.on_retry, |client| read_positions(client, &job))
    }

    /// Messages a previous run committed and may not have published.
    pub fn leftover_messages(&mut self) -> Result<Vec<(i64, Message)>, PostgresError> {
        let (url, job) = (self.url.clone(), self.job.clone());
        with_retries(&url, &mut self.client, 0, self.timeout, &*self.on_retry, |client| read_outbox(client, &job))
    }

    pub fn stats(&self) -> SinkStats {
        self.stats
    }

    /// Commits one or more complete epochs at once.
    pub fn commit(
        &mut self,
        epoch: u64,
        positions: &[Position],
        tags: &[Tag],
        rollups: Vec<(RollupRow, Diff)>,
        compose: Option<Compose<'_>>,
    ) -> Result<StreamCommitted, PostgresError> {
        let started = Instant::now();
        let rollups = net_rollups(epoch, rollups)?;
        let clear = self.published_through.take();
        let batch = Batch {
            epoch,
            job: &self.job,
            positions,
            epoch_records: self.epoch_records,
            tags,
            rollups: &rollups,
            outbox: compose,
            reset: self.reset,
        };
        let job = self.job.clone();
        let committed = with_retries(&self.url, &mut self.client, epoch, self.timeout, &*self.on_retry, |client| {
            if let Some(last) = clear {
                clear_outbox(client, &job, last).map_err(|source| PostgresError::Commit { epoch, source })?;
            }
            commit(client, &batch)
        })?;
        self.reset = false;
        self.stats.elapsed += started.elapsed();
        self.stats.epochs_committed += 1;
        self.stats.rows_inserted += committed.inserted;
        self.stats.rows_sent += tags.len() as u64;
        let upserted = rollups.iter().filter(|c| matches!(c, RollupChange::Upsert(_))).count() as u64;
        self.stats.rollups_upserted += upserted;
        self.stats.rollups_deleted += rollups.len() as u64 - upserted;
        Ok(StreamCommitted { messages: committed.messages, last: committed.outbox_last, refused: committed.rejected })
    }

    /// The outbox messages up to `last` are delivered: they are cleared with the next
    /// commit (or by [`StreamSink::finish`]).
    pub fn published(&mut self, last: i64) {
        self.published_through = Some(last);
    }

    /// Clears what is published and not cleared yet.
    pub fn finish(&mut self) -> Result<(), PostgresError> {
        if let Some(last) = self.published_through.take() {
            let job = self.job.clone();
            with_retries(&self.url.clone(), &mut self.client, 0, self.timeout, &*self.on_retry, |client| {
                clear_outbox(client, &job, last).map_err(|source| PostgresError::Commit { epoch: 0, source })
            })?;
        }
        Ok(())
    }
}

/// The staging tables of a connection: the epoch's tags and rollup changes are copied in,
/// then applied.
pub(crate) fn prepare(client: &mut Client) -> Result<(), postgres::Error> {
    client.batch_execute(
        "CREATE TEMP TABLE IF NOT EXISTS ttp_tag_in (
             uuid text, source_kind text, source_id text, attacker_uuid text, identity_uuid text,
             session_id text, decky_id text, tactic text, technique_id text, sub_technique_id text,
             confidence double precision, rule_id text, rule_version integer, evidence text,
             attack_release text, observed_at timestamptz
         ) ON COMMIT DELETE ROWS;
         CREATE TEMP TABLE IF NOT EXISTS ttp_rollup_in (
             scope_kind text, scope_id text, technique_id text, sub_technique_id text, tactic text,
             tag_count bigint, attacker_count bigint, identity_count bigint,
             first_seen timestamptz, last_seen timestamptz, confidence_max double precision,
             deleted boolean
         ) ON COMMIT DELETE ROWS",
    )
}

const STAGE_TYPES: &[Type] = &[
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::FLOAT8,
    Type::TEXT,
    Type::INT4,
    Type::TEXT,
    Type::TEXT,
    Type::TIMESTAMPTZ,
];

const ROLLUP_STAGE_TYPES: &[Type] = &[
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::FLOAT8,
    Type::BOOL,
];

fn micros_to_system_time(micros: i64) -> SystemTime {
    let magnitude = Duration::from_micros(micros.unsigned_abs());
    if micros >= 0 {
        SystemTime::UNIX_EPOCH + magnitude
    } else {
        SystemTime::UNIX_EPOCH - magnitude
    }
}

/// A message to publish once its epoch has committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub key: String,
    /// `None` is a tombstone (a rollup row that went away).
    pub value: Option<Vec<u8>>,
}

/// Composes an epoch's messages from its newly stored tags and the dead letters of the
/// tags the server refused.
pub(crate) type Compose<'a> = &'a dyn Fn(&[&Tag], &[DeadLetter]) -> Vec<Message>;

/// What one epoch commits.
pub(crate) struct Batch<'a> {
    pub epoch: u64,
    pub job: &'a str,
    /// The positions the epoch moved (all of them for a file job).
    pub positions: &'a [Position],
    pub epoch_records: u64,
    pub tags: &'a [Tag],
    pub rollups: &'a [RollupChange],
    /// With publication: the messages of the epoch, written to `ttp_outbox` in its transaction.
    pub outbox: Option<Compose<'a>>,
    /// Before anything else, forget the job's stored rollups and progress (a replay from
    /// the start rebuilds them).
    pub reset: bool,
}

/// What a commit did.
pub(crate) struct Committed {
    pub inserted: u64,
    /// The tags the server refused, as `sink_rejected` dead letters.
    pub rejected: Vec<DeadLetter>,
    /// The epoch's messages and the outbox id of the last one.
    pub messages: Vec<Message>,
    pub outbox_last: Option<i64>,
}

/// Whether the server refused the data of a row rather than the statement or the
/// connection: a data exception (class 22), an integrity constraint other than a duplicate
/// key (class 23, such as a CHECK a site added), a program limit (class 54, such as an
/// index row too large).
fn is_refused_data(e: &PostgresError) -> bool {
    let PostgresError::Commit { source, .. } = e else { return false };
    source.code().is_some_and(|code| {
        let code = code.code();
        ["22", "23", "54"].iter().any(|class| code.starts_with(class)) && code != "23505"
    })
}

/// The server's message of an error, without its detail (which may quote the row).
fn server_message(e: &PostgresError) -> String {
    match e {
        PostgresError::Commit { source, .. } => match source.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => source.to_string(),
        },
        other => other.to_string(),
    }
}

/// One epoch in one transaction (see [`commit_once`]). When the server refuses the data of
/// a row, the epoch is committed again row by row ([`store_row_by_row`]): the rows it
/// refuses are left out, a tag as a `sink_rejected` dead letter, and the rest is stored,
/// so that no record stops the sink and no error is retried on the same data.
pub(crate) fn commit(client: &mut Client, batch: &Batch<'_>) -> Result<Committed, PostgresError> {
    match commit_once(client, batch, false) {
        Err(e) if is_refused_data(&e) => {
            tracing::warn!(epoch = batch.epoch, error = %server_message(&e), "postgres refused a row, storing the epoch row by row");
            commit_once(client, batch, true)
        }
        other => other,
    }
}

/// One epoch in one transaction: its tags (binary COPY into the staging table, then one
/// insert that skips stored uuids), its rollup changes (binary COPY, then one upsert and
/// one delete), the messages of its new tags into the outbox, the positions it moved and
/// the epoch size. `row_by_row` stores each tag and rollup change on its own savepoint.
fn commit_once(client: &mut Client, batch: &Batch<'_>, row_by_row: bool) -> Result<Committed, PostgresError> {
    let failed = |source| PostgresError::Commit { epoch: batch.epoch, source };
    let mut tx = client.transaction().map_err(failed)?;
    if batch.reset {
        tx.execute("DELETE FROM ttp_rollup", &[]).map_err(failed)?;
        tx.execute("DELETE FROM ttp_progress WHERE job = $1", &[&batch.job]).map_err(failed)?;
    }
    let started = Instant::now();
    let (inserted, rejected) = if row_by_row {
        store_row_by_row(&mut tx, batch)?
    } else {
        (insert_tags(&mut tx, batch.epoch, batch.tags, batch.outbox.is_some())?, Vec::new())
    };
    let tags_done = Instant::now();
    if !row_by_row {
        apply_rollups(&mut tx, batch.rollups).map_err(failed)?;
    }
    let rollups_done = Instant::now();
    let (mut messages, mut outbox_last, mut composed) = (Vec::new(), None, rollups_done);
    if let Some(compose) = batch.outbox {
        let new: BTreeSet<[u8; 16]> = inserted.uuids.iter().copied().collect();
        let fresh: Vec<&Tag> = batch.tags.iter().filter(|t| new.contains(&t.uuid)).collect();
        messages = compose(&fresh, &rejected);
        composed = Instant::now();
        outbox_last = write_outbox(&mut tx, batch.job, &messages).map_err(failed)?;
    }
    let outbox_done = Instant::now();
    let inputs: Vec<&str> = batch.positions.iter().map(|p| p.input.as_str()).collect();
    let partitions: Vec<i32> = batch.positions.iter().map(|p| p.partition).collect();
    let offsets: Vec<i64> = batch.positions.iter().map(|p| p.next_offset as i64).collect();
    tx.execute(
        "INSERT INTO ttp_progress (job, input, partition, next_offset) \
         SELECT $1, input, partition, next_offset \
         FROM unnest($2::text[], $3::integer[], $4::bigint[]) AS p(input, partition, next_offset) \
         ON CONFLICT (job, input, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset",
        &[&batch.job, &inputs, &partitions, &offsets],
    )
    .map_err(failed)?;
    tx.execute(
        "INSERT INTO ttp_job (job, epoch_records) VALUES ($1, $2) \
         ON CONFLICT (job) DO UPDATE SET epoch_records = EXCLUDED.epoch_records, updated_at = now()",
        &[&batch.job, &(batch.epoch_records as i64)],
    )
    .map_err(failed)?;
    let progress_done = Instant::now();
    tx.commit().map_err(failed)?;
    let ms = |from: Instant, to: Instant| (to - from).as_secs_f64() * 1e3;
    tracing::debug!(
        epoch = batch.epoch,
        tags = batch.tags.len(),
        rollups = batch.rollups.len(),
        messages = messages.len(),
        tags_ms = ms(started, tags_done),
        rollups_ms = ms(tags_done, rollups_done),
        compose_ms = ms(rollups_done, composed),
        outbox_ms = ms(composed, outbox_done),
        progress_ms = ms(outbox_done, progress_done),
        commit_ms = ms(progress_done, Instant::now()),
        "commit phases"
    );
    Ok(Committed { inserted: inserted.count, rejected, messages, outbox_last })
}

/// Stores an epoch's tags and rollup changes one by one, each on a savepoint: a row the
/// server refuses for its data is rolled back and left out. A refused tag becomes a
/// `sink_rejected` dead letter of its record; a refused rollup change is logged with its
/// key (the row stays as it was).
fn store_row_by_row(tx: &mut Transaction<'_>, batch: &Batch<'_>) -> Result<(Inserted, Vec<DeadLetter>), PostgresError> {
    let failed = |source| PostgresError::Commit { epoch: batch.epoch, source };
    let mut inserted = Inserted { count: 0, uuids: Vec::new() };
    let mut rejected = Vec::new();
    for tag in batch.tags {
        let mut row = tx.transaction().map_err(failed)?;
        let stored = insert_tags(&mut row, batch.epoch, std::slice::from_ref(tag), batch.outbox.is_some())
            .and_then(|one| row.execute("DELETE FROM ttp_tag_in", &[]).map(|_| one).map_err(failed));
        match stored {
            Ok(one) => {
                row.commit().map_err(failed)?;
                inserted.count += one.count;
                inserted.uuids.extend(one.uuids);
            }
            Err(e) if is_refused_data(&e) => {
                drop(row);
                let uuid = uuid::Uuid::from_bytes(tag.uuid);
                let message = server_message(&e);
                tracing::warn!(epoch = batch.epoch, rule = %tag.rule_id, %uuid, error = %message, "postgres refused a tag");
                rejected.push(DeadLetter {
                    pos: tag.pos,
                    topic: None,
                    reason: Reason::SinkRejected,
                    detail: format!("PostgreSQL refused tag {uuid} of rule {}: {message}", tag.rule_id),
                });
            }
            Err(e) => return Err(e),
        }
    }
    for change in batch.rollups {
        let mut row = tx.transaction().map_err(failed)?;
        let stored = apply_rollups(&mut row, std::slice::from_ref(change))
            .and_then(|()| row.execute("DELETE FROM ttp_rollup_in", &[]).map(|_| ()))
            .map_err(failed);
        match stored {
            Ok(()) => row.commit().map_err(failed)?,
            Err(e) if is_refused_data(&e) => {
                let key = match change {
                    RollupChange::Upsert(r) | RollupChange::Delete(r) => describe_key(r),
                };
                tracing::error!(epoch = batch.epoch, %key, error = %server_message(&e), "postgres refused a rollup row, left as it was");
            }
            Err(e) => return Err(e),
        }
    }
    Ok((inserted, rejected))
}

/// Appends messages to the outbox (binary COPY, which numbers the rows in order); returns
/// the id of the last one.
fn write_outbox(tx: &mut Transaction<'_>, job: &str, messages: &[Message]) -> Result<Option<i64>, postgres::Error> {
    if messages.is_empty() {
        return Ok(None);
    }
    let sink = tx.copy_in("COPY ttp_outbox (job, topic, key, value) FROM STDIN (FORMAT binary)")?;
    let mut writer = BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::TEXT, Type::TEXT, Type::BYTEA]);
    for message in messages {
        let value = message.value.as_deref();
        writer.write(&[&job, &message.topic, &message.key, &value])?;
    }
    writer.finish()?;
    // The sequence's latest value in this session: the id of the last row copied.
    tx.query_one("SELECT currval(pg_get_serial_sequence('ttp_outbox', 'id'))", &[])?.try_get(0).map(Some)
}

/// The messages of a job left in the outbox (committed, perhaps not published), in order.
pub fn read_outbox(client: &mut Client, job: &str) -> Result<Vec<(i64, Message)>, PostgresError> {
    Ok(client
        .query("SELECT id, topic, key, value FROM ttp_outbox WHERE job = $1 ORDER BY id", &[&job])
        .map_err(PostgresError::ReadProgress)?
        .iter()
        .map(|row| (row.get(0), Message { topic: row.get(1), key: row.get(2), value: row.get(3) }))
        .collect())
}

/// Forgets the outbox messages up to `last` (they are published).
pub fn clear_outbox(client: &mut Client, job: &str, last: i64) -> Result<(), postgres::Error> {
    client.execute("DELETE FROM ttp_outbox WHERE job = $1 AND id <= $2", &[&job, &last]).map(|_| ())
}

/// What the tag insert did: how many rows were new and, when asked, their uuids.
struct Inserted {
    count: u64,
    uuids: Vec<[u8; 16]>,
}

/// Copies the tags into the staging table and inserts those not stored; returns how many,
/// and which when `returning`.
fn insert_tags(tx: &mut Transaction<'_>, epoch: u64, tags: &[Tag], returning: bool) -> Result<Inserted, PostgresError> {
    let failed = |source| PostgresError::Commit { epoch, source };
    if tags.is_empty() {
        return Ok(Inserted { count: 0, uuids: Vec::new() });
    }
    let sink = tx
        .copy_in(
            "COPY ttp_tag_in (uuid, source_kind, source_id, attacker_uuid, identity_uuid, session_id, \
             decky_id, tactic, technique_id, sub_technique_id, confidence, rule_id, rule_version, evidence, \
             attack_release, observed_at) FROM STDIN (FORMAT binary)",
        )
        .map_err(failed)?;
    let mut writer = BinaryCopyInWriter::new(sink, STAGE_TYPES);
    let (mut uuid_buf, mut evidence) = (uuid::Uuid::encode_buffer(), String::new());
    for tag in tags {
        let uuid = uuid::Uuid::from_bytes(tag.uuid);
        let uuid = uuid.hyphenated().encode_lower(&mut uuid_buf);
        let rule_version = i32::try_from(tag.rule_version)
            .map_err(|_| PostgresError::RuleVersion { uuid: uuid.to_string(), version: tag.rule_version })?;
        evidence.clear();
        tag.evidence.write_to(&mut evidence);
        let observed_at = tag.observed_at.map(micros_to_system_time);
        let row: [&(dyn ToSql + Sync); 16] = [
            &&*uuid,
            &tag.source_kind,
            &tag.source_id,
            &tag.attacker_uuid,
            &tag.identity_uuid,
            &tag.session_id,
            &tag.decky_id,
            &tag.tactic,
            &tag.technique_id,
            &tag.sub_technique_id,
            &tag.confidence.0,
            &tag.rule_id,
            &rule_version,
            &evidence,
            &tag.attack_release,
            &observed_at,
        ];
        writer.write(&row).map_err(failed)?;
    }
    writer.finish().map_err(failed)?;
    let insert = "INSERT INTO ttp_tag (uuid, source_kind, source_id, attacker_uuid, identity_uuid, session_id, \
         decky_id, tactic, technique_id, sub_technique_id, confidence, rule_id, rule_version, evidence, \
         attack_release, observed_at) \
         SELECT uuid::uuid, source_kind, source_id, attacker_uuid, identity_uuid, session_id, decky_id, \
         tactic, technique_id, sub_technique_id, confidence, rule_id, rule_version, evidence::jsonb, \
         attack_release, observed_at FROM ttp_tag_in \
         ON CONFLICT (uuid) DO NOTHING";
    if !returning {
        let count = tx.execute(insert, &[]).map_err(failed)?;
        return Ok(Inserted { count, uuids: Vec::new() });
    }
    let rows = tx.query(&format!("{insert} RETURNING uuid::text"), &[]).map_err(failed)?;
    let uuids: Vec<[u8; 16]> = rows
        .iter()
        .filter_map(|row| uuid::Uuid::parse_str(row.get::<_, &str>(0)).ok())
        .map(|uuid| *uuid.as_bytes())
        .collect();
    Ok(Inserted { count: uuids.len() as u64, uuids })
}

/// Copies the rollup changes into the staging table, then upserts the new rows and deletes
/// the keys that went away, one statement each.
fn apply_rollups(tx: &mut Transaction<'_>, rollups: &[RollupChange]) -> Result<(), postgres::Error> {
    if rollups.is_empty() {
        return Ok(());
    }
    let sink = tx.copy_in(
        "COPY ttp_rollup_in (scope_kind, scope_id, technique_id, sub_technique_id, tactic, tag_count, \
         attacker_count, identity_count, first_seen, last_seen, confidence_max, deleted) FROM STDIN (FORMAT binary)",
    )?;
    let mut writer = BinaryCopyInWriter::new(sink, ROLLUP_STAGE_TYPES);
    let (mut upserts, mut deletes) = (0, 0);
    for change in rollups {
        let (row, deleted) = match change {
            RollupChange::Upsert(row) => (row, false),
            RollupChange::Delete(row) => (row, true),
        };
        if deleted {
            deletes += 1;
        } else {
            upserts += 1;
        }
        let (first_seen, last_seen) =
            (row.first_seen.map(micros_to_system_time), row.last_seen.map(micros_to_system_time));
        let values: [&(dyn ToSql + Sync); 12] = [
            &row.scope_kind.as_str(),
            &row.scope_id,
            &row.technique_id,
            &row.sub_technique_id,
            &row.tactic,
            &row.tag_count,
            &row.attacker_count,
            &row.identity_count,
            &first_seen,
            &last_seen,
            &row.confidence_max.0,
            &deleted,
        ];
        writer.write(&values)?;
    }
    writer.finish()?;
    if upserts > 0 {
        tx.execute(
            "INSERT INTO ttp_rollup (scope_kind, scope_id, technique_id, sub_technique_id, tactic, tag_count, \
             attacker_count, identity_count, first_seen, last_seen, confidence_max) \
             SELECT scope_kind, scope_id, technique_id, sub_technique_id, tactic, tag_count, attacker_count, \
             identity_count, first_seen, last_seen, confidence_max FROM ttp_rollup_in WHERE NOT deleted \
             ON CONFLICT (scope_kind, scope_id, technique_id, sub_technique_id, tactic) DO UPDATE SET \
             tag_count = EXCLUDED.tag_count, attacker_count = EXCLUDED.attacker_count, \
             identity_count = EXCLUDED.identity_count, first_seen = EXCLUDED.first_seen, \
             last_seen = EXCLUDED.last_seen, confidence_max = EXCLUDED.confidence_max",
            &[],
        )?;
    }
    if deletes > 0 {
        tx.execute(
            "DELETE FROM ttp_rollup r USING ttp_rollup_in d \
             WHERE d.deleted AND r.scope_kind = d.scope_kind AND r.scope_id = d.scope_id \
             AND r.technique_id = d.technique_id AND r.sub_technique_id = d.sub_technique_id AND r.tactic = d.tactic",
            &[],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use ttpflow_dataflows::record::Confidence;
    use ttpflow_dataflows::rollup::ScopeKind;

    use super::*;

    fn row(scope_id: &str, technique_id: &str, tag_count: i64) -> RollupRow {
        RollupRow {
            scope_kind: ScopeKind::Attacker,
            scope_id: scope_id.to_string(),
            technique_id: technique_id.to_string(),
            sub_technique_id: String::new(),
            tactic: "TA0007".to_string(),
            tag_count,
            attacker_count: 1,
            identity_count: 0,
            first_seen: Some(1),
            last_seen: Some(tag_count),
            confidence_max: Confidence(0.5),
        }
    }

    #[test]
    fn an_epoch_nets_to_one_change_per_key() {
        let changes = vec![
            // Updated: the old row out, the new one in.
            (row("a", "T1082", 1), -1),
            (row("a", "T1082", 3), 1),
            // Gone.
            (row("b", "T1082", 2), -1),
            // New.
            (row("c", "T1082", 1), 1),
            // Inserted and retracted within the epoch, then inserted again: an update.
            (row("d", "T1082", 2), 1),
            (row("d", "T1082", 1), -1),
            (row("d", "T1082", 2), -1),
            (row("d", "T1082", 3), 1),
            // Inserted and retracted within the epoch, and the stored row retracted: a delete.
            (row("e", "T1082", 5), 1),
            (row("e", "T1082", 5), -1),
            (row("e", "T1082", 4), -1),
            // Cancels out entirely.
            (row("f", "T1082", 1), 1),
            (row("f", "T1082", 1), -1),
        ];
        let net = net_rollups(0, changes).unwrap();
        assert_eq!(
            net,
            vec![
                RollupChange::Upsert(row("a", "T1082", 3)),
                RollupChange::Delete(row("b", "T1082", 2)),
                RollupChange::Upsert(row("c", "T1082", 1)),
                RollupChange::Upsert(row("d", "T1082", 3)),
                RollupChange::Delete(row("e", "T1082", 4)),
            ]
        );
    }

    #[test]
    fn two_rows_left_for_one_key_are_refused() {
        let err = net_rollups(7, vec![(row("a", "T1082", 1), 1), (row("a", "T1082", 2), 1)]).unwrap_err();
        assert!(matches!(err, PostgresError::RollupConflict { epoch: 7, .. }), "{err}");
        assert!(err.to_string().contains("(attacker, \"a\", T1082, \"\", TA0007)"), "{err}");
    }

    #[test]
    fn rule_state_rows_map_as_state_file_entries_do() {
        use ttpflow_dataflows::rules::StateMode;
        let now = 1_000;
        let clipped = rule_state_row("clipped", Some(0.5), Some(now + 1), now).unwrap();
        assert_eq!(clipped, RuleState { mode: StateMode::Clipped, confidence_max: Some(0.5), expired: false });
        assert!(!rule_state_row("disabled", None, None, now).unwrap().is_active());
        let expired = rule_state_row("enabled", None, Some(now - 1), now).unwrap();
        assert!(expired.expired && !expired.is_active(), "an expired rule emits nothing, as with a state file");
        assert!(!rule_state_row("enabled", None, Some(now), now).unwrap().expired, "expired once before now");
        assert_eq!(
            rule_state_row("paused", None, None, now).unwrap_err(),
            "state must be enabled, disabled or clipped, got \"paused\""
        );
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::MAX / 1_000_000);
        assert_eq!(unix_micros(far), i64::MAX, "saturates");
        assert_eq!(unix_micros(SystemTime::UNIX_EPOCH - Duration::from_micros(5)), -5);
    }
}
