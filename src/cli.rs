//! The command line: `ttpflow run`, `ttpflow replay`, `ttpflow rules check`, `ttpflow
//! export navigator` and `ttpflow generate`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use tracing::info;

use crate::config::{attack_release, JobConfig};
use crate::navigator::{self, Scope};
use crate::rules::{self, LoadOptions, LoadedPack, Problem};
use crate::runtime::{self, RunOptions};
use crate::stage_times::StageTimes;
use crate::stream;
use ttpflow_dataflows::rules::Rule;

#[derive(Debug, Parser)]
#[command(name = "ttpflow", version, about = "Honeypot fleet events to MITRE ATT&CK technique tags")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the job: on Kafka when brokers are configured (until SIGINT/SIGTERM), else
    /// embedded, over JSONL inputs into an output directory.
    Run(RunArgs),
    /// Re-derive tags and rollups from the Kafka topics, from offset zero (or an offset or
    /// time) to the high watermarks read at start, then exit; publishes nothing.
    Replay(ReplayArgs),
    /// Work with rule packs.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Export what the job stored in PostgreSQL.
    Export {
        #[command(subcommand)]
        command: ExportCommand,
    },
    /// Write a deterministic synthetic fleet (reference tables, then bus events) in the
    /// embedded input format, for benchmarks and soak runs.
    Generate(GenerateArgs),
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Bus events to write (replays and malformed lines included; late attacker rows are
    /// extra lines).
    #[arg(long, default_value_t = 20_000)]
    pub events: u64,
    /// Attackers (`decnet.attackers` rows), each with its own address.
    #[arg(long, default_value_t = 500)]
    pub attackers: u64,
    /// Identities the attackers belong to (`decnet.attacker_identities` rows); 0 for none.
    #[arg(long, default_value_t = 100)]
    pub identities: u64,
    /// Campaigns the identities belong to (`decnet.campaigns` rows); attackers of one
    /// campaign share infrastructure and habits. 0 for none.
    #[arg(long, default_value_t = 10)]
    pub campaigns: u64,
    /// Seed of the fleet: the same arguments write the same bytes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write `DIR/tables.jsonl` and `DIR/events.jsonl`; without it, the tables and then the
    /// events go to standard output.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Per mille of attackers whose row is not in the tables but among the events, at a
    /// point of the run (their earlier events wait for it).
    #[arg(long, default_value_t = 20)]
    pub late_permille: u32,
    /// Per mille of events from addresses no attacker row ever claims (`unanchored` dead
    /// letters in a run).
    #[arg(long, default_value_t = 2)]
    pub orphan_permille: u32,
    /// Per mille of events that repeat a recent event verbatim.
    #[arg(long, default_value_t = 30)]
    pub replay_permille: u32,
    /// Per mille of deliberately malformed lines (cut-off JSON, an unconsumed topic, a
    /// wrong-typed field, an envelope without payload).
    #[arg(long, default_value_t = 0)]
    pub malformed_permille: u32,
}

#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    /// ATT&CK Navigator layer (format 4.5) of one scope's techniques, from `ttp_rollup`.
    Navigator(NavigatorArgs),
}

#[derive(Debug, Args)]
pub struct NavigatorArgs {
    /// `campaign:<id>`, `identity:<id>`, `attacker:<id>`, `session:<id>` or `fleet`.
    #[arg(long)]
    pub scope: Scope,
    /// PostgreSQL connection string (URL or key=value pairs) of the job's database.
    #[arg(long, env = "TTPFLOW_POSTGRES", hide_env_values = true)]
    pub postgres: String,
    /// Write the layer to this file instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// ATT&CK release of the techniques (its major version is the layer's `versions.attack`).
    #[arg(long, default_value = ttpflow_dataflows::rules::DEFAULT_ATTACK_RELEASE, value_parser = attack_release)]
    pub attack_release: String,
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Load a pack, report every problem per file and run each rule's examples.
    Check {
        /// The rules directory.
        dir: PathBuf,
        /// Directory of intel provider mapping tables; default: the project's, built in.
        #[arg(long)]
        intel_dir: Option<PathBuf>,
    },
}

/// Timely cluster flags.
#[derive(Debug, Args, Clone)]
pub struct ClusterArgs {
    /// Timely worker threads per process.
    #[arg(short = 'w', long, default_value_t = 1, value_parser = at_least_one)]
    pub workers: usize,
    /// Processes in the cluster.
    #[arg(short = 'n', long, default_value_t = 1, value_parser = at_least_one)]
    pub processes: usize,
    /// This process's index in the cluster (0-based).
    #[arg(short = 'p', long, default_value_t = 0)]
    pub process: usize,
    /// File with one `host:port` per process, in process order (long name only: `-h` is help).
    #[arg(long)]
    pub hostfile: Option<PathBuf>,
}

/// A count that must be at least 1 (`-w`, `-n`).
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("not a count: {e}")),
    }
}

impl ClusterArgs {
    /// The timely configuration these flags ask for.
    pub fn timely(&self) -> Result<timely::Config, BoxError> {
        let workers = self.workers.max(1);
        if self.processes <= 1 {
            return Ok(timely::Config::process(workers));
        }
        let Some(file) = &self.hostfile else {
            return Err(format!("-n {} needs a hostfile (--hostfile)", self.processes).into());
        };
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("failed to read hostfile \"{}\": {e}", file.display()))?;
        let addresses: Vec<String> =
            text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect();
        if addresses.len() != self.processes || self.process >= self.processes {
            return Err(format!(
                "hostfile \"{}\" lists {} processes, -n is {} and -p is {}",
                file.display(),
                addresses.len(),
                self.processes,
                self.process
            )
            .into());
        }
        Ok(timely::Config {
            communication: timely::CommunicationConfig::Cluster {
                threads: workers,
                process: self.process,
                addresses,
                report: false,
                zerocopy: false,
            },
            worker: timely::WorkerConfig::default(),
        })
    }
}

/// Flags shared by `run` and `replay`: they override the config file.
#[derive(Debug, Args)]
pub struct JobArgs {
    /// Pipeline configuration (TOML): brokers, topics, database, rules.
    #[arg(long, env = "TTPFLOW_CONFIG")]
    pub config: Option<PathBuf>,
    /// Rules directory (DECNET's YAML format); default `rules`.
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Rule state file: rule id → {state, confidence_max, expires_at, reason, set_by}.
    #[arg(long)]
    pub rule_state: Option<PathBuf>,
    /// ATT&CK release stamped on tags.
    #[arg(long, value_parser = attack_release)]
    pub attack_release: Option<String>,
    /// Directory of intel provider mapping tables (`<provider>.yaml`); default: the
    /// project's tables, built in.
    #[arg(long)]
    pub intel_dir: Option<PathBuf>,
    /// PostgreSQL connection string (URL or key=value pairs).
    #[arg(long, env = "TTPFLOW_POSTGRES", hide_env_values = true)]
    pub postgres: Option<String>,
    /// Kafka bootstrap servers; with them `run` reads Kafka.
    #[arg(long, env = "TTPFLOW_BROKERS")]
    pub brokers: Option<String>,
    /// The job's name, under which its progress is stored.
    #[arg(long)]
    pub job: Option<String>,
    /// Records per epoch (and worker, on Kafka).
    #[arg(long)]
    pub epoch_records: Option<u64>,
    /// Longest time a Kafka epoch stays open, in milliseconds.
    #[arg(long)]
    pub epoch_interval_ms: Option<u64>,
    /// The deployment's hash key file, created when absent (`TTPFLOW_HASH_KEY` gives the
    /// key itself); default `$XDG_STATE_HOME/ttpflow/hash.key` or
    /// `~/.local/state/ttpflow/hash.key`.
    #[arg(long, env = "TTPFLOW_HASH_KEY_FILE")]
    pub hash_key_file: Option<PathBuf>,
    /// Seconds to wait out a PostgreSQL outage before giving up (default: for as long as
    /// it takes).
    #[arg(long, value_name = "SECONDS")]
    pub sink_timeout: Option<u64>,
    /// Serve Prometheus metrics and `/healthz` on this address.
    #[arg(long)]
    pub metrics_addr: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

impl JobArgs {
    /// The config file (or the defaults) with the flags and environment applied.
    pub fn effective_config(&self) -> Result<JobConfig, BoxError> {
        let mut config = match &self.config {
            Some(path) => JobConfig::load(path)?,
            None => JobConfig::default(),
        };
        if let Some(v) = &self.rules {
            config.rules = v.clone();
        }
        if let Some(v) = &self.rule_state {
            config.rule_state = Some(v.clone());
        }
        if let Some(v) = &self.attack_release {
            config.attack_release = v.clone();
        }
        if let Some(v) = &self.intel_dir {
            config.intel_dir = Some(v.clone());
        }
        if let Some(v) = &self.postgres {
            config.postgres = Some(v.clone());
        }
        if let Some(v) = &self.brokers {
            config.kafka.get_or_insert_with(Default::default).brokers = v.clone();
        }
        if let Some(v) = &self.job {
            config.job = v.clone();
        }
        if let Some(v) = self.epoch_records {
            config.epoch_records = v;
        }
        if let Some(v) = self.epoch_interval_ms {
            config.epoch_interval_ms = v;
        }
        if let Some(v) = &self.hash_key_file {
            config.hash_key_file = Some(v.clone());
        }
        if let Some(v) = self.sink_timeout {
            config.sink_timeout_s = Some(v);
        }
        if let Some(v) = &self.metrics_addr {
            config.metrics_addr = Some(v.clone());
        }
        config.validate()?;
        Ok(config)
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// JSONL input, repeatable, read in the order given (`-` = standard input): the
    /// embedded job. Without inputs and without brokers: `examples/fleet.jsonl`.
    #[arg(long = "input")]
    pub inputs: Vec<PathBuf>,
    /// DECNET's artifacts directory: an email without `body_text` gets the body of its
    /// stored message, `DIR/<decky_id>/smtp/<stored_as>`.
    #[arg(long, env = "TTPFLOW_ARTIFACTS_DIR")]
    pub artifacts_dir: Option<PathBuf>,
    /// Output directory for tags.jsonl, rollups.jsonl and dead_letters.jsonl (embedded job).
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Print the effective configuration (secrets masked) and exit.
    #[arg(long)]
    pub print_config: bool,
    /// After the summary, print the CPU time spent in each stage (all workers added up)
    /// on standard error.
    #[arg(long)]
    pub stage_times: bool,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// Start every bus partition at this offset (tables are read from the start); only
    /// tags are stored.
    #[arg(long, conflicts_with = "from_time")]
    pub from_offset: Option<u64>,
    /// Start every bus partition at its first record at or after this time (RFC 3339 or
    /// milliseconds since the Unix epoch); only tags are stored.
    #[arg(long)]
    pub from_time: Option<String>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs a parsed command line.
pub fn main(cli: Cli) -> Result<ExitCode, BoxError> {
    match cli.command {
        Command::Run(args) => run(args),
        Command::Replay(args) => replay(args),
        Command::Rules { command: RulesCommand::Check { dir, intel_dir } } => check(&dir, intel_dir.as_deref()),
        Command::Export { command: ExportCommand::Navigator(args) } => export_navigator(args),
        Command::Generate(args) => generate(args),
    }
}

/// Writes the fleet; the summary goes to standard error, as standard output may be the data.
fn generate(args: GenerateArgs) -> Result<ExitCode, BoxError> {
    let options = crate::generate::Options {
        events: args.events,
        attackers: args.attackers,
        identities: args.identities,
        campaigns: args.campaigns,
        seed: args.seed,
        late_permille: args.late_permille,
        orphan_permille: args.orphan_permille,
        replay_permille: args.replay_permille,
        malformed_permille: args.malformed_permille,
    };
    let summary = match &args.out {
        Some(dir) => crate::generate::to_dir(&options, dir)?,
        None => crate::generate::to_stdout(&options)?,
    };
    let c = summary.counts;
    eprintln!(
        "tables={} events={} late_rows={} replays={} orphans={} malformed={} bytes={} elapsed_s={:.3}",
        summary.tables,
        c.events,
        c.late_rows,
        c.replays,
        c.orphans,
        c.malformed,
        summary.bytes,
        summary.elapsed.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

fn export_navigator(args: NavigatorArgs) -> Result<ExitCode, BoxError> {
    let layer = navigator::export(&args.postgres, &args.scope, &args.attack_release)?;
    let mut text = serde_json::to_string_pretty(&layer)?;
    text.push('\n');
    match &args.out {
        Some(path) => std::fs::write(path, text)
            .map_err(|e| format!("failed to write the layer to \"{}\": {e}", path.display()))?,
        None => std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes())?,
    }
    let techniques = layer["techniques"].as_array().map_or(0, Vec::len);
    info!(scope = %args.scope, techniques, "exported navigator layer");
    Ok(ExitCode::SUCCESS)
}

fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// The options of loading the configuration's pack.
fn load_options(config: &JobConfig) -> Result<LoadOptions, BoxError> {
    let mut options = LoadOptions { attack_release: config.attack_release.clone(), ..LoadOptions::default() };
    if let Some(file) = &config.rule_state {
        options.states = rules::load_states(file, now_micros())?;
    }
    if let Some(dir) = &config.intel_dir {
        options.intel = Arc::new(crate::intel_tables::load(dir)?);
    }
    options.secret_key = Arc::new(crate::secret_key::load(config.hash_key_file.as_deref())?);
    Ok(options)
}

/// Loads the pack the configuration names.
fn load_pack(config: &JobConfig) -> Result<rules::LoadedPack, BoxError> {
    let loaded = rules::load(&config.rules, &load_options(config)?)?;
    info!(rules = loaded.pack.rules().len(), dir = %config.rules.display(), "loaded rule pack");
    Ok(loaded)
}

/// SIGINT and SIGTERM set the returned flag; a second one exits at once.
fn stop_on_signals() -> Result<Arc<AtomicBool>, BoxError> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&stop))?;
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    Ok(stop)
}

fn run(args: RunArgs) -> Result<ExitCode, BoxError> {
    let config = args.job.effective_config()?;
    if args.print_config {
        print!("{}", config.to_toml_masked());
        return Ok(ExitCode::SUCCESS);
    }
    if args.inputs.is_empty() && config.kafka.is_some() {
        return run_stream(&args.job, config, stream::Mode::Run);
    }
    let loaded = load_pack(&config)?;
    let inputs = if args.inputs.is_empty() { vec![PathBuf::from("examples/fleet.jsonl")] } else { args.inputs };
    let with_artifacts = args.artifacts_dir.is_some();
    let stage_times = args.stage_times.then(StageTimes::default);
    let summary = runtime::run_files(RunOptions {
        inputs,
        out: args.out,
        workers: args.job.cluster.workers,
        epoch_records: config.epoch_records,
        pack: Arc::new(loaded.pack),
        artifacts_dir: args.artifacts_dir,
        sink_timeout: config.sink_timeout(),
        postgres: config.postgres,
        stage_times: stage_times.clone(),
    })?;
    let artifacts =
        if with_artifacts { format!(" artifacts_missing={}", summary.artifacts_missing) } else { String::new() };
    let postgres = summary.postgres.map_or(String::new(), |pg| {
        format!(
            " epochs_committed={} epochs_skipped={} rows_inserted={} rollups_upserted={} rollups_deleted={} \
             sink_rows_per_s={:.0}",
            pg.epochs_committed,
            pg.epochs_skipped,
            pg.rows_inserted,
            pg.rollups_upserted,
            pg.rollups_deleted,
            pg.rows_per_second()
        )
    });
    let reasons = if summary.dead_letter_reasons.is_empty() {
        String::new()
    } else {
        let by_reason: Vec<String> = summary.dead_letter_reasons.iter().map(|(r, n)| format!("{r}:{n}")).collect();
        format!(" dead_letter_reasons={}", by_reason.join(","))
    };
    println!(
        "records={} tags={} rollups={} dead_letters={}{reasons}{artifacts}{postgres} elapsed_s={:.3} records_per_s={:.0}",
        summary.records,
        summary.tags,
        summary.rollups,
        summary.dead_letters,
        summary.elapsed.as_secs_f64(),
        summary.records_per_second()
    );
    if let Some(times) = stage_times {
        for (stage, time) in times.totals() {
            eprintln!("stage_cpu_s={:.3} stage={stage}", time.as_secs_f64());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn replay(args: ReplayArgs) -> Result<ExitCode, BoxError> {
    let mut config = args.job.effective_config()?;
    if config.kafka.is_none() {
        return Err("replay reads Kafka: give --brokers or a config file with a [kafka] table".into());
    }
    config.kafka.get_or_insert_with(Default::default).publish.enabled = false;
    let from = match (args.from_offset, &args.from_time) {
        (Some(n), _) => stream::ReplayFrom::Offset(n),
        (None, Some(time)) => stream::ReplayFrom::Time(parse_time_millis(time)?),
        (None, None) => stream::ReplayFrom::Start,
    };
    run_stream(&args.job, config, stream::Mode::Replay(from))
}

/// RFC 3339 (`2026-05-02T10:00:00Z`) or milliseconds since the Unix epoch.
fn parse_time_millis(text: &str) -> Result<i64, BoxError> {
    if let Ok(millis) = text.parse::<i64>() {
        return Ok(millis);
    }
    ttpflow_dataflows::time::parse_iso8601(text)
        .map(|micros| micros / 1000)
        .ok_or_else(|| format!("--from-time \"{text}\" is neither RFC 3339 nor milliseconds").into())
}

fn run_stream(args: &JobArgs, config: JobConfig, mode: stream::Mode) -> Result<ExitCode, BoxError> {
    let Some(postgres) = config.postgres.clone() else {
        return Err("the Kafka job commits to PostgreSQL: give --postgres (or TTPFLOW_POSTGRES)".into());
    };
    let kafka = config.kafka.clone().unwrap_or_default();
    let progress = matches!(mode, stream::Mode::Replay(_));
    // A replay runs one pack over the history; a running job follows the rules directory.
    let (pack, watcher) = if progress {
        (Arc::new(load_pack(&config)?.pack), None)
    } else {
        let watcher = crate::reload::RuleWatcher::new(&config.rules, load_options(&config)?)?;
        info!(rules = watcher.pack().rules().len(), dir = %config.rules.display(), "loaded rule pack");
        (Arc::clone(watcher.pack()), Some(watcher))
    };
    let stop = stop_on_signals()?;
    let summary = stream::run(stream::StreamOptions {
        config,
        kafka,
        postgres,
        mode,
        pack,
        watcher,
        timely: args.cluster.timely()?,
        stop,
        progress,
    })?;
    let pg = summary.postgres.unwrap_or_default();
    println!(
        "records={} rehydrated={} published={} epochs_committed={} rows_inserted={} rollups_upserted={} \
         rollups_deleted={} elapsed_s={:.3} records_per_s={:.0}",
        summary.records,
        summary.rehydrated,
        summary.published,
        pg.epochs_committed,
        pg.rows_inserted,
        pg.rollups_upserted,
        pg.rollups_deleted,
        summary.elapsed.as_secs_f64(),
        summary.records as f64 / summary.elapsed.as_secs_f64().max(1e-9)
    );
    Ok(ExitCode::SUCCESS)
}

/// The outcome of running a pack's examples.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub passed: usize,
    /// The examples that did not behave, one problem each (file and rule named).
    pub failures: Vec<Problem>,
    /// Examples of rules whose `lifter:*` kind this build loads but does not evaluate.
    pub not_evaluated: usize,
    /// Patterns that need the backtracking engine (notes), and the probes on which they ran
    /// out of their budget (warnings): `(file, line)`.
    pub backtracking: Vec<(String, String)>,
}

/// Texts on which a backtracking pattern may blow up: long runs of one or two characters,
/// with and without a different last one, each within the text budget.
fn pathological_probes() -> Vec<(String, String)> {
    let n = ttpflow_dataflows::pyregex::BACKTRACKING_TEXT_BYTES - 16;
    vec![
        (format!("{n} × \"a\""), "a".repeat(n)),
        (format!("{} × \"a\" then \"!\"", n - 1), "a".repeat(n - 1) + "!"),
        (format!("{} × \"ab\"", n / 2), "ab".repeat(n / 2)),
        (format!("{n} × \" \""), " ".repeat(n)),
        (format!("{} × \"é\"", n / 2), "é".repeat(n / 2)),
    ]
}

/// The notes and warnings about `rule`'s backtracking patterns.
fn backtracking_report(rule: &Rule, file: &str, probes: &[(String, String)], out: &mut Vec<(String, String)>) {
    use ttpflow_dataflows::pyregex::{Search, BACKTRACKING_STEPS, BACKTRACKING_TEXT_BYTES};
    for pattern in rule.backtracking_patterns() {
        out.push((
            file.to_string(),
            format!(
                "note: {file}: rule \"{}\": pattern {:?} needs the backtracking engine (look-around or a \
                 backreference): it judges texts of up to {BACKTRACKING_TEXT_BYTES} bytes within \
                 {BACKTRACKING_STEPS} steps, and a text it cannot judge is a dead letter rule_budget_exceeded",
                rule.rule_id,
                pattern.as_str()
            ),
        ));
        for (name, probe) in probes {
            if pattern.search(probe) == Search::OverBudget {
                out.push((
                    file.to_string(),
                    format!(
                        "warn: {file}: rule \"{}\": pattern {:?} runs out of its budget on a probe of {name}",
                        rule.rule_id,
                        pattern.as_str()
                    ),
                ));
            }
        }
    }
}

/// Runs every rule's embedded examples, regex and structured rules alike, each example
/// as a payload of the rule's first `applies_to` kind.
pub fn run_examples(loaded: &LoadedPack) -> CheckReport {
    let mut report = CheckReport::default();
    let probes = pathological_probes();
    for (idx, rule) in loaded.pack.rules().iter().enumerate() {
        let examples = &loaded.examples[idx];
        backtracking_report(rule, &loaded.files[idx], &probes, &mut report.backtracking);
        if !rule.is_evaluated() {
            report.not_evaluated += examples.must_match.len() + examples.must_not_match.len();
            continue;
        }
        let kind = rule.applies_to.first().map(String::as_str).unwrap_or_default();
        let cases =
            examples.must_match.iter().map(|p| (p, true)).chain(examples.must_not_match.iter().map(|p| (p, false)));
        for (payload, want) in cases {
            if loaded.pack.rule_matches(idx, kind, payload) == want {
                report.passed += 1;
            } else {
                let verb = if want { "should match but does not" } else { "should not match but does" };
                report.failures.push(Problem {
                    file: loaded.files[idx].clone(),
                    rule: Some(rule.rule_id.clone()),
                    field: None,
                    message: format!("example {verb}: {}", payload.to_json_string()),
                });
            }
        }
    }
    report
}

/// Prints every load problem and every failing example, file by file (in name order),
/// then the counts; the examples of the valid rules run even when others do not load.
fn check(dir: &Path, intel_dir: Option<&Path>) -> Result<ExitCode, BoxError> {
    let mut options = LoadOptions::default();
    if let Some(intel_dir) = intel_dir {
        options.intel = Arc::new(crate::intel_tables::load(intel_dir)?);
    }
    let (loaded, problems) = rules::load_valid(dir, &options)?;
    let report = run_examples(&loaded);
    let mut lines: Vec<(&str, String)> = problems.iter().map(|p| (p.file.as_str(), format!("error: {p}"))).collect();
    lines.extend(report.failures.iter().map(|f| (f.file.as_str(), format!("fail: {f}"))));
    lines.extend(report.backtracking.iter().map(|(file, line)| (file.as_str(), line.clone())));
    // Stable: within a file, load problems first, then examples in rule order.
    lines.sort_by(|a, b| a.0.cmp(b.0));
    for (_, line) in &lines {
        println!("{line}");
    }
    println!(
        "{} {}; {} examples passed, {} failed, {} not evaluated (lifter kinds this build does not evaluate)",
        loaded.pack.rules().len(),
        if problems.is_empty() { "rules loaded" } else { "valid rules" },
        report.passed,
        report.failures.len(),
        report.not_evaluated
    );
    if !problems.is_empty() {
        println!("{} problem(s); the pack does not load", problems.len());
    }
    Ok(if problems.is_empty() && report.failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
